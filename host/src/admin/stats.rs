//! `GET /stats`: the metrics summed up per route and per policy, for the
//! dashboard (and `curl | jq`), so no browser has to parse OpenMetrics text or
//! estimate quantiles from histogram buckets.
//!
//! The counters cannot be read back from [`Metrics`](crate::metrics::Metrics),
//! so this reads its rendered text: the same numbers Prometheus scrapes. Every
//! figure is a total since the process started; a rate is the difference of
//! two polls divided by the difference of their `at_unix_ms`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The whole summary, as served.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// When it was taken (the server's clock, for rates between two polls).
    pub at_unix_ms: u64,
    /// By route name; requests that matched no route are `(none)`.
    pub routes: BTreeMap<String, RouteStats>,
    /// By policy name.
    pub policies: BTreeMap<String, PolicyStats>,
    pub reloads: Reloads,
    /// Connections closed on accept (over a connection limit).
    pub connections_refused: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct RouteStats {
    pub requests: u64,
    /// Answers by status class: `2xx`, `4xx`, `5xx`, ...
    pub status: BTreeMap<String, u64>,
    pub latency: Latency,
    /// Upstream exchanges that failed (unreachable, timeout, ...).
    pub upstream_errors: u64,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct PolicyStats {
    /// Hook calls, request and response hooks together.
    pub calls: u64,
    /// Requests its request hook answered with a 4xx/5xx itself.
    pub denials: u64,
    /// Calls that failed (trap, deadline, memory cap, ...).
    pub failures: u64,
    pub latency: Latency,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Reloads {
    pub applied: u64,
    pub refused: u64,
}

/// Milliseconds; `None` until something was observed. The quantiles are
/// estimated from the histogram's buckets as Prometheus'
/// `histogram_quantile` does (linear within a bucket), so they are as
/// coarse as the buckets (powers of two).
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    /// The sum of every observation: the mean between two polls is the
    /// difference of `sum_ms` over the difference of `count`.
    pub sum_ms: f64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Summarises the OpenMetrics text of [`Metrics::render`](crate::metrics::Metrics::render).
/// Lines it does not know are skipped.
pub fn summarise(metrics: &str, at_unix_ms: u64) -> Stats {
    let mut stats = Stats {
        at_unix_ms,
        ..Stats::default()
    };
    let mut route_hists: BTreeMap<String, Histogram> = BTreeMap::new();
    let mut policy_hists: BTreeMap<String, Histogram> = BTreeMap::new();
    for sample in metrics.lines().filter_map(Sample::parse) {
        let label = |name: &str| sample.label(name).unwrap_or_default().to_owned();
        let count = sample.value.max(0.0) as u64;
        match sample.name {
            "sidecar_requests_total" => {
                let route = stats.routes.entry(label("route")).or_default();
                route.requests += count;
                let class = match sample.label("status").and_then(|s| s.get(..1)) {
                    Some(digit) => format!("{digit}xx"),
                    None => "other".to_owned(),
                };
                *route.status.entry(class).or_default() += count;
            }
            "sidecar_upstream_errors_total" => {
                stats
                    .routes
                    .entry(label("route"))
                    .or_default()
                    .upstream_errors += count;
            }
            "sidecar_policy_calls_total" => {
                stats.policies.entry(label("policy")).or_default().calls += count;
            }
            "sidecar_policy_denials_total" => {
                stats.policies.entry(label("policy")).or_default().denials += count;
            }
            "sidecar_policy_failures_total" => {
                stats.policies.entry(label("policy")).or_default().failures += count;
            }
            "sidecar_reloads_total" => match sample.label("result") {
                Some("applied") => stats.reloads.applied += count,
                Some("refused") => stats.reloads.refused += count,
                _ => {}
            },
            "sidecar_connections_refused_total" => stats.connections_refused += count,
            name => {
                if let Some(part) = name.strip_prefix("sidecar_request_duration_seconds_") {
                    route_hists
                        .entry(label("route"))
                        .or_default()
                        .add(part, &sample);
                } else if let Some(part) =
                    name.strip_prefix("sidecar_policy_call_duration_seconds_")
                {
                    // Both hooks in one: same buckets, so they add up.
                    policy_hists
                        .entry(label("policy"))
                        .or_default()
                        .add(part, &sample);
                }
            }
        }
    }
    for (name, hist) in route_hists {
        stats.routes.entry(name).or_default().latency = hist.latency();
    }
    for (name, hist) in policy_hists {
        stats.policies.entry(name).or_default().latency = hist.latency();
    }
    stats
}

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl<'a> Sample<'a> {
    /// `None` for comments, `# EOF` and anything malformed.
    fn parse(line: &'a str) -> Option<Self> {
        if line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = inner.split_once("=\"")?;
                // The value runs to the first unescaped quote.
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.trim_start_matches(','), value));
                inner = &after[end + 1..];
                inner = inner.strip_prefix(',').unwrap_or(inner);
            }
        }
        // The value, then maybe a timestamp or an exemplar.
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some(Self {
            name,
            labels,
            value,
        })
    }

    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A histogram's samples, possibly several series added together.
#[derive(Debug, Default)]
struct Histogram {
    /// `(le, cumulative count)`, `le` may be infinite.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// `part`: what follows the metric name, `bucket`, `sum` or `count`.
    fn add(&mut self, part: &str, sample: &Sample) {
        match part {
            "sum" => self.sum += sample.value,
            "count" => self.count += sample.value,
            "bucket" => {
                let Some(le) = sample.label("le").and_then(parse_le) else {
                    return;
                };
                match self.buckets.iter_mut().find(|(l, _)| *l == le) {
                    Some((_, n)) => *n += sample.value,
                    None => self.buckets.push((le, sample.value)),
                }
            }
            _ => {}
        }
    }

    fn latency(mut self) -> Latency {
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ms = |seconds: f64| (seconds * 1000.0 * 1000.0).round() / 1000.0;
        let count = self.count.max(0.0) as u64;
        Latency {
            count,
            sum_ms: ms(self.sum),
            mean_ms: (count > 0).then(|| ms(self.sum / self.count)),
            p50_ms: self.quantile(0.5).map(ms),
            p99_ms: self.quantile(0.99).map(ms),
        }
    }

    /// As Prometheus' `histogram_quantile`: find the bucket the rank falls
    /// in, interpolate linearly inside it (the first bucket starts at 0);
    /// in the `+Inf` bucket, the highest finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                let fraction = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, cumulative);
        }
        Some(lower)
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;
    use crate::wasm::PolicyError;

    #[test]
    fn sums_requests_by_route_and_status_class_with_latency_quantiles() {
        let m = Metrics::new();
        // 98 fast requests and 2 slow ones: the median is fast, p99 is slow.
        for _ in 0..98 {
            m.request("api", 200, Duration::from_micros(700));
        }
        m.request("api", 404, Duration::from_millis(300));
        m.request("api", 503, Duration::from_millis(300));
        m.request("(none)", 404, Duration::from_micros(50));
        let stats = summarise(&m.render(), 42);

        assert_eq!(stats.at_unix_ms, 42);
        let api = &stats.routes["api"];
        assert_eq!(api.requests, 100);
        let classes: Vec<_> = api.status.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(classes, [("2xx", 98), ("4xx", 1), ("5xx", 1)]);
        assert_eq!(api.latency.count, 100);
        let mean = api.latency.mean_ms.unwrap();
        assert!((mean - (98.0 * 0.7 + 600.0) / 100.0).abs() < 0.01, "{mean}");
        // Buckets double from 0.1 ms: 0.7 ms falls in (0.4, 0.8], 300 ms in
        // (204.8, 409.6].
        let p50 = api.latency.p50_ms.unwrap();
        assert!(p50 > 0.4 && p50 <= 0.8, "{p50}");
        let p99 = api.latency.p99_ms.unwrap();
        assert!(p99 > 204.8 && p99 <= 409.6, "{p99}");
        assert_eq!(stats.routes["(none)"].requests, 1);
    }

    #[test]
    fn sums_policy_calls_over_hooks_with_denials_and_failures() {
        let m = Metrics::new();
        m.policy_call("auth", "request", Duration::from_micros(10));
        m.policy_call("auth", "request", Duration::from_micros(10));
        m.policy_call("auth", "response", Duration::from_micros(10));
        m.policy_denial("auth");
        m.policy_failure(
            "auth",
            "request",
            &PolicyError::TimedOut {
                policy: Arc::from("auth"),
                deadline: Duration::from_millis(50),
            },
        );
        m.reload(true);
        m.reload(false);
        m.reload(false);
        let stats = summarise(&m.render(), 0);

        let auth = &stats.policies["auth"];
        assert_eq!((auth.calls, auth.denials, auth.failures), (3, 1, 1));
        assert_eq!(auth.latency.count, 3);
        // 10 µs: in (8, 16] µs.
        let p50 = auth.latency.p50_ms.unwrap();
        assert!(p50 > 0.008 && p50 <= 0.016, "{p50}");
        assert_eq!(
            stats.reloads,
            Reloads {
                applied: 1,
                refused: 2
            }
        );
    }

    #[test]
    fn nothing_observed_is_no_latency_rather_than_zero() {
        let stats = summarise("# EOF\n", 0);
        assert_eq!(stats, Stats::default());
        let empty = Histogram::default().latency();
        assert_eq!(
            (empty.mean_ms, empty.p50_ms, empty.p99_ms),
            (None, None, None)
        );
    }

    #[test]
    fn parses_escaped_label_values_and_skips_what_is_not_a_sample() {
        let line = r#"sidecar_requests_total{route="a \"b\",c\\d",status="200"} 7"#;
        let sample = Sample::parse(line).unwrap();
        assert_eq!(sample.name, "sidecar_requests_total");
        assert_eq!(sample.label("route"), Some(r#"a "b",c\d"#));
        assert_eq!(sample.label("status"), Some("200"));
        assert_eq!(sample.value, 7.0);
        assert_eq!(Sample::parse("up 1").unwrap().labels, []);
        for skipped in [
            "# TYPE x counter",
            "# EOF",
            "",
            "x{a=\"1\"",
            "x{a=\"1\"} nan?",
        ] {
            assert_eq!(Sample::parse(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn a_quantile_in_the_overflow_bucket_is_the_highest_finite_bound() {
        let h = Histogram {
            buckets: vec![(0.1, 1.0), (0.2, 1.0), (f64::INFINITY, 10.0)],
            ..Histogram::default()
        };
        assert_eq!(h.quantile(0.99), Some(0.2));
        assert_eq!(h.quantile(0.05), Some(0.05));
    }
}
