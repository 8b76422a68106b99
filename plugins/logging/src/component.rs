//! Glue between the generated bindings and the pure logic.

use std::sync::OnceLock;

use crate::access::{Exchange, FieldValue, access_fields, vouched_user};
use crate::config::Config;
use crate::redact::monitor_body;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Completion, Decision, Guest, Hooks, Request, Response};
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::{Body, Header, Reply};

/// Set by `configure`; every request's instance starts from the configured
/// snapshot, so the hooks find it filled.
static CONFIG: OnceLock<Config> = OnceLock::new();

/// The values of `user_header` the request carried when it reached
/// `on-request`: the client's word, never logged as the user (see
/// [`vouched_user`]). Set per request, on the request's own instance, which
/// `on-complete` runs on too.
static ARRIVED_USER: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

const MONITOR_REPLY: &[u8] = b"Request logged by Sidecar!";

/// The most of a monitor body read to log it: the request body limit of
/// contract 0.1, so whatever was logged then still is. JSON is redacted
/// key by key, which needs the whole body; text is cut to 4 KiB anyway.
const MONITOR_MAX_BODY: u64 = 1 << 20;

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<Hooks, String> {
        policy_common::install(&CONFIG, Config::parse(&config)?)?;
        // The access line is written once the exchange is over, when the
        // byte counts and the duration are known; nothing is changed on the
        // way back, so no response hook.
        Ok(Hooks::ON_COMPLETE)
    }

    fn on_request(req: &Request) -> Decision {
        // Logging must never block traffic: unconfigured means pass through.
        let Some(cfg) = CONFIG.get() else {
            return Decision::Continue;
        };
        // Set once per instance; a second call cannot happen.
        let _ = ARRIVED_USER.set(req.header(&cfg.user_header));
        if !cfg.is_monitor(&req.method(), &req.path()) {
            return Decision::Continue;
        }
        // The only body this policy ever reads.
        let (key, body) = match req.body(MONITOR_MAX_BODY) {
            Body::Complete(bytes) => monitor_body(&bytes, cfg),
            Body::TooLarge => ("body_omitted", "too large".to_owned()),
            Body::Unavailable => ("body_omitted", "unavailable".to_owned()),
        };
        log::emit(
            Level::Info,
            "monitor",
            &[Field {
                key: key.to_string(),
                value: Value::Str(body),
            }],
        );
        Decision::Respond(Reply {
            status: 200,
            headers: vec![Header {
                name: "content-type".into(),
                value: b"text/plain; charset=utf-8".to_vec(),
            }],
            body: MONITOR_REPLY.to_vec(),
        })
    }

    // Never called: `configure` does not ask for it.
    fn on_response(_req: &Request, _resp: &Response) {}

    fn on_complete(req: &Request, resp: &Response, info: Completion) {
        let Some(cfg) = CONFIG.get() else {
            return;
        };
        // `req` is the request as sent upstream, or as it stood when a policy
        // answered: on a denial before `auth` ran, the user header is still
        // the client's. Only a value set after this policy's request hook is
        // logged.
        let user = vouched_user(
            ARRIVED_USER.get().map(Vec::as_slice),
            req.header(&cfg.user_header),
        )
        .map(text);
        let cache = resp.header("x-cache").into_iter().next().map(text);
        let path = policy_common::path_and_query(req.path(), req.query());
        let error = (!info.complete).then(|| info.error.as_deref().unwrap_or("incomplete"));
        let fields = access_fields(
            cfg,
            &Exchange {
                method: &req.method(),
                path: &path,
                protocol: &req.protocol(),
                user: user.as_deref(),
                request_id: &req.request_id(),
                route: &req.route(),
                client: &req.client_addr(),
                status: info.status,
                cache: cache.as_deref(),
                request_bytes: info.request_body_bytes,
                response_bytes: info.response_body_bytes,
                duration_micros: info.duration_micros,
                error,
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
    }
}

/// A header value as log text. Values are bytes; one that is not UTF-8 is
/// logged with U+FFFD in place of the bad bytes.
fn text(value: Vec<u8>) -> String {
    String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

export!(Component);
