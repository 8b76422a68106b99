//! The one place where errors become HTTP responses.
//!
//! Every error a client can see is JSON: `{"error": "<message>", "code":
//! "<code>"}`. Policy failures say which policy failed but never carry trap
//! text: that goes to the log.

use axum::response::IntoResponse;
use http::{HeaderValue, StatusCode, header};

use crate::message::{BodyError, Response};
use crate::upstream::UpstreamError;
use crate::wasm::{MessageError, PolicyError};

/// Everything that can stop a request inside the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("no route matches this path")]
    NoRoute,
    #[error("route `{route}` has no upstream and no policy answered")]
    NoUpstream { route: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("the request head is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("the request URI is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The client's body broke off or stalled while the sidecar read it.
    #[error("the request body could not be read: {0}")]
    RequestBody(BodyError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("policies of route `{route}` produced an invalid {what}: {detail}")]
    BadPolicyOutput {
        route: String,
        what: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("the sidecar is at its limit of {limit} requests in progress; retry shortly")]
    Overloaded { limit: usize },
}

impl SidecarError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute | Self::NoUpstream { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBody(BodyError::Timeout(_) | BodyError::TooSlow(_)) => {
                StatusCode::REQUEST_TIMEOUT
            }
            Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::Policy(_) | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadPolicyOutput { .. } => StatusCode::BAD_GATEWAY,
            Self::Upstream(UpstreamError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoUpstream { .. } => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::HeadTooLarge { .. } => "head_too_large",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::RequestBody(BodyError::Timeout(_)) => "body_timeout",
            Self::RequestBody(BodyError::TooSlow(_)) => "body_too_slow",
            Self::RequestBody(_) => "bad_request",
            Self::Policy(_) => "policy_failed",
            Self::Overloaded { .. } => "overloaded",
            Self::BadPolicyOutput { .. } => "bad_policy_output",
            Self::Upstream(UpstreamError::Unreachable(_) | UpstreamError::Unavailable(_)) => {
                "upstream_unavailable"
            }
            Self::Upstream(UpstreamError::Timeout(_)) => "upstream_timeout",
            Self::Upstream(UpstreamError::ResponseTooLarge { .. }) => "upstream_response_too_large",
            Self::Upstream(UpstreamError::BadResponse(_)) => "upstream_bad_response",
            // Never built: `From` makes it a `RequestBody`.
            Self::Upstream(UpstreamError::ClientBody(_)) => "bad_request",
        }
    }

    /// What the client is told: enough to act on, nothing internal.
    pub fn public_message(&self) -> String {
        match self {
            Self::Policy(e) => {
                let policy = match e {
                    PolicyError::TimedOut { policy, .. }
                    | PolicyError::MemoryCap { policy, .. }
                    | PolicyError::KvQuota { policy, .. }
                    | PolicyError::Trapped { policy, .. }
                    | PolicyError::ConfigRefused { policy, .. }
                    | PolicyError::Unavailable { policy, .. } => policy,
                };
                format!("policy `{policy}` failed; the request was not forwarded")
            }
            Self::BadPolicyOutput { route, what, .. } => {
                format!("policies of route `{route}` produced an invalid {what}")
            }
            Self::Upstream(UpstreamError::Unreachable(_) | UpstreamError::Unavailable(_)) => {
                "upstream is unavailable".into()
            }
            Self::Upstream(UpstreamError::BadResponse(_)) => {
                "upstream sent an invalid response".into()
            }
            other => other.to_string(),
        }
    }

    fn body(&self) -> Vec<u8> {
        serde_json::json!({ "error": self.public_message(), "code": self.code() })
            .to_string()
            .into_bytes()
    }

    /// The error as a response that response hooks can still see (so an
    /// access log records a 502 or a 503 like any other answer).
    pub fn to_policy_response(&self) -> Response {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::Overloaded { .. } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Response::full(self.status(), headers, self.body().into())
    }
}

impl From<UpstreamError> for SidecarError {
    fn from(e: UpstreamError) -> Self {
        match e {
            // The client's body failed on its way upstream: the client's error.
            UpstreamError::ClientBody(body) => Self::RequestBody(body),
            e => Self::Upstream(e),
        }
    }
}

impl SidecarError {
    /// A message that could not go through a policy of route `route`.
    pub fn from_message(e: MessageError, route: &str) -> Self {
        match e {
            MessageError::RequestBodyTooLarge { limit } => Self::BodyTooLarge { limit },
            MessageError::ResponseBodyTooLarge { limit } => {
                Self::Upstream(UpstreamError::ResponseTooLarge { limit })
            }
            MessageError::NotUtf8 {
                what: "request",
                name,
            } => Self::BadRequest(format!("header `{name}` has a value that is not UTF-8")),
            MessageError::NotUtf8 { name, .. } => Self::Upstream(UpstreamError::BadResponse(
                format!("header `{name}` has a value that is not UTF-8"),
            )),
            MessageError::RequestBody(e) => Self::RequestBody(e),
            MessageError::ResponseBody(e) => {
                Self::Upstream(UpstreamError::BadResponse(format!("reading the body: {e}")))
            }
            MessageError::BadOutput {
                policy,
                what,
                detail,
            } => Self::BadPolicyOutput {
                route: route.to_owned(),
                what,
                detail: format!("policy `{policy}`: {detail}"),
            },
        }
    }
}

impl IntoResponse for SidecarError {
    fn into_response(self) -> axum::response::Response {
        let mut resp = (self.status(), self.body()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::Overloaded { .. } = self {
            // Load sheds in well under a second; a client may come back then.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
