//! `jwks_url`: a provider's key set, fetched through `outbound` and kept
//! fresh across requests through `kv`.
//!
//! Every request runs on a fresh instance started from the snapshot taken
//! after `configure`, so what one request learns reaches the next only
//! through `kv`:
//!
//! - `configure` fetches the set once; it lands in the snapshot, so the
//!   common request parses no JSON at all.
//! - `jwks-at:{url}` holds when a request last stored a good set (decimal
//!   microseconds); only if it is newer than the snapshot's is the set
//!   itself, `jwks:{url}`, read and parsed.
//! - A set older than `jwks_max_age_secs`, or a token whose `kid` it lacks,
//!   asks for a refresh; `jwks-try:{url}`, an increment that expires after
//!   `jwks_refresh_secs`, lets one request per interval fetch, across all
//!   requests. A failed fetch keeps the last good set.

use std::borrow::Cow;

use crate::config::{KeySource, Provider};
use crate::imports::{FetchError, Field, Imports};
use crate::keys::{self, PublicKey};

/// A provider's `jwks_url` and how it is kept fresh.
#[derive(Debug, Clone)]
pub struct RemoteJwks {
    url: String,
    refresh_ms: u64,
    max_age_micros: u64,
    /// Fetched by `configure`: in the snapshot every request starts from.
    snapshot: Option<KeySet>,
}

/// Keys and when they were fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<PublicKey>,
    /// Microseconds since the Unix epoch; 0 for "never".
    pub fetched_at: u64,
}

/// Why a refresh is asked for; `fresh` ones bypass caches on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The set is older than `jwks_max_age_secs` (or there is none).
    Age,
    /// A token names a key the set lacks: the provider may have rotated.
    UnknownKey,
}

/// A host denial that is our quota, not the origin's grant.
const QUOTA_HINT: &str = "outbound_calls_per_request";

impl RemoteJwks {
    /// # Errors
    /// `url` is not an absolute `http(s)` URL.
    pub fn new(url: String, refresh_secs: u64, max_age_secs: u64) -> Result<Self, String> {
        origin(&url)?;
        Ok(Self {
            url,
            refresh_ms: refresh_secs.saturating_mul(1000),
            max_age_micros: max_age_secs.saturating_mul(1_000_000),
            snapshot: None,
        })
    }

    /// `configure`'s one fetch. A failure leaves the set to later requests,
    /// except a denial of the origin, which is a config mistake.
    ///
    /// # Errors
    /// The origin is not granted (`allow_outbound`).
    pub fn prime(&mut self, imports: &dyn Imports) -> Result<(), String> {
        let now = imports.now_micros();
        let outcome = fetch(imports, &self.url, false);
        match outcome {
            Ok(fetched) => {
                self.snapshot = Some(KeySet {
                    keys: fetched.keys,
                    fetched_at: now,
                });
                Ok(())
            }
            Err(Failure::Denied(m)) if !m.contains(QUOTA_HINT) => Err(format!(
                "jwks_url: this policy may not reach {}: add it to the policy's \
                 `allow_outbound` ({m})",
                origin(&self.url).unwrap_or(&self.url)
            )),
            Err(failure) => {
                self.warn(imports, "auth could not fetch the key set", &failure);
                Ok(())
            }
        }
    }

    /// The newest good set: another request's (from `kv`) if not older
    /// than the snapshot's, else the snapshot's. Empty when there is none yet.
    pub fn current(&self, imports: &dyn Imports) -> Cow<'_, KeySet> {
        let snapshot_at = self.snapshot.as_ref().map_or(0, |s| s.fetched_at);
        let stored_at = imports
            .kv_get(&self.key("jwks-at"))
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok());
        // Only requests store a set, and they run after `configure`: one
        // stored at the snapshot's very time (a clock that did not move) is
        // still the newer.
        if let Some(at) = stored_at.filter(|&at| at >= snapshot_at) {
            let stored = imports
                .kv_get(&self.key("jwks"))
                .map(|body| keys::parse_fetched(&body));
            match stored {
                Some(Ok(fetched)) => {
                    return Cow::Owned(KeySet {
                        keys: fetched.keys,
                        fetched_at: at,
                    });
                }
                // Evicted, or not what we stored: the snapshot will do.
                Some(Err(e)) => self.warn(
                    imports,
                    "auth ignored the stored key set",
                    &Failure::Unusable(e),
                ),
                None => {}
            }
        }
        match &self.snapshot {
            Some(set) => Cow::Borrowed(set),
            None => Cow::Owned(KeySet {
                keys: Vec::new(),
                fetched_at: 0,
            }),
        }
    }

    pub fn is_stale(&self, set: &KeySet, now_micros: u64) -> bool {
        now_micros.saturating_sub(set.fetched_at) > self.max_age_micros
    }

    /// Fetches the set again if no other request did within
    /// `jwks_refresh_secs`, stores it for the others, and returns it; `None`
    /// when it is not this request's turn or the fetch failed (logged).
    pub fn refresh(&self, imports: &dyn Imports, why: Refresh) -> Option<KeySet> {
        match imports.kv_increment(&self.key("jwks-try"), 1, Some(self.refresh_ms)) {
            Ok(1) => {}
            Ok(_) => return None,
            Err(e) => {
                // Without the slot every request could fetch: none does.
                self.warn(
                    imports,
                    "auth could not refresh the key set",
                    &Failure::Kv(e),
                );
                return None;
            }
        }
        let good = match fetch(imports, &self.url, why == Refresh::UnknownKey) {
            Ok(good) => good,
            Err(failure) => {
                self.warn(imports, "auth could not refresh the key set", &failure);
                return None;
            }
        };
        let now = imports.now_micros();
        let stored = imports
            .kv_set(&self.key("jwks"), &good.body, None)
            .and_then(|()| imports.kv_set(&self.key("jwks-at"), now.to_string().as_bytes(), None));
        if let Err(e) = stored {
            // This request still uses the new keys; the next ones fetch again.
            self.warn(imports, "auth could not store the key set", &Failure::Kv(e));
        }
        Some(KeySet {
            keys: good.keys,
            fetched_at: now,
        })
    }

    fn key(&self, what: &str) -> String {
        format!("{what}:{}", self.url)
    }

    fn warn(&self, imports: &dyn Imports, message: &str, failure: &Failure) {
        let mut fields = vec![("url", Field::Str(self.url.clone()))];
        match failure {
            Failure::Status(status) => {
                fields.push(("error", Field::Str("unexpected status".into())));
                fields.push(("status", Field::Int(i64::from(*status))));
            }
            Failure::Denied(m) | Failure::Failed(m) | Failure::Unusable(m) | Failure::Kv(m) => {
                fields.push(("error", Field::Str(m.clone())));
            }
        }
        imports.warn(message, &fields);
    }
}

/// Primes every provider's `jwks_url` (in `configure`).
///
/// # Errors
/// A provider's origin is not granted; the message names the provider.
pub fn prime_all(
    providers: &mut [Provider],
    by_issuer: bool,
    imports: &dyn Imports,
) -> Result<(), String> {
    for (i, provider) in providers.iter_mut().enumerate() {
        if let KeySource::Remote(remote) = &mut provider.keys {
            remote.prime(imports).map_err(|e| {
                if by_issuer {
                    format!("providers[{i}].{e}")
                } else {
                    e
                }
            })?;
        }
    }
    Ok(())
}

/// Why a fetch gave no keys.
#[derive(Debug)]
enum Failure {
    Denied(String),
    Failed(String),
    Status(u16),
    /// The body is not a JWK Set with a usable key.
    Unusable(String),
    Kv(String),
}

/// A good set: its keys and the body they came from (what `kv` keeps).
struct Good {
    keys: Vec<PublicKey>,
    body: Vec<u8>,
}

fn fetch(imports: &dyn Imports, url: &str, fresh: bool) -> Result<Good, Failure> {
    let response = imports.get(url, fresh).map_err(|e| match e {
        FetchError::Denied(m) => Failure::Denied(m),
        FetchError::Failed(m) => Failure::Failed(m),
    })?;
    if response.status != 200 {
        return Err(Failure::Status(response.status));
    }
    let fetched = keys::parse_fetched(&response.body).map_err(Failure::Unusable)?;
    if let Some(first) = fetched.skipped.first() {
        imports.warn(
            "auth skipped keys of the key set",
            &[
                ("url", Field::Str(url.to_owned())),
                ("skipped", Field::Int(fetched.skipped.len() as i64)),
                ("first", Field::Str(first.clone())),
            ],
        );
    }
    Ok(Good {
        keys: fetched.keys,
        body: response.body,
    })
}

/// `scheme://authority` of an absolute `http(s)` URL, what `allow_outbound`
/// lists.
fn origin(url: &str) -> Result<&str, String> {
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| format!("{url:?} is not an absolute http or https URL"))?;
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if authority_len == 0 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} is not an absolute http or https URL"));
    }
    Ok(&url[..url.len() - rest.len() + authority_len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::imports::HttpResponse;
    use crate::jwt::{self, Code};
    use crate::testing::{FIXTURES_NOW as NOW, FakeHost, fixture_token as token};
    use serde_json::{Value, json};

    const URL: &str = "https://idp.example/.well-known/jwks.json";

    /// The fixture JWKS with only the keys of these kids.
    fn jwks_of(kids: &[&str]) -> String {
        let all: Value = serde_json::from_str(include_str!("../tests/fixtures/jwks.json")).unwrap();
        let keys: Vec<_> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
            .cloned()
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// A configured policy (`configure` run against `host`).
    fn configured(host: &FakeHost, extra: Value) -> Config {
        let mut cfg = json!({ "jwks_url": URL, "issuer": "https://idp.example",
            "audience": "sidecar-api" });
        cfg.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut cfg = Config::parse(&cfg.to_string()).unwrap();
        prime_all(&mut cfg.providers, cfg.by_issuer, host).unwrap();
        cfg
    }

    fn subject(cfg: &Config, host: &FakeHost, name: &str) -> Result<String, Code> {
        jwt::authenticate(&token(name), cfg, host)
            .map(|v| v.subject)
            .map_err(|d| d.code)
    }

    fn remote(cfg: &Config) -> &RemoteJwks {
        match &cfg.providers[0].keys {
            KeySource::Remote(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn configure_fetches_the_set_and_requests_parse_nothing() {
        let host = FakeHost::at(NOW);
        host.answer_json(URL, 200, &jwks_of(&["ec-p256", "rsa-rs256"]));
        let cfg = configured(&host, json!({}));
        assert_eq!(host.fetches(), 1);
        // The snapshot's set, borrowed: no kv value, no JSON parsed.
        assert!(matches!(remote(&cfg).current(&host), Cow::Borrowed(_)));
        assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
        assert_eq!(subject(&cfg, &host, "valid_RS256").unwrap(), "user-rs256");
        assert_eq!(host.fetches(), 1, "no fetch per request");
    }

    #[test]
    fn an_origin_not_granted_refuses_the_config() {
        let host = FakeHost::at(NOW);
        host.answer(
            URL,
            Err(FetchError::Denied(
                "https://idp.example:443 is not in this policy's `allow_outbound`".into(),
            )),
        );
        let mut cfg = Config::parse(&json!({ "jwks_url": URL }).to_string()).unwrap();
        let err = prime_all(&mut cfg.providers, false, &host).unwrap_err();
        assert!(
            err.starts_with("jwks_url: this policy may not reach https://idp.example: add it to the policy's `allow_outbound`"),
            "{err}"
        );
        // A spent quota is no config mistake: the keys come later.
        host.answer(
            URL,
            Err(FetchError::Denied(
                "this request's 4 outbound calls are spent (`outbound_calls_per_request`)".into(),
            )),
        );
        assert!(prime_all(&mut cfg.providers, false, &host).is_ok());
        assert_eq!(host.warned("auth could not fetch the key set"), 1);
    }

    #[test]
    fn a_failed_first_fetch_is_retried_by_a_request() {
        let host = FakeHost::at(NOW);
        host.answer(URL, Err(FetchError::Failed("connection refused".into())));
        let cfg = configured(&host, json!({}));
        assert_eq!(host.warned("auth could not fetch the key set"), 1);
        let (_, fields) = host.warnings.borrow()[0].clone();
        assert!(fields.contains(&("url".into(), Field::Str(URL.into()))));
        assert!(fields.contains(&("error".into(), Field::Str("connection refused".into()))));

        host.answer_json(URL, 200, &jwks_of(&["ec-p256"]));
        assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
        assert_eq!(host.fetches(), 2);
        // Stored for the other requests, which no longer fetch.
        assert!(host.kv_value(&format!("jwks:{URL}")).is_some());
        assert_eq!(
            host.kv_value(&format!("jwks-at:{URL}")).unwrap(),
            (NOW * 1_000_000).to_string().into_bytes()
        );
        assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
        assert_eq!(host.fetches(), 2);
    }

    #[test]
    fn a_rotated_key_is_found_by_one_refresh_per_interval() {
        let host = FakeHost::at(NOW);
        host.answer_json(URL, 200, &jwks_of(&["ec-p256"]));
        let cfg = configured(&host, json!({ "jwks_refresh_secs": 30 }));
        // The provider rotates to a new key: tokens naming it trigger a refresh.
        host.answer_json(URL, 200, &jwks_of(&["ec-p256", "ed25519"]));
        assert_eq!(subject(&cfg, &host, "valid_EdDSA").unwrap(), "user-eddsa");
        assert_eq!(
            host.requests.borrow()[1],
            (URL.to_owned(), true),
            "no-cache"
        );
        // Later requests read the stored set (newer than the snapshot's).
        assert_eq!(subject(&cfg, &host, "valid_EdDSA").unwrap(), "user-eddsa");
        assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
        assert_eq!(host.fetches(), 2);

        // A storm of unknown kids: one fetch per interval, whatever comes
        // (and this interval's was the rotation's).
        for _ in 0..50 {
            assert_eq!(subject(&cfg, &host, "unknown_kid"), Err(Code::UnknownKey));
            assert_eq!(
                subject(&cfg, &host, "jku_with_unknown_kid"),
                Err(Code::UnknownKey)
            );
        }
        assert_eq!(host.fetches(), 2);
        host.advance_secs(29);
        assert_eq!(subject(&cfg, &host, "unknown_kid"), Err(Code::UnknownKey));
        assert_eq!(host.fetches(), 2);
        host.advance_secs(1);
        for _ in 0..50 {
            assert_eq!(subject(&cfg, &host, "unknown_kid"), Err(Code::UnknownKey));
        }
        assert_eq!(host.fetches(), 3);
    }

    #[test]
    fn a_token_without_kid_may_refresh_for_its_algorithm() {
        let host = FakeHost::at(NOW);
        host.answer_json(URL, 200, &jwks_of(&["rsa-rs256"]));
        let cfg = configured(&host, json!({}));
        host.answer_json(URL, 200, &jwks_of(&["rsa-rs256", "ec-p256"]));
        assert_eq!(
            subject(&cfg, &host, "valid_ES256_no_kid").unwrap(),
            "no-kid"
        );
        assert_eq!(host.fetches(), 2);
        // `none` or HS256 never costs a fetch.
        for name in [
            "hs256_with_rsa_public_n_no_kid",
            "hs256_with_rsa_public_pem_no_kid",
        ] {
            assert_eq!(subject(&cfg, &host, name), Err(Code::UnsupportedAlgorithm));
        }
        assert_eq!(host.fetches(), 2);
    }

    #[test]
    fn failed_refreshes_keep_the_last_good_set() {
        let host = FakeHost::at(NOW);
        host.answer_json(URL, 200, &jwks_of(&["ec-p256"]));
        let cfg = configured(
            &host,
            json!({ "jwks_refresh_secs": 10, "jwks_max_age_secs": 60 }),
        );
        let failures = [
            Err(FetchError::Failed("timeout".into())),
            Ok(HttpResponse {
                status: 503,
                body: b"busy".to_vec(),
            }),
            Ok(HttpResponse {
                status: 200,
                body: b"<html>garbage</html>".to_vec(),
            }),
            Ok(HttpResponse {
                status: 200,
                body: br#"{"keys":[{"kty":"oct","k":"AA"}]}"#.to_vec(),
            }),
        ];
        for (i, failure) in failures.into_iter().enumerate() {
            host.answer(URL, failure);
            host.advance_secs(61); // too old: refresh first
            assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
            assert_eq!(host.fetches(), 2 + i);
            assert_eq!(host.warned("auth could not refresh the key set"), 1 + i);
        }
        let warnings = host.warnings.borrow();
        assert!(warnings[1].1.contains(&("status".into(), Field::Int(503))));
        drop(warnings);

        // Once the provider answers again, its set replaces the old one.
        host.answer_json(URL, 200, &jwks_of(&["ed25519"]));
        host.advance_secs(61);
        assert_eq!(subject(&cfg, &host, "valid_EdDSA").unwrap(), "user-eddsa");
        assert_eq!(subject(&cfg, &host, "valid_ES256"), Err(Code::UnknownKey));
    }

    #[test]
    fn an_old_set_is_fetched_again_after_max_age() {
        let host = FakeHost::at(NOW);
        host.answer_json(URL, 200, &jwks_of(&["ec-p256", "ed25519"]));
        let cfg = configured(&host, json!({ "jwks_max_age_secs": 300 }));
        // The provider dropped the Ed25519 key: after max age, it is gone.
        host.answer_json(URL, 200, &jwks_of(&["ec-p256"]));
        host.advance_secs(300);
        assert_eq!(subject(&cfg, &host, "valid_EdDSA").unwrap(), "user-eddsa");
        assert_eq!(host.fetches(), 1);
        host.advance_secs(1);
        assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
        assert_eq!(host.fetches(), 2);
        assert_eq!(host.requests.borrow()[1], (URL.to_owned(), false));
        // The refresh slot is taken: no fetch for the dropped kid now.
        assert_eq!(subject(&cfg, &host, "valid_EdDSA"), Err(Code::UnknownKey));
        assert_eq!(host.fetches(), 2);
    }

    #[test]
    fn a_stored_set_that_no_longer_parses_falls_back_to_the_snapshot() {
        let host = FakeHost::at(NOW);
        host.answer_json(URL, 200, &jwks_of(&["ec-p256"]));
        let cfg = configured(&host, json!({}));
        host.kv_set(&format!("jwks:{URL}"), b"junk", None).unwrap();
        host.kv_set(
            &format!("jwks-at:{URL}"),
            (NOW * 1_000_000 + 1).to_string().as_bytes(),
            None,
        )
        .unwrap();
        assert_eq!(subject(&cfg, &host, "valid_ES256").unwrap(), "user-es256");
        assert_eq!(host.warned("auth ignored the stored key set"), 1);
    }

    #[test]
    fn urls_must_be_absolute_http() {
        for url in [
            "idp.example/jwks",
            "ftp://idp.example/jwks",
            "https:///jwks",
            "https://idp .example/",
        ] {
            assert!(RemoteJwks::new(url.into(), 30, 300).is_err(), "{url}");
        }
        assert_eq!(
            origin("http://127.0.0.1:8080/jwks?x#y").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            origin("https://idp.example").unwrap(),
            "https://idp.example"
        );
    }
}
