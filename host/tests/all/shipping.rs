//! Log shipping (`[[log.sink]]`) against real receivers on loopback: every
//! access line reaches a collector; an outage is counted, never silent, and
//! shipping resumes after it; a collector that hangs never slows requests;
//! and the binary flushes its sinks and reports drops on SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use http::HeaderMap;
use sidecar::Sidecar;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{
    TempDir, Upstream, client, eventually, refused_addr, serve_with_sinks, sidecar_binary,
};

/// What a collector received.
#[derive(Default)]
struct Received {
    lines: Vec<serde_json::Value>,
    batches: usize,
    content_types: Vec<String>,
    authorizations: Vec<String>,
}

/// An NDJSON receiver on loopback (`POST /v1/logs`), stoppable.
struct Collector {
    addr: SocketAddr,
    got: Arc<Mutex<Received>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        Self::on("127.0.0.1:0".parse().unwrap()).await
    }

    async fn on(addr: SocketAddr) -> Self {
        let got = Arc::new(Mutex::new(Received::default()));
        let into = got.clone();
        let app = axum::Router::new().route(
            "/v1/logs",
            post(move |headers: HeaderMap, body: String| {
                let into = into.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let mut got = into.lock().unwrap();
                    got.batches += 1;
                    got.content_types.push(header("content-type"));
                    got.authorizations.push(header("authorization"));
                    for line in body.lines() {
                        got.lines.push(
                            serde_json::from_str(line)
                                .unwrap_or_else(|_| serde_json::Value::String(line.to_owned())),
                        );
                    }
                    "ok"
                }
            }),
        );
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            got,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/logs", self.addr)
    }

    /// The `request_id` of every access line received.
    fn access_ids(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        for line in &got.lines {
            assert!(line.is_object(), "not a JSON object: {line}");
        }
        got.lines
            .iter()
            .filter(|l| l["msg"] == "access")
            .map(|l| l["request_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Stops accepting and closes every connection, then returns.
    async fn stop(self) -> SocketAddr {
        let _ = self.stop.send(());
        self.task.await.unwrap();
        self.addr
    }
}

/// A collector that accepts connections and never answers.
async fn hanging_collector() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A route through the logging policy, plus `sinks`.
fn config(upstream: &Upstream, sinks: &str) -> sidecar::config::Config {
    let text = format!(
        r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{}"
policies = ["logging"]

[policy.logging]
wasm = "{}"
{sinks}
"#,
        upstream.url(),
        test_policies::LOGGING
    );
    sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|name| {
        (name == "LOG_TOKEN").then(|| "s3cret".to_owned())
    })
    .unwrap()
}

/// Sends one GET per id (8 at a time), each must answer 200; returns how
/// long each took.
async fn send_all(base: &str, ids: &[String]) -> Vec<Duration> {
    let queue = Arc::new(Mutex::new(ids.to_vec()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (queue, base, http) = (queue.clone(), base.to_owned(), client());
        workers.spawn(async move {
            let mut took = Vec::new();
            loop {
                let Some(id) = queue.lock().unwrap().pop() else {
                    break;
                };
                let started = Instant::now();
                let resp = http
                    .get(format!("{base}/api/x"))
                    .header("x-request-id", &id)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "{id}");
                resp.bytes().await.unwrap();
                took.push(started.elapsed());
            }
            took
        });
    }
    let mut all = Vec::new();
    while let Some(took) = workers.join_next().await {
        all.extend(took.unwrap());
    }
    all
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// The value of one series, e.g. `sidecar_log_lines_shipped_total{sink="c"}`.
fn metric(sidecar: &Sidecar, series: &str) -> u64 {
    let text = sidecar.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const SHIPPED: &str = r#"sidecar_log_lines_shipped_total{sink="collector"}"#;
const QUEUE_FULL: &str = r#"sidecar_log_lines_dropped_total{sink="collector",reason="queue_full"}"#;
const SEND_FAILED: &str =
    r#"sidecar_log_lines_dropped_total{sink="collector",reason="send_failed"}"#;

#[tokio::test]
async fn ships_every_access_line_to_collector() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    let config = config(
        &upstream,
        &format!(
            r#"
[[log.sink]]
type = "http"
name = "collector"
url = "{}"
batch_lines = 16
flush_ms = 50
headers = {{ authorization = "Bearer ${{LOG_TOKEN}}" }}

[[log.sink]]
type = "stdout"
"#,
            collector.url()
        ),
    );
    let s = serve_with_sinks(&config).await;
    let sent = ids("ship", 300);
    send_all(&s.base, &sent).await;

    eventually(
        "every access line at the collector",
        Duration::from_secs(30),
        async || collector.access_ids().len() >= sent.len(),
    )
    .await;
    assert_eq!(
        sorted(collector.access_ids()),
        sorted(sent.clone()),
        "each line exactly once"
    );
    {
        let got = collector.got.lock().unwrap();
        assert!(
            got.batches > 1 && got.batches < sent.len(),
            "batched: {}",
            got.batches
        );
        assert!(
            got.content_types
                .iter()
                .all(|c| c == "application/x-ndjson")
        );
        assert!(got.authorizations.iter().all(|a| a == "Bearer s3cret"));
        let line = got.lines.iter().find(|l| l["msg"] == "access").unwrap();
        assert_eq!(line["policy"], "logging");
        assert_eq!(line["route"], "api");
        assert_eq!(line["status"], 200);
    }
    // The stdout sink got the same lines, as it did before sinks existed.
    assert_eq!(s.logs.records().len(), sent.len());
    assert_eq!(metric(&s.sidecar, SHIPPED), sent.len() as u64);
    assert_eq!(metric(&s.sidecar, QUEUE_FULL), 0);
    assert_eq!(metric(&s.sidecar, SEND_FAILED), 0);
    s.shipping.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn collector_outage_is_counted_and_shipping_resumes() {
    let upstream = Upstream::start().await;
    let collector = Collector::start().await;
    let config = config(
        &upstream,
        &format!(
            r#"
[[log.sink]]
type = "http"
name = "collector"
url = "{}"
batch_lines = 8
flush_ms = 20
timeout_ms = 1000
retries = 1
"#,
            collector.url()
        ),
    );
    let s = serve_with_sinks(&config).await;

    let before = ids("before", 20);
    send_all(&s.base, &before).await;
    eventually("the first lines", Duration::from_secs(30), async || {
        collector.access_ids().len() == before.len()
    })
    .await;
    let addr = collector.stop().await;

    // Down: requests still succeed, and every line is counted as failed.
    let during = ids("during", 20);
    send_all(&s.base, &during).await;
    eventually(
        "the outage's lines counted",
        Duration::from_secs(30),
        async || metric(&s.sidecar, SEND_FAILED) >= during.len() as u64,
    )
    .await;
    assert_eq!(metric(&s.sidecar, SEND_FAILED), during.len() as u64);
    assert_eq!(metric(&s.sidecar, SHIPPED), before.len() as u64);

    // Back on the same address: shipping resumes by itself.
    let collector = Collector::on(addr).await;
    let after = ids("after", 20);
    send_all(&s.base, &after).await;
    eventually(
        "lines after the outage",
        Duration::from_secs(30),
        async || collector.access_ids().len() >= after.len(),
    )
    .await;
    assert_eq!(sorted(collector.access_ids()), sorted(after.clone()));
    assert_eq!(
        metric(&s.sidecar, SHIPPED),
        (before.len() + after.len()) as u64
    );
    s.shipping.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn requests_keep_latency_when_collector_hangs() {
    let upstream = Upstream::start().await;
    let n = 300;

    // The same requests without a remote sink, for comparison.
    let plain = serve_with_sinks(&config(&upstream, "")).await;
    let mut base_took = send_all(&plain.base, &ids("plain", n)).await;

    let hanging = hanging_collector().await;
    let config = config(
        &upstream,
        &format!(
            r#"
[[log.sink]]
type = "http"
name = "collector"
url = "http://{hanging}/v1/logs"
batch_lines = 5
flush_ms = 10
buffer_lines = 20
timeout_ms = 30000
retries = 0
"#
        ),
    );
    let s = serve_with_sinks(&config).await;
    let started = Instant::now();
    let mut took = send_all(&s.base, &ids("hang", n)).await;
    let all = started.elapsed();
    assert_eq!(took.len(), n, "every request answered");

    took.sort();
    base_took.sort();
    let (median, max) = (took[n / 2], took[n - 1]);
    let base_median = base_took[n / 2];
    eprintln!(
        "collector hanging: {n} requests in {all:?}, median {median:?}, max {max:?}; \
         without a remote sink: median {base_median:?}, max {:?}",
        base_took[n - 1]
    );
    // A request waiting on the collector would take the 30 s timeout.
    assert!(max < Duration::from_secs(2), "slowest request: {max:?}");
    assert!(
        median <= base_median * 5 + Duration::from_millis(20),
        "median {median:?} against {base_median:?} without the sink"
    );
    // One batch (5 lines) hangs in flight, the queue holds 20: the rest is
    // dropped, and counted, once every completion hook has logged.
    let completed = r#"sidecar_policy_calls_total{policy="logging",hook="complete"}"#;
    eventually(
        "every completion hook ran",
        Duration::from_secs(10),
        async || metric(&s.sidecar, completed) >= n as u64,
    )
    .await;
    let dropped = metric(&s.sidecar, QUEUE_FULL);
    assert!(dropped >= (n - 5 - 20) as u64, "dropped {dropped}");
    assert_eq!(metric(&s.sidecar, SHIPPED), 0);

    // Shutdown is bounded even with a batch stuck: what is left is counted.
    let stopping = Instant::now();
    s.shipping.shutdown(Duration::from_millis(300)).await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let shutdown = metric(
        &s.sidecar,
        r#"sidecar_log_lines_dropped_total{sink="collector",reason="shutdown"}"#,
    );
    assert_eq!(dropped + shutdown, n as u64, "every line accounted for");
}

#[tokio::test]
async fn file_sink_rotates_without_losing_lines() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("file-sink");
    let log = dir.join("access.log");
    // An access line is a few hundred bytes: a handful per file.
    let config = config(
        &upstream,
        &format!(
            "[[log.sink]]\ntype = \"file\"\npath = \"{}\"\nmax_bytes = 2000\nkeep = 50\nflush_ms = 20\n",
            log.display()
        ),
    );
    let s = serve_with_sinks(&config).await;
    let sent = ids("file", 100);
    send_all(&s.base, &sent).await;
    // Access lines come from completion hooks, which run after each
    // response went out, on the worker that served it: once they all ran,
    // what shutdown flushes must be every line.
    let completed = r#"sidecar_policy_calls_total{policy="logging",hook="complete"}"#;
    eventually(
        "every completion hook ran",
        Duration::from_secs(10),
        async || metric(&s.sidecar, completed) >= sent.len() as u64,
    )
    .await;
    s.shipping.shutdown(Duration::from_secs(2)).await;

    let mut written = Vec::new();
    let mut files = 0;
    for n in (0..=50).rev() {
        let path = if n == 0 {
            log.clone()
        } else {
            dir.join(format!("access.log.{n}"))
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        files += 1;
        assert!(
            text.len() <= 2000,
            "{}: {} bytes",
            path.display(),
            text.len()
        );
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            written.push(v["request_id"].as_str().unwrap().to_owned());
        }
    }
    assert!(files > 5, "rotated: {files} files");
    assert_eq!(sorted(written), sorted(sent.clone()), "every line once");
    assert_eq!(
        metric(
            &s.sidecar,
            r#"sidecar_log_lines_shipped_total{sink="file"}"#
        ),
        sent.len() as u64
    );
}

/// The binary, with a file sink and a collector that refuses connections:
/// on SIGTERM the file gets every access line (only the shutdown flush
/// writes it here) and the drops are reported on stderr.
#[tokio::test]
async fn binary_flushes_file_sink_and_reports_drops_on_sigterm() {
    let upstream = Upstream::start().await;
    let dir = TempDir::new("shipping");
    let refused = refused_addr();
    let mut sidecar = sidecar_binary().start(
        dir.path(),
        &format!(
            r#"
[wasm]
compile_cache = "off"
[reload]
watch = false
[[route]]
name = "api"
prefix = "/api"
upstream = "{}"
policies = ["logging"]
[policy.logging]
wasm = "{}"
[[log.sink]]
type = "file"
path = "access.log"
flush_ms = 600000
[[log.sink]]
type = "http"
name = "collector"
url = "http://{refused}/v1/logs"
flush_ms = 10
retries = 0
"#,
            upstream.url(),
            test_policies::LOGGING
        ),
    );
    let base = sidecar.base.clone();
    let sent = ids("bin", 3);
    send_all(&base, &sent).await;
    let log = dir.join("access.log");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "",
        "buffered until the flush"
    );

    let status = sidecar.terminate(Duration::from_secs(60)).await;
    let err = sidecar.stderr();
    assert!(status.success(), "{err}");

    let written: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(sorted(written), sorted(sent));
    // Reported at most every 5 s, and at shutdown: one line or a few.
    let reported: u64 = err
        .lines()
        .filter_map(|l| l.split_once("log sink dropped "))
        .map(|(_, rest)| {
            assert!(rest.contains("sink=collector"), "{rest}");
            rest.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(reported, 3, "{err}");
}
