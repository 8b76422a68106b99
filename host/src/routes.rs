//! Routes: settings + runtime → what serves requests, each route with its
//! upstreams and its chain of policies; the prefix rule.
//!
//! A [`Gateway`] is immutable once built; a new config means building a new
//! one off to the side and swapping it in whole, so a request always runs on
//! one consistent set of routes and policies.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use http::Uri;

use crate::capabilities::OutboundGrant;
use crate::chain::Chain;
use crate::tls::UpstreamTls;
use crate::upstream::{
    BalanceSettings, RetryBudgetSettings, UpstreamClient, Upstreams, UpstreamsView,
};
use crate::wasm::{
    CompileSource, FailureMode, Instances, NotAComponent, Policy, PolicyLimits, PolicySpec,
    Runtime, sha256_hex,
};

/// What a [`Gateway`] is built from: one config's routes, policies and
/// `[proxy]` limits.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The config file, named in every message.
    pub source: PathBuf,
    pub proxy: ProxySettings,
    pub routes: Vec<RouteSettings>,
    pub policies: BTreeMap<String, PolicySettings>,
}

/// `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub name: String,
    /// Path prefix, matched on whole segments; the longest match wins.
    pub prefix: String,
    /// `scheme://authority` of each endpoint of the service (`upstream` or
    /// `upstreams`); empty for routes answered by policies alone (a request
    /// that gets past them is a 404).
    pub upstreams: Vec<Uri>,
    /// Balancing, health and retries across `upstreams`.
    pub balance: BalanceSettings,
    /// Replaces `prefix` in the forwarded path (`/user-service/login` with
    /// rewrite `/` → `/login`). `None` forwards the path unchanged.
    pub rewrite: Option<String>,
    pub timeout: Duration,
    /// `[route.tls]`; `https://` upstreams without it trust the system roots.
    pub tls: Option<UpstreamTls>,
    /// Policy names, in request-hook order.
    pub policies: Vec<String>,
}

/// `[policy.NAME]`.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub wasm: PathBuf,
    pub failure: FailureMode,
    pub limits: PolicyLimits,
    pub instances: Instances,
    /// The policy's `config` table as a JSON object, env references expanded.
    pub config_json: String,
    /// If set, the file must have this sha256 (lower-case hex) to load.
    pub sha256: Option<String>,
    /// `allow_outbound` and the `outbound_*` bounds.
    pub outbound: OutboundGrant,
    /// Files its config reads with `${file:...}`: a change reloads it.
    pub files: Vec<PathBuf>,
}

/// Limits of the HTTP side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// On a route with a 0.1 policy (bodies buffered whole), larger request
    /// bodies are refused with 413 before any policy runs.
    pub max_body_bytes: usize,
    /// On a route with a 0.1 policy, larger upstream responses become 502.
    pub max_response_bytes: usize,
    /// The most of one body a 0.2 policy may have buffered; beyond it the
    /// policy is told the body is too large, and it streams on.
    pub max_policy_body_bytes: usize,
    /// Default upstream timeout (to the response head; the body then
    /// streams without one), per route overridable.
    pub upstream_timeout: Duration,
    /// How many retries each route may make (see [`crate::upstream`]).
    pub retry_budget: RetryBudgetSettings,
}

impl ProxySettings {
    /// What the chain may buffer for policies.
    pub fn body_limits(&self) -> crate::message::BodyLimits {
        crate::message::BodyLimits {
            policy_max: self.max_policy_body_bytes,
            v01_request: self.max_body_bytes,
            v01_response: self.max_response_bytes,
            idle: self.upstream_timeout,
        }
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_response_bytes: 10 * 1024 * 1024,
            max_policy_body_bytes: 16 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(30),
            retry_budget: RetryBudgetSettings::default(),
        }
    }
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub prefix: String,
    /// The service's endpoints; `None` when policies alone answer.
    pub upstreams: Option<Arc<Upstreams>>,
    pub rewrite: Option<String>,
    pub timeout: Duration,
    pub chain: Chain,
    /// The route's own client when it has `[route.tls]` (its CA, its client
    /// certificate); `None` shares the sidecar's client.
    pub client: Option<UpstreamClient>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        self.prefix == "/" || under(&self.prefix, path).is_some()
    }
}

/// The prefix rule, the one place it is written: `path` is under `prefix`
/// on a segment boundary (`/api` matches `/api`, `/api/x`, `/api?q`, not
/// `/apix`); returns what follows the prefix.
fn under<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (prefix == "/" || rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
        .then_some(rest)
}

/// `/user-service/login?x=1` with prefix `/user-service` and rewrite `/`
/// becomes `/login?x=1`. A path a policy moved outside the prefix is sent as is.
pub(crate) fn rewrite_path(path: &str, prefix: &str, rewrite: Option<&str>) -> String {
    let Some(rewrite) = rewrite else {
        return path.to_owned();
    };
    let Some(rest) = under(prefix, path) else {
        return path.to_owned();
    };
    let base = rewrite.trim_end_matches('/');
    if prefix == "/" {
        return format!("{base}/{rest}");
    }
    match rest.chars().next() {
        Some('/') => format!("{base}{rest}"),
        _ if base.is_empty() => format!("/{rest}"),
        _ => format!("{base}{rest}"),
    }
}

/// What the admin view shows of one loaded policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyInfo {
    pub name: String,
    pub file: PathBuf,
    pub sha256: String,
    /// The contract the component exports, e.g. `sidecar:policy@0.1.0`.
    pub contract: String,
    pub failure: FailureMode,
    /// Unix seconds.
    pub loaded_at: u64,
    /// The hooks it asked for besides the request hook.
    pub hooks: crate::wasm::Hooks,
    /// Whether `configure` ran once (`snapshot`) or runs per instance.
    pub configured: crate::wasm::Configured,
    /// `compiled`, or reused from the `memory` or `disk` compile cache.
    pub compiled_from: &'static str,
}

/// A build that gave way to a newer one (a reload asked for while it ran):
/// not a failure.
#[derive(Debug, thiserror::Error)]
#[error("superseded by a newer reload")]
pub struct Superseded;

/// All routes of one config, longest prefix first.
#[derive(Debug)]
pub struct Gateway {
    pub routes: Vec<Route>,
    pub proxy: ProxySettings,
    /// Loaded policies, by name.
    pub policies: Vec<PolicyInfo>,
}

impl Gateway {
    /// Reads and checks each policy file once (sha256 pin), compiles it (or
    /// takes it from the compile cache), loads each policy once (validating
    /// its config), and assembles the routes. Upstream endpoints that
    /// `previous` (the gateway a reload replaces) had on the same route keep
    /// their health and counts.
    ///
    /// # Errors
    /// A message naming the config file, the policy and the cause.
    pub async fn build(
        config: &GatewaySettings,
        runtime: &Arc<Runtime>,
        previous: Option<&Self>,
    ) -> anyhow::Result<Self> {
        Self::build_unless(config, runtime, previous, &|| false).await
    }

    /// [`Gateway::build`] on a thread of its own: compiling and configuring
    /// large policies never holds up the threads that serve requests. Stops early (an error) once `superseded` says a
    /// newer build has been asked for: checked before each policy.
    ///
    /// # Errors
    /// As [`Gateway::build`]; also if the thread cannot start or dies.
    pub async fn build_apart(
        config: GatewaySettings,
        runtime: Arc<Runtime>,
        previous: Option<Arc<Self>>,
        superseded: impl Fn() -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("policy-load".into())
            .spawn(move || {
                let built = handle.block_on(Self::build_unless(
                    &config,
                    &runtime,
                    previous.as_deref(),
                    &superseded,
                ));
                let _ = tx.send(built);
            })
            .context("starting the policy-load thread")?;
        rx.await
            .map_err(|_| anyhow::anyhow!("loading the policies failed: the load thread panicked"))?
    }

    async fn build_unless(
        config: &GatewaySettings,
        runtime: &Arc<Runtime>,
        previous: Option<&Self>,
        superseded: &(dyn Fn() -> bool + Send + Sync),
    ) -> anyhow::Result<Self> {
        let file = config.source.display();
        let mut loaded: HashMap<&str, Arc<Policy>> = HashMap::new();
        let mut infos = Vec::with_capacity(config.policies.len());
        for (name, p) in &config.policies {
            if superseded() {
                return Err(anyhow::Error::new(Superseded)
                    .context(format!("{file}: stopped before policy.{name}")));
            }
            let field = format!("{file}: policy.{name}.wasm");
            let bytes = std::fs::read(&p.wasm)
                .with_context(|| format!("{field}: cannot read {}", p.wasm.display()))?;
            let sha256 = sha256_hex(&bytes);
            if let Some(pinned) = p.sha256.as_ref().filter(|pin| **pin != sha256) {
                bail!(
                    "{field}: {} has sha256 {sha256}, but policy.{name}.sha256 pins {pinned}",
                    p.wasm.display()
                );
            }
            let spec = PolicySpec {
                name: name.clone(),
                config_json: p.config_json.clone(),
                failure: p.failure,
                limits: p.limits,
                instances: p.instances,
                outbound: Arc::new(p.outbound.clone()),
            };
            let (policy, source) = runtime.load_wasm(spec, &bytes).await.map_err(|e| {
                match e.downcast::<NotAComponent>() {
                    Ok(NotAComponent(why)) => why.context(format!(
                        "{field}: {} is not a valid WebAssembly component",
                        p.wasm.display()
                    )),
                    Err(e) => e.context(format!("{file}: policy.{name} ({})", p.wasm.display())),
                }
            })?;
            if let Some(why) = policy.snapshot_skipped() {
                tracing::warn!(policy = %name, %why, "configure runs per instance: the component could not be snapshotted");
            }
            let contract = policy.contract().name().to_owned();
            infos.push(PolicyInfo {
                name: name.clone(),
                file: p.wasm.clone(),
                sha256,
                contract,
                failure: p.failure,
                loaded_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                hooks: policy.hooks(),
                configured: policy.configured(),
                compiled_from: match source {
                    CompileSource::Memory => "memory",
                    CompileSource::Disk => "disk",
                    CompileSource::Compiled => "compiled",
                },
            });
            loaded.insert(name, policy);
        }
        let mut routes: Vec<Route> = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            // Re-read on every reload, so a rotated CA or client
            // certificate applies with the next config reload.
            let client = r
                .tls
                .as_ref()
                .map(|tls| {
                    crate::tls::client_config(tls, &format!("{file}: route[{i}].tls"))
                        .map(UpstreamClient::with_tls)
                })
                .transpose()?;
            routes.push(Route {
                name: r.name.as_str().into(),
                prefix: r.prefix.clone(),
                upstreams: (!r.upstreams.is_empty()).then(|| {
                    let before = previous
                        .and_then(|g| g.routes.iter().find(|old| *old.name == *r.name))
                        .and_then(|old| old.upstreams.as_deref());
                    Arc::new(Upstreams::new(
                        r.name.as_str().into(),
                        &r.upstreams,
                        r.balance.clone(),
                        config.proxy.retry_budget,
                        before,
                    ))
                }),
                rewrite: r.rewrite.clone(),
                timeout: r.timeout,
                // Validation guarantees every name is defined.
                chain: Chain::new(
                    r.policies
                        .iter()
                        .map(|n| loaded[n.as_str()].clone())
                        .collect(),
                ),
                client,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self {
            routes,
            proxy: config.proxy,
            policies: infos,
        })
    }

    /// Every route's endpoints and their state, in route order.
    pub fn upstreams(&self) -> Vec<UpstreamsView> {
        self.routes
            .iter()
            .filter_map(|r| r.upstreams.as_ref().map(|u| u.view()))
            .collect()
    }

    /// The route for `path`: the longest matching prefix.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_prefix_on_segment_boundaries() {
        let r = |p| rewrite_path(p, "/user-service", Some("/"));
        assert_eq!(r("/user-service/login"), "/login");
        assert_eq!(r("/user-service/login?x=1"), "/login?x=1");
        assert_eq!(r("/user-service"), "/");
        assert_eq!(r("/user-service?q"), "/?q");
        assert_eq!(rewrite_path("/a/b", "/a", Some("/api")), "/api/b");
        assert_eq!(rewrite_path("/a/b", "/a", None), "/a/b");
        assert_eq!(rewrite_path("/x/b", "/", Some("/api")), "/api/x/b");
        assert_eq!(rewrite_path("/elsewhere", "/a", Some("/api")), "/elsewhere");
    }
}
