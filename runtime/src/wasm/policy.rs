//! A loaded policy ([`Policy`]) and its per-request instance ([`PolicyInstance`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::state::{EpochWallClock, HostState, MemoryCap};
use super::{EPOCH_TICK, Runtime};
use crate::bindings::{self, Decision, Request, Response};
use crate::capabilities::Caller;
use crate::capabilities::clock::ClockState;
use crate::capabilities::kv::{KvQuota, KvQuotaExceeded, KvState};
use crate::capabilities::log::LogState;

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

/// A compiled, linked and pre-instantiated policy. Shared by all requests.
pub struct Policy {
    name: Arc<str>,
    spec: PolicySpec,
    pre: bindings::PolicyPre<HostState>,
    runtime: Arc<Runtime>,
    deadline_ticks: u64,
    /// Idle instances, with [`Instances::Reuse`].
    idle: Option<Arc<IdlePool>>,
}

type IdlePool = Mutex<Vec<Warm>>;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Policy {
    pub(super) async fn new(
        runtime: Arc<Runtime>,
        spec: PolicySpec,
        component: &Component,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            spec.limits.memory_bytes <= runtime.settings().max_memory_bytes,
            "memory cap of {} bytes is above the engine's maximum of {} bytes",
            spec.limits.memory_bytes,
            runtime.settings().max_memory_bytes
        );
        let pre = pre_instantiate(runtime.linker(), component)?;
        let spec_reuse = spec.instances;
        // +1: the current tick may be about to end.
        let deadline_ticks = (spec.limits.deadline.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1;
        let policy = Arc::new(Self {
            name: spec.name.as_str().into(),
            spec,
            pre,
            runtime,
            deadline_ticks,
            idle: (spec_reuse == Instances::Reuse).then(Default::default),
        });
        // Validate the config now, so a refused config stops the load
        // instead of failing every request.
        policy
            .instantiate(&"(load)".into(), &"(load)".into())
            .await
            .map_err(anyhow::Error::from)?;
        Ok(policy)
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
            warm.store.data_mut().log.caller = caller;
            return Ok(PolicyInstance {
                policy: self.name.clone(),
                limits: self.spec.limits,
                deadline_ticks: self.deadline_ticks,
                warm: Some(warm),
                poisoned: false,
                idle: self.idle.clone(),
            });
        }
        self.fresh(caller).await
    }

    async fn fresh(&self, caller: Caller) -> Result<PolicyInstance, PolicyError> {
        let services = self.runtime.services();
        // Panic messages land here, to be logged with the trap.
        let stderr = MemoryOutputPipe::new(4096);
        // Deny by default, said out loud: no preopened directories, no
        // environment or arguments, no sockets, and no wall clock.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(EpochWallClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: self.spec.limits.memory_bytes,
                hit: false,
            },
            log: LogState {
                sink: services.log.clone(),
                clock: services.clock.clone(),
                caller,
            },
            kv: KvState {
                store: services.kv.clone(),
                namespace: self.name.clone(),
                quota: KvQuota::new(self.spec.limits.kv_ops, self.spec.limits.kv_bytes),
            },
            clock: ClockState {
                clock: services.clock.clone(),
            },
        };
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        let bindings = match self.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) if store.data().limiter.hit || e.downcast_ref::<Trap>().is_some() => {
                return Err(classify(&self.name, &self.spec.limits, &store, &stderr, e));
            }
            Err(e) => {
                return Err(PolicyError::Unavailable {
                    policy: self.name.clone(),
                    detail: format!("{e:#}"),
                });
            }
        };
        let mut instance = PolicyInstance {
            policy: self.name.clone(),
            limits: self.spec.limits,
            deadline_ticks: self.deadline_ticks,
            warm: Some(Warm {
                store,
                bindings,
                stderr,
                uses: 0,
            }),
            poisoned: false,
            idle: self.idle.clone(),
        };
        let config = self.spec.config_json.as_str();
        let warm = instance.enter()?;
        let configured = warm
            .bindings
            .sidecar_policy_handler()
            .call_configure(&mut warm.store, config)
            .await;
        instance
            .outcome(configured)?
            .map_err(|message| PolicyError::ConfigRefused {
                policy: self.name.clone(),
                message,
            })?;
        Ok(instance)
    }
}

/// Links `component` against the host and checks its exports.
pub(super) fn pre_instantiate(
    linker: &wasmtime::component::Linker<HostState>,
    component: &Component,
) -> anyhow::Result<bindings::PolicyPre<HostState>> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .context("the component imports something the sidecar does not provide")?;
    bindings::PolicyPre::new(instance_pre)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "the component does not export the `handler` interface of {}",
                bindings::CONTRACT
            )
        })
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
}

/// An instantiated and configured component, with what it needs to be
/// called again.
struct Warm {
    store: Store<HostState>,
    bindings: bindings::Policy,
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

    /// Calls the request hook.
    ///
    /// # Errors
    /// [`PolicyError`] if the hook traps, times out or hits the memory cap.
    pub async fn on_request(&mut self, req: &Request) -> Result<Decision, PolicyError> {
        let warm = self.enter()?;
        warm.uses += 1;
        // Each request gets the whole quota (on a reused instance too).
        warm.store.data_mut().kv.quota.reset();
        let result = warm
            .bindings
            .sidecar_policy_handler()
            .call_on_request(&mut warm.store, req)
            .await;
        self.outcome(result)
    }

    /// Calls the response hook.
    ///
    /// # Errors
    /// As [`PolicyInstance::on_request`].
    pub async fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
    ) -> Result<Response, PolicyError> {
        let warm = self.enter()?;
        let result = warm
            .bindings
            .sidecar_policy_handler()
            .call_on_response(&mut warm.store, req, resp)
            .await;
        self.outcome(result)
    }

    /// Readies the store for a call: refuses a trapped instance, and gives
    /// the call the whole deadline, measured from its own start.
    fn enter(&mut self) -> Result<&mut Warm, PolicyError> {
        match &mut self.warm {
            Some(warm) if !self.poisoned => {
                warm.store.set_epoch_deadline(self.deadline_ticks);
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
            classify(&self.policy, &self.limits, &warm.store, &warm.stderr, e)
        })
    }
}

fn classify(
    policy: &Arc<str>,
    limits: &PolicyLimits,
    store: &Store<HostState>,
    stderr: &MemoryOutputPipe,
    error: wasmtime::Error,
) -> PolicyError {
    let policy = policy.clone();
    if store.data().limiter.hit {
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
    let printed = stderr.contents();
    if !printed.is_empty() {
        detail.push_str("; stderr: ");
        detail.push_str(String::from_utf8_lossy(&printed).trim());
    }
    PolicyError::Trapped { policy, detail }
}
