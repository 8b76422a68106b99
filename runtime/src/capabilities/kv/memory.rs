//! [`MemoryKv`], the default store behind `kv`: per sidecar, in memory,
//! bounded, expiring by the store's clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{KvError, KvFuture, KvLimits, KvStore};
use crate::capabilities::Clock;

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
fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| KvError::Other("the entry does not hold an integer".into()))
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
