//! The one place where the host's bindings to `wit/policy.wit` are generated.
//!
//! Everything else in the host uses the types re-exported here, so a change of
//! the contract shows up as compile errors in exactly the code that must change.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    // Hooks are called with `call_async`: the guest's WASI streams (a panic
    // message on stderr, a stray println!) are async in wasmtime-wasi, and a
    // sync call from inside the tokio runtime would have to block on them.
    // `kv` is async too: with the Redis backend a call waits on the network,
    // and it must suspend the policy's fiber, not block a tokio worker.
    // `kv` is trappable: a call beyond the request's quota traps the policy.
    // `log` and `clock` stay sync: they never wait.
    imports: { "sidecar:policy/kv": async | trappable },
    exports: { default: async },
});

pub use exports::sidecar::policy::handler::{Decision, Request, Response};
pub use sidecar::policy::types::Header;
pub use sidecar::policy::{clock, kv, log};

/// The contract version this host implements; `policy check` reports it.
pub const CONTRACT: &str = "sidecar:policy@0.1.0";
