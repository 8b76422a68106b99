//! Chain order and short-circuit, with the `tag` fixture policy.

use crate::support::{Upstream, client, start};

const THREE_TAGS: &str = r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{UPSTREAM}"
rewrite = "/"
policies = ["a", "b", "c"]

[policy.a]
wasm = "{TAG}"
config = { name = "a" }
[policy.b]
wasm = "{TAG}"
config = { name = "b" }
[policy.c]
wasm = "{TAG}"
config = { name = "c" }
"#;

#[tokio::test]
async fn request_hooks_run_in_chain_order_and_response_hooks_in_reverse() {
    let upstream = Upstream::start().await;
    let sidecar = start(THREE_TAGS, &upstream).await;
    let resp = client()
        .get(format!("{}/api/things?x=1", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-chain-response"], "c,b,a");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-chain"], "a,b,c");
    assert_eq!(body["path"], "/things?x=1", "prefix rewritten, query kept");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn short_circuit_skips_later_policies_and_upstream_but_earlier_response_hooks_run() {
    let upstream = Upstream::start().await;
    let toml = THREE_TAGS.replace(
        r#"config = { name = "b" }"#,
        r#"config = { name = "b", respond = 418 }"#,
    );
    let sidecar = start(&toml, &upstream).await;
    let resp = client()
        .get(format!("{}/api/x", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(
        resp.headers()["x-chain"],
        "a,b",
        "c's request hook never ran"
    );
    assert_eq!(
        resp.headers()["x-chain-response"],
        "b,a",
        "c's response hook never ran"
    );
    assert_eq!(upstream.hits(), 0, "upstream skipped");
}

#[tokio::test]
async fn one_user_cannot_see_another_requests_state() {
    // Every request gets a fresh instance: each tag policy counts the
    // requests its instance has served, and that count is 1 every time,
    // however many came before (with `instances = "reuse"` it grows, see
    // `loading::reused_instances_keep_their_state_and_are_replaced_after_max_uses`).
    let upstream = Upstream::start().await;
    let sidecar = start(THREE_TAGS, &upstream).await;
    for _ in 0..20 {
        let resp = client()
            .get(format!("{}/api/x", sidecar.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let served: Vec<&str> = resp
            .headers()
            .get_all("x-instance-served")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(served, ["1", "1", "1"], "one count per policy in the chain");
    }
}
