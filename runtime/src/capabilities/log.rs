//! The `log` capability: structured log lines from policies.
//!
//! The host tags every line with the policy, route and request id, so a
//! policy cannot forge another's lines, and bounds what one line may carry.
//! Lines go to a [`LogSink`]: JSON lines on stdout in the sidecar, memory in
//! tests and in the plugin harness.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use wasmtime::component::{HasSelf, Linker};

use super::{Caller, Clock};
use crate::bindings::v01::log as wit01;
use crate::bindings::v02::log::{self as wit};

/// Longest message or string field kept; longer ones are cut (and marked).
const MAX_TEXT_BYTES: usize = 8 * 1024;
/// Most fields kept from one line.
const MAX_FIELDS: usize = 64;
/// Keys the host sets itself; a policy's field with one of these names is
/// renamed `field.<name>` rather than overwriting it.
const RESERVED: [&str; 6] = ["ts", "level", "policy", "route", "request_id", "msg"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// One line, as a sink receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub ts_micros: u64,
    pub level: Level,
    pub policy: Arc<str>,
    pub route: Arc<str>,
    pub request_id: Arc<str>,
    pub message: String,
    pub fields: Vec<(String, FieldValue)>,
}

impl LogRecord {
    /// The value of field `key`, if the line has it.
    pub fn field(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The line as one JSON object: host keys first (in a fixed order, for
    /// people reading the stream), then the policy's fields in its order.
    pub fn to_json_line(&self) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{{\"ts\":\"{}\",\"level\":{},\"policy\":{},\"route\":{},\"request_id\":{},\"msg\":{}",
            rfc3339(self.ts_micros),
            json(&self.level),
            json(&*self.policy),
            json(&*self.route),
            json(&*self.request_id),
            json(&self.message),
        );
        for (k, v) in &self.fields {
            let host_value = match k.as_str() {
                "policy" => Some(&*self.policy),
                "route" => Some(&*self.route),
                "request_id" => Some(&*self.request_id),
                _ => None,
            };
            // Repeating what the host already tagged adds nothing.
            if host_value.is_some()
                && matches!(v, FieldValue::Str(s) if Some(s.as_str()) == host_value)
            {
                continue;
            }
            let key = if RESERVED.contains(&k.as_str()) {
                format!("field.{k}")
            } else {
                k.clone()
            };
            let _ = write!(line, ",{}:{}", json(&key), json(v));
        }
        line.push('}');
        line
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Where policy log lines go.
pub trait LogSink: Send + Sync + 'static {
    fn emit(&self, record: LogRecord);
}

/// One JSON object per line on stdout (the sidecar's own diagnostics go to
/// stderr, so stdout stays a clean stream of policy lines).
#[derive(Debug)]
pub struct StdoutSink {
    min_level: Level,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self {
            min_level: Level::Info,
        }
    }
}

impl StdoutSink {
    pub fn new(min_level: Level) -> Self {
        Self { min_level }
    }
}

impl LogSink for StdoutSink {
    fn emit(&self, record: LogRecord) {
        if record.level < self.min_level {
            return;
        }
        let mut line = record.to_json_line();
        line.push('\n');
        // A closed stdout must not fail the request that logged.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// Keeps every line in memory (tests, the plugin harness).
#[derive(Debug, Default)]
pub struct MemorySink(Mutex<Vec<LogRecord>>);

impl MemorySink {
    pub fn records(&self) -> Vec<LogRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn take(&self) -> Vec<LogRecord> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The records with `message`, once there are at least `n` of them (or
    /// `within` has passed): lines logged by completion hooks arrive after
    /// the response went out, from the thread that served it.
    pub async fn wait_for(
        &self,
        message: &str,
        n: usize,
        within: std::time::Duration,
    ) -> Vec<LogRecord> {
        let waiting = std::time::Instant::now();
        loop {
            let found: Vec<_> = self
                .records()
                .into_iter()
                .filter(|r| r.message == message)
                .collect();
            if found.len() >= n || waiting.elapsed() >= within {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl LogSink for MemorySink {
    fn emit(&self, record: LogRecord) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

/// Per-instance state of the capability.
pub struct LogState {
    sink: Arc<dyn LogSink>,
    clock: Arc<dyn Clock>,
    caller: Caller,
}

impl LogState {
    pub(crate) fn new(sink: Arc<dyn LogSink>, clock: Arc<dyn Clock>, caller: Caller) -> Self {
        Self {
            sink,
            clock,
            caller,
        }
    }

    /// A reused instance serves another request: its lines carry that
    /// request's id.
    pub(crate) fn set_caller(&mut self, caller: Caller) {
        self.caller = caller;
    }
}

impl wit::Host for LogState {
    fn emit(&mut self, level: wit::Level, message: String, fields: Vec<wit::Field>) {
        let fields = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|f| {
                let value = match f.value {
                    wit::Value::Str(s) => FieldValue::Str(truncate(s)),
                    wit::Value::Int(i) => FieldValue::Int(i),
                    wit::Value::Float(x) => FieldValue::Float(x),
                    wit::Value::Boolean(b) => FieldValue::Bool(b),
                };
                (truncate(f.key), value)
            })
            .collect();
        self.sink.emit(LogRecord {
            ts_micros: self.clock.now_micros(),
            level: match level {
                wit::Level::Trace => Level::Trace,
                wit::Level::Debug => Level::Debug,
                wit::Level::Info => Level::Info,
                wit::Level::Warn => Level::Warn,
                wit::Level::Error => Level::Error,
            },
            policy: self.caller.policy.clone(),
            route: self.caller.route.clone(),
            request_id: self.caller.request_id.clone(),
            message: truncate(message),
            fields,
        });
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_TEXT_BYTES {
        let mut cut = MAX_TEXT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

/// Formats Unix microseconds as RFC 3339 UTC with millisecond precision.
fn rfc3339(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let millis = (micros / 1_000) % 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for any date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3_600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Contract 0.1's `log` is the same interface: its lines go the same way.
impl wit01::Host for LogState {
    fn emit(&mut self, level: wit01::Level, message: String, fields: Vec<wit01::Field>) {
        let level = match level {
            wit01::Level::Trace => wit::Level::Trace,
            wit01::Level::Debug => wit::Level::Debug,
            wit01::Level::Info => wit::Level::Info,
            wit01::Level::Warn => wit::Level::Warn,
            wit01::Level::Error => wit::Level::Error,
        };
        let fields = fields
            .into_iter()
            .map(|f| wit::Field {
                key: f.key,
                value: match f.value {
                    wit01::Value::Str(s) => wit::Value::Str(s),
                    wit01::Value::Int(i) => wit::Value::Int(i),
                    wit01::Value::Float(x) => wit::Value::Float(x),
                    wit01::Value::Boolean(b) => wit::Value::Boolean(b),
                },
            })
            .collect();
        wit::Host::emit(self, level, message, fields);
    }
}

/// Links both contracts' `log`, on the context `get` finds in a store's
/// data.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<LogState>>(linker, get)?;
    wit01::add_to_linker::<T, HasSelf<LogState>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::ManualClock;
    use serde_json::Value;

    fn state(sink: Arc<MemorySink>) -> LogState {
        LogState {
            sink,
            clock: Arc::new(ManualClock::new(1_700_000_000_123_456)),
            caller: Caller {
                policy: "logging".into(),
                route: "api".into(),
                request_id: "req-1".into(),
            },
        }
    }

    #[test]
    fn formats_timestamps_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123_456), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn host_tags_lines_and_policy_cannot_overwrite_them() {
        let sink = Arc::new(MemorySink::default());
        let mut log = state(sink.clone());
        wit::Host::emit(
            &mut log,
            wit::Level::Info,
            "access".into(),
            vec![
                wit::Field {
                    key: "policy".into(),
                    value: wit::Value::Str("forged".into()),
                },
                wit::Field {
                    key: "status".into(),
                    value: wit::Value::Int(200),
                },
                wit::Field {
                    key: "request_id".into(),
                    value: wit::Value::Str("req-1".into()),
                },
            ],
        );
        let line = sink.records()[0].to_json_line();
        assert!(
            line.starts_with(
                r#"{"ts":"2023-11-14T22:13:20.123Z","level":"info","policy":"logging""#
            ),
            "{line}"
        );
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["policy"], "logging");
        assert_eq!(json["field.policy"], "forged");
        assert_eq!(json["request_id"], "req-1");
        assert_eq!(json["status"], 200);
        assert_eq!(json["msg"], "access");
        assert!(
            json.get("field.request_id").is_none(),
            "same value as the host's tag: dropped"
        );
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let sink = Arc::new(MemorySink::default());
        let mut log = state(sink.clone());
        wit::Host::emit(&mut log, wit::Level::Warn, "é".repeat(10_000), vec![]);
        let msg = &sink.records()[0].message;
        assert!(msg.len() < MAX_TEXT_BYTES + 20);
        assert!(msg.ends_with("[truncated]"));
    }
}
