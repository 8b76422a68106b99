//! The policy's config, parsed and validated once per `configure` call.

use serde::Deserialize;
use serde_json::Value;

use crate::keys::{self, PublicKey};

/// Validated auth config. Fields are documented in the crate overview.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HS256 key; HS256 tokens are verified with it and nothing else.
    pub secret: Option<Vec<u8>>,
    /// Public keys from `jwks`, each with its one algorithm.
    pub keys: Vec<PublicKey>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
    pub public_paths: Vec<String>,
    pub subject_claim: String,
    pub subject_header: String,
    pub require_exp: bool,
    pub max_token_bytes: usize,
}

// `secret` is optional here so that its absence gets our own message
// ("secret: required...") instead of serde's generic one; `jwks` is read
// as JSON so that its errors can name the key and member.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    secret: Option<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default)]
    public_paths: Vec<String>,
    #[serde(default = "default_subject_claim")]
    subject_claim: String,
    #[serde(default = "default_subject_header")]
    subject_header: String,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
}

/// Allowance for clock skew between the issuer and this sidecar, applied to
/// `exp` and `nbf`. Kept small: every second of it is a second in which a
/// request with a token its issuer already refuses still passes, and may be
/// answered from the cache without the issuer being asked. Clocks synced by
/// NTP, let alone one host's clock, differ by far less than a second.
fn default_leeway() -> u64 {
    5
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_subject_header() -> String {
    "x-authenticated-user".into()
}
fn default_true() -> bool {
    true
}
fn default_max_token_bytes() -> usize {
    8192
}

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
    pub fn parse(json: &str) -> Result<Config, String> {
        let raw: RawConfig = policy_common::parse_config(json)?;
        let keys = match &raw.jwks {
            None => Vec::new(),
            Some(jwks) => keys::parse_jwks(jwks)?,
        };
        let secret = match raw.secret {
            Some(s) if !s.is_empty() => Some(s.into_bytes()),
            Some(_) if !keys.is_empty() => {
                return Err("secret: must not be empty (omit it to accept no HS256)".to_string());
            }
            None if !keys.is_empty() => None,
            _ => {
                return Err(
                    "secret: required, a non-empty string (the HS256 signing key), \
                     unless jwks gives public keys"
                        .to_string(),
                );
            }
        };
        let subject_header = raw.subject_header.to_ascii_lowercase();
        if !valid_header_name(&subject_header) {
            return Err(format!(
                "subject_header: {:?} is not a valid HTTP header name",
                raw.subject_header
            ));
        }
        if subject_header == "authorization" {
            return Err("subject_header: must not be `authorization`".to_string());
        }
        if raw.subject_claim.is_empty() {
            return Err("subject_claim: must not be empty".to_string());
        }
        if raw.max_token_bytes == 0 {
            return Err("max_token_bytes: must be greater than 0".to_string());
        }
        if let Some(p) = raw.public_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("public_paths: {p:?} must start with `/`"));
        }
        Ok(Config {
            secret,
            keys,
            issuer: raw.issuer,
            audience: raw.audience,
            leeway_secs: raw.leeway_secs,
            public_paths: raw.public_paths,
            subject_claim: raw.subject_claim,
            subject_header,
            require_exp: raw.require_exp,
            max_token_bytes: raw.max_token_bytes,
        })
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
        assert_eq!(c.secret.as_deref(), Some(&b"s"[..]));
        assert!(c.keys.is_empty());
        assert_eq!(c.leeway_secs, 5);
        assert_eq!(c.subject_claim, "sub");
        assert_eq!(c.subject_header, "x-authenticated-user");
        assert!(c.require_exp);
        assert_eq!(c.max_token_bytes, 8192);
        assert!(c.public_paths.is_empty());
        assert!(c.issuer.is_none() && c.audience.is_none());
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"{"secret": "k", "issuer": null, "audience": "api", "leeway_secs": 10,
                "public_paths": ["/user-service/login"], "subject_claim": "username",
                "subject_header": "X-User", "require_exp": false, "max_token_bytes": 100}"#,
        )
        .unwrap();
        assert_eq!(c.audience.as_deref(), Some("api"));
        assert_eq!(c.leeway_secs, 10);
        assert_eq!(c.subject_claim, "username");
        assert_eq!(c.subject_header, "x-user");
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
