//! `auth` policy: verifies HS256 JWT bearer tokens.
//!
//! Config (JSON): `secret` (required, the HS256 key as UTF-8 bytes),
//! `issuer` / `audience` (null = not checked), `leeway_secs` (5),
//! `public_paths` ([]: exact paths, or prefixes when ending in `*`),
//! `subject_claim` ("sub"), `subject_header` ("x-authenticated-user"),
//! `require_exp` (true), `max_token_bytes` (8192). Unknown fields are refused.
//!
//! Only `on-request` runs (`configure` asks for no other hook) and it never
//! reads a body. It always removes a client-sent `subject_header` (so it
//! cannot be spoofed), lets public paths through, and otherwise requires
//! `authorization: Bearer <jwt>`; a verified token's subject claim is
//! forwarded in `subject_header`. Refusals are 401 with a JSON body
//! `{"error", "code"}` and a `www-authenticate: Bearer` challenge, and are
//! logged (code and path only, never the token). Should the host refuse to
//! set or strip `subject_header`, the answer is a 500: failing closed.
//!
//! The logic lives in plain modules so `cargo test` runs natively; only
//! `component` touches the generated bindings and is built for wasm32 only.

// Natively the wasm-only glue is not compiled, so items only it uses would
// look dead there.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod config;
mod jwt;
mod keys;
mod policy;

#[cfg(target_arch = "wasm32")]
mod component;
