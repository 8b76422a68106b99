//! libFuzzer entry for `sidecar::fuzzing::config_parse`; the properties it checks
//! are in that function, so `cargo test` runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecar::fuzzing::config_parse(data));
