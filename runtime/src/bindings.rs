//! The one place where the host's bindings to the contract are generated:
//! [`v02`] for `wit/policy.wit` (the current contract) and [`v01`] for the
//! frozen `wit/0.1.0/policy.wit`, so components built against it keep
//! loading.
//!
//! Everything else in the host uses the types re-exported here, so a change of
//! the contract shows up as compile errors in exactly the code that must change.

/// `sidecar:policy@0.2.1`: the message stays on the host (resources), bodies
/// and hooks are opt-in, `configure` runs once per load. Also loads 0.2.0
/// components: 0.2.1 only adds interfaces, and wasmtime matches a 0.2.0
/// import or export to its 0.2.1 definition (semver).
pub mod v02 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        // Hooks are called with `call_async`: the guest's WASI streams (a panic
        // message on stderr, a stray println!) are async in wasmtime-wasi, and
        // a sync call from inside the tokio runtime would have to block on them.
        // Reading a body waits on the network, and `kv` on Redis: both
        // suspend the policy's fiber, never block a tokio worker. `kv` is
        // trappable (a call beyond the request's quota traps the policy), and
        // so is reading a body (a body read that fails ends the call).
        // Everything else answers at once.
        imports: {
            "sidecar:policy/kv": async | trappable,
            "sidecar:policy/outbound": async,
            "sidecar:policy/types.[method]request.body": async | trappable,
            "sidecar:policy/types.[method]response.body": async | trappable,
        },
        exports: { default: async },
    });

    pub use exports::sidecar::policy::handler::{Completion, Decision, Hooks};
    pub use sidecar::policy::types::{Body, EditError, Header, Reply};
    pub use sidecar::policy::{clock, crypto, kv, log, outbound, types};

    /// The contract this module implements.
    pub const CONTRACT: &str = "sidecar:policy@0.2.1";

    /// The `handler` exports this module loads: every 0.2 version shipped.
    pub const HANDLERS: [&str; 2] = [
        "sidecar:policy/handler@0.2.1",
        "sidecar:policy/handler@0.2.0",
    ];
}

/// `sidecar:policy@0.1.0`: whole messages copied in as records; bodies
/// buffered; `configure` at the start of every instance.
pub mod v01 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "policy",
        imports: { "sidecar:policy/kv": async | trappable },
        exports: { default: async },
    });

    pub use exports::sidecar::policy::handler::{Decision, Request, Response};
    pub use sidecar::policy::types::Header;
    pub use sidecar::policy::{clock, kv, log};

    /// The contract this module implements.
    pub const CONTRACT: &str = "sidecar:policy@0.1.0";
}

/// The newest contract, what `policy new` targets.
pub const CONTRACT: &str = v02::CONTRACT;
