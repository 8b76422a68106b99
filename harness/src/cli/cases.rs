//! `sidecar policy test FILE CASES`: table-driven tests for policies in any
//! language, on any contract (0.1.0, 0.2.0 or 0.2.1). Cases run in order and
//! share the store and the clock, so a cache miss, a hit, and an expiry are
//! three cases; the policy is loaded once per distinct config, as the
//! sidecar loads it once for many requests. With an `upstream`, a case runs
//! the whole exchange: request hook, response hook and completion hook, each
//! as far as the policy asked for it.
//!
//! ```toml
//! config = { secret = "s" }            # for every case, unless a case sets its own
//! start_unix = 1704067200              # the clock's start (default 2024-01-01T00:00:00Z)
//!
//! [[case]]
//! name = "no token is 401"
//! request = { method = "GET", path = "/private" }
//! expect = { decision = "respond", status = 401, body_contains = "missing_token" }
//!
//! [[case]]
//! name = "second read is a hit"
//! advance_secs = 1                     # the clock moves first
//! kv = { "some-key" = "preloaded" }    # the store is preloaded first
//! request = { path = "/profile", headers = { x-authenticated-user = "ann" } }
//! upstream = { status = 200, body = "from upstream" }   # also run the response hook
//! expect = { status = 200, headers = { x-cache = "hit" } }
//! ```
//!
//! A policy that calls out (`outbound`) is granted origins as in the
//! sidecar's config, and its calls reach stubs a case sets (they stay set for
//! later cases), never the network:
//!
//! ```toml
//! allow_outbound = ["https://idp.example"]
//!
//! [[case]]
//! name = "fetches the key set once"
//! outbound = [{ url = "https://idp.example/jwks", body = "{...}", headers = { cache-control = "max-age=300" } }]
//! request = { path = "/", headers = { authorization = "Bearer ..." } }
//! expect = { decision = "continue", outbound_requests = ["GET https://idp.example/jwks"] }
//! ```
//!
//! A stub may also be `{ url = "...", fail = "connection refused" }` or
//! `{ url = "...", timeout = true }`; `method` defaults to `GET`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::{
    Configured, Decision, DecisionExt, Harness, HarnessError, HeadersExt, HookError, LogsExt,
    MessageError, PolicyError, Request, Response, ResponseExt,
};
use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::setup::{self, StubSpec};
use super::wire::{RequestSpec, ResponseSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// Default config of every case.
    #[serde(default)]
    config: Option<serde_json::Value>,
    /// Where the clock starts, in Unix seconds.
    start_unix: Option<u64>,
    /// Origins the policy may call, as `allow_outbound` in the config.
    #[serde(default)]
    allow_outbound: Vec<String>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    config: Option<serde_json::Value>,
    #[serde(default)]
    advance_secs: u64,
    #[serde(default)]
    kv: BTreeMap<String, String>,
    /// Stubs for `outbound` calls, set before the case runs.
    #[serde(default)]
    outbound: Vec<StubSpec>,
    request: RequestSpec,
    upstream: Option<ResponseSpec>,
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `continue`, `respond`, or `refused` (the config is refused).
    decision: Option<String>,
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_request_headers: Vec<String>,
    body_contains: Option<String>,
    #[serde(default)]
    log_contains: Vec<String>,
    #[serde(default)]
    log_lacks: Vec<String>,
    /// The `outbound` calls that reached the stubs during the case
    /// (`GET https://host/path`), in order; the cache's answers are not.
    outbound_requests: Option<Vec<String>>,
    /// The hook must fail this way: the policy's failure (`trap`,
    /// `timeout`, `memory`, `kv_quota`), or a message it cannot take or
    /// give (`too_large`: a body over the limit; `bad_output`: an answer
    /// or change that is not valid HTTP; `not_utf8`: a header a 0.1 policy
    /// cannot be given; `message`: any of these).
    error: Option<String>,
}

/// What a run printed, and its counts.
#[derive(Debug)]
pub struct Report {
    pub lines: Vec<String>,
    pub passed: usize,
    pub failed: usize,
}

/// Runs every case of `cases` (TOML, or JSON by extension) against `wasm`.
///
/// # Errors
/// The component cannot be loaded or the case file is unreadable or
/// malformed (naming the file). Failing cases are not errors: they are
/// counted in the [`Report`].
pub fn run_cases(wasm: &Path, cases: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(cases)
        .with_context(|| format!("cannot read {}", cases.display()))?;
    let file: CaseFile = if cases.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}", cases.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("{}", cases.display()))?
    };
    if file.cases.is_empty() {
        bail!("{}: no cases (add [[case]] tables)", cases.display());
    }
    let harness = setup::load(wasm, &file.allow_outbound, &|i| {
        format!("{}: allow_outbound[{i}]", cases.display())
    })?;
    if let Some(start) = file.start_unix {
        harness.clock().set_micros(start.saturating_mul(1_000_000));
    }
    let mut report = Report {
        lines: Vec::new(),
        passed: 0,
        failed: 0,
    };
    let mut loaded: HashMap<String, Result<Configured<'_>, HarnessError>> = HashMap::new();
    for case in &file.cases {
        harness.advance(Duration::from_secs(case.advance_secs));
        setup::prepare(
            &harness,
            case.kv.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &case.outbound,
        )
        .with_context(|| format!("{}: case `{}`: kv", cases.display(), case.name))?;
        let sent_before = harness.outbound_requests().len();
        harness.take_logs();
        let config = case
            .config
            .clone()
            .or_else(|| file.config.clone())
            .unwrap_or(serde_json::json!({}));
        // Loaded once per distinct config, as the sidecar loads a policy
        // once and serves every request with it (a 0.2 policy is
        // configured and snapshotted at load: once, not once per case).
        let key = config.to_string();
        if !loaded.contains_key(&key) {
            loaded.insert(key.clone(), harness.configure(config));
        }
        let outcome = run_one(&harness, case, &loaded[&key]).and_then(|()| {
            let sent = &harness.outbound_requests()[sent_before..];
            match &case.expect.outbound_requests {
                Some(want) if want.as_slice() != sent => {
                    Err(format!("expected outbound requests {want:?}, got {sent:?}"))
                }
                _ => Ok(()),
            }
        });
        match outcome {
            Ok(()) => {
                report.passed += 1;
                report.lines.push(format!("ok      {}", case.name));
            }
            Err(why) => {
                report.failed += 1;
                report.lines.push(format!("FAILED  {}: {why}", case.name));
            }
        }
    }
    Ok(report)
}

fn run_one(
    harness: &Harness,
    case: &Case,
    loaded: &Result<Configured<'_>, HarnessError>,
) -> Result<(), String> {
    let expect = &case.expect;
    let policy = match loaded {
        Ok(p) => p,
        Err(HarnessError::ConfigRefused(msg)) if expect.decision.as_deref() == Some("refused") => {
            return check_text("refusal", msg, expect.body_contains.as_deref());
        }
        Err(e) => return Err(e.to_string()),
    };
    if expect.decision.as_deref() == Some("refused") {
        return Err("expected the config to be refused, it was accepted".into());
    }
    let request = case.request.build();
    let outcome = match &case.upstream {
        None => policy.on_request(request.clone()).map(|d| (d, None)),
        Some(up) => policy
            .round_trip(request.clone(), up.build())
            .map(|t| (t.decision, Some(t.response))),
    };
    let (decision, final_response) = match (outcome, expect.error.as_deref()) {
        (Err(e), Some(kind)) => return check_error(&e, kind),
        (Err(e), None) => return Err(format!("the policy failed: {e}")),
        (Ok(_), Some(kind)) => {
            return Err(format!("expected a {kind} failure, the policy returned"));
        }
        (Ok(v), None) => v,
    };
    match (expect.decision.as_deref(), &decision) {
        (None, _)
        | (Some("continue"), Decision::Continue(_))
        | (Some("respond"), Decision::Respond(_)) => {}
        (Some(want), got) => {
            return Err(format!("expected decision `{want}`, got `{}`", kind(got)));
        }
    }
    // The response the expectations are about: the final one when the case
    // gives an upstream, else the policy's own answer.
    let response: Option<&Response> = final_response.as_ref().or(decision.responded());
    if let Some(status) = expect.status {
        match response {
            Some(r) if r.status == status => {}
            Some(r) => return Err(format!("expected status {status}, got {}", r.status)),
            None => {
                return Err(format!(
                    "expected status {status}, but the policy continued and the case has no upstream"
                ));
            }
        }
    }
    if !expect.headers.is_empty()
        || !expect.absent_headers.is_empty()
        || expect.body_contains.is_some()
    {
        let r = response
            .ok_or("expected a response, but the policy continued and the case has no upstream")?;
        check_headers("response", r, &expect.headers, &expect.absent_headers)?;
        check_text("body", &r.text(), expect.body_contains.as_deref())?;
    }
    if !expect.request_headers.is_empty() || !expect.absent_request_headers.is_empty() {
        let forwarded: &Request = match &decision {
            Decision::Continue(Some(r)) => r,
            Decision::Continue(None) => &request,
            Decision::Respond(_) => {
                return Err("expected request headers, but the policy responded".into());
            }
        };
        check_headers(
            "request",
            forwarded,
            &expect.request_headers,
            &expect.absent_request_headers,
        )?;
    }
    let logs = harness.logs();
    for needle in &expect.log_contains {
        if !logs.mention(needle) {
            return Err(format!("no log line mentions {needle:?}"));
        }
    }
    for needle in &expect.log_lacks {
        if logs.mention(needle) {
            return Err(format!("a log line mentions {needle:?}"));
        }
    }
    Ok(())
}

fn kind(d: &Decision) -> &'static str {
    if d.continued() { "continue" } else { "respond" }
}

fn check_error(e: &HookError, want: &str) -> Result<(), String> {
    let ok = match e {
        HookError::Policy(p) => matches!(
            (want, p),
            ("trap", PolicyError::Trapped { .. })
                | ("timeout", PolicyError::TimedOut { .. })
                | ("memory", PolicyError::MemoryCap { .. })
                | ("kv_quota", PolicyError::KvQuota { .. })
        ),
        HookError::Message(m) => {
            want == "message"
                || matches!(
                    (want, m),
                    (
                        "too_large",
                        MessageError::RequestBodyTooLarge { .. }
                            | MessageError::ResponseBodyTooLarge { .. }
                    ) | ("bad_output", MessageError::BadOutput { .. })
                        | ("not_utf8", MessageError::NotUtf8 { .. })
                )
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected a {want} failure, got: {e}"))
    }
}

fn check_headers<H: HeadersExt>(
    what: &str,
    h: &H,
    want: &BTreeMap<String, String>,
    absent: &[String],
) -> Result<(), String> {
    for (name, value) in want {
        match h.header(name) {
            Some(v) if v == value => {}
            Some(v) => {
                return Err(format!(
                    "{what} header `{name}`: expected {value:?}, got {v:?}"
                ));
            }
            None => {
                return Err(format!(
                    "{what} header `{name}`: expected {value:?}, absent"
                ));
            }
        }
    }
    for name in absent {
        if let Some(v) = h.header(name) {
            return Err(format!("{what} header `{name}` should be absent, is {v:?}"));
        }
    }
    Ok(())
}

fn check_text(what: &str, text: &str, needle: Option<&str>) -> Result<(), String> {
    match needle {
        Some(n) if !text.contains(n) => Err(format!("{what} does not contain {n:?}: {text:?}")),
        _ => Ok(()),
    }
}
