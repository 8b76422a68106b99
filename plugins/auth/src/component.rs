//! Glue between the generated bindings and the pure logic.

use std::sync::Mutex;

use crate::config::{Config, strip_query};
use crate::policy::{self, Reply, Verdict};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Decision, Guest, Request, Response};
use sidecar::policy::clock;
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::Header;

/// Set by `configure`, which runs at the start of every (fresh) instance.
static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<(), String> {
        let parsed = Config::parse(&config)?;
        *CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(parsed);
        Ok(())
    }

    fn on_request(mut req: Request) -> Decision {
        let guard = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cfg) = guard.as_ref() else {
            return Decision::Respond(to_response(policy::not_configured_reply()));
        };

        // Whatever happens next, a client-sent subject header must not reach
        // the upstream.
        let before = req.headers.len();
        req.headers.retain(|h| h.name != cfg.subject_header);
        let stripped = req.headers.len() != before;

        let authorization = req
            .headers
            .iter()
            .filter(|h| h.name == "authorization")
            .map(|h| h.value.as_str());
        match policy::evaluate(cfg, &req.path, authorization, clock::now_micros()) {
            Verdict::Public => Decision::Continue(stripped.then_some(req)),
            Verdict::Allow(subject) => {
                req.headers.push(Header {
                    name: cfg.subject_header.clone(),
                    value: subject,
                });
                Decision::Continue(Some(req))
            }
            Verdict::Deny(denial) => {
                log::emit(
                    Level::Warn,
                    "auth denied",
                    &[
                        field("code", denial.code.as_str()),
                        // The query may carry secrets; the path is enough.
                        field("path", strip_query(&req.path)),
                        field("method", &req.method),
                    ],
                );
                Decision::Respond(to_response(policy::denial_reply(&denial)))
            }
        }
    }

    fn on_response(_req: Request, resp: Response) -> Response {
        resp
    }
}

fn field(key: &str, value: &str) -> Field {
    Field {
        key: key.to_string(),
        value: Value::Str(value.to_string()),
    }
}

fn to_response(reply: Reply) -> Response {
    Response {
        status: reply.status,
        headers: reply
            .headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect(),
        body: reply.body,
    }
}

export!(Component);
