//! The admin listener (loopback by default): what is loaded, how the last
//! reload went, and a way to trigger one.
//!
//! - `GET /policies`: routes and their policy chains, each policy's file,
//!   sha256, contract version, load time; the reload status.
//! - `POST /reload`: reload now; 200 with the new generation, or 422 with
//!   why it was refused (the running config keeps serving).
//! - `GET /healthz`: the process is up.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::server::Sidecar;

pub fn router(sidecar: Arc<Sidecar>) -> Router {
    Router::new()
        .route("/policies", get(policies))
        .route("/reload", post(reload))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such admin endpoint (try /policies, /reload, /healthz)", "code": "not_found" })),
            )
        })
        .with_state(sidecar)
}

async fn policies(State(sidecar): State<Arc<Sidecar>>) -> Json<serde_json::Value> {
    let gateway = sidecar.gateway();
    let routes: Vec<_> = gateway
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "prefix": r.prefix,
                "upstream": r.upstream.as_ref().map(ToString::to_string),
                "policies": r.chain.policies().iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({
        "config": sidecar.current_config().source,
        "reload": sidecar.reload_status(),
        "routes": routes,
        "policies": gateway.policies,
    }))
}

async fn reload(State(sidecar): State<Arc<Sidecar>>) -> Response {
    match sidecar.reload().await {
        Ok(generation) => {
            Json(json!({ "status": "reloaded", "generation": generation })).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": format!("{e:#}"), "code": "reload_refused" })),
        )
            .into_response(),
    }
}
