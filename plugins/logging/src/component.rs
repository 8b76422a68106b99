//! Glue between the generated bindings and the pure logic.

use std::sync::Mutex;

use crate::access::{Exchange, FieldValue, access_fields};
use crate::config::Config;
use crate::redact::monitor_body;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Decision, Guest, Request, Response};
use sidecar::policy::clock;
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::Header;

/// Per-instance state. `on_request` sets `started_micros` before anything
/// reads it, so an instance reused across requests (`instances = "reuse"`)
/// never reports another request's start.
struct State {
    config: Option<Config>,
    started_micros: Option<u64>,
}

static STATE: Mutex<State> = Mutex::new(State {
    config: None,
    started_micros: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

const MONITOR_REPLY: &[u8] = b"Request logged by Sidecar!";

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<(), String> {
        state().config = Some(Config::parse(&config)?);
        Ok(())
    }

    fn on_request(req: Request) -> Decision {
        let mut st = state();
        st.started_micros = Some(clock::now_micros());
        // Logging must never block traffic: unconfigured means pass through.
        let Some(cfg) = st.config.as_ref() else {
            return Decision::Continue(None);
        };
        if !cfg.is_monitor(&req.method, &req.path) {
            return Decision::Continue(None);
        }
        let (key, body) = monitor_body(&req.body, cfg);
        log::emit(
            Level::Info,
            "monitor",
            &[Field {
                key: key.to_string(),
                value: Value::Str(body),
            }],
        );
        Decision::Respond(Response {
            status: 200,
            headers: vec![Header {
                name: "content-type".into(),
                value: "text/plain; charset=utf-8".into(),
            }],
            body: MONITOR_REPLY.to_vec(),
        })
    }

    fn on_response(req: Request, resp: Response) -> Response {
        let st = state();
        let Some(cfg) = st.config.as_ref() else {
            return resp;
        };
        let req_headers = pairs(&req.headers);
        let resp_headers = pairs(&resp.headers);
        let fields = access_fields(
            cfg,
            &Exchange {
                method: &req.method,
                path: &req.path,
                req_headers: &req_headers,
                route: &req.route,
                client: &req.client_addr,
                status: resp.status,
                resp_headers: &resp_headers,
                body_len: resp.body.len(),
                started_micros: st.started_micros,
                now_micros: clock::now_micros(),
            },
        );
        let fields: Vec<Field> = fields
            .into_iter()
            .map(|(key, value)| Field {
                key: key.to_string(),
                value: match value {
                    FieldValue::Str(s) => Value::Str(s),
                    FieldValue::Int(i) => Value::Int(i),
                    FieldValue::Float(f) => Value::Float(f),
                },
            })
            .collect();
        log::emit(Level::Info, "access", &fields);
        resp
    }
}

fn pairs(headers: &[Header]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect()
}

export!(Component);
