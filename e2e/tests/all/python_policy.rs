//! The Python `acl` policy (plugins-py/, componentize-py) next to the Rust
//! ones. Its component is built by `scripts/build-python-policies.sh`, which
//! needs Python and PyPI, so these run from `scripts/test.sh` after that
//! build (`cargo test -p e2e -- --ignored`), not in a bare `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use policy_harness::{DecisionExt, Harness, HarnessError, ResponseExt, get};
use serde_json::json;

use crate::seed_flow::{client, login, profile, start_trio};

fn acl_wasm() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins-py/target/acl.wasm");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-python-policies.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

#[test]
#[ignore = "needs the Python policy built: scripts/test.sh builds it and runs this"]
fn python_acl_policy_through_the_harness() {
    let h = Harness::load(acl_wasm()).unwrap().named("acl");
    let acl = h
        .configure(json!({ "rules": [{ "path_prefix": "/admin", "require_header": "x-role", "allow": ["admin"] }] }))
        .unwrap();
    let denied = acl
        .on_request(get("/admin/x").header("x-role", "guest"))
        .unwrap();
    let answer = denied.responded().expect("denied");
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["code"], "forbidden");
    assert!(
        acl.on_request(get("/admin/x").header("x-role", "admin"))
            .unwrap()
            .continued()
    );
    assert!(acl.on_request(get("/public")).unwrap().continued());
    match h.configure(json!({ "rules": "nope" })) {
        Err(HarnessError::ConfigRefused(msg)) => assert!(msg.contains("rules"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the Python policy built: scripts/test.sh builds it and runs this"]
async fn python_acl_policy_runs_in_the_demo_chain() {
    acl_wasm();
    let trio = start_trio("demo-python.toml").await;

    // The seed flow is unchanged with the Python policy in the chain.
    let (status, body) = login(&trio, "admin", "password").await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, _, body) = profile(&trio, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let hits = trio.user_service_hits.load(Ordering::SeqCst);

    // The acl denies /user-service/admin without the role, before auth and
    // before user-service.
    let admin = format!("{}/user-service/admin", trio.sidecar);
    let resp = client()
        .get(&admin)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "forbidden"
    );
    assert_eq!(trio.user_service_hits.load(Ordering::SeqCst), hits);

    // With the role it passes the acl, then auth and the upstream see it.
    let resp = client()
        .get(&admin)
        .header("x-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "auth still requires a token");
    let resp = client()
        .get(&admin)
        .header("x-role", "admin")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "user-service has no /admin");
    assert_eq!(trio.user_service_hits.load(Ordering::SeqCst), hits + 1);
}
