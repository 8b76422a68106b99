//! Glue between the generated bindings and the pure logic: the contract's
//! imports behind `Imports`, the hooks around `policy::evaluate`.

use std::sync::OnceLock;

use crate::config::Config;
use crate::imports::{self, FetchError, HttpResponse, Imports};
use crate::jwks;
use crate::keys::{Alg, KeyMaterial};
use crate::policy::{self, Reply, Verdict};

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::sidecar::policy::handler::{Completion, Decision, Guest, Hooks, Request, Response};
use sidecar::policy::crypto::{self, PublicKey, RsaPublicKey, SignatureAlgorithm};
use sidecar::policy::log::{self, Field, Level, Value};
use sidecar::policy::types::{self, Header};
use sidecar::policy::{clock, kv, outbound};

/// Set by `configure` (with the key sets it fetched); every request's
/// instance starts from the configured snapshot, so the hooks find it filled.
static CONFIG: OnceLock<Config> = OnceLock::new();

struct Component;

impl Guest for Component {
    fn configure(config: String) -> Result<Hooks, String> {
        let mut cfg = Config::parse(&config)?;
        jwks::prime_all(&mut cfg.providers, cfg.by_issuer, &Host)?;
        policy_common::install(&CONFIG, cfg)?;
        // Everything is decided on the request: nothing to do on the way back.
        Ok(Hooks::empty())
    }

    fn on_request(req: &Request) -> Decision {
        let Some(cfg) = CONFIG.get() else {
            return respond(policy::not_configured_reply());
        };

        // Whatever happens next, client-sent identity headers must not reach
        // the upstream (nor the access log of a denied request). Asking
        // first keeps an untouched request untouched.
        for (_, header) in &cfg.claims_to_headers {
            if !req.header(header).is_empty()
                && let Err(e) = req.remove_header(header)
            {
                return edit_refused(&e);
            }
        }

        let authorization = req.header("authorization");
        let path = req.path();
        let verdict = policy::evaluate(cfg, &path, authorization.iter().map(Vec::as_slice), &Host);
        match verdict {
            Verdict::Public => Decision::Continue,
            Verdict::Allow(headers) => {
                for (name, value) in headers {
                    if let Err(e) = req.set_header(&name, value.as_bytes()) {
                        return edit_refused(&e);
                    }
                }
                Decision::Continue
            }
            Verdict::Deny(denial) => {
                log_denial(req, &path, denial.code.as_str());
                respond(policy::denial_reply(&denial))
            }
            Verdict::Forbid(missing) => {
                log_denial(req, &path, policy::INSUFFICIENT_SCOPE);
                respond(policy::forbidden_reply(&missing))
            }
        }
    }

    // Never called: `configure` asks for neither hook.
    fn on_response(_req: &Request, _resp: &Response) {}

    fn on_complete(_req: &Request, _resp: &Response, _info: Completion) {}
}

fn log_denial(req: &Request, path: &str, code: &str) {
    log::emit(
        Level::Warn,
        "auth denied",
        &[
            field("code", code),
            // `path()` has no query, which may carry secrets.
            field("path", path),
            field("method", &req.method()),
        ],
    );
}

/// The contract's imports, as the logic asks for them.
struct Host;

impl Imports for Host {
    fn now_micros(&self) -> u64 {
        clock::now_micros()
    }

    fn verify(&self, alg: Alg, key: &KeyMaterial, message: &[u8], sig: &[u8]) -> bool {
        let algorithm = match alg {
            Alg::Rs256 => SignatureAlgorithm::Rs256,
            Alg::Rs384 => SignatureAlgorithm::Rs384,
            Alg::Rs512 => SignatureAlgorithm::Rs512,
            Alg::Ps256 => SignatureAlgorithm::Ps256,
            Alg::Ps384 => SignatureAlgorithm::Ps384,
            Alg::Ps512 => SignatureAlgorithm::Ps512,
            Alg::Es256 => SignatureAlgorithm::Es256,
            Alg::Es384 => SignatureAlgorithm::Es384,
            Alg::EdDsa => SignatureAlgorithm::Ed25519,
        };
        let key = match key {
            KeyMaterial::Rsa { n, e } => PublicKey::Rsa(RsaPublicKey {
                n: n.clone(),
                e: e.clone(),
            }),
            KeyMaterial::Ec(point) => PublicKey::Ec(point.clone()),
            KeyMaterial::Ed25519(x) => PublicKey::Ed25519(x.clone()),
        };
        crypto::verify(algorithm, &key, message, sig)
    }

    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        kv::set(key, value, ttl_ms).map_err(kv_error)
    }

    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        kv::increment(key, delta, ttl_ms).map_err(kv_error)
    }

    fn get(&self, url: &str, fresh: bool) -> Result<HttpResponse, FetchError> {
        let mut headers = vec![Header {
            name: "accept".into(),
            value: b"application/jwk-set+json, application/json".to_vec(),
        }];
        if fresh {
            // A rotation is what we look for: not a copy kept on the way.
            headers.push(Header {
                name: "cache-control".into(),
                value: b"no-cache".to_vec(),
            });
        }
        let request = outbound::OutgoingRequest {
            method: "GET".into(),
            url: url.into(),
            headers,
            body: Vec::new(),
        };
        match outbound::send(&request) {
            Ok(r) => Ok(HttpResponse {
                status: r.status,
                body: r.body,
            }),
            Err(outbound::Error::Denied(m)) => Err(FetchError::Denied(m)),
            Err(outbound::Error::Invalid(m)) => Err(FetchError::Failed(format!("invalid: {m}"))),
            Err(outbound::Error::Timeout) => Err(FetchError::Failed("timeout".into())),
            Err(outbound::Error::TooLarge) => Err(FetchError::Failed("too large".into())),
            Err(outbound::Error::Failed(m)) => Err(FetchError::Failed(m)),
        }
    }

    fn warn(&self, message: &str, fields: &[(&str, imports::Field)]) {
        let fields: Vec<Field> = fields
            .iter()
            .map(|(key, value)| Field {
                key: (*key).to_owned(),
                value: match value {
                    imports::Field::Str(s) => Value::Str(s.clone()),
                    imports::Field::Int(i) => Value::Int(*i),
                },
            })
            .collect();
        log::emit(Level::Warn, message, &fields);
    }
}

fn kv_error(e: kv::Error) -> String {
    match e {
        kv::Error::TooLarge(m) => format!("too large: {m}"),
        kv::Error::Other(m) => m,
    }
}

/// The host refused to change an identity header: forwarding now could pass
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
