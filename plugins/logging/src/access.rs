//! The fields of the one `access` line written per request.

use crate::config::Config;
use crate::redact::redact_path;

/// A log field value, mirroring the WIT `log.value` variant.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(String),
    Int(i64),
    Float(f64),
}

/// What `on-complete` knows about the exchange: the request head as finally
/// sent upstream, the response head as sent, and the completion record.
pub struct Exchange<'a> {
    pub method: &'a str,
    /// Path and query (`path?query`), before redaction.
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, … as the client spoke.
    pub protocol: &'a str,
    /// The user a later policy vouched for ([`vouched_user`]), if any.
    pub user: Option<&'a str>,
    pub request_id: &'a str,
    pub route: &'a str,
    pub client: &'a str,
    pub status: u16,
    /// The response's first `x-cache` value, if any.
    pub cache: Option<&'a str>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_micros: u64,
    /// Why the response did not go out whole; `None` when it did.
    pub error: Option<&'a str>,
}

/// The user to log: the first value of the user header that was not there
/// when the request reached this policy's request hook (`arrived`), so one
/// that a policy later in the chain (`auth`) set. `arrived` is `None` when
/// the request hook did not record it; then nothing is trusted.
///
/// What the request carried on arrival is the client's word (or that of a
/// policy before this one), and it is still there at completion whenever
/// the request did not get as far as the policy that replaces it: `auth`
/// failed, or a policy between this one and `auth` answered. Logging it
/// would let any client put any name on its request, so it is never
/// logged. The price: `logging` must come before the policy that sets the
/// header, and a client that sent exactly the name `auth` then set is
/// logged without one.
pub fn vouched_user(arrived: Option<&[Vec<u8>]>, now: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    let arrived = arrived?;
    now.into_iter().find(|v| !arrived.contains(v))
}

/// Builds the fields. The caller reads only the user and `x-cache` headers,
/// so credentials in `authorization` or `cookie` can never end up in the line.
pub fn access_fields(cfg: &Config, x: &Exchange<'_>) -> Vec<(&'static str, FieldValue)> {
    let s = |v: &str| FieldValue::Str(v.to_string());
    let int = |n: u64| FieldValue::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let mut fields = vec![
        ("method", s(x.method)),
        ("path", FieldValue::Str(redact_path(x.path, cfg))),
        ("protocol", s(x.protocol)),
        ("status", FieldValue::Int(i64::from(x.status))),
        (
            "duration_ms",
            FieldValue::Float(x.duration_micros as f64 / 1000.0),
        ),
    ];
    if let Some(user) = x.user {
        fields.push(("user", s(user)));
    }
    fields.push(("request_id", s(x.request_id)));
    fields.push(("route", s(x.route)));
    fields.push(("client", s(x.client)));
    if let Some(cache) = x.cache {
        fields.push(("cache", s(cache)));
    }
    // `bytes` predates the two counts and stays for existing log queries;
    // it is the response body as sent, like `response_bytes`.
    fields.push(("bytes", int(x.response_bytes)));
    fields.push(("request_bytes", int(x.request_bytes)));
    fields.push(("response_bytes", int(x.response_bytes)));
    if let Some(error) = x.error {
        fields.push(("error", s(error)));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange<'static> {
        Exchange {
            method: "GET",
            path: "/user-service/profile?token=abc&x=1",
            protocol: "HTTP/2",
            user: Some("admin"),
            request_id: "rid-1",
            route: "users",
            client: "127.0.0.1:5555",
            status: 200,
            cache: Some("hit"),
            request_bytes: 7,
            response_bytes: 42,
            duration_micros: 12_500,
            error: None,
        }
    }

    fn get<'a>(fields: &'a [(&str, FieldValue)], key: &str) -> Option<&'a FieldValue> {
        fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    #[test]
    fn full_line_has_every_field_in_order() {
        let cfg = Config::parse("{}").unwrap();
        let f = access_fields(&cfg, &exchange());
        let keys: Vec<&str> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "method",
                "path",
                "protocol",
                "status",
                "duration_ms",
                "user",
                "request_id",
                "route",
                "client",
                "cache",
                "bytes",
                "request_bytes",
                "response_bytes"
            ]
        );
        assert_eq!(
            get(&f, "path"),
            Some(&FieldValue::Str(
                "/user-service/profile?token=[redacted]&x=1".into()
            ))
        );
        assert_eq!(get(&f, "protocol"), Some(&FieldValue::Str("HTTP/2".into())));
        assert_eq!(get(&f, "status"), Some(&FieldValue::Int(200)));
        assert_eq!(get(&f, "duration_ms"), Some(&FieldValue::Float(12.5)));
        assert_eq!(get(&f, "user"), Some(&FieldValue::Str("admin".into())));
        assert_eq!(
            get(&f, "request_id"),
            Some(&FieldValue::Str("rid-1".into()))
        );
        assert_eq!(get(&f, "cache"), Some(&FieldValue::Str("hit".into())));
        assert_eq!(get(&f, "bytes"), Some(&FieldValue::Int(42)));
        assert_eq!(get(&f, "request_bytes"), Some(&FieldValue::Int(7)));
        assert_eq!(get(&f, "response_bytes"), Some(&FieldValue::Int(42)));
    }

    #[test]
    fn optional_fields_absent_when_unknown() {
        let cfg = Config::parse("{}").unwrap();
        let x = Exchange {
            user: None,
            cache: None,
            ..exchange()
        };
        let f = access_fields(&cfg, &x);
        for key in ["user", "cache", "error"] {
            assert!(get(&f, key).is_none(), "{key}");
        }
    }

    #[test]
    fn broken_off_exchange_says_why() {
        let cfg = Config::parse("{}").unwrap();
        let x = Exchange {
            error: Some("client went away"),
            ..exchange()
        };
        let f = access_fields(&cfg, &x);
        assert_eq!(f.last().map(|(k, _)| *k), Some("error"));
        assert_eq!(
            get(&f, "error"),
            Some(&FieldValue::Str("client went away".into()))
        );
    }

    fn values(vs: &[&str]) -> Vec<Vec<u8>> {
        vs.iter().map(|v| v.as_bytes().to_vec()).collect()
    }

    #[test]
    fn user_set_by_a_later_policy_is_vouched_for() {
        // auth set it; the client sent none, or another name.
        assert_eq!(
            vouched_user(Some(&[]), values(&["alice"])),
            Some(b"alice".to_vec())
        );
        assert_eq!(
            vouched_user(Some(&values(&["admin"])), values(&["alice"])),
            Some(b"alice".to_vec())
        );
        // A value appended after the client's is the policy's.
        assert_eq!(
            vouched_user(Some(&values(&["admin"])), values(&["admin", "alice"])),
            Some(b"alice".to_vec())
        );
    }

    #[test]
    fn user_the_client_sent_is_never_vouched_for() {
        // Denied before auth replaced it, or no auth in the chain.
        assert_eq!(
            vouched_user(Some(&values(&["admin"])), values(&["admin"])),
            None
        );
        assert_eq!(
            vouched_user(Some(&values(&["admin", "bob"])), values(&["bob"])),
            None
        );
        // auth stripped it and denied.
        assert_eq!(vouched_user(Some(&values(&["admin"])), vec![]), None);
        assert_eq!(vouched_user(Some(&[]), vec![]), None);
        // Unknown what arrived: nothing is trusted.
        assert_eq!(vouched_user(None, values(&["alice"])), None);
    }

    #[test]
    fn counts_beyond_i64_saturate() {
        let cfg = Config::parse("{}").unwrap();
        let x = Exchange {
            response_bytes: u64::MAX,
            ..exchange()
        };
        let f = access_fields(&cfg, &x);
        assert_eq!(get(&f, "response_bytes"), Some(&FieldValue::Int(i64::MAX)));
    }
}
