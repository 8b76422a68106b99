//! Router tests: main-service via `oneshot`, the sidecar as a real fake server.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::sidecar::{X_CACHE, X_REQUEST_ID};
use crate::test_support::{FAKE_TOKEN, FakeSidecar, dead_sidecar_config, demo_sidecar, error};
use crate::{Config, app};

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json");
        serde_json::from_slice(&self.body).unwrap()
    }

    fn assert_error(&self, status: StatusCode, code: &str) {
        let body = self.json();
        assert_eq!(self.status, status, "body: {body}");
        assert_eq!(body["code"], code);
        assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

async fn call(config: Config, req: Request<Body>) -> Answer {
    let resp = app(config).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: to_bytes(body, usize::MAX).await.unwrap().to_vec(),
    }
}

fn login_req(body: &str) -> Request<Body> {
    Request::post("/user/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

const ADMIN: &str = r#"{"username":"admin","password":"password"}"#;

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn login_forwards_credentials_and_maps_200_to_201_with_token() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let answer = call(sidecar.config(), login_req(ADMIN)).await;

    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.json(), json!({ "token": FAKE_TOKEN }));
    let seen = sidecar.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (&seen[0].method, seen[0].path.as_str()),
        (&Method::POST, "/user-service/login")
    );
    assert_eq!(seen[0].headers[header::CONTENT_TYPE], "application/json");
    let forwarded: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(forwarded, serde_json::from_str::<Value>(ADMIN).unwrap());
}

#[tokio::test]
async fn sidecar_x_cache_and_x_request_id_are_relayed_to_the_client() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let answer = call(sidecar.config(), login_req(ADMIN)).await;
    assert_eq!(answer.headers[X_CACHE], "miss");
    assert_eq!(answer.headers[X_REQUEST_ID], "fake-req-1");
}

#[tokio::test]
async fn client_x_request_id_is_forwarded_to_the_sidecar() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let req = Request::get("/user/profile")
        .header(X_REQUEST_ID, "trace-42")
        .body(Body::empty())
        .unwrap();
    let answer = call(sidecar.config(), req).await;
    assert_eq!(sidecar.seen()[0].headers[X_REQUEST_ID], "trace-42");
    assert_eq!(answer.headers[X_REQUEST_ID], "trace-42");
}

#[tokio::test]
async fn login_with_wrong_password_passes_the_401_body_through() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let answer = call(
        sidecar.config(),
        login_req(r#"{"username":"admin","password":"x"}"#),
    )
    .await;
    answer.assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(answer.json()["error"], "invalid username or password");
    // Error answers still carry the sidecar's tracing header.
    assert_eq!(answer.headers[X_REQUEST_ID], "fake-req-1");
}

#[tokio::test]
async fn non_json_upstream_error_is_wrapped_as_upstream_error() {
    let sidecar = FakeSidecar::start(|_| {
        (StatusCode::SERVICE_UNAVAILABLE, "user-service is down").into_response()
    })
    .await;
    let answer = call(sidecar.config(), login_req(ADMIN)).await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "upstream_error");
    assert_eq!(answer.json()["error"], "user-service is down");
}

#[tokio::test]
async fn login_with_malformed_json_is_400_and_never_reaches_the_sidecar() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let answer = call(sidecar.config(), login_req("{not json")).await;
    answer.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(sidecar.seen().is_empty());
}

#[tokio::test]
async fn login_success_without_token_is_502_bad_upstream_response() {
    let sidecar = FakeSidecar::start(|_| Json(json!({ "nope": 1 })).into_response()).await;
    let answer = call(sidecar.config(), login_req(ADMIN)).await;
    answer.assert_error(StatusCode::BAD_GATEWAY, "bad_upstream_response");
}

#[tokio::test]
async fn profile_forwards_authorization_and_returns_the_profile() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let req = Request::get("/user/profile")
        .header(header::AUTHORIZATION, format!("Bearer {FAKE_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let answer = call(sidecar.config(), req).await;

    assert_eq!(answer.status, StatusCode::OK);
    let expected = json!({ "profile": { "name": "Admin User", "email": "admin@example.com" } });
    assert_eq!(answer.json(), expected);
    assert_eq!(answer.headers[X_CACHE], "hit");
    let seen = sidecar.seen();
    assert_eq!(
        (&seen[0].method, seen[0].path.as_str()),
        (&Method::GET, "/user-service/profile")
    );
    assert_eq!(
        seen[0].headers[header::AUTHORIZATION],
        format!("Bearer {FAKE_TOKEN}")
    );
}

#[tokio::test]
async fn profile_without_token_passes_the_sidecar_401_through() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let answer = call(sidecar.config(), get("/user/profile")).await;
    answer.assert_error(StatusCode::UNAUTHORIZED, "missing_token");
    assert!(
        sidecar.seen()[0]
            .headers
            .get(header::AUTHORIZATION)
            .is_none()
    );
}

#[tokio::test]
async fn hello_posts_the_message_to_monitor_and_answers_text() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let answer = call(sidecar.config(), get("/hello")).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, b"Hello from Main Microservice!");
    assert!(
        answer.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let seen = sidecar.seen();
    assert_eq!(
        (&seen[0].method, seen[0].path.as_str()),
        (&Method::POST, "/monitor")
    );
    let event: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(event, json!({ "message": "Hello from Main Microservice!" }));
}

#[tokio::test]
async fn hello_when_monitor_fails_is_502_sidecar_unavailable() {
    let sidecar =
        FakeSidecar::start(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "boom", "policy_error"))
            .await;
    let answer = call(sidecar.config(), get("/hello")).await;
    answer.assert_error(StatusCode::BAD_GATEWAY, "sidecar_unavailable");
}

#[tokio::test]
async fn unreachable_sidecar_is_502_sidecar_unavailable_on_every_route() {
    let config = dead_sidecar_config();
    for req in [login_req(ADMIN), get("/user/profile"), get("/hello")] {
        let answer = call(config.clone(), req).await;
        answer.assert_error(StatusCode::BAD_GATEWAY, "sidecar_unavailable");
    }
}

#[tokio::test]
async fn slow_sidecar_is_504_sidecar_timeout() {
    let slow = axum::Router::new().route(
        "/user-service/login",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "too late"
        }),
    );
    let sidecar = FakeSidecar::with_router(slow).await;
    let config = Config {
        timeout: Duration::from_millis(200),
        ..sidecar.config()
    };
    let answer = call(config, login_req(ADMIN)).await;
    answer.assert_error(StatusCode::GATEWAY_TIMEOUT, "sidecar_timeout");
}

#[tokio::test]
async fn trailing_slash_in_sidecar_url_is_tolerated() {
    let sidecar = FakeSidecar::start(demo_sidecar).await;
    let config = Config {
        sidecar_url: format!("{}/", sidecar.url),
        ..sidecar.config()
    };
    call(config, get("/hello")).await;
    assert_eq!(sidecar.seen()[0].path, "/monitor");
}

#[tokio::test]
async fn healthz_is_ok_without_touching_the_sidecar() {
    let answer = call(dead_sidecar_config(), get("/healthz")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({ "status": "ok" }));
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let answer = call(dead_sidecar_config(), get("/user/nope")).await;
    answer.assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let answer = call(dead_sidecar_config(), get("/user/login")).await;
    answer.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(answer.headers[header::ALLOW], "POST");
}
