//! `claims_to_headers` (what a verified token tells the upstream, and only
//! the token) and `required_scopes` (paths that need more than a token).

use policy_harness::{
    Configured, Decision, DecisionExt, FieldValue, HeadersExt, LogsExt, ResponseExt, get,
};
use serde_json::{Value, json};

use super::{FIXTURE_JWKS_NEXT, SECRET, USER_HEADER, denial_code, fixture_token, harness, sign};

/// The rotated fixture keys inline, with the fixtures' issuer and audience.
fn next_config(extra: Value) -> Value {
    let mut cfg = json!({
        "jwks": serde_json::from_str::<Value>(FIXTURE_JWKS_NEXT).unwrap(),
        "issuer": "https://idp.example",
        "audience": "sidecar-api",
    });
    cfg.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    cfg
}

fn forwarding() -> Value {
    next_config(json!({ "claims_to_headers": {
        "sub": "x-authenticated-user",
        "email": "X-User-Email",
        "email_verified": "x-email-verified",
        "tier": "x-tier",
        "groups": "x-groups",
    }}))
}

/// A request carrying every header a client might try to spoof.
fn spoofing(path: &str) -> policy_harness::RequestBuilder {
    get(path)
        .header(USER_HEADER, "admin")
        .header("x-user-email", "root@example.com")
        .header("X-Email-Verified", "true")
        .header("x-tier", "99")
        .header("x-groups", "admins")
}

fn forwarded(d: &Decision, name: &str) -> Vec<String> {
    let req = d.changed_request().unwrap_or_else(|| panic!("{d:?}"));
    req.header_all(name)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[test]
fn claims_are_forwarded_and_client_values_replaced() {
    let h = harness();
    let p = h.configure(forwarding()).unwrap();
    let d = p
        .on_request(spoofing("/orders").bearer(&fixture_token("next_ES256_admin")))
        .unwrap();
    assert!(d.continued(), "{d:?}");
    for (name, value) in [
        (USER_HEADER, vec!["alice"]),
        ("x-user-email", vec!["alice@example.com"]),
        ("x-email-verified", vec!["true"]),
        ("x-tier", vec!["3"]),
        // An array is not a header value: not forwarded, and not spoofed.
        ("x-groups", vec![]),
    ] {
        assert_eq!(forwarded(&d, name), value, "{name}");
    }
}

#[test]
fn claims_a_token_lacks_leave_no_client_value_behind() {
    let p_h = harness();
    let p = p_h.configure(forwarding()).unwrap();
    let d = p
        .on_request(spoofing("/orders").bearer(&fixture_token("next_ES256_reader")))
        .unwrap();
    assert_eq!(forwarded(&d, USER_HEADER), ["bob"]);
    assert_eq!(forwarded(&d, "x-user-email"), ["bob@example.com"]);
    for name in ["x-email-verified", "x-tier", "x-groups"] {
        assert!(forwarded(&d, name).is_empty(), "{name}");
    }
}

#[test]
fn spoofed_claim_headers_are_stripped_on_public_paths_and_denials() {
    let h = harness();
    let mut cfg = forwarding();
    cfg["public_paths"] = json!(["/login"]);
    let p = h.configure(cfg).unwrap();
    let d = p.on_request(spoofing("/login")).unwrap();
    for name in [
        USER_HEADER,
        "x-user-email",
        "x-email-verified",
        "x-tier",
        "x-groups",
    ] {
        assert!(forwarded(&d, name).is_empty(), "{name}");
    }
    // A denied request's access log sees no spoofed identity either.
    let d = p.on_request(spoofing("/orders")).unwrap();
    assert_eq!(denial_code(&d), "missing_token");
}

#[test]
fn subject_claim_and_header_remain_the_default_mapping() {
    let token = sign(&json!({ "sub": "x", "username": "bob", "exp": super::NOW + 60 }));
    let h = harness();
    let p = h
        .configure(
            json!({ "secret": SECRET, "subject_claim": "username", "subject_header": "x-user" }),
        )
        .unwrap();
    let d = p
        .on_request(get("/").header("x-user", "root").bearer(&token))
        .unwrap();
    assert_eq!(forwarded(&d, "x-user"), ["bob"]);
    assert!(forwarded(&d, USER_HEADER).is_empty());
    // With claims_to_headers, the subject claim is still required.
    let p2 = h
        .configure(json!({ "secret": SECRET, "claims_to_headers": { "email": "x-user-email" } }))
        .unwrap();
    let no_sub = sign(&json!({ "email": "a@example.com", "exp": super::NOW + 60 }));
    assert_eq!(
        denial_code(&p2.on_request(get("/").bearer(&no_sub)).unwrap()),
        "missing_subject"
    );
    // Only the mapped headers are the policy's: here, not the subject's.
    let d = p2.on_request(get("/").bearer(&token)).unwrap();
    assert!(matches!(d, Decision::Continue(None)), "{d:?}");
}

#[test]
fn claims_to_headers_config_errors_name_the_field() {
    for (cfg, field) in [
        (
            json!({ "secret": SECRET, "claims_to_headers": { "sub": "x-a" }, "subject_header": "x-b" }),
            "subject_header: give claims_to_headers or subject_header",
        ),
        (
            json!({ "secret": SECRET, "claims_to_headers": { "sub": "bad header" } }),
            "claims_to_headers.sub: ",
        ),
        (
            json!({ "secret": SECRET, "claims_to_headers": { "sub": "Authorization" } }),
            "claims_to_headers.sub: must not be `authorization`",
        ),
        (
            json!({ "secret": SECRET, "claims_to_headers": { "sub": "host" } }),
            "claims_to_headers.sub: must not be `host`",
        ),
        (
            json!({ "secret": SECRET, "claims_to_headers": { "email": "x-a", "sub": "X-A" } }),
            "claims_to_headers.sub: \"x-a\" is also the header of email",
        ),
        (
            json!({ "secret": SECRET, "claims_to_headers": { "sub": 1 } }),
            "claims_to_headers.sub: invalid type",
        ),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.starts_with(field), "{cfg}: {message}");
    }
}

fn scoped(p: &Configured<'_>, path: &str, token: &str) -> Decision {
    p.on_request(get(path).bearer(token)).unwrap()
}

/// The 403 for a missing scope, checked for shape; returns the challenge.
fn insufficient_scope(d: &Decision) -> String {
    let resp = d
        .responded()
        .unwrap_or_else(|| panic!("expected a 403, got {d:?}"));
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.json(),
        json!({ "error": "token lacks a scope this path requires", "code": "insufficient_scope" })
    );
    resp.header("www-authenticate").unwrap().to_owned()
}

#[test]
fn required_scopes_answer_403_without_the_scope() {
    let h = harness();
    let p = h
        .configure(next_config(json!({ "required_scopes": [
            { "prefix": "/admin", "scopes": ["admin"] },
            { "prefix": "/orders", "scopes": ["orders:read"] },
        ]})))
        .unwrap();
    let admin = fixture_token("next_ES256_admin"); // "orders:read admin"
    let reader = fixture_token("next_ES256_reader"); // "orders:read"
    let unscoped = fixture_token("next_ES256"); // no scope claim
    for path in ["/admin", "/admin/users?x=1", "/orders/1", "/profile"] {
        assert!(scoped(&p, path, &admin).continued(), "{path}");
    }
    for path in ["/orders", "/profile", "/administrator"] {
        assert!(scoped(&p, path, &reader).continued(), "{path}");
    }
    for path in [
        "/admin",
        "/admin/users",
        "/orders/../admin",
        "/%61dmin",
        "//admin",
    ] {
        let challenge = insufficient_scope(&scoped(&p, path, &reader));
        assert_eq!(
            challenge, r#"Bearer error="insufficient_scope", scope="admin""#,
            "{path}"
        );
    }
    let challenge = insufficient_scope(&scoped(&p, "/orders/1", &unscoped));
    assert!(challenge.contains(r#"scope="orders:read""#), "{challenge}");
    // An invalid token is still a 401, whatever the path.
    assert_eq!(
        denial_code(&scoped(&p, "/admin", "a.b.c")),
        "malformed_token"
    );

    let logs = h.logs();
    let codes: Vec<_> = logs
        .with_message("auth denied")
        .iter()
        .filter_map(|l| l.field("code").cloned())
        .collect();
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == FieldValue::Str("insufficient_scope".into()))
            .count(),
        6
    );
}

#[test]
fn scopes_are_read_from_scp_and_roles_too() {
    let rules = json!({ "secret": SECRET, "required_scopes": [
        { "prefix": "/admin", "scopes": ["admin", "write"] },
    ]});
    let h = harness();
    let p = h.configure(rules).unwrap();
    let with = |claims: Value| {
        let mut c = json!({ "sub": "a", "exp": super::NOW + 60 });
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        sign(&c)
    };
    for claims in [
        json!({ "scope": "write admin" }),
        json!({ "scope": ["admin", "write"] }),
        json!({ "scp": ["admin", "write"] }),
        json!({ "roles": ["admin"], "scp": "write" }),
    ] {
        assert!(
            scoped(&p, "/admin/x", &with(claims.clone())).continued(),
            "{claims}"
        );
    }
    for claims in [
        json!({ "scope": "admin" }),
        // A role is a name, not a list: a string `roles` grants nothing.
        json!({ "roles": "admin write" }),
        json!({ "scope": "admin,write" }),
    ] {
        let challenge = insufficient_scope(&scoped(&p, "/admin/x", &with(claims.clone())));
        assert!(challenge.contains("insufficient_scope"), "{claims}");
    }
}

#[test]
fn required_scopes_config_errors_name_the_field() {
    for (rule, field) in [
        (
            json!({ "prefix": "admin", "scopes": ["a"] }),
            "required_scopes[0].prefix",
        ),
        (
            json!({ "prefix": "/admin", "scopes": [] }),
            "required_scopes[0].scopes",
        ),
        (
            json!({ "prefix": "/admin", "scopes": ["a b"] }),
            "required_scopes[0].scopes",
        ),
        (
            json!({ "prefix": "/admin" }),
            "required_scopes[0]: missing field `scopes`",
        ),
    ] {
        let cfg = json!({ "secret": SECRET, "required_scopes": [rule] });
        let message = harness().refusal(cfg.clone());
        assert!(message.starts_with(field), "{cfg}: {message}");
    }
}
