//! The HTTP client to the services behind the sidecar: one pooled,
//! keep-alive client for all routes (plus one per route with `[route.tls]`),
//! speaking `http://` (HTTP/1.1), `https://` (HTTP/2 when the upstream's
//! ALPN agrees, else HTTP/1.1) and `h2c://` (cleartext HTTP/2 with prior
//! knowledge). HTTP/2 connections are multiplexed: one per upstream and
//! worker carries every request in flight to it.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::http_client::causes;
use crate::message::BoxBody;

/// Why the upstream could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, connect timeout, TLS handshake
    /// failed): the request was never sent, so any method may be retried.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// No answer was started: the connection closed before a response head
    /// arrived. The request may have been handled, so only idempotent ones
    /// are retried.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream did not start its answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream response is larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("upstream sent an invalid response: {0}")]
    BadResponse(String),
    /// The client's request body failed (stalled, too slow, broke off)
    /// while it streamed upstream: the client's fault, not the upstream's.
    #[error("the request body could not be read: {0}")]
    ClientBody(crate::message::BodyError),
}

impl UpstreamError {
    /// Its label in metrics and traces (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) | Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::ResponseTooLarge { .. } => "too_large",
            Self::BadResponse(_) => "bad_response",
            Self::ClientBody(_) => "client_body",
        }
    }
}

/// A pooled client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    /// `http://` and `https://` (ALPN offers `h2` and `http/1.1`).
    client: Client<HttpsConnector<HttpConnector>, BoxBody>,
    /// Requests that ask for an upgrade (a WebSocket): a 101 exists only
    /// in HTTP/1.1, so TLS offers `http/1.1` alone.
    http1: Client<HttpsConnector<HttpConnector>, BoxBody>,
    /// `h2c://`: HTTP/2 from the first byte.
    h2c: Client<HttpConnector, BoxBody>,
    connectors: Connectors,
}

#[derive(Clone, Debug)]
struct Connectors {
    any: HttpsConnector<HttpConnector>,
    http1: HttpsConnector<HttpConnector>,
    plain: HttpConnector,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    /// `https://` upstreams are checked against the system's roots.
    pub fn new() -> Self {
        Self::with_tls(crate::tls::system_client_config())
    }

    /// `tls` is used for `https://` upstreams; a failed handshake is an
    /// [`UpstreamError::Unreachable`] (502), its reason in the log (with TLS
    /// 1.3, a client certificate the upstream refuses shows only at the first
    /// read: [`UpstreamError::Unavailable`]).
    pub fn with_tls(tls: rustls::ClientConfig) -> Self {
        let mut plain = HttpConnector::new();
        plain.set_nodelay(true);
        plain.set_connect_timeout(Some(Duration::from_secs(5)));
        // The https connector decides by scheme; plain http must pass too.
        plain.enforce_http(false);
        let any = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(plain.clone());
        let http1 = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(plain.clone());
        Self::pooled(Connectors { any, http1, plain })
    }

    /// The same settings with connection pools of its own: a worker thread
    /// keeps its upstream connections on its own event loop, so a request
    /// never waits on another thread's connection task.
    pub fn with_own_pool(&self) -> Self {
        Self::pooled(self.connectors.clone())
    }

    fn pooled(connectors: Connectors) -> Self {
        let builder = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            builder
        };
        Self {
            client: builder().build(connectors.any.clone()),
            http1: builder().build(connectors.http1.clone()),
            h2c: builder().http2_only(true).build(connectors.plain.clone()),
            connectors,
        }
    }

    /// Sends `req` and waits for the response head, within `timeout`. The
    /// body streams after that: reading it is the caller's business.
    ///
    /// # Errors
    /// [`UpstreamError`]: connection failure, or no head within `timeout`.
    pub async fn send(
        &self,
        req: http::Request<BoxBody>,
        timeout: Duration,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let exchange = async {
            let sent = if req.uri().scheme_str() == Some("h2c") {
                let mut req = req;
                *req.uri_mut() = with_scheme(req.uri(), http::uri::Scheme::HTTP);
                self.h2c.request(req).await
            } else if req.headers().contains_key(http::header::UPGRADE) {
                self.http1.request(req).await
            } else {
                self.client.request(req).await
            };
            sent.map_err(|e| {
                // The whole chain: the client's own message is only
                // "client error (Connect)"; the cause (refused, a TLS
                // alert, an unknown issuer) is in its sources.
                if let Some(body) = crate::message::BodyError::find(&e) {
                    UpstreamError::ClientBody(body)
                } else if e.is_connect() {
                    UpstreamError::Unreachable(causes(&e))
                } else if is_tls_failure(&e) || closed_before_answer(&e) {
                    UpstreamError::Unavailable(causes(&e))
                } else {
                    UpstreamError::BadResponse(causes(&e))
                }
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
    }
}

/// `uri` with another scheme.
fn with_scheme(uri: &http::Uri, scheme: http::uri::Scheme) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(scheme);
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// Whether a TLS error lies behind `e`. With TLS 1.3 an upstream that
/// refuses the sidecar's client certificate says so after the handshake
/// looked done to the client, so the refusal comes with the first read
/// instead of as a connect error; it is still an unavailable upstream, not
/// a bad response.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        // An `io::Error`'s `source()` skips the error it wraps.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && inner.is::<rustls::Error>()
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether the connection closed or reset before any response head came
/// (an endpoint killed mid-request, a stale pooled connection), as opposed to
/// an answer that was not valid HTTP.
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    let Some(hyper) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<hyper::Error>())
    else {
        return false;
    };
    hyper.is_incomplete_message()
        || hyper.is_canceled()
        || hyper.is_closed()
        || std::error::Error::source(hyper).is_some_and(|s| s.is::<std::io::Error>())
}
