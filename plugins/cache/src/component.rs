//! Glue between the generated bindings and the pure logic.

use std::sync::Mutex;

use crate::config::Config;
use crate::entry::Entry;
use crate::policy::{self, Plan, Store};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Decision, Guest, Request, Response};
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::Header;
use sidecar::policy::{clock, kv};

/// What `on-request` did, for `on-response` on the same instance.
enum Outcome {
    /// Not ours to touch.
    Bypass,
    /// Answered from the cache.
    Hit,
    /// Went upstream; the response may be stored under `key`.
    Miss { key: String },
}

struct State {
    config: Option<Config>,
    outcome: Outcome,
}

static STATE: Mutex<State> = Mutex::new(State {
    config: None,
    outcome: Outcome::Bypass,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<(), String> {
        state().config = Some(Config::parse(&config)?);
        Ok(())
    }

    fn on_request(req: Request) -> Decision {
        let mut st = state();
        st.outcome = Outcome::Bypass;
        // A cache must never block traffic: unconfigured means pass through.
        let Some(cfg) = st.config.as_ref() else {
            return Decision::Continue(None);
        };
        let headers = pairs(&req.headers);
        let Plan::Lookup { key, serve } =
            policy::request_plan(cfg, &req.method, &req.path, &headers)
        else {
            return Decision::Continue(None);
        };
        // A stored variant for other `Vary` values is a miss: the response
        // to this request replaces it.
        if serve
            && let Some(entry) = kv::get(&key).as_deref().and_then(Entry::decode)
            && policy::vary_matches(&entry, &headers)
        {
            st.outcome = Outcome::Hit;
            let headers = policy::hit_headers(&entry, clock::now_micros());
            return Decision::Respond(Response {
                status: entry.status,
                headers: headers
                    .into_iter()
                    .map(|(name, value)| Header { name, value })
                    .collect(),
                body: entry.body,
            });
        }
        st.outcome = Outcome::Miss { key };
        Decision::Continue(None)
    }

    fn on_response(req: Request, mut resp: Response) -> Response {
        let st = state();
        let (Some(cfg), Outcome::Miss { key }) = (st.config.as_ref(), &st.outcome) else {
            return resp;
        };
        let headers = pairs(&resp.headers);
        match policy::store_decision(cfg, resp.status, &headers, resp.body.len()) {
            Store::Yes { ttl_secs } => {
                let entry = policy::entry_for(
                    resp.status,
                    &headers,
                    &pairs(&req.headers),
                    resp.body.clone(),
                    clock::now_micros(),
                );
                let ttl_ms = ttl_secs.saturating_mul(1000);
                if let Err(e) = kv::set(key, &entry.encode(), Some(ttl_ms)) {
                    let reason = match e {
                        kv::Error::TooLarge(m) => format!("too large: {m}"),
                        kv::Error::Other(m) => m,
                    };
                    log::emit(
                        Level::Warn,
                        "cache store failed",
                        &[Field {
                            key: "error".into(),
                            value: Value::Str(reason),
                        }],
                    );
                }
            }
            Store::No(_) => {}
        }
        // Replace any upstream `x-cache` so the header always tells our story.
        resp.headers.retain(|h| h.name != "x-cache");
        resp.headers.push(Header {
            name: "x-cache".into(),
            value: "miss".into(),
        });
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
