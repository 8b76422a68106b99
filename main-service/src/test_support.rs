//! A fake sidecar for tests: records what main-service sends and answers with
//! whatever the test's responder returns.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Bytes, to_bytes};
use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::Config;
use crate::sidecar::{X_CACHE, X_REQUEST_ID};

pub const FAKE_TOKEN: &str = "fake.jwt.token";

/// One request as the fake sidecar received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct FakeSidecar {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeSidecar {
    /// A recording fake that answers every request with `respond`.
    pub async fn start(respond: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let log = Arc::clone(&seen);
        let app = Router::new().fallback(move |req: Request| {
            let (log, respond) = (Arc::clone(&log), Arc::clone(&respond));
            async move {
                let (parts, body) = req.into_parts();
                let seen = Seen {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                    headers: parts.headers,
                    body: to_bytes(body, usize::MAX).await.unwrap(),
                };
                let response = respond(&seen);
                log.lock().unwrap().push(seen);
                response
            }
        });
        Self::serve(app, seen).await
    }

    /// A non-recording fake backed by an arbitrary router (e.g. slow handlers).
    pub async fn with_router(app: Router) -> Self {
        Self::serve(app, Arc::default()).await
    }

    async fn serve(app: Router, seen: Arc<Mutex<Vec<Seen>>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn config(&self) -> Config {
        Config {
            sidecar_url: self.url.clone(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A config pointing at a port where nothing listens.
pub fn dead_sidecar_config() -> Config {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    Config {
        sidecar_url: format!("http://{addr}"),
        timeout: Duration::from_secs(5),
    }
}

pub fn error(status: StatusCode, message: &str, code: &str) -> Response {
    (status, Json(json!({ "error": message, "code": code }))).into_response()
}

/// Behaves like the real sidecar in front of user-service, for user `admin`.
pub fn demo_sidecar(seen: &Seen) -> Response {
    let mut response = match (&seen.method, seen.path.as_str()) {
        (&Method::POST, "/user-service/login") => {
            let creds: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
            if creds == json!({ "username": "admin", "password": "password" }) {
                let body = Json(json!({ "token": FAKE_TOKEN }));
                (StatusCode::OK, [(X_CACHE, "miss")], body).into_response()
            } else {
                let msg = "invalid username or password";
                error(StatusCode::UNAUTHORIZED, msg, "invalid_credentials")
            }
        }
        (&Method::GET, "/user-service/profile") => match seen.headers.get(AUTHORIZATION) {
            Some(v) if *v == format!("Bearer {FAKE_TOKEN}") => {
                let profile = json!({ "name": "Admin User", "email": "admin@example.com" });
                let body = Json(json!({ "profile": profile }));
                (StatusCode::OK, [(X_CACHE, "hit")], body).into_response()
            }
            Some(_) => error(StatusCode::UNAUTHORIZED, "bad token", "invalid_token"),
            None => error(StatusCode::UNAUTHORIZED, "no token", "missing_token"),
        },
        (&Method::POST, "/monitor") => "Request logged by Sidecar!".into_response(),
        _ => error(StatusCode::NOT_FOUND, "no such route", "not_found"),
    };
    // Like the real sidecar: keep the caller's id, or mint one.
    let id = (seen.headers.get(X_REQUEST_ID).cloned())
        .unwrap_or_else(|| HeaderValue::from_static("fake-req-1"));
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}
