//! The policy's config, parsed and validated once per `configure` call.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::jwks::RemoteJwks;
use crate::keys::{self, PublicKey};
use crate::scopes::ScopeRule;

/// Validated auth config. Fields are documented in the crate overview.
#[derive(Debug, Clone)]
pub struct Config {
    /// One provider from the top-level `issuer`/`secret`/`jwks`/`jwks_url`,
    /// or the `providers` list.
    pub providers: Vec<Provider>,
    /// `providers` was given: a token's `iss` picks its provider.
    pub by_issuer: bool,
    pub leeway_secs: u64,
    pub public_paths: Vec<String>,
    /// The claim every token must carry as a usable string.
    pub subject_claim: String,
    /// Claim name and (lower-case) header name, in config order.
    pub claims_to_headers: Vec<(String, String)>,
    pub required_scopes: Vec<ScopeRule>,
    pub require_exp: bool,
    pub max_token_bytes: usize,
}

/// One token issuer and the keys its tokens are verified with.
#[derive(Debug, Clone)]
pub struct Provider {
    /// `None` (top-level config only): `iss` is not checked.
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The HS256 key; HS256 tokens are verified with it and nothing else.
    pub secret: Option<Vec<u8>>,
    pub keys: KeySource,
}

/// Where a provider's public keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// No public keys: HS256 only.
    None,
    /// `jwks`: given in the config.
    Inline(Vec<PublicKey>),
    /// `jwks_url`: fetched, and refreshed, through `outbound`.
    Remote(RemoteJwks),
}

impl Provider {
    /// Whether the provider has (or will fetch) public keys, so a token's
    /// `kid` means something.
    pub fn has_public_keys(&self) -> bool {
        !matches!(self.keys, KeySource::None)
    }
}

// `secret` is optional here so that its absence gets our own message
// ("secret: required...") instead of serde's generic one; `jwks` is read
// as JSON so that its errors can name the key and member. The provider
// fields at the top level make the one provider when `providers` is absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_refresh_secs: Option<u64>,
    #[serde(default)]
    jwks_max_age_secs: Option<u64>,
    #[serde(default)]
    providers: Option<Vec<RawNamedProvider>>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default)]
    public_paths: Vec<String>,
    #[serde(default)]
    subject_claim: Option<String>,
    #[serde(default)]
    subject_header: Option<String>,
    #[serde(default)]
    claims_to_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    required_scopes: Vec<RawScopeRule>,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
}

/// What a provider is made of, at the top level or in `providers`.
struct RawProvider {
    issuer: Option<String>,
    audience: Option<String>,
    secret: Option<String>,
    jwks: Option<Value>,
    jwks_url: Option<String>,
    jwks_refresh_secs: Option<u64>,
    jwks_max_age_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamedProvider {
    issuer: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_refresh_secs: Option<u64>,
    #[serde(default)]
    jwks_max_age_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScopeRule {
    prefix: String,
    scopes: Vec<String>,
}

/// Allowance for clock skew between the issuer and this sidecar, applied to
/// `exp` and `nbf`. Kept small: every second of it is a second in which a
/// request with a token its issuer already refuses still passes, and may be
/// answered from the cache without the issuer being asked. Clocks synced by
/// NTP, let alone one host's clock, differ by far less than a second.
fn default_leeway() -> u64 {
    5
}
fn default_true() -> bool {
    true
}
fn default_max_token_bytes() -> usize {
    8192
}
const DEFAULT_SUBJECT_CLAIM: &str = "sub";
const DEFAULT_SUBJECT_HEADER: &str = "x-authenticated-user";
/// Least time between two refreshes of a key set that an unknown `kid`
/// (or its age) triggers, across all requests.
const DEFAULT_JWKS_REFRESH_SECS: u64 = 30;
/// A fetched key set older than this is fetched again.
const DEFAULT_JWKS_MAX_AGE_SECS: u64 = 300;

/// Headers the policy must never set from a claim: the token itself, and
/// what the host manages (it would refuse the edit, failing every request).
const RESERVED_HEADERS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// A header name must be a non-empty HTTP token; the host hands us lower-case
/// names, so we compare against a lower-cased copy.
pub(crate) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Config {
    /// Parses the JSON config; errors name the offending field.
    ///
    /// # Errors
    /// The message `configure` refuses the config with.
    pub fn parse(json: &str) -> Result<Config, String> {
        let raw: RawConfig = policy_common::parse_config(json)?;
        // serde's `flatten` would lose `deny_unknown_fields`: gathered by hand.
        let top = RawProvider {
            issuer: raw.issuer,
            audience: raw.audience,
            secret: raw.secret,
            jwks: raw.jwks,
            jwks_url: raw.jwks_url,
            jwks_refresh_secs: raw.jwks_refresh_secs,
            jwks_max_age_secs: raw.jwks_max_age_secs,
        };
        let (providers, by_issuer) = match raw.providers {
            None => (vec![provider(top, "")?], false),
            Some(list) => {
                if let Some(field) = top.given().first() {
                    return Err(format!(
                        "{field}: not with providers (give it in each provider)"
                    ));
                }
                (named_providers(list)?, true)
            }
        };

        let subject_claim = raw
            .subject_claim
            .unwrap_or_else(|| DEFAULT_SUBJECT_CLAIM.to_owned());
        if subject_claim.is_empty() {
            return Err("subject_claim: must not be empty".to_string());
        }
        let claims_to_headers = match (raw.claims_to_headers, raw.subject_header) {
            (Some(_), Some(_)) => {
                return Err(
                    "subject_header: give claims_to_headers or subject_header, not both"
                        .to_string(),
                );
            }
            (Some(map), None) => map
                .into_iter()
                .map(|(claim, header)| {
                    let at = format!("claims_to_headers.{claim}");
                    if claim.is_empty() {
                        return Err("claims_to_headers: a claim name must not be empty".into());
                    }
                    Ok((claim, header_name(&header, &at)?))
                })
                .collect::<Result<Vec<_>, String>>()?,
            (None, header) => {
                let header = header.unwrap_or_else(|| DEFAULT_SUBJECT_HEADER.to_owned());
                vec![(
                    subject_claim.clone(),
                    header_name(&header, "subject_header")?,
                )]
            }
        };
        for (i, (claim, header)) in claims_to_headers.iter().enumerate() {
            if let Some((other, _)) = claims_to_headers[..i].iter().find(|(_, h)| h == header) {
                return Err(format!(
                    "claims_to_headers.{claim}: {header:?} is also the header of {other}"
                ));
            }
        }

        if raw.max_token_bytes == 0 {
            return Err("max_token_bytes: must be greater than 0".to_string());
        }
        if let Some(p) = raw.public_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("public_paths: {p:?} must start with `/`"));
        }
        let required_scopes = raw
            .required_scopes
            .into_iter()
            .enumerate()
            .map(|(i, r)| ScopeRule::new(r.prefix, r.scopes, &format!("required_scopes[{i}]")))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Config {
            providers,
            by_issuer,
            leeway_secs: raw.leeway_secs,
            public_paths: raw.public_paths,
            subject_claim,
            claims_to_headers,
            required_scopes,
            require_exp: raw.require_exp,
            max_token_bytes: raw.max_token_bytes,
        })
    }

    /// The provider for a token claiming `iss`: the only one, or (with
    /// `providers`) the one of that issuer.
    pub fn provider_for(&self, iss: Option<&str>) -> Option<&Provider> {
        if !self.by_issuer {
            return self.providers.first();
        }
        let iss = iss?;
        self.providers
            .iter()
            .find(|p| p.issuer.as_deref() == Some(iss))
    }

    /// Whether `path` (query string ignored) is listed in `public_paths`:
    /// exactly, or by prefix for entries ending in `*`.
    pub fn is_public(&self, path: &str) -> bool {
        let path = strip_query(path);
        self.public_paths
            .iter()
            .any(|entry| match entry.strip_suffix('*') {
                // A prefix rule must not be escaped with `..` or encoded tricks
                // that the upstream may later resolve to a non-public path.
                Some(prefix) => path.starts_with(prefix) && !has_ambiguous_segments(path),
                None => path == entry,
            })
    }
}

impl RawProvider {
    /// The provider fields that were given (for the error when `providers`
    /// is given too).
    fn given(&self) -> Vec<&'static str> {
        [
            ("issuer", self.issuer.is_some()),
            ("audience", self.audience.is_some()),
            ("secret", self.secret.is_some()),
            ("jwks", self.jwks.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
            ("jwks_refresh_secs", self.jwks_refresh_secs.is_some()),
            ("jwks_max_age_secs", self.jwks_max_age_secs.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

fn named_providers(list: Vec<RawNamedProvider>) -> Result<Vec<Provider>, String> {
    if list.is_empty() {
        return Err("providers: must not be empty".to_string());
    }
    let mut providers: Vec<Provider> = Vec::with_capacity(list.len());
    for (i, p) in list.into_iter().enumerate() {
        let at = format!("providers[{i}].");
        if p.issuer.is_empty() {
            return Err(format!("{at}issuer: must not be empty"));
        }
        if let Some(j) = providers
            .iter()
            .position(|q| q.issuer.as_deref() == Some(&p.issuer))
        {
            return Err(format!(
                "{at}issuer: {:?} is also the issuer of providers[{j}]",
                p.issuer
            ));
        }
        let raw = RawProvider {
            issuer: Some(p.issuer),
            audience: p.audience,
            secret: p.secret,
            jwks: p.jwks,
            jwks_url: p.jwks_url,
            jwks_refresh_secs: p.jwks_refresh_secs,
            jwks_max_age_secs: p.jwks_max_age_secs,
        };
        providers.push(provider(raw, &at)?);
    }
    Ok(providers)
}

/// One provider; `at` prefixes the field names in errors (`providers[1].`).
fn provider(raw: RawProvider, at: &str) -> Result<Provider, String> {
    let keys = match (raw.jwks, raw.jwks_url) {
        (Some(_), Some(_)) => {
            return Err(format!("{at}jwks_url: give jwks or jwks_url, not both"));
        }
        (Some(jwks), None) => {
            // A JWK Set as JSON text: what the sidecar's `${file:jwks.json}`
            // puts in a config (a policy reads no files itself).
            let jwks = match jwks {
                Value::String(text) => serde_json::from_str(&text)
                    .map_err(|e| format!("{at}jwks: a string must be a JWK Set as JSON: {e}"))?,
                other => other,
            };
            KeySource::Inline(keys::parse_jwks(&jwks).map_err(|e| format!("{at}{e}"))?)
        }
        (None, Some(url)) => {
            let secs = |v: Option<u64>, default, name| match v.unwrap_or(default) {
                0 => Err(format!("{at}{name}: must be greater than 0")),
                s => Ok(s),
            };
            let refresh = secs(
                raw.jwks_refresh_secs,
                DEFAULT_JWKS_REFRESH_SECS,
                "jwks_refresh_secs",
            )?;
            let max_age = secs(
                raw.jwks_max_age_secs,
                DEFAULT_JWKS_MAX_AGE_SECS,
                "jwks_max_age_secs",
            )?;
            KeySource::Remote(
                RemoteJwks::new(url, refresh, max_age).map_err(|e| format!("{at}jwks_url: {e}"))?,
            )
        }
        (None, None) => {
            for (name, given) in [
                ("jwks_refresh_secs", raw.jwks_refresh_secs.is_some()),
                ("jwks_max_age_secs", raw.jwks_max_age_secs.is_some()),
            ] {
                if given {
                    return Err(format!("{at}{name}: only with jwks_url"));
                }
            }
            KeySource::None
        }
    };
    let has_keys = !matches!(keys, KeySource::None);
    let secret = match raw.secret {
        Some(s) if !s.is_empty() => Some(s.into_bytes()),
        Some(_) if has_keys => {
            return Err(format!(
                "{at}secret: must not be empty (omit it to accept no HS256)"
            ));
        }
        None if has_keys => None,
        _ => {
            return Err(format!(
                "{at}secret: required, a non-empty string (the HS256 signing key), \
                 unless jwks or jwks_url gives public keys"
            ));
        }
    };
    Ok(Provider {
        issuer: raw.issuer,
        audience: raw.audience,
        secret,
        keys,
    })
}

/// A lower-cased header name a claim may be forwarded in.
fn header_name(name: &str, at: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if !valid_header_name(&lower) {
        return Err(format!("{at}: {name:?} is not a valid HTTP header name"));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!("{at}: must not be `{lower}`"));
    }
    Ok(lower)
}

/// The path without its query string (and fragment, should one ever arrive).
pub fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Dot segments, percent-encoded dots/slashes and backslashes can make an
/// upstream resolve `/public/../admin` to `/admin`; such paths never match a
/// prefix rule (so they need a token).
fn has_ambiguous_segments(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains('\\')
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c = Config::parse(r#"{"secret":"s"}"#).unwrap();
        let [p] = &c.providers[..] else {
            panic!("{c:?}")
        };
        assert_eq!(p.secret.as_deref(), Some(&b"s"[..]));
        assert!(matches!(p.keys, KeySource::None));
        assert!(p.issuer.is_none() && p.audience.is_none());
        assert!(!c.by_issuer);
        assert_eq!(c.leeway_secs, 5);
        assert_eq!(c.subject_claim, "sub");
        assert_eq!(
            c.claims_to_headers,
            [("sub".to_owned(), "x-authenticated-user".to_owned())]
        );
        assert!(c.required_scopes.is_empty());
        assert!(c.require_exp);
        assert_eq!(c.max_token_bytes, 8192);
        assert!(c.public_paths.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"{"secret": "k", "issuer": null, "audience": "api", "leeway_secs": 10,
                "public_paths": ["/user-service/login"], "subject_claim": "username",
                "subject_header": "X-User", "require_exp": false, "max_token_bytes": 100}"#,
        )
        .unwrap();
        assert_eq!(c.providers[0].audience.as_deref(), Some("api"));
        assert_eq!(c.leeway_secs, 10);
        assert_eq!(c.subject_claim, "username");
        assert_eq!(
            c.claims_to_headers,
            [("username".to_owned(), "x-user".to_owned())]
        );
        assert!(!c.require_exp);
    }

    #[test]
    fn secret_required() {
        for json in [r#"{}"#, r#"{"secret":""}"#, r#"{"secret":null}"#] {
            let err = Config::parse(json).unwrap_err();
            assert!(err.starts_with("secret: required"), "{err}");
        }
    }

    #[test]
    fn a_jwks_given_as_json_text_is_read_as_the_set() {
        let set = include_str!("../tests/fixtures/jwks.json");
        let text = serde_json::to_string(&Value::String(set.to_owned())).unwrap();
        let c = Config::parse(&format!(r#"{{"jwks": {text}}}"#)).unwrap();
        assert!(matches!(&c.providers[0].keys, KeySource::Inline(k) if k.len() == 9));
        let err = Config::parse(r#"{"jwks": "not json"}"#).unwrap_err();
        assert!(err.starts_with("jwks: a string must be a JWK Set"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse(r#"{"secret":"s","issuerr":"x"}"#).unwrap_err();
        assert!(err.contains("issuerr"), "{err}");
    }

    #[test]
    fn bad_values_refused() {
        for (json, field) in [
            (
                r#"{"secret":"s","subject_header":"bad header"}"#,
                "subject_header",
            ),
            (
                r#"{"secret":"s","subject_header":"authorization"}"#,
                "subject_header",
            ),
            (r#"{"secret":"s","subject_claim":""}"#, "subject_claim"),
            (r#"{"secret":"s","max_token_bytes":0}"#, "max_token_bytes"),
            (r#"{"secret":"s","public_paths":["login"]}"#, "public_paths"),
        ] {
            let err = Config::parse(json).unwrap_err();
            assert!(err.starts_with(field), "{json}: {err}");
        }
        assert!(Config::parse("[]").is_err());
        assert!(Config::parse(r#"{"secret":"s","leeway_secs":-1}"#).is_err());
    }

    #[test]
    fn public_paths_match() {
        let c =
            Config::parse(r#"{"secret":"s","public_paths":["/user-service/login","/static/*"]}"#)
                .unwrap();
        assert!(c.is_public("/user-service/login"));
        assert!(c.is_public("/user-service/login?next=/x"));
        assert!(!c.is_public("/user-service/login/extra"));
        assert!(!c.is_public("/user-service/loginx"));
        assert!(!c.is_public("/user-service/profile"));
        assert!(c.is_public("/static/app.js"));
        assert!(c.is_public("/static/"));
        assert!(!c.is_public("/static"));
        assert!(!c.is_public("/static/../admin"));
        assert!(!c.is_public("/static/%2e%2e/admin"));
        assert!(!c.is_public("/static/..%2Fadmin"));
        assert!(!c.is_public("/static/.\\admin"));
    }
}
