//! Drop-in policies: files replaced and configs edited under a running
//! sidecar, with no restart and no failed request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sidecar::Sidecar;
use tokio::net::TcpListener;

use crate::support::{TempDir, Upstream, client};

/// A sidecar serving from a config file in a scratch folder.
struct Live {
    dir: PathBuf,
    base: String,
    admin: String,
    sidecar: Arc<Sidecar>,
}

/// Writes `bytes` to `dir/name` the documented way: a temporary file, then
/// a rename, so the sidecar never sees half a file.
fn drop_in(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Every config the tests write: no compile cache in the user's home.
const NO_DISK_CACHE: &str = "[wasm]\ncompile_cache = \"off\"\n";

async fn start(dir: PathBuf, config: &str, upstream: &Upstream, watch: bool) -> Live {
    let config = if config.starts_with(NO_DISK_CACHE) {
        config.to_owned()
    } else {
        format!("{NO_DISK_CACHE}{config}")
    };
    drop_in(
        &dir,
        "sidecar.toml",
        config.replace("{UPSTREAM}", &upstream.url()).as_bytes(),
    );
    let config = sidecar::config::load(&dir.join("sidecar.toml")).unwrap();
    let (base, _, sidecar) = crate::support::serve(&config).await;
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", admin_listener.local_addr().unwrap());
    let router = sidecar::admin_router(sidecar::Admin::serving(sidecar.clone()));
    tokio::spawn(async move { axum::serve(admin_listener, router).await.unwrap() });
    if watch {
        tokio::spawn(sidecar::watch_files(
            sidecar.clone(),
            Duration::from_millis(50),
        ));
    }
    Live {
        dir,
        base,
        admin,
        sidecar,
    }
}

/// What the `tag` policy (named `a`) did to a request, if anything:
/// `Some(true)` both hooks ran, `Some(false)` neither, `None` a mix.
async fn tagged(base: &str) -> (u16, Option<bool>) {
    let resp = client().get(format!("{base}/api/x")).send().await.unwrap();
    let status = resp.status().as_u16();
    let on_response = resp.headers().contains_key("x-chain-response");
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let on_request = body["headers"].get("x-chain").is_some();
    (status, (on_request == on_response).then_some(on_request))
}

async fn admin_view(live: &Live) -> serde_json::Value {
    client()
        .get(format!("{}/policies", live.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (bounded) until the admin view satisfies `done`.
async fn wait_for_admin(
    live: &Live,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = admin_view(live).await;
        if done(&view) || Instant::now() > deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A config both fixtures accept: `tag` reads `name`, `hostile` reads `mode`.
const ONE_POLICY: &str = r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{UPSTREAM}"
policies = ["p"]

[policy.p]
wasm = "policy.wasm"
config = { name = "a", mode = "none" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_policy_file_under_load_switches_within_two_seconds_without_failures() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("reload-swap");
    drop_in(
        &dir,
        "policy.wasm",
        &std::fs::read(test_policies::TAG).unwrap(),
    );
    let live = start(dir.to_path_buf(), ONE_POLICY, &upstream, true).await;
    assert_eq!(tagged(&live.base).await, (200, Some(true)));

    // Bounded load: 8 clients for about 3 seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (base, stop) = (live.base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = started.elapsed();
                let (status, tag) = tagged(&base).await;
                seen.push((at, status, tag));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let renamed_at = started.elapsed();
    drop_in(
        &live.dir,
        "policy.wasm",
        &std::fs::read(test_policies::HOSTILE).unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }

    assert!(all.len() > 100, "only {} requests", all.len());
    assert!(
        all.iter().all(|(_, status, _)| *status == 200),
        "a request failed during the swap"
    );
    assert!(
        all.iter().all(|(_, _, tag)| tag.is_some()),
        "a request ran on a mix of old and new"
    );
    let late: Vec<_> = all
        .iter()
        .filter(|(at, ..)| *at > renamed_at + Duration::from_secs(2))
        .collect();
    assert!(!late.is_empty());
    // Two seconds: a 0.2 policy is compiled twice more when it loads (once
    // instrumented to run `configure`, once snapshotted), here on two
    // cores shared with 8 busy clients.
    assert!(
        late.iter().all(|(_, _, tag)| *tag == Some(false)),
        "old behaviour still served more than two seconds after the rename"
    );
    let view = admin_view(&live).await;
    assert_eq!(view["reload"]["generation"], 1);
    assert_eq!(
        view["policies"][0]["sha256"],
        sidecar::wasm::sha256_hex(&std::fs::read(test_policies::HOSTILE).unwrap())
    );
}

#[tokio::test]
async fn broken_files_are_refused_the_old_policy_keeps_serving_and_a_fix_recovers() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("reload-broken");
    drop_in(
        &dir,
        "policy.wasm",
        &std::fs::read(test_policies::TAG).unwrap(),
    );
    let live = start(dir.to_path_buf(), ONE_POLICY, &upstream, true).await;

    for (what, bytes) in [
        ("corrupt", b"this is not wasm".to_vec()),
        (
            "truncated",
            std::fs::read(test_policies::HOSTILE).unwrap()[..4000].to_vec(),
        ),
        // The smallest valid component: a component for another world.
        ("other world", b"\0asm\x0d\0\x01\0".to_vec()),
    ] {
        drop_in(&live.dir, "policy.wasm", &bytes);
        let view = wait_for_admin(&live, |v| v["reload"]["last_error"].is_string()).await;
        let error = view["reload"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains("policy.p") && error.contains("policy.wasm"),
            "{what}: {error}"
        );
        assert_eq!(
            tagged(&live.base).await,
            (200, Some(true)),
            "{what}: old policy still serves"
        );
        // Back to a good file, so the next broken one is a change again.
        drop_in(
            &live.dir,
            "policy.wasm",
            &std::fs::read(test_policies::TAG).unwrap(),
        );
        wait_for_admin(&live, |v| v["reload"]["last_error"].is_null()).await;
    }

    // A fixed file (a new policy) is picked up without a restart.
    drop_in(
        &live.dir,
        "policy.wasm",
        &std::fs::read(test_policies::HOSTILE).unwrap(),
    );
    let view = wait_for_admin(&live, |v| {
        v["policies"][0]["sha256"]
            == sidecar::wasm::sha256_hex(&std::fs::read(test_policies::HOSTILE).unwrap())
    })
    .await;
    assert!(view["reload"]["last_error"].is_null(), "{view}");
    assert_eq!(tagged(&live.base).await, (200, Some(false)));
}

#[tokio::test]
async fn config_edits_apply_on_reload_and_invalid_edits_are_refused_naming_the_field() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("reload-edit");
    let tag = test_policies::TAG;
    let config = |policies: &str, b_name: &str, extra: &str| {
        format!(
            "{NO_DISK_CACHE}[[route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"{{UPSTREAM}}\"\npolicies = {policies}\n{extra}\n\
             [policy.a]\nwasm = \"{tag}\"\nconfig = {{ name = \"a\" }}\n\
             [policy.b]\nwasm = \"{tag}\"\nconfig = {{ name = \"{b_name}\" }}\n"
        )
        .replace("{UPSTREAM}", &upstream.url())
    };
    let live = start(
        dir.to_path_buf(),
        &config(r#"["a"]"#, "b", ""),
        &upstream,
        false,
    )
    .await;
    let chain = || async {
        let body: serde_json::Value = client()
            .get(format!("{}/api/x", live.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["headers"]["x-chain"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let reload = || async {
        let resp = client()
            .post(format!("{}/reload", live.admin))
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(chain().await, "a");

    // Add a policy to the route.
    drop_in(
        &live.dir,
        "sidecar.toml",
        config(r#"["a", "b"]"#, "b", "").as_bytes(),
    );
    assert_eq!(reload().await.0, 200);
    assert_eq!(chain().await, "a,b");

    // Change a policy's config.
    drop_in(
        &live.dir,
        "sidecar.toml",
        config(r#"["a", "b"]"#, "c", "").as_bytes(),
    );
    assert_eq!(reload().await.0, 200);
    assert_eq!(chain().await, "a,c");

    // An invalid edit: refused with the field named, the old config serves.
    drop_in(
        &live.dir,
        "sidecar.toml",
        config(r#"["a", "b"]"#, "d", "timeout_ms = 0").as_bytes(),
    );
    let (status, body) = reload().await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "reload_refused");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("sidecar.toml") && error.contains("route[0].timeout_ms"),
        "{error}"
    );
    assert_eq!(chain().await, "a,c");
    let view = admin_view(&live).await;
    assert!(
        view["reload"]["last_error"]
            .as_str()
            .unwrap()
            .contains("route[0].timeout_ms")
    );
    assert_eq!(view["reload"]["generation"], 2);
    assert_eq!(live.sidecar.reload_status().generation, 2);
}
