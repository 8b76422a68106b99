//! The `kv` capability: a host-side key-value store with TTLs.
//!
//! Entries live in the host, so they outlive the per-request instance (this is
//! the cache policy's storage). Every policy gets its own namespace (its name
//! in the sidecar config): one policy cannot read or overwrite another's keys.
//!
//! - here: the [`KvStore`] trait every backend implements, the settings that
//!   pick one ([`KvSettings`]), the per-instance context ([`KvState`]) and
//!   its linker function;
//! - [`memory`]: [`MemoryKv`], the default, in the sidecar's memory;
//! - [`redis`]: [`RedisKv`], shared by every sidecar on the same Redis;
//! - [`quota`]: the bounds of one store and of one request.

mod memory;
mod quota;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::Clock;
use crate::bindings::v01::kv as wit01;
use crate::bindings::v02::kv::{self as wit};

pub use self::memory::MemoryKv;
use self::quota::KvQuota;
pub use self::quota::{KvLimits, KvQuotaExceeded};
pub use self::redis::{RedisKv, RedisSettings};

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Other(String),
}

/// What a [`KvStore`] operation returns: a boxed future, so the trait stays
/// object-safe and a networked store (Redis) can wait without blocking a
/// thread. The in-memory store answers at once.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A key-value store shared by all policy instances. Keys are scoped by
/// `namespace` (the policy's name).
///
/// A store that cannot be reached degrades, it never fails a request: `get`
/// is a miss, `set` an [`KvError::Other`], `delete` false.
pub trait KvStore: Send + Sync + 'static {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>>;
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool>;
    /// Adds `delta` to the integer under `key` (absent or expired: 0) in
    /// one step and returns the new value; `ttl` applies only when the entry
    /// is created, so a counter keeps the window it started.
    fn increment<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<i64, KvError>>;
}

/// Which store backs the `kv` capability, and its bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvSettings {
    pub limits: KvLimits,
    pub backend: KvBackend,
}

/// The store behind the `kv` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KvBackend {
    /// [`MemoryKv`]: per sidecar, bounded by `max_entries`.
    #[default]
    Memory,
    /// [`RedisKv`]: shared by every sidecar on the same Redis.
    Redis(RedisSettings),
}

impl KvSettings {
    /// The store these settings describe, expiring by `clock`. Does not
    /// connect: a Redis store connects on first use, and until it answers
    /// lookups miss.
    ///
    /// # Errors
    /// The Redis URL is invalid.
    pub fn open(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn KvStore>, InvalidKvUrl> {
        Ok(match &self.backend {
            KvBackend::Memory => Arc::new(MemoryKv::new(clock, self.limits)),
            KvBackend::Redis(settings) => Arc::new(
                RedisKv::new(settings.clone(), self.limits).map_err(|reason| InvalidKvUrl {
                    url: settings.url.clone(),
                    reason,
                })?,
            ),
        })
    }
}

/// A Redis URL the client refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kv.url: `{url}`: {reason}")]
pub struct InvalidKvUrl {
    pub url: String,
    pub reason: String,
}

/// Per-instance state of the capability: the shared store, the namespace
/// and what is left of this request's quota.
pub struct KvState {
    store: Arc<dyn KvStore>,
    namespace: Arc<str>,
    quota: KvQuota,
}

impl KvState {
    /// A new instance's context: `namespace` is the policy's name; the
    /// quota allows `max_ops` operations moving `max_bytes` per request.
    pub(crate) fn new(
        store: Arc<dyn KvStore>,
        namespace: &str,
        max_ops: u32,
        max_bytes: usize,
    ) -> Self {
        Self {
            store,
            namespace: namespace.into(),
            quota: KvQuota::new(max_ops, max_bytes),
        }
    }

    /// A new request starts with the whole quota.
    pub(crate) fn start_request(&mut self) {
        self.quota.reset();
    }
}

impl wit::Host for KvState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.quota.charge(1, key.len())?;
        let value = self.store.get(&self.namespace, &key).await;
        // What the store hands back counts too: reading a huge value over
        // and over costs the host as much as writing it.
        self.quota.charge(0, value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        self.quota.charge(1, key.len() + value.len())?;
        Ok(self
            .store
            .set(
                &self.namespace,
                &key,
                value,
                ttl_ms.map(Duration::from_millis),
            )
            .await
            .map_err(|e| match e {
                KvError::TooLarge(m) => wit::Error::TooLarge(m),
                KvError::Other(m) => wit::Error::Other(m),
            }))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        self.quota.charge(1, key.len())?;
        Ok(self.store.delete(&self.namespace, &key).await)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, wit::Error>> {
        self.quota.charge(1, key.len() + 8)?;
        Ok(self
            .store
            .increment(
                &self.namespace,
                &key,
                delta,
                ttl_ms.map(Duration::from_millis),
            )
            .await
            .map_err(|e| match e {
                KvError::TooLarge(m) => wit::Error::TooLarge(m),
                KvError::Other(m) => wit::Error::Other(m),
            }))
    }
}

/// Contract 0.1's `kv`: the same store and quota, without `increment`.
impl wit01::Host for KvState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        wit::Host::get(self, key).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), wit01::Error>> {
        Ok(wit::Host::set(self, key, value, ttl_ms)
            .await?
            .map_err(|e| match e {
                wit::Error::TooLarge(m) => wit01::Error::TooLarge(m),
                wit::Error::Other(m) => wit01::Error::Other(m),
            }))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        wit::Host::delete(self, key).await
    }
}

/// Links both contracts' `kv`, on the context `get` finds in a store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<KvState>>(linker, get)?;
    wit01::add_to_linker::<T, HasSelf<KvState>>(linker, get)
}
