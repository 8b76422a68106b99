//! Traces and OTLP logs, read back from a real OTLP/HTTP receiver that
//! decodes them with the OpenTelemetry project's protobuf classes
//! (`host/tests/clients/otlp_receiver.py`). Ignored unless the Python peers
//! are installed (`SIDECAR_TEST_PYTHON`, set by `scripts/test.sh`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    PyServer, Shipped, TempDir, Upstream, client, refused_addr, serve_with_sinks, sidecar_binary,
    token,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A receiver, an upstream, and a sidecar exporting to the receiver.
struct Setup {
    receiver: PyServer,
    upstream: Upstream,
    sidecar: Shipped,
}

impl Setup {
    /// `telemetry`: extra `[telemetry]` keys; `rest`: more config.
    async fn start(telemetry: &str, rest: &str) -> Self {
        Self::exporting_to(None, telemetry, rest).await
    }

    /// As [`Setup::start`], traces sent to `endpoint` (else the receiver).
    async fn exporting_to(endpoint: Option<String>, telemetry: &str, rest: &str) -> Self {
        let receiver = PyServer::start("otlp_receiver.py");
        let upstream = Upstream::start().await;
        let endpoint = endpoint.unwrap_or_else(|| format!("http://127.0.0.1:{}", receiver.port));
        let text = format!(
            r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{upstream}"
policies = ["logging", "auth"]

[policy.logging]
wasm = "{logging}"

[policy.auth]
wasm = "{auth}"
config = {{ secret = "s3cret" }}

[telemetry]
endpoint = "{endpoint}"
service_name = "edge"
schedule_delay_ms = 50
{telemetry}

{rest}
"#,
            upstream = upstream.url(),
            logging = test_policies::LOGGING,
            auth = test_policies::AUTH,
        )
        .replace("{RECEIVER}", &format!("http://127.0.0.1:{}", receiver.port));
        let config =
            sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
        let sidecar = serve_with_sinks(&config).await;
        Self {
            receiver,
            upstream,
            sidecar,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        get(&format!("{}{path}", self.sidecar.base), headers).await
    }

    /// GET `path` as a caller in trace [`TRACE`] (its span [`CALLER_SPAN`],
    /// sampled) with a valid token, plus `extra` headers.
    async fn get_in_trace(&self, path: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
        let auth = bearer();
        let mut headers = vec![("traceparent", parent.as_str()), ("authorization", &auth)];
        headers.extend_from_slice(extra);
        self.get(path, &headers).await
    }

    async fn received(&self, what: &str) -> Vec<Value> {
        from_receiver(self.receiver.port, what)
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// The spans of trace `trace` once `count` of them have arrived.
    async fn trace(&self, trace: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Value> = self
                .received("spans")
                .await
                .into_iter()
                .filter(|s| s["trace_id"] == trace)
                .collect();
            if spans.len() >= count || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The status and JSON body (`null` if none) of a GET with `headers`.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// What the receiver on `port` answers at `/{what}` (spans, logs, stats).
async fn from_receiver(port: u16, what: &str) -> Value {
    get(&format!("http://127.0.0.1:{port}/{what}"), &[]).await.1
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {spans:#?}"))
}

fn bearer() -> String {
    format!("Bearer {}", token())
}

/// `00-<trace>-<span>-<flags>` split.
fn traceparent(body: &Value) -> (String, String, String) {
    let tp = body["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream saw no traceparent: {body}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{tp}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn joins_the_callers_trace_with_a_span_per_policy_hook_and_upstream_attempt() {
    let s = Setup::start("", "").await;
    let (status, body) = s
        .get_in_trace("/api/orders", &[("tracestate", "vendor=abc")])
        .await;
    assert_eq!(status, 200);
    // server + logging request, auth request, upstream attempt, logging
    // complete (auth asks for no other hook).
    let spans = s.trace(TRACE, 5).await;
    let server = named(&spans, "GET api");
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(server["parent_span_id"], CALLER_SPAN);
    assert_eq!(server["service"], "edge");
    assert_eq!(server["trace_state"], "vendor=abc");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    assert_eq!(server["attributes"]["http.route"], "api");
    assert_eq!(server["attributes"]["url.path"], "/api/orders");
    let server_id = server["span_id"].as_str().unwrap();
    for hook in ["logging request", "auth request", "logging complete"] {
        let span = named(&spans, hook);
        assert_eq!(span["parent_span_id"], server_id, "{hook}");
        assert_eq!(span["kind"], "INTERNAL", "{hook}");
        assert_eq!(span["attributes"]["sidecar.outcome"], "continue", "{hook}");
    }
    assert_eq!(
        named(&spans, "auth request")["attributes"]["sidecar.policy"],
        "auth"
    );
    let attempt = named(&spans, "GET");
    assert_eq!(attempt["kind"], "CLIENT");
    assert_eq!(attempt["parent_span_id"], server_id);
    assert_eq!(attempt["attributes"]["http.response.status_code"], 200);
    // The upstream sees the attempt's span as its parent, in the same trace.
    let (trace, span, flags) = traceparent(&body);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(span, attempt["span_id"].as_str().unwrap());
    assert_eq!(body["headers"]["tracestate"], "vendor=abc");
    // Hooks ran in chain order, inside the server span.
    let start = |name: &str| named(&spans, name)["start"].as_u64().unwrap();
    assert!(start("logging request") <= start("auth request"));
    assert!(start("auth request") <= start("GET"));
    assert!(server["start"].as_u64() <= Some(start("logging request")));
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn a_request_without_traceparent_starts_a_trace() {
    let s = Setup::start("", "").await;
    let auth = bearer();
    let (status, body) = s.get("/api/x", &[("authorization", &auth)]).await;
    assert_eq!(status, 200);
    let (trace, _, flags) = traceparent(&body);
    assert_eq!(flags, "01");
    let spans = s.trace(&trace, 5).await;
    let server = named(&spans, "GET api");
    assert_eq!(server["parent_span_id"], "", "a root span");
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn a_denial_shows_on_the_policy_span() {
    let s = Setup::start("", "").await;
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, _) = s.get("/api/x", &[("traceparent", &parent)]).await;
    assert_eq!(status, 401);
    let spans = s.trace(TRACE, 4).await;
    let auth = named(&spans, "auth request");
    assert_eq!(auth["attributes"]["sidecar.outcome"], "respond");
    assert_eq!(auth["attributes"]["http.response.status_code"], 401);
    assert_eq!(
        named(&spans, "GET api")["attributes"]["http.response.status_code"],
        401
    );
    assert!(
        spans.iter().all(|s| s["kind"] != "CLIENT"),
        "no upstream attempt after a denial: {spans:#?}"
    );
    assert_eq!(s.upstream.hits(), 0);
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn each_upstream_attempt_is_a_client_span_retries_included() {
    // A port nobody listens on first: the first attempt is refused, the
    // retry goes to the live upstream.
    let dead = refused_addr();
    let receiver = PyServer::start("otlp_receiver.py");
    let upstream = Upstream::start().await;
    let text = format!(
        r#"
[[route]]
name = "api"
prefix = "/api"
upstreams = ["http://{dead}", "{live}"]
retries = 1

[telemetry]
endpoint = "http://127.0.0.1:{port}"
schedule_delay_ms = 50
"#,
        live = upstream.url(),
        port = receiver.port
    );
    let config = sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
    let sidecar = serve_with_sinks(&config).await;
    let s = Setup {
        receiver,
        upstream,
        sidecar,
    };
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, body) = s.get("/api/x", &[("traceparent", &parent)]).await;
    assert_eq!(status, 200);
    let spans = s.trace(TRACE, 3).await;
    let attempts: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "CLIENT").collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let failed = attempts
        .iter()
        .find(|a| a["status"] == "ERROR")
        .expect("a failed attempt");
    assert_eq!(failed["attributes"]["error.type"], "unavailable");
    let retry = attempts
        .iter()
        .find(|a| a["attributes"]["http.request.resend_count"] == 1)
        .expect("the retry says so");
    assert_eq!(retry["attributes"]["http.response.status_code"], 200);
    let (_, span, _) = traceparent(&body);
    assert_eq!(
        span,
        retry["span_id"].as_str().unwrap(),
        "the upstream's parent is the retry"
    );
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn policy_log_lines_go_over_otlp_with_their_trace() {
    let sink = r#"
[[log.sink]]
type = "otlp"
url = "{RECEIVER}/v1/logs"
flush_ms = 50
"#;
    let s = Setup::start("", sink).await;
    let (status, _) = s.get_in_trace("/api/logged", &[]).await;
    assert_eq!(status, 200);
    let spans = s.trace(TRACE, 5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = s.received("logs").await;
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let access = records
        .iter()
        .find(|r| r["attributes"]["sidecar.policy"] == "logging")
        .unwrap_or_else(|| panic!("no access line in {records:#?}"));
    assert_eq!(access["trace_id"], TRACE);
    // Logged from its completion hook: the record names that hook's span.
    assert_eq!(
        access["span_id"],
        named(&spans, "logging complete")["span_id"]
    );
    assert_eq!(access["service"], "edge");
    assert_eq!(access["attributes"]["http.route"], "api");
    let stats = from_receiver(s.receiver.port, "stats").await;
    assert!(
        stats["content_types"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{stats}"
    );
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn a_failing_collector_never_fails_or_holds_requests() {
    // A collector that accepts connections and never answers: an export
    // hangs until its timeout (send_failed) while the queue behind it fills
    // (queue_full).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (accepted, mut first) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
            accepted.send_modify(|n| *n += 1);
        }
    });
    let s = Setup::exporting_to(
        Some(url),
        "max_queue_size = 4\nexport_timeout_ms = 3000",
        "",
    )
    .await;
    let auth = bearer();
    let (status, _) = s.get("/api/x", &[("authorization", &auth)]).await;
    assert_eq!(status, 200);
    // Its spans are being exported (and hang): what comes next queues.
    tokio::time::timeout(Duration::from_secs(10), first.wait_for(|n| *n > 0))
        .await
        .expect("an export starts")
        .unwrap();
    for _ in 0..40 {
        let (status, _) = s.get("/api/x", &[("authorization", &auth)]).await;
        assert_eq!(status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = s.sidecar.sidecar.metrics.render();
        let dropped = |reason: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "sidecar_trace_spans_dropped_total{{reason=\"{reason}\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if dropped("queue_full") > 0 && dropped("send_failed") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn sampled_out_requests_propagate_but_export_nothing() {
    let s = Setup::start("sampler = \"always_off\"", "").await;
    let (status, body) = s.get_in_trace("/api/x", &[]).await;
    assert_eq!(status, 200);
    let (trace, span, flags) = traceparent(&body);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(span, CALLER_SPAN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.received("spans").await.is_empty());
}

#[tokio::test]
async fn without_telemetry_trace_headers_pass_untouched() {
    let upstream = Upstream::start().await;
    let running = crate::support::start(
        "[[route]]\nprefix = \"/api\"\nupstream = \"{UPSTREAM}\"\n",
        &upstream,
    )
    .await;
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let url = format!("{}/api/x", running.base);
    let (_, body) = get(&url, &[("traceparent", &parent)]).await;
    assert_eq!(body["headers"]["traceparent"], parent.as_str());
    let (_, body) = get(&url, &[]).await;
    assert!(body["headers"].get("traceparent").is_none(), "{body}");
}

#[tokio::test]
#[ignore = "needs the Python peers (scripts/test.sh installs them)"]
async fn the_binary_takes_the_standard_variables_and_flushes_spans_on_shutdown() {
    let receiver = PyServer::start("otlp_receiver.py");
    let upstream = Upstream::start().await;
    let dir = TempDir::new("otel");
    // No [telemetry] table: the variables alone turn traces on. The
    // default schedule (5 s) is longer than the test waits before the
    // shutdown: the spans arrive because shutdown flushes them.
    let mut sidecar = sidecar_binary()
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_SERVICE_NAME", "from-env")
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_off")
        .start(
            dir.path(),
            &format!(
                "[[route]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"{}\"\n",
                upstream.url()
            ),
        );
    let base = sidecar.base.clone();
    // parentbased_always_off: the caller's sampled trace is kept, a request
    // without one is not recorded.
    let parent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, _) = get(&format!("{base}/api/a"), &[("traceparent", &parent)]).await;
    assert_eq!(status, 200);
    let (status, body) = get(&format!("{base}/api/b"), &[]).await;
    assert_eq!(status, 200);
    let (unsampled, _, flags) = traceparent(&body);
    assert_eq!(flags, "00");
    let exited = sidecar.terminate(Duration::from_secs(60)).await;
    assert!(exited.success(), "{exited:?}");
    let spans = from_receiver(receiver.port, "spans").await;
    let spans = spans.as_array().unwrap();
    let server = named(spans, "GET api");
    assert_eq!(server["service"], "from-env");
    assert_eq!(server["trace_id"], TRACE);
    assert!(
        spans.iter().all(|s| s["trace_id"] != unsampled.as_str()),
        "{spans:#?}"
    );
}
