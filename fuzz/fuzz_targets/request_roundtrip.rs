//! libFuzzer entry for `sidecar_fuzzing::request_roundtrip`; the properties it checks
//! are in that crate (`fuzzing/`), so `cargo test` runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecar_fuzzing::request_roundtrip(data));
