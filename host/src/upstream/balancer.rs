//! Several endpoints behind one route: which one gets a request, which ones
//! are out of rotation, and when a failed attempt is tried again.
//!
//! [`Upstreams::send`] is the request path's one call. For each attempt it
//! picks an endpoint ([`Strategy`]: round-robin, or least-requests = fewest
//! in flight), makes one [`UpstreamClient::send`], and records the outcome:
//!
//! - **Passive health.** `eject_after_failures` failures in a row (connection
//!   failed or reset, timeout, invalid answer, or a 502/503/504 answer) eject
//!   the endpoint for `eject`, doubled for each ejection in a row, at most
//!   `max_eject`. A success resets both counts. When every endpoint is
//!   ejected they are all tried anyway (Envoy's "panic mode"): failing fast
//!   would turn a blip into an outage.
//! - **Active health** (off unless a path is set): a task per route probes
//!   each endpoint every `interval`; a failed probe ejects, a 2xx re-admits.
//!   The task holds only a [`Weak`] reference, so it ends once a reload has
//!   replaced its gateway and the last request on it has finished.
//! - **Retries.** Only when the attempt got no answer at all: any method
//!   when no connection could be made ([`UpstreamError::Unreachable`]: the
//!   request was never sent), idempotent methods only when the connection
//!   closed before a response ([`UpstreamError::Unavailable`]: it may have
//!   been handled); never after a response started. Each retry goes to an endpoint not tried yet when there is one,
//!   all within the route's timeout, and only while the route's
//!   [`RetryBudget`] allows, so retries cannot multiply the load of an outage.
//!
//! A reload builds new [`Upstreams`]; an endpoint that stays (same route,
//! same URL) keeps its state (health, counts, in-flight), new ones start
//! healthy, and the retry budget starts fresh.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Uri};
use hyper::body::Incoming;
use serde::Serialize;

use super::health::{Health, probe};
use super::retry::RetryBudget;
use super::{BalanceSettings, HealthCheck, RetryBudgetSettings, Strategy, lock};
use super::{UpstreamClient, UpstreamError};
use crate::message::{Body, BoxBody};
use crate::metrics::Metrics;
use crate::telemetry::Attempt;

/// Request bodies up to this size, with a `content-length`, are buffered
/// on routes that retry, so that they can be sent again.
const REPLAY_BUFFER_BYTES: usize = 64 * 1024;

/// The endpoints of one route and what is known about them.
#[derive(Debug)]
pub struct Upstreams {
    route: Arc<str>,
    endpoints: Vec<Endpoint>,
    settings: BalanceSettings,
    /// Turns for round-robin and for least-requests' ties.
    next: AtomicUsize,
    budget: RetryBudget,
}

#[derive(Debug)]
struct Endpoint {
    uri: Uri,
    /// The URL as written in metrics and the admin view.
    label: String,
    /// Shared with the previous gateway's endpoint of the same URL, so a
    /// reload neither forgets an ejection nor miscounts requests in flight.
    state: Arc<EndpointState>,
}

#[derive(Debug, Default)]
struct EndpointState {
    in_flight: AtomicUsize,
    /// Attempts sent, and those that failed (passive health's sense).
    requests: AtomicU64,
    failures: AtomicU64,
    health: Mutex<Health>,
}

/// Decrements an endpoint's in-flight count when the attempt ends, however
/// it ends (a cancelled request included).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// RFC 9110's idempotent methods: sending one twice has the effect of once.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Upstreams {
    /// The endpoints `uris` of `route`, in this order; an endpoint of
    /// `previous` (the same route before a reload) with the same URL passes
    /// on its state.
    pub fn new(
        route: Arc<str>,
        uris: &[Uri],
        settings: BalanceSettings,
        budget: RetryBudgetSettings,
        previous: Option<&Self>,
    ) -> Self {
        let endpoints = uris
            .iter()
            .map(|uri| {
                let label = uri.to_string().trim_end_matches('/').to_owned();
                let state = previous
                    .and_then(|p| p.endpoints.iter().find(|e| e.label == label))
                    .map_or_else(Arc::default, |e| e.state.clone());
                Endpoint {
                    uri: uri.clone(),
                    label,
                    state,
                }
            })
            .collect();
        Self {
            route,
            endpoints,
            settings,
            next: AtomicUsize::new(0),
            budget: RetryBudget::new(budget, Instant::now()),
        }
    }

    pub fn settings(&self) -> &BalanceSettings {
        &self.settings
    }

    /// The endpoints' URLs, in config order.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.label.as_str())
    }

    /// Sends the request that `request_for` builds for an endpoint with
    /// `body`, retrying as the module docs say, all within `timeout` (the
    /// time to the response head; the body streams after it).
    ///
    /// A body that is not all buffered can be sent once only: such a request
    /// is never retried (a replay would need the bytes already streamed).
    /// On a route that retries, a body of announced length up to 64 KiB is
    /// buffered first for that reason.
    ///
    /// # Errors
    /// What `request_for` returns, or the last attempt's [`UpstreamError`]
    /// (a timeout names `timeout`, the route's whole allowance).
    pub async fn send<E: From<UpstreamError>>(
        &self,
        client: &UpstreamClient,
        metrics: &Metrics,
        request_for: impl Fn(&Uri, BoxBody) -> Result<http::Request<BoxBody>, E>,
        body: Body,
        timeout: Duration,
    ) -> Result<http::Response<Incoming>, E> {
        let deadline = Instant::now() + timeout;
        self.budget.deposit(Instant::now());
        let mut tried = Vec::new();
        let mut body = body;
        // As Envoy does for retries: a small body of announced length is
        // read first, so a request whose connection failed can be replayed.
        if self.settings.retries > 0
            && self.endpoints.len() > 1
            && body
                .known_len()
                .is_some_and(|n| n <= REPLAY_BUFFER_BYTES as u64)
        {
            // A failure stays on the body and fails the send below.
            let _ = body.fill(REPLAY_BUFFER_BYTES, timeout).await;
        }
        // `Some` while a copy can still be sent.
        let mut body = Some(body);
        loop {
            let i = self.pick(&tried, Instant::now());
            let endpoint = &self.endpoints[i];
            let this = body.take().expect("only retried while a body is left");
            // A buffered body is kept for a retry; a stream goes once.
            body = this.try_clone();
            let mut request = request_for(&endpoint.uri, this.into_stream())?;
            let idempotent = is_idempotent(request.method());
            let left = deadline.saturating_duration_since(Instant::now());
            // Its span's id goes upstream in `traceparent` (traces on).
            let attempt = Attempt::start(&mut request, &endpoint.label, tried.len());
            let result = {
                let _in_flight = InFlight::enter(&endpoint.state.in_flight);
                client.send(request, left).await
            };
            attempt.end(
                result
                    .as_ref()
                    .map(http::Response::status)
                    .map_err(|e| (e.kind(), e)),
            );
            let result = result.map_err(|e| match e {
                UpstreamError::Timeout(_) => UpstreamError::Timeout(timeout),
                other => other,
            });
            let error = match result {
                // Not the endpoint's failure: nothing to record or retry.
                Err(e @ UpstreamError::ClientBody(_)) => return Err(e.into()),
                result => {
                    self.record(endpoint, result.as_ref().map(|r| r.status()), metrics);
                    match result {
                        Ok(answer) => return Ok(answer),
                        Err(error) => error,
                    }
                }
            };
            tried.push(i);
            let retryable = match error {
                UpstreamError::Unreachable(_) => true,
                UpstreamError::Unavailable(_) => idempotent,
                _ => false,
            } && body.is_some()
                && tried.len() <= self.settings.retries as usize
                && Instant::now() < deadline;
            if !retryable {
                return Err(error.into());
            }
            if !self.budget.withdraw(Instant::now()) {
                metrics.upstream_retry(&self.route, "budget_exhausted");
                tracing::warn!(route = %self.route, %error, "retry budget spent; not retrying");
                return Err(error.into());
            }
            metrics.upstream_retry(&self.route, "retried");
            tracing::debug!(route = %self.route, endpoint = %endpoint.label, %error, "retrying on another endpoint");
        }
    }

    /// The endpoint for the next attempt: one not `tried` and not ejected;
    /// failing that, one not tried (every endpoint ejected: try them anyway);
    /// failing that (all tried), any, healthy ones first.
    fn pick(&self, tried: &[usize], now: Instant) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        let healthy: Vec<bool> = self
            .endpoints
            .iter()
            .map(|e| !lock(&e.state.health).is_ejected(now))
            .collect();
        let untried = |i: &usize| !tried.contains(i);
        let mut candidates: Vec<usize> = (0..n).filter(|i| untried(i) && healthy[*i]).collect();
        if candidates.is_empty() {
            candidates = (0..n).filter(untried).collect();
        }
        if candidates.is_empty() {
            candidates = (0..n).filter(|i| healthy[*i]).collect();
        }
        if candidates.is_empty() {
            candidates = (0..n).collect();
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let len = candidates.len();
        match self.settings.strategy {
            Strategy::RoundRobin => candidates[turn % len],
            // The first of the least loaded, counting from this turn's
            // candidate, so idle endpoints share the load evenly.
            Strategy::LeastRequests => (0..len)
                .map(|k| candidates[(turn + k) % len])
                .min_by_key(|&i| self.endpoints[i].state.in_flight.load(Ordering::Relaxed))
                .unwrap_or(candidates[0]),
        }
    }

    /// Counts an attempt's outcome for passive health and the metrics.
    fn record(
        &self,
        endpoint: &Endpoint,
        result: Result<http::StatusCode, &UpstreamError>,
        metrics: &Metrics,
    ) {
        let (outcome, failed) = match result {
            Ok(status) if matches!(status.as_u16(), 502..=504) => ("gateway_error", true),
            Ok(_) => ("ok", false),
            // A response over the size limit is no sign of a sick endpoint.
            Err(e) => (
                e.kind(),
                !matches!(e, UpstreamError::ResponseTooLarge { .. }),
            ),
        };
        let state = &endpoint.state;
        state.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            state.failures.fetch_add(1, Ordering::Relaxed);
        }
        metrics.upstream_attempt(&self.route, &endpoint.label, outcome);
        let ejected = lock(&state.health).record(failed, Instant::now(), &self.settings);
        if let Some(length) = ejected {
            metrics.upstream_ejection(&self.route, &endpoint.label, "failures");
            tracing::warn!(
                route = %self.route,
                endpoint = %endpoint.label,
                failures = self.settings.eject_after_failures,
                ejected_for = ?length,
                "upstream endpoint ejected after failures in a row"
            );
        }
    }

    /// One round of active checks, one endpoint after the other.
    async fn probe_all(&self, check: &HealthCheck, client: &UpstreamClient, metrics: &Metrics) {
        for endpoint in &self.endpoints {
            let healthy = probe(&endpoint.uri, check, client).await;
            let now = Instant::now();
            let mut health = lock(&endpoint.state.health);
            match (healthy, health.is_ejected(now)) {
                (Ok(()), true) => {
                    *health = Health::default();
                    tracing::info!(route = %self.route, endpoint = %endpoint.label, "health check passed; endpoint back in rotation");
                }
                (Err(why), false) => {
                    let length = health.eject(now, &self.settings);
                    drop(health);
                    metrics.upstream_ejection(&self.route, &endpoint.label, "health_check");
                    tracing::warn!(route = %self.route, endpoint = %endpoint.label, %why, ejected_for = ?length, "health check failed; endpoint ejected");
                }
                _ => {}
            }
        }
    }

    /// What the admin view and the health gauge show.
    pub fn view(&self) -> UpstreamsView {
        let now = Instant::now();
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| {
                let health = lock(&e.state.health).clone();
                let ejected_for = health
                    .ejected_until
                    .map(|until| until.saturating_duration_since(now))
                    .filter(|d| !d.is_zero());
                EndpointView {
                    url: e.label.clone(),
                    healthy: ejected_for.is_none(),
                    ejected_until_unix_ms: ejected_for.map(|d| {
                        (SystemTime::now() + d)
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                    }),
                    ejected_for_ms: ejected_for
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    consecutive_failures: health.consecutive_failures,
                    in_flight: e.state.in_flight.load(Ordering::Relaxed),
                    requests: e.state.requests.load(Ordering::Relaxed),
                    failures: e.state.failures.load(Ordering::Relaxed),
                }
            })
            .collect();
        UpstreamsView {
            route: self.route.to_string(),
            balance: self.settings.strategy,
            retries: self.settings.retries,
            health_check: self.settings.health_check.as_ref().map(|c| c.path.clone()),
            endpoints,
        }
    }
}

/// One route's endpoints, as `GET /upstreams` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamsView {
    pub route: String,
    pub balance: Strategy,
    pub retries: u32,
    /// The active check's path, if any.
    pub health_check: Option<String>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub url: String,
    /// In rotation (not ejected).
    pub healthy: bool,
    pub ejected_until_unix_ms: Option<u64>,
    pub ejected_for_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub in_flight: usize,
    /// Attempts sent (retries included), and those that failed.
    pub requests: u64,
    pub failures: u64,
}

/// Starts the active health checks of the routes that have them: each
/// route's [`Upstreams`] with the client its requests use (probes trust
/// what requests trust: the route's `[route.tls]`). Each task ends by
/// itself once its `Upstreams` are gone (replaced by a reload and no longer
/// used by any request).
pub fn spawn_health_checks<'a>(
    routes: impl IntoIterator<Item = (&'a Arc<Upstreams>, &'a UpstreamClient)>,
    metrics: &Arc<Metrics>,
) {
    for (upstreams, client) in routes {
        if upstreams.settings.health_check.is_some() {
            tokio::spawn(check_forever(
                Arc::downgrade(upstreams),
                client.clone(),
                metrics.clone(),
            ));
        }
    }
}

async fn check_forever(upstreams: Weak<Upstreams>, client: UpstreamClient, metrics: Arc<Metrics>) {
    loop {
        let Some(strong) = upstreams.upgrade() else {
            return;
        };
        let Some(check) = strong.settings.health_check.clone() else {
            return;
        };
        strong.probe_all(&check, &client, &metrics).await;
        // Not held while asleep: a replaced gateway can be dropped.
        drop(strong);
        tokio::time::sleep(check.interval).await;
    }
}

#[cfg(test)]
mod tests;
