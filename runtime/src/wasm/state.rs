//! What each per-request store holds: WASI (nothing granted), the host
//! capabilities' state, and the memory cap.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::clock::ClockState;
use crate::capabilities::kv::KvState;
use crate::capabilities::log::LogState;
use crate::wasm::v02::MessageState;

/// The data of one policy instance's `Store`.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) log: LogState,
    pub(crate) kv: KvState,
    pub(crate) clock: ClockState,
    /// The exchange, while a 0.2 hook is being called.
    pub(crate) message: MessageState,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past a cap, and remembers that it did, so the
/// resulting trap is reported as "memory cap" rather than a generic trap.
pub(crate) struct MemoryCap {
    pub(crate) max_bytes: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            // An error traps at once, instead of letting the guest's
            // allocator fail in some less obvious way.
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} bytes reached (wanted {desired})",
                self.max_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// WASI's wall clock as a policy sees it: frozen at the Unix epoch. The time
/// of day is granted through the `clock` capability only (which the plugin
/// harness controls, so TTL tests need no sleeping); WASI's own wall clock
/// would be an ungranted side door. WASI's monotonic clock stays real: it
/// tells no date, and language runtimes need it for their own timeouts.
pub(crate) struct EpochWallClock;

impl HostWallClock for EpochWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
