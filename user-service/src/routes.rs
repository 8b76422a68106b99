//! HTTP handlers and the router that wires them.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{BearerToken, Tokens};
use crate::error::ApiError;
use crate::users::{self, Profile};

pub type AppState = Arc<Tokens>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/profile", get(profile))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    // Absent fields count as wrong credentials (401), not a malformed body (400).
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Serialize)]
struct TokenResponse {
    token: String,
}

#[derive(Debug, Serialize)]
struct ProfileResponse {
    profile: &'static Profile,
}

async fn login(
    State(tokens): State<AppState>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    // Taking the rejection ourselves keeps 400s in the JSON error format.
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Some(username) = users::authenticate(&req.username, &req.password) else {
        tracing::info!(username = %req.username, "login rejected");
        return Err(ApiError::InvalidCredentials);
    };
    let token = tokens.issue(username)?;
    Ok(Json(TokenResponse { token }))
}

async fn profile(
    State(tokens): State<AppState>,
    BearerToken(token): BearerToken,
) -> Result<Json<ProfileResponse>, ApiError> {
    // The sidecar already checked the token; checking again means a bypassed or
    // misconfigured sidecar cannot expose profiles.
    let claims = tokens.verify(&token)?;
    // A correctly signed token for a user we no longer know is still unusable.
    let profile = users::profile_of(&claims.sub).ok_or(ApiError::InvalidToken)?;
    Ok(Json(ProfileResponse { profile }))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request, StatusCode, header};
    use tower::ServiceExt;

    use super::*;
    use crate::auth::unix_now;

    const SECRET: &str = "test-secret";

    fn tokens() -> Tokens {
        Tokens::new(SECRET, 3600).unwrap()
    }

    fn app() -> Router {
        router(Arc::new(tokens()))
    }

    async fn send(req: Request<Body>) -> (StatusCode, Value) {
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(ct.unwrap(), "application/json", "every answer is JSON");
        let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn login_req(body: &str) -> Request<Body> {
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    fn profile_req(authorization: Option<&str>) -> Request<Body> {
        let mut req = Request::get("/profile");
        if let Some(value) = authorization {
            req = req.header(header::AUTHORIZATION, value);
        }
        req.body(Body::empty()).unwrap()
    }

    fn assert_error(actual: (StatusCode, Value), status: StatusCode, code: &str) {
        assert_eq!(actual.0, status, "body: {}", actual.1);
        assert_eq!(actual.1["code"], code);
        assert!(actual.1["error"].as_str().is_some_and(|m| !m.is_empty()));
    }

    async fn login_token(username: &str, password: &str) -> String {
        let body = json!({ "username": username, "password": password }).to_string();
        let (status, body) = send(login_req(&body)).await;
        assert_eq!(status, StatusCode::OK);
        body["token"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn login_with_valid_credentials_returns_token_for_that_user() {
        let token = login_token("alice", "wonderland").await;
        let claims = tokens().verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.username.as_str()),
            ("alice", "alice")
        );
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[tokio::test]
    async fn login_with_wrong_password_is_401() {
        let res = send(login_req(r#"{"username":"admin","password":"nope"}"#)).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }

    #[tokio::test]
    async fn login_with_unknown_user_is_401() {
        let res = send(login_req(r#"{"username":"bob","password":"password"}"#)).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }

    #[tokio::test]
    async fn login_with_missing_fields_is_401() {
        let res = send(login_req("{}")).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }

    #[tokio::test]
    async fn login_with_malformed_json_is_400() {
        let res = send(login_req(r#"{"username":"admin","#)).await;
        assert_error(res, StatusCode::BAD_REQUEST, "bad_request");
    }

    #[tokio::test]
    async fn login_with_wrongly_typed_field_is_400() {
        let res = send(login_req(r#"{"username":42,"password":"password"}"#)).await;
        assert_error(res, StatusCode::BAD_REQUEST, "bad_request");
    }

    #[tokio::test]
    async fn login_without_json_content_type_is_400() {
        let req = Request::post("/login")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(r#"{"username":"admin","password":"password"}"#))
            .unwrap();
        assert_error(send(req).await, StatusCode::BAD_REQUEST, "bad_request");
    }

    #[tokio::test]
    async fn profile_with_valid_token_returns_that_users_profile() {
        for (user, pass, name, email) in [
            ("admin", "password", "Admin User", "admin@example.com"),
            ("alice", "wonderland", "Alice Liddell", "alice@example.com"),
        ] {
            let token = login_token(user, pass).await;
            let (status, body) = send(profile_req(Some(&format!("Bearer {token}")))).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, json!({ "profile": { "name": name, "email": email } }));
        }
    }

    #[tokio::test]
    async fn profile_accepts_lowercase_bearer_scheme() {
        let token = login_token("admin", "password").await;
        let (status, _) = send(profile_req(Some(&format!("bearer {token}")))).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn profile_without_token_is_401_missing_token() {
        let resp = app().oneshot(profile_req(None)).await.unwrap();
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_error(
            send(profile_req(None)).await,
            StatusCode::UNAUTHORIZED,
            "missing_token",
        );
    }

    #[tokio::test]
    async fn profile_with_non_bearer_scheme_is_401_missing_token() {
        let res = send(profile_req(Some("Basic YWRtaW46cGFzc3dvcmQ="))).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "missing_token");
    }

    #[tokio::test]
    async fn profile_with_garbage_token_is_401_invalid_token() {
        let res = send(profile_req(Some("Bearer not-a-jwt"))).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    #[tokio::test]
    async fn profile_with_tampered_token_is_401_invalid_token() {
        // Alice's claims under admin's signature: a payload swap must not verify.
        let admin = login_token("admin", "password").await;
        let alice = login_token("alice", "wonderland").await;
        let admin_parts: Vec<&str> = admin.split('.').collect();
        let alice_parts: Vec<&str> = alice.split('.').collect();
        let forged = format!("{}.{}.{}", admin_parts[0], alice_parts[1], admin_parts[2]);
        let res = send(profile_req(Some(&format!("Bearer {forged}")))).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    #[tokio::test]
    async fn profile_with_expired_token_is_401_invalid_token() {
        let expired = tokens().issue_at("admin", unix_now() - 7200).unwrap();
        let res = send(profile_req(Some(&format!("Bearer {expired}")))).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    #[tokio::test]
    async fn profile_with_token_from_another_secret_is_401_invalid_token() {
        let foreign = Tokens::new("other", 3600).unwrap().issue("admin").unwrap();
        let res = send(profile_req(Some(&format!("Bearer {foreign}")))).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    #[tokio::test]
    async fn profile_with_valid_token_for_unknown_user_is_401_invalid_token() {
        let token = tokens().issue("mallory").unwrap();
        let res = send(profile_req(Some(&format!("Bearer {token}")))).await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    #[tokio::test]
    async fn healthz_is_ok() {
        let req = Request::get("/healthz").body(Body::empty()).unwrap();
        assert_eq!(send(req).await, (StatusCode::OK, json!({ "status": "ok" })));
    }

    #[tokio::test]
    async fn unknown_path_is_404_json() {
        let req = Request::get("/nope").body(Body::empty()).unwrap();
        assert_error(send(req).await, StatusCode::NOT_FOUND, "not_found");
    }

    #[tokio::test]
    async fn wrong_method_is_405_json() {
        let req = || {
            Request::builder()
                .method(Method::GET)
                .uri("/login")
                .body(Body::empty())
                .unwrap()
        };
        let resp = app().oneshot(req()).await.unwrap();
        assert_eq!(resp.headers()[header::ALLOW], "POST");
        assert_error(
            send(req()).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
}
