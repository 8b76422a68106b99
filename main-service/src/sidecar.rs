//! The HTTP client side: every call to user-service goes through the sidecar.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;

use crate::{ApiError, Config};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Sidecar response headers that clients get to see.
const RELAYED: [HeaderName; 2] = [X_CACHE, X_REQUEST_ID];

/// A cheaply clonable handle: `reqwest::Client` shares one connection pool.
#[derive(Clone)]
pub struct Sidecar {
    http: Client,
    base_url: String,
}

/// What the sidecar answered, with only the headers worth relaying.
pub struct Upstream {
    pub status: StatusCode,
    pub relay_headers: HeaderMap,
    pub body: Bytes,
}

impl Sidecar {
    /// # Panics
    ///
    /// If the HTTP client cannot be built (no TLS backend is involved, so this
    /// only happens when the system is unusable).
    pub fn new(config: &Config) -> Self {
        let http = Client::builder()
            .timeout(config.timeout)
            // The sidecar is a local hop: never route it via HTTP(S)_PROXY, and
            // never follow redirects on the client's behalf.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the sidecar HTTP client");
        Self {
            http,
            base_url: config.sidecar_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Starts a request to `path`, carrying the client's `x-request-id` so one
    /// id traces the whole chain.
    pub fn request(&self, method: Method, path: &str, incoming: &HeaderMap) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(id) = incoming.get(X_REQUEST_ID) {
            req = req.header(X_REQUEST_ID, id);
        }
        req
    }

    /// Sends the request and reads the whole body; transport failures and
    /// timeouts become [`ApiError`]s, HTTP error statuses do not.
    pub async fn send(&self, req: RequestBuilder) -> Result<Upstream, ApiError> {
        let resp = req.send().await?;
        let status = resp.status();
        let mut relay_headers = HeaderMap::new();
        for name in RELAYED {
            if let Some(value) = resp.headers().get(&name) {
                relay_headers.insert(name, value.clone());
            }
        }
        let body = resp.bytes().await?;
        Ok(Upstream {
            status,
            relay_headers,
            body,
        })
    }
}

impl Upstream {
    /// For a success answer, the value of `field` in its JSON object body;
    /// for an error answer, that error relayed as is.
    pub fn json_field(&self, field: &str) -> Result<Value, ApiError> {
        if !self.status.is_success() {
            return Err(ApiError::upstream(self.status, &self.body));
        }
        let mut body: Value =
            serde_json::from_slice(&self.body).map_err(|_| ApiError::BadUpstreamResponse)?;
        body.get_mut(field)
            .map(Value::take)
            .ok_or(ApiError::BadUpstreamResponse)
    }
}
