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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::capabilities::{Level, LogRecord, LogSink};
use crate::config::{FileSinkSettings, HttpSinkSettings, LogFormat, LogSettings, SinkKind};
use crate::metrics::{Metrics, SinkCounters};
use crate::telemetry::logs;
use crate::upstream::UpstreamClient;

pub use self::file::RotatingFile;

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

/// One queued sink (or the span exporter) as the request path and its
/// task see it.
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    name: String,
    counters: SinkCounters,
    /// Why the last write or send failed, for the drop report.
    last_error: Arc<Mutex<Option<String>>>,
}

impl Lane {
    pub(crate) fn new(name: &str, counters: SinkCounters) -> Self {
        Self {
            name: name.to_owned(),
            counters,
            last_error: Arc::new(Mutex::new(None)),
        }
    }

    /// Counts what became of an item offered to the queue (`Err(true)`:
    /// full, `Err(false)`: closed).
    pub(crate) fn offered(&self, sent: Result<(), bool>) {
        match sent {
            Ok(()) => {}
            Err(true) => {
                self.counters.queue_full.inc();
            }
            Err(false) => {
                self.counters.shutdown.inc();
            }
        }
    }

    fn failed(&self, lines: usize, error: String) {
        self.counters.send_failed.inc_by(lines as u64);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

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

/// Resolves once shutdown has begun and its deadline has passed.
async fn past_deadline(mut stop: watch::Receiver<Option<Instant>>) {
    let deadline = loop {
        if let Some(d) = *stop.borrow_and_update() {
            break d;
        }
        if stop.changed().await.is_err() {
            // The sender is gone without a shutdown: never.
            std::future::pending::<()>().await;
        }
    };
    tokio::time::sleep_until(deadline).await;
}

/// Resolves once shutdown has begun.
async fn stopping(stop: &mut watch::Receiver<Option<Instant>>) {
    while stop.borrow_and_update().is_none() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
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

/// How a batching lane hands over one batch (see [`ship`]).
pub(crate) trait Deliver<T>: Send + 'static {
    /// Delivers `batch` (retrying as it sees fit); `Err` says why it was
    /// given up.
    fn deliver(&self, batch: Vec<T>) -> impl Future<Output = Result<(), String>> + Send;
}

/// A batching lane's task: a batch is delivered when it has `max` items or
/// its first item is `flush` old; one batch at a time, so a slow collector
/// fills the queue (and drops are counted) instead of piling up requests.
/// Once `stop` has a deadline, what is queued is delivered until then.
pub(crate) async fn ship<T: Send + 'static>(
    max: usize,
    flush: Duration,
    lane: Lane,
    mut queue: mpsc::Receiver<T>,
    mut stop: watch::Receiver<Option<Instant>>,
    delivery: impl Deliver<T>,
) {
    let mut batch: Vec<T> = Vec::with_capacity(max);
    let mut draining = false;
    loop {
        if draining {
            if queue.recv_many(&mut batch, max).await == 0 {
                break;
            }
        } else {
            // Wait for a first item, then fill until full or old enough.
            tokio::select! {
                n = queue.recv_many(&mut batch, max) => if n == 0 { break },
                () = stopping(&mut stop) => {
                    queue.close();
                    draining = true;
                    continue;
                }
            }
            let due = Instant::now() + flush;
            while batch.len() < max && !draining {
                let room = max - batch.len();
                tokio::select! {
                    n = queue.recv_many(&mut batch, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(due) => break,
                    () = stopping(&mut stop) => {
                        queue.close();
                        draining = true;
                    }
                }
            }
        }
        let items = batch.len();
        let full = std::mem::replace(&mut batch, Vec::with_capacity(max));
        let sent = tokio::select! {
            r = delivery.deliver(full) => Some(r),
            () = past_deadline(stop.clone()) => None,
        };
        match sent {
            Some(Ok(())) => {
                lane.counters.shipped.inc_by(items as u64);
            }
            Some(Err(e)) => lane.failed(items, e),
            None => {
                lane.counters.shutdown.inc_by((items + queue.len()) as u64);
                return;
            }
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
