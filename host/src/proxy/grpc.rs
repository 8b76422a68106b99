//! gRPC calls answered by the sidecar itself (a policy's denial, a failed
//! policy, an upstream that could not be reached) are answered in gRPC's
//! terms: HTTP 200, `content-type: application/grpc`, and `grpc-status` /
//! `grpc-message` in a trailers-only response. A gRPC client reads any
//! other HTTP status as "UNKNOWN: unexpected HTTP status", losing the
//! reason; this way auth's 401 arrives as 16 UNAUTHENTICATED.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;

/// The longest `grpc-message` sent: a status line, not a document.
const MAX_MESSAGE: usize = 1024;

/// Whether `headers` are a gRPC call's (`application/grpc`,
/// `application/grpc+proto`, …; not gRPC-Web, a protocol of its own).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        match v.as_bytes().strip_prefix(b"application/grpc") {
            Some(rest) => rest.is_empty() || rest[0] == b'+' || rest[0] == b';',
            None => false,
        }
    })
}

/// The gRPC status for an HTTP status, as the gRPC project maps them
/// (`doc/http-grpc-status-mapping.md`).
pub fn status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `resp`, an answer the sidecar or a policy made to a gRPC call, as gRPC
/// says it. A success is left as it is; an answer that already carries a
/// `grpc-status` (a policy that speaks gRPC itself) keeps it, sent as
/// HTTP 200 (gRPC clients read other HTTP statuses before `grpc-status`).
pub async fn answer(
    mut resp: http::Response<axum::body::Body>,
) -> http::Response<axum::body::Body> {
    if resp.status().is_success() {
        return resp;
    }
    if resp.headers().contains_key("grpc-status") {
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut()
            .entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("application/grpc"));
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // An answer made here is in memory; the bound only guards the read.
    let text = match http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
    {
        Ok(collected) => message_of(&collected.to_bytes()),
        Err(_) => None,
    };
    let text = text.unwrap_or_else(|| {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_owned()
    });
    let mut headers = parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status_for(parts.status)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&text)) {
        headers.insert("grpc-message", v);
    }
    let mut out = http::Response::new(axum::body::Body::empty());
    *out.headers_mut() = headers;
    out
}

/// What an error body says: the `error` of the sidecar's JSON errors, or a
/// policy's plain text; `None` if empty.
fn message_of(body: &[u8]) -> Option<String> {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if text.is_empty() {
        return None;
    }
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

/// `grpc-message`'s encoding: UTF-8, with `%` and bytes outside printable
/// ASCII as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn tells_grpc_calls_from_other_content_types() {
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(is_grpc(&headers("application/grpc; charset=utf-8")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn maps_http_statuses_as_the_grpc_project_does() {
        assert_eq!(status_for(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(status_for(StatusCode::FORBIDDEN), 7);
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_for(StatusCode::GATEWAY_TIMEOUT), 14);
        assert_eq!(status_for(StatusCode::TOO_MANY_REQUESTS), 14);
        assert_eq!(status_for(StatusCode::BAD_REQUEST), 13);
        assert_eq!(status_for(StatusCode::IM_A_TEAPOT), 2);
    }

    #[tokio::test]
    async fn a_denial_becomes_a_trailers_only_answer_with_its_reason() {
        let mut resp = http::Response::new(axum::body::Body::from(
            r#"{"error":"token expired: 100% sure","code":"unauthorized"}"#,
        ));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        let out = answer(resp).await;
        assert_eq!(out.status(), StatusCode::OK);
        assert_eq!(out.headers()["content-type"], "application/grpc");
        assert_eq!(out.headers()["grpc-status"], "16");
        assert_eq!(out.headers()["grpc-message"], "token expired: 100%25 sure");
        assert_eq!(out.headers()["www-authenticate"], "Bearer");
        let body = out.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn plain_text_and_empty_bodies_give_a_message_too() {
        let mut resp = http::Response::new(axum::body::Body::from("nope \u{e9}"));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        let out = answer(resp).await;
        assert_eq!(out.headers()["grpc-status"], "7");
        assert_eq!(out.headers()["grpc-message"], "nope %C3%A9");

        let mut resp = http::Response::new(axum::body::Body::empty());
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let out = answer(resp).await;
        assert_eq!(out.headers()["grpc-status"], "14");
        assert_eq!(out.headers()["grpc-message"], "Service Unavailable");
    }

    #[tokio::test]
    async fn leaves_successes_and_answers_already_in_grpc_terms() {
        let resp = http::Response::new(axum::body::Body::from("ok"));
        assert_eq!(answer(resp).await.status(), StatusCode::OK);
        let mut resp = http::Response::new(axum::body::Body::empty());
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("7"));
        let out = answer(resp).await;
        assert_eq!(out.status(), StatusCode::OK);
        assert_eq!(out.headers()["grpc-status"], "7");
        assert_eq!(out.headers()["content-type"], "application/grpc");
    }
}
