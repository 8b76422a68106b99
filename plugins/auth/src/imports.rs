//! What the policy asks of the host, as a trait: the component implements
//! it with the contract's imports (`component`), the unit tests with a fake,
//! so the key-set logic runs natively.

use crate::keys::{Alg, KeyMaterial};

/// A response to an outbound `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why an outbound call gave no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The host refused the call: the origin is not granted
    /// (`allow_outbound`), or the request's quota of calls is spent.
    Denied(String),
    /// Timed out, too large, or the connection failed; the text says which.
    Failed(String),
}

/// A typed value of a log field.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Str(String),
    Int(i64),
}

/// The host capabilities the policy uses.
pub trait Imports {
    /// Wall-clock time, microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
    /// Whether `sig` is `key`'s signature of `message` under `alg`.
    fn verify(&self, alg: Alg, key: &KeyMaterial, message: &[u8], sig: &[u8]) -> bool;
    fn kv_get(&self, key: &str) -> Option<Vec<u8>>;
    /// # Errors
    /// The host's reason for refusing the write.
    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String>;
    /// Adds `delta` in one step; `ttl_ms` applies when the entry is created.
    ///
    /// # Errors
    /// The host's reason for refusing the write.
    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String>;
    /// `GET url`, with `cache-control: no-cache` when `fresh`.
    ///
    /// # Errors
    /// Why no response came.
    fn get(&self, url: &str, fresh: bool) -> Result<HttpResponse, FetchError>;
    fn warn(&self, message: &str, fields: &[(&str, Field)]);
}
