//! The WebAssembly side of the sidecar: one [`Runtime`] (engine + linker),
//! policies compiled and pre-instantiated once ([`Policy`]), and a fresh
//! store and instance per request ([`PolicyInstance`]).
//!
//! Why a fresh instance per request: a policy's globals cannot carry one
//! user's data into another user's request, and a trap poisons only the
//! request that caused it. The pooling allocator and `InstancePre` keep that
//! in the tens of microseconds.

mod cache;
mod policy;
mod snapshot;
mod state;
mod v01;
mod v02;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use self::cache::{
    DEFAULT_MAX_DISK_BYTES, Source as CompileSource, default_cache_dir, sha256_hex,
};
pub use self::policy::{
    Configured, Contract, FailureMode, HookError, Hooks, Instances, MessageError, NotAComponent,
    Policy, PolicyError, PolicyInstance, PolicyLimits, PolicySpec, REUSE_MAX_USES, Verdict,
};
pub use self::state::HostState;
use crate::capabilities::Services;
/// A compiled component, as returned by [`Runtime::compile`].
pub use wasmtime::component::Component;

/// How often the epoch advances. Deadlines are whole ticks, so this is
/// their resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Bytes of each pooled memory and table reset in place when a slot is
/// freed, rather than given back to the kernel.
const KEEP_RESIDENT_BYTES: usize = 1024 * 1024;

/// Engine-wide settings. Per-policy limits must fit inside these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Hard ceiling on one instance's linear memory (per-policy caps are lower
    /// or equal). The pool reserves address space for this much per memory.
    pub max_memory_bytes: usize,
    /// Instances alive at once across all requests: concurrent requests ×
    /// policies per route. Beyond it a request fails with 503, never queues.
    pub max_instances: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 * 1024 * 1024,
            max_instances: 1_000,
        }
    }
}

/// A wasmtime engine (pooling allocator, epoch interruption) and the thread
/// that advances its epoch. Several [`Runtime`]s may share one, and then
/// share compiled components too (the plugin harness does, so each test does
/// not recompile the component).
pub struct SharedEngine {
    engine: Engine,
    settings: EngineSettings,
    /// One ticker per engine: two would make deadlines twice as short.
    _ticker: EpochTicker,
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEngine")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SharedEngine {
    /// # Errors
    /// Fails if the engine cannot be created with these settings (for
    /// example, the address space for the pool cannot be reserved).
    pub fn new(settings: EngineSettings) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(settings.max_instances)
            // A Rust wasip2 component is a handful of core instances with
            // one memory and a few tables.
            .total_core_instances(settings.max_instances.saturating_mul(4))
            .total_memories(settings.max_instances.saturating_mul(2))
            .total_tables(settings.max_instances.saturating_mul(4))
            .max_memories_per_component(2)
            // One fiber stack per instance in flight (async calls run on one).
            .total_stacks(settings.max_instances)
            .max_memory_size(settings.max_memory_bytes);
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            // Reset a freed slot by rewriting only the pages the instance
            // touched (found with the PAGEMAP_SCAN ioctl, Linux 6.7+)
            // instead of an `madvise` per memory and table: a per-request
            // instance dirties a few pages, and those syscalls were half the
            // cost of a call (BENCHMARKS.md). Without the ioctl, keeping
            // memory resident would mean a memset of all of it: keep madvise.
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
                .table_keep_resident(KEEP_RESIDENT_BYTES);
        }
        let mut config = code_config(settings);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Arc::new(Self {
            engine,
            settings,
            _ticker: ticker,
        }))
    }
}

/// The settings compiled code depends on, shared by the serving engine and
/// the short-lived compile engines (their code must be interchangeable).
fn code_config(settings: EngineSettings) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // Reserve only what a memory may reach: the pool then fits
        // thousands of slots in the address space. Bounds checks are
        // explicit above the reservation, which is a small price.
        .memory_reservation(settings.max_memory_bytes as u64)
        .memory_reservation_for_growth(0)
        .max_wasm_stack(512 * 1024)
        // The fiber a call runs on: the wasm stack plus room for host calls.
        .async_stack_size(1024 * 1024);
    config
}

/// Compiles and links policies. Cheap to share (`Arc`); one per sidecar.
pub struct Runtime {
    shared: Arc<SharedEngine>,
    linker: Linker<HostState>,
    services: Services,
    cache: cache::CompileCache,
    /// Where compiles run once requests are served (wasmtime compiles a
    /// component's functions in parallel on the pool it is called from): a
    /// pool of its own, one thread short of the cores, so a large policy
    /// compiling during a reload leaves the request threads a core. Before
    /// that (start-up, the CLI, tests), compiles use every core. (A lower
    /// priority as well was tried: under saturating load it starved a
    /// small policy's reload past two seconds, for no gain in latency.)
    compile_pool: rayon::ThreadPool,
    serving: AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds an engine of its own and the linker with WASI p2 (everything
    /// denied) and the host capabilities.
    ///
    /// # Errors
    /// As [`SharedEngine::new`].
    pub fn new(settings: EngineSettings, services: Services) -> anyhow::Result<Arc<Self>> {
        Self::with_engine(SharedEngine::new(settings)?, services)
    }

    /// A runtime on an existing engine, with its own host services.
    ///
    /// # Errors
    /// Fails if linking WASI or the capabilities fails (a programming error).
    pub fn with_engine(shared: Arc<SharedEngine>, services: Services) -> anyhow::Result<Arc<Self>> {
        Self::build(shared, services, None, DEFAULT_MAX_DISK_BYTES)
    }

    /// As [`Runtime::with_engine`], keeping compiled components and
    /// configured snapshots in `cache_dir` too (bounded as the sidecar's).
    ///
    /// # Errors
    /// As [`Runtime::with_engine`].
    pub fn with_engine_and_cache(
        shared: Arc<SharedEngine>,
        services: Services,
        cache_dir: PathBuf,
    ) -> anyhow::Result<Arc<Self>> {
        Self::build(shared, services, Some(cache_dir), DEFAULT_MAX_DISK_BYTES)
    }

    /// A runtime with its own engine that keeps compiled components (and
    /// configured snapshots) in `cache_dir` too, at most `max_disk_bytes` of
    /// them, so a restart with unchanged policies skips compiling.
    ///
    /// # Errors
    /// As [`SharedEngine::new`].
    pub fn with_compile_cache(
        settings: EngineSettings,
        services: Services,
        cache_dir: Option<PathBuf>,
        max_disk_bytes: u64,
    ) -> anyhow::Result<Arc<Self>> {
        Self::build(
            SharedEngine::new(settings)?,
            services,
            cache_dir,
            max_disk_bytes,
        )
    }

    fn build(
        shared: Arc<SharedEngine>,
        services: Services,
        cache_dir: Option<PathBuf>,
        max_disk_bytes: u64,
    ) -> anyhow::Result<Arc<Self>> {
        let mut linker = Linker::new(&shared.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        HostState::add_capabilities_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking host capabilities")?;
        v02::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking the message types")?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let compile_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores.saturating_sub(1).max(1))
            .thread_name(|i| format!("wasm-compile-{i}"))
            .build()
            .context("starting the compile threads")?;
        Ok(Arc::new(Self {
            shared,
            linker,
            services,
            cache: cache::CompileCache::new(cache_dir, max_disk_bytes),
            compile_pool,
            serving: AtomicBool::new(false),
        }))
    }

    pub fn settings(&self) -> EngineSettings {
        self.shared.settings
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Compiles a component from a file.
    ///
    /// # Errors
    /// Fails, naming the file, if it cannot be read or is not a valid component.
    pub fn compile_file(&self, path: &Path) -> anyhow::Result<Component> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.compile(&bytes)
            .with_context(|| format!("{} is not a valid WebAssembly component", path.display()))
    }

    /// Compiles a component, or takes it from the compile cache (memory, then
    /// disk when the runtime has a cache directory).
    ///
    /// # Errors
    /// Fails if the bytes are not a valid component for this engine.
    pub fn compile_cached(&self, bytes: &[u8]) -> anyhow::Result<(Component, CompileSource)> {
        self.cache
            .get_or_compile(self.engine(), bytes, cache::Keep::InMemory, |b| {
                self.compile(b)
            })
    }

    /// As [`Runtime::compile_cached`], for a component used once (the
    /// instrumented copy a snapshot is taken from): kept on disk only.
    pub(crate) fn compile_cached_once(
        &self,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, CompileSource)> {
        self.cache
            .get_or_compile(self.engine(), bytes, cache::Keep::OnDiskOnly, |b| {
                self.compile(b)
            })
    }

    /// Compiles a component from bytes (a `.wasm` component binary), on the
    /// compile threads. Blocks the caller until done: call it off the
    /// request path.
    ///
    /// # Errors
    /// Fails if the bytes are not a valid component for this engine.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        // On an engine of its own, dropped when done: the compiler keeps
        // scratch space per thread for as long as its engine lives (tens of
        // MB after a large policy), which the serving engine never needs.
        let compile = || -> anyhow::Result<Vec<u8>> {
            let engine =
                Engine::new(&code_config(self.shared.settings)).map_err(anyhow::Error::from)?;
            engine
                .precompile_component(bytes)
                .map_err(anyhow::Error::from)
        };
        let artifact = if self.serving.load(Ordering::Relaxed) {
            self.compile_pool.install(compile)
        } else {
            compile()
        }?;
        cache::deserialize_compiled(self.engine(), &artifact)
    }

    /// Requests are being served from now on: compiles keep to the
    /// bounded compile pool.
    pub fn serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Starts a period of loads: once what they built is in service,
    /// [`Runtime::forget_compiled_unused_since`] with this mark lets go of
    /// every compiled component they did not use.
    pub fn mark_loads(&self) -> u64 {
        self.cache.mark()
    }

    /// Drops the compile cache's in-memory entries not used since `mark`
    /// (the disk cache keeps them). Code still in use by a policy lives
    /// until its last user is gone.
    pub fn forget_compiled_unused_since(&self, mark: u64) {
        self.cache.forget_unused_since(mark);
    }

    /// Compiles, links and pre-instantiates a policy, configures it (once,
    /// snapshotted, for contract 0.2; validating the config for 0.1).
    /// `wasm` is the component's file, `component` its compiled form.
    ///
    /// # Errors
    /// Fails if the component does not implement a contract this host
    /// knows (the message names the missing or mismatched item), imports
    /// something the host does not grant, refuses its config, or traps.
    pub async fn load(
        self: &Arc<Self>,
        spec: PolicySpec,
        component: &Component,
        wasm: &[u8],
    ) -> anyhow::Result<Arc<Policy>> {
        Policy::new(self.clone(), spec, Some(component), wasm)
            .await
            .map(|(policy, _)| policy)
    }

    /// As [`Runtime::load`] from the `.wasm` alone: a 0.2 policy whose
    /// configured snapshot is in the compile cache (same component, same
    /// config) is neither compiled nor configured again. Says where the
    /// code came from. Blocks on compiles: call it off the request path.
    ///
    /// # Errors
    /// As [`Runtime::load`], and if the bytes are not a valid component.
    pub async fn load_wasm(
        self: &Arc<Self>,
        spec: PolicySpec,
        wasm: &[u8],
    ) -> anyhow::Result<(Arc<Policy>, CompileSource)> {
        Policy::new(self.clone(), spec, None, wasm).await
    }

    /// What a component imports and exports, by interface name
    /// (`sidecar:policy/log@0.1.0`, `wasi:io/streams@0.2.6`, ...).
    pub fn describe(&self, component: &Component) -> Description {
        let ty = component.component_type();
        Description {
            imports: ty
                .imports(self.engine())
                .map(|(name, _)| name.to_owned())
                .collect(),
            exports: ty
                .exports(self.engine())
                .map(|(name, _)| name.to_owned())
                .collect(),
        }
    }

    /// Checks that a component implements a contract this host knows and
    /// imports nothing the sidecar does not provide, without calling it.
    ///
    /// # Errors
    /// A message naming the missing export or the unresolvable import.
    pub fn validate(&self, component: &Component) -> anyhow::Result<Contract> {
        policy::validate(&self.linker, self.engine(), component)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    pub(crate) fn cache(&self) -> &cache::CompileCache {
        &self.cache
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }
}

/// The interfaces a component imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Advances the engine's epoch on a background thread, so a policy stuck in
/// a loop hits its deadline. Stops when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
