//! `jwks_url`: the key set fetched from a stubbed identity provider at
//! load, kept fresh through `kv`, refreshed on an unknown `kid` or when too
//! old, and never more than once per `jwks_refresh_secs`.

use std::time::Duration;

use policy_harness::{FieldValue, Harness, Level, LogsExt, Stub, get};
use serde_json::{Value, json};

use super::{
    FIXTURE_JWKS, FIXTURE_JWKS_NEXT, denial_code, fixture_token, fixture_tokens, forwarded_user,
    harness, merged_jwks,
};

const IDP: &str = "https://idp.example";
const JWKS_URL: &str = "https://idp.example/.well-known/jwks.json";
const FETCH: &str = "GET https://idp.example/.well-known/jwks.json";

/// A harness granted the IdP, whose JWKS endpoint answers `jwks`.
fn with_idp(jwks: &str) -> Harness {
    let h = harness().allow_outbound(&[IDP]);
    h.stub("GET", JWKS_URL, Stub::json(200, jwks));
    h
}

/// The fixtures' issuer and audience, keys from `JWKS_URL`, plus `extra`.
fn url_config(extra: Value) -> Value {
    let t = fixture_tokens();
    let mut cfg = json!({
        "jwks_url": JWKS_URL,
        "issuer": t["issuer"],
        "audience": t["audience"],
    });
    cfg.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    cfg
}

fn user_of(p: &policy_harness::Configured<'_>, token: &str) -> Option<String> {
    forwarded_user(&p.on_request(get("/orders").bearer(token)).unwrap())
}

fn code_of(p: &policy_harness::Configured<'_>, token: &str) -> String {
    denial_code(&p.on_request(get("/orders").bearer(token)).unwrap())
}

#[test]
fn jwks_url_accepts_each_algorithm_with_one_fetch_at_load() {
    let h = with_idp(FIXTURE_JWKS);
    let p = h.configure(url_config(json!({}))).unwrap();
    assert_eq!(h.outbound_requests(), [FETCH]);
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ] {
        let user = user_of(&p, &fixture_token(&format!("valid_{alg}")));
        assert_eq!(
            user,
            Some(format!("user-{}", alg.to_ascii_lowercase())),
            "{alg}"
        );
    }
    assert_eq!(
        user_of(&p, &fixture_token("valid_ES256_no_kid")).as_deref(),
        Some("no-kid")
    );
    assert_eq!(h.outbound_requests(), [FETCH], "no fetch per request");
    assert!(h.logs().is_empty(), "{:?}", h.logs());
}

#[test]
fn jwks_url_fixture_tokens_get_the_outcomes_an_inline_jwks_gives() {
    let h = with_idp(FIXTURE_JWKS);
    let p = h.configure(url_config(json!({}))).unwrap();
    let tokens = fixture_tokens();
    for (name, t) in tokens["tokens"].as_object().unwrap() {
        let token = t["token"].as_str().unwrap();
        match t["sub"].as_str() {
            Some(sub) => assert_eq!(user_of(&p, token).as_deref(), Some(sub), "{name}"),
            None => assert_eq!(code_of(&p, token), t["code"].as_str().unwrap(), "{name}"),
        }
    }
    // The unknown kids asked for one refresh (the set had not changed).
    assert_eq!(h.outbound_requests(), [FETCH, FETCH]);
}

#[test]
fn jwks_url_of_an_origin_not_granted_refuses_the_config() {
    let h = harness();
    h.stub("GET", JWKS_URL, Stub::json(200, FIXTURE_JWKS));
    let message = h.refusal(url_config(json!({})));
    assert!(message.starts_with("jwks_url: "), "{message}");
    assert!(message.contains("allow_outbound"), "{message}");
    assert!(message.contains(IDP), "{message}");
    assert!(h.outbound_requests().is_empty());
}

#[test]
fn jwks_url_config_errors_name_the_field() {
    for (cfg, field) in [
        (json!({ "jwks_url": "idp.example/jwks" }), "jwks_url"),
        (
            json!({ "jwks_url": JWKS_URL, "jwks": { "keys": [] } }),
            "jwks_url",
        ),
        (
            json!({ "jwks_url": JWKS_URL, "jwks_refresh_secs": 0 }),
            "jwks_refresh_secs",
        ),
        (
            json!({ "jwks_url": JWKS_URL, "jwks_max_age_secs": -1 }),
            "jwks_max_age_secs",
        ),
        (
            json!({ "secret": "s", "jwks_max_age_secs": 60 }),
            "jwks_max_age_secs",
        ),
    ] {
        let message = with_idp(FIXTURE_JWKS).refusal(cfg.clone());
        assert!(message.starts_with(field), "{cfg}: {message}");
    }
}

#[test]
fn an_idp_down_at_load_still_configures_and_a_request_fetches_later() {
    let h = harness().allow_outbound(&[IDP]);
    h.stub("GET", JWKS_URL, Stub::Fail("connection refused".into()));
    let p = h.configure(url_config(json!({}))).unwrap();
    let logs = h.take_logs();
    let warned = logs.with_message("auth could not fetch the key set");
    assert_eq!(warned.len(), 1, "{logs:?}");
    assert_eq!(warned[0].level, Level::Warn);
    assert_eq!(
        warned[0].field("url"),
        Some(&FieldValue::Str(JWKS_URL.into()))
    );

    h.stub("GET", JWKS_URL, Stub::json(200, FIXTURE_JWKS));
    let token = fixture_token("valid_ES256");
    assert_eq!(user_of(&p, &token).as_deref(), Some("user-es256"));
    // Stored in kv: the next request's fresh instance finds it there.
    assert_eq!(user_of(&p, &token).as_deref(), Some("user-es256"));
    assert_eq!(h.outbound_requests(), [FETCH, FETCH]);
}

#[test]
fn a_rotated_key_is_accepted_once_refresh_secs_passed() {
    let h = with_idp(FIXTURE_JWKS);
    let p = h
        .configure(url_config(json!({ "jwks_refresh_secs": 30 })))
        .unwrap();
    // A kid nobody knows spends this interval's refresh...
    assert_eq!(code_of(&p, &fixture_token("unknown_kid")), "unknown_key");
    assert_eq!(h.outbound_requests().len(), 2);
    // ...so the IdP's rotation shows only in the next interval.
    h.stub(
        "GET",
        JWKS_URL,
        Stub::json(200, merged_jwks(&[FIXTURE_JWKS_NEXT, FIXTURE_JWKS])),
    );
    let next = fixture_token("next_ES256");
    h.advance(Duration::from_secs(29));
    assert_eq!(code_of(&p, &next), "unknown_key");
    assert_eq!(h.outbound_requests().len(), 2);
    h.advance(Duration::from_secs(1));
    assert_eq!(user_of(&p, &next).as_deref(), Some("user-next-es256"));
    assert_eq!(h.outbound_requests().len(), 3);
    // Every later request has the new set from kv, old keys included.
    for name in ["next_RS256", "valid_PS256", "next_ES256"] {
        assert!(user_of(&p, &fixture_token(name)).is_some(), "{name}");
    }
    assert_eq!(h.outbound_requests().len(), 3);
}

#[test]
fn a_rotation_goes_past_the_hosts_cached_copy() {
    // The IdP lets the host keep its set for an hour; a token with a new
    // kid still finds the new set (the refresh asks `no-cache`).
    let h = harness().allow_outbound(&[IDP]);
    let cached =
        |jwks: &str| Stub::json(200, jwks).with_header("cache-control", "public, max-age=3600");
    h.stub("GET", JWKS_URL, cached(FIXTURE_JWKS));
    let p = h.configure(url_config(json!({}))).unwrap();
    h.stub("GET", JWKS_URL, cached(FIXTURE_JWKS_NEXT));
    assert_eq!(
        user_of(&p, &fixture_token("next_RS256")).as_deref(),
        Some("user-next-rs256")
    );
    assert_eq!(h.outbound_requests(), [FETCH, FETCH]);
}

#[test]
fn a_storm_of_unknown_kids_fetches_once_per_interval() {
    let h = with_idp(FIXTURE_JWKS);
    let p = h
        .configure(url_config(json!({ "jwks_refresh_secs": 30 })))
        .unwrap();
    // A genuine signature under ever new kids: each looks like a rotation.
    let good = fixture_token("valid_RS256");
    let (_, rest) = good.split_once('.').unwrap();
    let forged = |i: usize| {
        let header = json!({ "alg": "RS256", "kid": format!("rotated-{i}") });
        format!("{}.{rest}", super::b64(&header.to_string()))
    };
    for i in 0..40 {
        assert_eq!(code_of(&p, &forged(i)), "unknown_key");
    }
    assert_eq!(h.outbound_requests().len(), 2, "load, then one refresh");
    h.advance(Duration::from_secs(30));
    for i in 40..80 {
        assert_eq!(code_of(&p, &forged(i)), "unknown_key");
    }
    assert_eq!(h.outbound_requests().len(), 3);
}

#[test]
fn an_idp_failing_after_the_first_fetch_keeps_valid_tokens_accepted() {
    let h = with_idp(FIXTURE_JWKS);
    let p = h
        .configure(url_config(
            json!({ "jwks_refresh_secs": 10, "jwks_max_age_secs": 60 }),
        ))
        .unwrap();
    let token = fixture_token("valid_ES384");
    let failures = [
        Stub::Fail("connection refused".into()),
        Stub::Timeout,
        Stub::json(503, r#"{"error":"busy"}"#),
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        h.stub("GET", JWKS_URL, failure);
        h.advance(Duration::from_secs(61)); // too old: refreshed first
        assert_eq!(user_of(&p, &token).as_deref(), Some("user-es384"), "{i}");
    }
    let logs = h.take_logs();
    let warned = logs.with_message("auth could not refresh the key set");
    assert_eq!(warned.len(), 3, "{logs:?}");
    assert!(warned.iter().all(
        |l| l.level == Level::Warn && l.field("url") == Some(&FieldValue::Str(JWKS_URL.into()))
    ));
    assert_eq!(warned[2].field("status"), Some(&FieldValue::Int(503)));
    assert!(!logs.mention(&token));
}

#[test]
fn garbage_from_the_idp_keeps_the_last_good_set() {
    let h = with_idp(FIXTURE_JWKS);
    let p = h
        .configure(url_config(json!({ "jwks_max_age_secs": 60 })))
        .unwrap();
    for garbage in [
        "<html>oops</html>",
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
    ] {
        h.stub("GET", JWKS_URL, Stub::json(200, garbage));
        h.advance(Duration::from_secs(61));
        assert_eq!(
            user_of(&p, &fixture_token("valid_EdDSA")).as_deref(),
            Some("user-eddsa"),
            "{garbage}"
        );
    }
    assert_eq!(h.outbound_requests().len(), 4);
    let logs = h.take_logs();
    assert_eq!(
        logs.with_message("auth could not refresh the key set")
            .len(),
        3
    );
    // The garbage was never stored: a key it does not have is still unknown.
    h.stub("GET", JWKS_URL, Stub::Fail("down".into()));
    assert_eq!(code_of(&p, &fixture_token("next_ES256")), "unknown_key");
}

#[test]
fn a_key_the_idp_dropped_is_refused_after_max_age() {
    let h = with_idp(&merged_jwks(&[FIXTURE_JWKS, FIXTURE_JWKS_NEXT]));
    let p = h
        .configure(url_config(json!({ "jwks_max_age_secs": 300 })))
        .unwrap();
    let next = fixture_token("next_ES256");
    assert!(user_of(&p, &next).is_some());
    h.stub("GET", JWKS_URL, Stub::json(200, FIXTURE_JWKS));
    h.advance(Duration::from_secs(300));
    assert!(user_of(&p, &next).is_some(), "not old yet");
    h.advance(Duration::from_secs(1));
    assert_eq!(code_of(&p, &next), "unknown_key");
    assert_eq!(h.outbound_requests().len(), 2);
}
