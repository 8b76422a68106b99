//! Host capabilities a policy may import: `log`, `kv`, `clock`, `crypto`
//! and `outbound`.
//!
//! The services behind them (a log sink, a key-value store, a clock, a
//! network) are traits so that the sidecar, the plugin test harness and
//! tests can each plug in what they need.
//!
//! A capability is one module here, self-contained (it never sees the
//! store's data type, `wasm::HostState`):
//! - its settings and the backends behind it (shared, in [`Services`]);
//! - its per-instance context (`KvState`, `LogState`, ...): what one policy
//!   instance has during a call, built from the services and the policy's
//!   spec;
//! - its `add_to_linker`, generic over the store's data, given a function
//!   that finds the context in it (wasmtime's `HasData`: the context, or a
//!   view borrowing it, implements the generated `Host` traits);
//! - its tests.
//!
//! Adding one touches: its WIT, its module, one field (and its initial
//! value) in `wasm/state.rs`'s `HostState` and one line in
//! `HostState::add_capabilities_to_linker` there, and a field of
//! [`Services`] if it has a shared backend.

pub mod clock;
pub mod crypto;
pub mod kv;
pub mod log;
pub mod outbound;

use std::sync::Arc;

pub use self::clock::{Clock, ManualClock, SystemClock};
/// Where the Redis backend has always been: `capabilities::redis`.
pub use self::kv::redis;
pub use self::kv::{
    InvalidKvUrl, KvBackend, KvError, KvFuture, KvLimits, KvQuotaExceeded, KvSettings, KvStore,
    MemoryKv, RedisKv, RedisSettings,
};
pub use self::log::{FieldValue, Level, LogRecord, LogSink, MemorySink, StdoutSink};
pub use self::outbound::{
    CallOutcome, HttpClient, NoNetwork, Origin, Outbound, OutboundGrant, OutboundRequest,
    OutboundResponse, SendError, SendFuture,
};

/// The long-lived services behind the capabilities, shared by every policy
/// instance of a sidecar (cheap to clone).
#[derive(Clone)]
pub struct Services {
    pub clock: Arc<dyn Clock>,
    pub kv: Arc<dyn KvStore>,
    pub log: Arc<dyn LogSink>,
    /// The network behind `outbound` (what a policy may reach is its own
    /// [`OutboundGrant`]), and the cache of its responses.
    pub outbound: Outbound,
}

impl Services {
    /// Wall clock, an in-memory store with the given limits, JSON lines on
    /// stdout, no network.
    pub fn production(kv_limits: KvLimits) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            kv: Arc::new(MemoryKv::new(clock.clone(), kv_limits)),
            outbound: Outbound::new(Arc::new(NoNetwork), clock.clone()),
            clock,
            log: Arc::new(StdoutSink::default()),
        }
    }

    /// Wall clock, the store `kv` describes (in memory or on Redis), JSON
    /// lines on stdout. Does not connect: a Redis store connects on first
    /// use, and until it answers lookups miss.
    ///
    /// # Errors
    /// The Redis URL is invalid.
    pub fn with_kv(kv: &KvSettings) -> anyhow::Result<Self> {
        let mut services = Self::production(kv.limits);
        services.kv = kv.open(services.clock.clone())?;
        Ok(services)
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// Who is calling a capability: used to namespace the store and tag log lines.
#[derive(Clone, Debug)]
pub struct Caller {
    pub policy: Arc<str>,
    pub route: Arc<str>,
    pub request_id: Arc<str>,
}
