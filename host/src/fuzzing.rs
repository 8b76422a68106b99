//! Fuzz entry points, shared by the libFuzzer targets in `fuzz/` and by the
//! bounded run in this module's tests, so both run exactly the same checks.
//!
//! Each function takes arbitrary bytes and asserts properties, panicking on
//! a violation:
//! - [`config_parse`]: a config that parses satisfies every invariant the
//!   rest of the sidecar relies on; one that does not names the file.
//! - [`request_roundtrip`]: an HTTP request becomes the [`RequestHead`]
//!   policies see with method, path, query and header values byte-for-byte
//!   (minus hop-by-hop and `connection`-named headers); a policy's edits
//!   (method, path, headers, through the same checks its setters use)
//!   either apply or give an error naming what is invalid; the head, as
//!   the client sent it and as the policy left it, becomes the upstream
//!   request with its path rewritten (still starting with `/`),
//!   `x-forwarded-*` set and no hop-by-hop header but an upgrade's pair.
//! - [`response_roundtrip`]: the same for responses, upstream →
//!   [`ResponseHead`] → client, status included (a policy may only set
//!   200–999).
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Buf;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

use crate::config::{self, Config};
use crate::convert::{self, MAX_HEADERS};
use crate::message::{self, Body, HeaderEdit, HeaderEditError, RequestHead, ResponseHead};

/// The file name every config error must start with.
const CONFIG_PATH: &str = "/etc/sidecar/fuzz.toml";

fn config_env(name: &str) -> Option<String> {
    match name {
        "JWT_SECRET" => Some("s3cret".into()),
        "HOME" => Some("/home/fuzz".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// Parses `data` (lossily decoded) as a config file.
///
/// # Panics
/// If a parsed config breaks an invariant, an error does not start with
/// the file name, or parsing the same text twice gives different results.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(CONFIG_PATH);
    let outcome = |r: anyhow::Result<Config>| match r {
        Ok(c) => Ok(format!("{c:?}")),
        Err(e) => Err(format!("{e:#}")),
    };
    let first = config::parse(&text, path, &config_env);
    match &first {
        Ok(c) => check_config(c),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(
                msg.starts_with(&format!("{CONFIG_PATH}: ")),
                "error does not name the file: {msg}"
            );
        }
    }
    assert_eq!(
        outcome(first),
        outcome(config::parse(&text, path, &config_env)),
        "same text, different result"
    );
}

fn check_config(c: &Config) {
    assert_eq!(c.source, Path::new(CONFIG_PATH));
    assert!(c.server.max_header_bytes >= 8192, "{:?}", c.server);
    assert!(!c.server.header_read_timeout.is_zero(), "{:?}", c.server);
    assert!(c.server.max_concurrent_requests > 0, "{:?}", c.server);
    assert!(!c.server.shutdown_grace.is_zero(), "{:?}", c.server);
    assert!(c.proxy.max_body_bytes > 0, "{:?}", c.proxy);
    assert!(c.proxy.max_response_bytes > 0, "{:?}", c.proxy);
    assert!(!c.proxy.upstream_timeout.is_zero(), "{:?}", c.proxy);
    assert!(c.engine.max_memory_bytes > 0, "{:?}", c.engine);
    assert!(c.engine.max_instances > 0, "{:?}", c.engine);
    assert!(c.kv.limits.max_entries > 0, "{:?}", c.kv);
    assert!(c.kv.limits.max_key_bytes > 0, "{:?}", c.kv);
    assert!(c.kv.limits.max_value_bytes > 0, "{:?}", c.kv);
    if let crate::capabilities::KvBackend::Redis(r) = &c.kv.backend {
        assert!(!r.timeout.is_zero(), "{r:?}");
    }
    assert!(!c.reload.interval.is_zero(), "{:?}", c.reload);

    for (name, p) in &c.policies {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "policy name `{name}`"
        );
        assert!(p.wasm.is_absolute(), "policy {name}: {:?}", p.wasm);
        assert!(
            !p.limits.deadline.is_zero(),
            "policy {name}: {:?}",
            p.limits
        );
        assert!(
            p.limits.memory_bytes > 0 && p.limits.memory_bytes <= c.engine.max_memory_bytes,
            "policy {name}: {:?} with {:?}",
            p.limits,
            c.engine
        );
        let json: serde_json::Value =
            serde_json::from_str(&p.config_json).expect("policy config is JSON");
        assert!(json.is_object(), "policy {name}: config {json}");
        if let Some(h) = &p.sha256 {
            assert!(
                h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "policy {name}: sha256 `{h}`"
            );
        }
    }

    assert!(!c.routes.is_empty(), "no routes");
    for (i, r) in c.routes.iter().enumerate() {
        for other in &c.routes[..i] {
            assert_ne!(r.name, other.name, "duplicate route name");
            assert_ne!(r.prefix, other.prefix, "duplicate route prefix");
        }
        assert!(
            r.prefix.starts_with('/') && (r.prefix == "/" || !r.prefix.ends_with('/')),
            "route {}: prefix `{}`",
            r.name,
            r.prefix
        );
        if let Some(rw) = &r.rewrite {
            assert!(rw.starts_with('/'), "route {}: rewrite `{rw}`", r.name);
        }
        for u in &r.upstreams {
            assert!(
                matches!(u.scheme_str(), Some("http" | "https")),
                "route {}: {u}",
                r.name
            );
            assert!(u.authority().is_some(), "route {}: {u}", r.name);
            assert!(
                matches!(u.path(), "" | "/") && u.query().is_none(),
                "route {}: {u}",
                r.name
            );
        }
        assert!(
            !r.upstreams.is_empty() || !r.policies.is_empty(),
            "route {} does nothing",
            r.name
        );
        for p in &r.policies {
            assert!(
                c.policies.contains_key(p),
                "route {} uses undefined policy `{p}`",
                r.name
            );
        }
        assert!(!r.timeout.is_zero(), "route {}", r.name);
    }
}

/// One request or response in the format of the module docs.
struct Message {
    start: Vec<u8>,
    /// Name, value, and whether the line had a `:` (without one, a policy
    /// removes the header instead of appending it).
    headers: Vec<(Vec<u8>, Vec<u8>, bool)>,
    body: Vec<u8>,
}

/// Header lines beyond this are ignored: enough to cross [`MAX_HEADERS`]
/// with room to spare, few enough that every input runs fast.
const MAX_PARSED_HEADERS: usize = 4096;

impl Message {
    fn parse(data: &[u8]) -> Self {
        let mut rest = data;
        let next_line = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            if rest.is_empty() {
                return None;
            }
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
            let line = line.to_vec();
            *rest = rest.get(end + 1..).unwrap_or_default();
            Some(line)
        };
        let start = next_line(&mut rest).unwrap_or_default();
        let mut headers = Vec::new();
        while let Some(line) = next_line(&mut rest) {
            if line.is_empty() {
                break;
            }
            let (times, line) = repeat_count(&line);
            let colon = line.iter().position(|&b| b == b':');
            let name = line[..colon.unwrap_or(line.len())].to_vec();
            let value = colon.map_or(&[][..], |c| &line[c + 1..]);
            let skip = value
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            let value = value[skip..].to_vec();
            for _ in 0..times.min(MAX_PARSED_HEADERS - headers.len()) {
                headers.push((name.clone(), value.clone(), colon.is_some()));
            }
        }
        Self {
            start,
            headers,
            body: rest.to_vec(),
        }
    }

    /// Headers as an HTTP parser would hand them over: invalid ones skipped.
    fn http_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.headers
            .iter()
            .filter_map(|(n, v, _)| {
                Some((
                    HeaderName::from_bytes(n).ok()?,
                    HeaderValue::from_bytes(v).ok()?,
                ))
            })
            .collect()
    }

    /// Header edits as a policy might make them: any name (a guest string),
    /// any value bytes.
    fn policy_edits(&self) -> impl Iterator<Item = (String, Option<&[u8]>)> {
        self.headers.iter().map(|(n, v, colon)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                colon.then_some(v.as_slice()),
            )
        })
    }
}

/// `*N rest` → (N, rest), N at most 2048; anything else → (1, line).
fn repeat_count(line: &[u8]) -> (usize, &[u8]) {
    let Some(after) = line.strip_prefix(b"*") else {
        return (1, line);
    };
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    match after.get(digits) {
        Some(b' ') if (1..=4).contains(&digits) => {
            let n: usize = std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            (n.min(2048), &after[digits + 1..])
        }
        _ => (1, line),
    }
}

/// Connection-scoped headers (RFC 9110 §7.6.1), written out here rather
/// than taken from `message::HOP_BY_HOP` so the check does not share its
/// mistakes.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A `tchar` (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `field-value` byte as the `http` crate takes it: visible, space, tab
/// or obs-text.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Header values by name, in order within each name: the part of a header
/// list that HTTP gives meaning to.
type Grouped = BTreeMap<String, Vec<Vec<u8>>>;

fn group<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Grouped {
    let mut out = Grouped::new();
    for (n, v) in pairs {
        out.entry(n.to_owned()).or_default().push(v.to_vec());
    }
    out
}

fn group_map(map: &HeaderMap) -> Grouped {
    group(map.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// The HTTP headers a policy must see: minus connection-scoped ones and
/// whatever a `connection` header names (byte-wise: a token is ASCII even
/// in a value that is not).
fn end_to_end(pairs: &[(HeaderName, HeaderValue)]) -> Grouped {
    let named: Vec<Vec<u8>> = pairs
        .iter()
        .filter(|(n, _)| n == header::CONNECTION)
        .flat_map(|(_, v)| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .collect();
    group(
        pairs
            .iter()
            .filter(|(n, _)| {
                !HOP_BY_HOP.contains(&n.as_str())
                    && !named.iter().any(|t| t == n.as_str().as_bytes())
            })
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    )
}

/// No hop-by-hop header, except `connection: upgrade` and `upgrade: X`
/// when `upgrade` is `Some(X)`, and `te: trailers` when `trailers`.
fn check_hop_by_hop(
    headers: &HeaderMap,
    upgrade: Option<&HeaderValue>,
    trailers: bool,
    what: &str,
) {
    for name in HOP_BY_HOP {
        let got: Vec<&[u8]> = headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let allowed: Vec<&[u8]> = match (name, upgrade) {
            ("connection", Some(_)) => vec![b"upgrade"],
            ("upgrade", Some(u)) => vec![u.as_bytes()],
            ("te", _) if trailers => vec![b"trailers"],
            _ => vec![],
        };
        assert_eq!(got, allowed, "{name} on the way to the {what}");
    }
}

/// The whole body, which is in memory: one poll per frame, never pending.
fn body_bytes<B>(mut body: B) -> Vec<u8>
where
    B: hyper::body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                if let Ok(mut data) = frame.expect("in-memory body").into_data() {
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        out.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("an in-memory body was pending"),
        }
    }
}

fn client() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 4242))
}

/// The request id the sidecar settled on.
const REQUEST_ID: &str = "fuzz-id-1";

/// Route shapes a config can produce: (prefix, rewrite).
const ROUTES: [(&str, Option<&str>); 5] = [
    ("/", None),
    ("/svc", Some("/")),
    ("/user-service", Some("/api/")),
    ("/svc", None),
    ("/", Some("/v1")),
];

/// Applies a policy's edit of header `name` through the host's rules
/// (`message::edit_header`: `Some` appends, `None` removes) and checks the
/// outcome: applied if and only if name, value and count are valid,
/// otherwise an error that names the header (or the limit).
fn check_header_edit(headers: &mut HeaderMap, name: &str, value: Option<&[u8]>) {
    let lower = name.to_ascii_lowercase();
    let name_ok = !name.is_empty() && name.bytes().all(is_tchar);
    let managed = lower == "content-length" || HOP_BY_HOP.contains(&lower.as_str());
    let value_ok = value.is_none_or(|v| v.iter().copied().all(is_value_byte));
    let count = headers.len();
    let full = value.is_some() && count >= MAX_HEADERS;
    let before = headers.get_all(&lower).iter().count();
    let change = value.map_or(HeaderEdit::Remove, HeaderEdit::Append);
    match message::edit_header(headers, name, change) {
        Err(HeaderEditError::ReadOnly) => assert!(
            name_ok && managed,
            "`{name}` refused as managed by the sidecar"
        ),
        Err(HeaderEditError::Invalid(e)) => {
            let named = e.contains(&format!("`{name}`"));
            let explained = if !name_ok {
                named && e.starts_with("header name")
            } else if managed {
                false
            } else if !value_ok {
                named && e.starts_with("value of header")
            } else {
                full && e.contains("headers")
            };
            assert!(
                explained,
                "unexplained refusal `{e}` of header `{name}`: {value:?}"
            );
            assert_eq!(
                headers.len(),
                count,
                "a refused edit of `{name}` changed headers"
            );
        }
        Ok(()) => {
            assert!(
                name_ok && !managed && value_ok && !full,
                "accepted header `{name}`: {value:?}"
            );
            let after: Vec<&[u8]> = headers
                .get_all(&lower)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            match value {
                None => assert!(after.is_empty(), "`{name}` still there after removal"),
                Some(v) => {
                    assert_eq!(after.len(), before + 1, "`{name}` not appended");
                    assert_eq!(after.last().copied(), Some(v), "`{name}` changed");
                }
            }
        }
    }
    // An edit never takes a message past the limit (a client's own headers
    // are bounded by the server's parser, not by this).
    assert!(
        headers.len() <= count.max(MAX_HEADERS),
        "{} headers after an edit of `{name}`",
        headers.len()
    );
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
    let msg = Message::parse(data);
    let (method, target) = match msg.start.iter().position(|&b| b == b' ') {
        Some(i) => (&msg.start[..i], &msg.start[i + 1..]),
        None => (&msg.start[..], &b"/"[..]),
    };
    let (prefix, rewrite) = ROUTES[data.len() % ROUTES.len()];
    let tls = data.len() % 2 == 1;

    // What the client sent, as hyper would hand it over.
    let http_method = Method::from_bytes(method).unwrap_or(Method::GET);
    let (uri, path_and_query) = request_target(target);
    let pairs = msg.http_headers();
    let mut builder = http::Request::builder()
        .method(http_method.clone())
        .uri(uri);
    for (n, v) in &pairs {
        builder = builder.header(n, v);
    }
    let (parts, ()) = builder.body(()).expect("valid parts").into_parts();
    let route: Arc<str> = "fuzz".into();
    let id: Arc<str> = REQUEST_ID.into();
    let mut head = convert::request_head(parts, &route, client(), &id, tls);

    assert_eq!(head.method, http_method);
    assert_eq!(head.path_and_query(), path_and_query);
    assert!(head.path.starts_with('/'), "path `{}`", head.path);
    assert!(!head.path.contains('?'), "path `{}`", head.path);
    assert_eq!(&*head.route, "fuzz");
    assert_eq!(head.client, client());
    assert_eq!(head.tls, tls);
    let mut expected = end_to_end(&pairs);
    expected.insert("x-request-id".into(), vec![REQUEST_ID.as_bytes().to_vec()]);
    // `te: trailers` carries on (gRPC needs it), whatever else `te` said.
    let trailers = pairs.iter().any(|(n, v)| {
        n == header::TE
            && v.as_bytes().split(|&b| b == b',').any(|t| {
                t.split(|&b| b == b';')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            })
    });
    if trailers {
        expected.insert("te".into(), vec![b"trailers".to_vec()]);
    }
    assert_eq!(
        group_map(&head.headers),
        expected,
        "headers changed on the way to policies"
    );
    let asked = pairs.iter().any(|(n, v)| {
        n == header::CONNECTION
            && v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let upgrade = pairs
        .iter()
        .find(|(n, _)| n == header::UPGRADE)
        .map(|(_, v)| v);
    assert_eq!(head.upgrade.as_ref(), upgrade.filter(|_| asked), "upgrade");
    check_to_upstream(&head, &msg.body, prefix, rewrite);

    // The same bytes as a policy's edits of that head.
    let method = String::from_utf8_lossy(method);
    match Method::from_bytes(method.as_bytes()) {
        Ok(m) => {
            assert!(
                !method.is_empty() && method.bytes().all(is_tchar),
                "method `{method}`"
            );
            head.method = m;
            assert_eq!(head.method.as_str(), method);
        }
        Err(_) => assert!(
            method.is_empty() || !method.bytes().all(is_tchar),
            "refused method `{method}`"
        ),
    }
    let target = String::from_utf8_lossy(target);
    match message::split_path(&target) {
        Ok((path, query)) => {
            assert!(
                target.starts_with('/') && !target.contains('#'),
                "accepted path `{target}`"
            );
            head.path = path;
            head.query = query;
            assert_eq!(head.path_and_query(), target, "path changed");
        }
        Err(e) => {
            assert!(e.contains(&format!("`{target}`")), "`{e}` for `{target}`");
            assert!(
                !target.starts_with('/')
                    || target.contains('#')
                    || target.parse::<http::uri::PathAndQuery>().is_err(),
                "refused path `{target}`: {e}"
            );
        }
    }
    for (name, value) in msg.policy_edits() {
        check_header_edit(&mut head.headers, &name, value);
    }
    check_to_upstream(&head, &msg.body, prefix, rewrite);
}

/// The URI hyper would hand over for request-target `target`, and the path
/// and query policies must see. Targets no parser accepts are
/// percent-encoded.
fn request_target(target: &[u8]) -> (Uri, String) {
    if let Ok(uri) = Uri::try_from(target) {
        if target.starts_with(b"/") {
            // A fragment never reaches the server's handler.
            let end = target.iter().position(|&b| b == b'#');
            let path = std::str::from_utf8(&target[..end.unwrap_or(target.len())])
                .expect("a valid URI path is UTF-8");
            return (uri.clone(), path.to_owned());
        }
        if uri.scheme().is_some() && uri.authority().is_some() {
            let path = match uri.query() {
                Some(q) => format!("{}?{q}", uri.path()),
                None => uri.path().to_owned(),
            };
            assert!(
                path.starts_with('/'),
                "absolute-form {uri} has path `{path}`"
            );
            return (uri, path);
        }
    }
    let mut path = String::from(if target.starts_with(b"/") { "" } else { "/" });
    for &b in target {
        if b.is_ascii_alphanumeric() || b"-._~/?=&".contains(&b) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let uri = Uri::try_from(path.as_str()).expect("percent-encoded path is a valid URI");
    (uri, path)
}

/// `request_to_upstream` turns `head` into the upstream request (or blames
/// the path), keeping method, headers and body, rewriting the path on a
/// segment boundary, setting `x-forwarded-*` and forwarding no hop-by-hop
/// header but an upgrade's.
fn check_to_upstream(head: &RequestHead, body: &[u8], prefix: &str, rewrite: Option<&str>) {
    let upstream = Uri::from_static("http://127.0.0.1:9");
    let stream = Body::full(body.to_vec()).into_stream();
    let path = head.path_and_query();
    let out = match convert::request_to_upstream(head, stream, &upstream, prefix, rewrite) {
        Err(e) => {
            // Whether a path is valid is the `http` crate's call; the
            // requirement here is that it is blamed, not something else.
            assert!(
                e.starts_with("path") && (rewrite.is_some() || !valid_target(&path)),
                "unexplained refusal `{e}` of {head:?}"
            );
            return;
        }
        Ok(out) => out,
    };
    assert_eq!(out.method(), head.method);
    assert_eq!(out.uri().scheme_str(), Some("http"));
    assert_eq!(
        out.uri().authority().map(|a| a.as_str()),
        Some("127.0.0.1:9")
    );
    let sent = out.uri().path_and_query().map_or("", |pq| pq.as_str());
    assert!(
        sent.starts_with('/'),
        "request-target `{sent}` from {head:?}"
    );
    check_rewrite(&path, prefix, rewrite, sent);

    let trailers = head
        .headers
        .get(header::TE)
        .is_some_and(|v| v == "trailers");
    check_hop_by_hop(out.headers(), head.upgrade.as_ref(), trailers, "upstream");
    let mut expected = group_map(&head.headers);
    // x-forwarded-host says the client's Host, or is not sent at all.
    match expected.remove("host") {
        Some(host) => {
            expected.insert("x-forwarded-host".into(), vec![host[0].clone()]);
        }
        None => {
            expected.remove("x-forwarded-host");
        }
    }
    let mut xff = expected
        .remove("x-forwarded-for")
        .and_then(|v| {
            let mut first = String::from_utf8(v[0].clone()).ok()?.into_bytes();
            first.extend_from_slice(b", ");
            Some(first)
        })
        .unwrap_or_default();
    xff.extend_from_slice(b"192.0.2.7");
    expected.insert("x-forwarded-for".into(), vec![xff]);
    let proto: &[u8] = if head.tls { b"https" } else { b"http" };
    expected.insert("x-forwarded-proto".into(), vec![proto.to_vec()]);
    if let Some(upgrade) = &head.upgrade {
        expected.insert("connection".into(), vec![b"upgrade".to_vec()]);
        expected.insert("upgrade".into(), vec![upgrade.as_bytes().to_vec()]);
    }
    assert_eq!(
        group_map(out.headers()),
        expected,
        "headers changed on the way upstream"
    );
    assert_eq!(body_bytes(out.into_body()), body);
}

/// Whether `path` can be an origin-form request-target as it stands.
fn valid_target(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('#')
        && Uri::builder()
            .scheme("http")
            .authority("127.0.0.1:9")
            .path_and_query(path)
            .build()
            .is_ok()
}

/// `sent` is `path` with `prefix` replaced by `rewrite` on a segment
/// boundary, the query untouched; or `path` itself.
fn check_rewrite(path: &str, prefix: &str, rewrite: Option<&str>, sent: &str) {
    let Some(rewrite) = rewrite else {
        assert_eq!(sent, path, "path changed without a rewrite");
        return;
    };
    let rest = match path.strip_prefix(prefix) {
        Some(rest) if prefix == "/" => rest,
        Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => {
            rest.strip_prefix('/').unwrap_or(rest)
        }
        _ => {
            assert_eq!(sent, path, "path outside the prefix was rewritten");
            return;
        }
    };
    let base = rewrite.trim_end_matches('/');
    assert!(
        sent.starts_with(base) && sent.ends_with(rest),
        "`{path}` under `{prefix}` → `{rewrite}` became `{sent}`"
    );
    assert!(
        sent.len() <= base.len() + 1 + rest.len(),
        "`{path}` under `{prefix}` → `{rewrite}` became `{sent}`"
    );
    if let Some((_, query)) = path.split_once('?') {
        assert_eq!(sent.split_once('?').map(|(_, q)| q), Some(query));
    }
}

/// Converts `data`, read as a response, from the upstream's HTTP to the
/// head policies see and on to the client's; then applies it, read as a
/// policy's edits (status, headers), to that head and converts the result.
///
/// # Panics
/// As [`request_roundtrip`].
pub fn response_roundtrip(data: &[u8]) {
    let msg = Message::parse(data);
    let digits = msg.start.iter().take_while(|b| b.is_ascii_digit()).count();
    let number = std::str::from_utf8(&msg.start[..digits.min(5)])
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .and_then(|n| u16::try_from(n % 65536).ok())
        .unwrap_or(200);

    let status = StatusCode::from_u16(number).unwrap_or(StatusCode::OK);
    let pairs = msg.http_headers();
    let mut builder = http::Response::builder().status(status);
    for (n, v) in &pairs {
        builder = builder.header(n, v);
    }
    let (parts, ()) = builder.body(()).expect("valid parts").into_parts();
    let (mut head, upgrade) = convert::response_head(parts);

    assert_eq!(head.status, status);
    assert_eq!(
        group_map(&head.headers),
        end_to_end(&pairs),
        "headers changed on the way to policies"
    );
    let expected_upgrade = pairs
        .iter()
        .find(|(n, _)| n == header::UPGRADE)
        .map(|(_, v)| v)
        .filter(|_| status == StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(upgrade.as_ref(), expected_upgrade, "upgrade");
    check_to_client(&head, upgrade.clone(), &msg.body);

    // The same bytes as a policy's edits of that head.
    let valid = (200..=999).contains(&number);
    match StatusCode::from_u16(number)
        .ok()
        .filter(|s| s.as_u16() >= 200)
    {
        Some(s) => {
            assert!(valid, "accepted status {number}");
            head.status = s;
        }
        None => assert!(!valid, "refused status {number}"),
    }
    for (name, value) in msg.policy_edits() {
        check_header_edit(&mut head.headers, &name, value);
    }
    check_to_client(&head, upgrade, &msg.body);
}

/// `response_to_http` answers the client with `head` and `body` intact,
/// adding only an upgrade's pair of hop-by-hop headers.
fn check_to_client(head: &ResponseHead, upgrade: Option<HeaderValue>, body: &[u8]) {
    let out = convert::response_to_http(
        head.clone(),
        upgrade.clone(),
        axum::body::Body::from(body.to_vec()),
    );
    assert_eq!(out.status(), head.status);
    check_hop_by_hop(out.headers(), upgrade.as_ref(), false, "client");
    let mut expected = group_map(&head.headers);
    if let Some(upgrade) = &upgrade {
        expected.insert("connection".into(), vec![b"upgrade".to_vec()]);
        expected.insert("upgrade".into(), vec![upgrade.as_bytes().to_vec()]);
    }
    assert_eq!(
        group_map(out.headers()),
        expected,
        "headers changed on the way to the client"
    );
    assert_eq!(body_bytes(out.into_body()), body);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic, so a failure here fails every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).expect("below n")
        }
    }

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        let seeds: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).expect("corpus file"))
            .collect();
        assert!(seeds.len() >= 3, "{}: too few seeds", dir.display());
        seeds
    }

    /// A seed changed by a few of libFuzzer's kinds of mutation, with
    /// `dict` tokens for the ones that reach deep into the parsers.
    fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(data.len() + 1);
            match rng.below(8) {
                0 if !data.is_empty() => {
                    let i = at.min(data.len() - 1);
                    data[i] ^= 1 << rng.below(8);
                }
                1 if !data.is_empty() => {
                    let i = at.min(data.len() - 1);
                    data[i] = u8::try_from(rng.below(256)).expect("a byte");
                }
                2 => {
                    let end = (at + rng.below(16)).min(data.len());
                    data.drain(at..end);
                }
                3 => {
                    let end = (at + rng.below(64)).min(data.len());
                    let copy = data[at..end].to_vec();
                    data.splice(at..at, copy);
                }
                4 => {
                    let other = &seeds[rng.below(seeds.len())];
                    let from = rng.below(other.len() + 1);
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
                5 => {
                    // A line's value (after `=`, `:` or a space) replaced.
                    let token = dict[rng.below(dict.len())];
                    let line_end = data[at..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(data.len(), |i| at + i);
                    let line_start = data[..at]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    let sep = data[line_start..line_end]
                        .iter()
                        .position(|&b| matches!(b, b'=' | b':' | b' '))
                        .map_or(line_end, |i| line_start + i + 1);
                    data.splice(sep..line_end, token.iter().copied());
                }
                _ => {
                    let token = dict[rng.below(dict.len())];
                    data.splice(at..at, token.iter().copied());
                }
            }
        }
        data
    }

    fn random_bytes(rng: &mut Rng) -> Vec<u8> {
        let len = rng.below(300);
        (0..len)
            .map(|_| u8::try_from(rng.below(256)).expect("a byte"))
            .collect()
    }

    const CONFIG_DICT: &[&[u8]] = &[
        b" 0",
        b" 1",
        b" -1",
        b" 8191",
        b" 17592186044416",
        b" 18446744073709551615",
        b" \"\"",
        b" \"/\"",
        b" \"/x/\"",
        b" \"off\"",
        b" \"redis\"",
        b" \"redis://127.0.0.1:1\"",
        b" \"http://127.0.0.1:1\"",
        b" \"http://h/p?q\"",
        b" \"https://h\"",
        b" \"${JWT_SECRET}\"",
        b" \"${MISSING}\"",
        b" \"${A:-${B}\"",
        b" \"${EMPTY:-x}\"",
        b" []",
        b" [\"nope\"]",
        b" { a = [1, { b = \"${HOME}\" }] }",
        b" true",
        b" 1979-05-27T07:32:00Z",
        b" \"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\"",
        b"\n[[route]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\n",
        b"\n[[route]]\nname = \"r\"\nprefix = \"/\"\npolicies = [\"p\"]\n",
        b"\n[policy.p]\nwasm = \"/abs/p.wasm\"\n",
        b"\n[policy.\"bad name\"]\nwasm = \"p.wasm\"\n",
        b"\n[wasm]\nmax_memory_mb = 17592186044416\n",
        b"\n[kv]\nbackend = \"redis\"\n",
        b"\n[server]\nmax_header_bytes = 8192\n",
    ];

    const MESSAGE_DICT: &[&[u8]] = &[
        b"\n",
        b"\r\n",
        b": ",
        b", ",
        b"\xff",
        b"\xc3\xa9",
        b"\x7f",
        b"\0",
        b"*1025 x-many: v\n",
        b"*1024 x-many: v\n",
        b"*3 x-dup: d\n",
        b"connection: x-hop, \xff\n",
        b"connection: close, X-Hop\n",
        b"x-hop: 1\n",
        b"host: a\n",
        b"host: b\n",
        b"x-forwarded-for: 10.0.0.1\n",
        b"x-forwarded-host: fwd\n",
        b"content-length: 5\n",
        b"transfer-encoding: chunked\n",
        b"Upper-Case: V\n",
        b"bad name: v\n",
        b" ",
        b"?",
        b"?q=1",
        b"%2e%2e",
        b"//",
        b"/svc",
        b"/user-service/",
        b"http://h:1/x?y",
        b"*",
        b"GET ",
        b"M\xc3\xa9THOD ",
        b"0",
        b"101",
        b"199",
        b"204",
        b"65535",
        b"70000",
    ];

    fn run(target: &str, f: fn(&[u8]), dict: &[&[u8]], inputs: usize) {
        let seeds = seeds(target);
        for s in &seeds {
            f(s);
        }
        let mut rng = Rng(0x5eed_f022_u64 ^ target.len() as u64);
        for _ in 0..inputs {
            let data = if rng.below(8) == 0 {
                random_bytes(&mut rng)
            } else {
                mutate(&mut rng, &seeds, dict)
            };
            f(&data);
        }
    }

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
            let err = config::parse(&text, Path::new(CONFIG_PATH), &config_env)
                .expect_err(section)
                .to_string();
            assert!(err.contains("memory_mb"), "{err}");
        }
    }

    #[test]
    fn seeds_parse_and_convert() {
        // The committed seeds reach past the parsers, so mutations start deep.
        for s in seeds("config_parse") {
            let text = std::str::from_utf8(&s).expect("UTF-8 seed");
            config::parse(text, Path::new(CONFIG_PATH), &config_env).expect("seed config parses");
        }
        let many = Message::parse(b"GET /\n*1100 x: v\n\nbody");
        assert_eq!(many.headers.len(), 1100);
        assert_eq!(many.body, b"body");
        let req = seeds("request_roundtrip")
            .iter()
            .filter(|s| Message::parse(s).headers.len() > MAX_HEADERS)
            .count();
        assert!(req > 0, "no request seed crosses MAX_HEADERS");
    }
}
