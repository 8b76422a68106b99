//! `sidecar policy …`: check, call and test a policy component without
//! running the sidecar, and start a new one from the template. Built on
//! `policy-harness`, so a call here behaves exactly as in the sidecar.

mod cases;
mod new;
mod wire;

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use policy_harness::{Harness, PolicyLimits};
use sidecar_runtime::bindings::CONTRACT;
use sidecar_runtime::capabilities::{KvLimits, Services};
use sidecar_runtime::wasm::{EngineSettings, Runtime};

pub use self::cases::{Report, run_cases};
pub use self::new::new_policy;

/// Interface names the sidecar provides, by what they are.
const CAPABILITIES: [&str; 3] = ["log", "kv", "clock"];

/// `sidecar policy check FILE`: is it a policy for this contract, and what
/// does it import? Returns the report to print.
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
    let runtime = Runtime::new(
        EngineSettings {
            max_instances: 8,
            ..EngineSettings::default()
        },
        Services::production(KvLimits::default()),
    )?;
    let component = runtime.compile(&bytes).map_err(|e| {
        let why = first_line(&e);
        let hint = if why.contains("out of bounds") || why.contains("unexpected end") {
            " (the file looks truncated)"
        } else {
            ""
        };
        anyhow!("{} is not a valid component: {why}{hint}", path.display())
    })?;
    let described = runtime.describe(&component);
    let handler = format!("{}/handler@{}", package(), version());
    if !described.exports.contains(&handler) {
        let ours = described
            .exports
            .iter()
            .find(|e| e.starts_with(&format!("{}/handler", package())));
        bail!(
            "{} does not export `{handler}`: {}",
            path.display(),
            match ours {
                Some(other) => format!("it exports `{other}`, another version of the contract"),
                None if described.exports.is_empty() =>
                    "it exports nothing (a component for another world)".into(),
                None => format!(
                    "it exports {} (a component for another world)",
                    described.exports.join(", ")
                ),
            }
        );
    }
    let mut capabilities = Vec::new();
    let mut wasi = Vec::new();
    for import in &described.imports {
        let (iface, ver) = import.split_once('@').unwrap_or((import, ""));
        if let Some(name) = iface.strip_prefix(&format!("{}/", package())) {
            if ver != version() {
                bail!(
                    "{} imports `{import}`; this sidecar provides {CONTRACT}",
                    path.display()
                );
            }
            if CAPABILITIES.contains(&name) {
                capabilities.push(name.to_owned());
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
    Ok(format!(
        "{}: ok, a {CONTRACT} policy\n  capabilities: {}\n  wasi, linked but granting nothing (no files, network or environment): {}",
        path.display(),
        if capabilities.is_empty() {
            "none".into()
        } else {
            capabilities.join(", ")
        },
        if wasi.is_empty() {
            "none".into()
        } else {
            wasi.join(", ")
        },
    ))
}

/// `sidecar policy call FILE --config JSON --request FILE [--upstream FILE]`:
/// runs one request through the policy; returns the outcome as JSON and the
/// log lines it emitted.
///
/// # Errors
/// The file cannot be loaded, the config is refused, an input file is
/// unreadable or malformed, or the policy fails (trap, deadline, memory cap).
pub fn call(
    path: &Path,
    config: &str,
    request: &str,
    upstream: Option<&str>,
) -> anyhow::Result<String> {
    let config: serde_json::Value = serde_json::from_str(config)
        .context("--config: not JSON (example: '{\"secret\":\"s\"}')")?;
    let request = wire::RequestSpec::parse_json(request).context("--request")?;
    let harness = Harness::load(path)?
        .named(policy_name(path))
        .with_limits(PolicyLimits::default());
    // One real request: real time (tokens carry real expiry dates).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    harness.clock().set_micros(now.as_micros() as u64);
    let policy = harness.configure(config)?;
    let mut out = serde_json::Map::new();
    match upstream {
        None => {
            let decision = policy.on_request(request.build())?;
            out.insert("decision".into(), wire::decision_json(&decision));
        }
        Some(text) => {
            let upstream = wire::ResponseSpec::parse_json(text).context("--upstream")?;
            let trip = policy.round_trip(request.build(), upstream.build())?;
            out.insert("decision".into(), wire::decision_json(&trip.decision));
            out.insert("response".into(), wire::response_json(&trip.response));
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
    Ok(serde_json::to_string_pretty(&out)?)
}

/// The policy's name for its store namespace and logs: the file stem.
fn policy_name(path: &Path) -> String {
    path.file_stem()
        .map_or("policy".into(), |s| s.to_string_lossy().into_owned())
}

fn package() -> &'static str {
    CONTRACT.split('@').next().unwrap_or(CONTRACT)
}

fn version() -> &'static str {
    CONTRACT.split('@').nth(1).unwrap_or("")
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
