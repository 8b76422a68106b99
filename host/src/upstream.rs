//! The upstream layer: the services behind the sidecar.
//!
//! - [`client`]: the pooled HTTP(S) client, one pool per worker, and the
//!   [`UpstreamError`]s an attempt can end with;
//! - [`balancer`]: a route's endpoints ([`Upstreams`]): which one gets a
//!   request, retries, and the active health-check tasks;
//! - [`health`]: passive health (ejection after failures) and the probe;
//! - [`retry`]: the retry budget that keeps retries from multiplying an
//!   outage's load.
//!
//! The settings of all of them, filled by `config`, are here.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

mod balancer;
mod client;
mod health;
mod retry;

pub use self::balancer::{Upstreams, UpstreamsView, spawn_health_checks};
pub use self::client::{UpstreamClient, UpstreamError};

/// How a route picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight; ties in turn.
    LeastRequests,
}

/// A route's balancing, health and retry settings (`[[route]]`, `[route.health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceSettings {
    pub strategy: Strategy,
    /// Extra attempts for a request that got no answer (see [`balancer`]:
    /// any method when no connection was made, idempotent ones when the
    /// connection closed before an answer).
    pub retries: u32,
    /// Failures in a row that eject an endpoint.
    pub eject_after_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    pub eject: Duration,
    pub max_eject: Duration,
    pub health_check: Option<HealthCheck>,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            retries: 2,
            eject_after_failures: 3,
            eject: Duration::from_secs(10),
            max_eject: Duration::from_secs(300),
            health_check: None,
        }
    }
}

/// Active health checks: `GET {endpoint}{path}` every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    /// A probe without a 2xx answer within this time failed.
    pub timeout: Duration,
}

/// Retries allowed per route: `percent` of the requests of the last
/// ten seconds, plus `min_per_sec` per second of it (so a quiet route
/// can still retry). `[proxy]` settings, applied to each route on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetSettings {
    pub percent: u32,
    pub min_per_sec: u32,
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        // Linkerd's defaults.
        Self {
            percent: 20,
            min_per_sec: 10,
        }
    }
}

/// A poisoned lock's data is still consistent here: every update is one
/// assignment or counter step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
