//! The one place where user-service failures become HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every way a request to user-service can fail.
///
/// The `Display` text is the human message sent to clients, so it must never
/// carry secrets or internal details.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Details are logged, not returned.
    #[error("internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidCredentials | Self::MissingToken | Self::InvalidToken => {
                StatusCode::UNAUTHORIZED
            }
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code; clients branch on this, not on the message.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::BadRequest(_) => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = Json(json!({ "error": self.to_string(), "code": self.code() }));
        let mut response = (self.status(), body).into_response();
        if matches!(self, Self::MissingToken | Self::InvalidToken) {
            // RFC 6750: tell the client which auth scheme is expected.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
