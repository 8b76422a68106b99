//! What each per-request store holds: WASI (nothing granted), the host
//! capabilities' state, and the memory cap.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::clock::ClockState;
use crate::capabilities::crypto::CryptoState;
use crate::capabilities::kv::KvState;
use crate::capabilities::log::LogState;
use crate::capabilities::outbound::OutboundState;
use crate::wasm::v02::MessageState;

/// The data of one policy instance's `Store`.
pub struct HostState {
    pub(crate) wasi: LazyWasi,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) log: LogState,
    pub(crate) kv: KvState,
    pub(crate) clock: ClockState,
    pub(crate) crypto: CryptoState,
    pub(crate) outbound: OutboundState,
    /// The exchange, while a 0.2 hook is being called.
    pub(crate) message: MessageState,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get(),
            table: &mut self.table,
        }
    }
}

/// WASI as a policy sees it, built on its first use. Building it seeds
/// two random generators and boxes clocks: about 5% of a fresh call
/// (BENCHMARKS.md), paid by every request although most policies never
/// call WASI (their language's runtime links it, see FACTS.md).
pub(crate) struct LazyWasi {
    ctx: Option<WasiCtx>,
    /// Where the guest's stderr (panic messages) goes.
    stderr: MemoryOutputPipe,
}

impl LazyWasi {
    pub(crate) fn new(stderr: MemoryOutputPipe) -> Self {
        Self { ctx: None, stderr }
    }

    fn get(&mut self) -> &mut WasiCtx {
        let stderr = &self.stderr;
        self.ctx.get_or_insert_with(|| {
            // Deny by default, said out loud: no preopened directories, no
            // environment or arguments, no sockets, and no wall clock.
            WasiCtxBuilder::new()
                .stderr(stderr.clone())
                .wall_clock(EpochWallClock)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
        })
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
