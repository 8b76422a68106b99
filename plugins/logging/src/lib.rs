//! `logging` policy: one structured `access` line per request, plus the
//! `/monitor` endpoint.
//!
//! Config (JSON): `monitor_path` ("/monitor"; null disables), `user_header`
//! ("x-authenticated-user"), `redact_fields` (["password", "passwd",
//! "secret", "token", "authorization"], matched case-insensitively against
//! JSON keys and query parameter names). Unknown fields are refused.
//!
//! `configure` asks for `on-complete` only. `on-request` reads no body,
//! except that a `POST` to `monitor_path` is answered here (200, `Request
//! logged by Sidecar!`) after logging its body (up to 1 MiB) with secrets
//! redacted. `on-complete` writes the access line, from the request as sent
//! upstream and the completion record: method, path (query redacted),
//! status, duration_ms, user, request_id, route, client, cache, bytes,
//! request_bytes, response_bytes, and error when the response broke off.
//! No header value other than those, and no other body, is ever logged.
//!
//! The logic lives in plain modules so `cargo test` runs natively; only
//! `component` touches the generated bindings and is built for wasm32 only.

// Natively the wasm-only glue is not compiled, so items only it uses would
// look dead there.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod access;
mod config;
mod redact;

#[cfg(target_arch = "wasm32")]
mod component;
