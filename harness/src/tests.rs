//! The harness's own behaviour, on the fixture policies.

use std::time::Duration;

use serde_json::json;

use super::*;

fn tag() -> Harness {
    Harness::load(test_policies::TAG).unwrap()
}

#[test]
fn refused_config_is_a_typed_error() {
    let h = tag();
    match h.configure(json!({ "name": "a", "refuse": "nope" })) {
        Err(HarnessError::ConfigRefused(msg)) => assert_eq!(msg, "nope"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn round_trip_runs_request_then_response_hook_like_the_chain() {
    let h = tag();
    let p = h.configure(json!({ "name": "a" })).unwrap();
    let trip = p.round_trip(get("/x"), response(200).body("ok")).unwrap();
    assert!(trip.decision.continued());
    assert_eq!(trip.forwarded.unwrap().header("x-chain"), Some("a"));
    assert_eq!(trip.response.header("x-chain-response"), Some("a"));
    assert_eq!(trip.response.text(), "ok");

    let p = h.configure(json!({ "name": "b", "respond": 418 })).unwrap();
    let trip = p.round_trip(get("/x"), response(200)).unwrap();
    assert!(trip.forwarded.is_none());
    assert_eq!(
        trip.response.status, 418,
        "the policy's answer, not the upstream's"
    );
}

#[test]
fn traps_deadlines_and_memory_caps_are_typed_errors_under_production_limits() {
    let h = Harness::load(test_policies::HOSTILE)
        .unwrap()
        .with_limits(PolicyLimits {
            deadline: Duration::from_millis(20),
            memory_bytes: 8 * 1024 * 1024,
            ..PolicyLimits::default()
        });
    let call = |mode: &str| {
        h.configure(json!({ "mode": mode }))
            .unwrap()
            .on_request(get("/"))
            .unwrap_err()
    };
    assert!(matches!(
        call("trap"),
        HookError::Policy(PolicyError::Trapped { .. })
    ));
    assert!(matches!(
        call("loop"),
        HookError::Policy(PolicyError::TimedOut { .. })
    ));
    assert!(matches!(
        call("alloc"),
        HookError::Policy(PolicyError::MemoryCap { .. })
    ));
}

#[test]
fn clock_and_store_are_under_the_tests_control() {
    let h = tag().named("cache");
    assert_eq!(h.now_micros(), START_MICROS);
    h.kv_set("k", "v", Some(Duration::from_secs(10)));
    assert_eq!(h.kv_get("k").as_deref(), Some(&b"v"[..]));
    h.advance(Duration::from_secs(10));
    assert_eq!(
        h.kv_get("k"),
        None,
        "expired by the clock, without sleeping"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_a_load_error_naming_it() {
    let dir = sidecar_testkit::TempDir::new("harness-junk");
    let path = dir.join("junk.wasm");
    std::fs::write(&path, b"junk").unwrap();
    let err = Harness::load(&path).unwrap_err();
    assert!(matches!(err, HarnessError::Load(_)));
    assert!(err.to_string().contains("junk.wasm"), "{err}");
}

#[test]
fn a_policy_asking_for_less_than_the_body_is_told_and_the_body_goes_on_whole() {
    let h = tag();
    let mib = vec![b'z'; 1024 * 1024];
    let p = h
        .configure(json!({ "name": "a", "read_body": 1024 }))
        .unwrap();
    let trip = p
        .round_trip(post("/up").body(mib.clone()), response(200))
        .unwrap();
    let forwarded = trip.forwarded.unwrap();
    assert_eq!(forwarded.header("x-body"), Some("too-large"));
    assert_eq!(forwarded.body, mib, "the body goes on untouched");

    let p = h
        .configure(json!({ "name": "a", "read_body": 2 * 1024 * 1024, "replace_body": "new" }))
        .unwrap();
    let trip = p.round_trip(post("/up").body(mib), response(200)).unwrap();
    let forwarded = trip.forwarded.unwrap();
    assert_eq!(forwarded.header("x-body"), Some("complete:1048576"));
    assert_eq!(forwarded.body, b"new");
}

#[test]
fn a_0_2_policy_is_configured_once_and_a_0_1_policy_per_instance() {
    let p = tag();
    assert_eq!(p.contract(), Contract::V02);
    let configured = p.configure(json!({ "name": "a" })).unwrap();
    assert_eq!(configured.configured_by(), ConfiguredBy::Snapshot);
    assert!(configured.hooks().on_response);

    let old = Harness::load(test_policies::V01_TAG).unwrap();
    assert_eq!(old.contract(), Contract::V01);
    let p = old.configure(json!({ "name": "a" })).unwrap();
    assert_eq!(p.configured_by(), ConfiguredBy::PerInstance);
    let trip = p.round_trip(get("/x"), response(200).body("ok")).unwrap();
    assert_eq!(trip.forwarded.unwrap().header("x-chain"), Some("a"));
    assert_eq!(trip.response.header("x-chain-response"), Some("a"));
}

#[test]
fn policies_built_against_0_2_0_keep_working_on_0_2_1() {
    // The cache as built before 0.2.1 (kv, clock, log, the message
    // resources): a miss stores, the next request is a hit.
    let h = Harness::load(test_policies::V020_CACHE).unwrap();
    assert_eq!(h.contract(), Contract::V02);
    let p = h.configure(json!({ "ttl_secs": 60 })).unwrap();
    let first = p
        .round_trip(get("/items"), response(200).body("fresh"))
        .unwrap();
    assert_eq!(first.response.header("x-cache"), Some("miss"));
    let second = p.round_trip(get("/items"), response(500)).unwrap();
    assert_eq!(second.response.header("x-cache"), Some("hit"));
    assert_eq!(second.response.body, b"fresh");

    // The auth policy as built before 0.2.1: no token is a 401.
    let h = Harness::load(test_policies::V020_AUTH).unwrap();
    let p = h.configure(json!({ "secret": "s" })).unwrap();
    assert_eq!(
        p.on_request(get("/private"))
            .unwrap()
            .responded()
            .map(|r| r.status),
        Some(401)
    );
}
