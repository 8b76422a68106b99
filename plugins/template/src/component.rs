//! Glue between the WIT bindings and the logic in `lib.rs`.
//!
//! The sidecar calls `configure` once when it loads the policy, snapshots
//! the configured instance, and starts every request's instance from that
//! snapshot: parse the config in `configure`, keep it in a global, and the
//! hooks find it there. The request and response stay on the host; a hook
//! gets handles and asks only for what it needs (here: one header).

use std::sync::OnceLock;

use crate::{Config, decide};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Completion, Decision, Guest, Hooks, Request, Response};
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::{Header, Reply};

/// Filled by `configure`. A host that cannot snapshot calls `configure` on
/// each fresh instance instead, which fills it the same way.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<Hooks, String> {
        // An `Err` refuses the config: the sidecar names it and keeps serving
        // with what it had.
        let config = Config::parse(&config)?;
        CONFIG
            .set(config)
            .map_err(|_| "configure ran twice on one instance".to_owned())?;
        // Only `on-request` is needed. Ask for `Hooks::ON_RESPONSE` to read
        // or change responses, `Hooks::ON_COMPLETE` to log finished exchanges.
        Ok(Hooks::empty())
    }

    fn on_request(req: &Request) -> Decision {
        let Some(config) = CONFIG.get() else {
            return Decision::Continue;
        };
        // One header, not the whole request; the body is never read, so it
        // streams upstream untouched (`req.body(max_bytes)` would buffer it).
        match decide(config, &req.header(&config.header)) {
            // Changes, had there been any, would go through `req.set_header`
            // and friends; `Continue` passes the request on as it now stands.
            None => Decision::Continue,
            Some((status, body)) => {
                log::emit(
                    Level::Warn,
                    "request refused",
                    &[Field {
                        key: "missing_header".into(),
                        value: Value::Str(config.header.clone()),
                    }],
                );
                Decision::Respond(Reply {
                    status,
                    headers: vec![Header {
                        name: "content-type".into(),
                        value: b"application/json".to_vec(),
                    }],
                    body: body.into_bytes(),
                })
            }
        }
    }

    // Every policy exports these two, but the sidecar calls them only when
    // `configure` asked for them: this one never did.
    fn on_response(_req: &Request, _resp: &Response) {}

    fn on_complete(_req: &Request, _resp: &Response, _info: Completion) {}
}

export!(Component);
