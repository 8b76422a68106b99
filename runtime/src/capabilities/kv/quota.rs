//! The bounds of `kv`: what one store holds ([`KvLimits`], every backend
//! checks them) and what one request may do with it ([`KvQuota`]).

use super::KvError;

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

/// What one request may still do with the store. A policy that calls the
/// store in a tight loop, or moves huge values again and again, is stopped
/// here (a trap, reported as [`KvQuotaExceeded`]) long before it could slow
/// the store for everyone else; the epoch deadline alone would let it make
/// millions of calls.
#[derive(Debug, Clone, Copy)]
pub(super) struct KvQuota {
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
    pub(super) fn new(max_ops: u32, max_bytes: usize) -> Self {
        Self {
            max_ops,
            max_bytes,
            ops: 0,
            bytes: 0,
        }
    }

    /// A new request starts with the whole quota.
    pub(super) fn reset(&mut self) {
        self.ops = 0;
        self.bytes = 0;
    }

    /// Counts `ops` operations moving `bytes`; an error once over either
    /// bound.
    pub(super) fn charge(&mut self, ops: u32, bytes: usize) -> wasmtime::Result<()> {
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
