//! `cache` policy: caches `GET` responses in the host's kv store, per user.
//!
//! Config (JSON): `ttl_secs` (60), `max_ttl_secs` (3600),
//! `identity_header` ("x-authenticated-user"), `max_entry_bytes` (1 MiB).
//! Unknown fields are refused.
//!
//! The key is method + path-with-query + identity (the identity header, else
//! a hash of `authorization`/`cookie`, else `anon`), hashed under a version
//! tag. `on-request` answers a hit from kv with `x-cache: hit` and `age`; a
//! miss goes upstream, and `on-response` (the one other hook `configure`
//! asks for) marks it `x-cache: miss` and stores a 200 without
//! `set-cookie`, `no-store`/`private`/`no-cache` or `vary: *` for its
//! `s-maxage`/`max-age` (capped) or `ttl_secs`. Only such a response has
//! its body read, up to `max_entry_bytes`: a larger one goes on to the
//! client unchanged and is not stored. No request body is ever read.
//! Request `no-store` bypasses the cache; request `no-cache` skips the
//! lookup but may refresh the entry. A response with `Vary` is stored with
//! the request's values of those headers and served only to requests with
//! the same values (one variant per key: another variant's response
//! replaces it). Entries keep headers as text, so a response with a header
//! value that is not UTF-8, or whose varied request headers are not, is
//! not stored.
//!
//! The logic lives in plain modules so `cargo test` runs natively; only
//! `component` touches the generated bindings and is built for wasm32 only.

// Natively the wasm-only glue is not compiled, so items only it uses would
// look dead there.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod cache_control;
mod config;
mod entry;
mod headers;
mod key;
mod policy;

#[cfg(target_arch = "wasm32")]
mod component;
