//! Host capabilities a policy may import: `log`, `kv`, `clock`, `crypto`
//! and `outbound`.
//!
//! Each capability is one module with its own state, its own
//! `add_to_linker` and its own tests. The services behind them (a log sink,
//! a key-value store, a clock) are traits so that the sidecar, the plugin test
//! harness and tests can each plug in what they need. Adding a capability
//! means: the WIT, one module here, and one line in [`add_to_linker`].

pub mod clock;
pub mod crypto;
pub mod kv;
pub mod log;
pub mod outbound;
pub mod redis;

use std::sync::Arc;

use wasmtime::component::Linker;

use crate::wasm::HostState;

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::kv::{
    KvBackend, KvError, KvFuture, KvLimits, KvQuotaExceeded, KvSettings, KvStore, MemoryKv,
};
pub use self::log::{FieldValue, Level, LogRecord, LogSink, MemorySink, StdoutSink};
pub use self::outbound::{
    CallOutcome, HttpClient, NoNetwork, Origin, Outbound, OutboundGrant, OutboundRequest,
    OutboundResponse, SendError, SendFuture,
};
pub use self::redis::{RedisKv, RedisSettings};

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
        if let KvBackend::Redis(settings) = &kv.backend {
            let store = RedisKv::new(settings.clone(), kv.limits)
                .map_err(|e| anyhow::anyhow!("kv.url: `{}`: {e}", settings.url))?;
            services.kv = Arc::new(store);
        }
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

/// Links every capability into `linker`. A component that does not import a
/// capability never sees it: linking only makes it available.
///
/// # Errors
/// Fails if an interface is linked twice (a programming error).
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    clock::add_to_linker(linker)?;
    crypto::add_to_linker(linker)?;
    outbound::add_to_linker(linker)?;
    Ok(())
}
