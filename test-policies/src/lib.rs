//! Paths of the policy components built from `plugins/` by this crate's
//! `build.rs`, for tests: `sidecar`'s integration tests and the end-to-end
//! tests depend on it so they always run against freshly built policies.

include!(concat!(env!("OUT_DIR"), "/policies.rs"));
