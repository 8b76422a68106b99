//! Assertion helpers on the contract's types.

use crate::{Decision, Header, Request, Response};
use sidecar_runtime::capabilities::{FieldValue, LogRecord};

/// Reading a [`Decision`].
pub trait DecisionExt {
    /// The policy's own answer, if it responded.
    fn responded(&self) -> Option<&Response>;
    /// Whether it let the request through (changed or not).
    fn continued(&self) -> bool;
    /// The replacement request, if it continued with one.
    fn changed_request(&self) -> Option<&Request>;
}

impl DecisionExt for Decision {
    fn responded(&self) -> Option<&Response> {
        match self {
            Decision::Respond(r) => Some(r),
            Decision::Continue(_) => None,
        }
    }

    fn continued(&self) -> bool {
        matches!(self, Decision::Continue(_))
    }

    fn changed_request(&self) -> Option<&Request> {
        match self {
            Decision::Continue(Some(r)) => Some(r),
            _ => None,
        }
    }
}

/// Header lookup on anything with headers.
pub trait HeadersExt {
    fn headers(&self) -> &[Header];

    /// The first value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of header `name`, in order.
    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers()
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
            .collect()
    }
}

impl HeadersExt for Request {
    fn headers(&self) -> &[Header] {
        &self.headers
    }
}

impl HeadersExt for Response {
    fn headers(&self) -> &[Header] {
        &self.headers
    }
}

/// Reading a [`Response`] body.
pub trait ResponseExt {
    /// The body as text (lossy).
    fn text(&self) -> String;
    /// The body as JSON.
    ///
    /// # Panics
    /// If the body is not JSON (a test failure, with the body shown).
    fn json(&self) -> serde_json::Value;
}

impl ResponseExt for Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Finding log lines.
pub trait LogsExt {
    /// Lines with message `msg`.
    fn with_message(&self, msg: &str) -> Vec<&LogRecord>;
    /// Whether any line's message or field contains `needle` (to assert a
    /// secret never reached the log).
    fn mention(&self, needle: &str) -> bool;
}

impl LogsExt for [LogRecord] {
    fn with_message(&self, msg: &str) -> Vec<&LogRecord> {
        self.iter().filter(|r| r.message == msg).collect()
    }

    fn mention(&self, needle: &str) -> bool {
        self.iter().any(|r| {
            r.message.contains(needle)
                || r.fields.iter().any(|(k, v)| {
                    k.contains(needle) || matches!(v, FieldValue::Str(s) if s.contains(needle))
                })
        })
    }
}
