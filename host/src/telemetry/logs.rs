//! Policy log lines as OTLP log records (`[[log.sink]] type = "otlp"`):
//! each with the trace and span ids of the hook that logged it, so a
//! backend shows them inside the request's trace. The shipping lane
//! batches them; [`export_request`] encodes one batch.

use bytes::Bytes;
use opentelemetry::trace::SpanContext;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prost::Message as _;

use crate::capabilities::{FieldValue, Level, LogRecord as PolicyLine};

/// One record, ready to batch.
#[derive(Debug, Clone)]
pub struct Record(LogRecord);

impl Record {
    /// `line` as OTLP: the message is the body; policy, route, request id
    /// and the policy's fields are attributes; `span` (when valid) ties
    /// it to its trace.
    pub fn new(line: &PolicyLine, span: &SpanContext) -> Self {
        let (severity_number, severity_text) = match line.level {
            Level::Trace => (SeverityNumber::Trace, "TRACE"),
            Level::Debug => (SeverityNumber::Debug, "DEBUG"),
            Level::Info => (SeverityNumber::Info, "INFO"),
            Level::Warn => (SeverityNumber::Warn, "WARN"),
            Level::Error => (SeverityNumber::Error, "ERROR"),
        };
        let mut attributes = Vec::with_capacity(3 + line.fields.len());
        attributes.push(kv(
            "sidecar.policy",
            Value::StringValue(line.policy.to_string()),
        ));
        attributes.push(kv("http.route", Value::StringValue(line.route.to_string())));
        attributes.push(kv(
            "sidecar.request_id",
            Value::StringValue(line.request_id.to_string()),
        ));
        for (k, v) in &line.fields {
            let value = match v {
                FieldValue::Str(s) => Value::StringValue(s.clone()),
                FieldValue::Int(i) => Value::IntValue(*i),
                FieldValue::Float(f) => Value::DoubleValue(*f),
                FieldValue::Bool(b) => Value::BoolValue(*b),
            };
            attributes.push(kv(k, value));
        }
        let nanos = line.ts_micros.saturating_mul(1000);
        let mut record = LogRecord {
            time_unix_nano: nanos,
            observed_time_unix_nano: nanos,
            severity_number: severity_number as i32,
            severity_text: severity_text.to_owned(),
            body: Some(AnyValue {
                value: Some(Value::StringValue(line.message.clone())),
            }),
            attributes,
            ..LogRecord::default()
        };
        if span.is_valid() {
            record.trace_id = span.trace_id().to_bytes().to_vec();
            record.span_id = span.span_id().to_bytes().to_vec();
            record.flags = u32::from(span.trace_flags().to_u8());
        }
        Self(record)
    }

    #[cfg(test)]
    fn proto(&self) -> &LogRecord {
        &self.0
    }
}

/// What every batch says of where its records come from.
#[derive(Debug, Clone)]
pub struct Resource(ProtoResource);

impl Resource {
    pub fn new(service_name: &str) -> Self {
        Self(ProtoResource {
            attributes: vec![kv(
                "service.name",
                Value::StringValue(service_name.to_owned()),
            )],
            ..ProtoResource::default()
        })
    }
}

/// One `ExportLogsServiceRequest` (protobuf) holding `records`.
pub fn export_request(resource: &Resource, records: Vec<Record>) -> Bytes {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.0.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "sidecar.policy".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                log_records: records.into_iter().map(|r| r.0).collect(),
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn line() -> PolicyLine {
        PolicyLine {
            ts_micros: 1_700_000_000_000_001,
            level: Level::Warn,
            policy: Arc::from("auth"),
            route: Arc::from("/api"),
            request_id: Arc::from("r-1"),
            message: "token expired".to_owned(),
            fields: vec![("status".to_owned(), FieldValue::Int(401))],
        }
    }

    #[test]
    fn a_record_carries_its_trace_and_fields() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let r = Record::new(&line(), &span);
        let p = r.proto();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
        assert_eq!(p.time_unix_nano, 1_700_000_000_000_001_000);
        assert_eq!(p.severity_text, "WARN");
        let status = p.attributes.iter().find(|a| a.key == "status").unwrap();
        assert_eq!(
            status.value.as_ref().unwrap().value,
            Some(Value::IntValue(401))
        );
    }

    #[test]
    fn a_record_outside_a_trace_has_no_ids() {
        let r = Record::new(&line(), &SpanContext::empty_context());
        assert!(r.proto().trace_id.is_empty() && r.proto().span_id.is_empty());
    }

    #[test]
    fn a_batch_decodes_as_an_export_request() {
        let records = vec![Record::new(&line(), &SpanContext::empty_context()); 3];
        let body = export_request(&Resource::new("edge"), records);
        let back = ExportLogsServiceRequest::decode(body).unwrap();
        let logs = &back.resource_logs[0];
        assert_eq!(logs.scope_logs[0].log_records.len(), 3);
        let name = &logs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(name.key, "service.name");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
