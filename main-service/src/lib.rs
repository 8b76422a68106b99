//! main-service: the demo's client-facing front.
//!
//! It never talks to user-service directly; every call goes through the policy
//! sidecar (`SIDECAR_URL`), which authenticates, caches and logs:
//!
//! - `POST /user/login` → sidecar `POST /user-service/login`; a token answer becomes **201**
//! - `GET /user/profile` → sidecar `GET /user-service/profile` (with `Authorization`)
//! - `GET /hello` → sidecar `POST /monitor`, then a plain-text greeting
//! - `GET /healthz` → `{"status":"ok"}` (liveness; does not call the sidecar)
//!
//! Upstream error answers pass through with their status and JSON body; the
//! sidecar's `x-cache` and `x-request-id` headers are relayed; our own failures
//! are `{"error","code"}` JSON built only by [`ApiError`].

mod error;
mod routes;
mod sidecar;
#[cfg(test)]
mod test_support;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

pub use error::ApiError;

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the sidecar, e.g. `http://127.0.0.1:4000` (a trailing `/` is ignored).
    pub sidecar_url: String,
    /// Deadline for a whole sidecar exchange, body included.
    pub timeout: Duration,
}

impl Config {
    pub const DEFAULT_SIDECAR_URL: &'static str = "http://127.0.0.1:4000";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Reads `SIDECAR_URL` and `SIDECAR_TIMEOUT_MS`; unset values take the defaults.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    // Separate from `from_env` so tests need not mutate the process environment.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let sidecar_url = var("SIDECAR_URL")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| Self::DEFAULT_SIDECAR_URL.to_owned());
        let timeout = match var("SIDECAR_TIMEOUT_MS") {
            None => Self::DEFAULT_TIMEOUT,
            Some(raw) => match raw.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    tracing::warn!(%raw, "ignoring invalid SIDECAR_TIMEOUT_MS");
                    Self::DEFAULT_TIMEOUT
                }
            },
        };
        Self {
            sidecar_url,
            timeout,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::from_vars(|_| None)
    }
}

/// Builds the service's router around one pooled sidecar client.
pub fn app(config: Config) -> Router {
    routes::router(sidecar::Sidecar::new(&config))
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then drains
/// in-flight requests before returning.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(config))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::test_support::{FAKE_TOKEN, FakeSidecar, demo_sidecar};

    #[test]
    fn unset_environment_gives_the_demo_defaults() {
        let config = Config::from_vars(|_| None);
        assert_eq!(config.sidecar_url, "http://127.0.0.1:4000");
        assert_eq!(config.timeout, Duration::from_secs(5));
    }

    #[test]
    fn environment_overrides_url_and_timeout() {
        let config = Config::from_vars(|name| match name {
            "SIDECAR_URL" => Some("http://sidecar:4000".into()),
            "SIDECAR_TIMEOUT_MS" => Some("250".into()),
            _ => None,
        });
        assert_eq!(config.sidecar_url, "http://sidecar:4000");
        assert_eq!(config.timeout, Duration::from_millis(250));
    }

    #[test]
    fn invalid_timeout_falls_back_to_default() {
        let config =
            Config::from_vars(|name| (name == "SIDECAR_TIMEOUT_MS").then(|| "soon".into()));
        assert_eq!(config.timeout, Config::DEFAULT_TIMEOUT);
    }

    #[tokio::test]
    async fn serves_login_and_profile_over_tcp_then_shuts_down_gracefully() {
        let sidecar = FakeSidecar::start(demo_sidecar).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, sidecar.config(), async {
            let _ = stopped.await;
        }));

        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = client
            .post(format!("{base}/user/login"))
            .json(&json!({ "username": "admin", "password": "password" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        let token: Value = resp.json().await.unwrap();
        assert_eq!(token["token"], FAKE_TOKEN);

        let resp = client
            .get(format!("{base}/user/profile"))
            .bearer_auth(FAKE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert_eq!(resp.headers()["x-cache"], "hit");
        let profile: Value = resp.json().await.unwrap();
        assert_eq!(profile["profile"]["email"], "admin@example.com");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
