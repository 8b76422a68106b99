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

/// What `on-response` knows about the exchange.
pub struct Exchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Request headers as finally sent upstream.
    pub req_headers: &'a [(&'a str, &'a str)],
    pub route: &'a str,
    pub client: &'a str,
    pub status: u16,
    pub resp_headers: &'a [(&'a str, &'a str)],
    pub body_len: usize,
    /// Start of the request, from `on-request` (absent if it never ran).
    pub started_micros: Option<u64>,
    pub now_micros: u64,
}

fn header<'a>(headers: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Builds the fields. Only the listed headers are read, so credentials in
/// `authorization` or `cookie` can never end up in the line.
pub fn access_fields(cfg: &Config, x: &Exchange<'_>) -> Vec<(&'static str, FieldValue)> {
    let s = |v: &str| FieldValue::Str(v.to_string());
    let mut fields = vec![
        ("method", s(x.method)),
        ("path", FieldValue::Str(redact_path(x.path, cfg))),
        ("status", FieldValue::Int(i64::from(x.status))),
    ];
    if let Some(start) = x.started_micros {
        let micros = x.now_micros.saturating_sub(start);
        fields.push(("duration_ms", FieldValue::Float(micros as f64 / 1000.0)));
    }
    if let Some(user) = header(x.req_headers, &cfg.user_header) {
        fields.push(("user", s(user)));
    }
    if let Some(id) = header(x.req_headers, "x-request-id") {
        fields.push(("request_id", s(id)));
    }
    fields.push(("route", s(x.route)));
    fields.push(("client", s(x.client)));
    if let Some(cache) = header(x.resp_headers, "x-cache") {
        fields.push(("cache", s(cache)));
    }
    let bytes = i64::try_from(x.body_len).unwrap_or(i64::MAX);
    fields.push(("bytes", FieldValue::Int(bytes)));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange<'a>(
        req_headers: &'a [(&'a str, &'a str)],
        resp_headers: &'a [(&'a str, &'a str)],
    ) -> Exchange<'a> {
        Exchange {
            method: "GET",
            path: "/user-service/profile?token=abc&x=1",
            req_headers,
            route: "users",
            client: "127.0.0.1:5555",
            status: 200,
            resp_headers,
            body_len: 42,
            started_micros: Some(1_000_000),
            now_micros: 1_012_500,
        }
    }

    fn get<'a>(fields: &'a [(&str, FieldValue)], key: &str) -> Option<&'a FieldValue> {
        fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    #[test]
    fn full_line() {
        let cfg = Config::parse("{}").unwrap();
        let req = [
            ("x-request-id", "rid-1"),
            ("x-authenticated-user", "admin"),
            ("authorization", "Bearer secret.jwt.value"),
            ("cookie", "session=s3cr3t"),
        ];
        let resp = [("x-cache", "hit"), ("set-cookie", "a=b")];
        let f = access_fields(&cfg, &exchange(&req, &resp));
        let keys: Vec<&str> = f.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "method",
                "path",
                "status",
                "duration_ms",
                "user",
                "request_id",
                "route",
                "client",
                "cache",
                "bytes"
            ]
        );
        assert_eq!(
            get(&f, "path"),
            Some(&FieldValue::Str(
                "/user-service/profile?token=[redacted]&x=1".into()
            ))
        );
        assert_eq!(get(&f, "status"), Some(&FieldValue::Int(200)));
        assert_eq!(get(&f, "duration_ms"), Some(&FieldValue::Float(12.5)));
        assert_eq!(get(&f, "user"), Some(&FieldValue::Str("admin".into())));
        assert_eq!(
            get(&f, "request_id"),
            Some(&FieldValue::Str("rid-1".into()))
        );
        assert_eq!(get(&f, "cache"), Some(&FieldValue::Str("hit".into())));
        assert_eq!(get(&f, "bytes"), Some(&FieldValue::Int(42)));
        // No credential value appears anywhere in the line.
        let dump = format!("{f:?}");
        assert!(
            !dump.contains("secret.jwt.value") && !dump.contains("s3cr3t"),
            "{dump}"
        );
    }

    #[test]
    fn optional_fields_absent() {
        let cfg = Config::parse(r#"{"user_header":"X-User"}"#).unwrap();
        let mut x = exchange(&[("x-authenticated-user", "admin")], &[]);
        x.started_micros = None;
        let f = access_fields(&cfg, &x);
        for key in ["user", "request_id", "cache", "duration_ms"] {
            assert!(get(&f, key).is_none(), "{key}");
        }
        let x = exchange(&[("x-user", "bob")], &[]);
        let f = access_fields(&cfg, &x);
        assert_eq!(get(&f, "user"), Some(&FieldValue::Str("bob".into())));
    }

    #[test]
    fn clock_going_backwards_does_not_underflow() {
        let cfg = Config::parse("{}").unwrap();
        let mut x = exchange(&[], &[]);
        x.now_micros = 0;
        let f = access_fields(&cfg, &x);
        assert_eq!(get(&f, "duration_ms"), Some(&FieldValue::Float(0.0)));
    }
}
