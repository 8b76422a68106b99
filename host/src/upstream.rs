//! The HTTP client to the services behind the sidecar: one pooled,
//! keep-alive client for all routes (plus one per route with `[route.tls]`),
//! speaking `http://` and `https://`.

use std::time::Duration;

use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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

/// A pooled client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, BoxBody>,
    connector: HttpsConnector<HttpConnector>,
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
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        // The https connector decides by scheme; plain http must pass too.
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self::pooled(connector)
    }

    /// The same settings with a connection pool of its own: a worker
    /// thread keeps its upstream connections on its own event loop, so a
    /// request never waits on another thread's connection task.
    pub fn with_own_pool(&self) -> Self {
        Self::pooled(self.connector.clone())
    }

    fn pooled(connector: HttpsConnector<HttpConnector>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        Self { client, connector }
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
            self.client.request(req).await.map_err(|e| {
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

/// `e` and its sources, `: `-separated, each said once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        next = cause.source();
    }
    text
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
