//! The admin listener (loopback by default): health, readiness, metrics,
//! what is loaded, how the last reload went, and a way to trigger one.
//!
//! - `GET /healthz`: the process is up (200 from the moment it listens).
//! - `GET /readyz`: 200 once every policy is loaded, 503 while loading and
//!   again once shutdown has begun (so a load balancer stops sending traffic).
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text), see [`crate::metrics`].
//! - `GET /policies`: routes and their policy chains, each policy's file,
//!   sha256, contract version, load time; the reload status.
//! - `GET /upstreams`: per route, its balancing and each endpoint's health
//!   (ejected until when), requests in flight, attempts and failures.
//! - `GET /stats`: the metrics summed up per route (requests, status
//!   classes, latency mean/p50/p99, upstream errors) and per policy (calls,
//!   latency, denials, failures), see `admin/stats.rs`.
//! - `POST /reload`: reload now; 200 with the new generation, 422 with
//!   why it was refused (the running config keeps serving), or 409 when a
//!   newer reload asked meanwhile replaced it.
//! - `GET /`: the dashboard, a page that shows all of the above and
//!   refreshes itself from them, see `admin/dashboard.rs`.
//!
//! It listens before the policies are loaded, so probes get an answer during
//! a slow start (a Python policy compiles for seconds).
//!
//! Browsers are kept out: a request whose `Host` is a DNS name other than
//! `localhost` (DNS rebinding: a page's own name pointed at 127.0.0.1), or
//! that a page on another origin sent (`Origin`, `Sec-Fetch-Site`), gets 403.
//! Probes, Prometheus and curl address it by IP or `localhost` and send
//! neither header; the dashboard is opened by typing or bookmarking its
//! address (`Sec-Fetch-Site: none`) and its fetches are `same-origin`.

mod dashboard;
mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::lifecycle::Sidecar;
use crate::routes::Superseded;

/// What the admin endpoints serve: the sidecar once it is loaded.
#[derive(Debug, Default)]
pub struct Admin {
    sidecar: OnceLock<Arc<Sidecar>>,
    draining: AtomicBool,
}

impl Admin {
    /// Policies still loading: `/readyz` answers 503.
    pub fn loading() -> Arc<Self> {
        Arc::default()
    }

    /// A loaded sidecar.
    pub fn serving(sidecar: Arc<Sidecar>) -> Arc<Self> {
        let admin = Self::loading();
        admin.set_ready(sidecar);
        admin
    }

    pub fn set_ready(&self, sidecar: Arc<Sidecar>) {
        // Set once: a second call would be a bug, and is ignored.
        let _ = self.sidecar.set(sidecar);
    }

    /// Shutdown has begun: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/policies", get(policies))
        .route("/upstreams", get(upstreams))
        .route("/stats", get(stats))
        .route("/reload", post(reload))
        .route("/", get(dashboard::page))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such admin endpoint (try / for the dashboard, /healthz, /readyz, /metrics, /policies, /upstreams, /stats, /reload)", "code": "not_found" })),
            )
        })
        .layer(axum::middleware::from_fn(same_machine_only))
        .with_state(admin)
}

/// See the module docs: 403 for DNS-rebound and cross-origin requests.
async fn same_machine_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = req.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST.as_str()).or_else(|| req.uri().host());
    // No `Host` at all: not a browser (HTTP/1.0 tools, in-process calls).
    let refused = if !host.is_none_or(is_local_host) {
        Some((
            "the admin listener answers only to an IP address or localhost as Host",
            "forbidden_host",
        ))
    } else if text(header::ORIGIN.as_str()).is_some_and(|origin| {
        origin
            .split_once("://")
            .is_none_or(|(_, authority)| Some(authority) != host)
    }) || text("sec-fetch-site")
        .is_some_and(|site| site != "same-origin" && site != "none")
    {
        Some((
            "the admin listener does not answer requests from other origins",
            "forbidden_origin",
        ))
    } else {
        None
    };
    match refused {
        Some((error, code)) => (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": error, "code": code })),
        )
            .into_response(),
        None => next.run(req).await,
    }
}

/// `localhost`, or an IP address, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn loading() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "policies are still loading", "code": "loading" })),
    )
        .into_response()
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sidecar) = admin.sidecar.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response();
    };
    if admin.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response();
    }
    let gateway = sidecar.gateway();
    Json(json!({
        "status": "ready",
        "routes": gateway.routes.len(),
        "routes_with_upstream": gateway.routes.iter().filter(|r| r.upstreams.is_some()).count(),
        "policies": gateway.policies.len(),
        "generation": sidecar.reload_status().generation,
    }))
    .into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sidecar) = admin.sidecar.get() else {
        return loading();
    };
    // Health is a state, not an event: read it now (an ejection may have
    // expired since the last request).
    let upstreams = sidecar.gateway().upstreams();
    sidecar
        .metrics
        .set_endpoint_health(upstreams.iter().flat_map(|u| {
            u.endpoints
                .iter()
                .map(|e| (u.route.as_str(), e.url.as_str(), e.healthy))
        }));
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        sidecar.metrics.render(),
    )
        .into_response()
}

async fn upstreams(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sidecar) = admin.sidecar.get() else {
        return loading();
    };
    Json(json!({ "routes": sidecar.gateway().upstreams() })).into_response()
}

async fn stats(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sidecar) = admin.sidecar.get() else {
        return loading();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Json(stats::summarise(&sidecar.metrics.render(), now)).into_response()
}

async fn policies(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sidecar) = admin.sidecar.get() else {
        return loading();
    };
    let gateway = sidecar.gateway();
    let routes: Vec<_> = gateway
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "prefix": r.prefix,
                "upstreams": r.upstreams.as_ref().map(|u| u.urls().collect::<Vec<_>>()).unwrap_or_default(),
                "policies": r.chain.policies().iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    // Each loaded policy, with how it has been failing (`null` if never).
    let failing = sidecar.metrics.policy_failures();
    let policies: Vec<_> = gateway
        .policies
        .iter()
        .map(|p| {
            let mut entry = json!(p);
            entry["failures"] = json!(failing.get(&p.name));
            entry
        })
        .collect();
    Json(json!({
        "config": sidecar.current_config().source,
        "reload": sidecar.reload_status(),
        "routes": routes,
        "policies": policies,
    }))
    .into_response()
}

async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    let Some(sidecar) = admin.sidecar.get() else {
        return loading();
    };
    match sidecar.reload().await {
        Ok(generation) => {
            Json(json!({ "status": "reloaded", "generation": generation })).into_response()
        }
        Err(e) if e.is::<Superseded>() => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "a newer reload was asked for and replaces this one", "code": "reload_superseded" })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": format!("{e:#}"), "code": "reload_refused" })),
        )
            .into_response(),
    }
}
