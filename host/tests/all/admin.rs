//! The admin listener: readiness through start-up and shutdown, and the
//! metrics the request path records.

use std::path::Path;
use std::sync::Arc;

use sidecar::{Admin, admin_router};
use tokio::net::TcpListener;

use crate::support::{Upstream, client, get_json, serve};

const ROUTES: &str = r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{UPSTREAM}"
policies = ["tagger"]

[[route]]
name = "denied"
prefix = "/denied"
upstream = "{UPSTREAM}"
policies = ["bouncer"]

[[route]]
name = "answered"
prefix = "/answered"
upstream = "{UPSTREAM}"
policies = ["answerer"]

[[route]]
name = "broken"
prefix = "/broken"
upstream = "{UPSTREAM}"
policies = ["boom"]

[[route]]
name = "down"
prefix = "/down"
upstream = "http://127.0.0.1:9"

[policy.tagger]
wasm = "{TAG}"
config = { name = "t" }
[policy.bouncer]
wasm = "{TAG}"
config = { name = "b", respond = 403 }
[policy.answerer]
wasm = "{TAG}"
config = { name = "a", respond = 200 }
[policy.boom]
wasm = "{HOSTILE}"
config = { mode = "trap" }
"#;

async fn admin_listener(admin: Arc<Admin>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = admin_router(admin);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn config(upstream: &Upstream) -> sidecar::config::Config {
    let text = ROUTES
        .replace("{UPSTREAM}", &upstream.url())
        .replace("{TAG}", test_policies::TAG)
        .replace("{HOSTILE}", test_policies::HOSTILE);
    sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap()
}

#[tokio::test]
async fn readyz_is_503_while_loading_200_when_ready_and_503_once_draining() {
    let upstream = Upstream::start().await;
    let state = Admin::loading();
    let admin = admin_listener(state.clone()).await;

    assert_eq!(get_json(&format!("{admin}/healthz")).await.0, 200);
    let (status, body) = get_json(&format!("{admin}/readyz")).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("loading")));
    let (status, body) = get_json(&format!("{admin}/policies")).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("loading")));

    let (_, _, sidecar) = serve(&config(&upstream)).await;
    state.set_ready(sidecar);
    let (status, body) = get_json(&format!("{admin}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["routes"], 5);
    assert_eq!(body["policies"], 4);

    state.drain();
    let (status, body) = get_json(&format!("{admin}/readyz")).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("draining")));
    assert_eq!(
        get_json(&format!("{admin}/healthz")).await.0,
        200,
        "still alive"
    );
}

/// The value of the sample `line` starts with (`name{labels}`), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_policy_calls_denials_failures_and_upstream_errors() {
    let upstream = Upstream::start().await;
    let (base, _, sidecar) = serve(&config(&upstream)).await;
    let admin = admin_listener(Admin::serving(sidecar)).await;
    let c = client();
    for path in [
        "/api/a",
        "/api/b",
        "/denied/x",
        "/answered/x",
        "/broken/x",
        "/down/x",
        "/nowhere",
    ] {
        c.get(format!("{base}{path}")).send().await.unwrap();
    }

    let resp = c.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    let expect = [
        (r#"sidecar_requests_total{route="api",status="200"}"#, 2.0),
        (
            r#"sidecar_requests_total{route="denied",status="403"}"#,
            1.0,
        ),
        (
            r#"sidecar_requests_total{route="broken",status="503"}"#,
            1.0,
        ),
        (r#"sidecar_requests_total{route="down",status="502"}"#, 1.0),
        (
            r#"sidecar_requests_total{route="(none)",status="404"}"#,
            1.0,
        ),
        (
            r#"sidecar_request_duration_seconds_count{route="api"}"#,
            2.0,
        ),
        (
            r#"sidecar_policy_calls_total{policy="tagger",hook="request"}"#,
            2.0,
        ),
        (
            r#"sidecar_policy_calls_total{policy="tagger",hook="response"}"#,
            2.0,
        ),
        (
            r#"sidecar_policy_call_duration_seconds_count{policy="tagger",hook="request"}"#,
            2.0,
        ),
        (r#"sidecar_policy_denials_total{policy="bouncer"}"#, 1.0),
        (
            r#"sidecar_policy_failures_total{policy="boom",hook="request",reason="trap"}"#,
            1.0,
        ),
        (
            r#"sidecar_upstream_errors_total{route="down",kind="unavailable"}"#,
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    // Answering with a 200 (a cache hit, say) is no denial.
    assert_eq!(
        sample(&text, r#"sidecar_policy_denials_total{policy="answerer"}"#),
        None
    );
    assert_eq!(
        sample(
            &text,
            r#"sidecar_requests_total{route="answered",status="200"}"#
        ),
        Some(1.0)
    );

    // Counters move as traffic flows.
    c.get(format!("{base}/api/c")).send().await.unwrap();
    let text = c
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&text, r#"sidecar_requests_total{route="api",status="200"}"#),
        Some(3.0)
    );
}

#[tokio::test]
async fn a_policy_that_keeps_failing_shows_in_the_policies_view() {
    let upstream = Upstream::start().await;
    let (base, _, sidecar) = serve(&config(&upstream)).await;
    let admin = admin_listener(Admin::serving(sidecar)).await;
    for _ in 0..3 {
        let (status, _) = get_json(&format!("{base}/broken/x")).await;
        assert_eq!(status, 503);
    }
    get_json(&format!("{base}/api/x")).await;

    let (status, view) = get_json(&format!("{admin}/policies")).await;
    assert_eq!(status, 200);
    let policy = |name: &str| {
        view["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {view}"))
            .clone()
    };
    let boom = policy("boom");
    assert_eq!(boom["failures"]["total"], 3, "{boom}");
    assert_eq!(boom["failures"]["last_reason"], "trap");
    assert_eq!(boom["failures"]["last_hook"], "request");
    assert!(
        boom["failures"]["last_error"]
            .as_str()
            .unwrap()
            .contains("trapped on purpose"),
        "operators see why: {boom}"
    );
    assert!(policy("tagger")["failures"].is_null());
}

#[tokio::test]
async fn refuses_dns_rebound_hosts_and_cross_origin_requests() {
    let upstream = Upstream::start().await;
    let (_, _, sidecar) = serve(&config(&upstream)).await;
    let admin = admin_listener(Admin::serving(sidecar.clone())).await;
    let port = admin.rsplit(':').next().unwrap().to_owned();
    let c = client();
    let reload = |host: String, origin: Option<&'static str>| {
        let mut req = c.post(format!("{admin}/reload")).header("host", host);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    // A page whose name was pointed at 127.0.0.1 (DNS rebinding).
    let resp = reload(format!("evil.example:{port}"), None).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "forbidden_host");
    let resp = c
        .get(format!("{admin}/policies"))
        .header("host", "rebind.attacker.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "no reading what is loaded either");
    // A cross-site form post from a page in a browser on this machine.
    let resp = reload(format!("127.0.0.1:{port}"), Some("http://evil.example"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "forbidden_origin");
    let resp = c
        .get(format!("{admin}/metrics"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        sidecar.reload_status().generation,
        0,
        "no refused request reloaded"
    );
    // curl, probes and Prometheus: an IP or localhost, no Origin. (The
    // reload itself is refused, 422: this config has no file to re-read.)
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let resp = reload(host.clone(), None).await.unwrap();
        assert_eq!(resp.status(), 422, "{host}");
    }
    let same_origin = format!("http://127.0.0.1:{port}");
    let resp = c
        .post(format!("{admin}/reload"))
        .header("origin", same_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422, "the admin's own origin");
    assert_eq!(get_json(&format!("{admin}/healthz")).await.0, 200);
}

#[tokio::test]
async fn the_dashboard_and_its_own_fetches_are_served_while_other_sites_are_refused() {
    let upstream = Upstream::start().await;
    let (_, _, sidecar) = serve(&config(&upstream)).await;
    let admin = admin_listener(Admin::serving(sidecar.clone())).await;
    let origin = admin.clone();
    let c = client();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = c.get(format!("{admin}{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send()
    };
    // Typed in the address bar, or a bookmark: `none`.
    let resp = get(
        "/",
        &[("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    // Its fetches: same-origin (Chromium adds `Origin` to a POST).
    for path in ["/readyz", "/policies", "/upstreams", "/stats"] {
        let resp = get(
            path,
            &[("sec-fetch-site", "same-origin"), ("origin", &origin)],
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = c
        .post(format!("{admin}/reload"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        422,
        "reached the reload (no file to re-read)"
    );
    // Another site, or another port of this machine (same-site, another
    // origin), may neither frame or open the page nor read what it reads.
    for (site, from) in [
        ("cross-site", "http://evil.example"),
        ("same-site", "http://127.0.0.1:1"),
    ] {
        for path in ["/", "/stats", "/policies"] {
            let resp = get(path, &[("sec-fetch-site", site), ("origin", from)])
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{path} from {site}");
        }
        let resp = get("/stats", &[("sec-fetch-site", site)]).await.unwrap();
        assert_eq!(resp.status(), 403, "/stats from {site}, no Origin");
    }
    let resp = get("/", &[("host", "dashboard.attacker.test")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "DNS rebinding");
    assert_eq!(sidecar.reload_status().generation, 0);
}

#[tokio::test]
async fn unknown_admin_paths_answer_with_every_endpoint_dashboard_and_stats_included() {
    let admin = admin_listener(Admin::loading()).await;
    let (status, body) = get_json(&format!("{admin}/nope")).await;
    assert_eq!(status, 404);
    let error = body["error"].as_str().unwrap();
    for path in ["/ ", "/stats", "/policies", "/upstreams", "/reload"] {
        assert!(error.contains(path), "{path} in {error}");
    }
    let (status, body) = get_json(&format!("{admin}/stats")).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("loading")));
}
