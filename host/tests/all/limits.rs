//! A broken policy fails only its own request; the sidecar keeps serving.

use std::time::{Duration, Instant};

use sidecar::capabilities::FieldValue;

use crate::support::{Upstream, client, get_json, start};

fn config(mode: &str, failure: &str, hook: &str) -> String {
    format!(
        r#"
[[route]]
name = "hostile"
prefix = "/hostile"
upstream = "{{UPSTREAM}}"
policies = ["hostile"]

[[route]]
name = "healthy"
prefix = "/healthy"
upstream = "{{UPSTREAM}}"
policies = ["tag"]

[policy.hostile]
wasm = "{{HOSTILE}}"
failure = "{failure}"
deadline_ms = 100
memory_mb = 16
config = {{ mode = "{mode}", hook = "{hook}" }}

[policy.tag]
wasm = "{{TAG}}"
config = {{ name = "ok" }}
"#
    )
}

async fn assert_healthy_route_still_serves(base: &str) {
    for _ in 0..5 {
        let (status, body) = get_json(&format!("{base}/healthy/x")).await;
        assert_eq!(status, 200);
        assert_eq!(body["headers"]["x-chain"], "ok");
    }
}

#[tokio::test]
async fn trapping_policy_fails_closed_with_503_json_and_no_trap_text() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("trap", "closed", "request"), &upstream).await;
    let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 503);
    assert_eq!(body["code"], "policy_failed");
    let text = body.to_string();
    assert!(
        !text.contains("panic") && !text.contains("wasm"),
        "trap text leaked: {text}"
    );
    assert_eq!(upstream.hits(), 0, "fail closed never reaches the upstream");
    assert_healthy_route_still_serves(&sidecar.base).await;
}

#[tokio::test]
async fn trapping_policy_fails_open_by_skipping_itself() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("trap", "open", "request"), &upstream).await;
    let (status, _) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn trapping_response_hook_fails_closed_after_upstream() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("trap", "closed", "response"), &upstream).await;
    let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 503);
    assert_eq!(body["code"], "policy_failed");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn policy_that_loops_forever_hits_its_deadline_and_others_keep_succeeding() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("loop", "closed", "request"), &upstream).await;
    let base = sidecar.base.clone();
    // The looping request and healthy ones at the same time.
    let looping = tokio::spawn({
        let base = base.clone();
        async move {
            let started = Instant::now();
            let (status, _) = get_json(&format!("{base}/hostile/x")).await;
            (status, started.elapsed())
        }
    });
    assert_healthy_route_still_serves(&base).await;
    let (status, took) = looping.await.unwrap();
    assert_eq!(status, 503);
    // Deadline is 100 ms; generous bound for a loaded machine, far below "forever".
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_healthy_route_still_serves(&base).await;
}

#[tokio::test]
async fn policy_that_allocates_without_bound_hits_its_memory_cap() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("alloc", "closed", "request"), &upstream).await;
    for _ in 0..3 {
        let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
        assert_eq!(status, 503);
        assert_eq!(body["code"], "policy_failed");
    }
    assert_healthy_route_still_serves(&sidecar.base).await;
}

#[tokio::test]
async fn failures_are_logged_with_the_policy_name_not_sent_to_client() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("trap", "closed", "request"), &upstream).await;
    let resp = client()
        .get(format!("{}/hostile/x", sidecar.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "policy `hostile` failed; the request was not forwarded"
    );
}

#[tokio::test]
async fn policies_before_a_failed_one_still_see_the_503_in_their_response_hook() {
    let upstream = Upstream::start().await;
    let toml = config("trap", "closed", "request").replace(
        r#"policies = ["hostile"]"#,
        r#"policies = ["logging", "hostile"]"#,
    ) + "[policy.logging]\nwasm = \"{LOGGING}\"\n";
    let sidecar = start(&toml, &upstream).await;
    let (status, _) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 503);
    let access = sidecar
        .logs
        .wait_for("access", 1, Duration::from_secs(5))
        .await;
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].field("status"), Some(&FieldValue::Int(503)));
    assert_eq!(&*access[0].policy, "logging");
}

#[tokio::test]
async fn deep_recursion_is_a_contained_trap() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("recurse", "closed", "request"), &upstream).await;
    let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("policy_failed"))
    );
    assert_eq!(upstream.hits(), 0);
    assert_healthy_route_still_serves(&sidecar.base).await;
}

#[tokio::test]
async fn a_reply_with_thousands_of_headers_is_502_not_a_crash() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("headers", "closed", "request"), &upstream).await;
    let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "bad_policy_output");
    assert!(
        body["error"].as_str().unwrap().contains("invalid response"),
        "{body}"
    );
    assert_healthy_route_still_serves(&sidecar.base).await;
}

#[tokio::test]
async fn header_edits_past_the_limit_never_reach_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let sidecar = start(&config("headers", "closed", "response"), &upstream).await;
    // A raw client: HTTP clients refuse heads of more than about 100 headers.
    let addr = sidecar.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /hostile/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the answer comes")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let head = text.split("\r\n\r\n").next().unwrap();
    // 40 000 refused edits may outlast the policy's 100 ms deadline (then
    // the policy failed: 503); either way no more than the limit goes out.
    let floods = head.lines().filter(|l| l.starts_with("x-flood-")).count();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 503"),
        "{}",
        &head[..80.min(head.len())]
    );
    assert!(
        floods <= sidecar::message::MAX_HEADERS,
        "{floods} flood headers went out"
    );
    assert_healthy_route_still_serves(&sidecar.base).await;
}

#[tokio::test]
async fn a_reply_over_max_policy_body_bytes_is_502() {
    let upstream = Upstream::start().await;
    let toml = format!(
        "[proxy]\nmax_policy_body_bytes = {}\n{}",
        8 << 20,
        config("body", "closed", "request")
    );
    let sidecar = start(&toml, &upstream).await;
    let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("bad_policy_output"))
    );
    assert_healthy_route_still_serves(&sidecar.base).await;
}

#[tokio::test]
async fn policy_abusing_the_store_is_stopped_by_its_kv_quota() {
    for mode in ["kv-loop", "kv-huge"] {
        let upstream = Upstream::start().await;
        // A deadline far away: what stops the policy must be the quota.
        let toml =
            config(mode, "closed", "request").replace("deadline_ms = 100", "deadline_ms = 30000");
        let sidecar = start(&toml, &upstream).await;
        for _ in 0..3 {
            let (status, body) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (503, Some("policy_failed")),
                "{mode}: {body}"
            );
        }
        let metrics = sidecar.sidecar.metrics.render();
        assert!(
            metrics.contains(
                r#"sidecar_policy_failures_total{policy="hostile",hook="request",reason="kv_quota"} 3"#
            ),
            "{mode}: {metrics}"
        );
        assert_eq!(upstream.hits(), 0);
        assert_healthy_route_still_serves(&sidecar.base).await;
    }
}

#[tokio::test]
async fn kv_quota_failing_open_skips_the_policy() {
    let upstream = Upstream::start().await;
    let sidecar = start(&config("kv-loop", "open", "request"), &upstream).await;
    let (status, _) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn kv_quota_is_configurable_per_policy() {
    // Quota of 5 operations: even the first loop iterations trap at once;
    // the count in the failure says the configured value was applied.
    let upstream = Upstream::start().await;
    let toml = config("kv-loop", "closed", "request").replace(
        "deadline_ms = 100",
        "deadline_ms = 100\nkv_ops_per_request = 5",
    );
    let sidecar = start(&toml, &upstream).await;
    let (status, _) = get_json(&format!("{}/hostile/x", sidecar.base)).await;
    assert_eq!(status, 503);
    let failing = sidecar.sidecar.metrics.policy_failures();
    let error = &failing["hostile"].last_error;
    assert!(error.contains("more than 5 kv operations"), "{error}");
}
