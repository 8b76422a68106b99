//! Soak: the real `sidecar` binary under concurrent load for `SOAK_SECONDS`
//! (default 60; `scripts/soak.sh` runs it longer), with a reload every 3 s
//! and hostile policies on other routes. Healthy requests never fail,
//! hostile ones get only the documented 503, memory stays bounded, and
//! SIGTERM still stops it cleanly.
//!
//! Load is bounded (`SOAK_CLIENTS` healthy clients, default 16, each
//! pausing between requests) so it can share a 2-core CI machine with the
//! rest of the suite; correctness never depends on speed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{SidecarProcess, TempDir, Upstream, client, sidecar_binary};

const SECRET: &str = "soak-secret";
const USERS: [&str; 4] = ["ana", "ben", "cy", "dee"];
/// What the hostile routes' policies do, cycled on each config rewrite.
const HOSTILE_MODES: [&str; 4] = ["loop", "trap", "alloc", "recurse"];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The config at rewrite number `generation`: the `tag` policy's name and
/// the hostile modes change with it, so every rewrite is a real change.
fn config(upstream: &str, generation: usize) -> String {
    let mode_a = HOSTILE_MODES[generation % 4];
    let mode_b = HOSTILE_MODES[(generation + 2) % 4];
    format!(
        r#"
[reload]
watch = true
interval_ms = 200

# The healthy policies' deadline is generous: this test is about failures
# and memory under reloads, not speed, and a 50 ms wall-clock deadline can
# expire on a starved 2-core machine (seen: 8 in 347 052 requests while
# builds ran alongside). The hostile ones keep a short one.
[wasm]
compile_cache = "off"
deadline_ms = 1000

[[route]]
name = "api"
prefix = "/api"
upstream = "{upstream}"
rewrite = "/"
policies = ["logging", "auth", "tag", "swap", "cache"]

[[route]]
name = "hostile-a"
prefix = "/hostile-a"
upstream = "{upstream}"
policies = ["hostile_a"]

[[route]]
name = "hostile-b"
prefix = "/hostile-b"
upstream = "{upstream}"
policies = ["hostile_b"]

[policy.logging]
wasm = "{logging}"

[policy.auth]
wasm = "{auth}"
config = {{ secret = "{SECRET}" }}

[policy.tag]
wasm = "{tag}"
config = {{ name = "tag-{generation}" }}

# Its file alternates between the tag and noop components.
[policy.swap]
wasm = "swap.wasm"
config = {{ name = "swap" }}

[policy.cache]
wasm = "{cache}"
config = {{ ttl_secs = 5 }}

[policy.hostile_a]
wasm = "{hostile}"
failure = "closed"
deadline_ms = 20
memory_mb = 16
config = {{ mode = "{mode_a}" }}

[policy.hostile_b]
wasm = "{hostile}"
failure = "closed"
deadline_ms = 20
memory_mb = 16
config = {{ mode = "{mode_b}" }}
"#,
        logging = test_policies::LOGGING,
        auth = test_policies::AUTH,
        tag = test_policies::TAG,
        cache = test_policies::CACHE,
        hostile = test_policies::HOSTILE,
    )
}

/// Writes next to the target, then renames: the documented drop-in.
fn drop_in(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn token(user: &str, valid_for: Duration) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let claims = serde_json::json!({ "sub": user, "exp": (now + valid_for).as_secs() });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Resident set size of `pid` in KiB, from `/proc` (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The first lines (at most 20) about a healthy policy failing: why a
/// healthy request got a 503.
fn healthy_errors(sidecar: &SidecarProcess) -> Vec<String> {
    sidecar
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("policy failed") && !l.contains("hostile_"))
        .take(20)
        .collect()
}

/// How many panics of its own the sidecar reported; a trapping guest's
/// panic text only appears inside a log line.
fn panics(sidecar: &SidecarProcess) -> usize {
    sidecar
        .stderr_lines()
        .iter()
        .filter(|l| l.starts_with("thread '") && l.contains("panicked at"))
        .count()
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    cache_hits: AtomicU64,
    hostile_503: AtomicU64,
    failures: Mutex<Vec<String>>,
    failed: AtomicU64,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }
}

/// One healthy request: 200, the echo of this very request (path and the
/// user auth found), and the tag policy's response hook seen.
async fn healthy_request(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    user: &str,
    token: &str,
) -> Result<bool, String> {
    let resp = http
        .get(format!("{base}/api{path}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status().as_u16();
    let chain = resp
        .headers()
        .get("x-chain-response")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let hit = resp.headers().get("x-cache").is_some_and(|v| v == "hit");
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("{path}: {status}, body: {e}"))?;
    if status != 200
        || body["path"] != path
        || body["headers"]["x-authenticated-user"] != user
        || !chain.contains("tag-")
    {
        return Err(format!("{path} as {user}: {status} chain={chain:?} {body}"));
    }
    Ok(hit)
}

/// One request to a hostile route: the documented 503, nothing internal.
async fn hostile_request(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("{url}: {status}, body: {e}"))?;
    let message = body["error"].as_str().unwrap_or("").to_lowercase();
    let leaks = ["trap", "panic", "wasm", "deadline", "memory", "unreachable"]
        .iter()
        .any(|w| message.contains(w));
    if status != 503 || body["code"] != "policy_failed" || leaks {
        return Err(format!("{url}: {status} {body}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_load_and_reloads_fails_no_healthy_request_and_keeps_memory_bounded() {
    let seconds = env_number("SOAK_SECONDS", 60);
    let clients = env_number("SOAK_CLIENTS", 16);
    let duration = Duration::from_secs(seconds);
    let upstream = Upstream::start().await;
    let dir = TempDir::new("soak");
    let tag_wasm = std::fs::read(test_policies::TAG).unwrap();
    let noop_wasm = std::fs::read(test_policies::NOOP).unwrap();
    drop_in(&dir, "swap.wasm", &tag_wasm);
    // Its stderr is drained all along: every hostile request logs a line.
    let mut sidecar = sidecar_binary()
        .admin()
        .env("RUST_LOG", "info")
        .start(dir.path(), &config(&upstream.url(), 0));
    let admin = sidecar.admin().to_owned();
    let pid = sidecar.pid();
    let rss_start = rss_kib(pid).expect("VmRSS of the sidecar");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for c in 0..clients {
        let (base, stop, tally) = (sidecar.base.clone(), stop.clone(), tally.clone());
        let user = USERS[c as usize % USERS.len()];
        let token = token(user, duration + Duration::from_secs(3600));
        load.push(tokio::spawn(async move {
            let http = client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // 128 paths per client, each seen every few seconds, with
                // a 5 s TTL: a mix of cache hits, misses and expiries.
                let path = format!("/item/{}?c={c}", n % 128);
                match healthy_request(&http, &base, &path, user, &token).await {
                    Ok(hit) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if hit {
                            tally.cache_hits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => tally.fail(e),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let hostile_failures = Arc::new(Mutex::new(Vec::new()));
    for route in ["hostile-a", "hostile-b"] {
        let url = format!("{}/{route}/x", sidecar.base);
        let (stop, tally, wrong) = (stop.clone(), tally.clone(), hostile_failures.clone());
        load.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                match hostile_request(&http, &url).await {
                    Ok(()) => {
                        tally.hostile_503.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => wrong.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    // Reloads every 3 s, three kinds in turn; RSS sampled every second.
    let started = Instant::now();
    let warm_up = (duration / 6).min(Duration::from_secs(10));
    let mut rss_warm = None;
    let mut rss_peak = rss_start;
    let (mut rewrites, mut posts, mut swaps) = (0usize, 0usize, 0usize);
    let mut last_rewrite = 0;
    let mut tick = 0u64;
    let mut rss_every_10s = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            sidecar.alive(),
            "sidecar exited during the soak:\n{}",
            sidecar.tail(50)
        );
        let rss = rss_kib(pid).unwrap();
        rss_peak = rss_peak.max(rss);
        if tick.is_multiple_of(10) {
            rss_every_10s.push(format!("{:.0}", rss as f64 / 1024.0));
        }
        if rss_warm.is_none() && started.elapsed() >= warm_up {
            rss_warm = Some(rss);
        }
        tick += 1;
        if !tick.is_multiple_of(3) {
            continue;
        }
        match (tick / 3) % 3 {
            0 => {
                rewrites += 1;
                last_rewrite = rewrites;
                drop_in(
                    &dir,
                    "sidecar.toml",
                    sidecar
                        .config(&config(&upstream.url(), rewrites))
                        .as_bytes(),
                );
            }
            1 => {
                posts += 1;
                let resp = client()
                    .post(format!("{admin}/reload"))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(status, 200, "POST /reload: {body}");
                assert_eq!(body["status"], "reloaded");
            }
            _ => {
                swaps += 1;
                let bytes = if swaps % 2 == 1 {
                    &noop_wasm
                } else {
                    &tag_wasm
                };
                drop_in(&dir, "swap.wasm", bytes);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let rss_end = rss_kib(pid).unwrap();
    let rss_warm = rss_warm.unwrap_or(rss_start);

    // The last config rewrite is in service: its tag name answers.
    let expected_tag = format!("tag-{last_rewrite}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = token(USERS[0], Duration::from_secs(3600));
    loop {
        let resp = client()
            .get(format!("{}/api/final", sidecar.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let chain = resp.headers()["x-chain-response"]
            .to_str()
            .unwrap()
            .to_owned();
        if chain.contains(&expected_tag) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last rewrite ({expected_tag}) never took effect: {chain}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view: serde_json::Value = client()
        .get(format!("{admin}/policies"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generation = view["reload"]["generation"].as_u64().unwrap();

    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "soak: {seconds} s, {clients} clients: {} healthy requests ok ({} cache hits), {} failed; \
         {} hostile 503s; reloads: {rewrites} config rewrites, {posts} POST /reload, {swaps} file swaps \
         (generation {generation})",
        tally.ok.load(Ordering::Relaxed),
        tally.cache_hits.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.hostile_503.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: sidecar RSS start {:.1} MiB, after warm-up ({warm_up:?}) {:.1} MiB, peak {:.1} MiB, end {:.1} MiB",
        mib(rss_start),
        mib(rss_warm),
        mib(rss_peak),
        mib(rss_end),
    );
    eprintln!("soak: RSS every 10 s (MiB): {}", rss_every_10s.join(" "));

    let failures = tally.failures.lock().unwrap().clone();
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "healthy requests failed, first ones: {failures:#?}\nthe sidecar's reasons: {:#?}",
        healthy_errors(&sidecar)
    );
    assert!(tally.ok.load(Ordering::Relaxed) > 0);
    let wrong = hostile_failures.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "hostile routes answered other than 503 policy_failed: {wrong:#?}"
    );
    assert!(tally.hostile_503.load(Ordering::Relaxed) > 0);
    assert!(
        generation >= posts as u64,
        "every POST /reload is a generation: {generation} < {posts}"
    );
    assert!(
        view["reload"]["last_error"].is_null(),
        "a reload failed: {}",
        view["reload"]
    );
    assert!(
        rss_end <= rss_warm * 3 / 2 + 32 * 1024,
        "RSS grew from {:.1} MiB after warm-up to {:.1} MiB",
        mib(rss_warm),
        mib(rss_end)
    );
    assert_eq!(
        panics(&sidecar),
        0,
        "sidecar panicked:\n{}",
        sidecar.tail(50)
    );

    // SIGTERM: a clean stop, exit status 0.
    assert!(sidecar.alive(), "sidecar exited:\n{}", sidecar.tail(50));
    let status = sidecar.terminate(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        sidecar.tail(50)
    );
}
