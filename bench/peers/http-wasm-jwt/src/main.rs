//! Benchmark peer of the sidecar's auth policy: a Traefik 3 wasm middleware
//! (an http-wasm guest, built for wasm32-wasip1) doing the same HS256 check
//! (see ../jwt-hs256).
//!
//! Configuration (the middleware's options in Traefik's dynamic config, which
//! Traefik hands over as JSON): `secret: "…"`. A request with a valid token
//! continues with `x-authenticated-user` set to its subject (replacing any
//! client-sent value); any other is answered 401 with a small JSON body.
//!
//! Traefik runs `_start` (this `main`) once per guest instance, so the
//! secret is read once per instance, not per request. The current time comes
//! from WASI's wall clock (Traefik instantiates guests `WithSysWalltime`).

use std::time::{SystemTime, UNIX_EPOCH};

use http_wasm_guest::host::{Request, Response, admin};
use http_wasm_guest::{Guest, register};

struct Plugin {
    secret: Option<Vec<u8>>,
}

impl Guest for Plugin {
    fn handle_request(&self, request: &Request, response: &Response) -> (bool, i32) {
        let Some(secret) = &self.secret else {
            response.header.set(b"content-type", b"application/json");
            response.set_status(500);
            response.body.write(br#"{"error":"jwt middleware is not configured"}"#);
            return (false, 0);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let authorization = request.header.values(b"authorization");
        match jwt_hs256::check(authorization.iter().map(|v| &v[..]), secret, now) {
            Ok(subject) => {
                request
                    .header
                    .set(jwt_hs256::SUBJECT_HEADER.as_bytes(), subject.as_bytes());
                (true, 0)
            }
            Err(denial) => {
                response.header.set(b"content-type", b"application/json");
                response
                    .header
                    .set(b"www-authenticate", denial.challenge().as_bytes());
                // Status before body: writing the body sends the head.
                response.set_status(401);
                response.body.write(denial.body().as_bytes());
                (false, 0)
            }
        }
    }
}

fn main() {
    let secret = jwt_hs256::secret_from_config(&admin::config());
    if secret.is_none() {
        http_wasm_guest::host::log::write(
            3,
            b"http-wasm-jwt: the middleware config needs a non-empty secret",
        );
    }
    register(Plugin { secret });
}
