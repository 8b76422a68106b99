//! A route's ordered policy chain.
//!
//! Order is the whole contract here:
//! 1. request hooks run in chain order (the first policy listed sees the
//!    client's request first, e.g. logging before auth before cache);
//! 2. a policy that responds stops the walk: later request hooks and the
//!    upstream are skipped;
//! 3. response hooks run in reverse order, but only for the policies whose
//!    request hook ran, so the policies before a denial still see its
//!    response (an access log records a 401 like a 200).
//!
//! A failing policy (trap, deadline, memory cap) is handled by its failure
//! mode: `closed` turns the request into a 503 at that point in the chain,
//! `open` skips the policy for this request.

use std::sync::Arc;
use std::time::Instant;

use crate::bindings::{Decision, Request, Response};
use crate::error::SidecarError;
use crate::metrics::Metrics;
use crate::wasm::{FailureMode, Policy, PolicyError, PolicyInstance};

/// Policies in request-hook order.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    policies: Vec<Arc<Policy>>,
}

/// The result of the request hooks.
pub struct RequestOutcome {
    /// The request as the last policy left it: what goes upstream, and what
    /// response hooks see.
    pub request: Request,
    /// `Some` when a policy answered (or failed closed): skip the upstream.
    pub response: Option<Response>,
    /// The instances whose request hook ran, for the way back.
    pub entered: Entered,
}

/// Instances waiting for their response hook, in chain order.
pub struct Entered {
    instances: Vec<(FailureMode, PolicyInstance)>,
}

impl Chain {
    pub fn new(policies: Vec<Arc<Policy>>) -> Self {
        Self { policies }
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// Runs the request hooks in order.
    pub async fn on_request(
        &self,
        mut request: Request,
        route: &Arc<str>,
        request_id: &Arc<str>,
        metrics: &Metrics,
    ) -> RequestOutcome {
        let mut entered = Vec::with_capacity(self.policies.len());
        for policy in &self.policies {
            let started = Instant::now();
            let called = match policy.instantiate(route, request_id).await {
                Ok(mut instance) => instance.on_request(&request).await.map(|d| (instance, d)),
                Err(e) => Err(e),
            };
            metrics.policy_call(policy.name(), "request", started.elapsed());
            match called {
                Ok((instance, decision)) => {
                    entered.push((policy.failure_mode(), instance));
                    match decision {
                        Decision::Continue(None) => {}
                        Decision::Continue(Some(changed)) => request = changed,
                        Decision::Respond(response) => {
                            // An answer is a denial when it is an error; a
                            // cache hit answers too, with a 200.
                            if response.status >= 400 {
                                metrics.policy_denial(policy.name());
                            }
                            return RequestOutcome {
                                request,
                                response: Some(response),
                                entered: Entered { instances: entered },
                            };
                        }
                    }
                }
                Err(error) => {
                    metrics.policy_failure(policy.name(), "request", &error);
                    if let Some(response) = on_failure(policy.failure_mode(), error, "request") {
                        return RequestOutcome {
                            request,
                            response: Some(response),
                            entered: Entered { instances: entered },
                        };
                    }
                }
            }
        }
        RequestOutcome {
            request,
            response: None,
            entered: Entered { instances: entered },
        }
    }
}

impl Entered {
    /// Runs the response hooks in reverse chain order.
    pub async fn on_response(
        mut self,
        request: &Request,
        mut response: Response,
        metrics: &Metrics,
    ) -> Response {
        while let Some((mode, mut instance)) = self.instances.pop() {
            let started = Instant::now();
            let called = instance.on_response(request, &response).await;
            metrics.policy_call(instance.policy(), "response", started.elapsed());
            match called {
                Ok(changed) => response = changed,
                Err(error) => {
                    metrics.policy_failure(instance.policy(), "response", &error);
                    if let Some(failed) = on_failure(mode, error, "response") {
                        response = failed;
                    }
                }
            }
        }
        response
    }
}

/// Logs a policy failure (in the request's span, which carries its id) and
/// returns the response that replaces the request's (fail closed) or `None`
/// to carry on without it (fail open).
fn on_failure(mode: FailureMode, error: PolicyError, hook: &str) -> Option<Response> {
    match mode {
        FailureMode::Open => {
            tracing::warn!(hook, error = %error, "policy failed; skipped (failure = open)");
            None
        }
        FailureMode::Closed => {
            tracing::error!(hook, error = %error, "policy failed; answering 503 (failure = closed)");
            Some(SidecarError::Policy(error).to_policy_response())
        }
    }
}
