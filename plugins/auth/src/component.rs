//! Glue between the generated bindings and the pure logic.

use std::sync::OnceLock;

use crate::config::Config;
use crate::policy::{self, Reply, Verdict};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Completion, Decision, Guest, Hooks, Request, Response};
use sidecar::policy::clock;
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::{self, Header};

/// Set by `configure`; every request's instance starts from the configured
/// snapshot, so the hooks find it filled.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<Hooks, String> {
        policy_common::install(&CONFIG, Config::parse(&config)?)?;
        // Everything is decided on the request: nothing to do on the way back.
        Ok(Hooks::empty())
    }

    fn on_request(req: &Request) -> Decision {
        let Some(cfg) = CONFIG.get() else {
            return respond(policy::not_configured_reply());
        };

        // Whatever happens next, a client-sent subject header must not reach
        // the upstream (nor the access log of a denied request). Asking
        // first keeps an untouched request untouched.
        if !req.header(&cfg.subject_header).is_empty()
            && let Err(e) = req.remove_header(&cfg.subject_header)
        {
            return edit_refused(&e);
        }

        let authorization = req.header("authorization");
        let path = req.path();
        let verdict = policy::evaluate(
            cfg,
            &path,
            authorization.iter().map(Vec::as_slice),
            clock::now_micros(),
        );
        match verdict {
            Verdict::Public => Decision::Continue,
            Verdict::Allow(subject) => {
                match req.set_header(&cfg.subject_header, subject.as_bytes()) {
                    Ok(()) => Decision::Continue,
                    Err(e) => edit_refused(&e),
                }
            }
            Verdict::Deny(denial) => {
                log::emit(
                    Level::Warn,
                    "auth denied",
                    &[
                        field("code", denial.code.as_str()),
                        // `path()` has no query, which may carry secrets.
                        field("path", &path),
                        field("method", &req.method()),
                    ],
                );
                respond(policy::denial_reply(&denial))
            }
        }
    }

    // Never called: `configure` asks for neither hook.
    fn on_response(_req: &Request, _resp: &Response) {}

    fn on_complete(_req: &Request, _resp: &Response, _info: Completion) {}
}

/// The host refused to change the subject header: forwarding now could pass
/// a spoofed identity on, so answer instead.
fn edit_refused(error: &types::EditError) -> Decision {
    let reason = match error {
        types::EditError::Invalid(m) => m.as_str(),
        types::EditError::ReadOnly => "read-only",
    };
    log::emit(
        Level::Error,
        "auth could not update the request",
        &[field("error", reason)],
    );
    respond(policy::edit_refused_reply())
}

fn field(key: &str, value: &str) -> Field {
    Field {
        key: key.to_string(),
        value: Value::Str(value.to_string()),
    }
}

fn respond(reply: Reply) -> Decision {
    Decision::Respond(types::Reply {
        status: reply.status,
        headers: reply
            .headers
            .into_iter()
            .map(|(name, value)| Header {
                name,
                value: value.into_bytes(),
            })
            .collect(),
        body: reply.body,
    })
}

export!(Component);
