//! The messages a test feeds a policy and gets back, as plain owned values,
//! whatever contract the policy was built against, and their conversion to
//! and from the host's exchange (the very one the sidecar's chain works on).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use sidecar_runtime::message::{self, Body, BodyLimits, Exchange, RequestHead, ResponseHead};

/// One header. Values are text here; a value that is not UTF-8 (which a
/// 0.2 policy may set) is shown lossily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A request as a test writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Upper-case method.
    pub method: String,
    /// Path and query, e.g. `/profile?x=1`.
    pub path: String,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    pub route: String,
    /// `ip:port`.
    pub client_addr: String,
}

/// A response: the upstream's as a test writes it, or what a policy made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// What the request hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on; `Some` holds the request as the policy changed it.
    Continue(Option<Request>),
    /// The policy answered.
    Respond(Response),
}

/// Why a test's message cannot be given to a policy.
pub(crate) fn bad_input(what: &str, detail: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("the test's {what} is not valid HTTP: {detail}")
}

fn header_map(headers: &[Header], what: &str) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = message::header_name(&h.name).map_err(|e| bad_input(what, e))?;
        let value =
            message::header_value(&h.name, h.value.as_bytes()).map_err(|e| bad_input(what, e))?;
        map.append(name, value);
    }
    Ok(map)
}

fn header_list(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        // The body's length says it; tests compare headers, not framing.
        .filter(|(n, _)| *n != header::CONTENT_LENGTH)
        .map(|(n, v)| Header {
            name: n.as_str().to_owned(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect()
}

/// The exchange the sidecar would build for `req`.
pub(crate) fn exchange(req: &Request, limits: BodyLimits) -> anyhow::Result<Exchange> {
    let (path, query) = message::split_path(&req.path).map_err(|e| bad_input("request", e))?;
    let method = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| bad_input("request", format!("method `{}`", req.method)))?;
    let client: SocketAddr = req
        .client_addr
        .parse()
        .map_err(|_| bad_input("request", format!("client `{}`", req.client_addr)))?;
    let wire = header_map(&req.headers, "request")?;
    let upgrade = wire.get(header::UPGRADE).cloned();
    let mut headers = message::end_to_end(wire);
    if !req.body.is_empty() {
        message::set_content_length(&mut headers, req.body.len());
    }
    let request_id: Arc<str> = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("test-request")
        .into();
    let head = RequestHead {
        method,
        path,
        query,
        version: http::Version::HTTP_11,
        headers,
        route: req.route.as_str().into(),
        client,
        request_id,
        tls: false,
        upgrade,
    };
    Ok(Exchange::new(
        head,
        Body::full(Bytes::from(req.body.clone())),
        limits,
    ))
}

/// The request as it stands in the exchange (as it would go upstream).
pub(crate) fn request_of(ex: &Exchange, original: &Request) -> Request {
    Request {
        method: ex.request.method.as_str().to_owned(),
        path: ex.request.path_and_query(),
        headers: header_list(&ex.request.headers),
        body: ex
            .request_body
            .complete()
            .map_or_else(Vec::new, |b| b.to_vec()),
        route: original.route.clone(),
        client_addr: original.client_addr.clone(),
    }
}

/// The upstream's response, as the exchange holds it.
pub(crate) fn upstream(resp: &Response) -> anyhow::Result<message::Response> {
    let status = http::StatusCode::from_u16(resp.status)
        .map_err(|_| bad_input("upstream response", format!("status {}", resp.status)))?;
    let mut headers = message::end_to_end(header_map(&resp.headers, "upstream response")?);
    message::set_content_length(&mut headers, resp.body.len());
    Ok(message::Response {
        head: ResponseHead { status, headers },
        body: Body::full(Bytes::from(resp.body.clone())),
    })
}

/// A response as a test sees it.
pub(crate) fn response_of(resp: &message::Response) -> Response {
    Response {
        status: resp.head.status.as_u16(),
        headers: header_list(&resp.head.headers),
        body: resp.body.complete().map_or_else(Vec::new, |b| b.to_vec()),
    }
}
