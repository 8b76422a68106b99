//! The sidecar's TOML config: parsed, then validated into [`Config`], with
//! every error naming the file and the field (`sidecar.toml: route[1].upstream: …`).
//!
//! Config is on top: each layer owns its settings type (`listener`'s
//! `ServerSettings`, `routes`' `RouteSettings`, `upstream`'s
//! `BalanceSettings`, the capabilities' `KvSettings`, …) and this module
//! fills them; only the lifecycle and `main` import it.
//!
//! ```toml
//! listen = "127.0.0.1:4000"
//!
//! [[route]]
//! name = "users"
//! prefix = "/user-service"
//! upstream = "http://127.0.0.1:3002"
//! rewrite = "/"
//! policies = ["logging", "auth"]      # request hooks in this order
//!
//! [[route]]
//! prefix = "/billing"
//! upstream = "https://billing.internal:8443"
//! [route.tls]                         # optional: system roots otherwise
//! ca = "certs/internal-ca.pem"
//!
//! [policy.auth]
//! wasm = "policies/auth.wasm"         # relative to this file
//! failure = "closed"                  # or "open"
//! instances = "fresh"                 # or "reuse" (see `Instances`)
//! config = { secret = "${JWT_SECRET:-Secreto}" }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::Uri;
use serde::Deserialize;

use crate::capabilities::redis::{RedisSettings, check_url};
use crate::capabilities::{KvBackend, KvLimits, KvSettings};
use crate::capabilities::{Origin, OutboundGrant};
use crate::listener::ServerSettings;
use crate::routes::{GatewaySettings, PolicySettings, ProxySettings, RouteSettings};
use crate::shipping::LogSettings;
use crate::telemetry::TelemetrySettings;
use crate::tls::{ClientCert, ServerTls, UpstreamTls};
use crate::upstream::{BalanceSettings, HealthCheck, RetryBudgetSettings, Strategy};
use crate::wasm::{EngineSettings, FailureMode, Instances, PolicyLimits};
use crate::watch::WatchSettings;

mod logs;
mod telemetry;

/// A validated config. Paths are absolute (resolved against the file's folder).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub server: ServerSettings,
    /// `[server.tls]`: HTTPS on the listener; `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
    pub proxy: ProxySettings,
    pub engine: EngineSettings,
    /// The `kv` store: its backend (memory or Redis) and limits.
    pub kv: KvSettings,
    pub admin: AdminSettings,
    /// `[reload]`: watching the config, policy and certificate files.
    pub reload: WatchSettings,
    /// Where policy log lines go (`[[log.sink]]`).
    pub log: LogSettings,
    /// OpenTelemetry traces (`[telemetry]` and the `OTEL_*` variables).
    pub telemetry: TelemetrySettings,
    /// Where compiled policies are cached across restarts; `None` disables.
    pub compile_cache: Option<PathBuf>,
    /// The most the compile cache directory may hold; the least recently
    /// used entries go first (`[wasm] compile_cache_max_mb`, 512).
    pub compile_cache_max_bytes: u64,
    pub routes: Vec<RouteSettings>,
    pub policies: BTreeMap<String, PolicySettings>,
}

impl Config {
    /// What the routes are built from (see [`Gateway::build`](crate::routes::Gateway::build)).
    pub fn gateway_settings(&self) -> GatewaySettings {
        GatewaySettings {
            source: self.source.clone(),
            proxy: self.proxy,
            routes: self.routes.clone(),
            policies: self.policies.clone(),
        }
    }

    /// Every file a policy loads from: its `.wasm` and what its config
    /// reads with `${file:...}`.
    pub fn policy_files(&self) -> Vec<PathBuf> {
        self.policies
            .values()
            .flat_map(|p| std::iter::once(p.wasm.clone()).chain(p.files.iter().cloned()))
            .collect()
    }

    /// The config file and every policy file: what a reload watches.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.source.clone())
            .chain(self.policy_files())
            .collect()
    }
}

/// The admin listener: policies, reload status, `POST /reload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminSettings {
    /// `None` when disabled. Loopback by default: it can trigger reloads.
    pub listen: Option<SocketAddr>,
}

/// hyper's smallest read buffer: a head limit below it cannot be enforced.
const MIN_HEADER_BYTES: usize = 8192;

/// Reads and validates a config file.
///
/// # Errors
/// A message naming the file and the field at fault.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    // Absolute, so the watcher and the admin view name the same file
    // whatever the working directory.
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    parse(&text, &path, &|name| std::env::var(name).ok())
}

/// Validates config `text` as if read from `path` (relative paths resolve
/// against its folder); `env` looks up `${VAR}` references.
///
/// # Errors
/// As [`load`].
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    let file = path.display().to_string();
    let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow!("{file}: {e}"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate(raw, path, base, env).map_err(|e| anyhow!("{file}: {e:#}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    wasm: RawWasm,
    #[serde(default)]
    kv: RawKv,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    log: logs::RawLog,
    #[serde(default)]
    telemetry: telemetry::RawTelemetry,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
    #[serde(default, rename = "policy")]
    policies: BTreeMap<String, RawPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_header_bytes: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    max_concurrent_requests: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    body_min_bytes_per_sec: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    workers: Option<usize>,
    http2: Option<bool>,
    max_concurrent_streams: Option<u32>,
    tls: Option<RawListenerTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    max_body_bytes: Option<usize>,
    max_response_bytes: Option<usize>,
    max_policy_body_bytes: Option<usize>,
    upstream_timeout_ms: Option<u64>,
    retry_budget_percent: Option<u32>,
    retry_budget_min_per_sec: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWasm {
    /// Engine-wide ceiling for any policy's memory cap.
    max_memory_mb: Option<usize>,
    max_instances: Option<u32>,
    /// Defaults for policies that set none.
    deadline_ms: Option<u64>,
    memory_mb: Option<usize>,
    kv_ops_per_request: Option<u32>,
    kv_bytes_per_request: Option<usize>,
    /// A folder for compiled policies, or "off".
    compile_cache: Option<String>,
    compile_cache_max_mb: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// An address, or "off".
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReload {
    watch: Option<bool>,
    interval_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKv {
    /// "memory" (default) or "redis".
    backend: Option<String>,
    max_entries: Option<usize>,
    max_key_bytes: Option<usize>,
    max_value_bytes: Option<usize>,
    /// Redis only.
    url: Option<String>,
    timeout_ms: Option<u64>,
    key_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    prefix: String,
    upstream: Option<String>,
    upstreams: Option<Vec<String>>,
    /// "round-robin" (default) or "least-requests".
    balance: Option<String>,
    retries: Option<u32>,
    health: Option<RawHealth>,
    rewrite: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    policies: Vec<String>,
    tls: Option<RawUpstreamTls>,
}

/// `[route.health]`: passive ejection, and active checks if `path` is set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    eject_after_failures: Option<u32>,
    eject_ms: Option<u64>,
    max_eject_ms: Option<u64>,
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    wasm: PathBuf,
    #[serde(default)]
    failure: FailureMode,
    #[serde(default)]
    instances: Instances,
    deadline_ms: Option<u64>,
    memory_mb: Option<usize>,
    kv_ops_per_request: Option<u32>,
    kv_bytes_per_request: Option<usize>,
    #[serde(default)]
    allow_outbound: Vec<String>,
    outbound_timeout_ms: Option<u64>,
    outbound_max_bytes: Option<usize>,
    outbound_calls_per_request: Option<u32>,
    sha256: Option<String>,
    #[serde(default)]
    config: toml::Table,
}

const MB: usize = 1024 * 1024;

/// What `policy.NAME` may reach with `outbound`, and its bounds.
fn outbound_grant(field: &str, p: &RawPolicy) -> anyhow::Result<OutboundGrant> {
    let defaults = OutboundGrant::default();
    let mut allow = Vec::with_capacity(p.allow_outbound.len());
    for (i, origin) in p.allow_outbound.iter().enumerate() {
        let parsed: Origin = origin
            .parse()
            .map_err(|e| anyhow!("{field}.allow_outbound[{i}]: {e}"))?;
        allow.push(parsed);
    }
    Ok(OutboundGrant {
        allow,
        calls_per_request: positive(
            &format!("{field}.outbound_calls_per_request"),
            p.outbound_calls_per_request,
        )?
        .unwrap_or(defaults.calls_per_request),
        timeout: positive(
            &format!("{field}.outbound_timeout_ms"),
            p.outbound_timeout_ms,
        )?
        .map_or(defaults.timeout, Duration::from_millis),
        max_bytes: positive(&format!("{field}.outbound_max_bytes"), p.outbound_max_bytes)?
            .unwrap_or(defaults.max_bytes),
    })
}

fn validate(
    raw: RawConfig,
    path: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:4000");
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| anyhow!("listen: `{listen}` is not an address like 127.0.0.1:4000 ({e})"))?;

    let server_defaults = ServerSettings::default();
    let server = ServerSettings {
        max_header_bytes: positive("server.max_header_bytes", raw.server.max_header_bytes)?
            .unwrap_or(server_defaults.max_header_bytes),
        header_read_timeout: positive(
            "server.header_read_timeout_ms",
            raw.server.header_read_timeout_ms,
        )?
        .map_or(server_defaults.header_read_timeout, Duration::from_millis),
        max_concurrent_requests: positive(
            "server.max_concurrent_requests",
            raw.server.max_concurrent_requests,
        )?
        .unwrap_or(server_defaults.max_concurrent_requests),
        shutdown_grace: positive("server.shutdown_grace_ms", raw.server.shutdown_grace_ms)?
            .map_or(server_defaults.shutdown_grace, Duration::from_millis),
        body_read_timeout: positive(
            "server.body_read_timeout_ms",
            raw.server.body_read_timeout_ms,
        )?
        .map_or(server_defaults.body_read_timeout, Duration::from_millis),
        body_min_bytes_per_sec: raw
            .server
            .body_min_bytes_per_sec
            .unwrap_or(server_defaults.body_min_bytes_per_sec),
        max_connections: positive("server.max_connections", raw.server.max_connections)?
            .unwrap_or(server_defaults.max_connections),
        max_connections_per_ip: positive(
            "server.max_connections_per_ip",
            raw.server.max_connections_per_ip,
        )?
        .unwrap_or(server_defaults.max_connections_per_ip),
        workers: positive("server.workers", raw.server.workers)?,
        http2: raw.server.http2.unwrap_or(server_defaults.http2),
        max_concurrent_streams: positive(
            "server.max_concurrent_streams",
            raw.server.max_concurrent_streams,
        )?
        .unwrap_or(server_defaults.max_concurrent_streams),
    };
    if let Some(n) = server.workers.filter(|&n| n > MAX_WORKERS) {
        bail!("server.workers: {n} is more than {MAX_WORKERS}");
    }
    if server.max_connections_per_ip > server.max_connections {
        bail!(
            "server.max_connections_per_ip: {} is more than server.max_connections ({})",
            server.max_connections_per_ip,
            server.max_connections
        );
    }
    if server.max_header_bytes < MIN_HEADER_BYTES {
        bail!(
            "server.max_header_bytes: {} is below the smallest enforceable limit, {MIN_HEADER_BYTES}",
            server.max_header_bytes
        );
    }

    let tls = raw.server.tls.map(|t| listener_tls(t, base)).transpose()?;

    let defaults = ProxySettings::default();
    let proxy = ProxySettings {
        max_body_bytes: positive("proxy.max_body_bytes", raw.proxy.max_body_bytes)?
            .unwrap_or(defaults.max_body_bytes),
        max_response_bytes: positive("proxy.max_response_bytes", raw.proxy.max_response_bytes)?
            .unwrap_or(defaults.max_response_bytes),
        max_policy_body_bytes: positive(
            "proxy.max_policy_body_bytes",
            raw.proxy.max_policy_body_bytes,
        )?
        .unwrap_or(defaults.max_policy_body_bytes),
        upstream_timeout: positive("proxy.upstream_timeout_ms", raw.proxy.upstream_timeout_ms)?
            .map_or(defaults.upstream_timeout, Duration::from_millis),
        retry_budget: retry_budget(&raw.proxy)?,
    };

    let engine_defaults = EngineSettings::default();
    let engine = EngineSettings {
        max_memory_bytes: mib("wasm.max_memory_mb", raw.wasm.max_memory_mb)?
            .unwrap_or(engine_defaults.max_memory_bytes),
        max_instances: positive("wasm.max_instances", raw.wasm.max_instances)?
            .unwrap_or(engine_defaults.max_instances),
    };
    let limit_defaults = PolicyLimits {
        deadline: positive("wasm.deadline_ms", raw.wasm.deadline_ms)?
            .map_or(PolicyLimits::default().deadline, Duration::from_millis),
        memory_bytes: mib("wasm.memory_mb", raw.wasm.memory_mb)?
            .unwrap_or(PolicyLimits::default().memory_bytes)
            .min(engine.max_memory_bytes),
        kv_ops: positive("wasm.kv_ops_per_request", raw.wasm.kv_ops_per_request)?
            .unwrap_or(PolicyLimits::default().kv_ops),
        kv_bytes: positive("wasm.kv_bytes_per_request", raw.wasm.kv_bytes_per_request)?
            .unwrap_or(PolicyLimits::default().kv_bytes),
    };

    let kv = kv_settings(raw.kv)?;
    let telemetry = telemetry::telemetry_settings(raw.telemetry, env)?;
    let log = logs::log_settings(raw.log, base, env, &telemetry)?;

    let mut policies = BTreeMap::new();
    for (name, p) in raw.policies {
        let field = format!("policy.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("{field}: policy names use only letters, digits, `-` and `_`");
        }
        let memory_bytes =
            mib(&format!("{field}.memory_mb"), p.memory_mb)?.unwrap_or(limit_defaults.memory_bytes);
        if memory_bytes > engine.max_memory_bytes {
            bail!(
                "{field}.memory_mb: {} MiB is above wasm.max_memory_mb ({} MiB)",
                memory_bytes / MB,
                engine.max_memory_bytes / MB
            );
        }
        let limits = PolicyLimits {
            deadline: positive(&format!("{field}.deadline_ms"), p.deadline_ms)?
                .map_or(limit_defaults.deadline, Duration::from_millis),
            memory_bytes,
            kv_ops: positive(&format!("{field}.kv_ops_per_request"), p.kv_ops_per_request)?
                .unwrap_or(limit_defaults.kv_ops),
            kv_bytes: positive(
                &format!("{field}.kv_bytes_per_request"),
                p.kv_bytes_per_request,
            )?
            .unwrap_or(limit_defaults.kv_bytes),
        };
        let outbound = outbound_grant(&field, &p)?;
        let mut json = serde_json::to_value(&p.config)
            .with_context(|| format!("{field}.config: cannot be expressed as JSON"))?;
        let mut files = FileRefs {
            base,
            read: Vec::new(),
        };
        expand_env(&mut json, &format!("{field}.config"), env, &mut files)?;
        let sha256 = match p.sha256 {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => bail!("{field}.sha256: `{h}` is not a sha256 (64 hex digits)"),
            None => None,
        };
        policies.insert(
            name,
            PolicySettings {
                wasm: base.join(&p.wasm),
                failure: p.failure,
                limits,
                instances: p.instances,
                config_json: json.to_string(),
                sha256,
                outbound,
                files: files.read,
            },
        );
    }

    let mut routes: Vec<RouteSettings> = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let field = format!("route[{i}]");
        let prefix = r.prefix;
        if !prefix.starts_with('/') {
            bail!("{field}.prefix: `{prefix}` must start with `/`");
        }
        let prefix = if prefix.len() > 1 {
            prefix.trim_end_matches('/').to_owned()
        } else {
            prefix
        };
        let name = r.name.unwrap_or_else(|| prefix.clone());
        if let Some(other) = routes.iter().find(|o| o.prefix == prefix || o.name == name) {
            bail!("{field}: same prefix or name as route `{}`", other.name);
        }
        let upstreams = match (r.upstream, r.upstreams) {
            (Some(_), Some(_)) => bail!(
                "{field}.upstreams: give either `upstream` (one endpoint) or `upstreams` (a list), not both"
            ),
            (Some(u), None) => {
                vec![parse_upstream(&u).map_err(|e| anyhow!("{field}.upstream: {e}"))?]
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    bail!("{field}.upstreams: the list is empty; give at least one URL");
                }
                let mut uris: Vec<Uri> = Vec::with_capacity(list.len());
                for (j, u) in list.iter().enumerate() {
                    let uri =
                        parse_upstream(u).map_err(|e| anyhow!("{field}.upstreams[{j}]: {e}"))?;
                    if uris.contains(&uri) {
                        bail!("{field}.upstreams[{j}]: `{u}` is listed twice");
                    }
                    uris.push(uri);
                }
                uris
            }
            (None, None) => Vec::new(),
        };
        let balance = if upstreams.is_empty() {
            let unused = [
                ("balance", r.balance.is_some()),
                ("retries", r.retries.is_some()),
                ("health", r.health.is_some()),
            ];
            if let Some((name, _)) = unused.iter().find(|(_, set)| *set) {
                bail!("{field}.{name}: only used with `upstream` or `upstreams`");
            }
            BalanceSettings::default()
        } else {
            balance_settings(&field, r.balance.as_deref(), r.retries, r.health)?
        };
        if let Some(rewrite) = r.rewrite.as_ref().filter(|r| !r.starts_with('/')) {
            bail!("{field}.rewrite: `{rewrite}` must start with `/`");
        }
        for (j, p) in r.policies.iter().enumerate() {
            if !policies.contains_key(p) {
                let known: Vec<&str> = policies.keys().map(String::as_str).collect();
                bail!(
                    "{field}.policies[{j}]: no policy named `{p}` (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            }
        }
        if upstreams.is_empty() && r.policies.is_empty() {
            bail!("{field}: needs an `upstream`, `policies`, or both");
        }
        let tls = r
            .tls
            .map(|t| upstream_tls(t, &upstreams, &format!("{field}.tls"), base))
            .transpose()?;
        routes.push(RouteSettings {
            name,
            prefix,
            upstreams,
            balance,
            rewrite: r.rewrite,
            timeout: positive(&format!("{field}.timeout_ms"), r.timeout_ms)?
                .map_or(proxy.upstream_timeout, Duration::from_millis),
            tls,
            policies: r.policies,
        });
    }
    if routes.is_empty() {
        bail!("route: no routes defined (add a [[route]] table)");
    }

    let admin = AdminSettings {
        listen: match raw.admin.listen.as_deref() {
            Some("off") => None,
            other => {
                let addr = other.unwrap_or("127.0.0.1:9901");
                Some(addr.parse().map_err(|e| {
                    anyhow!("admin.listen: `{addr}` is not an address or \"off\" ({e})")
                })?)
            }
        },
    };
    let reload = WatchSettings {
        watch: raw.reload.watch.unwrap_or(true),
        interval: positive("reload.interval_ms", raw.reload.interval_ms)?
            .map_or(Duration::from_millis(200), Duration::from_millis),
    };
    let compile_cache = match raw.wasm.compile_cache.as_deref() {
        Some("off") => None,
        Some(dir) => Some(base.join(dir)),
        None => default_cache_dir(env),
    };
    let compile_cache_max_bytes = mib("wasm.compile_cache_max_mb", raw.wasm.compile_cache_max_mb)?
        .map_or(crate::wasm::DEFAULT_MAX_DISK_BYTES, |b| b as u64);
    Ok(Config {
        source: path.to_owned(),
        listen,
        server,
        tls,
        proxy,
        engine,
        kv,
        admin,
        reload,
        log,
        telemetry,
        compile_cache,
        compile_cache_max_bytes,
        routes,
        policies,
    })
}

fn listener_tls(raw: RawListenerTls, base: &Path) -> anyhow::Result<ServerTls> {
    let Some(cert) = raw.cert else {
        bail!("server.tls.cert: required (the certificate chain, PEM)");
    };
    let Some(key) = raw.key else {
        bail!("server.tls.key: required (the private key, PEM)");
    };
    Ok(ServerTls {
        cert: base.join(cert),
        key: base.join(key),
        client_ca: raw.client_ca.map(|p| base.join(p)),
    })
}

fn upstream_tls(
    raw: RawUpstreamTls,
    upstreams: &[Uri],
    field: &str,
    base: &Path,
) -> anyhow::Result<UpstreamTls> {
    // TLS settings that would never be used are a mistake worth reporting.
    if upstreams.is_empty() {
        bail!("{field}: the route has no upstream");
    }
    if !upstreams.iter().any(|u| u.scheme_str() == Some("https")) {
        bail!("{field}: the upstream is not https://, so TLS settings would not apply");
    }
    let client_cert = match (raw.client_cert, raw.client_key) {
        (Some(cert), Some(key)) => Some(ClientCert {
            cert: base.join(cert),
            key: base.join(key),
        }),
        (Some(_), None) => bail!("{field}.client_key: required with client_cert"),
        (None, Some(_)) => bail!("{field}.client_cert: required with client_key"),
        (None, None) => None,
    };
    Ok(UpstreamTls {
        ca: raw.ca.map(|p| base.join(p)),
        client_cert,
    })
}

fn retry_budget(raw: &RawProxy) -> anyhow::Result<RetryBudgetSettings> {
    let defaults = RetryBudgetSettings::default();
    let budget = RetryBudgetSettings {
        percent: raw.retry_budget_percent.unwrap_or(defaults.percent),
        min_per_sec: raw.retry_budget_min_per_sec.unwrap_or(defaults.min_per_sec),
    };
    if budget.percent > 100 {
        bail!(
            "proxy.retry_budget_percent: {} is above 100 (retries would outnumber requests)",
            budget.percent
        );
    }
    if budget.percent == 0 && budget.min_per_sec == 0 {
        bail!(
            "proxy.retry_budget_percent: 0 with retry_budget_min_per_sec = 0 allows no retry at all; \
             set `retries = 0` on the routes instead"
        );
    }
    Ok(budget)
}

/// A route's balancing, passive/active health and retry settings.
fn balance_settings(
    field: &str,
    balance: Option<&str>,
    retries: Option<u32>,
    health: Option<RawHealth>,
) -> anyhow::Result<BalanceSettings> {
    let defaults = BalanceSettings::default();
    let strategy = match balance {
        None | Some("round-robin") => Strategy::RoundRobin,
        Some("least-requests") => Strategy::LeastRequests,
        Some(other) => {
            bail!("{field}.balance: `{other}` is not \"round-robin\" or \"least-requests\"")
        }
    };
    let retries = retries.unwrap_or(defaults.retries);
    if retries > MAX_RETRIES {
        bail!("{field}.retries: {retries} is above the limit of {MAX_RETRIES}");
    }
    let Some(h) = health else {
        return Ok(BalanceSettings {
            strategy,
            retries,
            ..defaults
        });
    };
    let eject_after_failures = positive(
        &format!("{field}.health.eject_after_failures"),
        h.eject_after_failures,
    )?
    .unwrap_or(defaults.eject_after_failures);
    let eject = positive(&format!("{field}.health.eject_ms"), h.eject_ms)?
        .map_or(defaults.eject, Duration::from_millis);
    let max_eject = positive(&format!("{field}.health.max_eject_ms"), h.max_eject_ms)?
        .map_or(defaults.max_eject.max(eject), Duration::from_millis);
    if max_eject < eject {
        bail!(
            "{field}.health.max_eject_ms: {} ms is below eject_ms ({} ms)",
            max_eject.as_millis(),
            eject.as_millis()
        );
    }
    let health_check = match h.path {
        Some(path) => {
            if !path.starts_with('/') {
                bail!("{field}.health.path: `{path}` must start with `/`");
            }
            if path.parse::<http::uri::PathAndQuery>().is_err() {
                bail!("{field}.health.path: `{path}` is not a valid request path");
            }
            Some(HealthCheck {
                path,
                interval: positive(&format!("{field}.health.interval_ms"), h.interval_ms)?
                    .map_or(Duration::from_secs(5), Duration::from_millis),
                timeout: positive(&format!("{field}.health.timeout_ms"), h.timeout_ms)?
                    .map_or(Duration::from_secs(1), Duration::from_millis),
            })
        }
        None => {
            let unused = [
                ("interval_ms", h.interval_ms.is_some()),
                ("timeout_ms", h.timeout_ms.is_some()),
            ];
            if let Some((name, _)) = unused.iter().find(|(_, set)| *set) {
                bail!("{field}.health.{name}: only used with `path` (active health checks)");
            }
            None
        }
    };
    Ok(BalanceSettings {
        strategy,
        retries,
        eject_after_failures,
        eject,
        max_eject,
        health_check,
    })
}

/// Retries per request: a few cover a restart; more only add load.
const MAX_RETRIES: u32 = 10;

fn kv_settings(raw: RawKv) -> anyhow::Result<KvSettings> {
    let defaults = KvLimits::default();
    let limits = KvLimits {
        max_entries: positive("kv.max_entries", raw.max_entries)?.unwrap_or(defaults.max_entries),
        max_key_bytes: positive("kv.max_key_bytes", raw.max_key_bytes)?
            .unwrap_or(defaults.max_key_bytes),
        max_value_bytes: positive("kv.max_value_bytes", raw.max_value_bytes)?
            .unwrap_or(defaults.max_value_bytes),
    };
    let backend = match raw.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            let redis_only = [
                ("url", raw.url.is_some()),
                ("timeout_ms", raw.timeout_ms.is_some()),
                ("key_prefix", raw.key_prefix.is_some()),
            ];
            if let Some((field, _)) = redis_only.iter().find(|(_, set)| *set) {
                bail!("kv.{field}: only used with backend = \"redis\"");
            }
            KvBackend::Memory
        }
        "redis" => {
            if raw.max_entries.is_some() {
                bail!(
                    "kv.max_entries: bounds the memory backend only; bound Redis with its own `maxmemory`"
                );
            }
            let defaults = RedisSettings::default();
            let url = raw.url.unwrap_or(defaults.url);
            check_url(&url).map_err(|e| anyhow!("kv.url: `{url}` is not a Redis URL ({e})"))?;
            KvBackend::Redis(RedisSettings {
                url,
                timeout: positive("kv.timeout_ms", raw.timeout_ms)?
                    .map_or(defaults.timeout, Duration::from_millis),
                key_prefix: raw.key_prefix.unwrap_or(defaults.key_prefix),
            })
        }
        other => bail!("kv.backend: `{other}` is not \"memory\" or \"redis\""),
    };
    Ok(KvSettings { limits, backend })
}

/// The compile cache's folder when the config names none (shared with
/// `sidecar policy …`, hence in the runtime).
fn default_cache_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    sidecar_runtime::wasm::default_cache_dir(env)
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

fn positive<T: PartialEq + Default + Copy>(field: &str, v: Option<T>) -> anyhow::Result<Option<T>> {
    match v {
        Some(x) if x == T::default() => bail!("{field}: must be greater than 0"),
        other => Ok(other),
    }
}

/// [`positive`] MiB as bytes, refusing what would overflow: `max_memory_mb =
/// 17592186044416` used to wrap to 0 bytes (and panic with overflow checks).
fn mib(field: &str, v: Option<usize>) -> anyhow::Result<Option<usize>> {
    positive(field, v)?
        .map(|mb| {
            mb.checked_mul(MB)
                .ok_or_else(|| anyhow!("{field}: {mb} MiB is more than this machine can address"))
        })
        .transpose()
}

fn parse_upstream(s: &str) -> anyhow::Result<Uri> {
    parse_upstream_like(s, false)
}

/// An `http://host:port` URL, with a path when `with_path` (a collector's
/// endpoint), without one otherwise (an upstream: routes rewrite paths).
fn parse_upstream_like(s: &str, with_path: bool) -> anyhow::Result<Uri> {
    let uri: Uri = s.parse().map_err(|e| anyhow!("`{s}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        // Cleartext HTTP/2 (prior knowledge), Traefik's spelling.
        Some("h2c") if !with_path => {}
        Some(other) if with_path => {
            bail!("`{s}`: scheme `{other}` is not supported (use http or https)")
        }
        Some(other) => {
            bail!("`{s}`: scheme `{other}` is not supported (use http, https or h2c)")
        }
        None => bail!("`{s}` needs a scheme, like http://127.0.0.1:3002"),
    }
    if uri.authority().is_none() {
        bail!("`{s}` needs a host");
    }
    if !with_path && (!matches!(uri.path(), "" | "/") || uri.query().is_some()) {
        bail!("`{s}`: give only scheme://host:port; use `rewrite` for a path");
    }
    Ok(uri)
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of a policy's
/// config, so secrets can come from the environment instead of the file.
/// Files a policy's config reads (`${file:keys/jwks.json}`), relative to the
/// config file's folder.
struct FileRefs<'a> {
    base: &'a Path,
    read: Vec<PathBuf>,
}

/// The most a `${file:...}` may bring into a config.
const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

impl FileRefs<'_> {
    fn read(&mut self, name: &str) -> anyhow::Result<String> {
        let path = self.base.join(name);
        self.read.push(path.clone());
        let len = std::fs::metadata(&path)
            .with_context(|| format!("`${{file:{name}}}`: cannot read {}", path.display()))?
            .len();
        if len > MAX_CONFIG_FILE_BYTES {
            bail!(
                "`${{file:{name}}}`: {} is {len} bytes, more than the {MAX_CONFIG_FILE_BYTES} a config may include",
                path.display()
            );
        }
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "`${{file:{name}}}`: cannot read {} as UTF-8 text",
                path.display()
            )
        })
    }
}

fn expand_env(
    v: &mut serde_json::Value,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
    files: &mut FileRefs<'_>,
) -> anyhow::Result<()> {
    match v {
        serde_json::Value::String(s) => {
            *s = expand(s, env, Some(files)).map_err(|e| anyhow!("{field}: {e:#}"))?;
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{field}[{i}]"), env, files)?;
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                expand_env(item, &format!("{field}.{k}"), env, files)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    expand(s, env, None)
}

/// `${VAR}`, `${VAR:-default}` from `env`, and with `files`, `${file:PATH}`
/// (the file's text, not expanded further).
fn expand(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    mut files: Option<&mut FileRefs<'_>>,
) -> anyhow::Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow!("unclosed `${{` in `{s}`"))?;
        let expr = &after[..end];
        if let Some(name) = expr.strip_prefix("file:") {
            let Some(files) = files.as_deref_mut() else {
                bail!("`${{file:...}}` is read in a policy's `config` only");
            };
            out.push_str(&files.read(name)?);
            rest = &after[end + 1..];
            continue;
        }
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => bail!(
                "environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"
            ),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
