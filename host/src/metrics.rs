//! The sidecar's Prometheus metrics, served as OpenMetrics text on the admin
//! listener (`GET /metrics`). One [`Metrics`] per sidecar, kept across
//! reloads so counters never reset while the process lives.
//!
//! | metric | labels |
//! |---|---|
//! | `sidecar_requests_total` | `route`, `status` |
//! | `sidecar_request_duration_seconds` (histogram) | `route` |
//! | `sidecar_upstream_errors_total` | `route`, `kind` (`unavailable`, `timeout`, `too_large`, `bad_response`) |
//! | `sidecar_upstream_requests_total` (each attempt, retries included) | `route`, `endpoint`, `outcome` (`ok`, `gateway_error` = a 502/503/504 answer, or an error kind) |
//! | `sidecar_upstream_retries_total` | `route`, `outcome` (`retried`, `budget_exhausted`) |
//! | `sidecar_upstream_ejections_total` | `route`, `endpoint`, `reason` (`failures`, `health_check`) |
//! | `sidecar_upstream_endpoint_healthy` (gauge, 1 in rotation, 0 ejected; as of the scrape) | `route`, `endpoint` |
//! | `sidecar_policy_calls_total` | `policy`, `hook` (`request`, `response`) |
//! | `sidecar_policy_call_duration_seconds` (histogram, instance creation included) | `policy`, `hook` |
//! | `sidecar_policy_denials_total` (the request hook answered 4xx/5xx itself) | `policy` |
//! | `sidecar_policy_failures_total` | `policy`, `hook`, `reason` (`trap`, `deadline`, `memory_cap`, `kv_quota`, `config_refused`, `unavailable`) |
//! | `sidecar_reloads_total` | `result` (`applied`, `refused`) |
//! | `sidecar_connections_refused_total` (closed on accept) | `limit` (`max_connections`, `max_connections_per_ip`) |
//! | `sidecar_log_lines_shipped_total` (written to a file, or accepted by a collector) | `sink` |
//! | `sidecar_log_lines_dropped_total` | `sink`, `reason` (`queue_full`, `send_failed`, `shutdown`) |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::wasm::PolicyError;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    route: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    route: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOutcomeLabels {
    route: String,
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    route: String,
    endpoint: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    policy: String,
    target: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundTargetLabels {
    policy: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyHookLabels {
    policy: String,
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyFailureLabels {
    policy: String,
    hook: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkDropLabels {
    sink: String,
    reason: &'static str,
}

/// One log sink's counters, created up front so the request path only
/// bumps an atomic (no label lookup) and every series exists from the start.
#[derive(Clone, Debug, Default)]
pub struct SinkCounters {
    pub shipped: Counter,
    /// The sink's queue was full: the line was never queued.
    pub queue_full: Counter,
    /// The batch failed every attempt (or was refused) and was given up.
    pub send_failed: Counter,
    /// Still queued when the shutdown flush ran out of time.
    pub shutdown: Counter,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the sidecar records, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    upstream_attempts: Family<EndpointOutcomeLabels, Counter>,
    upstream_retries: Family<RetryLabels, Counter>,
    upstream_ejections: Family<EjectionLabels, Counter>,
    upstream_healthy: Family<EndpointLabels, Gauge>,
    policy_calls: Family<PolicyHookLabels, Counter>,
    policy_duration: Histograms<PolicyHookLabels>,
    policy_denials: Family<PolicyLabels, Counter>,
    policy_failures: Family<PolicyFailureLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    connections_refused: Family<LimitLabels, Counter>,
    log_shipped: Family<SinkLabels, Counter>,
    log_dropped: Family<SinkDropLabels, Counter>,
    outbound_calls: Family<OutboundLabels, Counter>,
    outbound_duration: Histograms<OutboundTargetLabels>,
    spans_exported: Counter,
    spans_dropped: Family<ReasonLabels, Counter>,
    /// The admin view of failures per policy (the counters above cannot be
    /// read back). Touched only when a call fails.
    failing: Mutex<HashMap<String, PolicyFailures>>,
}

/// How a policy has been failing, for the admin view (`GET /policies`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyFailures {
    /// Failed calls since the process started.
    pub total: u64,
    /// The last failure: `reason` as in `sidecar_policy_failures_total`,
    /// `hook`, `at` (Unix seconds) and the error, trap text included (the
    /// admin listener is for operators; clients never see this).
    pub last_reason: &'static str,
    pub last_hook: &'static str,
    pub last_at: u64,
    pub last_error: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// 100 µs to ~3 s: a proxied request.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// 2 µs to ~65 ms: one policy hook, up to past the default 50 ms deadline.
fn policy_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_002, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "sidecar_requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let request_duration: Histograms<RouteLabels> =
            Family::new_with_constructor(request_buckets);
        registry.register_with_unit(
            "sidecar_request_duration",
            "Time from the request's head to the response, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "sidecar_upstream_errors",
            "Upstream exchanges that failed, by route and kind",
            upstream_errors.clone(),
        );
        let upstream_attempts = Family::default();
        registry.register(
            "sidecar_upstream_requests",
            "Attempts sent to each upstream endpoint (retries included), by outcome",
            upstream_attempts.clone(),
        );
        let upstream_retries = Family::default();
        registry.register(
            "sidecar_upstream_retries",
            "Retries of requests that got no answer (any method when no connection was made, idempotent ones when it closed before an answer), and those the retry budget refused",
            upstream_retries.clone(),
        );
        let upstream_ejections = Family::default();
        registry.register(
            "sidecar_upstream_ejections",
            "Upstream endpoints taken out of rotation, by reason",
            upstream_ejections.clone(),
        );
        let upstream_healthy = Family::default();
        registry.register(
            "sidecar_upstream_endpoint_healthy",
            "1 if the endpoint is in rotation, 0 while it is ejected",
            upstream_healthy.clone(),
        );
        let policy_calls = Family::default();
        registry.register(
            "sidecar_policy_calls",
            "Policy hook calls, by policy and hook",
            policy_calls.clone(),
        );
        let policy_duration: Histograms<PolicyHookLabels> =
            Family::new_with_constructor(policy_buckets);
        registry.register_with_unit(
            "sidecar_policy_call_duration",
            "Time of one policy hook call, instance creation included",
            Unit::Seconds,
            policy_duration.clone(),
        );
        let policy_denials = Family::default();
        registry.register(
            "sidecar_policy_denials",
            "Requests a policy refused (its request hook answered 4xx or 5xx itself)",
            policy_denials.clone(),
        );
        let policy_failures = Family::default();
        registry.register(
            "sidecar_policy_failures",
            "Policy calls that failed, by policy, hook and reason",
            policy_failures.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "sidecar_reloads",
            "Config and policy reloads, by result",
            reloads.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "sidecar_connections_refused",
            "Client connections closed on accept, by the limit they were over",
            connections_refused.clone(),
        );
        let log_shipped = Family::default();
        registry.register(
            "sidecar_log_lines_shipped",
            "Policy log lines a sink wrote or a collector accepted, by sink",
            log_shipped.clone(),
        );
        let log_dropped = Family::default();
        registry.register(
            "sidecar_log_lines_dropped",
            "Policy log lines a sink gave up, by sink and reason",
            log_dropped.clone(),
        );
        let outbound_calls = Family::default();
        registry.register(
            "sidecar_policy_outbound_calls",
            "Policies' outbound HTTP calls, by policy, target origin and outcome (sent, cached, denied, timeout, too_large, failed)",
            outbound_calls.clone(),
        );
        let outbound_duration: Histograms<OutboundTargetLabels> =
            Family::new_with_constructor(request_buckets);
        registry.register_with_unit(
            "sidecar_policy_outbound_duration",
            "Time of one outbound call of a policy, redirects included",
            Unit::Seconds,
            outbound_duration.clone(),
        );
        let spans_exported = Counter::default();
        registry.register(
            "sidecar_trace_spans_exported",
            "Spans an OTLP collector accepted",
            spans_exported.clone(),
        );
        let spans_dropped = Family::default();
        registry.register(
            "sidecar_trace_spans_dropped",
            "Spans given up, by reason (queue_full, send_failed, shutdown)",
            spans_dropped.clone(),
        );
        Self {
            registry,
            outbound_calls,
            outbound_duration,
            spans_exported,
            spans_dropped,
            requests,
            request_duration,
            upstream_errors,
            upstream_attempts,
            upstream_retries,
            upstream_ejections,
            upstream_healthy,
            policy_calls,
            policy_duration,
            policy_denials,
            policy_failures,
            reloads,
            connections_refused,
            log_shipped,
            log_dropped,
            failing: Mutex::default(),
        }
    }

    /// Failures so far of each policy that has failed at least once.
    pub fn policy_failures(&self) -> HashMap<String, PolicyFailures> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn request(&self, route: &str, status: u16, took: Duration) {
        let route = route.to_owned();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// An upstream error answered to the client; `kind` is
    /// `UpstreamError::kind`.
    pub fn upstream_error(&self, route: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: route.to_owned(),
                kind,
            })
            .inc();
    }

    /// One attempt sent to `endpoint`, and how it went.
    pub fn upstream_attempt(&self, route: &str, endpoint: &str, outcome: &'static str) {
        self.upstream_attempts
            .get_or_create(&EndpointOutcomeLabels {
                route: route.to_owned(),
                endpoint: endpoint.to_owned(),
                outcome,
            })
            .inc();
    }

    /// `outcome`: `retried`, or `budget_exhausted` (not retried).
    pub fn upstream_retry(&self, route: &str, outcome: &'static str) {
        self.upstream_retries
            .get_or_create(&RetryLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }

    /// `reason`: `failures` (passive) or `health_check` (active).
    pub fn upstream_ejection(&self, route: &str, endpoint: &str, reason: &'static str) {
        self.upstream_ejections
            .get_or_create(&EjectionLabels {
                route: route.to_owned(),
                endpoint: endpoint.to_owned(),
                reason,
            })
            .inc();
    }

    /// Replaces the health gauge with `(route, endpoint, healthy)` for every
    /// endpoint now configured; called before each scrape, so endpoints a
    /// reload removed disappear and expired ejections show as healthy.
    pub fn set_endpoint_health<'a>(
        &self,
        endpoints: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) {
        self.upstream_healthy.clear();
        for (route, endpoint, healthy) in endpoints {
            self.upstream_healthy
                .get_or_create(&EndpointLabels {
                    route: route.to_owned(),
                    endpoint: endpoint.to_owned(),
                })
                .set(i64::from(healthy));
        }
    }

    /// One hook call of `policy`, whatever its outcome.
    pub fn policy_call(&self, policy: &str, hook: &'static str, took: Duration) {
        let labels = PolicyHookLabels {
            policy: policy.to_owned(),
            hook,
        };
        self.policy_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.policy_calls.get_or_create(&labels).inc();
    }

    /// One `outbound` call of `policy` to `target` (an origin).
    pub fn policy_outbound(
        &self,
        policy: &str,
        target: &str,
        outcome: &'static str,
        took: Duration,
    ) {
        let target_labels = OutboundTargetLabels {
            policy: policy.to_owned(),
            target: target.to_owned(),
        };
        self.outbound_duration
            .get_or_create(&target_labels)
            .observe(took.as_secs_f64());
        self.outbound_calls
            .get_or_create(&OutboundLabels {
                policy: target_labels.policy,
                target: target_labels.target,
                outcome,
            })
            .inc();
    }

    pub fn policy_denial(&self, policy: &str) {
        self.policy_denials
            .get_or_create(&PolicyLabels {
                policy: policy.to_owned(),
            })
            .inc();
    }

    pub fn policy_failure(&self, policy: &str, hook: &'static str, error: &PolicyError) {
        let reason = failure_reason(error);
        self.policy_failures
            .get_or_create(&PolicyFailureLabels {
                policy: policy.to_owned(),
                hook,
                reason,
            })
            .inc();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let entry = failing
            .entry(policy.to_owned())
            .or_insert_with(|| PolicyFailures {
                total: 0,
                last_reason: reason,
                last_hook: hook,
                last_at: at,
                last_error: String::new(),
            });
        entry.total += 1;
        entry.last_reason = reason;
        entry.last_hook = hook;
        entry.last_at = at;
        entry.last_error = error.to_string();
    }

    /// The counters of log sink `sink` (the same ones on every call).
    /// The span exporter's counters (the same shape as a log sink's).
    pub fn trace_spans(&self) -> SinkCounters {
        let dropped = |reason| {
            self.spans_dropped
                .get_or_create(&ReasonLabels { reason })
                .clone()
        };
        SinkCounters {
            shipped: self.spans_exported.clone(),
            queue_full: dropped("queue_full"),
            send_failed: dropped("send_failed"),
            shutdown: dropped("shutdown"),
        }
    }

    pub fn log_sink(&self, sink: &str) -> SinkCounters {
        let dropped = |reason| {
            self.log_dropped
                .get_or_create(&SinkDropLabels {
                    sink: sink.to_owned(),
                    reason,
                })
                .clone()
        };
        SinkCounters {
            shipped: self
                .log_shipped
                .get_or_create(&SinkLabels {
                    sink: sink.to_owned(),
                })
                .clone(),
            queue_full: dropped("queue_full"),
            send_failed: dropped("send_failed"),
            shutdown: dropped("shutdown"),
        }
    }

    /// A connection closed on accept for being over `limit`.
    pub fn connection_refused(&self, limit: &'static str) {
        self.connections_refused
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }
}

/// The `kind`/`outcome` label of an upstream failure.
/// The `reason` label of a policy failure.
pub fn failure_reason(error: &PolicyError) -> &'static str {
    match error {
        PolicyError::TimedOut { .. } => "deadline",
        PolicyError::MemoryCap { .. } => "memory_cap",
        PolicyError::KvQuota { .. } => "kv_quota",
        PolicyError::Trapped { .. } => "trap",
        PolicyError::ConfigRefused { .. } => "config_refused",
        PolicyError::Unavailable { .. } => "unavailable",
    }
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn renders_counters_and_histograms_with_their_labels() {
        let m = Metrics::new();
        m.request("users", 200, Duration::from_millis(3));
        m.request("users", 200, Duration::from_millis(1));
        m.request("users", 401, Duration::from_micros(300));
        m.policy_call("auth", "request", Duration::from_micros(20));
        m.policy_denial("auth");
        m.policy_failure(
            "auth",
            "request",
            &PolicyError::TimedOut {
                policy: Arc::from("auth"),
                deadline: Duration::from_millis(50),
            },
        );
        m.upstream_error("users", "timeout");
        m.reload(false);
        let sink = m.log_sink("collector");
        sink.shipped.inc_by(5);
        m.log_sink("collector").queue_full.inc_by(2);
        m.upstream_attempt("users", "http://a:1", "ok");
        m.upstream_retry("users", "budget_exhausted");
        m.upstream_ejection("users", "http://a:1", "failures");
        m.set_endpoint_health([("users", "http://gone:1", true)]);
        m.set_endpoint_health([("users", "http://a:1", false)]);
        let text = m.render();
        assert!(
            !text.contains("gone"),
            "a replaced gauge is dropped:\n{text}"
        );
        for line in [
            r#"sidecar_requests_total{route="users",status="200"} 2"#,
            r#"sidecar_requests_total{route="users",status="401"} 1"#,
            r#"sidecar_request_duration_seconds_count{route="users"} 3"#,
            r#"sidecar_policy_calls_total{policy="auth",hook="request"} 1"#,
            r#"sidecar_policy_call_duration_seconds_count{policy="auth",hook="request"} 1"#,
            r#"sidecar_policy_denials_total{policy="auth"} 1"#,
            r#"sidecar_policy_failures_total{policy="auth",hook="request",reason="deadline"} 1"#,
            r#"sidecar_upstream_errors_total{route="users",kind="timeout"} 1"#,
            r#"sidecar_reloads_total{result="refused"} 1"#,
            r#"sidecar_log_lines_shipped_total{sink="collector"} 5"#,
            r#"sidecar_log_lines_dropped_total{sink="collector",reason="queue_full"} 2"#,
            r#"sidecar_log_lines_dropped_total{sink="collector",reason="send_failed"} 0"#,
            r#"sidecar_upstream_requests_total{route="users",endpoint="http://a:1",outcome="ok"} 1"#,
            r#"sidecar_upstream_retries_total{route="users",outcome="budget_exhausted"} 1"#,
            r#"sidecar_upstream_ejections_total{route="users",endpoint="http://a:1",reason="failures"} 1"#,
            r#"sidecar_upstream_endpoint_healthy{route="users",endpoint="http://a:1"} 0"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
