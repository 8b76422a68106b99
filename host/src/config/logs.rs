//! `[[log.sink]]`: where policy log lines go (see `crate::shipping`).
//!
//! ```toml
//! [[log.sink]]
//! type = "file"                       # or "stdout" (the default) or "http"
//! path = "/var/log/sidecar/access.log"
//! max_bytes = 104857600
//! keep = 5
//!
//! [[log.sink]]
//! type = "http"
//! url = "http://collector:8080/logs"
//! headers = { authorization = "Bearer ${LOG_TOKEN}" }
//!
//! [[log.sink]]
//! type = "otlp"                       # OTLP logs over HTTP/protobuf, with trace ids
//! url = "http://collector:4318/v1/logs"   # default: OTEL_EXPORTER_OTLP_LOGS_ENDPOINT,
//!                                     # else [telemetry] endpoint / OTEL_EXPORTER_OTLP_ENDPOINT + /v1/logs
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::telemetry::{TelemetrySettings, header_list, signal_url};
use super::{expand_str, parse_upstream_like, positive};
use crate::capabilities::Level;

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default, rename = "sink")]
    sinks: Vec<RawSink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    level: Option<String>,
    // file
    path: Option<PathBuf>,
    max_bytes: Option<u64>,
    keep: Option<usize>,
    // file and http
    buffer_lines: Option<usize>,
    flush_ms: Option<u64>,
    // http
    url: Option<String>,
    format: Option<String>,
    batch_lines: Option<usize>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    headers: Option<BTreeMap<String, String>>,
}

impl RawSink {
    /// Fields set that `kind` does not use, so a typo'd type is not silently
    /// half-applied.
    fn refuse_unused(&self, field: &str, used: &[&str]) -> anyhow::Result<()> {
        let set = [
            ("path", self.path.is_some()),
            ("max_bytes", self.max_bytes.is_some()),
            ("keep", self.keep.is_some()),
            ("buffer_lines", self.buffer_lines.is_some()),
            ("flush_ms", self.flush_ms.is_some()),
            ("url", self.url.is_some()),
            ("format", self.format.is_some()),
            ("batch_lines", self.batch_lines.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("retries", self.retries.is_some()),
            ("headers", self.headers.is_some()),
        ];
        if let Some((name, _)) = set.iter().find(|(n, s)| *s && !used.contains(n)) {
            bail!(
                "{field}.{name}: not used with type = \"{}\" (it takes: {})",
                self.kind,
                if used.is_empty() {
                    "no options".to_owned()
                } else {
                    used.join(", ")
                }
            );
        }
        Ok(())
    }
}

pub(super) fn log_settings(
    raw: RawLog,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    telemetry: &TelemetrySettings,
) -> anyhow::Result<LogSettings> {
    if raw.sinks.is_empty() {
        return Ok(LogSettings::default());
    }
    let mut sinks: Vec<SinkSettings> = Vec::with_capacity(raw.sinks.len());
    for (i, s) in raw.sinks.into_iter().enumerate() {
        let field = format!("log.sink[{i}]");
        let level = match s.level.as_deref().unwrap_or("info") {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            other => bail!(
                "{field}.level: `{other}` is not one of \"trace\", \"debug\", \"info\", \"warn\", \"error\""
            ),
        };
        let kind = match s.kind.as_str() {
            "stdout" => {
                s.refuse_unused(&field, &[])?;
                SinkKind::Stdout
            }
            "file" => {
                s.refuse_unused(
                    &field,
                    &["path", "max_bytes", "keep", "buffer_lines", "flush_ms"],
                )?;
                let d = FileSinkSettings::default();
                let path = s
                    .path
                    .as_ref()
                    .ok_or_else(|| anyhow!("{field}.path: required with type = \"file\""))?;
                if path.as_os_str().is_empty() {
                    bail!("{field}.path: must not be empty");
                }
                SinkKind::File(FileSinkSettings {
                    path: base.join(path),
                    max_bytes: positive(&format!("{field}.max_bytes"), s.max_bytes)?
                        .unwrap_or(d.max_bytes),
                    keep: s.keep.unwrap_or(d.keep),
                    buffer_lines: positive(&format!("{field}.buffer_lines"), s.buffer_lines)?
                        .unwrap_or(d.buffer_lines),
                    flush: positive(&format!("{field}.flush_ms"), s.flush_ms)?
                        .map_or(d.flush, Duration::from_millis),
                })
            }
            "http" | "otlp" => {
                let otlp = s.kind == "otlp";
                let mut takes = vec![
                    "url",
                    "batch_lines",
                    "flush_ms",
                    "buffer_lines",
                    "timeout_ms",
                    "retries",
                    "headers",
                ];
                if !otlp {
                    takes.insert(1, "format");
                }
                s.refuse_unused(&field, &takes)?;
                match s.format.as_deref().unwrap_or("ndjson") {
                    "ndjson" => {}
                    other => bail!(
                        "{field}.format: `{other}` is not supported (\"ndjson\", batched JSON lines; for OTLP use type = \"otlp\")"
                    ),
                }
                let url = match (s.url.as_deref(), otlp) {
                    (Some(url), _) => {
                        let url = expand_str(url, env).map_err(|e| anyhow!("{field}.url: {e}"))?;
                        parse_upstream_like(&url, true).map_err(|e| anyhow!("{field}.url: {e}"))?
                    }
                    (None, false) => bail!("{field}.url: required with type = \"http\""),
                    (None, true) => match env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
                        .filter(|v| !v.trim().is_empty())
                    {
                        Some(url) => parse_upstream_like(&url, true)
                            .map_err(|e| anyhow!("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: {e}"))?,
                        None => signal_url(telemetry.endpoint.as_deref(), "logs")
                            .map_err(|e| anyhow!("{field}.url: {e}"))?,
                    },
                };
                let mut http = HttpSinkSettings::new(url);
                if otlp {
                    http.format = LogFormat::Otlp {
                        service_name: telemetry.service_name.clone(),
                    };
                    // The exporter's own headers unless the sink has some.
                    if s.headers.is_none() {
                        http.headers = match env("OTEL_EXPORTER_OTLP_LOGS_HEADERS") {
                            Some(list) => header_list("OTEL_EXPORTER_OTLP_LOGS_HEADERS", &list)?,
                            None => telemetry.headers.clone(),
                        };
                    }
                }
                http.batch_lines = positive(&format!("{field}.batch_lines"), s.batch_lines)?
                    .unwrap_or(http.batch_lines);
                http.flush = positive(&format!("{field}.flush_ms"), s.flush_ms)?
                    .map_or(http.flush, Duration::from_millis);
                http.buffer_lines = positive(&format!("{field}.buffer_lines"), s.buffer_lines)?
                    .unwrap_or(http.buffer_lines);
                http.timeout = positive(&format!("{field}.timeout_ms"), s.timeout_ms)?
                    .map_or(http.timeout, Duration::from_millis);
                http.retries = s.retries.unwrap_or(http.retries);
                for (k, v) in s.headers.iter().flatten() {
                    let at = format!("{field}.headers.{k}");
                    let name = HeaderName::try_from(k.as_str())
                        .map_err(|_| anyhow!("{at}: `{k}` is not a header name"))?;
                    let value = expand_str(v, env).map_err(|e| anyhow!("{at}: {e}"))?;
                    let value = HeaderValue::try_from(value)
                        .map_err(|_| anyhow!("{at}: not a valid header value"))?;
                    http.headers.push((name, value));
                }
                SinkKind::Http(http)
            }
            other => {
                bail!("{field}.type: `{other}` is not \"stdout\", \"file\", \"http\" or \"otlp\"")
            }
        };
        let name = s.name.unwrap_or_else(|| s.kind.clone());
        if name.is_empty() {
            bail!("{field}.name: must not be empty");
        }
        if let Some(j) = sinks.iter().position(|o| o.name == name) {
            bail!(
                "{field}.name: `{name}` is already the name of log.sink[{j}]; give each sink its own `name`"
            );
        }
        sinks.push(SinkSettings { name, level, kind });
    }
    Ok(LogSettings { sinks })
}
