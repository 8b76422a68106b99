//! The JSON/TOML shapes of requests, responses and decisions on the command
//! line and in case files.

use std::collections::BTreeMap;

use crate::{Decision, Hooks, Request, Response, ResponseBuilder, ResponseExt, request, response};
use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sidecar_runtime::message::Completion;

/// A request: `{"method": "GET", "path": "/x", "headers": {"a": "b"}, "body": "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_route")]
    pub route: String,
    #[serde(default = "default_client")]
    pub client: String,
}

fn default_method() -> String {
    "GET".into()
}

fn default_route() -> String {
    "test".into()
}

fn default_client() -> String {
    "127.0.0.1:40000".into()
}

impl RequestSpec {
    pub fn parse_json(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text)
            .context("not a request object like {\"method\":\"GET\",\"path\":\"/\",\"headers\":{}}")
    }

    pub fn build(&self) -> Request {
        let mut b = request(&self.method, &self.path)
            .route(&self.route)
            .client(&self.client)
            .body(self.body.as_bytes());
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.build()
    }
}

/// A response: `{"status": 200, "headers": {...}, "body": "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn default_status() -> u16 {
    200
}

impl ResponseSpec {
    pub fn parse_json(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text)
            .context("not a response object like {\"status\":200,\"headers\":{},\"body\":\"\"}")
    }

    pub fn build(&self) -> Response {
        let mut b: ResponseBuilder = response(self.status).body(self.body.as_bytes());
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.build()
    }
}

/// `["name: value", ...]`: readable, ordered, and keeps repeated headers.
fn headers_json(headers: &[crate::Header]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|h| Value::String(format!("{}: {}", h.name, h.value)))
            .collect(),
    )
}

pub fn request_json(r: &Request) -> Value {
    json!({
        "method": r.method,
        "path": r.path,
        "headers": headers_json(&r.headers),
        "body": String::from_utf8_lossy(&r.body),
    })
}

pub fn response_json(r: &Response) -> Value {
    json!({ "status": r.status, "headers": headers_json(&r.headers), "body": r.text() })
}

pub fn decision_json(d: &Decision) -> Value {
    match d {
        Decision::Continue(None) => json!({ "continue": "unchanged" }),
        Decision::Continue(Some(r)) => json!({ "continue": request_json(r) }),
        Decision::Respond(r) => json!({ "respond": response_json(r) }),
    }
}

/// The hooks a policy asked for besides `on-request`.
pub fn hooks_json(h: Hooks) -> Value {
    json!({ "on_response": h.on_response, "on_complete": h.on_complete })
}

/// What the completion hook was told.
pub fn completion_json(c: &Completion) -> Value {
    json!({
        "status": c.status,
        "request_body_bytes": c.request_body_bytes,
        "response_body_bytes": c.response_body_bytes,
        "complete": c.complete,
        "error": c.error,
    })
}
