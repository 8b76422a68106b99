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
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::telemetry::{header_list, signal_url};
use super::{expand_str, parse_upstream_like, positive};
use crate::capabilities::Level;
use crate::shipping::{
    FileSinkSettings, HttpSinkSettings, LogFormat, LogSettings, SinkKind, SinkSettings,
};
use crate::telemetry::TelemetrySettings;

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
