//! The policy, built for wasm32-wasip2 and run on the sidecar's own policy
//! host by `policy-harness`: no sidecar, no server.

use policy_harness::{DecisionExt, Harness, LogsExt, ResponseExt, get};
use serde_json::json;

fn harness() -> Harness {
    Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("the policy builds and loads")
}

#[test]
fn request_without_the_header_is_refused_with_json() {
    let h = harness();
    let policy = h.configure(json!({ "header": "x-api-key" })).unwrap();
    let decision = policy.on_request(get("/anything")).unwrap();
    let answer = decision.responded().expect("refused");
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["code"], "missing_header");
    assert_eq!(h.logs().with_message("request refused").len(), 1);
}

#[test]
fn request_with_the_header_passes_unchanged() {
    let h = harness();
    let policy = h
        .configure(json!({ "header": "x-api-key", "status": 403 }))
        .unwrap();
    let decision = policy
        .on_request(get("/anything").header("x-api-key", "k"))
        .unwrap();
    assert!(decision.continued());
    assert!(decision.changed_request().is_none());
}

#[test]
fn bad_config_is_refused_naming_the_field() {
    let h = harness();
    let message = h.refusal(json!({ "header": "x", "status": 200 }));
    assert!(message.starts_with("status:"), "{message}");
}
