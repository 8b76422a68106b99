//! A loaded policy ([`Policy`]) and its per-request instance ([`PolicyInstance`]).
//!
//! A policy is one of two kinds, told apart by what its component exports:
//! contract 0.2 (the message stays on the host, see [`super::v02`]) or 0.1
//! (records copied in and out, see [`super::v01`]). Everything else — the
//! store, the limits, failure classification, reuse — is the same for both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Component;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::cache::Keep;
use super::state::HostState;
use super::{CompileSource, EPOCH_TICK, Runtime, snapshot, v01, v02};
use crate::bindings;
use crate::capabilities::kv::KvQuotaExceeded;
use crate::capabilities::{Caller, OutboundGrant};
use crate::message::{BodyError, Completion, Exchange, Response};

/// What happens to a request when its policy fails (traps, times out, hits
/// its memory cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// The request is answered 503: a broken auth policy must not let
    /// everyone in.
    #[default]
    Closed,
    /// The policy is skipped for this request, as if it were not in the chain.
    Open,
}

/// Whether a request gets a fresh instance or may reuse one that served
/// earlier requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    /// A new instance per request: nothing a policy keeps in its globals or
    /// its heap can reach another request. The default.
    #[default]
    Fresh,
    /// Instances are kept after a request and reused, already configured,
    /// for up to [`REUSE_MAX_USES`] requests. Several times faster, but the
    /// policy's globals and heap carry over from one request (and user) to
    /// the next: only for policies written to keep no per-request state.
    /// An instance that failed in any way is never reused.
    Reuse,
}

/// Requests one reused instance serves before it is replaced, so a slow
/// leak or a fragmented heap in a policy cannot grow without bound.
pub const REUSE_MAX_USES: u32 = 1_000;
/// Idle instances kept per policy (the rest are dropped).
const REUSE_MAX_IDLE: usize = 64;

/// Limits applied to every call into one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Wall time one hook call may take before it is interrupted.
    pub deadline: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// `kv` calls one request may make into this policy's store (all hooks
    /// together); one more traps the instance.
    pub kv_ops: u32,
    /// Key and value bytes one request may move through `kv` (read and
    /// written, all hooks together); more traps the instance.
    pub kv_bytes: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            memory_bytes: 32 * 1024 * 1024,
            // Ample for a cache (a lookup and a store of a 1 MiB body per
            // request), and a hard stop for a policy looping on the store.
            kv_ops: 100,
            kv_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Everything needed to load a policy, besides its component.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// The policy's name: its key-value namespace and its tag in logs.
    pub name: String,
    /// The config handed to `configure`, a JSON object.
    pub config_json: String,
    pub failure: FailureMode,
    pub limits: PolicyLimits,
    pub instances: Instances,
    /// What it may reach with `outbound` (default: nothing).
    pub outbound: Arc<OutboundGrant>,
}

/// Why a call into a policy failed. The detail is for logs, never clients.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy `{policy}` exceeded its {deadline:?} deadline")]
    TimedOut {
        policy: Arc<str>,
        deadline: Duration,
    },
    #[error("policy `{policy}` exceeded its memory cap of {limit} bytes")]
    MemoryCap { policy: Arc<str>, limit: usize },
    #[error("policy `{policy}` exceeded its key-value quota: {detail}")]
    KvQuota { policy: Arc<str>, detail: String },
    #[error("policy `{policy}` trapped: {detail}")]
    Trapped { policy: Arc<str>, detail: String },
    #[error("policy `{policy}` refused its config: {message}")]
    ConfigRefused { policy: Arc<str>, message: String },
    #[error("policy `{policy}` could not be instantiated: {detail}")]
    Unavailable { policy: Arc<str>, detail: String },
}

/// The contract a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Contract {
    #[serde(rename = "sidecar:policy@0.1.0")]
    V01,
    /// 0.2.0 or 0.2.1 (the same host code: 0.2.1 only adds imports).
    #[serde(rename = "sidecar:policy@0.2.1")]
    V02,
}

impl Contract {
    pub fn name(self) -> &'static str {
        match self {
            Self::V01 => bindings::v01::CONTRACT,
            Self::V02 => bindings::v02::CONTRACT,
        }
    }
}

/// The hooks a policy wants called besides the request hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Hooks {
    pub on_response: bool,
    pub on_complete: bool,
}

/// How a policy's instances come to be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Configured {
    /// `configure` ran once; instances start from a snapshot of the result.
    Snapshot,
    /// `configure` runs at the start of each instance: contract 0.1, or a
    /// 0.2 component that could not be snapshotted.
    PerInstance,
}

/// What a request hook decided.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per hook call, moved once: boxing buys nothing
pub enum Verdict {
    /// Go on (the exchange holds any changes).
    Continue,
    /// The policy answered: skip later request hooks and the upstream.
    Respond(Response),
}

/// Why a hook call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The policy failed: its failure mode applies.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The message cannot be given to (or taken from) the policy: not the
    /// policy's fault, the request fails as the error says.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// A message that cannot go through a policy, whatever its failure mode.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("request body is larger than {limit} bytes")]
    RequestBodyTooLarge { limit: usize },
    #[error("upstream response is larger than {limit} bytes")]
    ResponseBodyTooLarge { limit: usize },
    /// A 0.1 policy takes header values as text.
    #[error("{what} header `{name}` has a value that is not UTF-8")]
    NotUtf8 { what: &'static str, name: String },
    #[error("reading the request body failed: {0}")]
    RequestBody(BodyError),
    #[error("reading the upstream's response body failed: {0}")]
    ResponseBody(BodyError),
    /// The policy's answer or change is not valid HTTP.
    #[error("policy `{policy}` produced an invalid {what}: {detail}")]
    BadOutput {
        policy: Arc<str>,
        what: &'static str,
        detail: String,
    },
}

/// A 0.1 policy's hooks: its contract always calls the response hook.
const V01_HOOKS: Hooks = Hooks {
    on_response: true,
    on_complete: false,
};

/// Bytes that do not compile as a WebAssembly component (for the caller
/// to name the file).
#[derive(Debug, thiserror::Error)]
#[error("not a valid WebAssembly component: {0:#}")]
pub struct NotAComponent(pub anyhow::Error);

/// The compiled code a policy's instances come from.
enum Kind {
    V01(bindings::v01::PolicyPre<HostState>),
    V02 {
        pre: bindings::v02::PolicyPre<HostState>,
        /// `configure` must run on each instance (no snapshot).
        configure_each: bool,
    },
}

/// A compiled, linked and pre-instantiated policy. Shared by all requests.
pub struct Policy {
    name: Arc<str>,
    spec: PolicySpec,
    kind: Kind,
    hooks: Hooks,
    runtime: Arc<Runtime>,
    deadline_ticks: u64,
    /// Idle instances, with [`Instances::Reuse`].
    idle: Option<Arc<IdlePool>>,
    /// Why a 0.2 component is configured per instance, if it is.
    snapshot_skipped: Option<String>,
}

type IdlePool = Mutex<Vec<Warm>>;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("spec", &self.spec)
            .field("contract", &self.contract())
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// Which contract `component` implements, from its exports.
///
/// # Errors
/// It exports no `handler` of a contract this host knows.
pub fn contract_of(engine: &wasmtime::Engine, component: &Component) -> anyhow::Result<Contract> {
    let ty = component.component_type();
    let mut handlers = Vec::new();
    for (name, _) in ty.exports(engine) {
        match name {
            v02 if bindings::v02::HANDLERS.contains(&v02) => return Ok(Contract::V02),
            "sidecar:policy/handler@0.1.0" => return Ok(Contract::V01),
            other if other.starts_with("sidecar:policy/handler") => handlers.push(other.to_owned()),
            _ => {}
        }
    }
    let found = if handlers.is_empty() {
        "no `sidecar:policy/handler` export".to_owned()
    } else {
        format!("it exports {}", handlers.join(", "))
    };
    anyhow::bail!(
        "the component does not export the `handler` interface of {} or {} ({found})",
        bindings::v02::CONTRACT,
        bindings::v01::CONTRACT
    )
}

impl Policy {
    pub(super) async fn new(
        runtime: Arc<Runtime>,
        spec: PolicySpec,
        component: Option<&Component>,
        wasm: &[u8],
    ) -> anyhow::Result<(Arc<Self>, CompileSource)> {
        anyhow::ensure!(
            spec.limits.memory_bytes <= runtime.settings().max_memory_bytes,
            "memory cap of {} bytes is above the engine's maximum of {} bytes",
            spec.limits.memory_bytes,
            runtime.settings().max_memory_bytes
        );
        let name: Arc<str> = spec.name.as_str().into();
        // +1: the current tick may be about to end.
        let deadline_ticks = (spec.limits.deadline.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1;
        let mut snapshot_skipped = None;
        // The same component with the same config, configured before: its
        // snapshot, with nothing compiled or configured now.
        let snapshot_key = snapshot::cache_key(wasm, &spec.config_json);
        let cached = runtime
            .cache()
            .lookup(runtime.engine(), &snapshot_key, Keep::InMemory)
            .and_then(|(c, meta, source)| Some((c, snapshot::decode_hooks(&meta)?, source)));
        let (kind, hooks, source) = if let Some((snapshotted, hooks, source)) = cached {
            (
                Kind::V02 {
                    pre: pre_instantiate_v02(runtime.linker(), &snapshotted)?,
                    configure_each: false,
                },
                hooks,
                source,
            )
        } else {
            let (kind, hooks, source) = Self::configure(
                &runtime,
                &spec,
                &name,
                component,
                wasm,
                snapshot_key,
                deadline_ticks,
                &mut snapshot_skipped,
            )
            .await?;
            (kind, hooks, source)
        };
        let spec_reuse = spec.instances;
        let mut policy = Self {
            name: name.clone(),
            spec,
            kind,
            hooks,
            runtime,
            deadline_ticks,
            idle: (spec_reuse == Instances::Reuse).then(Default::default),
            snapshot_skipped,
        };
        // Validate the config now (and, for a snapshot, that it
        // instantiates), so a refused config stops the load instead of
        // failing every request.
        let mut instance = policy
            .fresh(load_caller(&name))
            .await
            .map_err(anyhow::Error::from)?;
        if let Some(hooks) = instance.configured_hooks.take() {
            policy.hooks = hooks;
        }
        drop(instance);
        Ok((Arc::new(policy), source))
    }

    /// Pre-instantiates the component by its contract; a 0.2 one is
    /// configured once and snapshotted (the snapshot cached under `key`).
    /// Without `component`, `wasm` is compiled only where needed: a 0.2
    /// policy that snapshots needs only its instrumented copy compiled.
    #[allow(clippy::too_many_arguments)]
    async fn configure(
        runtime: &Arc<Runtime>,
        spec: &PolicySpec,
        name: &Arc<str>,
        component: Option<&Component>,
        wasm: &[u8],
        key: [u8; 32],
        deadline_ticks: u64,
        snapshot_skipped: &mut Option<String>,
    ) -> anyhow::Result<(Kind, Hooks, CompileSource)> {
        let original = || -> anyhow::Result<(Component, CompileSource)> {
            match component {
                Some(c) => Ok((c.clone(), CompileSource::Memory)),
                None => runtime
                    .compile_cached(wasm)
                    .map_err(|e| anyhow::Error::new(NotAComponent(e))),
            }
        };
        if let Some(c) = component
            && contract_of(runtime.engine(), c)? == Contract::V01
        {
            return Ok((
                Kind::V01(pre_instantiate_v01(runtime.linker(), c)?),
                V01_HOOKS,
                CompileSource::Memory,
            ));
        }
        let caller = load_caller(name);
        let new_store = || new_store(runtime, spec, caller.clone(), deadline_ticks).0;
        match snapshot::configure_once(runtime, wasm, &spec.config_json, new_store).await {
            Ok(snap) => {
                let snapshotted = runtime
                    .compile(&snap.wasm)
                    .context("compiling the configured snapshot")?;
                runtime.cache().insert(
                    runtime.engine(),
                    key,
                    &snapshotted,
                    snapshot::encode_hooks(snap.hooks),
                    Keep::InMemory,
                );
                Ok((
                    Kind::V02 {
                        pre: pre_instantiate_v02(runtime.linker(), &snapshotted)?,
                        configure_each: false,
                    },
                    snap.hooks,
                    CompileSource::Compiled,
                ))
            }
            Err(snapshot::Error::Refused(message)) => Err(PolicyError::ConfigRefused {
                policy: name.clone(),
                message,
            }
            .into()),
            Err(snapshot::Error::Failed(error)) => {
                Err(classify(name, &spec.limits, None, None, error).into())
            }
            Err(e @ (snapshot::Error::NotV02 | snapshot::Error::Unsupported(_))) => {
                let (c, source) = original()?;
                // A 0.1 policy (or not a policy: the check says what is missing).
                if contract_of(runtime.engine(), &c)? == Contract::V01 {
                    return Ok((
                        Kind::V01(pre_instantiate_v01(runtime.linker(), &c)?),
                        V01_HOOKS,
                        source,
                    ));
                }
                // Still correct, only slower: `configure` per instance.
                *snapshot_skipped = Some(match e {
                    snapshot::Error::Unsupported(why) => format!("{why:#}"),
                    _ => "its instrumented copy does not export the 0.2 contract".into(),
                });
                Ok((
                    Kind::V02 {
                        pre: pre_instantiate_v02(runtime.linker(), &c)?,
                        configure_each: true,
                    },
                    Hooks::default(),
                    source,
                ))
            }
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    pub fn failure_mode(&self) -> FailureMode {
        self.spec.failure
    }

    pub fn contract(&self) -> Contract {
        match self.kind {
            Kind::V01(_) => Contract::V01,
            Kind::V02 { .. } => Contract::V02,
        }
    }

    /// The hooks it asked for besides the request hook.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    pub fn configured(&self) -> Configured {
        match self.kind {
            Kind::V02 {
                configure_each: false,
                ..
            } => Configured::Snapshot,
            _ => Configured::PerInstance,
        }
    }

    /// Why a 0.2 policy is configured per instance instead of once.
    pub fn snapshot_skipped(&self) -> Option<&str> {
        self.snapshot_skipped.as_deref()
    }

    /// An instance for one request, already configured: a fresh one, or
    /// with [`Instances::Reuse`] an idle one when there is one.
    ///
    /// # Errors
    /// [`PolicyError`] if instantiation fails (e.g. the instance pool is
    /// exhausted) or `configure` refuses or traps.
    pub async fn instantiate(
        &self,
        route: &Arc<str>,
        request_id: &Arc<str>,
    ) -> Result<PolicyInstance, PolicyError> {
        let caller = Caller {
            policy: self.name.clone(),
            route: route.clone(),
            request_id: request_id.clone(),
        };
        let reused = self
            .idle
            .as_ref()
            .and_then(|idle| idle.lock().unwrap_or_else(|e| e.into_inner()).pop());
        if let Some(mut warm) = reused {
            // Log lines of this request carry this request's id.
            warm.store.data_mut().set_caller(caller);
            return Ok(self.instance(warm));
        }
        self.fresh(caller).await
    }

    fn instance(&self, warm: Warm) -> PolicyInstance {
        PolicyInstance {
            policy: self.name.clone(),
            limits: self.spec.limits,
            deadline_ticks: self.deadline_ticks,
            warm: Some(warm),
            poisoned: false,
            idle: self.idle.clone(),
            configured_hooks: None,
        }
    }

    async fn fresh(&self, caller: Caller) -> Result<PolicyInstance, PolicyError> {
        let (mut store, stderr) = new_store(&self.runtime, &self.spec, caller, self.deadline_ticks);
        let instantiated = match &self.kind {
            Kind::V01(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V01),
            Kind::V02 { pre, .. } => pre.instantiate_async(&mut store).await.map(Bindings::V02),
        };
        let bindings = match instantiated {
            Ok(b) => b,
            Err(e) if store.data().limiter.hit || e.downcast_ref::<Trap>().is_some() => {
                return Err(classify(
                    &self.name,
                    &self.spec.limits,
                    Some(&store),
                    Some(&stderr),
                    e,
                ));
            }
            Err(e) => {
                return Err(PolicyError::Unavailable {
                    policy: self.name.clone(),
                    detail: format!("{e:#}"),
                });
            }
        };
        let mut instance = self.instance(Warm {
            store,
            bindings,
            stderr,
            uses: 0,
        });
        let configure_each = match self.kind {
            Kind::V01(_) => true,
            Kind::V02 { configure_each, .. } => configure_each,
        };
        if configure_each {
            instance.configure(&self.spec.config_json).await?;
        }
        Ok(instance)
    }
}

/// The caller of load-time calls.
fn load_caller(name: &Arc<str>) -> Caller {
    Caller {
        policy: name.clone(),
        route: "(load)".into(),
        request_id: "(load)".into(),
    }
}

/// A store for one instance: WASI with nothing granted, the capabilities,
/// the memory cap and the deadline.
pub(super) fn new_store(
    runtime: &Runtime,
    spec: &PolicySpec,
    caller: Caller,
    deadline_ticks: u64,
) -> (Store<HostState>, MemoryOutputPipe) {
    // Panic messages land here, to be logged with the trap.
    let stderr = MemoryOutputPipe::new(4096);
    let state = HostState::new(runtime.services(), spec, caller, stderr.clone());
    let mut store = Store::new(runtime.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(deadline_ticks);
    // At the deadline: time the call spent waiting for a body (host I/O,
    // not the policy's work) is given back once; then the call is over.
    store.epoch_deadline_callback(|mut cx| {
        let credit = std::mem::take(&mut cx.data_mut().message.io_credit_ticks);
        if credit > 0 {
            Ok(UpdateDeadline::Continue(credit))
        } else {
            Err(Trap::Interrupt.into())
        }
    });
    (store, stderr)
}

/// Links a 0.1 component against the host.
fn pre_instantiate_v01(
    linker: &wasmtime::component::Linker<HostState>,
    component: &Component,
) -> anyhow::Result<bindings::v01::PolicyPre<HostState>> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .context("the component imports something the sidecar does not provide")?;
    bindings::v01::PolicyPre::new(instance_pre)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "the component's `handler` does not match {}",
                bindings::v01::CONTRACT
            )
        })
}

/// Links a 0.2 component against the host.
pub(super) fn pre_instantiate_v02(
    linker: &wasmtime::component::Linker<HostState>,
    component: &Component,
) -> anyhow::Result<bindings::v02::PolicyPre<HostState>> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .context("the component imports something the sidecar does not provide")?;
    bindings::v02::PolicyPre::new(instance_pre)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "the component's `handler` does not match {}",
                bindings::v02::CONTRACT
            )
        })
}

/// Links `component` against the host and checks its exports.
pub(super) fn validate(
    linker: &wasmtime::component::Linker<HostState>,
    engine: &wasmtime::Engine,
    component: &Component,
) -> anyhow::Result<Contract> {
    let contract = contract_of(engine, component)?;
    match contract {
        Contract::V01 => pre_instantiate_v01(linker, component).map(drop)?,
        Contract::V02 => pre_instantiate_v02(linker, component).map(drop)?,
    }
    Ok(contract)
}

/// One policy's instance for one request. Dropping it frees the slot, or
/// with [`Instances::Reuse`] parks it for a later request.
pub struct PolicyInstance {
    policy: Arc<str>,
    limits: PolicyLimits,
    deadline_ticks: u64,
    /// Always `Some` until dropped.
    warm: Option<Warm>,
    /// Set after a failed call: a trapped instance must not be entered again.
    poisoned: bool,
    /// Where to park it when dropped, with [`Instances::Reuse`].
    idle: Option<Arc<IdlePool>>,
    /// What a per-instance `configure` of a 0.2 component returned.
    configured_hooks: Option<Hooks>,
}

/// The typed exports of an instance.
enum Bindings {
    V01(bindings::v01::Policy),
    V02(bindings::v02::Policy),
}

/// An instantiated and configured component, with what it needs to be
/// called again.
struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
    stderr: MemoryOutputPipe,
    /// Request hooks called so far (the instance that validated the
    /// config at load time serves the first request, as if fresh).
    uses: u32,
}

impl Drop for PolicyInstance {
    fn drop(&mut self) {
        let (Some(idle), Some(warm)) = (self.idle.take(), self.warm.take()) else {
            return;
        };
        if self.poisoned || warm.uses >= REUSE_MAX_USES || !warm.stderr.contents().is_empty() {
            return;
        }
        let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < REUSE_MAX_IDLE {
            idle.push(warm);
        }
    }
}

impl PolicyInstance {
    pub fn policy(&self) -> &Arc<str> {
        &self.policy
    }

    async fn configure(&mut self, config: &str) -> Result<(), PolicyError> {
        let policy = self.policy.clone();
        let warm = self.enter()?;
        let refused = |message| PolicyError::ConfigRefused {
            policy: policy.clone(),
            message,
        };
        match &warm.bindings {
            Bindings::V01(b) => {
                let called = b
                    .sidecar_policy_handler()
                    .call_configure(&mut warm.store, config)
                    .await;
                self.outcome(called)?.map_err(refused)
            }
            Bindings::V02(b) => {
                let called = b
                    .sidecar_policy_handler()
                    .call_configure(&mut warm.store, config)
                    .await;
                let hooks = self.outcome(called)?.map_err(refused)?;
                self.configured_hooks = Some(v02::hooks(hooks));
                Ok(())
            }
        }
    }

    /// Calls the request hook on `exchange`'s request.
    ///
    /// # Errors
    /// [`HookError::Policy`] if the hook traps, times out or hits the memory
    /// cap; [`HookError::Message`] if the request cannot be given to the
    /// policy or its answer is not valid HTTP.
    pub async fn on_request(&mut self, exchange: &mut Exchange) -> Result<Verdict, HookError> {
        let policy = self.policy.clone();
        let warm = self.enter()?;
        warm.uses += 1;
        // Each request gets the whole quota (on a reused instance too).
        warm.store.data_mut().start_request();
        match &warm.bindings {
            Bindings::V01(b) => {
                let request = v01::request_record(exchange)?;
                let called = b
                    .sidecar_policy_handler()
                    .call_on_request(&mut warm.store, &request)
                    .await;
                let decision = self.outcome(called)?;
                Ok(v01::apply_decision(&policy, exchange, decision)?)
            }
            Bindings::V02(b) => {
                v02::lend(&mut warm.store, exchange);
                let called = b
                    .sidecar_policy_handler()
                    .call_on_request(&mut warm.store, v02::request())
                    .await;
                v02::take_back(&mut warm.store, exchange);
                let decision = self.outcome(called)?;
                Ok(v02::verdict(&policy, decision, exchange.limits.policy_max)?)
            }
        }
    }

    /// Calls the response hook on `exchange`'s response (which must be set).
    ///
    /// # Errors
    /// As [`PolicyInstance::on_request`].
    pub async fn on_response(&mut self, exchange: &mut Exchange) -> Result<(), HookError> {
        let policy = self.policy.clone();
        let warm = self.enter()?;
        match &warm.bindings {
            Bindings::V01(b) => {
                let request = v01::request_record(exchange)?;
                let response = v01::response_record(exchange)?;
                let called = b
                    .sidecar_policy_handler()
                    .call_on_response(&mut warm.store, &request, &response)
                    .await;
                let answer = self.outcome(called)?;
                Ok(v01::apply_response(&policy, exchange, answer)?)
            }
            Bindings::V02(b) => {
                v02::lend(&mut warm.store, exchange);
                let called = b
                    .sidecar_policy_handler()
                    .call_on_response(&mut warm.store, v02::request(), v02::response())
                    .await;
                v02::take_back(&mut warm.store, exchange);
                self.outcome(called)?;
                Ok(())
            }
        }
    }

    /// Calls the completion hook (0.2 only; a no-op for 0.1).
    ///
    /// # Errors
    /// [`PolicyError`] as for the other hooks.
    pub async fn on_complete(
        &mut self,
        exchange: &mut Exchange,
        info: &Completion,
    ) -> Result<(), PolicyError> {
        let warm = self.enter()?;
        let Bindings::V02(b) = &warm.bindings else {
            return Ok(());
        };
        v02::lend(&mut warm.store, exchange);
        let called = b
            .sidecar_policy_handler()
            .call_on_complete(
                &mut warm.store,
                v02::request(),
                v02::response(),
                &v02::completion(info),
            )
            .await;
        v02::take_back(&mut warm.store, exchange);
        self.outcome(called)
    }

    /// Readies the store for a call: refuses a trapped instance, and gives
    /// the call the whole deadline, measured from its own start.
    fn enter(&mut self) -> Result<&mut Warm, PolicyError> {
        match &mut self.warm {
            Some(warm) if !self.poisoned => {
                warm.store.set_epoch_deadline(self.deadline_ticks);
                warm.store.data_mut().start_call();
                Ok(warm)
            }
            _ => Err(PolicyError::Trapped {
                policy: self.policy.clone(),
                detail: "instance already failed in an earlier hook".into(),
            }),
        }
    }

    /// Classifies a failed call, and poisons the instance after one.
    fn outcome<R>(&mut self, result: wasmtime::Result<R>) -> Result<R, PolicyError> {
        result.map_err(|e| {
            self.poisoned = true;
            let warm = self.warm.as_ref().expect("present until dropped");
            classify(
                &self.policy,
                &self.limits,
                Some(&warm.store),
                Some(&warm.stderr),
                e,
            )
        })
    }
}

pub(super) fn classify(
    policy: &Arc<str>,
    limits: &PolicyLimits,
    store: Option<&Store<HostState>>,
    stderr: Option<&MemoryOutputPipe>,
    error: wasmtime::Error,
) -> PolicyError {
    let policy = policy.clone();
    if store.is_some_and(|s| s.data().limiter.hit) {
        return PolicyError::MemoryCap {
            policy,
            limit: limits.memory_bytes,
        };
    }
    if let Some(quota) = error.downcast_ref::<KvQuotaExceeded>() {
        return PolicyError::KvQuota {
            policy,
            detail: quota.0.clone(),
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return PolicyError::TimedOut {
            policy,
            deadline: limits.deadline,
        };
    }
    let mut detail = format!("{error:#}");
    let printed = stderr.map(MemoryOutputPipe::contents).unwrap_or_default();
    if !printed.is_empty() {
        detail.push_str("; stderr: ");
        detail.push_str(String::from_utf8_lossy(&printed).trim());
    }
    PolicyError::Trapped { policy, detail }
}
