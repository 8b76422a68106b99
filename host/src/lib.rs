//! The wasm policy sidecar: a reverse proxy that runs WebAssembly policies
//! (WIT contract in `wit/policy.wit`) on every request it forwards.
//!
//! Layers, each importing only those below it (no cycle):
//! - [`config`] (top): the TOML file, validated into each layer's settings;
//!   read only by the lifecycle and `main`;
//! - [`admin`]: the admin listener (health, readiness, metrics, reload, a
//!   dashboard) over the lifecycle;
//! - `lifecycle` ([`Sidecar`]): start, serve, reload (drop-in policies),
//!   status;
//! - `listener`: worker threads, accept, connection limits, TLS handshake,
//!   HTTP/1.1 or HTTP/2, strict framing, drain;
//! - `proxy`: the request path top to bottom (admission, route, request
//!   hooks, upstream, response hooks in reverse, reply streamed, completion
//!   hooks), with `convert` (HTTP ↔ the contract's messages) and `grpc`;
//! - `routes` ([`Gateway`]): routes and their chains, built whole from
//!   settings; the prefix rule;
//! - `chain`: a route's policies run in order; `error`: the one place errors
//!   become HTTP responses;
//! - `upstream`: the pooled client, balancing, health, retry budget;
//! - `outbound`, [`shipping`], `telemetry`: the network behind policies'
//!   `outbound` calls, policy log lines to their sinks, OpenTelemetry
//!   traces;
//! - leaves: `tls`, `watch` (file watching for reloads and certificates),
//!   `batch` (queues drained off the request path), `http_client`,
//!   [`metrics`];
//! - the policy host itself — [`wasm`], [`capabilities`], [`message`],
//!   [`bindings`] — is the `sidecar-runtime` crate, shared with the plugin
//!   test harness.

mod admin;
mod batch;
mod chain;
pub mod config;
mod error;
mod http_client;
mod lifecycle;
mod listener;
mod metrics;
mod outbound;
mod proxy;
mod routes;
mod shipping;
mod telemetry;
mod tls;
mod upstream;
mod watch;

pub use admin::{Admin, router as admin_router};
pub use lifecycle::{ReloadStatus, Sidecar, watch_files};
pub use listener::raise_fd_limit;
pub use metrics::Metrics;
/// HTTP ↔ the contract's messages; public for the fuzz targets.
#[doc(hidden)]
pub use proxy::convert;
pub use routes::{Gateway, PolicyInfo, Route, Superseded};
pub use shipping::Shipping;
pub use sidecar_runtime::{bindings, capabilities, message, wasm};
pub use tls::{UpstreamTls, client_config};
pub use upstream::{UpstreamClient, UpstreamError};
