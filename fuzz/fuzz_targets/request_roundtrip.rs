//! libFuzzer entry for `sidecar::fuzzing::request_roundtrip`; the properties it checks
//! are in that function, so `cargo test` runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecar::fuzzing::request_roundtrip(data));
