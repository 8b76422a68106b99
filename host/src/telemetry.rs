//! OpenTelemetry: the sidecar in its callers' traces, exported over OTLP.
//!
//! Per request, when `[telemetry]` (or `OTEL_*`) turns traces on:
//! - a server span, child of the caller's `traceparent` (W3C trace
//!   context; `tracestate` kept) or the root of a new trace, named
//!   `{method} {route}`, ended when the response's last byte went out;
//! - a span per policy hook call, `{policy} {hook}`, with its outcome
//!   (`continue`, `respond` and the status, or `failed` and why);
//! - a client span per upstream attempt (a retry is another, with
//!   `http.request.resend_count`), whose id the upstream receives in
//!   `traceparent`.
//!
//! The request's [`Context`] rides along its future (`with_context`), so the
//! chain and the balancer find their parent, and policy log lines their
//! trace ([`current_span`]), without it being passed by hand. With traces
//! off, no context is attached: [`HookSpan::start`] and [`Attempt::start`]
//! find nothing and return at once, and headers pass untouched.
//!
//! Ended spans go through a bounded queue to a task that batches them to
//! the OTLP exporter (`ship`, the log sinks' batching): a full queue drops
//! the span, counted in `sidecar_trace_spans_dropped_total`; the request
//! never waits. [`logs`] turns policy log lines into OTLP log records.

pub mod logs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batch::{Deliver, Lane, ship};
use crate::metrics::Metrics;

/// The resolved `[telemetry]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// `service.name` of what the sidecar exports (traces and OTLP logs).
    pub service_name: String,
    /// `None`: no traces (nothing is recorded, nothing is propagated).
    pub traces: Option<TraceSettings>,
    /// The base endpoint (`endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`),
    /// for an OTLP log sink without a `url`.
    pub endpoint: Option<String>,
    /// `headers` / `OTEL_EXPORTER_OTLP_HEADERS`, for every OTLP export.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            service_name: "sidecar".to_owned(),
            traces: None,
            endpoint: None,
            headers: Vec::new(),
        }
    }
}

/// Traces: where they go, which are kept, and the export queue.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The full URL spans are POSTed to (`…/v1/traces`).
    pub url: Uri,
    pub sampler: Sampler,
    /// Ended spans waiting for export; beyond it new ones are dropped
    /// (counted), the request never waits.
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    /// A partial batch is sent once its first span has waited this long.
    pub schedule_delay: Duration,
    /// Bound on one export request.
    pub export_timeout: Duration,
}

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// A share of trace ids (0.0 to 1.0).
    Ratio(f64),
    /// The caller's decision when its `traceparent` has one, else the inner.
    ParentBased(Box<Sampler>),
}

/// Traces, running: the tracer requests start their spans with, and the
/// export task behind it.
pub struct Telemetry {
    tracing: Tracing,
    /// Kept for its lifetime: the tracer's spans end into its processor.
    _provider: SdkTracerProvider,
    stop: watch::Sender<Option<Instant>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// What a request's [`Context`] carries for its children's spans.
#[derive(Clone)]
struct Tracing(Arc<SdkTracer>);

impl Telemetry {
    /// Starts the exporter's task (so it needs a Tokio runtime); `None`
    /// when traces are off.
    ///
    /// # Errors
    /// The exporter cannot be built from the settings.
    pub fn start(settings: &TelemetrySettings, metrics: &Metrics) -> anyhow::Result<Option<Self>> {
        let Some(traces) = &settings.traces else {
            return Ok(None);
        };
        let headers: HashMap<String, String> = settings
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpHttp::new(traces.export_timeout))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces.url.to_string())
            .with_timeout(traces.export_timeout)
            .with_headers(headers)
            .build()
            .context("telemetry: building the OTLP span exporter")?;
        // `OTEL_RESOURCE_ATTRIBUTES` included; the name set here wins.
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(traces.max_queue_size);
        let lane = Lane::new("traces", metrics.trace_spans());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Queued {
                tx,
                lane: lane.clone(),
            })
            .with_sampler(sdk_sampler(&traces.sampler))
            .with_resource(resource)
            .build();
        let scope = InstrumentationScope::builder("sidecar")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        let (stop, stopped) = watch::channel(None);
        let delivery = Spans {
            exporter,
            timeout: traces.export_timeout,
        };
        let worker = tokio::spawn(ship(
            traces.max_export_batch_size,
            traces.schedule_delay,
            lane,
            rx,
            stopped,
            delivery,
        ));
        tracing::info!(endpoint = %traces.url, service = %settings.service_name, "exporting traces over OTLP");
        Ok(Some(Self {
            tracing: Tracing(Arc::new(tracer)),
            _provider: provider,
            stop,
            worker: Mutex::new(Some(worker)),
        }))
    }

    /// The server span of a request whose head is `parts`.
    pub fn server_span(
        &self,
        parts: &http::request::Parts,
        client: SocketAddr,
        tls: bool,
        request_id: &str,
    ) -> RequestTrace {
        let parent = TraceContextPropagator::new()
            .extract(&HeaderExtractor(&parts.headers))
            .with_value(self.tracing.clone());
        let mut attributes = vec![
            KeyValue::new("http.request.method", parts.method.to_string()),
            KeyValue::new("url.path", parts.uri.path().to_owned()),
            KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
            KeyValue::new("client.address", client.ip().to_string()),
            KeyValue::new("client.port", i64::from(client.port())),
            KeyValue::new("network.protocol.version", protocol_version(parts.version)),
            KeyValue::new("sidecar.request_id", request_id.to_owned()),
        ];
        if let Some(ua) = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", ua.to_owned()));
        }
        let tracer = &*self.tracing.0;
        let span = tracer
            .span_builder(parts.method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
            method: parts.method.clone(),
        }
    }

    /// Exports what is queued, within `within`; later spans are dropped
    /// (counted as `shutdown`).
    pub async fn shutdown(&self, within: Duration) {
        let deadline = Instant::now() + within;
        self.stop.send_replace(Some(deadline));
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(worker) = worker {
            let _ = tokio::time::timeout_at(deadline + Duration::from_millis(500), worker).await;
        }
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn sdk_sampler(s: &Sampler) -> opentelemetry_sdk::trace::Sampler {
    use opentelemetry_sdk::trace::Sampler as S;
    match s {
        Sampler::AlwaysOn => S::AlwaysOn,
        Sampler::AlwaysOff => S::AlwaysOff,
        Sampler::Ratio(r) => S::TraceIdRatioBased(*r),
        Sampler::ParentBased(inner) => S::ParentBased(Box::new(sdk_sampler(inner))),
    }
}

/// A request's server span, in the [`Context`] its future runs with.
#[derive(Debug)]
pub struct RequestTrace {
    cx: Context,
    method: http::Method,
}

impl RequestTrace {
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Records the answer: the span is named after the route it matched
    /// (`GET /api`), and is an error for a 5xx.
    pub fn answered(&self, route: Option<&str>, status: http::StatusCode, error: Option<&str>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        if let Some(route) = route {
            span.update_name(format!("{} {route}", self.method));
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
            span.set_status(Status::error(error.unwrap_or_default().to_owned()));
        }
    }

    /// `response`, whose body ends the span once it is sent (or dropped).
    pub fn end_with(self, response: axum::response::Response) -> axum::response::Response {
        response.map(|inner| axum::body::Body::new(Ending { inner, cx: self.cx }))
    }
}

/// A response body that ends its request's span when done.
struct Ending {
    inner: axum::body::Body,
    cx: Context,
}

impl http_body::Body for Ending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// The span of the current context (a hook's while it runs), for a log
/// line's trace; invalid outside a traced request.
pub fn current_span() -> SpanContext {
    Context::map_current(|cx| cx.span().span_context().clone())
}

/// The current request's trace context, to carry into a task it spawns;
/// `None` when traces are off.
pub fn current() -> Option<Context> {
    Context::map_current(|cx| cx.get::<Tracing>().is_some().then(|| cx.clone()))
}

/// Runs `task` in `cx` (from [`current`]): a spawned task's spans and log
/// lines stay in the request's trace.
pub async fn within<F: Future>(cx: Option<Context>, task: F) -> F::Output {
    match cx {
        Some(cx) => task.with_context(cx).await,
        None => task.await,
    }
}

/// The context a request's traces hang from: `None` when traces are off.
fn traced() -> Option<(Tracing, Context)> {
    Context::map_current(|cx| cx.get::<Tracing>().map(|t| (t.clone(), cx.clone())))
}

/// One policy hook call's span (nothing when traces are off).
pub struct HookSpan(Option<Context>);

/// How a hook call ended, for its span.
#[derive(Debug, Clone)]
pub enum HookOutcome {
    /// The request (or response) goes on.
    Continue,
    /// The policy answered with this status.
    Respond(u16),
    /// The call failed: `reason` as in `sidecar_policy_failures_total`.
    Failed { reason: &'static str, error: String },
}

impl HookSpan {
    pub fn start(policy: &str, hook: &'static str) -> Self {
        let Some((tracing, parent)) = traced() else {
            return Self(None);
        };
        let tracer = &*tracing.0;
        let span = tracer
            .span_builder(format!("{policy} {hook}"))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("sidecar.policy", policy.to_owned()),
                KeyValue::new("sidecar.hook", hook),
            ])
            .start_with_context(tracer, &parent);
        Self(Some(parent.with_span(span)))
    }

    /// Runs `call` with this span current (its log lines carry it).
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        within(self.0.clone(), call).await
    }

    /// Ends the span with what `outcome` says (asked only when recorded).
    pub fn end(self, outcome: impl FnOnce() -> HookOutcome) {
        let Some(cx) = self.0 else { return };
        let span = cx.span();
        if span.is_recording() {
            match outcome() {
                HookOutcome::Continue => {
                    span.set_attribute(KeyValue::new("sidecar.outcome", "continue"));
                }
                HookOutcome::Respond(status) => {
                    span.set_attribute(KeyValue::new("sidecar.outcome", "respond"));
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                }
                HookOutcome::Failed { reason, error } => {
                    span.set_attribute(KeyValue::new("sidecar.outcome", "failed"));
                    span.set_attribute(KeyValue::new("error.type", reason));
                    span.set_status(Status::error(error));
                }
            }
        }
        span.end();
    }
}

/// One upstream attempt's client span; its id goes upstream in
/// `traceparent`.
pub struct Attempt(Option<Context>);

impl Attempt {
    /// Starts the span and writes its `traceparent` (and the caller's
    /// `tracestate`) on `request`. With traces off, `request` is left as
    /// it is: the caller's headers pass through.
    pub fn start<B>(request: &mut http::Request<B>, endpoint: &str, resend: usize) -> Self {
        let Some((tracing, parent)) = traced() else {
            return Self(None);
        };
        let uri = request.uri();
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method().to_string()),
            KeyValue::new("server.address", uri.host().unwrap_or_default().to_owned()),
            KeyValue::new("url.full", uri.to_string()),
            KeyValue::new("sidecar.endpoint", endpoint.to_owned()),
        ];
        if let Some(port) = uri.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if resend > 0 {
            attributes.push(KeyValue::new("http.request.resend_count", resend as i64));
        }
        let tracer = &*tracing.0;
        let span = tracer
            .span_builder(request.method().to_string())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        TraceContextPropagator::new()
            .inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
        Self(Some(cx))
    }

    /// Ends the span with the answer's status, or the error's kind (as in
    /// the metrics) and text.
    pub fn end<E: std::fmt::Display>(self, outcome: Result<http::StatusCode, (&'static str, E)>) {
        let Some(cx) = self.0 else { return };
        let span = cx.span();
        if span.is_recording() {
            match outcome {
                Ok(status) => {
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status.as_u16()),
                    ));
                    if status.is_client_error() || status.is_server_error() {
                        span.set_attribute(KeyValue::new(
                            "error.type",
                            status.as_u16().to_string(),
                        ));
                        span.set_status(Status::error(String::new()));
                    }
                }
                Err((kind, error)) => {
                    span.set_attribute(KeyValue::new("error.type", kind));
                    span.set_status(Status::error(error.to_string()));
                }
            }
        }
        span.end();
    }
}

/// The tracer's span processor: an ended, sampled span is offered to the
/// export queue, never waited on.
#[derive(Debug)]
struct Queued {
    tx: mpsc::Sender<SpanData>,
    lane: Lane,
}

impl SpanProcessor for Queued {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let sent = self
            .tx
            .try_send(span)
            .map_err(|e| matches!(e, mpsc::error::TrySendError::Full(_)));
        self.lane.offered(sent);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The span queue's delivery: one OTLP export a batch.
struct Spans {
    exporter: opentelemetry_otlp::SpanExporter,
    timeout: Duration,
}

impl Deliver<SpanData> for Spans {
    async fn deliver(&self, batch: Vec<SpanData>) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// The exporter's HTTP client: the one of policies' outbound calls, with
/// the system's roots (no reqwest, no second runtime).
#[derive(Clone)]
struct OtlpHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttp").finish_non_exhaustive()
    }
}

impl OtlpHttp {
    fn new(timeout: Duration) -> Self {
        let client = crate::http_client::small_client(crate::tls::system_client_config());
        Self { client, timeout }
    }
}

/// Most of a collector's answer read (it is a small status message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let exchange = async {
            let response = self.client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::from(format!("no answer within {:?}", self.timeout)))?
    }
}
