//! Benchmark peer of the sidecar's auth policy: an Envoy HTTP filter
//! (proxy-wasm ABI 0.2.1, built for wasm32-wasip1) doing the same HS256 check
//! (see ../jwt-hs256).
//!
//! Configuration (the filter's `plugin_config.configuration`): JSON
//! `{"secret": "…"}`, or the secret as raw bytes. A request with a valid
//! token continues with `x-authenticated-user` set to its subject (replacing
//! any client-sent value); any other is answered 401 with a small JSON body.
//! The `authorization` value is read as bytes: proxy-wasm's text getter traps
//! on a value that is not UTF-8.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { secret: None }) });
}}

struct Root {
    secret: Option<Rc<[u8]>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match jwt_hs256::secret_from_config(&config) {
            Some(secret) => {
                self.secret = Some(secret.into());
                true
            }
            None => {
                proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    r#"proxy-wasm-jwt: the configuration needs a non-empty secret ({"secret": "…"})"#,
                )
                .ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            secret: self.secret.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    /// `None` only if configuration failed (Envoy then refuses the filter).
    secret: Option<Rc<[u8]>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(secret) = &self.secret else {
            self.send_http_response(
                500,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"jwt filter is not configured"}"#),
            );
            return Action::Pause;
        };
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let authorization = self.get_http_request_header_bytes("authorization");
        match jwt_hs256::check(authorization.as_deref().into_iter(), secret, now) {
            Ok(subject) => {
                self.set_http_request_header_bytes(
                    jwt_hs256::SUBJECT_HEADER,
                    Some(subject.as_bytes()),
                );
                Action::Continue
            }
            Err(denial) => {
                self.send_http_response(
                    401,
                    vec![
                        ("content-type", "application/json"),
                        ("www-authenticate", denial.challenge()),
                    ],
                    Some(denial.body().as_bytes()),
                );
                Action::Pause
            }
        }
    }
}
