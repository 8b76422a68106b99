//! The reverse proxy's own duties: routing, header hygiene, limits, and
//! upstream failures as JSON.

use crate::support::{Upstream, client, get_json, raw_status, start};

const PLAIN: &str = r#"
[proxy]
max_body_bytes = 1024

[[route]]
name = "api"
prefix = "/api"
upstream = "{UPSTREAM}"
rewrite = "/"

[[route]]
name = "slow"
prefix = "/slowpoke"
upstream = "{UPSTREAM}"
rewrite = "/slow"
timeout_ms = 200

[[route]]
name = "down"
prefix = "/down"
upstream = "http://127.0.0.1:9"

# A 0.1 policy gets bodies whole: its route buffers them, up to max_body_bytes.
[[route]]
name = "buffered"
prefix = "/buffered"
upstream = "{UPSTREAM}"
rewrite = "/"
policies = ["noop01"]

[policy.noop01]
wasm = "{V01_NOOP}"
"#;

#[tokio::test]
async fn forwards_with_x_forwarded_for_and_without_hop_by_hop_headers() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let resp = client()
        .post(format!("{}/api/echo", sidecar.base))
        .header("connection", "x-private")
        .header("x-private", "hop")
        .header("x-keep", "me")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "echo");
    assert!(
        resp.headers().get("x-hop").is_none(),
        "response hop-by-hop header removed"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], "hello");
    assert_eq!(body["headers"]["x-keep"], "me");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        body["headers"].get("x-private").is_none(),
        "request hop-by-hop header removed"
    );
    assert!(
        body["headers"]["x-request-id"].is_string(),
        "request id passed upstream"
    );
}

#[tokio::test]
async fn keeps_a_sane_client_request_id() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let resp = client()
        .get(format!("{}/api/x", sidecar.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], "abc-123");
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let (status, body) = get_json(&format!("{}/apix", sidecar.base)).await;
    assert_eq!(status, 404, "prefix matches whole segments only");
    assert_eq!(body["code"], "no_route");
}

#[tokio::test]
async fn path_tricks_are_400_and_never_reach_upstream() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    // Raw requests: an HTTP client library would normalise these away.
    for path in [
        "/api/%2e%2e/admin",
        "/api/../api/x",
        "/api//x",
        "/api/a%2Fb",
        "/api/.%2E/x",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert_eq!(raw_status(&sidecar.base, &request).await, 400, "{path}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn near_miss_prefixes_match_no_route_and_never_reach_upstream() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    // Case, trailing dots and look-alike segments: prefixes match exact,
    // whole segments, so none of these is the `/api` route.
    for path in [
        "/API/x",
        "/Api/x",
        "/api./x",
        "/api%2e/x",
        "/apix",
        "/api.json",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let status = raw_status(&sidecar.base, &request).await;
        assert!(status == 404 || status == 400, "{path}: {status}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn malformed_http_and_very_long_paths_get_4xx_and_never_reach_upstream() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    for request in [
        "GARBAGE\r\n\r\n".to_owned(),
        "GET /api/x HTTP/9.9\r\nhost: x\r\n\r\n".to_owned(),
        "GET /api/x HTTP/1.1\r\nbad header line\r\n\r\n".to_owned(),
        "GET /api/x HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n".to_owned(),
    ] {
        let status = raw_status(&sidecar.base, &request).await;
        assert_eq!(status, 400, "{request:?}");
    }
    // 100 KB of path: over the head limit (431) or the URI limit (414).
    let long = format!("/api/{}", "a".repeat(100 * 1024));
    let status = raw_status(
        &sidecar.base,
        &format!("GET {long} HTTP/1.1\r\nhost: x\r\n\r\n"),
    )
    .await;
    assert!(status == 414 || status == 431, "very long path: {status}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413_on_a_0_1_route() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let resp = client()
        .post(format!("{}/buffered/echo", sidecar.base))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "body_too_large");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_body_over_max_body_bytes_streams_where_no_policy_buffers_it() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let resp = client()
        .post(format!("{}/api/echo", sidecar.base))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["body"], "x".repeat(4096), "the upstream got it whole");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let (status, body) = get_json(&format!("{}/down/x", sidecar.base)).await;
    assert_eq!(status, 502);
    assert_eq!(body["code"], "upstream_unavailable");
}

#[tokio::test]
async fn slow_upstream_is_504_json_at_the_route_timeout() {
    let upstream = Upstream::start().await;
    let sidecar = start(PLAIN, &upstream).await;
    let started = std::time::Instant::now();
    let (status, body) = get_json(&format!("{}/slowpoke", sidecar.base)).await;
    assert_eq!(status, 504);
    assert_eq!(body["code"], "upstream_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}
