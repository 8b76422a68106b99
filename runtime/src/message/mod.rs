//! The exchange a chain works on, kept on the host: the request head, the
//! response head once there is one, and both bodies, which stream unless a
//! policy asks to read them ([`Body`]).
//!
//! Policies of contract 0.2 read and change it through handles (see
//! `wasm::v02`); policies of 0.1 get it copied in as records and their
//! answers copied back (`wasm::v01`). Both see the same rules, enforced here:
//! which headers the sidecar manages itself, what a valid path is.

mod body;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

pub use self::body::{Body, BodyError, BoxBody, BoxError, Filled, Paced, idle_timeout, paced};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// and `content-length`'s partner `transfer-encoding`: never forwarded as
/// they came, never set by a policy.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a policy may not set or remove header `name`: the sidecar
/// manages it (hop-by-hop headers, and `content-length`, which follows the
/// body).
pub fn is_managed(name: &str) -> bool {
    name == "content-length" || HOP_BY_HOP.contains(&name)
}

/// Most headers a message may have after a policy's changes. Far above what
/// real messages carry, far below what an HTTP header map can hold (it
/// panics past 32 768).
pub const MAX_HEADERS: usize = 1024;

/// `headers` without hop-by-hop headers and those a `connection` header
/// names (compared byte-wise: a name is an ASCII token even in a value that
/// is not UTF-8).
pub fn end_to_end(headers: HeaderMap) -> HeaderMap {
    // Most requests carry none (a `connection` header is one of them): one
    // pass over the names, no hashing, no new map.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str())) {
        return headers;
    }
    let named: Vec<Vec<u8>> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|s| s.trim_ascii().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    let mut last: Option<HeaderName> = None;
    for (name, value) in headers {
        // `HeaderMap`'s iterator names only the first of repeated values.
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|c| c == n.as_bytes()) {
            continue;
        }
        out.append(name, value);
    }
    out
}

/// A header name a policy gave, checked and lower-cased.
///
/// # Errors
/// The name is not a valid HTTP token.
pub fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("header name `{name}` is not a valid HTTP token"))
}

/// A header value a policy gave, checked.
///
/// # Errors
/// The value has a NUL, CR or LF (or another byte HTTP forbids).
pub fn header_value(name: &str, value: &[u8]) -> Result<HeaderValue, String> {
    HeaderValue::from_bytes(value).map_err(|_| {
        format!("value of header `{name}` has a byte HTTP forbids (NUL, CR, LF or a control byte)")
    })
}

/// How a policy changes one header.
#[derive(Debug, Clone, Copy)]
pub enum HeaderEdit<'a> {
    /// Replace every value of the header with this one.
    Set(&'a [u8]),
    /// Add this value after the header's others.
    Append(&'a [u8]),
    Remove,
}

/// Why a header edit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEditError {
    /// A name that is not a token, a value with a forbidden byte, or one
    /// header more than [`MAX_HEADERS`]; the text says which.
    Invalid(String),
    /// The sidecar manages this header ([`is_managed`]).
    ReadOnly,
}

/// Applies a policy's change of header `name` to `headers`, with the rules
/// every contract shares: a valid name and value, no managed header, and
/// never more than [`MAX_HEADERS`] values after the change.
///
/// # Errors
/// The edit is refused and `headers` is left as it was.
pub fn edit_header(
    headers: &mut HeaderMap,
    name: &str,
    change: HeaderEdit<'_>,
) -> Result<(), HeaderEditError> {
    let header = header_name(name).map_err(HeaderEditError::Invalid)?;
    if is_managed(header.as_str()) {
        return Err(HeaderEditError::ReadOnly);
    }
    let value = match change {
        HeaderEdit::Remove => {
            headers.remove(&header);
            return Ok(());
        }
        HeaderEdit::Set(v) | HeaderEdit::Append(v) => {
            header_value(name, v).map_err(HeaderEditError::Invalid)?
        }
    };
    // `len` counts values: a set replaces the header's own, an append adds.
    let kept = match change {
        HeaderEdit::Set(_) => headers.len() - headers.get_all(&header).iter().count(),
        _ => headers.len(),
    };
    if kept >= MAX_HEADERS {
        return Err(HeaderEditError::Invalid(format!(
            "more than {MAX_HEADERS} headers"
        )));
    }
    if matches!(change, HeaderEdit::Set(_)) {
        headers.insert(header, value);
    } else {
        headers.append(header, value);
    }
    Ok(())
}

/// Checks a path and query a policy set, and splits it.
///
/// # Errors
/// It does not start with `/`, has a `#`, or is not a valid request target.
pub fn split_path(path_and_query: &str) -> Result<(String, Option<String>), String> {
    // `http` would build `?q` or `abc` into a URI, and hyper into a request
    // line no server accepts; it would silently drop a `#fragment`.
    if !path_and_query.starts_with('/') || path_and_query.contains('#') {
        return Err(format!(
            "path `{path_and_query}` must start with `/` and have no `#`"
        ));
    }
    let parsed: http::uri::PathAndQuery = path_and_query
        .parse()
        .map_err(|_| format!("path `{path_and_query}` is not a valid request target"))?;
    Ok((parsed.path().to_owned(), parsed.query().map(str::to_owned)))
}

/// The request head as the chain has changed it so far.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// The path, percent-encoded as received, before the route's rewrite.
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    /// End-to-end headers (see [`end_to_end`]); `content-length` included
    /// when the client sent one.
    pub headers: HeaderMap,
    pub route: Arc<str>,
    pub client: SocketAddr,
    pub request_id: Arc<str>,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// The protocol the client asked to switch to (`upgrade: websocket`),
    /// kept apart from the headers: it is hop-by-hop, yet must reach the
    /// upstream for the switch to happen.
    pub upgrade: Option<HeaderValue>,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            method: Method::GET,
            path: "/".into(),
            query: None,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            route: "".into(),
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            request_id: "".into(),
            tls: false,
            upgrade: None,
        }
    }
}

impl RequestHead {
    /// `path?query`, as 0.1 policies and logs see it.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// `HTTP/1.1` and the like.
    pub fn protocol(&self) -> &'static str {
        version_name(self.version)
    }
}

/// `HTTP/1.1` and the like.
pub fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// End-to-end headers; `content-length` when known.
    pub headers: HeaderMap,
}

/// The response on its way back: the upstream's, or an answer.
#[derive(Debug)]
pub struct Response {
    pub head: ResponseHead,
    pub body: Body,
}

impl Response {
    /// An answer with a whole body; its `content-length` follows the body.
    pub fn full(status: StatusCode, mut headers: HeaderMap, body: bytes::Bytes) -> Self {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Self {
            head: ResponseHead { status, headers },
            body: Body::full(body),
        }
    }
}

/// How far along an exchange is: what policies may still change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Request hooks: the request head and body may change.
    #[default]
    Request,
    /// Response hooks: the response may change, the request only be read.
    Response,
    /// Completion hooks: nothing changes.
    Complete,
}

/// Bounds on what the sidecar buffers for policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The most of one body a 0.2 policy may have buffered; a larger ask is
    /// cut to this.
    pub policy_max: usize,
    /// A 0.1 chain buffers the whole request body: larger ones are refused (413).
    pub v01_request: usize,
    /// A 0.1 chain buffers the whole response body: larger ones are refused (502).
    pub v01_response: usize,
    /// The longest wait for the next piece of a body being buffered.
    pub idle: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            policy_max: 16 * 1024 * 1024,
            v01_request: 1024 * 1024,
            v01_response: 10 * 1024 * 1024,
            idle: Duration::from_secs(30),
        }
    }
}

/// How an exchange ended, for completion hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub status: u16,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    pub duration: Duration,
    /// Whether the whole response went out.
    pub complete: bool,
    pub error: Option<String>,
}

/// One request and its response, as the chain works on them.
#[derive(Debug, Default)]
pub struct Exchange {
    pub request: RequestHead,
    pub request_body: Body,
    /// Set once the upstream answered or a policy (or the sidecar) did.
    pub response: Option<Response>,
    pub phase: Phase,
    pub limits: BodyLimits,
}

impl Exchange {
    pub fn new(request: RequestHead, request_body: Body, limits: BodyLimits) -> Self {
        Self {
            request,
            request_body,
            response: None,
            phase: Phase::Request,
            limits,
        }
    }
}

/// Sets `content-length` to a new body's length.
pub fn set_content_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers() {
        let mut map = HeaderMap::new();
        map.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        map.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        map.insert("x-secret-hop", HeaderValue::from_static("1"));
        map.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        map.insert("content-length", HeaderValue::from_static("3"));
        map.append("accept", HeaderValue::from_static("*/*"));
        map.append("accept", HeaderValue::from_static("text/html"));
        let out = end_to_end(map);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length", "accept"]);
        assert_eq!(out.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn drops_headers_named_by_a_connection_value_that_is_not_utf8() {
        let mut map = HeaderMap::new();
        map.insert(
            "connection",
            HeaderValue::from_bytes(b"x-hop, caf\xe9").unwrap(),
        );
        map.insert("x-hop", HeaderValue::from_static("1"));
        map.insert("accept", HeaderValue::from_static("*/*"));
        let out = end_to_end(map);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn policy_paths_must_be_request_targets() {
        assert_eq!(
            split_path("/a/b?x=1").unwrap(),
            ("/a/b".to_owned(), Some("x=1".to_owned()))
        );
        for bad in ["?q=1", "abc", "", "/a#b", "/a b"] {
            assert!(split_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn managed_headers_are_hop_by_hop_and_content_length() {
        assert!(is_managed("content-length"));
        assert!(is_managed("transfer-encoding"));
        assert!(is_managed("upgrade"));
        assert!(!is_managed("x-user"));
    }
}
