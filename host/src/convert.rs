//! Conversions between HTTP messages and the contract's request/response
//! records, including the proxy's header hygiene (hop-by-hop headers,
//! `x-forwarded-for`) and path checks.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::Full;

use crate::bindings::{Header, Request, Response};
use crate::error::SidecarError;
use crate::upstream::UpstreamError;

/// Headers that describe one connection, not the message: never forwarded
/// (RFC 9110 §7.6.1), plus any header the `connection` header names.
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

/// Converts a header map to the contract's list, dropping hop-by-hop and
/// length headers (the sidecar recomputes the length of what it sends).
/// `Err(name)` names a header whose value is not UTF-8.
fn headers_to_list(map: &HeaderMap) -> Result<Vec<Header>, String> {
    // Byte-wise: the names are ASCII tokens even in a value that is not
    // UTF-8, and they must not be forwarded either way.
    let named_by_connection: Vec<Vec<u8>> = map
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|s| s.trim_ascii().to_ascii_lowercase())
        .collect();
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "content-length"
            || named_by_connection.iter().any(|c| c == n.as_bytes())
        {
            continue;
        }
        // Not `to_str`, which refuses anything but visible ASCII: `café`
        // is valid in a header and representable in the contract.
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| n.to_owned())?;
        out.push(Header {
            name: n.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

/// Most headers a policy may put on a request or response. Far above what
/// real messages carry, far below what an HTTP header map can hold (it
/// panics past 32 768).
pub const MAX_HEADERS: usize = 1024;

fn list_to_headers(list: &[Header]) -> Result<HeaderMap, String> {
    if list.len() > MAX_HEADERS {
        return Err(format!("{} headers (at most {MAX_HEADERS})", list.len()));
    }
    let mut map = HeaderMap::with_capacity(list.len());
    for h in list {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("header name `{}`", h.name))?;
        if HOP_BY_HOP.contains(&name.as_str()) || name == header::CONTENT_LENGTH {
            continue;
        }
        let value =
            HeaderValue::from_str(&h.value).map_err(|_| format!("value of header `{}`", h.name))?;
        map.append(name, value);
    }
    Ok(map)
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

/// The request as policies see it.
///
/// # Errors
/// [`SidecarError::BadRequest`] if a header value is not UTF-8.
pub fn request_from_http(
    parts: &http::request::Parts,
    body: Bytes,
    route: &str,
    client: SocketAddr,
) -> Result<Request, SidecarError> {
    let headers = headers_to_list(&parts.headers).map_err(|name| {
        SidecarError::BadRequest(format!("header `{name}` has a value that is not UTF-8"))
    })?;
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        // Path (as routed and checked) and query, not `path_and_query`:
        // that is `?q` for the absolute-form target `http://h?q`.
        path: match parts.uri.query() {
            Some(query) => format!("{}?{query}", parts.uri.path()),
            None => parts.uri.path().to_owned(),
        },
        headers,
        body: body.into(),
        route: route.to_owned(),
        client_addr: client.to_string(),
    })
}

/// The request to send upstream: `req`'s path with `prefix` replaced by
/// `rewrite`, sent to `upstream`, with `x-forwarded-*` set.
///
/// # Errors
/// `Err(what)` if the policies left a method, path or header that is not
/// valid HTTP.
pub fn request_to_upstream(
    req: &Request,
    upstream: &Uri,
    prefix: &str,
    rewrite: Option<&str>,
    client: SocketAddr,
) -> Result<http::Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("method `{}`", req.method))?;
    let path = rewrite_path(&req.path, prefix, rewrite);
    // `http` builds `?q` or `abc` into a URI, and hyper into a request
    // line no server accepts; it silently drops a `#fragment`, after the
    // rewrite has matched the prefix against it.
    if !path.starts_with('/') || path.contains('#') {
        return Err(format!(
            "path `{}` (must start with `/`, without `#`)",
            req.path
        ));
    }
    let uri = Uri::builder()
        .scheme(upstream.scheme_str().unwrap_or("http"))
        .authority(upstream.authority().map_or("", |a| a.as_str()))
        .path_and_query(path.as_str())
        .build()
        .map_err(|_| format!("path `{}`", req.path))?;
    let mut headers = list_to_headers(&req.headers)?;
    // The client's view of the host goes in x-forwarded-host; hyper sets
    // `host` to the upstream's authority.
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let ip = client.ip().to_string();
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
        HeaderValue::from_static("http"),
    );
    let mut out = http::Request::new(Full::new(Bytes::copy_from_slice(&req.body)));
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;
    Ok(out)
}

/// `/user-service/login?x=1` with prefix `/user-service` and rewrite `/`
/// becomes `/login?x=1`. A path a policy moved outside the prefix is sent as is.
fn rewrite_path(path: &str, prefix: &str, rewrite: Option<&str>) -> String {
    let Some(rewrite) = rewrite else {
        return path.to_owned();
    };
    let rest = match path.strip_prefix(prefix) {
        Some(rest) if prefix == "/" => return format!("{}/{rest}", rewrite.trim_end_matches('/')),
        Some(rest) if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') => rest,
        _ => return path.to_owned(),
    };
    let base = rewrite.trim_end_matches('/');
    match rest.chars().next() {
        Some('/') => format!("{base}{rest}"),
        _ if base.is_empty() => format!("/{rest}"),
        _ => format!("{base}{rest}"),
    }
}

/// An upstream response as policies see it.
///
/// # Errors
/// [`UpstreamError::BadResponse`] if a header value is not UTF-8.
pub fn response_from_upstream(
    parts: &http::response::Parts,
    body: Bytes,
) -> Result<Response, UpstreamError> {
    let headers = headers_to_list(&parts.headers).map_err(|name| {
        UpstreamError::BadResponse(format!("header `{name}` has a value that is not UTF-8"))
    })?;
    Ok(Response {
        status: parts.status.as_u16(),
        headers,
        body: body.into(),
    })
}

/// The response to send to the client.
///
/// # Errors
/// `Err(what)` if a policy left a status or header that is not valid HTTP.
pub fn response_to_http(resp: Response) -> Result<http::Response<axum::body::Body>, String> {
    let status = StatusCode::from_u16(resp.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| format!("status {}", resp.status))?;
    let headers = list_to_headers(&resp.headers)?;
    let mut out = http::Response::new(axum::body::Body::from(resp.body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// The value of the first header called `name` (lower-case).
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_prefix_on_segment_boundaries() {
        let r = |p| rewrite_path(p, "/user-service", Some("/"));
        assert_eq!(r("/user-service/login"), "/login");
        assert_eq!(r("/user-service/login?x=1"), "/login?x=1");
        assert_eq!(r("/user-service"), "/");
        assert_eq!(r("/user-service?q"), "/?q");
        assert_eq!(rewrite_path("/a/b", "/a", Some("/api")), "/api/b");
        assert_eq!(rewrite_path("/a/b", "/a", None), "/a/b");
        assert_eq!(rewrite_path("/x/b", "/", Some("/api")), "/api/x/b");
        assert_eq!(rewrite_path("/elsewhere", "/a", Some("/api")), "/elsewhere");
    }

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
        map.insert("accept", HeaderValue::from_static("*/*"));
        let list = headers_to_list(&map).unwrap();
        let names: Vec<&str> = list.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn non_utf8_header_value_is_named() {
        let mut map = HeaderMap::new();
        map.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(headers_to_list(&map).unwrap_err(), "x-bin");
    }

    #[test]
    fn keeps_utf8_header_values_beyond_ascii() {
        // Found by fuzzing: `to_str` refused `café` as "not UTF-8" (a 400),
        // and dropped a non-ASCII x-forwarded-for chain.
        let mut map = HeaderMap::new();
        map.insert(
            "x-name",
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        );
        let list = headers_to_list(&map).unwrap();
        assert_eq!(list[0].value, "café");
        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            headers: vec![Header {
                name: "x-forwarded-for".into(),
                value: "client-é".into(),
            }],
            body: vec![],
            route: "r".into(),
            client_addr: "127.0.0.1:1".into(),
        };
        let up: Uri = "http://127.0.0.1:9".parse().unwrap();
        let out =
            request_to_upstream(&req, &up, "/", None, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(
            out.headers()["x-forwarded-for"].as_bytes(),
            "client-é, 127.0.0.1".as_bytes()
        );
    }

    #[test]
    fn policies_and_upstreams_see_paths_that_start_with_a_slash() {
        // Found by fuzzing: the absolute-form target `http://h?q=1` reached
        // policies as path `?q=1`, and a policy's path `?q=1` or `abc` went
        // upstream as that request-target (`/a#b` as `/a`).
        let (parts, ()) = http::Request::builder()
            .uri("http://h?q=1")
            .body(())
            .unwrap()
            .into_parts();
        let client = "127.0.0.1:1".parse().unwrap();
        let req = request_from_http(&parts, Bytes::new(), "r", client).unwrap();
        assert_eq!(req.path, "/?q=1");
        let up: Uri = "http://127.0.0.1:9".parse().unwrap();
        for path in ["?q=1", "abc", "", "/a#b"] {
            let req = Request {
                path: path.into(),
                ..req.clone()
            };
            let err = request_to_upstream(&req, &up, "/", None, client).unwrap_err();
            assert!(err.starts_with("path"), "{path}: {err}");
        }
    }

    #[test]
    fn drops_headers_named_by_a_connection_value_that_is_not_utf8() {
        // Such a `connection` value used to be ignored whole, so the
        // headers it names were forwarded.
        let mut map = HeaderMap::new();
        map.insert(
            "connection",
            HeaderValue::from_bytes(b"x-hop, caf\xe9").unwrap(),
        );
        map.insert("x-hop", HeaderValue::from_static("1"));
        map.insert("accept", HeaderValue::from_static("*/*"));
        let list = headers_to_list(&map).unwrap();
        let names: Vec<&str> = list.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn appends_to_x_forwarded_for_and_moves_host() {
        let req = Request {
            method: "GET".into(),
            path: "/svc/x".into(),
            headers: vec![
                Header {
                    name: "host".into(),
                    value: "example.com".into(),
                },
                Header {
                    name: "x-forwarded-for".into(),
                    value: "10.0.0.1".into(),
                },
            ],
            body: vec![],
            route: "svc".into(),
            client_addr: "127.0.0.1:5555".into(),
        };
        let up: Uri = "http://127.0.0.1:9".parse().unwrap();
        let out = request_to_upstream(
            &req,
            &up,
            "/svc",
            Some("/"),
            "127.0.0.1:5555".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(out.uri(), "http://127.0.0.1:9/x");
        assert_eq!(out.headers()["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(out.headers()["x-forwarded-host"], "example.com");
        assert!(out.headers().get("host").is_none());
    }

    #[test]
    fn refuses_invalid_policy_output() {
        let resp = Response {
            status: 42,
            headers: vec![],
            body: vec![],
        };
        assert!(response_to_http(resp).is_err());
        let resp = Response {
            status: 200,
            headers: vec![Header {
                name: "bad name".into(),
                value: "v".into(),
            }],
            body: vec![],
        };
        assert!(response_to_http(resp).is_err());
    }
}
