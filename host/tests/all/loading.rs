//! Loading policies, and the typed errors a failing policy produces.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use sidecar::capabilities::MemorySink;
use sidecar::capabilities::{KvLimits, Services};
use sidecar::message::{Body, BodyLimits, Exchange, Phase, RequestHead, Response};
use sidecar::wasm::{
    Component, EngineSettings, FailureMode, HookError, Instances, PolicyError, PolicyLimits,
    PolicySpec, REUSE_MAX_USES, Runtime, Verdict,
};

use crate::support::TempDir;

fn compile(rt: &Runtime, path: &str) -> (Component, Vec<u8>) {
    let wasm = std::fs::read(path).unwrap();
    (rt.compile_file(Path::new(path)).unwrap(), wasm)
}

fn runtime() -> Arc<Runtime> {
    Runtime::new(
        EngineSettings::default(),
        Services::production(KvLimits::default()),
    )
    .unwrap()
}

fn spec(name: &str, config: serde_json::Value) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        config_json: config.to_string(),
        failure: FailureMode::Closed,
        limits: PolicyLimits {
            deadline: Duration::from_millis(100),
            memory_bytes: 16 * 1024 * 1024,
            ..PolicyLimits::default()
        },
        instances: Instances::Fresh,
        outbound: Default::default(),
    }
}

/// `GET /x` on route `r`, as the sidecar hands it to a chain.
fn request() -> Exchange {
    let head = RequestHead {
        path: "/x".into(),
        route: "r".into(),
        client: "127.0.0.1:1".parse().unwrap(),
        request_id: "id".into(),
        ..RequestHead::default()
    };
    Exchange::new(head, Body::empty(), BodyLimits::default())
}

/// The exchange after the upstream answered `resp`.
fn answered(mut ex: Exchange, resp: Response) -> Exchange {
    ex.response = Some(resp);
    ex.phase = Phase::Response;
    ex
}

async fn call_hostile(mode: &str) -> PolicyError {
    let rt = runtime();
    let (component, wasm) = compile(&rt, test_policies::HOSTILE);
    let policy = rt
        .load(
            spec("hostile", serde_json::json!({ "mode": mode })),
            &component,
            &wasm,
        )
        .await
        .unwrap();
    let mut instance = policy.instantiate(&"r".into(), &"id".into()).await.unwrap();
    match instance.on_request(&mut request()).await {
        Ok(_) => panic!("hostile policy in mode {mode} returned"),
        Err(HookError::Policy(e)) => e,
        Err(other) => panic!("not a policy failure: {other}"),
    }
}

#[tokio::test]
async fn refused_config_stops_the_load_with_the_policy_message() {
    let rt = runtime();
    let (component, wasm) = compile(&rt, test_policies::TAG);
    let err = rt
        .load(
            spec(
                "tag",
                serde_json::json!({ "name": "a", "refuse": "name is rude" }),
            ),
            &component,
            &wasm,
        )
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("policy `tag` refused its config: name is rude"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_named_in_the_error() {
    let dir = TempDir::new("not-a-component");
    let bad = dir.join("garbage.wasm");
    std::fs::write(&bad, b"not wasm at all").unwrap();
    let err = runtime().compile_file(&bad).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("garbage.wasm is not a valid WebAssembly component"),
        "{msg}"
    );
    let err = runtime()
        .compile_file(&dir.join("missing.wasm"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
}

#[tokio::test]
async fn config_file_errors_name_the_policy_and_file() {
    let text = format!(
        "[[route]]\nprefix = \"/a\"\npolicies = [\"tag\"]\n[policy.tag]\nwasm = \"{}\"\nconfig = {{ name = \"a\", refuse = \"no\" }}\n",
        test_policies::TAG
    );
    let config = sidecar::config::parse(&text, Path::new("/cfg/sidecar.toml"), &|_| None).unwrap();
    let err = sidecar::Sidecar::new(&config, Services::production(KvLimits::default()))
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("/cfg/sidecar.toml: policy.tag"), "{msg}");
    assert!(msg.contains("refused its config: no"), "{msg}");
}

#[tokio::test]
async fn infinite_loop_is_reported_as_timed_out() {
    assert!(matches!(
        call_hostile("loop").await,
        PolicyError::TimedOut { .. }
    ));
}

#[tokio::test]
async fn unbounded_allocation_is_reported_as_memory_cap() {
    assert!(matches!(
        call_hostile("alloc").await,
        PolicyError::MemoryCap { .. }
    ));
}

#[tokio::test]
async fn panic_is_reported_as_trap_with_its_message_for_the_log() {
    match call_hostile("trap").await {
        PolicyError::Trapped { detail, .. } => {
            assert!(
                detail.contains("hostile policy trapped on purpose"),
                "{detail}"
            )
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pass_through_policy_continues_unchanged() {
    let rt = runtime();
    let (component, wasm) = compile(&rt, test_policies::HOSTILE);
    let policy = rt
        .load(
            spec("hostile", serde_json::json!({ "mode": "none" })),
            &component,
            &wasm,
        )
        .await
        .unwrap();
    let mut instance = policy.instantiate(&"r".into(), &"id".into()).await.unwrap();
    assert!(matches!(
        instance.on_request(&mut request()).await.unwrap(),
        Verdict::Continue
    ));
}

#[tokio::test]
async fn a_sha256_pin_that_does_not_match_stops_the_load() {
    let good = sidecar::wasm::sha256_hex(&std::fs::read(test_policies::TAG).unwrap());
    let config = |pin: &str| {
        format!(
            "[[route]]\nprefix = \"/a\"\npolicies = [\"tag\"]\n[policy.tag]\nwasm = \"{}\"\nsha256 = \"{pin}\"\nconfig = {{ name = \"a\" }}\n",
            test_policies::TAG
        )
    };
    let load = |text: String| async move {
        let config =
            sidecar::config::parse(&text, Path::new("/cfg/sidecar.toml"), &|_| None).unwrap();
        sidecar::Sidecar::new(&config, Services::production(KvLimits::default())).await
    };
    assert!(load(config(&good)).await.is_ok());
    let wrong = "0".repeat(64);
    let msg = format!("{:#}", load(config(&wrong)).await.unwrap_err());
    assert!(msg.contains("policy.tag.sha256 pins"), "{msg}");
    assert!(msg.contains(&good), "{msg}");
}

/// A runtime as a sidecar (re)started with its compile cache in `dir`.
fn runtime_caching_in(dir: &Path) -> Arc<Runtime> {
    Runtime::with_compile_cache(
        EngineSettings::default(),
        Services::production(KvLimits::default()),
        Some(dir.to_owned()),
        sidecar::wasm::DEFAULT_MAX_DISK_BYTES,
    )
    .unwrap()
}

#[test]
fn compiled_policies_are_reused_from_the_disk_cache_and_bad_entries_are_ignored() {
    use sidecar::wasm::CompileSource;
    let dir = TempDir::new("cache-test");
    let bytes = std::fs::read(test_policies::TAG).unwrap();
    let fresh_runtime = || runtime_caching_in(&dir);
    // First start: compiled, and written to the cache.
    let (_, source) = fresh_runtime().compile_cached(&bytes).unwrap();
    assert_eq!(source, CompileSource::Compiled);
    // Same runtime again: from memory. A new one (a restart): from disk.
    let rt = fresh_runtime();
    assert_eq!(rt.compile_cached(&bytes).unwrap().1, CompileSource::Disk);
    assert_eq!(rt.compile_cached(&bytes).unwrap().1, CompileSource::Memory);
    // A damaged entry is ignored (recompiled and rewritten), never trusted.
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut data = std::fs::read(&entries[0]).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&entries[0], &data).unwrap();
    assert_eq!(
        fresh_runtime().compile_cached(&bytes).unwrap().1,
        CompileSource::Compiled
    );
    assert_eq!(
        fresh_runtime().compile_cached(&bytes).unwrap().1,
        CompileSource::Disk
    );
    // What the loads since a mark did not use is forgotten in memory (the
    // disk still has it).
    let rt = fresh_runtime();
    assert_eq!(rt.compile_cached(&bytes).unwrap().1, CompileSource::Disk);
    let mark = rt.mark_loads();
    rt.forget_compiled_unused_since(mark);
    assert_eq!(rt.compile_cached(&bytes).unwrap().1, CompileSource::Disk);
    let mark = rt.mark_loads();
    assert_eq!(rt.compile_cached(&bytes).unwrap().1, CompileSource::Memory);
    rt.forget_compiled_unused_since(mark);
    assert_eq!(rt.compile_cached(&bytes).unwrap().1, CompileSource::Memory);
}

#[tokio::test]
async fn a_configured_snapshot_is_reused_across_restarts_for_the_same_config_only() {
    use sidecar::wasm::CompileSource;
    let dir = TempDir::new("snapshot-test");
    let bytes = std::fs::read(test_policies::TAG).unwrap();
    let fresh_runtime = || runtime_caching_in(&dir);
    let load = |rt: Arc<Runtime>, name: &'static str| {
        let bytes = bytes.clone();
        async move {
            let (policy, source) = rt
                .load_wasm(spec("tag", serde_json::json!({ "name": name })), &bytes)
                .await
                .unwrap();
            (policy, source)
        }
    };
    let (first, source) = load(fresh_runtime(), "a").await;
    assert_eq!(source, CompileSource::Compiled);
    assert_eq!(first.configured(), sidecar::wasm::Configured::Snapshot);
    // A restart: the configured snapshot comes from disk, hooks and all.
    let (again, source) = load(fresh_runtime(), "a").await;
    assert_eq!(source, CompileSource::Disk);
    assert_eq!(again.hooks(), first.hooks());
    let mut instance = again.instantiate(&"r".into(), &"id".into()).await.unwrap();
    let mut ex = request();
    instance.on_request(&mut ex).await.unwrap();
    // Another config is configured anew, never served from the first one's
    // snapshot.
    let (other, source) = load(fresh_runtime(), "b").await;
    assert_ne!(source, CompileSource::Memory);
    let mut instance = other.instantiate(&"r".into(), &"id".into()).await.unwrap();
    let mut ex_b = request();
    instance.on_request(&mut ex_b).await.unwrap();
    let chain = |ex: &Exchange| {
        ex.request
            .headers
            .get("x-chain")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(chain(&ex).as_deref(), Some("a"));
    assert_eq!(chain(&ex_b).as_deref(), Some("b"));
}

/// An empty 200, as the upstream's answer for the response hooks.
fn upstream_ok() -> Response {
    Response::full(StatusCode::OK, HeaderMap::new(), Bytes::new())
}

/// Runs `n` requests through the tag fixture, one after the other, and
/// returns what each response's `x-instance-served` said.
async fn served_counts(instances: Instances, n: usize) -> Vec<String> {
    let rt = runtime();
    let (component, wasm) = compile(&rt, test_policies::TAG);
    let mut spec = spec("tag", serde_json::json!({ "name": "t" }));
    spec.instances = instances;
    let policy = rt.load(spec, &component, &wasm).await.unwrap();
    let mut counts = Vec::new();
    for _ in 0..n {
        let mut instance = policy.instantiate(&"r".into(), &"id".into()).await.unwrap();
        let mut ex = request();
        instance.on_request(&mut ex).await.unwrap();
        let mut ex = answered(ex, upstream_ok());
        instance.on_response(&mut ex).await.unwrap();
        let resp = ex.response.unwrap();
        let served = resp.head.headers.get("x-instance-served");
        counts.push(served.expect("tag sets it").to_str().unwrap().to_owned());
    }
    counts
}

#[tokio::test]
async fn fresh_instances_share_nothing_between_requests() {
    assert_eq!(served_counts(Instances::Fresh, 3).await, ["1", "1", "1"]);
}

#[tokio::test]
async fn reused_instances_keep_their_state_and_are_replaced_after_max_uses() {
    let counts = served_counts(Instances::Reuse, REUSE_MAX_USES as usize + 2).await;
    assert_eq!(counts[..3], ["1", "2", "3"]);
    let last = REUSE_MAX_USES as usize - 1;
    assert_eq!(counts[last], REUSE_MAX_USES.to_string());
    assert_eq!(
        counts[last + 1..],
        ["1", "2"],
        "a new instance after max uses"
    );
}

#[tokio::test]
async fn a_failed_instance_is_never_reused() {
    let rt = runtime();
    let (component, wasm) = compile(&rt, test_policies::HOSTILE);
    let mut spec = spec(
        "hostile",
        serde_json::json!({ "mode": "trap", "hook": "response" }),
    );
    spec.instances = Instances::Reuse;
    let policy = rt.load(spec, &component, &wasm).await.unwrap();
    for _ in 0..3 {
        let mut instance = policy.instantiate(&"r".into(), &"id".into()).await.unwrap();
        // A reused instance would be refused as "already failed".
        let mut ex = request();
        instance.on_request(&mut ex).await.unwrap();
        let mut ex = answered(ex, upstream_ok());
        let err = instance.on_response(&mut ex).await.unwrap_err();
        assert!(err.to_string().contains("trapped on purpose"), "{err}");
    }
}

#[tokio::test]
async fn a_reused_instance_logs_with_the_current_request_id() {
    let sink = Arc::new(MemorySink::default());
    let mut services = Services::production(KvLimits::default());
    services.log = sink.clone();
    let rt = Runtime::new(EngineSettings::default(), services).unwrap();
    let (component, wasm) = compile(&rt, test_policies::LOGGING);
    let mut spec = spec("logging", serde_json::json!({}));
    spec.instances = Instances::Reuse;
    let policy = rt.load(spec, &component, &wasm).await.unwrap();
    for id in ["first", "second"] {
        let mut instance = policy.instantiate(&"r".into(), &id.into()).await.unwrap();
        let mut ex = request();
        ex.request.request_id = id.into();
        instance.on_request(&mut ex).await.unwrap();
        let mut ex = answered(ex, upstream_ok());
        ex.phase = Phase::Complete;
        let info = sidecar::message::Completion {
            status: 200,
            complete: true,
            ..Default::default()
        };
        instance.on_complete(&mut ex, &info).await.unwrap();
    }
    let ids: Vec<String> = sink
        .records()
        .iter()
        .map(|r| r.request_id.to_string())
        .collect();
    assert_eq!(ids, ["first", "second"]);
}

#[tokio::test]
async fn a_policy_gets_no_files_environment_network_http_or_wall_clock() {
    // Something to connect to, so a refused connection is the sandbox's doing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Something in the sidecar's own environment a policy must not see.
    assert!(std::env::vars().count() > 0);

    let rt = runtime();
    let (component, wasm) = compile(&rt, test_policies::SANDBOX);
    let policy = rt
        .load(spec("sandbox", serde_json::json!({})), &component, &wasm)
        .await
        .unwrap();
    let mut instance = policy.instantiate(&"r".into(), &"id".into()).await.unwrap();
    let mut ex = request();
    ex.request
        .headers
        .insert("x-port", HeaderValue::from_str(&port.to_string()).unwrap());
    let Verdict::Respond(resp) = instance.on_request(&mut ex).await.unwrap() else {
        panic!("the sandbox fixture always answers");
    };
    assert_eq!(
        &resp.body.complete().unwrap()[..],
        b"fs=denied;dir=denied;env=0;net=denied;http=HttpRequestDenied;clock=0",
    );
}
