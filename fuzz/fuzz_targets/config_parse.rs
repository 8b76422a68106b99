//! libFuzzer entry for `sidecar_fuzzing::config_parse`; the properties it checks
//! are in that crate (`fuzzing/`), so `cargo test` runs the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecar_fuzzing::config_parse(data));
