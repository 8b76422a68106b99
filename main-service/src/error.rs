//! The one place where main-service failures become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Every way a main-service request can fail.
///
/// `Display` is the client-facing message; transport details are logged where
/// the error is created instead, so internal addresses never leak.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("the sidecar is unavailable")]
    SidecarUnavailable,
    #[error("the sidecar did not answer in time")]
    SidecarTimeout,
    #[error("the upstream service sent an unexpected response")]
    BadUpstreamResponse,
    /// An error answered by the sidecar or user-service, relayed verbatim.
    #[error("upstream answered {status}")]
    Upstream { status: StatusCode, body: Value },
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    /// Wraps an upstream error answer: its JSON body is kept as is; a non-JSON
    /// body is wrapped so clients still get the `{"error","code"}` shape.
    pub fn upstream(status: StatusCode, body: &[u8]) -> Self {
        let body = serde_json::from_slice(body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("upstream error")
            } else {
                text
            };
            json!({ "error": message, "code": "upstream_error" })
        });
        Self::Upstream { status, body }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::SidecarUnavailable | Self::BadUpstreamResponse => StatusCode::BAD_GATEWAY,
            Self::SidecarTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream { status, .. } => *status,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::SidecarUnavailable => "sidecar_unavailable",
            Self::SidecarTimeout => "sidecar_timeout",
            Self::BadUpstreamResponse => "bad_upstream_response",
            Self::Upstream { .. } => "upstream_error",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl From<reqwest::Error> for ApiError {
    fn from(err: reqwest::Error) -> Self {
        // reqwest's Display omits the cause (refused, reset, ...), so log it too.
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        tracing::warn!(error = %err, cause = ?cause, "sidecar request failed");
        if err.is_timeout() {
            Self::SidecarTimeout
        } else {
            Self::SidecarUnavailable
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            Self::Upstream { body, .. } => body,
            other => json!({ "error": other.to_string(), "code": other.code() }),
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_json_body_is_kept_verbatim() {
        let err = ApiError::upstream(StatusCode::UNAUTHORIZED, br#"{"error":"x","code":"y"}"#);
        assert!(matches!(&err, ApiError::Upstream { body, .. } if body["code"] == "y"));
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn upstream_text_body_is_wrapped_as_upstream_error() {
        let err = ApiError::upstream(StatusCode::SERVICE_UNAVAILABLE, b"down\n");
        let ApiError::Upstream { body, .. } = err else {
            panic!()
        };
        assert_eq!(body, json!({ "error": "down", "code": "upstream_error" }));
    }

    #[test]
    fn empty_upstream_body_gets_the_status_reason() {
        let err = ApiError::upstream(StatusCode::FORBIDDEN, b"");
        let ApiError::Upstream { body, .. } = err else {
            panic!()
        };
        assert_eq!(body["error"], "Forbidden");
    }
}
