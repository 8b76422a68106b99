//! HTTP handlers: thin translations between client requests and sidecar calls.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::Method;
use serde_json::{Value, json};

use crate::ApiError;
use crate::sidecar::Sidecar;

pub const HELLO: &str = "Hello from Main Microservice!";

pub fn router(sidecar: Sidecar) -> Router {
    Router::new()
        .route("/user/login", post(login))
        .route("/user/profile", get(profile))
        .route("/hello", get(hello))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(sidecar)
}

// Each sidecar-backed handler answers `(relayed sidecar headers, outcome)`, so
// `x-cache`/`x-request-id` reach the client on errors as well as successes.
// Only failures before any sidecar answer skip them via `?`.

async fn login(
    State(sidecar): State<Sidecar>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    // Reject garbage here rather than spend a sidecar round trip on it.
    let Json(credentials) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let req = sidecar
        .request(Method::POST, "/user-service/login", &headers)
        .json(&credentials);
    let upstream = sidecar.send(req).await?;
    let outcome = upstream.json_field("token").and_then(|token| match token {
        // The seed answers login with 201: a token is a freshly created resource.
        Value::String(_) => Ok((StatusCode::CREATED, Json(json!({ "token": token })))),
        _ => Err(ApiError::BadUpstreamResponse),
    });
    Ok((upstream.relay_headers, outcome).into_response())
}

async fn profile(State(sidecar): State<Sidecar>, headers: HeaderMap) -> Result<Response, ApiError> {
    let mut req = sidecar.request(Method::GET, "/user-service/profile", &headers);
    // Missing credentials are for the sidecar's auth policy to reject, not us.
    if let Some(auth) = headers.get(AUTHORIZATION) {
        req = req.header(AUTHORIZATION, auth);
    }
    let upstream = sidecar.send(req).await?;
    let outcome = upstream
        .json_field("profile")
        .map(|profile| Json(json!({ "profile": profile })));
    Ok((upstream.relay_headers, outcome).into_response())
}

async fn hello(State(sidecar): State<Sidecar>, headers: HeaderMap) -> Result<Response, ApiError> {
    let req = sidecar
        .request(Method::POST, "/monitor", &headers)
        .json(&json!({ "message": HELLO }));
    let upstream = sidecar.send(req).await?;
    let outcome = if upstream.status.is_success() {
        Ok(HELLO)
    } else {
        tracing::warn!(status = %upstream.status, "sidecar refused the monitor event");
        Err(ApiError::SidecarUnavailable)
    };
    Ok((upstream.relay_headers, outcome).into_response())
}

/// Liveness only: deliberately does not call the sidecar.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests;
