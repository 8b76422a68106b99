//! The Redis backend of the `kv` capability: one store shared by every
//! sidecar replica pointed at the same Redis, with Redis's native TTLs.
//!
//! Redis is a cache here, never a dependency of a request: every operation is
//! bounded by a short timeout, and when Redis is slow, down or refuses, `get`
//! is a miss, `set` an [`KvError::Other`] (the cache policy logs it and goes
//! on) and `delete` false. After a connection failure the store does not try
//! again for [`RETRY_AFTER`], so an outage costs requests nothing; a warning
//! goes to the sidecar's log at most once per [`WARN_EVERY`].
//!
//! Keys are `{key_prefix}{policy}:{key}`: policy names have no `:`, so one
//! policy cannot reach another's keys, and the prefix keeps the sidecars'
//! keys apart from anything else in the same Redis.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{KvError, KvFuture, KvLimits, KvStore};

/// After a connection error or a timeout, operations answer "unavailable" at
/// once for this long instead of waiting on Redis again.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);

/// At most one warning about an unavailable Redis per this interval.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// TTLs above this (about 285 years) are stored without expiry: Redis refuses
/// a `PX` that overflows its clock.
const MAX_TTL_MS: u128 = 1 << 53;

/// Where the store is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Bound on one operation, connecting included. Keep it below the
    /// deadline of the policies that use `kv`: the wait counts against it.
    pub timeout: Duration,
    /// Put before every key (`{key_prefix}{policy}:{key}`).
    pub key_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            timeout: Duration::from_millis(20),
            key_prefix: "sidecar:".to_owned(),
        }
    }
}

/// Checks that `url` is a Redis URL this build can connect to, without
/// connecting.
///
/// # Errors
/// Why the URL is refused.
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A [`KvStore`] on Redis. Connects on first use (inside the tokio runtime)
/// and reconnects by itself after Redis comes back.
pub struct RedisKv {
    client: redis::Client,
    /// Made on first use: the connection manager needs a tokio runtime.
    manager: OnceLock<Result<ConnectionManager, String>>,
    settings: RedisSettings,
    limits: KvLimits,
    health: Health,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("settings", &self.settings)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RedisKv {
    /// A store on the Redis at `settings.url`; does not connect yet.
    /// `limits.max_entries` does not apply (Redis's `maxmemory` bounds it).
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(settings: RedisSettings, limits: KvLimits) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            manager: OnceLock::new(),
            settings,
            limits,
            health: Health::new(),
        })
    }

    fn key(&self, namespace: &str, key: &str) -> String {
        format!("{}{namespace}:{key}", self.settings.key_prefix)
    }

    fn manager(&self) -> Result<ConnectionManager, String> {
        let timeout = self.settings.timeout;
        self.manager
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    // A connection attempt may take longer than one
                    // operation's budget: it goes on in the background
                    // while operations miss.
                    .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
                    .set_response_timeout(Some(timeout))
                    // Fail fast while Redis is down; the next operation
                    // after `RETRY_AFTER` starts a new attempt.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Runs `cmd` within the timeout. An error says what failed; it has
    /// been counted (and maybe logged) already.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, String> {
        if !self.health.may_try() {
            return Err("unavailable (waiting before the next attempt)".to_owned());
        }
        let mut conn = match self.manager() {
            Ok(conn) => conn,
            Err(e) => return Err(self.health.failed(format!("cannot connect: {e}"), true)),
        };
        match tokio::time::timeout(self.settings.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.health.succeeded();
                Ok(value)
            }
            Ok(Err(e)) => {
                let unreachable = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error();
                Err(self.health.failed(e.to_string(), unreachable))
            }
            Err(_) => Err(self.health.failed(
                format!("no answer within {} ms", self.settings.timeout.as_millis()),
                true,
            )),
        }
    }
}

impl KvStore for RedisKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.key(namespace, key));
            self.run::<Option<Vec<u8>>>(cmd).await.ok().flatten()
        })
    }

    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            self.limits.check(key, &value)?;
            let full_key = self.key(namespace, key);
            // Whole milliseconds, rounded up: a TTL never ends early.
            let ttl_ms = ttl.map(|t| t.as_micros().div_ceil(1000));
            let cmd = match ttl_ms {
                // Expired on arrival, as in the memory store.
                Some(0) => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(full_key);
                    cmd
                }
                Some(ms) if ms <= MAX_TTL_MS => {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(full_key).arg(value).arg("PX").arg(ms as u64);
                    cmd
                }
                _ => {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(full_key).arg(value);
                    cmd
                }
            };
            self.run::<redis::Value>(cmd)
                .await
                .map(drop)
                .map_err(|e| KvError::Other(format!("store unavailable: {e}")))
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(self.key(namespace, key));
            self.run::<i64>(cmd).await.is_ok_and(|n| n > 0)
        })
    }

    fn increment<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            self.limits.check(key, b"")?;
            // One script, so the count and its window's expiry are set in
            // one step: INCRBY, then PEXPIRE only if the key has none yet
            // (it was just created), as the memory store does.
            let ttl_ms = ttl.map_or(0, |t| t.as_micros().div_ceil(1000).min(MAX_TTL_MS));
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(INCREMENT_SCRIPT)
                .arg(1)
                .arg(self.key(namespace, key))
                .arg(delta)
                .arg(ttl_ms as u64);
            self.run::<i64>(cmd).await.map_err(|e| {
                if e.contains("not an integer") || e.contains("overflow") {
                    KvError::Other("the entry does not hold an integer, or would overflow".into())
                } else {
                    KvError::Other(format!("store unavailable: {e}"))
                }
            })
        })
    }
}

/// `increment` on Redis: INCRBY, and the TTL for a counter that has none.
const INCREMENT_SCRIPT: &str = "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) \
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then \
redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return v";

/// Whether Redis answers, when to try again, and when a warning was last
/// logged. Lock-free: every request goes through it.
struct Health {
    start: Instant,
    /// Milliseconds since `start` before which no operation is tried.
    retry_at: AtomicU64,
    /// Milliseconds since `start` of the last warning; `u64::MAX` for never.
    warned_at: AtomicU64,
    /// Failures not logged since the last warning.
    unlogged: AtomicU64,
    down: AtomicBool,
}

impl Health {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            retry_at: AtomicU64::new(0),
            warned_at: AtomicU64::new(u64::MAX),
            unlogged: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn may_try(&self) -> bool {
        self.now_ms() >= self.retry_at.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("kv: redis answers again");
        }
    }

    /// Counts a failure, logs it if no warning went out lately, and returns
    /// `what`. `unreachable` failures (connection, timeout) also hold off
    /// further attempts for [`RETRY_AFTER`].
    fn failed(&self, what: String, unreachable: bool) -> String {
        let now = self.now_ms();
        if unreachable {
            self.down.store(true, Ordering::Relaxed);
            self.retry_at
                .store(now + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        }
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let also = self.unlogged.swap(0, Ordering::Relaxed);
            if unreachable {
                tracing::warn!(
                    failures_not_logged = also,
                    "kv: redis: {what}; lookups miss and writes are dropped until it answers"
                );
            } else {
                tracing::warn!(failures_not_logged = also, "kv: redis refused: {what}");
            }
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        what
    }
}

#[cfg(test)]
mod tests;
