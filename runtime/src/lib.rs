//! The policy host shared by the sidecar and the plugin test harness, so a
//! policy under test runs on exactly the code that runs it in production.
//!
//! - [`bindings`]: the `bindgen!` of each contract (`wit/policy.wit`, 0.2,
//!   and the frozen `wit/0.1.0`);
//! - [`message`]: the exchange a chain works on, kept on the host: heads,
//!   and bodies that stream unless a policy asks to read them;
//! - [`wasm`]: the engine ([`wasm::Runtime`]: pooling allocator, epoch
//!   deadlines), compiled and pre-instantiated policies ([`wasm::Policy`]),
//!   and a fresh store and instance per request ([`wasm::PolicyInstance`]);
//! - [`capabilities`]: what a policy may import (log, kv, clock), each behind
//!   a trait so production, tests and the harness plug in their own.

pub mod bindings;
pub mod capabilities;
pub mod message;
pub mod wasm;
