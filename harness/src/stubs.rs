//! What a policy's `outbound` calls reach under the harness: answers the
//! test wrote ([`Stub`]), never the network. The host's checks still apply
//! in front of them (the grant, the quota, redirects, the cache).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use sidecar_runtime::capabilities::{
    HttpClient, OutboundRequest, OutboundResponse, SendError, SendFuture,
};

/// What a stubbed URL answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stub {
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The call times out (at once: tests do not sleep).
    Timeout,
    /// Connecting failed, with this reason.
    Fail(String),
}

impl Stub {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::reply(
            status,
            vec![("content-type".into(), "application/json".into())],
            body.into().into_bytes(),
        )
    }

    pub fn reply(status: u16, headers: Vec<(String, String)>, body: impl Into<Vec<u8>>) -> Self {
        Self::Reply {
            status,
            headers,
            body: body.into(),
        }
    }

    /// Adds a header to a reply (e.g. `cache-control: max-age=300`).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Reply { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// The stub table: the [`HttpClient`] of a harness.
#[derive(Debug, Default)]
pub(crate) struct Stubs {
    replies: Mutex<HashMap<(String, String), Stub>>,
    requests: Mutex<Vec<String>>,
}

/// `url` as the host prints a request's URL (`https://a` is `https://a/`).
pub(crate) fn normalize(url: &str) -> String {
    url.parse::<Uri>()
        .map_or_else(|_| url.to_owned(), |u| u.to_string())
}

impl Stubs {
    pub(crate) fn set(&self, method: &str, url: &str, stub: Stub) {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((method.to_ascii_uppercase(), normalize(url)), stub);
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl HttpClient for Stubs {
    fn send(&self, req: OutboundRequest, _: Duration, max_bytes: usize) -> SendFuture<'_> {
        let url = req.uri.to_string();
        let line = format!("{} {url}", req.method);
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        let stub = self
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(req.method.to_string(), url))
            .cloned();
        let answer = match stub {
            None => Err(SendError::Failed(format!(
                "no stub for {line} (Harness::stub)"
            ))),
            Some(Stub::Timeout) => Err(SendError::Timeout),
            Some(Stub::Fail(reason)) => Err(SendError::Failed(reason)),
            Some(Stub::Reply { body, .. }) if body.len() > max_bytes => {
                Err(SendError::TooLarge(max_bytes))
            }
            Some(Stub::Reply {
                status,
                headers,
                body,
            }) => response(status, &headers, body),
        };
        Box::pin(async move { answer })
    }
}

fn response(
    status: u16,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<OutboundResponse, SendError> {
    let bad = |what: String| SendError::Failed(format!("invalid stub: {what}"));
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(format!("header `{name}`")))?,
            HeaderValue::from_str(value).map_err(|_| bad(format!("value of `{name}`")))?,
        );
    }
    Ok(OutboundResponse {
        status: StatusCode::from_u16(status).map_err(|_| bad(format!("status {status}")))?,
        headers: map,
        body: Bytes::from(body),
    })
}
