//! `configure` once per load, not once per request.
//!
//! The component is instrumented by Wizer (it gains exports that read its
//! memories and globals), instantiated, configured with the policy's config,
//! and snapshotted: the result is a component whose data segments and
//! globals are the configured state. Every request's fresh instance starts
//! from it, so nothing is parsed per request, and still nothing one request
//! does can reach another.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::policy::{contract_of, pre_instantiate_v02};
use super::state::HostState;
use super::{Hooks, Runtime, v02};

/// A configured policy, as a new component.
pub(super) struct Snapshot {
    pub(super) wasm: Vec<u8>,
    pub(super) hooks: Hooks,
}

pub(super) enum Error {
    /// `configure` answered `err(message)`.
    Refused(String),
    /// `configure` trapped (or hit a limit).
    Failed(wasmtime::Error),
    /// The component cannot be snapshotted; it still works configured per
    /// instance.
    Unsupported(anyhow::Error),
    /// It is not a contract 0.2 policy (nothing was configured).
    NotV02,
}

/// Where the snapshot of `wasm` configured with `config` is cached. The
/// snapshot depends on nothing else: `configure` sees only its config (a
/// `configure` that read the clock or the key-value store would be
/// snapshotted with what it read on the first load).
pub(super) fn cache_key(wasm: &[u8], config: &str) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"sidecar configured snapshot 1\0");
    h.update(Sha256::digest(wasm));
    h.update(config.as_bytes());
    h.finalize().into()
}

/// How a cached snapshot's hooks are stored beside it.
pub(super) fn encode_hooks(hooks: Hooks) -> Vec<u8> {
    vec![u8::from(hooks.on_response), u8::from(hooks.on_complete)]
}

pub(super) fn decode_hooks(meta: &[u8]) -> Option<Hooks> {
    match meta {
        [r @ (0 | 1), c @ (0 | 1)] => Some(Hooks {
            on_response: *r == 1,
            on_complete: *c == 1,
        }),
        _ => None,
    }
}

/// Configures the component at `wasm` once and snapshots it.
pub(super) async fn configure_once(
    runtime: &Arc<Runtime>,
    wasm: &[u8],
    config: &str,
    new_store: impl Fn() -> Store<HostState>,
) -> Result<Snapshot, Error> {
    let unsupported = |e: wasmtime::Error| Error::Unsupported(anyhow::Error::from(e));
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument_component(wasm).map_err(unsupported)?;
    // Cached like any component: a reload with another config (or the
    // same policy under another name) instruments the same bytes.
    let (component, _) = runtime
        .compile_cached_once(&instrumented)
        .map_err(Error::Unsupported)?;
    // The instrumented component exports what the original does: its
    // contract is known without compiling the original too.
    if !matches!(
        contract_of(runtime.engine(), &component),
        Ok(super::Contract::V02)
    ) {
        return Err(Error::NotV02);
    }
    let pre = pre_instantiate_v02(runtime.linker(), &component).map_err(Error::Unsupported)?;
    let mut store = new_store();
    let instance = pre
        .instance_pre()
        .instantiate_async(&mut store)
        .await
        .map_err(Error::Failed)?;
    let bindings = crate::bindings::v02::Policy::new(&mut store, &instance).map_err(unsupported)?;
    let hooks = bindings
        .sidecar_policy_handler()
        .call_configure(&mut store, config)
        .await
        .map_err(Error::Failed)?
        .map_err(Error::Refused)?;
    // Reading the state back is the host's work, not the policy's.
    store.set_epoch_deadline(u64::MAX / 2);
    let mut state = State {
        store: &mut store,
        instance,
        failed: None,
    };
    let snapshot = wizer
        .snapshot_component(&cx, &mut state)
        .await
        .map_err(unsupported)?;
    if let Some(e) = state.failed {
        return Err(Error::Unsupported(e));
    }
    Ok(Snapshot {
        wasm: snapshot,
        hooks: v02::hooks(hooks),
    })
}

/// Wizer's view of the configured instance: calls to the accessors its
/// instrumentation exported. A failed call is remembered (the trait has no
/// error path) and fails the snapshot.
struct State<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    failed: Option<anyhow::Error>,
}

impl State<'_> {
    fn export(&mut self, instance: &str, func: &str) -> anyhow::Result<ComponentExportIndex> {
        let parent = self
            .instance
            .get_export_index(&mut *self.store, None, instance)
            .ok_or_else(|| anyhow::anyhow!("no export `{instance}`"))?;
        self.instance
            .get_export_index(&mut *self.store, Some(&parent), func)
            .ok_or_else(|| anyhow::anyhow!("no export `{instance}#{func}`"))
    }

    async fn call<R, O>(
        &mut self,
        instance: &str,
        func: &str,
        read: impl FnOnce(&Store<HostState>, R) -> O,
    ) -> Option<O>
    where
        R: Lift + Send + Sync + 'static,
    {
        if self.failed.is_some() {
            return None;
        }
        let result = async {
            let index = self.export(instance, func)?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)
                .map_err(anyhow::Error::from)?;
            let (value,) = typed
                .call_async(&mut *self.store, ())
                .await
                .map_err(anyhow::Error::from)?;
            anyhow::Ok(read(self.store, value))
        }
        .await;
        match result {
            Ok(out) => Some(out),
            Err(e) => {
                self.failed = Some(e.context(format!("reading `{instance}#{func}`")));
                None
            }
        }
    }
}

impl ComponentInstanceState for State<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let mut contents = Some(contents);
        self.call(instance, func, |store, list: WasmList<u8>| {
            if let Some(f) = contents.take() {
                f(list.as_le_slice(store));
            }
        })
        .await;
        if let Some(f) = contents {
            // The call failed (remembered): wizer still wants bytes.
            f(&[]);
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, v: i32| v).await.unwrap_or(0)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, v: i64| v).await.unwrap_or(0)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, v: f32| v.to_bits())
            .await
            .unwrap_or(0)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, v: f64| v.to_bits())
            .await
            .unwrap_or(0)
    }
}
