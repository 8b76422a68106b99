//! Reloading a large policy (the 18.8 MB Python `acl`, componentize-py)
//! with the sidecar binary running as users run it: requests on other routes
//! keep flowing while it compiles, and memory and the compile cache stay
//! bounded across many reloads. Needs the Python policy built, so these run
//! from `scripts/test.sh` (`--include-ignored`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{SidecarProcess, TempDir, Upstream, client, eventually, sidecar_binary};

fn acl_wasm() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins-py/target/acl.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run scripts/build-python-policies.sh (scripts/test.sh does)",
            path.display()
        )
    })
}

/// `wasm` with a custom section appended: the same policy, other bytes, so
/// the sidecar has to compile it anew.
fn variant(wasm: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"variant");
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push(payload.len() as u8); // LEB128, < 128
    out.extend_from_slice(&payload);
    out
}

/// The sidecar binary with a config in a folder of its own.
struct Running {
    process: SidecarProcess,
    base: String,
    admin: String,
}

impl Running {
    async fn start(dir: &Path, upstream: &Upstream) -> Self {
        let config = format!(
            r#"
[reload]
interval_ms = 100
[wasm]
compile_cache = "cache"
compile_cache_max_mb = {CACHE_MB}

[[route]]
name = "free"
prefix = "/free"
upstream = "{upstream}"

[[route]]
name = "guarded"
prefix = "/guarded"
upstream = "{upstream}"
policies = ["acl"]

[policy.acl]
wasm = "acl.wasm"
memory_mb = 40
deadline_ms = 500
[policy.acl.config]
rules = [{{ path_prefix = "/guarded/admin", require_header = "x-role", allow = ["admin"] }}]
"#,
            upstream = upstream.url()
        );
        // A cold start compiles the policy (minutes on a busy 2-core box)
        // before it listens.
        let process = sidecar_binary().admin().start(dir, &config);
        let running = Self {
            base: process.base.clone(),
            admin: process.admin().to_owned(),
            process,
        };
        eventually(
            "the sidecar is ready",
            Duration::from_secs(600),
            async || {
                client()
                    .get(format!("{}/readyz", running.admin))
                    .send()
                    .await
                    .is_ok_and(|resp| resp.status() == 200)
            },
        )
        .await;
        running
    }

    /// The sha256 of the policy now serving.
    async fn serving_sha(&self) -> String {
        let body: serde_json::Value = client()
            .get(format!("{}/policies", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["policies"][0]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the policy with `sha` serves.
    async fn wait_for(&self, sha: &str) {
        eventually(
            "the reload happened",
            Duration::from_secs(600),
            async || self.serving_sha().await == sha,
        )
        .await;
    }

    /// Resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The same few requests on every run, so RSS is compared like for like.
    async fn exercise(&self) {
        for i in 0..20 {
            let path = if i % 2 == 0 { "/free/x" } else { "/guarded/x" };
            let resp = client()
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let denied = client()
            .get(format!("{}/guarded/admin", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 403);
    }
}

/// The disk cache's bound in this test: it holds the two variants'
/// snapshots (about 40 MB each), not every entry ever written.
const CACHE_MB: u64 = 150;

/// Renames `wasm` into place, as a deployment drops in a new policy.
fn drop_in(dir: &Path, wasm: &[u8]) {
    let tmp = dir.join(".acl.wasm.new");
    std::fs::write(&tmp, wasm).unwrap();
    std::fs::rename(&tmp, dir.join("acl.wasm")).unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python policy built: scripts/test.sh builds it and runs this"]
async fn reloading_large_policies_stalls_no_route_and_keeps_memory_and_cache_bounded() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("large-reloads");
    let a = acl_wasm();
    // Two large components that the cache has never seen.
    let b = variant(&a, &format!("b-{}", std::process::id()));
    let a = variant(&a, &format!("a-{}", std::process::id()));
    let (sha_a, sha_b) = (sidecar::wasm::sha256_hex(&a), sidecar::wasm::sha256_hex(&b));
    drop_in(&dir, &a);
    let running = Running::start(&dir, &upstream).await;
    running.exercise().await;

    // A policy-free route, polled while B compiles (tens of seconds of CPU).
    let probe = {
        let url = format!("{}/free/x", running.base);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let c = client();
            let (mut slowest, mut count) = (Duration::ZERO, 0u32);
            loop {
                let started = Instant::now();
                let status = c.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200);
                slowest = slowest.max(started.elapsed());
                count += 1;
                tokio::select! {
                    _ = &mut stopped => return (slowest, count),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        (stop, task)
    };
    let reload_started = Instant::now();
    drop_in(&dir, &b);
    running.wait_for(&sha_b).await;
    let reload_took = reload_started.elapsed();
    let (stop, task) = probe;
    stop.send(()).unwrap();
    let (slowest, count) = task.await.unwrap();
    assert!(count > 20, "{count} requests in {reload_took:?}");
    assert!(
        slowest < Duration::from_millis(250),
        "a policy-free request took {slowest:?} during a {reload_took:?} reload"
    );

    // Nine more, alternating: B, then A, B, ... ending on A.
    for (i, (wasm, sha)) in [(&a, &sha_a), (&b, &sha_b)]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        drop_in(&dir, wasm);
        running.wait_for(sha).await;
        assert_eq!(running.serving_sha().await, *sha, "reload {i}");
    }
    running.exercise().await;
    // The memory freed by the last load is given back within seconds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_reloads = running.rss_kib();
    let cache = dir_bytes(&dir.join("cache"));
    drop(running);

    // The same policy, started fresh on the warm cache.
    let fresh = Running::start(&dir, &upstream).await;
    assert_eq!(fresh.serving_sha().await, sha_a);
    fresh.exercise().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fresh_rss = fresh.rss_kib();
    drop(fresh);
    eprintln!(
        "RSS after ten reloads {after_reloads} KiB, fresh start {fresh_rss} KiB; cache {} MB",
        cache / 1_000_000
    );
    assert!(
        after_reloads * 2 <= fresh_rss * 3,
        "RSS after ten reloads {after_reloads} KiB is over 1.5x a fresh start's {fresh_rss} KiB"
    );
    assert!(
        cache <= CACHE_MB * 1024 * 1024,
        "the compile cache holds {cache} bytes, over its {CACHE_MB} MiB bound"
    );
}

#[test]
#[ignore = "needs the Python policy built: scripts/test.sh builds it and runs this"]
fn a_second_policy_check_of_a_large_policy_compiles_nothing() {
    let dir = TempDir::new("check-cache");
    let wasm = dir.join("acl.wasm");
    std::fs::write(
        &wasm,
        variant(&acl_wasm(), &format!("check-{}", std::process::id())),
    )
    .unwrap();
    let check = || {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_sidecar"))
            .args(["policy", "check"])
            .arg(&wasm)
            .env("XDG_CACHE_HOME", dir.join("xdg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (String::from_utf8(out.stdout).unwrap(), started.elapsed())
    };
    let (first, cold) = check();
    assert!(first.contains("code: compiled now, kept in"), "{first}");
    let (second, warm) = check();
    assert!(second.contains("code: from the compile cache"), "{second}");
    eprintln!("policy check: {cold:?} cold, {warm:?} from the cache");
}
