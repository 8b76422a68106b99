//! Integration tests of the sidecar: a real listener, real policies built
//! from `plugins/` (see the `test-policies` crate), and a fake upstream.

mod admin;
mod balancing;
mod cache;
mod chain;
mod dashboard;
mod idp;
mod js_policy;
mod large_policies;
mod limits;
mod loading;
mod logs;
mod protocols;
mod proxy;
mod redis;
mod reload;
mod server;
mod shipping;
mod soak;
mod streaming;
mod support;
mod telemetry;
mod tls;
mod upstream_faults;
