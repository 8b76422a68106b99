//! The sidecar's fuzz entry points, shared by the libFuzzer targets in
//! `fuzz/` and by a bounded run under `cargo test`, so both run exactly the
//! same checks. Its own crate so that none of this is compiled into the
//! sidecar.
//!
//! Each entry point takes arbitrary bytes and asserts properties, panicking
//! on a violation:
//! - [`config_parse`]: a config that parses satisfies every invariant the
//!   rest of the sidecar relies on; one that does not names the file.
//! - [`request_roundtrip`]: an HTTP request becomes the `RequestHead`
//!   policies see with method, path, query and header values byte-for-byte
//!   (minus hop-by-hop and `connection`-named headers); a policy's edits
//!   (method, path, headers, through the same checks its setters use)
//!   either apply or give an error naming what is invalid; the head, as
//!   the client sent it and as the policy left it, becomes the upstream
//!   request with its path rewritten (still starting with `/`),
//!   `x-forwarded-*` set and no hop-by-hop header but an upgrade's pair.
//! - [`response_roundtrip`]: the same for responses, upstream →
//!   `ResponseHead` → client, status included (a policy may only set
//!   200–999).
//!
//! Layout: `inputs` (how bytes become a config's text, a request or a
//! response), `oracles` (the properties above), and, for the test run only,
//! `mutators` (libFuzzer's kinds of seed mutation over `fuzz/corpus`).
//!
//! Requests and responses are read from a text-like format, so seeds are
//! real messages and libFuzzer's mutations stay meaningful:
//!
//! ```text
//! GET /svc/a?b=1            (response: the status, e.g. `200`)
//! host: example.com
//! *1100 x-many: v           (`*N ` repeats the header line N times)
//! x-gone                    (no `:`: a policy removes the header)
//!                           (an empty line, then the body)
//! body bytes
//! ```
//!
//! Parts that no HTTP parser would hand the sidecar (an invalid method,
//! header name or value) are skipped on the HTTP side but kept on the
//! policy side, where a policy may try to set them.

mod inputs;
#[cfg(test)]
mod mutators;
mod oracles;

use crate::inputs::{RequestInput, ResponseInput};

/// Parses `data` (lossily decoded) as a config file.
///
/// # Panics
/// If a parsed config breaks an invariant, an error does not start with
/// the file name, or parsing the same text twice gives different results.
pub fn config_parse(data: &[u8]) {
    oracles::config_parses_consistently(&String::from_utf8_lossy(data));
}

/// Converts `data`, read as a request, from HTTP to the head policies see
/// and on to the upstream request; then applies it, read as a policy's
/// edits, to that head and converts the result too.
///
/// # Panics
/// If a conversion loses or alters a method, path, header or body byte,
/// forwards a hop-by-hop header, or an edit is refused (or accepted) when
/// it should not be.
pub fn request_roundtrip(data: &[u8]) {
    oracles::request_roundtrip(&RequestInput::parse(data));
}

/// Converts `data`, read as a response, from the upstream's HTTP to the
/// head policies see and on to the client's; then applies it, read as a
/// policy's edits (status, headers), to that head and converts the result.
///
/// # Panics
/// As [`request_roundtrip`].
pub fn response_roundtrip(data: &[u8]) {
    oracles::response_roundtrip(&ResponseInput::parse(data));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutators::{CONFIG_DICT, MESSAGE_DICT, run};

    #[test]
    fn fuzz_targets_hold_on_corpus_and_random_inputs() {
        run("config_parse", config_parse, CONFIG_DICT, 20_000);
        run("request_roundtrip", request_roundtrip, MESSAGE_DICT, 20_000);
        run(
            "response_roundtrip",
            response_roundtrip,
            MESSAGE_DICT,
            20_000,
        );
    }

    #[test]
    fn memory_sizes_that_overflow_are_refused() {
        for section in [
            "[wasm]\nmax_memory_mb = 17592186044416",
            "[wasm]\nmemory_mb = 17592186044417",
            "[policy.p]\nwasm = \"p.wasm\"\nmemory_mb = 18446744073709551615",
        ] {
            let text = format!("{section}\n[[route]]\nprefix = \"/\"\nupstream = \"http://h:1\"\n");
            config_parse(text.as_bytes());
            let err = inputs::parse_config(&text).expect_err(section).to_string();
            assert!(err.contains("memory_mb"), "{err}");
        }
    }
}
