//! `GET /`: the dashboard, one HTML page with its style and script inline
//! (`dashboard.html`, compiled into the binary: no file to ship, no asset
//! from the network, so it works offline). The page holds no data; it polls
//! the JSON endpoints (`/readyz`, `/policies`, `/upstreams`, `/stats`) from
//! its own origin, which [`same_machine_only`](super::same_machine_only)
//! lets through.
//!
//! Its content security policy allows exactly the inline `<style>` and
//! `<script>` of the page (by their sha256, computed from the page itself so
//! an edit cannot leave them out of step), fetches to its own origin, and
//! nothing else: no other script, no frame around it, no form posting away.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard.html");

static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash_of(inline(PAGE, "script")),
        hash_of(inline(PAGE, "style")),
    )
});

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

/// The text of the one `<tag>...</tag>` element of `page` (the page has one
/// style and one script; the test below holds it to that).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    page.split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&close))
        .map_or("", |(text, _)| text)
}

/// `'sha256-<base64>'`, as a CSP source.
fn hash_of(text: &str) -> String {
    let hex = crate::wasm::sha256_hex(text.as_bytes());
    let digest: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    format!("'sha256-{}'", base64(&digest))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_inline_style_and_one_inline_script_and_no_outside_asset() {
        for tag in ["style", "script"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "{tag}");
            assert!(inline(PAGE, tag).len() > 100, "{tag}");
        }
        // The SVG namespace is a name, not an address.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for outside in ["http://", "https://", "//fonts", "src=", "@import", "url("] {
            assert!(!page.contains(outside), "the page loads nothing: {outside}");
        }
    }

    #[test]
    fn the_policy_allows_the_inline_code_by_hash_and_nothing_else() {
        let csp = CSP.as_str();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
    }

    #[test]
    fn base64_pads_as_the_standard_says() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        // sha256("") in a CSP, as `openssl dgst -sha256 -binary | base64` has it.
        assert_eq!(
            hash_of(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }
}
