//! The `clock` capability: wall-clock time in microseconds.
//!
//! The store's TTLs use the same [`Clock`], so a test that advances a
//! [`ManualClock`] expires cache entries without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::v01::clock as wit01;
use crate::bindings::v02::clock::{self as wit};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

/// A clock that only moves when told to (tests, the plugin harness).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_micros: u64) -> Self {
        Self(AtomicU64::new(now_micros))
    }

    pub fn set_micros(&self, now_micros: u64) {
        self.0.store(now_micros, Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Per-instance state of the capability.
pub struct ClockState {
    clock: Arc<dyn Clock>,
}

impl ClockState {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock }
    }
}

impl wit::Host for ClockState {
    fn now_micros(&mut self) -> u64 {
        self.clock.now_micros()
    }
}

impl wit01::Host for ClockState {
    fn now_micros(&mut self) -> u64 {
        self.clock.now_micros()
    }
}

/// Links both contracts' `clock`, on the context `get` finds in a store's
/// data.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ClockState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<ClockState>>(linker, get)?;
    wit01::add_to_linker::<T, HasSelf<ClockState>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_micros(), 1_000);
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.now_micros(), 3_000);
        clock.set_micros(7);
        assert_eq!(clock.now_micros(), 7);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_micros() > 1_577_836_800_000_000);
    }
}
