//! The HTTP client to the services behind the sidecar: one pooled,
//! keep-alive client for all routes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why the upstream could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No answer was started: the connection failed, or it closed before a
    /// response head arrived. Safe to retry for idempotent requests.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream response is larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("upstream sent an invalid response: {0}")]
    BadResponse(String),
}

/// A pooled client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { client }
    }

    /// Sends `req` and reads the whole response (at most `max_response_bytes`),
    /// all within `timeout`.
    ///
    /// # Errors
    /// [`UpstreamError`]: connection failure, timeout, or a response over the
    /// size limit.
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<(http::response::Parts, Bytes), UpstreamError> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() || closed_before_answer(&e) {
                    UpstreamError::Unavailable(format!("{e:#}"))
                } else {
                    UpstreamError::BadResponse(format!("{e:#}"))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_response_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        UpstreamError::ResponseTooLarge {
                            limit: max_response_bytes,
                        }
                    } else {
                        UpstreamError::BadResponse(format!("reading the body: {e}"))
                    }
                })?
                .to_bytes();
            Ok((parts, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
    }
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
