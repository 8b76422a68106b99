//! Between HTTP messages and the exchange policies work on: the proxy's
//! header hygiene (hop-by-hop headers, `x-forwarded-*`, upgrades), path
//! checks and the route's prefix rewrite. Bodies are never touched here:
//! they pass through as streams.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{StatusCode, Uri};

use crate::error::SidecarError;
use crate::message::{self, BoxBody, RequestHead, ResponseHead};

pub use crate::message::MAX_HEADERS;

/// Refuses a request head a strict proxy refuses: one larger than
/// `max_head_bytes` (431; a URI alone that long, 414), and framing that
/// parsers may read differently (400): `transfer-encoding` other than one
/// `chunked`, more than one `content-length` (even equal ones), or both. A
/// proxy in front that picked the other reading could smuggle a request.
///
/// # Errors
/// [`SidecarError::HeadTooLarge`], [`SidecarError::UriTooLong`] or
/// [`SidecarError::BadRequest`] naming what is wrong.
pub fn check_head(parts: &http::request::Parts, max_head_bytes: usize) -> Result<(), SidecarError> {
    // Origin-form (`/path?query`), as nearly every request: no allocation.
    let uri = match (parts.uri.scheme(), parts.uri.path_and_query()) {
        (None, Some(pq)) => pq.as_str().len(),
        _ => parts.uri.to_string().len(),
    };
    if uri > max_head_bytes {
        return Err(SidecarError::UriTooLong {
            limit: max_head_bytes,
        });
    }
    // As sent: `METHOD URI HTTP/1.1\r\n`, `name: value\r\n` each, `\r\n`.
    let line = parts.method.as_str().len() + uri + 12;
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if line + fields + 2 > max_head_bytes {
        return Err(SidecarError::HeadTooLarge {
            limit: max_head_bytes,
        });
    }
    let bad = |why: &str| {
        Err(SidecarError::BadRequest(format!(
            "ambiguous framing: {why}"
        )))
    };
    let te: Vec<_> = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .collect();
    let lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter().count();
    match te.as_slice() {
        [] => {}
        [one] if one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => {}
        [_] => return bad("transfer-encoding must be `chunked` alone"),
        _ => return bad("transfer-encoding given more than once"),
    }
    if lengths > 1 {
        return bad("content-length given more than once");
    }
    if !te.is_empty() && lengths > 0 {
        return bad("both transfer-encoding and content-length");
    }
    Ok(())
}

/// Refuses paths that could reach a route's upstream while slipping past
/// its prefix match (`/public/../private`, `%2e%2e`, `//`, backslashes).
///
/// # Errors
/// [`SidecarError::BadRequest`] naming what is wrong.
pub fn check_path(path: &str) -> Result<(), SidecarError> {
    let bad = |why: &str| Err(SidecarError::BadRequest(format!("path refused: {why}")));
    if !path.starts_with('/') {
        return bad("must start with `/`");
    }
    if path.contains('\\') {
        return bad("contains a backslash");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return bad("contains an encoded slash");
    }
    for segment in path.split('/').skip(1) {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return bad("contains a `.` or `..` segment");
        }
    }
    if path.contains("//") {
        return bad("contains an empty segment (`//`)");
    }
    Ok(())
}

/// Whether a `te` header lists `trailers`.
fn takes_trailers(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let coding = t.split(|&b| b == b';').next().unwrap_or_default();
            coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// The upgrade a client asks for (`connection: upgrade` and `upgrade: X`).
fn upgrade_of(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let asked = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The request head as policies see it: path as routed and checked, query
/// apart, end-to-end headers (with the request id the sidecar settled on).
/// Two hop-specific things carry on: `te: trailers` (the sidecar passes
/// trailers on, and gRPC servers want to know the caller takes them), and
/// an HTTP/2 request's `:authority` as `host`, as HTTP/1.1 would send it.
pub fn request_head(
    parts: http::request::Parts,
    route: &Arc<str>,
    client: SocketAddr,
    request_id: &Arc<str>,
    tls: bool,
) -> RequestHead {
    let upgrade = upgrade_of(&parts.headers);
    let trailers = takes_trailers(&parts.headers);
    let mut headers = message::end_to_end(parts.headers);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if parts.version >= http::Version::HTTP_2
        && !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    RequestHead {
        method: parts.method,
        // Path (as routed and checked) and query, not `path_and_query`:
        // that is `?q` for the absolute-form target `http://h?q`.
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers,
        route: route.clone(),
        client,
        request_id: request_id.clone(),
        tls,
        upgrade,
    }
}

/// The request to send upstream: `head`'s path with `prefix` replaced by
/// `rewrite`, sent to `upstream` with `body`, with `x-forwarded-*` set.
///
/// # Errors
/// `Err(what)` if the path cannot be sent as a request target.
pub fn request_to_upstream(
    head: &RequestHead,
    body: BoxBody,
    upstream: &Uri,
    prefix: &str,
    rewrite: Option<&str>,
) -> Result<http::Request<BoxBody>, String> {
    let path = crate::routes::rewrite_path(&head.path_and_query(), prefix, rewrite);
    // Policies can only set paths that start with `/`; a rewrite keeps that.
    if !path.starts_with('/') || path.contains('#') {
        return Err(format!("path `{path}` (must start with `/`, without `#`)"));
    }
    let uri = Uri::builder()
        .scheme(upstream.scheme_str().unwrap_or("http"))
        .authority(upstream.authority().map_or("", |a| a.as_str()))
        .path_and_query(path.as_str())
        .build()
        .map_err(|_| format!("path `{path}`"))?;
    let mut headers = head.headers.clone();
    // The client's view of the host goes in x-forwarded-host; hyper sets
    // `host` to the upstream's authority. Without a `host` there is no view
    // to pass on: a client's own x-forwarded-host never reaches the upstream.
    let forwarded_host = HeaderName::from_static("x-forwarded-host");
    match headers.remove(header::HOST) {
        Some(host) => {
            headers.insert(forwarded_host, host);
        }
        None => {
            headers.remove(forwarded_host);
        }
    }
    let ip = head.client.ip().to_string();
    let xff = match headers
        .get("x-forwarded-for")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_str(&xff).map_err(|_| "x-forwarded-for".to_owned())?,
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if head.tls { "https" } else { "http" }),
    );
    if let Some(upgrade) = &head.upgrade {
        // Hop-by-hop, yet the switch needs them on this hop too.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
    let mut out = http::Request::new(body);
    *out.method_mut() = head.method.clone();
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    Ok(out)
}

/// An upstream response head as policies see it, and the protocol it
/// switched to if it answered 101.
pub fn response_head(parts: http::response::Parts) -> (ResponseHead, Option<HeaderValue>) {
    let upgrade = (parts.status == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    let head = ResponseHead {
        status: parts.status,
        headers: message::end_to_end(parts.headers),
    };
    (head, upgrade)
}

/// The response head to send the client (`upgrade` for a 101).
pub fn response_to_http(
    head: ResponseHead,
    upgrade: Option<HeaderValue>,
    body: axum::body::Body,
) -> http::Response<axum::body::Body> {
    let mut out = http::Response::new(body);
    *out.status_mut() = head.status;
    *out.headers_mut() = head.headers;
    if let Some(upgrade) = upgrade {
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.headers_mut().insert(header::UPGRADE, upgrade);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;

    #[test]
    fn refuses_path_tricks() {
        for p in [
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/a/./b",
            "//a",
            "/a\\b",
            "/a%2fb",
            "a",
        ] {
            assert!(check_path(p).is_err(), "{p} should be refused");
        }
        for p in ["/", "/a/b", "/a/b?x=../y", "/a.b/..c", "/file.tar.gz"] {
            assert!(check_path(p).is_ok(), "{p} should pass");
        }
    }

    fn head_of(req: http::Request<()>, tls: bool) -> RequestHead {
        let (parts, ()) = req.into_parts();
        request_head(
            parts,
            &"r".into(),
            "127.0.0.1:5555".parse().unwrap(),
            &"id-1".into(),
            tls,
        )
    }

    #[test]
    fn policies_see_paths_that_start_with_a_slash() {
        // Found by fuzzing: the absolute-form target `http://h?q=1` reached
        // policies as path `?q=1`.
        let head = head_of(
            http::Request::builder()
                .uri("http://h?q=1")
                .body(())
                .unwrap(),
            false,
        );
        assert_eq!(head.path_and_query(), "/?q=1");
    }

    #[test]
    fn keeps_header_values_that_are_not_utf8() {
        let head = head_of(
            http::Request::builder()
                .uri("/x")
                .header("x-bin", &b"\xff\xfe"[..])
                .header("x-name", "café")
                .body(())
                .unwrap(),
            false,
        );
        assert_eq!(head.headers["x-bin"].as_bytes(), b"\xff\xfe");
        assert_eq!(head.headers["x-name"].as_bytes(), "café".as_bytes());
    }

    #[test]
    fn appends_to_x_forwarded_for_moves_host_and_says_the_scheme() {
        let head = head_of(
            http::Request::builder()
                .uri("/svc/x")
                .header("host", "example.com")
                .header("x-forwarded-for", "client-é")
                .body(())
                .unwrap(),
            true,
        );
        let up: Uri = "http://127.0.0.1:9".parse().unwrap();
        let out = request_to_upstream(&head, Body::empty().into_stream(), &up, "/svc", Some("/"))
            .unwrap();
        assert_eq!(out.uri(), "http://127.0.0.1:9/x");
        assert_eq!(
            out.headers()["x-forwarded-for"].as_bytes(),
            "client-é, 127.0.0.1".as_bytes()
        );
        assert_eq!(out.headers()["x-forwarded-host"], "example.com");
        assert_eq!(out.headers()["x-forwarded-proto"], "https");
        assert_eq!(out.headers()["x-request-id"], "id-1");
        assert!(out.headers().get("host").is_none());
    }

    #[test]
    fn a_client_x_forwarded_host_never_passes_without_a_host() {
        let head = head_of(
            http::Request::builder()
                .uri("/svc/x")
                .header("x-forwarded-host", "evil.example")
                .body(())
                .unwrap(),
            false,
        );
        let up: Uri = "http://127.0.0.1:9".parse().unwrap();
        let out =
            request_to_upstream(&head, Body::empty().into_stream(), &up, "/svc", None).unwrap();
        assert!(out.headers().get("x-forwarded-host").is_none());
    }

    #[test]
    fn an_upgrade_reaches_the_upstream_with_its_hop_by_hop_headers() {
        let head = head_of(
            http::Request::builder()
                .uri("/ws")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-key", "k")
                .body(())
                .unwrap(),
            false,
        );
        assert_eq!(head.upgrade.as_ref().unwrap(), "websocket");
        assert!(head.headers.get("upgrade").is_none());
        let up: Uri = "http://127.0.0.1:9".parse().unwrap();
        let out = request_to_upstream(&head, Body::empty().into_stream(), &up, "/", None).unwrap();
        assert_eq!(out.headers()["connection"], "upgrade");
        assert_eq!(out.headers()["upgrade"], "websocket");
        assert_eq!(out.headers()["sec-websocket-key"], "k");
    }
}
