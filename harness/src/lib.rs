//! Unit-test a policy component in isolation: no sidecar, no server, no
//! sleeping. The policy runs on `sidecar-runtime`, the very code that runs it
//! in the sidecar (same linker, same fresh instance per request, same
//! deadline and memory cap), with host services the test controls: a
//! [`ManualClock`], an in-memory store and captured log lines.
//!
//! ```no_run
//! use policy_harness::{Harness, get, DecisionExt};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Builds this crate for wasm32-wasip2 (once per test binary) and loads it.
//! let harness = Harness::build_crate(env!("CARGO_MANIFEST_DIR"))?;
//! let policy = harness.configure(json!({ "secret": "s3cret" }))?;
//! let decision = policy.on_request(get("/private"))?;
//! assert_eq!(decision.responded().map(|r| r.status), Some(401));
//! # Ok(()) }
//! ```
//!
//! Layout: [`Harness`] (loading, clock, store, logs) and [`Configured`]
//! (calling hooks) here; request/response builders and assertion helpers in
//! [`builders`] and [`ext`]; building a crate's component in [`cargo`];
//! with the `cli` feature, the `sidecar policy …` commands in `cli`.

pub mod builders;
pub mod cargo;
#[cfg(feature = "cli")]
pub mod cli;
pub mod ext;
mod stubs;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sidecar_runtime::capabilities::{Clock, KvLimits, LogRecord, Outbound, Services};
use sidecar_runtime::message::{Completion, Exchange, Phase};
use sidecar_runtime::wasm::{
    Component, EngineSettings, FailureMode, Policy, PolicyInstance, PolicySpec, Runtime,
    SharedEngine, Verdict,
};

pub use self::stubs::Stub;
use self::stubs::Stubs;
pub use self::types::{Decision, Header, Request, Response};
pub use sidecar_runtime::capabilities::{
    FieldValue, KvError, Level, ManualClock, MemoryKv, MemorySink, Origin, OutboundGrant,
};
pub use sidecar_runtime::message::BodyLimits;
pub use sidecar_runtime::wasm::{
    Configured as ConfiguredBy, Contract, HookError, Hooks, MessageError, PolicyError, PolicyLimits,
};

pub use self::builders::{
    RequestBuilder, ResponseBuilder, delete, get, post, put, request, response,
};
pub use self::ext::{DecisionExt, HeadersExt, LogsExt, ResponseExt};

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The file or bytes are not a policy for this contract (not a
    /// component, another world, an import the sidecar does not provide).
    #[error("cannot load the policy: {0:#}")]
    Load(anyhow::Error),
    /// `configure` answered `err(message)`.
    #[error("the policy refused its config: {0}")]
    ConfigRefused(String),
    /// A hook trapped, timed out or hit the memory cap.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Building the crate's component failed.
    #[error("cannot build the component: {0:#}")]
    Build(anyhow::Error),
}

/// A loaded component and the host services around it.
pub struct Harness {
    /// Drives the async hooks; each harness call blocks on it, so tests are
    /// plain `#[test]` functions.
    rt: tokio::runtime::Runtime,
    runtime: Arc<Runtime>,
    component: Component,
    /// The component's bytes: a 0.2 policy is snapshotted from them.
    wasm: Arc<Vec<u8>>,
    contract: Contract,
    clock: Arc<ManualClock>,
    kv: Arc<MemoryKv>,
    logs: Arc<MemorySink>,
    name: String,
    limits: PolicyLimits,
    body_limits: BodyLimits,
    outbound: OutboundGrant,
    stubs: Arc<Stubs>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The clock starts here (2024-01-01T00:00:00Z), so tests are repeatable.
pub const START_MICROS: u64 = 1_704_067_200_000_000;

impl Harness {
    /// Loads a component file.
    ///
    /// # Errors
    /// [`HarnessError::Load`] naming the file and the reason.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let bytes = std::fs::read(path.as_ref()).map_err(|e| {
            HarnessError::Load(anyhow::anyhow!(
                "cannot read {}: {e}",
                path.as_ref().display()
            ))
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            HarnessError::Load(inner) => {
                HarnessError::Load(inner.context(path.as_ref().display().to_string()))
            }
            other => other,
        })
    }

    /// Builds the policy crate at `manifest_dir` for `wasm32-wasip2` (once
    /// per test process) and loads the component. In a policy's own tests:
    /// `Harness::build_crate(env!("CARGO_MANIFEST_DIR"))`.
    ///
    /// # Errors
    /// [`HarnessError::Build`] with cargo's message, or as [`Harness::load`].
    pub fn build_crate(manifest_dir: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let wasm = cargo::build_component(manifest_dir.as_ref()).map_err(HarnessError::Build)?;
        Self::load(wasm)
    }

    /// Loads a component from bytes.
    ///
    /// # Errors
    /// [`HarnessError::Load`] if the bytes are not a valid component.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HarnessError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HarnessError::Load(e.into()))?;
        let clock = Arc::new(ManualClock::new(START_MICROS));
        let kv = Arc::new(MemoryKv::new(clock.clone(), KvLimits::default()));
        let logs = Arc::new(MemorySink::default());
        let stubs = Arc::new(Stubs::default());
        let services = Services {
            clock: clock.clone(),
            kv: kv.clone(),
            log: logs.clone(),
            outbound: Outbound::new(stubs.clone(), clock.clone()),
        };
        let runtime = match COMPILE_CACHE.get() {
            Some(dir) => Runtime::with_engine_and_cache(shared_engine()?, services, dir.clone()),
            None => Runtime::with_engine(shared_engine()?, services),
        }
        .map_err(HarnessError::Load)?;
        let component = compiled(&runtime, bytes)?;
        let contract = runtime.validate(&component).map_err(HarnessError::Load)?;
        Ok(Self {
            rt,
            runtime,
            component,
            wasm: Arc::new(bytes.to_vec()),
            contract,
            clock,
            kv,
            logs,
            name: "policy".into(),
            limits: PolicyLimits::default(),
            body_limits: BodyLimits::default(),
            outbound: OutboundGrant::default(),
            stubs,
        })
    }

    /// Grants the policy `outbound` calls to these origins, as
    /// `allow_outbound` in the sidecar's config does (default: none). They
    /// reach the stubs ([`Harness::stub`]), never the network.
    ///
    /// # Panics
    /// If an origin is not `scheme://host[:port]`.
    #[must_use]
    pub fn allow_outbound(mut self, origins: &[&str]) -> Self {
        self.outbound.allow = origins
            .iter()
            .map(|o| o.parse().unwrap_or_else(|e| panic!("allow_outbound: {e}")))
            .collect();
        self
    }

    /// The whole `outbound` grant: origins and bounds (calls per request,
    /// timeout, response size).
    #[must_use]
    pub fn with_outbound(mut self, grant: OutboundGrant) -> Self {
        self.outbound = grant;
        self
    }

    /// From now on, `method url` answers `reply` (replacing an earlier
    /// stub). A call to a granted URL without a stub fails (`failed`).
    pub fn stub(&self, method: &str, url: &str, reply: Stub) {
        self.stubs.set(method, url, reply);
    }

    /// Every call that reached the stubs, as `GET https://host/path`, in
    /// order (calls the host's cache answered, or refused, are not here).
    pub fn outbound_requests(&self) -> Vec<String> {
        self.stubs.requests()
    }

    /// What the sidecar lets a policy buffer (default: the sidecar's
    /// defaults): a body read beyond `policy_max` is too large.
    #[must_use]
    pub fn with_body_limits(mut self, limits: BodyLimits) -> Self {
        self.body_limits = limits;
        self
    }

    /// The contract the component was built against.
    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// The policy's name: its store namespace and its tag in log lines
    /// (default `policy`).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The deadline and memory cap to run under (default: the sidecar's
    /// defaults, 50 ms and 32 MiB).
    #[must_use]
    pub fn with_limits(mut self, limits: PolicyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Loads the policy with `config` (a JSON object, as the sidecar passes
    /// a policy's `config` table).
    ///
    /// # Errors
    /// [`HarnessError::ConfigRefused`] with the policy's message, or
    /// [`HarnessError::Load`] if the component is not a policy for this
    /// contract.
    pub fn configure(&self, config: serde_json::Value) -> Result<Configured<'_>, HarnessError> {
        let spec = PolicySpec {
            name: self.name.clone(),
            config_json: config.to_string(),
            failure: FailureMode::Closed,
            limits: self.limits,
            instances: Default::default(),
            outbound: Arc::new(self.outbound.clone()),
        };
        let policy = self
            .rt
            .block_on(self.runtime.load(spec, &self.component, &self.wasm))
            .map_err(|e| match e.downcast::<PolicyError>() {
                Ok(PolicyError::ConfigRefused { message, .. }) => {
                    HarnessError::ConfigRefused(message)
                }
                Ok(other) => HarnessError::Policy(other),
                Err(e) => HarnessError::Load(e),
            })?;
        Ok(Configured {
            harness: self,
            policy,
        })
    }

    /// The message `config` is refused with, for tests of config checks.
    ///
    /// # Panics
    /// If the config is accepted, or the policy fails to load otherwise.
    pub fn refusal(&self, config: serde_json::Value) -> String {
        match self.configure(config.clone()) {
            Err(HarnessError::ConfigRefused(message)) => message,
            Err(other) => panic!("{config}: expected a refusal, got {other}"),
            Ok(_) => panic!("{config}: the config was accepted"),
        }
    }

    /// The clock policies read (and the store's TTLs follow).
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Moves the clock forward: expires store entries without sleeping.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The value the policy stored under `key`.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(&self.name, key)
    }

    /// Preloads the policy's store.
    ///
    /// # Panics
    /// If the store refuses the entry (over its size limits).
    pub fn kv_set(&self, key: &str, value: impl Into<Vec<u8>>, ttl: Option<Duration>) {
        self.try_kv_set(key, value, ttl)
            .expect("kv_set: entry refused");
    }

    /// Preloads the policy's store, or says why the store refused the entry.
    ///
    /// # Errors
    /// The key or value is over the store's size limits, or the store is full.
    pub fn try_kv_set(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.kv.set(&self.name, key, value.into(), ttl)
    }

    /// Live entries in the store, all namespaces.
    pub fn kv_len(&self) -> usize {
        self.kv.len()
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.logs.records()
    }

    /// Every line logged so far, clearing them.
    pub fn take_logs(&self) -> Vec<LogRecord> {
        self.logs.take()
    }

    /// Microseconds on the clock now.
    pub fn now_micros(&self) -> u64 {
        self.clock.now_micros()
    }
}

/// A configured policy: each call gets a fresh instance, as each request does
/// in the sidecar.
pub struct Configured<'h> {
    harness: &'h Harness,
    policy: Arc<Policy>,
}

impl std::fmt::Debug for Configured<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What one request did to a policy, as in the sidecar's chain.
#[derive(Debug, Clone)]
pub struct RoundTrip {
    /// What the request hook decided.
    pub decision: Decision,
    /// The request as it would go upstream (`None` if the policy answered).
    pub forwarded: Option<Request>,
    /// The response after the response hook (if the policy asked for it):
    /// the upstream's when the policy continued, its own answer when it
    /// responded.
    pub response: Response,
    /// What the completion hook was told, if the policy asked for it.
    pub completion: Option<Completion>,
}

impl Configured<'_> {
    /// The hooks the policy asked for besides the request hook.
    pub fn hooks(&self) -> Hooks {
        self.policy.hooks()
    }

    /// Whether `configure` ran once (snapshot) or runs per instance.
    pub fn configured_by(&self) -> ConfiguredBy {
        self.policy.configured()
    }

    /// Calls the request hook on a fresh instance.
    ///
    /// # Errors
    /// [`HookError::Policy`] if the hook traps, times out or hits the memory
    /// cap; [`HookError::Message`] if its answer is not valid HTTP.
    ///
    /// # Panics
    /// If `req` is not a valid HTTP request (a mistake in the test).
    pub fn on_request(&self, req: impl Into<Request>) -> Result<Decision, HookError> {
        let req = req.into();
        self.harness.rt.block_on(async {
            let (mut instance, mut ex) = self.start(&req).await?;
            let verdict = instance.on_request(&mut ex).await?;
            Ok(decision(verdict, &ex, &req))
        })
    }

    /// Runs a whole request through the policy, as the sidecar does: the
    /// request hook, then (unless it answered) `upstream` as the upstream's
    /// response, then the response hook and the completion hook on the same
    /// instance, each if the policy asked for it.
    ///
    /// # Errors
    /// As [`Configured::on_request`].
    ///
    /// # Panics
    /// If `req` or `upstream` is not valid HTTP (a mistake in the test).
    pub fn round_trip(
        &self,
        req: impl Into<Request>,
        upstream: impl Into<Response>,
    ) -> Result<RoundTrip, HookError> {
        let req = req.into();
        let upstream = upstream.into();
        self.harness.rt.block_on(async {
            let (mut instance, mut ex) = self.start(&req).await?;
            let verdict = instance.on_request(&mut ex).await?;
            let decision = decision(verdict, &ex, &req);
            let forwarded = match &decision {
                Decision::Respond(answer) => {
                    ex.response = Some(types::upstream(answer).expect("checked by the runtime"));
                    None
                }
                Decision::Continue(_) => {
                    ex.response =
                        Some(types::upstream(&upstream).unwrap_or_else(|e| panic!("{e:#}")));
                    Some(types::request_of(&ex, &req))
                }
            };
            let hooks = self.policy.hooks();
            ex.phase = Phase::Response;
            if hooks.on_response {
                instance.on_response(&mut ex).await?;
            }
            let response = types::response_of(ex.response.as_ref().expect("set above"));
            let completion = if hooks.on_complete {
                let info = Completion {
                    status: response.status,
                    request_body_bytes: req.body.len() as u64,
                    response_body_bytes: response.body.len() as u64,
                    duration: Duration::ZERO,
                    complete: true,
                    error: None,
                };
                ex.phase = Phase::Complete;
                instance.on_complete(&mut ex, &info).await?;
                Some(info)
            } else {
                None
            };
            Ok(RoundTrip {
                decision,
                forwarded,
                response,
                completion,
            })
        })
    }

    /// A fresh instance and the exchange for `req`.
    async fn start(&self, req: &Request) -> Result<(PolicyInstance, Exchange), HookError> {
        let ex = types::exchange(req, self.harness.body_limits).unwrap_or_else(|e| panic!("{e:#}"));
        let instance = self
            .policy
            .instantiate(&ex.request.route, &ex.request.request_id)
            .await?;
        Ok((instance, ex))
    }

    /// The harness this policy runs in (clock, store, logs).
    pub fn harness(&self) -> &Harness {
        self.harness
    }
}

/// The request hook's verdict as a test sees it.
fn decision(verdict: Verdict, ex: &Exchange, original: &Request) -> Decision {
    match verdict {
        Verdict::Respond(answer) => Decision::Respond(types::response_of(&answer)),
        Verdict::Continue => {
            let now = types::request_of(ex, original);
            Decision::Continue((now != *original).then_some(now))
        }
    }
}

/// One engine per test process: every harness shares it and its compiled
/// components (compiling is the slow part, especially in a debug build).
fn shared_engine() -> Result<Arc<SharedEngine>, HarnessError> {
    static ENGINE: OnceLock<Arc<SharedEngine>> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    let settings = EngineSettings {
        max_instances: 64,
        ..EngineSettings::default()
    };
    let engine = SharedEngine::new(settings).map_err(HarnessError::Load)?;
    Ok(ENGINE.get_or_init(|| engine).clone())
}

/// The compile cache directory set by [`use_compile_cache`].
static COMPILE_CACHE: OnceLock<PathBuf> = OnceLock::new();

/// Keeps compiled components and configured snapshots in `dir` (the
/// sidecar's compile cache), so that loading an unchanged policy again, in
/// another process, compiles nothing: `sidecar policy check|call|test` use
/// it. Set it before the first load; a later call changes nothing.
pub fn use_compile_cache(dir: PathBuf) {
    let _ = COMPILE_CACHE.set(dir);
}

/// Compiles `bytes` once per process, keyed by the bytes themselves (and
/// across processes through [`use_compile_cache`]).
fn compiled(runtime: &Runtime, bytes: &[u8]) -> Result<Component, HarnessError> {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, Component>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Held while compiling: tests loading the same component wait for the
    // first compile instead of repeating it.
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(bytes) {
        return Ok(c.clone());
    }
    let component = if COMPILE_CACHE.get().is_some() {
        runtime.compile_cached(bytes).map(|(c, _)| c)
    } else {
        runtime.compile(bytes)
    }
    .map_err(HarnessError::Load)?;
    cache.insert(bytes.to_vec(), component.clone());
    Ok(component)
}

#[cfg(test)]
mod tests;
