//! The wasm policy sidecar: a reverse proxy that runs WebAssembly policies
//! (WIT contract in `wit/policy.wit`) on every request it forwards.
//!
//! Layout, in the order a request meets it:
//! - [`server`]: accept, limits, load shedding, the request's span;
//! - [`connections`]: how many client connections, in all and per address;
//! - `detect`: HTTP/1.1 or HTTP/2, by ALPN or the client's first bytes;
//! - [`framing`]: strict HTTP/1 framing on the client's connection;
//! - [`proxy`]: the request path top to bottom, bodies streamed;
//! - [`chain`]: a route's policies, request hooks in order, response hooks in
//!   reverse;
//! - [`wasm`], [`capabilities`], [`bindings`]: the policy host, from the
//!   `sidecar-runtime` crate (shared with the plugin test harness);
//! - [`balancer`]: a route's upstream endpoints: balancing, health, retries;
//! - [`upstream`]: the pooled HTTP client to the services behind the sidecar;
//! - [`outbound`]: the HTTP client behind policies' `outbound` calls;
//! - [`tls`]: rustls on the listener (certificate reloaded on change) and to
//!   `https://` upstreams;
//! - [`error`]: the one place errors become HTTP responses;
//! - [`grpc`]: the sidecar's own answers to gRPC calls, in gRPC's terms;
//! - [`config`]: the TOML config, validated with errors that name file and field;
//! - [`gateway`]: config + runtime → the routes and chains that serve requests;
//! - [`reload`], [`admin`]: drop-in policies (file watcher, SIGHUP, `POST /reload`)
//!   and the admin listener (health, readiness, metrics, a dashboard);
//! - [`metrics`]: the Prometheus metrics the request path records;
//! - [`shipping`]: policy log lines to stdout, rotating files and collectors
//!   (JSON lines or OTLP), off the request path;
//! - [`telemetry`]: OpenTelemetry traces (W3C trace context in, spans for
//!   the request, each policy hook and each upstream attempt, OTLP out).

pub mod admin;
pub mod balancer;
pub mod chain;
pub mod config;
pub mod connections;
pub mod convert;
mod detect;
pub mod error;
pub mod framing;
pub mod gateway;
pub mod grpc;
pub mod metrics;
pub mod outbound;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod shipping;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use sidecar_runtime::{bindings, capabilities, message, wasm};
