//! What each per-request store holds: WASI (nothing granted), each host
//! capability's per-instance context, the exchange of a 0.2 hook call, and
//! the memory cap.
//!
//! The one place the capabilities meet the store: a new capability adds its
//! context here (a field, its initial value in [`HostState::new`]) and one
//! line to [`HostState::add_capabilities_to_linker`].

use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::policy::PolicySpec;
use super::v02::MessageState;
use crate::capabilities::clock::{self, ClockState};
use crate::capabilities::crypto::{self, CryptoState};
use crate::capabilities::kv::{self, KvState};
use crate::capabilities::log::{self, LogState};
use crate::capabilities::outbound::{self, OutboundState, OutboundView};
use crate::capabilities::{Caller, Services};

/// The data of one policy instance's `Store`.
pub struct HostState {
    pub(crate) wasi: LazyWasi,
    /// `wasi:http`'s types, for runtimes that import them; sends nothing.
    http: NoHttp,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    log: LogState,
    kv: KvState,
    clock: ClockState,
    crypto: CryptoState,
    outbound: OutboundState,
    /// The exchange, while a 0.2 hook is being called.
    pub(crate) message: MessageState,
}

impl HostState {
    /// A new instance's data: the capabilities on `services`, as `spec`
    /// grants and bounds them; the guest's stderr goes to `stderr`.
    pub(crate) fn new(
        services: &Services,
        spec: &PolicySpec,
        caller: Caller,
        stderr: MemoryOutputPipe,
    ) -> Self {
        Self {
            wasi: LazyWasi::new(stderr),
            http: NoHttp::default(),
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: spec.limits.memory_bytes,
                hit: false,
            },
            log: LogState::new(services.log.clone(), services.clock.clone(), caller.clone()),
            kv: KvState::new(
                services.kv.clone(),
                &spec.name,
                spec.limits.kv_ops,
                spec.limits.kv_bytes,
            ),
            clock: ClockState::new(services.clock.clone()),
            crypto: CryptoState,
            outbound: OutboundState::new(
                services.outbound.clone(),
                spec.outbound.clone(),
                caller,
                spec.limits.deadline,
            ),
            message: MessageState::default(),
        }
    }

    /// Links every capability, each on its context in this data. A
    /// component that does not import a capability never sees it: linking
    /// only makes it available.
    ///
    /// # Errors
    /// Fails if an interface is linked twice (a programming error).
    pub(crate) fn add_capabilities_to_linker(linker: &mut Linker<Self>) -> wasmtime::Result<()> {
        log::add_to_linker(linker, |s| &mut s.log)?;
        kv::add_to_linker(linker, |s| &mut s.kv)?;
        clock::add_to_linker(linker, |s| &mut s.clock)?;
        crypto::add_to_linker(linker, |s| &mut s.crypto)?;
        outbound::add_to_linker(linker, |s| {
            OutboundView::new(&mut s.outbound, s.message.io_credit())
        })
    }

    /// A reused instance serves another request, for `caller`.
    pub(crate) fn set_caller(&mut self, caller: Caller) {
        self.log.set_caller(caller.clone());
        self.outbound.set_caller(caller);
    }

    /// A request starts: each per-request quota is whole again (on a reused
    /// instance too).
    pub(crate) fn start_request(&mut self) {
        self.kv.start_request();
        self.outbound.start_request();
    }

    /// A hook call starts now, with its whole deadline.
    pub(crate) fn start_call(&mut self) {
        self.message.io_credit_ticks = 0;
        self.outbound.start_call();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get(),
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// `wasi:http` as a policy sees it: the types (headers, requests,
/// responses, bodies) work, as a language runtime's `fetch` or `Headers`
/// needs them to, but `outgoing-handler.handle` refuses every request with
/// `HTTP-request-denied`. Default builds of some toolchains import these
/// interfaces whether or not the policy calls out (componentize-js links
/// its `fetch`); a policy that does call out uses the `outbound` capability,
/// which the config grants per origin.
#[derive(Default)]
struct NoHttp {
    ctx: WasiHttpCtx,
    hooks: RefuseRequests,
}

#[derive(Default)]
struct RefuseRequests;

impl WasiHttpHooks for RefuseRequests {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(std::future::ready(Err(
            wasmtime_wasi_http::Error::HttpRequestDenied,
        )))
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
