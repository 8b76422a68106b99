//! Glue between the generated bindings and the pure logic.

use std::sync::{Mutex, OnceLock, PoisonError};

use crate::config::Config;
use crate::entry::Entry;
use crate::headers::Headers;
use crate::policy::{self, Plan, Store};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Completion, Decision, Guest, Hooks, Request, Response};
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::{Body, Header, Reply};
use sidecar::policy::{clock, kv};

/// Set by `configure`; every request's instance starts from the configured
/// snapshot, so the hooks find it filled.
static CONFIG: OnceLock<Config> = OnceLock::new();

/// What `on-request` did, for `on-response` on the same instance.
enum Outcome {
    /// Not ours to touch.
    Bypass,
    /// Answered from the cache.
    Hit,
    /// Went upstream; the response may be stored under `key`.
    Miss { key: String },
}

/// Reset by every `on-request`, so an instance reused across requests
/// (`instances = "reuse"`) never acts on another request's outcome.
static OUTCOME: Mutex<Outcome> = Mutex::new(Outcome::Bypass);

fn set_outcome(outcome: Outcome) {
    *OUTCOME.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
}

fn take_outcome() -> Outcome {
    std::mem::replace(
        &mut OUTCOME.lock().unwrap_or_else(PoisonError::into_inner),
        Outcome::Bypass,
    )
}

/// The decisions ask for headers one name at a time; nothing else is copied.
impl Headers for Request {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header(name)
    }
}

impl Headers for Response {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header(name)
    }
}

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<Hooks, String> {
        policy_common::install(&CONFIG, Config::parse(&config)?)?;
        // Misses are stored and marked on the way back.
        Ok(Hooks::ON_RESPONSE)
    }

    fn on_request(req: &Request) -> Decision {
        set_outcome(Outcome::Bypass);
        // A cache must never block traffic: unconfigured means pass through.
        let Some(cfg) = CONFIG.get() else {
            return Decision::Continue;
        };
        let path = policy_common::path_and_query(req.path(), req.query());
        let Plan::Lookup { key, serve } = policy::request_plan(cfg, &req.method(), &path, req)
        else {
            return Decision::Continue;
        };
        // A stored variant for other `Vary` values is a miss: the response
        // to this request replaces it.
        if serve
            && let Some(entry) = kv::get(&key).as_deref().and_then(Entry::decode)
            && policy::vary_matches(&entry, req)
        {
            set_outcome(Outcome::Hit);
            let headers = policy::hit_headers(&entry, clock::now_micros());
            return Decision::Respond(Reply {
                status: entry.status,
                headers: headers
                    .into_iter()
                    .map(|(name, value)| Header {
                        name,
                        value: value.into_bytes(),
                    })
                    .collect(),
                body: entry.body,
            });
        }
        set_outcome(Outcome::Miss { key });
        Decision::Continue
    }

    fn on_response(req: &Request, resp: &Response) {
        let (Some(cfg), Outcome::Miss { key }) = (CONFIG.get(), take_outcome()) else {
            return;
        };
        store(cfg, key, req, resp);
        // Replace any upstream `x-cache` so the header always tells our story.
        // It cannot be refused: a valid, unmanaged header, in `on-response`.
        let _ = resp.set_header("x-cache", b"miss");
    }

    // Never called: `configure` does not ask for it.
    fn on_complete(_req: &Request, _resp: &Response, _info: Completion) {}
}

/// Stores the response under `key` if it may be stored. The body is read
/// only once the head says so, and only up to `max_entry_bytes`: a larger
/// one (`too-large`) goes on to the client unchanged and is not stored.
fn store(cfg: &Config, key: String, req: &Request, resp: &Response) {
    let status = resp.status();
    let Store::Yes { ttl_secs } = policy::store_decision(cfg, status, resp) else {
        return;
    };
    let headers = resp.headers();
    // Entries keep headers as text; a response with a value that is not
    // UTF-8 is rare enough to simply go unstored.
    let Some(text): Option<Vec<(&str, &str)>> = headers
        .iter()
        .map(|h| Some((h.name.as_str(), std::str::from_utf8(&h.value).ok()?)))
        .collect()
    else {
        return;
    };
    let max = u64::try_from(cfg.max_entry_bytes).unwrap_or(u64::MAX);
    let Body::Complete(body) = resp.body(max) else {
        return;
    };
    let Some(entry) = policy::entry_for(status, &text, req, body, clock::now_micros()) else {
        return;
    };
    let ttl_ms = ttl_secs.saturating_mul(1000);
    if let Err(e) = kv::set(&key, &entry.encode(), Some(ttl_ms)) {
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

export!(Component);
