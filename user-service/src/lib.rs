//! user-service: the demo's identity backend.
//!
//! It sits behind the sidecar (which strips the `/user-service` prefix) and offers:
//!
//! - `POST /login` — `{"username","password"}` → `{"token": <HS256 JWT>}`
//! - `GET /profile` — `Authorization: Bearer <jwt>` → `{"profile": {"name","email"}}`
//! - `GET /healthz` — `{"status":"ok"}`
//!
//! Errors are always `{"error": <message>, "code": <snake_case>}` JSON, produced
//! only by [`ApiError`]. The service re-verifies tokens itself even though the
//! sidecar's auth policy already did (defense in depth).

mod auth;
mod error;
mod routes;
mod users;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use auth::Claims;
pub use error::ApiError;
pub use users::Profile;

/// Runtime settings.
#[derive(Clone)]
pub struct Config {
    /// HMAC secret for signing and verifying tokens; must not be empty.
    pub jwt_secret: String,
    /// Lifetime of issued tokens (`exp = iat + token_ttl_secs`).
    pub token_ttl_secs: u64,
}

impl Config {
    /// The seed's secret, kept so the demo sidecar policy works out of the box.
    pub const DEFAULT_JWT_SECRET: &'static str = "Secreto";
    pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

    /// Reads `JWT_SECRET` (unset or empty → [`Self::DEFAULT_JWT_SECRET`]).
    pub fn from_env() -> Self {
        let jwt_secret = std::env::var("JWT_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| Self::DEFAULT_JWT_SECRET.to_owned());
        Self {
            jwt_secret,
            ..Self::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            jwt_secret: Self::DEFAULT_JWT_SECRET.to_owned(),
            token_ttl_secs: Self::DEFAULT_TOKEN_TTL_SECS,
        }
    }
}

// Hand-written so the secret never ends up in logs.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("jwt_secret", &"<redacted>")
            .field("token_ttl_secs", &self.token_ttl_secs)
            .finish()
    }
}

/// Builds the service's router.
///
/// # Panics
///
/// If `config.jwt_secret` is empty: an unsigned-equivalent key is a
/// configuration bug that must stop startup, not surface per request.
pub fn app(config: Config) -> Router {
    let tokens = auth::Tokens::new(&config.jwt_secret, config.token_ttl_secs)
        .expect("Config::jwt_secret must not be empty");
    routes::router(Arc::new(tokens))
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

    #[test]
    fn debug_output_hides_the_secret() {
        let shown = format!("{:?}", Config::default());
        assert!(!shown.contains(Config::DEFAULT_JWT_SECRET), "{shown}");
    }

    #[tokio::test]
    async fn serves_login_and_profile_over_tcp_then_shuts_down_gracefully() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Config::default(), async {
            let _ = stopped.await;
        }));

        let client = reqwest::Client::new();
        let login: Value = client
            .post(format!("{base}/login"))
            .json(&json!({ "username": "alice", "password": "wonderland" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["token"].as_str().unwrap();

        let resp = client
            .get(format!("{base}/profile"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        let profile: Value = resp.json().await.unwrap();
        assert_eq!(profile["profile"]["name"], "Alice Liddell");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
