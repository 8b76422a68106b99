//! One policy call, everything the sidecar does for it: the HTTP request
//! converted into the contract's record, a fresh store and instance,
//! `configure`, the hook(s), the decision or response converted back, and
//! the instance dropped. Each shipped policy plus `noop`, a policy that does
//! nothing, so the host's own cost per call shows on its own.
//!
//! `cargo bench -p sidecar --bench policy_calls` runs criterion (mean and
//! median with confidence intervals), then times single calls to print the
//! median and p99 table that BENCHMARKS.md quotes. A filter argument
//! (`… -- auth`) limits both to the cases whose name contains it.
//! `cargo test --release -p sidecar --bench policy_calls` (in the test
//! command) only checks that every case takes the path its name says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use sidecar::bindings::Response;
use sidecar::capabilities::{Clock, KvLimits, LogRecord, LogSink, MemoryKv, Services, SystemClock};
use sidecar::chain::Chain;
use sidecar::convert;
use sidecar::metrics::Metrics;
use sidecar::wasm::{EngineSettings, FailureMode, Instances, PolicyLimits, PolicySpec, Runtime};

const SECRET: &str = "bench-secret";

/// Formats every line, as the stdout sink does, then throws it away.
struct DiscardSink;

impl LogSink for DiscardSink {
    fn emit(&self, record: LogRecord) {
        std::hint::black_box(record.to_json_line());
    }
}

/// What one iteration does.
#[derive(Clone, Copy)]
enum Hooks {
    /// The request hook only (a policy that answers, or a request that
    /// never reaches the response hooks).
    Request,
    /// Request hook, then the response hook on the same instance with an
    /// upstream response: a proxied request.
    RoundTrip,
}

struct Case {
    name: &'static str,
    chain: Chain,
    hooks: Hooks,
    /// Give every request its own path (a cache miss every time).
    unique_path: bool,
    /// The result the case must produce, checked once before timing.
    expect_status: u16,
}

struct Fixture {
    client: SocketAddr,
    route: Arc<str>,
    request_id: Arc<str>,
    token: String,
    upstream: (http::response::Parts, Bytes),
    counter: AtomicU64,
    /// Recorded as in the sidecar: its cost is part of a call's.
    metrics: Metrics,
}

impl Fixture {
    fn new() -> Self {
        let claims = serde_json::json!({
            "sub": "alice",
            "exp": SystemClock.now_micros() / 1_000_000 + 3600,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .expect("signing the bench token");
        let body = Bytes::from_static(
            br#"{"username":"alice","email":"alice@example.com","role":"user","created":"2026-11-01"}"#,
        );
        let (parts, ()) = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("date", "Sun, 29 Nov 2026 03:00:00 GMT")
            .body(())
            .unwrap()
            .into_parts();
        Self {
            client: "127.0.0.1:50000".parse().unwrap(),
            route: "bench".into(),
            request_id: "bench-request".into(),
            token,
            upstream: (parts, body),
            counter: AtomicU64::new(0),
            metrics: Metrics::new(),
        }
    }

    /// A typical API call: a GET with a bearer token and browser-ish headers.
    fn request(&self, unique: bool) -> (http::request::Parts, Bytes) {
        let uri = if unique {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            format!("/api/profile?n={n}")
        } else {
            "/api/profile".to_owned()
        };
        let (parts, ()) = http::Request::builder()
            .method("GET")
            .uri(uri)
            .header("host", "127.0.0.1:4000")
            .header("user-agent", "bench/1.0")
            .header("accept", "application/json")
            .header("accept-encoding", "gzip, deflate")
            .header("authorization", format!("Bearer {}", self.token))
            .header("x-request-id", "bench-request")
            .body(())
            .unwrap()
            .into_parts();
        (parts, Bytes::new())
    }

    /// One call as the sidecar's request path makes it; returns the status
    /// the client would get.
    async fn call(&self, case: &Case) -> u16 {
        let (parts, body) = self.request(case.unique_path);
        let request = convert::request_from_http(&parts, body, &self.route, self.client).unwrap();
        let outcome = case
            .chain
            .on_request(request, &self.route, &self.request_id, &self.metrics)
            .await;
        let response = match (case.hooks, outcome.response) {
            (Hooks::Request, Some(answered)) => answered,
            (Hooks::Request, None) => return 0,
            (Hooks::RoundTrip, answered) => {
                let response = answered.unwrap_or_else(|| self.upstream_response());
                outcome
                    .entered
                    .on_response(&outcome.request, response, &self.metrics)
                    .await
            }
        };
        convert::response_to_http(response)
            .unwrap()
            .status()
            .as_u16()
    }

    fn upstream_response(&self) -> Response {
        convert::response_from_upstream(&self.upstream.0, self.upstream.1.clone()).unwrap()
    }
}

async fn policy(
    runtime: &Arc<Runtime>,
    wasm: &str,
    name: &str,
    config: serde_json::Value,
) -> Chain {
    policy_with(runtime, wasm, name, config, Instances::Fresh).await
}

async fn policy_with(
    runtime: &Arc<Runtime>,
    wasm: &str,
    name: &str,
    config: serde_json::Value,
    instances: Instances,
) -> Chain {
    let component = runtime
        .compile_file(std::path::Path::new(wasm))
        .expect("compiling a bench policy");
    let spec = PolicySpec {
        name: name.into(),
        config_json: config.to_string(),
        failure: FailureMode::Closed,
        limits: PolicyLimits::default(),
        instances,
    };
    let policy = runtime
        .load(spec, &component)
        .await
        .expect("loading a bench policy");
    Chain::new(vec![policy])
}

async fn cases(runtime: &Arc<Runtime>) -> Vec<Case> {
    use serde_json::json;
    let auth = json!({ "secret": SECRET, "subject_header": "x-authenticated-user" });
    let cache = json!({ "ttl_secs": 3600, "identity_header": "authorization" });
    vec![
        Case {
            name: "noop/request",
            chain: policy(runtime, test_policies::NOOP, "noop", json!({})).await,
            hooks: Hooks::Request,
            unique_path: false,
            expect_status: 0,
        },
        Case {
            name: "noop/round-trip",
            chain: policy(runtime, test_policies::NOOP, "noop", json!({})).await,
            hooks: Hooks::RoundTrip,
            unique_path: false,
            expect_status: 200,
        },
        Case {
            name: "auth/request (valid HS256 token)",
            chain: policy(runtime, test_policies::AUTH, "auth", auth.clone()).await,
            hooks: Hooks::Request,
            unique_path: false,
            expect_status: 0,
        },
        Case {
            name: "noop/request, reused instance",
            chain: policy_with(
                runtime,
                test_policies::NOOP,
                "noop",
                json!({}),
                Instances::Reuse,
            )
            .await,
            hooks: Hooks::Request,
            unique_path: false,
            expect_status: 0,
        },
        Case {
            name: "auth/request, reused instance",
            chain: policy_with(
                runtime,
                test_policies::AUTH,
                "auth",
                auth.clone(),
                Instances::Reuse,
            )
            .await,
            hooks: Hooks::Request,
            unique_path: false,
            expect_status: 0,
        },
        Case {
            name: "logging/round-trip (one access line)",
            chain: policy(runtime, test_policies::LOGGING, "logging", json!({})).await,
            hooks: Hooks::RoundTrip,
            unique_path: false,
            expect_status: 200,
        },
        Case {
            name: "cache/round-trip hit",
            chain: policy(runtime, test_policies::CACHE, "cache", cache.clone()).await,
            hooks: Hooks::RoundTrip,
            unique_path: false,
            expect_status: 200,
        },
        Case {
            name: "cache/round-trip miss (lookup, upstream, store)",
            chain: policy(runtime, test_policies::CACHE, "cache", cache).await,
            hooks: Hooks::RoundTrip,
            unique_path: true,
            expect_status: 200,
        },
    ]
}

fn main() {
    let filter = filter_arg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let services = Services {
        kv: Arc::new(MemoryKv::new(clock.clone(), KvLimits::default())),
        clock,
        log: Arc::new(DiscardSink),
    };
    let runtime = Runtime::new(EngineSettings::default(), services).unwrap();
    let fixture = Fixture::new();
    let cases: Vec<Case> = rt
        .block_on(cases(&runtime))
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .collect();

    // A bench that measures the wrong path is worse than none.
    for case in &cases {
        let status = rt.block_on(fixture.call(case));
        assert_eq!(
            status, case.expect_status,
            "{}: unexpected result",
            case.name
        );
    }

    let mut criterion = Criterion::default().configure_from_args();
    for case in &cases {
        criterion.bench_function(case.name, |b| {
            b.iter(|| rt.block_on(fixture.call(case)));
        });
    }
    criterion.final_summary();
    // `cargo test --benches` runs each case once (criterion's test mode):
    // the checks above are the test; timing is for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }

    println!("\nsingle calls, timed one by one (20 000 per case after 2 000 warm-up):\n");
    println!("| case | median | p99 |");
    println!("|---|---|---|");
    for case in &cases {
        let mut times = Vec::with_capacity(20_000);
        for i in 0..22_000 {
            let start = Instant::now();
            std::hint::black_box(rt.block_on(fixture.call(case)));
            if i >= 2_000 {
                times.push(start.elapsed());
            }
        }
        times.sort_unstable();
        println!(
            "| {} | {} | {} |",
            case.name,
            micros(times[times.len() / 2]),
            micros(times[times.len() * 99 / 100])
        );
    }
}

/// Criterion's positional filter, if any (its options that take a value
/// are skipped with their value).
fn filter_arg() -> String {
    const TAKES_VALUE: [&str; 8] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--noise-threshold",
        "--significance-level",
        "--confidence-level",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return arg;
        }
    }
    String::new()
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
