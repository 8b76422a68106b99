//! `auth` policy: verifies JWT bearer tokens, HS256 with a shared secret or
//! RSA / ECDSA / EdDSA with public keys from a JWK Set, given inline or
//! fetched from the identity provider, and forwards claims to the upstream.
//!
//! # Config (JSON)
//!
//! A provider is an issuer and the keys its tokens are verified with:
//!
//! - `secret`: the HS256 key (UTF-8 bytes).
//! - `jwks`: a JWK Set, `{"keys": [...]}` (or the same as JSON text, as
//!   the sidecar's `jwks = "${file:jwks.json}"` gives it): `RSA` keys with `alg`
//!   RS256/384/512 or PS256/384/512 (no `alg`: RS256 only), `EC` keys on
//!   P-256 (ES256) or P-384 (ES384), `OKP` Ed25519 keys (EdDSA); public
//!   members only, RSA of 2048 to 8192 bits. A bad key refuses the config.
//! - `jwks_url`: where the provider serves its JWK Set; its origin must be
//!   in the policy's `allow_outbound`. Keys the policy cannot use are
//!   skipped (and logged); a set without one usable key is not taken.
//!   `jwks_refresh_secs` (30): at most one fetch per this many seconds,
//!   across all requests, for a `kid` the set lacks; `jwks_max_age_secs`
//!   (300): a set older than this is fetched again.
//! - `issuer` / `audience`: the `iss` and `aud` a token must carry (null:
//!   not checked).
//!
//! Give one provider at the top level (`secret` and/or one of `jwks`,
//! `jwks_url`, plus `issuer`, `audience`), or several as `providers =
//! [{ issuer, audience, secret | jwks | jwks_url, jwks_refresh_secs,
//! jwks_max_age_secs }, ...]`, each with a distinct, required `issuer`;
//! not both. With `providers`, the token's `iss`, read before the
//! signature is checked, only chooses whose keys to check it with (and is
//! checked again after); an `iss` no provider has is `wrong_issuer`.
//!
//! Besides the providers: `leeway_secs` (5), `require_exp` (true),
//! `max_token_bytes` (8192), `public_paths` ([]: exact paths, or prefixes
//! when ending in `*`), `subject_claim` ("sub": the claim every token must
//! carry as a non-empty string), `claims_to_headers` (a table claim →
//! header; default `{ <subject_claim> = <subject_header> }`, and
//! `subject_header` ("x-authenticated-user") may not be given with it),
//! `required_scopes` (`[{ prefix = "/admin", scopes = ["admin"] }]`: a
//! path at or under a prefix needs every scope of every such rule, from
//! the token's `scope` (space-separated) or `scp` / `roles` arrays).
//! Unknown fields are refused, and errors name the field
//! (`providers[1].jwks.keys[0].n: not base64url`).
//!
//! # Keys
//!
//! Each key has one algorithm, from the key, and the token's `alg` must be
//! it (see `jwt`): `alg: none` and RS/HS confusion never pass. The token's
//! `kid` selects the key (a token with a `kid` is checked with that key
//! only; one without, with each key of its `alg`); `jku`, `x5u`, `x5c` and
//! an embedded `jwk` are never read. HS256 is checked in the policy; every
//! other signature by the host's `crypto.verify` (native, about ten times
//! faster than the same check in WebAssembly).
//!
//! A `jwks_url` set is fetched by `configure` and lives in the snapshot
//! every request starts from; what later requests fetch reaches the others
//! through `kv` (see `jwks`). If the first fetch fails the config still
//! loads (a warning is logged) and requests fetch the set; if the origin is
//! not granted, the config is refused. A failed refresh keeps the last good
//! set.
//!
//! # Requests
//!
//! Only `on-request` runs (`configure` asks for no other hook) and it never
//! reads a body. It first removes every client-sent header that
//! `claims_to_headers` names (so none can be spoofed), lets public paths
//! through, and otherwise requires `authorization: Bearer <jwt>`. A
//! verified token's claims are forwarded (strings, numbers and booleans; a
//! claim that is absent or of another type sets no header). Refusals are
//! 401 (403 `insufficient_scope` for a missing scope) with a JSON body
//! `{"error", "code"}` and a `www-authenticate: Bearer` challenge, and are
//! logged (code and path only, never the token). Should the host refuse to
//! set or strip a header, the answer is a 500: failing closed.
//!
//! The logic lives in plain modules so `cargo test` runs natively against
//! a fake host (`testing`); only `component` touches the generated bindings
//! and is built for wasm32 only.

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
