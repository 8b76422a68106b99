//! Glue between the WIT bindings and the logic in `lib.rs`.

use std::sync::Mutex;

use crate::{Config, decide};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Decision, Guest, Request, Response};
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::Header;

/// Set by `configure`, which runs first in every (fresh, per-request) instance.
static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<(), String> {
        *CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Config::parse(&config)?);
        Ok(())
    }

    fn on_request(req: Request) -> Decision {
        let guard = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
        let Some(config) = guard.as_ref() else {
            return Decision::Continue(None);
        };
        match decide(config, req.headers.iter().map(|h| h.name.as_str())) {
            None => Decision::Continue(None),
            Some((status, body)) => {
                log::emit(
                    Level::Warn,
                    "request refused",
                    &[Field {
                        key: "missing_header".into(),
                        value: Value::Str(config.header.clone()),
                    }],
                );
                Decision::Respond(Response {
                    status,
                    headers: vec![Header {
                        name: "content-type".into(),
                        value: "application/json".into(),
                    }],
                    body: body.into_bytes(),
                })
            }
        }
    }

    fn on_response(_req: Request, resp: Response) -> Response {
        resp
    }
}

export!(Component);
