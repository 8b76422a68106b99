//! The retry budget: retries allowed per route as a share of its recent
//! requests (Linkerd's and Envoy's bound), so an outage's retries cannot
//! multiply its load.

use std::sync::Mutex;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use super::{RetryBudgetSettings, lock};

/// Bounds retries: `percent` of the requests seen in the last
/// ten seconds plus `min_per_sec` for each of them.
#[derive(Debug)]
pub(super) struct RetryBudget {
    settings: RetryBudgetSettings,
    window: Mutex<Window>,
}

/// The window the budget counts over, in one-second buckets.
#[cfg(test)]
pub(super) const BUDGET_WINDOW: Duration = Duration::from_secs(BUCKETS as u64);
const BUCKETS: usize = 10;

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Seconds since `start` of the newest bucket.
    second: u64,
    /// (requests, retries) per second, a ring indexed by `second % BUCKETS`.
    buckets: [(u64, u64); BUCKETS],
}

impl Window {
    /// Moves to `now`'s second, emptying the buckets that fell out.
    fn advance(&mut self, now: Instant) -> &mut (u64, u64) {
        let second = now.saturating_duration_since(self.start).as_secs();
        let stale = second.saturating_sub(self.second).min(BUCKETS as u64);
        for k in 1..=stale {
            self.buckets[((self.second + k) % BUCKETS as u64) as usize] = (0, 0);
        }
        self.second = self.second.max(second);
        &mut self.buckets[(self.second % BUCKETS as u64) as usize]
    }
}

impl RetryBudget {
    pub(super) fn new(settings: RetryBudgetSettings, now: Instant) -> Self {
        Self {
            settings,
            window: Mutex::new(Window {
                start: now,
                second: 0,
                buckets: [(0, 0); BUCKETS],
            }),
        }
    }

    pub(super) fn deposit(&self, now: Instant) {
        lock(&self.window).advance(now).0 += 1;
    }

    /// Takes one retry if the budget has one.
    pub(super) fn withdraw(&self, now: Instant) -> bool {
        let mut window = lock(&self.window);
        window.advance(now);
        let (requests, retries) = window
            .buckets
            .iter()
            .fold((0, 0), |(q, r), (bq, br)| (q + bq, r + br));
        let floor = u64::from(self.settings.min_per_sec) * BUCKETS as u64;
        // retries < floor + requests × percent / 100, without rounding.
        if retries * 100 < floor * 100 + requests * u64::from(self.settings.percent) {
            window.advance(now).1 += 1;
            true
        } else {
            false
        }
    }
}
