//! The `kv` capability: a host-side key-value store with TTLs.
//!
//! Entries live in the host, so they outlive the per-request instance (this is
//! the cache policy's storage). Every policy gets its own namespace (its name
//! in the sidecar config): one policy cannot read or overwrite another's keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::Clock;
use crate::bindings::v01::kv as wit01;
use crate::bindings::v02::kv::{self as wit};
use crate::wasm::HostState;

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
    /// [`RedisKv`](super::RedisKv): shared by every sidecar on the same Redis.
    Redis(super::RedisSettings),
}

/// Bounds on what one store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Entries across all namespaces; the oldest entry is evicted beyond it.
    pub max_entries: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
        }
    }
}

impl KvLimits {
    /// Refuses a key or value above the limits, as every store must.
    pub(crate) fn check(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        if key.len() > self.max_key_bytes {
            return Err(KvError::TooLarge(format!(
                "key is {} bytes, the limit is {}",
                key.len(),
                self.max_key_bytes
            )));
        }
        if value.len() > self.max_value_bytes {
            return Err(KvError::TooLarge(format!(
                "value is {} bytes, the limit is {}",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

struct Entry {
    value: Vec<u8>,
    /// Absolute expiry in clock microseconds; `None` keeps it until evicted.
    expires_at: Option<u64>,
    /// Insertion order, to evict the oldest entry when full.
    seq: u64,
}

/// The default store: in memory, bounded, expiring by the given clock.
pub struct MemoryKv {
    clock: Arc<dyn Clock>,
    limits: KvLimits,
    inner: Mutex<Inner>,
}

type Key = (String, String);

/// The entries plus two indexes, so a full store finds what to evict in
/// O(log n): a cache under a miss-heavy load is full all the time.
#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Insertion order: the oldest entry is evicted first.
    by_seq: BTreeMap<u64, Key>,
    /// (expiry, seq) of entries with a TTL: expired entries go before live ones.
    by_expiry: BTreeSet<(u64, u64)>,
    next_seq: u64,
}

impl Inner {
    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_seq.remove(&entry.seq);
        if let Some(at) = entry.expires_at {
            self.by_expiry.remove(&(at, entry.seq));
        }
        Some(entry)
    }

    fn insert(&mut self, key: Key, value: Vec<u8>, expires_at: Option<u64>) {
        self.remove(&key);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_seq.insert(seq, key.clone());
        if let Some(at) = expires_at {
            self.by_expiry.insert((at, seq));
        }
        self.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                seq,
            },
        );
    }

    /// Makes room for one entry: an expired one if there is one, else the
    /// oldest.
    fn evict_one(&mut self, now: u64) {
        let seq = match self.by_expiry.first() {
            Some(&(at, seq)) if at <= now => seq,
            _ => match self.by_seq.first_key_value() {
                Some((&seq, _)) => seq,
                None => return,
            },
        };
        if let Some(key) = self.by_seq.get(&seq).cloned() {
            self.remove(&key);
        }
    }
}

impl MemoryKv {
    pub fn new(clock: Arc<dyn Clock>, limits: KvLimits) -> Self {
        Self {
            clock,
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Number of live (unexpired) entries.
    pub fn len(&self) -> usize {
        let now = self.clock.now_micros();
        let inner = self.lock();
        inner.entries.values().filter(|e| !e.expired(now)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave an entry half-written
        // (every mutation completes before the next can panic), so the data
        // stays valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// The store's own operations are synchronous (the plugin test harness
/// calls them directly); [`KvStore`] wraps them in ready futures.
impl MemoryKv {
    /// The value under `key` in `namespace`, if present and unexpired.
    pub fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let now = self.clock.now_micros();
        let mut inner = self.lock();
        let k = (namespace.to_owned(), key.to_owned());
        match inner.entries.get(&k) {
            Some(e) if !e.expired(now) => Some(e.value.clone()),
            Some(_) => {
                inner.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Stores `value`, replacing any earlier one; `ttl` counts on the
    /// store's clock.
    ///
    /// # Errors
    /// [`KvError::TooLarge`] above the key or value limit.
    pub fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.limits.check(key, &value)?;
        let now = self.clock.now_micros();
        let expires_at = ttl.map(|t| now.saturating_add(t.as_micros() as u64));
        let mut inner = self.lock();
        let k = (namespace.to_owned(), key.to_owned());
        if !inner.entries.contains_key(&k) && inner.entries.len() >= self.limits.max_entries {
            inner.evict_one(now);
        }
        inner.insert(k, value, expires_at);
        Ok(())
    }

    /// Removes `key`; whether a live entry was there.
    pub fn delete(&self, namespace: &str, key: &str) -> bool {
        let now = self.clock.now_micros();
        self.lock()
            .remove(&(namespace.to_owned(), key.to_owned()))
            .is_some_and(|e| !e.expired(now))
    }

    /// Adds `delta` to the counter under `key`, under the store's lock (so
    /// concurrent requests never lose an update); see [`KvStore::increment`].
    ///
    /// # Errors
    /// [`KvError::Other`] if the entry holds no integer or the sum
    /// overflows; [`KvError::TooLarge`] for a key over the limit.
    pub fn increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        self.limits.check(key, b"")?;
        let now = self.clock.now_micros();
        let mut inner = self.lock();
        let k = (namespace.to_owned(), key.to_owned());
        let live = inner.entries.get(&k).filter(|e| !e.expired(now));
        let (current, expires_at) = match live {
            Some(e) => (parse_counter(&e.value)?, e.expires_at),
            None => (0, ttl.map(|t| now.saturating_add(t.as_micros() as u64))),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Other("the counter would overflow".into()))?;
        if !inner.entries.contains_key(&k) && inner.entries.len() >= self.limits.max_entries {
            inner.evict_one(now);
        }
        inner.insert(k, next.to_string().into_bytes(), expires_at);
        Ok(next)
    }
}

impl KvStore for MemoryKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(MemoryKv::get(self, namespace, key)))
    }

    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>> {
        Box::pin(std::future::ready(MemoryKv::set(
            self, namespace, key, value, ttl,
        )))
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(std::future::ready(MemoryKv::delete(self, namespace, key)))
    }

    fn increment<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<i64, KvError>> {
        Box::pin(std::future::ready(MemoryKv::increment(
            self, namespace, key, delta, ttl,
        )))
    }
}

/// A counter's value: decimal text, as `increment` stores it.
pub(crate) fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KvError::Other("the entry does not hold an integer".into()))
}

/// Per-instance state of the capability: the shared store and the namespace.
pub struct KvState {
    pub(crate) store: Arc<dyn KvStore>,
    pub(crate) namespace: Arc<str>,
    pub(crate) quota: KvQuota,
}

/// What one request may still do with the store. A policy that calls the
/// store in a tight loop, or moves huge values again and again, is stopped
/// here (a trap, reported as [`KvQuotaExceeded`]) long before it could slow
/// the store for everyone else; the epoch deadline alone would let it make
/// millions of calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvQuota {
    max_ops: u32,
    max_bytes: usize,
    ops: u32,
    bytes: usize,
}

/// The trap raised when a request exceeds its `kv` quota.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvQuotaExceeded(pub String);

impl KvQuota {
    pub(crate) fn new(max_ops: u32, max_bytes: usize) -> Self {
        Self {
            max_ops,
            max_bytes,
            ops: 0,
            bytes: 0,
        }
    }

    /// A new request starts with the whole quota.
    pub(crate) fn reset(&mut self) {
        self.ops = 0;
        self.bytes = 0;
    }

    /// Counts `ops` operations moving `bytes`; an error once over either
    /// bound.
    fn charge(&mut self, ops: u32, bytes: usize) -> wasmtime::Result<()> {
        self.ops = self.ops.saturating_add(ops);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.ops > self.max_ops {
            return Err(wasmtime::Error::new(KvQuotaExceeded(format!(
                "more than {} kv operations in one request",
                self.max_ops
            ))));
        }
        if self.bytes > self.max_bytes {
            return Err(wasmtime::Error::new(KvQuotaExceeded(format!(
                "more than {} kv bytes in one request",
                self.max_bytes
            ))));
        }
        Ok(())
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

/// Links both contracts' `kv`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<HostState, HasSelf<KvState>>(linker, |s| &mut s.kv)?;
    wit01::add_to_linker::<HostState, HasSelf<KvState>>(linker, |s| &mut s.kv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::ManualClock;

    fn store(limits: KvLimits) -> (Arc<ManualClock>, MemoryKv) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        (clock.clone(), MemoryKv::new(clock, limits))
    }

    #[test]
    fn entry_expires_when_clock_passes_ttl() {
        let (clock, kv) = store(KvLimits::default());
        kv.set("p", "k", b"v".to_vec(), Some(Duration::from_secs(10)))
            .unwrap();
        clock.advance(Duration::from_secs(9));
        assert_eq!(kv.get("p", "k").as_deref(), Some(&b"v"[..]));
        clock.advance(Duration::from_secs(1));
        assert_eq!(kv.get("p", "k"), None);
    }

    #[test]
    fn increment_counts_in_a_window_that_starts_with_the_first_hit() {
        let (clock, kv) = store(KvLimits::default());
        let ttl = Some(Duration::from_secs(60));
        assert_eq!(kv.increment("p", "hits", 1, ttl).unwrap(), 1);
        clock.advance(Duration::from_secs(30));
        assert_eq!(kv.increment("p", "hits", 2, ttl).unwrap(), 3);
        assert_eq!(kv.get("p", "hits").as_deref(), Some(&b"3"[..]));
        // The second increment did not move the expiry.
        clock.advance(Duration::from_secs(30));
        assert_eq!(kv.get("p", "hits"), None);
        assert_eq!(kv.increment("p", "hits", 1, ttl).unwrap(), 1);
        kv.set("p", "text", b"abc".to_vec(), None).unwrap();
        assert!(matches!(
            kv.increment("p", "text", 1, None),
            Err(KvError::Other(_))
        ));
        kv.set("p", "max", i64::MAX.to_string().into_bytes(), None)
            .unwrap();
        assert!(kv.increment("p", "max", 1, None).is_err());
    }

    #[test]
    fn namespaces_do_not_see_each_other() {
        let (_, kv) = store(KvLimits::default());
        kv.set("a", "k", b"1".to_vec(), None).unwrap();
        assert_eq!(kv.get("b", "k"), None);
        assert!(!kv.delete("b", "k"));
        assert!(kv.delete("a", "k"));
        assert_eq!(kv.get("a", "k"), None);
    }

    #[test]
    fn refuses_oversized_keys_and_values() {
        let limits = KvLimits {
            max_key_bytes: 4,
            max_value_bytes: 4,
            ..KvLimits::default()
        };
        let (_, kv) = store(limits);
        assert!(matches!(
            kv.set("p", "too-long", vec![], None),
            Err(KvError::TooLarge(_))
        ));
        assert!(matches!(
            kv.set("p", "k", vec![0; 5], None),
            Err(KvError::TooLarge(_))
        ));
        assert!(kv.is_empty());
    }

    #[test]
    fn full_store_evicts_expired_then_oldest() {
        let limits = KvLimits {
            max_entries: 2,
            ..KvLimits::default()
        };
        let (clock, kv) = store(limits);
        kv.set("p", "short", vec![1], Some(Duration::from_secs(1)))
            .unwrap();
        kv.set("p", "old", vec![2], None).unwrap();
        clock.advance(Duration::from_secs(2));
        kv.set("p", "new", vec![3], None).unwrap();
        assert_eq!(
            kv.get("p", "old"),
            Some(vec![2]),
            "expired entry goes first"
        );
        kv.set("p", "newest", vec![4], None).unwrap();
        assert_eq!(kv.get("p", "old"), None, "then the oldest live entry");
        assert_eq!(kv.get("p", "newest"), Some(vec![4]));
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn expired_entries_are_evicted_before_older_live_ones() {
        let limits = KvLimits {
            max_entries: 2,
            ..KvLimits::default()
        };
        let (clock, kv) = store(limits);
        kv.set("p", "old-live", vec![1], None).unwrap();
        kv.set("p", "newer-expiring", vec![2], Some(Duration::from_secs(1)))
            .unwrap();
        clock.advance(Duration::from_secs(2));
        kv.set("p", "new", vec![3], None).unwrap();
        assert_eq!(kv.get("p", "old-live"), Some(vec![1]));
        assert_eq!(kv.get("p", "new"), Some(vec![3]));
    }

    #[test]
    fn overwriting_keeps_the_indexes_consistent_under_churn() {
        let limits = KvLimits {
            max_entries: 8,
            ..KvLimits::default()
        };
        let (clock, kv) = store(limits);
        for i in 0..1_000u64 {
            let ttl = (i % 3 == 0).then(|| Duration::from_millis(i % 7));
            kv.set("p", &format!("k{}", i % 13), vec![i as u8], ttl)
                .unwrap();
            clock.advance(Duration::from_millis(1));
            let inner = kv.lock();
            assert!(inner.entries.len() <= 8);
            assert_eq!(inner.by_seq.len(), inner.entries.len());
            let with_ttl = inner.entries.values().filter(|e| e.expires_at.is_some());
            assert_eq!(inner.by_expiry.len(), with_ttl.count());
        }
    }

    #[test]
    fn overwriting_a_key_replaces_value_and_ttl() {
        let (clock, kv) = store(KvLimits::default());
        kv.set("p", "k", vec![1], Some(Duration::from_secs(1)))
            .unwrap();
        kv.set("p", "k", vec![2], None).unwrap();
        clock.advance(Duration::from_secs(5));
        assert_eq!(kv.get("p", "k"), Some(vec![2]));
    }
}
