//! The properties checked on every input: what must hold of a parsed
//! config, and of a request or response converted from HTTP to what
//! policies see and back, before and after a policy's edits. Each check
//! panics, naming what broke.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Buf;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use sidecar::config::Config;
use sidecar::convert::{self, MAX_HEADERS};
use sidecar::message::{self, Body, HeaderEdit, HeaderEditError, RequestHead, ResponseHead};

use crate::inputs::{
    CONFIG_PATH, REQUEST_ID, RequestInput, ResponseInput, client, parse_config, request_target,
};

/// A config that parses satisfies every invariant the rest of the sidecar
/// relies on; one that does not names the file; the same text parses the
/// same way twice.
pub(crate) fn config_parses_consistently(text: &str) {
    let outcome = |r: anyhow::Result<Config>| match r {
        Ok(c) => Ok(format!("{c:?}")),
        Err(e) => Err(format!("{e:#}")),
    };
    let first = parse_config(text);
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
        outcome(parse_config(text)),
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
    if let sidecar::capabilities::KvBackend::Redis(r) = &c.kv.backend {
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
    B: http_body::Body + Unpin,
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

/// HTTP → the head policies see → the upstream request keeps what it must
/// (see the crate docs); the same bytes as a policy's edits of that head
/// apply or are refused as the host's setters must, and the edited head
/// converts as well.
pub(crate) fn request_roundtrip(input: &RequestInput) {
    let RequestInput {
        msg,
        method,
        target,
        prefix,
        rewrite,
        tls,
    } = input;
    let (method, target, prefix, rewrite, tls) =
        (&method[..], &target[..], *prefix, *rewrite, *tls);

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

/// The same for responses: upstream HTTP → the head policies see → the
/// client's response, status included (a policy may set 200–999 only).
pub(crate) fn response_roundtrip(input: &ResponseInput) {
    let ResponseInput { msg, number } = input;
    let number = *number;
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
