//! The network behind policies' `outbound` calls: a small HTTP client of
//! its own (not the upstream pools: a key-set fetch must never queue behind,
//! or be retried like, proxied traffic), checked against the system's roots,
//! recording each call in the metrics. What a policy may reach, the quota,
//! redirects and the cache are the runtime's
//! (`sidecar_runtime::capabilities::outbound`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::capabilities::{
    CallOutcome, HttpClient, OutboundRequest, OutboundResponse, SendError, SendFuture,
};
use crate::http_client::{causes, small_client};
use crate::metrics::Metrics;

/// The sidecar's [`HttpClient`].
pub struct PolicyHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PolicyHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHttp").finish_non_exhaustive()
    }
}

impl PolicyHttp {
    pub fn new(tls: rustls::ClientConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            client: small_client(tls),
            metrics,
        }
    }
}

impl HttpClient for PolicyHttp {
    fn send(&self, req: OutboundRequest, timeout: Duration, max_bytes: usize) -> SendFuture<'_> {
        Box::pin(async move {
            tokio::time::timeout(timeout, self.exchange(req, max_bytes))
                .await
                .unwrap_or(Err(SendError::Timeout))
        })
    }

    fn observe(&self, policy: &str, target: &str, outcome: CallOutcome, elapsed: Duration) {
        self.metrics
            .policy_outbound(policy, target, outcome.as_str(), elapsed);
    }
}

impl PolicyHttp {
    async fn exchange(
        &self,
        req: OutboundRequest,
        max_bytes: usize,
    ) -> Result<OutboundResponse, SendError> {
        let mut request = http::Request::new(Full::new(req.body));
        *request.method_mut() = req.method;
        *request.uri_mut() = req.uri;
        *request.headers_mut() = req.headers;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| SendError::Failed(causes(&e)))?;
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(SendError::TooLarge(max_bytes));
        }
        let body = Limited::new(body, max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    SendError::TooLarge(max_bytes)
                } else {
                    SendError::Failed(causes(&*e))
                }
            })?
            .to_bytes();
        Ok(OutboundResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
