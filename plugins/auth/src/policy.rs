//! What `on-request` decides, independent of the generated bindings.

use serde_json::{Map, Value};

use crate::config::Config;
use crate::imports::Imports;
use crate::jwt::{self, Code, Denial};
use crate::scopes;

/// The outcome for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Listed in `public_paths`: pass without a token.
    Public,
    /// Token verified: forward with these headers (name, value) set, from
    /// `claims_to_headers`.
    Allow(Vec<(String, String)>),
    /// Answer 401.
    Deny(Denial),
    /// Answer 403: the token is good but lacks these scopes the path
    /// requires (`required_scopes`).
    Forbid(Vec<String>),
}

/// Decides for a request on `path` carrying these `authorization` values.
pub fn evaluate<'a>(
    cfg: &Config,
    path: &str,
    authorization: impl Iterator<Item = &'a [u8]>,
    imports: &dyn Imports,
) -> Verdict {
    if cfg.is_public(path) {
        return Verdict::Public;
    }
    let verified =
        match jwt::bearer_token(authorization).and_then(|t| jwt::authenticate(t, cfg, imports)) {
            Ok(v) => v,
            Err(denial) => return Verdict::Deny(denial),
        };
    let missing = scopes::missing(&cfg.required_scopes, path, &verified.claims);
    if !missing.is_empty() {
        return Verdict::Forbid(missing.into_iter().map(str::to_owned).collect());
    }
    Verdict::Allow(claim_headers(cfg, &verified.claims))
}

/// The `claims_to_headers` values of a verified token. Strings, numbers and
/// booleans only; a claim that is absent, of another type, or that could
/// not be a header value (control characters) sets no header.
fn claim_headers(cfg: &Config, claims: &Map<String, Value>) -> Vec<(String, String)> {
    cfg.claims_to_headers
        .iter()
        .filter_map(|(claim, header)| {
            let value = match claims.get(claim)? {
                Value::String(s) if !s.chars().any(char::is_control) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((header.clone(), value))
        })
        .collect()
}

/// A response to send instead of forwarding the request.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The project's JSON error body: `{"error": ..., "code": ...}`.
fn error_body(message: &str, code: &str) -> Vec<u8> {
    serde_json::json!({ "error": message, "code": code })
        .to_string()
        .into_bytes()
}

/// The 401 for a denial, with the RFC 6750 challenge: a bare `Bearer` when no
/// token was sent, `error="invalid_token"` when one was sent and refused.
pub fn denial_reply(denial: &Denial) -> Reply {
    let challenge = if denial.code == Code::MissingToken {
        "Bearer"
    } else {
        r#"Bearer error="invalid_token""#
    };
    Reply {
        status: 401,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("www-authenticate".into(), challenge.into()),
        ],
        body: error_body(denial.reason, denial.code.as_str()),
    }
}

/// The 403 for a token without the scopes a path requires, with the
/// RFC 6750 §3.1 challenge naming them.
pub fn forbidden_reply(missing: &[String]) -> Reply {
    Reply {
        status: 403,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "www-authenticate".into(),
                format!(
                    r#"Bearer error="insufficient_scope", scope="{}""#,
                    missing.join(" ")
                ),
            ),
        ],
        body: error_body("token lacks a scope this path requires", INSUFFICIENT_SCOPE),
    }
}

/// The code of a 403 (a 401's codes are `jwt::Code`s).
pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";

/// Fails closed should the host ever call a hook before `configure`.
pub fn not_configured_reply() -> Reply {
    Reply {
        status: 500,
        headers: vec![("content-type".into(), "application/json".into())],
        body: error_body("auth policy is not configured", "policy_not_configured"),
    }
}

/// Fails closed should the host refuse to set or strip the subject header:
/// forwarding then could let a spoofed identity through.
pub fn edit_refused_reply() -> Reply {
    Reply {
        status: 500,
        headers: vec![("content-type".into(), "application/json".into())],
        body: error_body(
            "auth policy could not update the request",
            "policy_edit_refused",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;
    use serde_json::Value;

    fn cfg() -> Config {
        Config::parse(r#"{"secret":"s","public_paths":["/user-service/login","/pub/*"]}"#).unwrap()
    }

    #[test]
    fn public_paths_need_no_token() {
        let v = evaluate(
            &cfg(),
            "/user-service/login?x=1",
            std::iter::empty(),
            &FakeHost::at(0),
        );
        assert_eq!(v, Verdict::Public);
        let v = evaluate(
            &cfg(),
            "/pub/a/b",
            std::iter::once(&b"Bearer junk"[..]),
            &FakeHost::at(0),
        );
        assert_eq!(v, Verdict::Public);
    }

    #[test]
    fn other_paths_need_a_token() {
        let v = evaluate(
            &cfg(),
            "/user-service/profile",
            std::iter::empty(),
            &FakeHost::at(0),
        );
        let Verdict::Deny(d) = v else { panic!("{v:?}") };
        assert_eq!(d.code, Code::MissingToken);
        let v = evaluate(
            &cfg(),
            "/x",
            std::iter::once(&b"Bearer a.b"[..]),
            &FakeHost::at(0),
        );
        let Verdict::Deny(d) = v else { panic!("{v:?}") };
        assert_eq!(d.code, Code::MalformedToken);
    }

    #[test]
    fn denial_replies() {
        let missing = denial_reply(&Denial {
            code: Code::MissingToken,
            reason: "missing bearer token",
        });
        assert_eq!(missing.status, 401);
        assert!(
            missing
                .headers
                .contains(&("www-authenticate".into(), "Bearer".into()))
        );
        assert!(
            missing
                .headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        let body: Value = serde_json::from_slice(&missing.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "missing bearer token", "code": "missing_token"})
        );

        let bad = denial_reply(&Denial {
            code: Code::BadSignature,
            reason: "r",
        });
        assert!(bad.headers.contains(&(
            "www-authenticate".into(),
            r#"Bearer error="invalid_token""#.into()
        )));
        let body: Value = serde_json::from_slice(&bad.body).unwrap();
        assert_eq!(body["code"], "bad_signature");
    }

    #[test]
    fn unconfigured_fails_closed() {
        let r = not_configured_reply();
        assert_eq!(r.status, 500);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["code"], "policy_not_configured");
    }

    #[test]
    fn refused_edit_fails_closed() {
        let r = edit_refused_reply();
        assert_eq!(r.status, 500);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["code"], "policy_edit_refused");
    }
}
