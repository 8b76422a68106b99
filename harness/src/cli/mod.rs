//! `sidecar policy …`: check, call and test a policy component without
//! running the sidecar, and start a new one from the template. Built on
//! this harness, so a call here behaves exactly as in the sidecar; here
//! rather than in the sidecar's library, which then needs no harness. The
//! `sidecar` binary parses the arguments and calls these.

mod cases;
mod new;
mod setup;
mod wire;

use std::path::Path;
use std::sync::Arc;

use crate::PolicyLimits;
use anyhow::{Context as _, anyhow, bail};
use sidecar_runtime::bindings::{v01, v02};
use sidecar_runtime::capabilities::{
    Clock, KvLimits, MemoryKv, MemorySink, NoNetwork, Outbound, Services, SystemClock,
};
use sidecar_runtime::wasm::{
    Component, Configured, Contract, EngineSettings, FailureMode, PolicyError, PolicySpec, Runtime,
};

pub use self::cases::{Report, run_cases};
pub use self::new::{Lang, new_policy};

/// The sidecar's compile cache directory (as `run` uses by default), so
/// that checking or calling an unchanged policy again compiles nothing.
fn compile_cache_dir() -> Option<std::path::PathBuf> {
    sidecar_runtime::wasm::default_cache_dir(&|name| std::env::var(name).ok())
}

/// Points the plugin harness at [`compile_cache_dir`].
fn use_compile_cache() {
    if let Some(dir) = compile_cache_dir() {
        crate::use_compile_cache(dir);
    }
}

/// Interface names the sidecar provides, by what they are.
const CAPABILITIES: [&str; 5] = ["log", "kv", "clock", "crypto", "outbound"];

/// Interfaces of the contract that are the message itself, not capabilities
/// (shared records in 0.1; in 0.2 the request and response the host keeps).
const MESSAGE: [&str; 1] = ["types"];

/// `sidecar policy check FILE`: is it a policy for a contract this sidecar
/// speaks (0.1.0, 0.2.0 or 0.2.1), what does it import, and (0.2) which hooks does
/// it ask for? Returns the report to print.
///
/// # Errors
/// One line naming what is wrong: not wasm, a core module, truncated or
/// invalid, another world, an import the sidecar does not provide.
pub fn check(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => bail!(
            "{} is a core WebAssembly module, not a component: build policies with `--target wasm32-wasip2`",
            path.display()
        ),
        Some([0, b'a', b's', b'm', ..]) => {}
        _ => bail!(
            "{} is not a WebAssembly file (no `\\0asm` header)",
            path.display()
        ),
    }
    // What `configure` logs while checking is not the user's business here.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services {
        kv: Arc::new(MemoryKv::new(clock.clone(), KvLimits::default())),
        outbound: Outbound::new(Arc::new(NoNetwork), clock.clone()),
        clock,
        log: Arc::new(MemorySink::default()),
    };
    let settings = EngineSettings {
        max_instances: 8,
        ..EngineSettings::default()
    };
    let runtime = match compile_cache_dir() {
        Some(dir) => Runtime::with_compile_cache(
            settings,
            services,
            Some(dir),
            sidecar_runtime::wasm::DEFAULT_MAX_DISK_BYTES,
        )?,
        None => Runtime::new(settings, services)?,
    };
    let (component, source) = runtime.compile_cached(&bytes).map_err(|e| {
        let why = first_line(&e);
        let hint = if why.contains("out of bounds") || why.contains("unexpected end") {
            " (the file looks truncated)"
        } else {
            ""
        };
        anyhow!("{} is not a valid component: {why}{hint}", path.display())
    })?;
    let described = runtime.describe(&component);
    let contract = exported_contract(path, &described.exports)?;
    // The version the component was built against (0.2.0 and 0.2.1 share
    // one host contract): its imports must be of the same.
    let handler_prefix = format!("{}/handler@", package());
    let version = described
        .exports
        .iter()
        .find_map(|e| e.strip_prefix(&handler_prefix))
        .unwrap_or_else(|| version(contract.name()))
        .to_owned();
    let version = version.as_str();
    let mut capabilities = Vec::new();
    let mut wasi = Vec::new();
    for import in &described.imports {
        let (iface, ver) = import.split_once('@').unwrap_or((import, ""));
        if let Some(name) = iface.strip_prefix(&format!("{}/", package())) {
            if ver != version {
                bail!(
                    "{} exports the handler of {} but imports `{import}`: build it against one contract",
                    path.display(),
                    contract.name()
                );
            }
            if CAPABILITIES.contains(&name) {
                capabilities.push(name.to_owned());
            } else if !MESSAGE.contains(&name) {
                bail!(
                    "{} imports `{import}`, which {} does not define",
                    path.display(),
                    contract.name()
                );
            }
        } else if let Some(name) = iface.strip_prefix("wasi:") {
            wasi.push(name.to_owned());
        } else {
            bail!(
                "{} imports `{import}`, which the sidecar does not provide",
                path.display()
            );
        }
    }
    runtime
        .validate(&component)
        .map_err(|e| anyhow!("{}: {}", path.display(), chain_line(&e)))?;
    let mut report = format!(
        "{}: ok, a {}@{version} policy{}\n  capabilities: {}\n  wasi, linked but granting nothing (no files, network or environment): {}",
        path.display(),
        package(),
        if contract == Contract::V01 {
            " (an older contract, still loaded; `sidecar policy new` starts a 0.2 one)"
        } else {
            ""
        },
        list(&capabilities),
        list(&wasi),
    );
    if contract == Contract::V02 {
        report.push('\n');
        report.push_str(&hooks_line(&runtime, &component, &bytes, path));
    }
    report.push_str(&match (source, compile_cache_dir()) {
        (sidecar_runtime::wasm::CompileSource::Compiled, Some(dir)) => {
            format!("\n  code: compiled now, kept in {}", dir.display())
        }
        (sidecar_runtime::wasm::CompileSource::Compiled, None) => {
            "\n  code: compiled now (no compile cache: set HOME or XDG_CACHE_HOME)".to_owned()
        }
        _ => "\n  code: from the compile cache".to_owned(),
    });
    Ok(report)
}

/// The contract whose handler `exports` holds, or why none.
fn exported_contract(path: &Path, exports: &[String]) -> anyhow::Result<Contract> {
    let handler = |contract: &str| format!("{}/handler@{}", package(), version(contract));
    if v02::HANDLERS.iter().any(|h| exports.iter().any(|e| e == h)) {
        return Ok(Contract::V02);
    }
    if exports.contains(&handler(v01::CONTRACT)) {
        return Ok(Contract::V01);
    }
    let wanted = v02::HANDLERS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(std::iter::once(handler(v01::CONTRACT)))
        .map(|h| format!("`{h}`"))
        .collect::<Vec<_>>()
        .join(" or ");
    let ours = exports
        .iter()
        .find(|e| e.starts_with(&format!("{}/handler", package())));
    bail!(
        "{} does not export {wanted}: {}",
        path.display(),
        match ours {
            Some(other) => format!(
                "it exports `{other}`, a version of the contract this sidecar does not speak"
            ),
            None if exports.is_empty() =>
                "it exports nothing (a component for another world)".into(),
            None => format!(
                "it exports {} (a component for another world)",
                exports.join(", ")
            ),
        }
    )
}

/// What a 0.2 policy asks for when configured with `{}`: the hooks the
/// sidecar will call besides `on-request`, and how it is configured. Many
/// policies need a config: a refusal is reported, not an error.
fn hooks_line(runtime: &Arc<Runtime>, component: &Component, wasm: &[u8], path: &Path) -> String {
    let spec = PolicySpec {
        name: policy_name(path),
        config_json: "{}".into(),
        failure: FailureMode::Closed,
        limits: PolicyLimits::default(),
        instances: Default::default(),
        outbound: Default::default(),
    };
    let loaded = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(runtime.load(spec, component, wasm)));
    match loaded {
        Ok(policy) => {
            let hooks = policy.hooks();
            let mut asked = vec!["on-request"];
            if hooks.on_response {
                asked.push("on-response");
            }
            if hooks.on_complete {
                asked.push("on-complete");
            }
            let configured = match policy.configured() {
                Configured::Snapshot => "configured once, instances start from a snapshot".into(),
                Configured::PerInstance => format!(
                    "configured on every instance (no snapshot: {})",
                    policy.snapshot_skipped().unwrap_or("unknown reason")
                ),
            };
            format!(
                "  hooks with config {{}}: {}\n  {configured}",
                asked.join(", ")
            )
        }
        Err(e) => match e.downcast_ref::<PolicyError>() {
            Some(PolicyError::ConfigRefused { message, .. }) => format!(
                "  hooks: not known, config {{}} is refused ({message}); `sidecar policy call` with a real config shows them"
            ),
            _ => format!(
                "  hooks: not known, loading with config {{}} failed: {}",
                chain_line(&e)
            ),
        },
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// What `sidecar policy call` sets up before the request, as a case file
/// can (see `setup`): each field as given on the command line, checked by
/// [`call`], whose errors name the flag.
#[derive(Debug, Clone, Default)]
pub struct CallSetup {
    /// `--kv KEY=VALUE`: entries in the policy's store before the call.
    pub kv: Vec<String>,
    /// `--now TIME`: the clock, RFC 3339 or Unix seconds (default: now).
    pub now: Option<String>,
    /// `--allow-outbound ORIGIN`: origins the policy may call, as its
    /// `allow_outbound` in the sidecar's config.
    pub allow_outbound: Vec<String>,
    /// `--outbound-stub JSON`: what a call to a URL answers (a case file's
    /// `outbound` entry). The network is never reached.
    pub outbound_stubs: Vec<String>,
}

/// `sidecar policy call FILE --config JSON --request FILE [--upstream FILE]`
/// (and [`CallSetup`]'s flags): runs one request through the policy (with
/// an upstream response, the response and completion hooks too, as far as
/// the policy asked for them); returns the outcome as JSON, the log lines
/// it emitted and the `outbound` calls it made.
///
/// # Errors
/// The file cannot be loaded, the config is refused, an input or a flag is
/// malformed (naming it), the policy fails (trap, deadline, memory cap),
/// or its answer is not valid HTTP.
pub fn call(
    path: &Path,
    config: &str,
    request: &str,
    upstream: Option<&str>,
    setup: &CallSetup,
) -> anyhow::Result<String> {
    let config: serde_json::Value = serde_json::from_str(config)
        .context("--config: not JSON (example: '{\"secret\":\"s\"}')")?;
    let request = wire::RequestSpec::parse_json(request).context("--request")?;
    let upstream = upstream
        .map(|text| wire::ResponseSpec::parse_json(text).context("--upstream"))
        .transpose()?;
    let kv = setup
        .kv
        .iter()
        .map(|pair| setup::parse_kv(pair).context("--kv"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = match &setup.now {
        Some(text) => setup::parse_time(text).context("--now")?,
        // One real request: real time (tokens carry real expiry dates).
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64,
    };
    let stubs = setup
        .outbound_stubs
        .iter()
        .map(|text| setup::StubSpec::parse_json(text).context("--outbound-stub"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let harness = setup::load(path, &setup.allow_outbound, &|i| {
        format!("--allow-outbound `{}`", setup.allow_outbound[i])
    })?
    .with_limits(PolicyLimits::default());
    harness.clock().set_micros(now);
    // In place before `configure`, which may read the store or call out.
    setup::prepare(&harness, kv, &stubs).context("--kv")?;
    let policy = harness.configure(config)?;
    let mut out = serde_json::Map::new();
    out.insert("contract".into(), harness.contract().name().into());
    out.insert("hooks".into(), wire::hooks_json(policy.hooks()));
    match upstream {
        None => {
            let decision = policy.on_request(request.build())?;
            out.insert("decision".into(), wire::decision_json(&decision));
        }
        Some(upstream) => {
            let trip = policy.round_trip(request.build(), upstream.build())?;
            out.insert("decision".into(), wire::decision_json(&trip.decision));
            out.insert("response".into(), wire::response_json(&trip.response));
            if let Some(done) = &trip.completion {
                out.insert("completion".into(), wire::completion_json(done));
            }
        }
    }
    out.insert(
        "logs".into(),
        harness
            .logs()
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.to_json_line()).unwrap_or_default()
            })
            .collect(),
    );
    let sent = harness.outbound_requests();
    if !sent.is_empty() || !setup.allow_outbound.is_empty() {
        out.insert("outbound_requests".into(), sent.into());
    }
    Ok(serde_json::to_string_pretty(&out)?)
}

/// The policy's name for its store namespace and logs: the file stem.
fn policy_name(path: &Path) -> String {
    path.file_stem()
        .map_or("policy".into(), |s| s.to_string_lossy().into_owned())
}

/// `sidecar:policy`, the package every contract version shares.
fn package() -> &'static str {
    v02::CONTRACT.split('@').next().unwrap_or(v02::CONTRACT)
}

/// `0.2.0` of `sidecar:policy@0.2.0`.
fn version(contract: &str) -> &str {
    contract.split('@').nth(1).unwrap_or("")
}

fn first_line(e: &anyhow::Error) -> String {
    e.root_cause()
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn chain_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string().lines().next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests;
