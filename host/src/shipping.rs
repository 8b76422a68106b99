//! Log shipping: what policies log goes to the sinks of `[[log.sink]]`:
//! stdout, a rotating file, a collector over HTTP (batched JSON lines).
//!
//! The request path never waits for a sink that could be slow. A policy's
//! log call serializes the line once and offers it to each file or HTTP
//! sink's bounded queue (`try_send`); a task per sink drains its queue,
//! batches, writes or sends, and retries a failed batch a few times with
//! backoff. A full queue drops the line; a batch that keeps failing is given
//! up. Both are counted (`sidecar_log_lines_dropped_total{sink,reason}`)
//! and reported on stderr at most every [`REPORT_EVERY`], never silent.
//! Stdout is written directly, as the policy logs, as it always was.
//!
//! On shutdown, [`Shipping::shutdown`] lets each sink send or write what it
//! holds, within a bound; what is left then is counted as `shutdown` drops.

mod file;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batch::{Deliver, Lane, past_deadline, ship, stopping};
use crate::capabilities::{Level, LogRecord, LogSink};
use crate::metrics::Metrics;
use crate::telemetry::logs;
use crate::upstream::UpstreamClient;

pub use self::file::RotatingFile;

/// The sinks policy log lines are shipped to. Never empty: with no
/// `[[log.sink]]` it is one stdout sink, the behaviour before sinks existed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub sinks: Vec<SinkSettings>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            sinks: vec![SinkSettings {
                name: "stdout".to_owned(),
                level: Level::Info,
                kind: SinkKind::Stdout,
            }],
        }
    }
}

/// One `[[log.sink]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// Its `sink` label in metrics and warnings; unique.
    pub name: String,
    /// Lines below this level are not sent to this sink.
    pub level: Level,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// JSON lines on stdout, written as the policy logs (as before sinks).
    Stdout,
    File(FileSinkSettings),
    Http(HttpSinkSettings),
}

/// A rotating file, written by a thread of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkSettings {
    pub path: PathBuf,
    /// The file is rotated before a line would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept: `path.1` (newest) to `path.{keep}`; 0 keeps none.
    pub keep: usize,
    /// Lines waiting to be written; beyond it new lines are dropped (counted).
    pub buffer_lines: usize,
    /// Buffered lines reach the file at least this often.
    pub flush: Duration,
}

impl Default for FileSinkSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
            buffer_lines: 10_000,
            flush: Duration::from_secs(1),
        }
    }
}

/// Batches POSTed to a collector: JSON lines (`type = "http"`) or OTLP
/// (`type = "otlp"`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSinkSettings {
    pub url: Uri,
    pub format: LogFormat,
    /// Most lines in one request.
    pub batch_lines: usize,
    /// A partial batch is sent once its first line is this old.
    pub flush: Duration,
    /// Lines waiting to be sent; beyond it new lines are dropped (counted).
    pub buffer_lines: usize,
    /// Bound on one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Further attempts for a batch that failed, with backoff, before it is
    /// dropped (counted).
    pub retries: u32,
    /// Sent with every batch (e.g. an auth token), `${VAR}` expanded.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What a collector is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    /// `application/x-ndjson`: a line a record.
    NdJson,
    /// `application/x-protobuf`: an OTLP `ExportLogsServiceRequest`, each
    /// record with the trace and span ids of the request that logged it.
    Otlp { service_name: String },
}

impl HttpSinkSettings {
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            format: LogFormat::NdJson,
            batch_lines: 512,
            flush: Duration::from_secs(1),
            buffer_lines: 10_000,
            timeout: Duration::from_secs(5),
            retries: 3,
            headers: Vec::new(),
        }
    }
}

/// How often, at most, drops are reported on stderr (per sink).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Most lines a file sink writes per hand-off to its writing thread.
const FILE_CHUNK_LINES: usize = 1024;
/// First wait before retrying a failed batch; doubles per attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The running sinks: the [`LogSink`] to hand to the policy host, and the
/// tasks behind it.
pub struct Shipping {
    fanout: Arc<Fanout>,
    workers: Vec<JoinHandle<()>>,
    /// `Some(deadline)` once shutdown has begun.
    stop: watch::Sender<Option<Instant>>,
    reporter: Arc<Reporter>,
}

impl std::fmt::Debug for Shipping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipping")
            .field("sinks", &self.reporter.lanes.len())
            .finish_non_exhaustive()
    }
}

impl Shipping {
    /// Opens the files and starts a task per file or HTTP sink (so it needs
    /// a Tokio runtime). `stdout` is what `type = "stdout"` sinks write to:
    /// [`crate::capabilities::StdoutSink`] in the sidecar, memory in tests.
    ///
    /// # Errors
    /// A log file cannot be opened; the message names the sink's field.
    pub fn start(
        settings: &LogSettings,
        metrics: &Metrics,
        stdout: Arc<dyn LogSink>,
    ) -> anyhow::Result<Self> {
        let (stop, _) = watch::channel(None);
        let mut direct = Vec::new();
        let mut lanes = Vec::new();
        let mut workers = Vec::new();
        let mut reported = Vec::new();
        for (i, sink) in settings.sinks.iter().enumerate() {
            let lane = || Lane::new(&sink.name, metrics.log_sink(&sink.name));
            let (lane, tx) = match &sink.kind {
                SinkKind::Stdout => {
                    direct.push((sink.level, stdout.clone()));
                    continue;
                }
                SinkKind::File(f) => {
                    let file = RotatingFile::open(&f.path, f.max_bytes, f.keep).map_err(|e| {
                        anyhow::anyhow!("log.sink[{i}].path: cannot open {}: {e}", f.path.display())
                    })?;
                    let (tx, rx) = mpsc::channel(f.buffer_lines);
                    let lane = lane();
                    let task = write_file(file, f.clone(), lane.clone(), rx, stop.subscribe());
                    workers.push(tokio::spawn(task));
                    (lane, Tx::Json(tx))
                }
                SinkKind::Http(h) => {
                    let lane = lane();
                    let collector = Collector {
                        client: UpstreamClient::new(),
                        settings: h.clone(),
                    };
                    let (max, flush, stop) = (h.batch_lines, h.flush, stop.subscribe());
                    let tx = match &h.format {
                        LogFormat::NdJson => {
                            let (tx, rx) = mpsc::channel(h.buffer_lines);
                            let task = ship(max, flush, lane.clone(), rx, stop, collector);
                            workers.push(tokio::spawn(task));
                            Tx::Json(tx)
                        }
                        LogFormat::Otlp { service_name } => {
                            let (tx, rx) = mpsc::channel(h.buffer_lines);
                            let otlp = OtlpCollector {
                                collector,
                                resource: logs::Resource::new(service_name),
                            };
                            let task = ship(max, flush, lane.clone(), rx, stop, otlp);
                            workers.push(tokio::spawn(task));
                            Tx::Otlp(tx)
                        }
                    };
                    (lane, tx)
                }
            };
            reported.push((lane.clone(), Mutex::new(Seen::default())));
            lanes.push((sink.level, lane, tx));
        }
        let reporter = Arc::new(Reporter { lanes: reported });
        if !reporter.lanes.is_empty() {
            let r = reporter.clone();
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REPORT_EVERY);
                tick.tick().await;
                // Without a `Shipping` to shut down (dropped), keep reporting.
                let mut attached = true;
                loop {
                    tokio::select! {
                        _ = tick.tick() => r.report(),
                        changed = stopped.changed(), if attached => match changed {
                            Ok(()) => return,
                            Err(_) => attached = false,
                        },
                    }
                }
            });
        }
        Ok(Self {
            fanout: Arc::new(Fanout { direct, lanes }),
            workers,
            stop,
            reporter,
        })
    }

    /// The sink to put in [`crate::capabilities::Services::log`].
    pub fn sink(&self) -> Arc<dyn LogSink> {
        self.fanout.clone()
    }

    /// Lets every sink write or send what it holds, for at most `within`;
    /// lines still queued then are counted as dropped (`shutdown`) and
    /// reported. Lines logged from now on are dropped (counted).
    pub async fn shutdown(self, within: Duration) {
        let deadline = Instant::now() + within;
        self.stop.send_replace(Some(deadline));
        let all = join_all(self.workers);
        // The workers give up at the deadline themselves; the margin only
        // covers a write stuck in the kernel.
        let _ = tokio::time::timeout_at(deadline + Duration::from_millis(500), all).await;
        self.reporter.report();
    }
}

async fn join_all(workers: Vec<JoinHandle<()>>) {
    for w in workers {
        let _ = w.await;
    }
}

type Queue = mpsc::Receiver<String>;

/// The [`LogSink`] policies log into: every configured sink at once.
struct Fanout {
    /// Written as the policy logs (stdout).
    direct: Vec<(Level, Arc<dyn LogSink>)>,
    /// Queued: a file or HTTP sink's task takes them from there.
    lanes: Vec<(Level, Lane, Tx)>,
}

/// A queued sink's queue: what it takes.
enum Tx {
    Json(mpsc::Sender<String>),
    Otlp(mpsc::Sender<logs::Record>),
}

impl LogSink for Fanout {
    fn emit(&self, record: LogRecord) {
        let mut line: Option<String> = None;
        for (level, lane, tx) in &self.lanes {
            if record.level < *level {
                continue;
            }
            let sent = match tx {
                Tx::Json(tx) => {
                    let line = line.get_or_insert_with(|| record.to_json_line()).clone();
                    tx.try_send(line)
                        .map_err(|e| matches!(e, TrySendError::Full(_)))
                }
                // The current span is that of the hook that logged: the
                // record carries its trace.
                Tx::Otlp(tx) => tx
                    .try_send(logs::Record::new(
                        &record,
                        &crate::telemetry::current_span(),
                    ))
                    .map_err(|e| matches!(e, TrySendError::Full(_))),
            };
            lane.offered(sent);
        }
        for (level, sink) in &self.direct {
            if record.level >= *level {
                sink.emit(record.clone());
            }
        }
    }
}

/// Drop counts already reported, per reason.
#[derive(Default)]
struct Seen {
    queue_full: u64,
    send_failed: u64,
    shutdown: u64,
}

struct Reporter {
    lanes: Vec<(Lane, Mutex<Seen>)>,
}

impl Reporter {
    /// One warning per sink that dropped lines since the last report.
    fn report(&self) {
        for (lane, seen) in &self.lanes {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let c = &lane.counters;
            let (full, failed, shutdown) = (
                c.queue_full.get() - seen.queue_full,
                c.send_failed.get() - seen.send_failed,
                c.shutdown.get() - seen.shutdown,
            );
            if full + failed + shutdown == 0 {
                continue;
            }
            seen.queue_full += full;
            seen.send_failed += failed;
            seen.shutdown += shutdown;
            let error = lane
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            tracing::warn!(
                sink = %lane.name,
                queue_full = full,
                send_failed = failed,
                shutdown = shutdown,
                last_error = %error,
                "log sink dropped {} lines",
                full + failed + shutdown
            );
        }
    }
}

/// A file sink's task: takes chunks of lines off the queue and writes them
/// on a blocking thread (a slow disk must not stall the runtime), flushing
/// every `flush`; on shutdown, writes what is queued and flushes.
async fn write_file(
    file: RotatingFile,
    settings: FileSinkSettings,
    lane: Lane,
    mut queue: Queue,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let mut file = Some(file);
    let mut chunk = Vec::with_capacity(FILE_CHUNK_LINES);
    // Not `interval`: its first tick is immediate, and the first lines
    // would be flushed one by one.
    let mut tick = tokio::time::interval_at(Instant::now() + settings.flush, settings.flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    let mut draining = false;
    let give_up = past_deadline(stop.clone());
    tokio::pin!(give_up);
    loop {
        let flush_now = tokio::select! {
            n = queue.recv_many(&mut chunk, FILE_CHUNK_LINES) => {
                if n == 0 {
                    break;
                }
                false
            }
            _ = tick.tick(), if dirty => true,
            () = stopping(&mut stop), if !draining => {
                // Take what is queued, refuse what comes after.
                queue.close();
                draining = true;
                continue;
            }
            () = &mut give_up => break,
        };
        let lines = std::mem::take(&mut chunk);
        let Some(mut f) = file.take() else { return };
        let job = tokio::task::spawn_blocking(move || {
            let written = lines.len();
            let result = lines
                .iter()
                .try_for_each(|l| f.write_line(l.as_bytes()))
                .and_then(|()| if flush_now { f.flush() } else { Ok(()) });
            (f, written, result)
        });
        let Ok((f, written, result)) = job.await else {
            return;
        };
        file = Some(f);
        match result {
            Ok(()) => {
                lane.counters.shipped.inc_by(written as u64);
            }
            // Which lines of the chunk made it is unknown: count the chunk.
            Err(e) => lane.failed(written, format!("writing {}: {e}", settings.path.display())),
        }
        dirty = !flush_now && written > 0;
    }
    lane.counters
        .shutdown
        .inc_by((chunk.len() + queue.len()) as u64);
    if let Some(mut f) = file {
        let flushed = tokio::task::spawn_blocking(move || f.flush()).await;
        if let Ok(Err(e)) = flushed {
            lane.failed(0, format!("flushing {}: {e}", settings.path.display()));
        }
    }
}

/// An HTTP sink's delivery: the batch as JSON lines, POSTed with retries.
struct Collector {
    client: UpstreamClient,
    settings: HttpSinkSettings,
}

impl Deliver<String> for Collector {
    async fn deliver(&self, batch: Vec<String>) -> Result<(), String> {
        let mut body = String::with_capacity(batch.iter().map(|l| l.len() + 1).sum());
        for l in &batch {
            body.push_str(l);
            body.push('\n');
        }
        let body = Bytes::from(body);
        send_batch(&self.client, &self.settings, body, "application/x-ndjson").await
    }
}

/// An OTLP sink's delivery: one `ExportLogsServiceRequest` a batch.
struct OtlpCollector {
    collector: Collector,
    resource: logs::Resource,
}

impl Deliver<logs::Record> for OtlpCollector {
    async fn deliver(&self, batch: Vec<logs::Record>) -> Result<(), String> {
        let body = logs::export_request(&self.resource, batch);
        let Collector { client, settings } = &self.collector;
        send_batch(client, settings, body, "application/x-protobuf").await
    }
}

/// Sends one batch, retrying with backoff; `Err` says why the last attempt
/// failed. A 4xx other than 408 and 429 is not retried: the collector
/// refuses the batch itself.
async fn send_batch(
    client: &UpstreamClient,
    settings: &HttpSinkSettings,
    body: Bytes,
    content_type: &'static str,
) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        let mut req = http::Request::post(settings.url.clone())
            .header(http::header::CONTENT_TYPE, content_type);
        for (k, v) in &settings.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(crate::message::Body::full(body.clone()).into_stream())
            .map_err(|e| format!("building the request: {e}"))?;
        let error = match client.send(req, settings.timeout).await {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let s = resp.status();
                let error = format!("{} answered {s}", settings.url);
                if s.is_client_error() && s != 408 && s != 429 {
                    return Err(error);
                }
                error
            }
            Err(e) => format!("{}: {e}", settings.url),
        };
        if attempt >= settings.retries {
            return Err(error);
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
