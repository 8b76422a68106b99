//! `logging` policy: one structured `access` line per request, plus the
//! `/monitor` endpoint.
//!
//! Config (JSON): `monitor_path` ("/monitor"; null disables), `user_header`
//! ("x-authenticated-user"), `redact_fields` (["password", "passwords",
//! "passwd", "pwd", "pass", "secret", "secrets", "token", "tokens", "jwt",
//! "api_key", "apikey", "credential", "credentials", "authorization",
//! "cookie", "session", "private_key"], matched against JSON keys, query and
//! form parameter names by words: case-insensitive, percent-decoded, with
//! `_`, `-`, `.`, camelCase and `[…]` as word breaks, so `token` covers
//! `access_token`, `id_token` and `idToken`, and `password` covers
//! `pass%77ord`, `password[]` and `user[password]`). Unknown fields are
//! refused.
//!
//! `configure` asks for `on-complete` only. `on-request` reads no body,
//! except that a `POST` to `monitor_path` is answered here (200, `Request
//! logged by Sidecar!`) after logging its body (up to 1 MiB) with secrets
//! redacted. `on-complete` writes the access line, from the request as sent
//! upstream and the completion record: method, path (query redacted),
//! protocol, status, duration_ms, user, request_id, route, client, cache, bytes,
//! request_bytes, response_bytes, and error when the response broke off.
//! No header value other than those, and no other body, is ever logged.
//!
//! `user` is logged only when a policy after this one in the chain (`auth`)
//! set `user_header`: a value the request already carried when it reached
//! `on-request` is the client's word, still there when a policy between
//! this one and `auth` (or a failing `auth`) answered, so it is never
//! logged. Put `logging` before the policy that sets the header.
//!
//! The logic lives in plain modules so `cargo test` runs natively; only
//! `component` touches the generated bindings and is built for wasm32 only.

// Natively the wasm-only glue is not compiled, so items only it uses would
// look dead there.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod access;
mod config;
mod names;
mod redact;

#[cfg(target_arch = "wasm32")]
mod component;
