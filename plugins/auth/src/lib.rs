//! `auth` policy: verifies JWT bearer tokens, HS256 with a shared secret or
//! RSA / ECDSA / EdDSA with public keys from an inline JWKS.
//!
//! Config (JSON): `secret` (the HS256 key as UTF-8 bytes) and/or `jwks` (a
//! JWK Set, `{"keys": [...]}`: `RSA` keys with `alg` RS256/384/512 or
//! PS256/384/512, no `alg` meaning RS256 only; `EC` keys on P-256 (ES256) or
//! P-384 (ES384); `OKP` Ed25519 keys (EdDSA); public members only), at
//! least one of the two; `issuer` / `audience` (null = not checked),
//! `leeway_secs` (5), `public_paths` ([]: exact paths, or prefixes when
//! ending in `*`), `subject_claim` ("sub"), `subject_header`
//! ("x-authenticated-user"), `require_exp` (true), `max_token_bytes` (8192).
//! Unknown fields are refused, and so is a bad key: keys are parsed at
//! configure time, not per request.
//!
//! Each key has one algorithm and the token's `alg` must be it (see `jwt`);
//! the token's `kid` selects the JWKS key (a token with a `kid` is checked
//! with that key only; one without, with each key of its `alg`). Fetching a JWKS from its URL (and
//! refreshing it) is not there yet: it needs an outbound HTTP capability
//! the host does not offer; until then the keys are given in config.
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
mod imports;
mod jwks;
mod jwt;
mod keys;
mod policy;
mod scopes;

#[cfg(test)]
mod testing;

#[cfg(target_arch = "wasm32")]
mod component;
