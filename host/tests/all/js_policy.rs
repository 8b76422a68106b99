//! The JavaScript `ratelimit` policy (plugins-js/, componentize-js) through
//! the harness and in a sidecar's chain. Its component is built by
//! `scripts/build-js-policies.sh`, which needs node and npm, so these run
//! from `scripts/test.sh` after that build (`--include-ignored`), not in a
//! bare `cargo test`.
//!
//! A JavaScript component is ~12 MB and takes tens of seconds to compile, so
//! both tests keep the compiled code in the sidecar's compile cache (the one
//! `sidecar policy test` uses too): only a changed component is compiled.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use policy_harness::{
    ConfiguredBy, DecisionExt, HeadersExt, Hooks, LogsExt, PolicyLimits, ResponseExt, get,
};
use serde_json::json;

use crate::support::{Upstream, client, start};

fn ratelimit_wasm() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins-js/ratelimit/dist/ratelimit.wasm");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-js-policies.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The sidecar's default compile cache, else one in this build's target dir.
fn compile_cache() -> PathBuf {
    sidecar::wasm::default_cache_dir(&|name| std::env::var(name).ok()).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache")
    })
}

/// The config of these tests and of `plugins-js/ratelimit/cases.toml`: a
/// configured snapshot is one more compile of the component (tens of
/// seconds), so they share one, through the compile cache.
fn config() -> serde_json::Value {
    json!({ "limit": 2, "window_secs": 60, "path_prefixes": ["/api"] })
}

/// Instantiating a JavaScript engine takes more than a Rust policy's 50 ms
/// on a busy test machine; the sidecar config below says the same.
fn limits() -> PolicyLimits {
    PolicyLimits {
        deadline: Duration::from_millis(1000),
        memory_bytes: 64 * 1024 * 1024,
        ..PolicyLimits::default()
    }
}

#[test]
#[ignore = "needs the JavaScript policy built: scripts/test.sh builds it and runs this"]
fn javascript_ratelimit_policy_through_the_harness() {
    policy_harness::use_compile_cache(compile_cache());
    let h = policy_harness::Harness::load(ratelimit_wasm())
        .unwrap()
        .named("ratelimit")
        .with_limits(limits());
    // The harness's clock starts on a minute boundary: one 60 s window.
    let limiter = h.configure(config()).unwrap();
    assert_eq!(
        limiter.hooks(),
        Hooks::default(),
        "only on-request is asked for"
    );
    assert_eq!(
        limiter.configured_by(),
        ConfiguredBy::Snapshot,
        "configured once, then snapshotted"
    );
    let alice = || get("/api/items").header("x-api-key", "alice");

    for _ in 0..2 {
        assert!(limiter.on_request(alice()).unwrap().continued());
    }
    h.advance(Duration::from_secs(20));
    let decision = limiter.on_request(alice()).unwrap();
    let answer = decision.responded().expect("limit + 1 is refused");
    assert_eq!(answer.status, 429);
    assert_eq!(answer.json()["code"], "rate_limited");
    assert_eq!(answer.header("retry-after"), Some("40"));
    assert_eq!(answer.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(answer.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let logs = h.logs();
    assert_eq!(logs.with_message("rate limited").len(), 1, "{logs:?}");
    assert!(!logs.mention("alice"), "the key is never logged: {logs:?}");

    // Bob has a bucket of his own; Alice's window ends 40 s later.
    assert!(
        limiter
            .on_request(get("/api/items").header("x-api-key", "bob"))
            .unwrap()
            .continued()
    );
    h.advance(Duration::from_secs(40));
    assert!(limiter.on_request(alice()).unwrap().continued());

    let refusal = h.refusal(json!({ "limit": 2, "window_secs": 0 }));
    assert!(refusal.starts_with("window_secs:"), "{refusal}");
    let refusal = h.refusal(json!({ "limit": 2, "client-header": "x" }));
    assert!(
        refusal.starts_with("client-header: unknown field"),
        "{refusal}"
    );
}

#[tokio::test]
#[ignore = "needs the JavaScript policy built: scripts/test.sh builds it and runs this"]
async fn javascript_ratelimit_policy_limits_across_requests_in_a_chain() {
    let upstream = Upstream::start().await;
    let toml = format!(
        r#"
[wasm]
compile_cache = "{cache}"

[[route]]
name = "api"
prefix = "/api"
upstream = "{{UPSTREAM}}"
policies = ["logging", "ratelimit"]

[policy.logging]
wasm = "{{LOGGING}}"

[policy.ratelimit]
wasm = "{wasm}"
deadline_ms = 1000
memory_mb = 64
# As config(), so the configured snapshot is the one already compiled.
config = {{ limit = 2, window_secs = 60, path_prefixes = ["/api"] }}
"#,
        cache = compile_cache().display(),
        wasm = ratelimit_wasm().display(),
    );
    let sidecar = start(&toml, &upstream).await;
    // The window is a real minute: start the requests with 15 s of it left
    // at least, so that the count cannot restart halfway.
    let into_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    let send = async |key: &str| {
        client()
            .get(format!("{}/api/things", sidecar.base))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
    };

    for i in 0..2 {
        let resp = send("alice").await;
        assert_eq!(resp.status(), 200, "request {i} is within the limit");
    }
    let resp = send("alice").await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(resp.headers()["x-ratelimit-limit"], "2");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(upstream.hits(), 2, "the 3rd request never reached upstream");

    // Another client is not limited by the first one's count.
    assert_eq!(send("bob").await.status(), 200);
    assert_eq!(upstream.hits(), 3);
    let logs = sidecar.logs.records();
    assert_eq!(logs.with_message("rate limited").len(), 1, "{logs:?}");
}
