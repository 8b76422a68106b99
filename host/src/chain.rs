//! A route's ordered policy chain, working on one [`Exchange`].
//!
//! Order is the whole contract here:
//! 1. request hooks run in chain order (the first policy listed sees the
//!    client's request first, e.g. logging before auth before cache);
//! 2. a policy that responds stops the walk: later request hooks and the
//!    upstream are skipped;
//! 3. response hooks run in reverse order, only for the policies whose
//!    request hook ran and that asked for them, so the policies before a
//!    denial still see its response (an access log records a 401 like a 200);
//! 4. completion hooks run once the response went out, for the policies
//!    whose request hook ran and that asked for them (see [`Completing`]).
//!
//! Bodies stream unless a policy reads them. A chain with a 0.1 policy
//! buffers them whole before that policy's hooks, within the 0.1 limits
//! (413 and 502 beyond them, as 0.1 sidecars did).
//!
//! A failing policy (trap, deadline, memory cap) is handled by its failure
//! mode: `closed` turns the request into a 503 at that point in the chain,
//! `open` skips the policy for this request.

use std::sync::Arc;
use std::time::Instant;

use crate::error::SidecarError;
use crate::message::{Completion, Exchange, Filled, Phase};
use crate::metrics::{Metrics, failure_reason};
use crate::telemetry::{HookOutcome, HookSpan};
use crate::upstream::UpstreamError;
use crate::wasm::{Contract, FailureMode, HookError, Policy, PolicyError, PolicyInstance, Verdict};

/// Policies in request-hook order.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    policies: Vec<Arc<Policy>>,
    /// Whether a 0.1 policy is in the chain: bodies are then buffered.
    buffers: bool,
}

/// Instances whose request hook ran, in chain order, for the way back.
pub struct Entered {
    instances: Vec<(Arc<Policy>, PolicyInstance)>,
    buffers: bool,
}

impl Chain {
    pub fn new(policies: Vec<Arc<Policy>>) -> Self {
        let buffers = policies.iter().any(|p| p.contract() == Contract::V01);
        Self { policies, buffers }
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// Runs the request hooks in order. When a policy answers (or fails
    /// closed), `exchange.response` holds the answer afterwards.
    ///
    /// # Errors
    /// The request cannot go through the chain at all (a 0.1 chain's body
    /// over its limit, a body that broke off, a policy's invalid change).
    pub async fn on_request(
        &self,
        exchange: &mut Exchange,
        metrics: &Metrics,
    ) -> Result<Entered, SidecarError> {
        let route = exchange.request.route.clone();
        if self.buffers {
            let limit = exchange.limits.v01_request;
            match exchange
                .request_body
                .fill(limit, exchange.limits.idle)
                .await
            {
                Ok(Filled::Complete(_)) => {}
                Ok(Filled::TooLarge) => return Err(SidecarError::BodyTooLarge { limit }),
                Err(e) => return Err(SidecarError::RequestBody(e)),
            }
        }
        let mut entered = Entered {
            instances: Vec::with_capacity(self.policies.len()),
            buffers: self.buffers,
        };
        for policy in &self.policies {
            let started = Instant::now();
            let span = HookSpan::start(policy.name(), "request");
            let called = span
                .run(async {
                    match policy
                        .instantiate(&route, &exchange.request.request_id)
                        .await
                    {
                        Ok(mut instance) => match instance.on_request(exchange).await {
                            Ok(verdict) => Ok((instance, verdict)),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(HookError::Policy(e)),
                    }
                })
                .await;
            metrics.policy_call(policy.name(), "request", started.elapsed());
            span.end(|| {
                outcome(&called, |(_, verdict)| match verdict {
                    Verdict::Respond(r) => HookOutcome::Respond(r.head.status.as_u16()),
                    Verdict::Continue => HookOutcome::Continue,
                })
            });
            // A body a policy read that broke off fails the request,
            // whatever the policy decided.
            if let Some(e) = exchange.request_body.failure() {
                return Err(SidecarError::RequestBody(e.clone()));
            }
            match called {
                Ok((instance, verdict)) => {
                    entered.instances.push((policy.clone(), instance));
                    if let Verdict::Respond(response) = verdict {
                        // An answer is a denial when it is an error; a
                        // cache hit answers too, with a 200.
                        if response.head.status.as_u16() >= 400 {
                            metrics.policy_denial(policy.name());
                        }
                        exchange.response = Some(response);
                        return Ok(entered);
                    }
                }
                Err(HookError::Message(e)) => return Err(SidecarError::from_message(e, &route)),
                Err(HookError::Policy(error)) => {
                    metrics.policy_failure(policy.name(), "request", &error);
                    if let Some(response) = on_failure(policy.failure_mode(), error, "request") {
                        exchange.response = Some(response.to_policy_response());
                        return Ok(entered);
                    }
                }
            }
        }
        Ok(entered)
    }
}

impl Entered {
    /// Runs the response hooks in reverse chain order, on
    /// `exchange.response` (which must be set).
    pub async fn on_response(&mut self, exchange: &mut Exchange, metrics: &Metrics) {
        exchange.phase = Phase::Response;
        let route = exchange.request.route.clone();
        if self.buffers {
            buffer_response(exchange).await;
        }
        for (policy, instance) in self.instances.iter_mut().rev() {
            if !policy.hooks().on_response {
                continue;
            }
            let started = Instant::now();
            let span = HookSpan::start(policy.name(), "response");
            let called = span.run(instance.on_response(exchange)).await;
            metrics.policy_call(policy.name(), "response", started.elapsed());
            span.end(|| outcome(&called, |()| HookOutcome::Continue));
            match called {
                Ok(()) => {}
                Err(HookError::Message(e)) => {
                    let error = SidecarError::from_message(e, &route);
                    tracing::warn!(%error, "policy output refused");
                    exchange.response = Some(error.to_policy_response());
                }
                Err(HookError::Policy(error)) => {
                    metrics.policy_failure(policy.name(), "response", &error);
                    if let Some(failed) = on_failure(policy.failure_mode(), error, "response") {
                        exchange.response = Some(failed.to_policy_response());
                    }
                }
            }
        }
    }

    /// What is left for after the response went out: the instances whose
    /// policies asked for the completion hook. `None` when there are none,
    /// so a chain without one costs nothing more.
    pub fn completing(self) -> Option<Completing> {
        let instances: Vec<_> = self
            .instances
            .into_iter()
            .filter(|(p, _)| p.hooks().on_complete)
            .collect();
        (!instances.is_empty()).then_some(Completing { instances })
    }
}

/// A 0.1 chain's response, buffered whole; too large becomes the 502 the
/// hooks then see.
async fn buffer_response(exchange: &mut Exchange) {
    let limit = exchange.limits.v01_response;
    let idle = exchange.limits.idle;
    let Some(resp) = exchange.response.as_mut() else {
        return;
    };
    let error = match resp.body.fill(limit, idle).await {
        Ok(Filled::Complete(_)) => return,
        Ok(Filled::TooLarge) => UpstreamError::ResponseTooLarge { limit },
        Err(e) => UpstreamError::BadResponse(format!("reading the body: {e}")),
    };
    tracing::warn!(%error, "upstream response refused for the 0.1 policies");
    exchange.response = Some(SidecarError::Upstream(error).to_policy_response());
}

/// The completion hooks of one exchange, waiting for its end.
pub struct Completing {
    instances: Vec<(Arc<Policy>, PolicyInstance)>,
}

impl Completing {
    /// Runs the completion hooks in reverse chain order (the order of the
    /// way back). Failures are logged and counted; nothing can change now.
    pub async fn run(mut self, mut exchange: Exchange, info: Completion, metrics: &Metrics) {
        exchange.phase = Phase::Complete;
        while let Some((policy, mut instance)) = self.instances.pop() {
            let started = Instant::now();
            let span = HookSpan::start(policy.name(), "complete");
            let called = span.run(instance.on_complete(&mut exchange, &info)).await;
            metrics.policy_call(policy.name(), "complete", started.elapsed());
            span.end(|| match &called {
                Ok(()) => HookOutcome::Continue,
                Err(e) => HookOutcome::Failed {
                    reason: failure_reason(e),
                    error: e.to_string(),
                },
            });
            if let Err(error) = called {
                metrics.policy_failure(policy.name(), "complete", &error);
                tracing::warn!(hook = "complete", %error, "policy failed in its completion hook");
            }
        }
    }
}

/// A hook call's outcome, for its span.
fn outcome<T>(called: &Result<T, HookError>, ok: impl FnOnce(&T) -> HookOutcome) -> HookOutcome {
    match called {
        Ok(value) => ok(value),
        Err(HookError::Policy(e)) => HookOutcome::Failed {
            reason: failure_reason(e),
            error: e.to_string(),
        },
        Err(HookError::Message(e)) => HookOutcome::Failed {
            reason: "invalid_output",
            error: e.to_string(),
        },
    }
}

/// Logs a policy failure (in the request's span, which carries its id) and
/// returns the error that replaces the request's response (fail closed) or
/// `None` to carry on without it (fail open).
fn on_failure(mode: FailureMode, error: PolicyError, hook: &str) -> Option<SidecarError> {
    match mode {
        FailureMode::Open => {
            tracing::warn!(hook, error = %error, "policy failed; skipped (failure = open)");
            None
        }
        FailureMode::Closed => {
            tracing::error!(hook, error = %error, "policy failed; answering 503 (failure = closed)");
            Some(SidecarError::Policy(error))
        }
    }
}
