//! The request path, top to bottom:
//!
//! route → exchange (the head; the body left streaming) → request hooks in
//! chain order → upstream (unless a policy answered; the body streams to it
//! as the client sends it) → response hooks in reverse → reply (the body
//! streams to the client as the upstream sends it; an upgrade becomes a
//! tunnel) → completion hooks, once the last byte went out.
//!
//! Nothing is buffered unless a policy asked to read a body (or the chain
//! has a 0.1 policy, whose contract takes whole bodies).
//!
//! [`handle`] is the entry the listener calls for each request: admission
//! (the concurrency limit, load shedding), the request id and span, then the
//! path above. [`convert`] turns HTTP into the contract's messages and back;
//! `grpc` answers gRPC callers in gRPC's terms (status in trailers).

pub mod convert;
mod grpc;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::chain::Completing;
use crate::error::SidecarError;
use crate::message::{self, Body, BoxBody, BoxError, Completion, Exchange, Response};
use crate::metrics::Metrics;
use crate::routes::{Gateway, Route};
use crate::telemetry::Telemetry;
use crate::upstream::UpstreamClient;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every request handler shares.
pub struct State {
    /// The current routes and policies. A request reads it once and keeps
    /// that version to the end, so a swap never mixes two configs.
    pub(crate) gateway: watch::Receiver<Arc<Gateway>>,
    pub(crate) upstream: UpstreamClient,
    pub(crate) metrics: Arc<Metrics>,
    /// One permit per request in progress (`[server] max_concurrent_requests`),
    /// shared by the workers.
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) max_in_flight: usize,
    /// `[server] body_read_timeout_ms` and `body_min_bytes_per_sec`.
    pub(crate) body_read_timeout: Duration,
    pub(crate) body_min_rate: u64,
    /// `[server] max_header_bytes`, checked exactly on every head.
    pub(crate) max_head_bytes: usize,
    /// Shared by the workers: what a shutdown waits for last.
    pub(crate) completions: Arc<Completions>,
    /// `Some` when traces are on (`[telemetry]`).
    pub(crate) telemetry: Option<Arc<Telemetry>>,
}

impl State {
    /// The state one worker serves with: everything shared but the
    /// upstream connection pool, which is the worker's own.
    pub(crate) fn for_worker(&self) -> Self {
        Self {
            gateway: self.gateway.clone(),
            upstream: self.upstream.with_own_pool(),
            metrics: self.metrics.clone(),
            in_flight: self.in_flight.clone(),
            max_in_flight: self.max_in_flight,
            body_read_timeout: self.body_read_timeout,
            body_min_rate: self.body_min_rate,
            max_head_bytes: self.max_head_bytes,
            completions: self.completions.clone(),
            telemetry: self.telemetry.clone(),
        }
    }

    /// Resolves once no completion hook is running or waiting to.
    pub(crate) async fn completions_idle(&self) {
        self.completions.idle().await;
    }
}

/// Who sent a request: the client's address, and whether it came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub client: SocketAddr,
    pub tls: bool,
}

/// Route label of requests that matched no route (or were refused first).
const NO_ROUTE: &str = "(none)";

/// Serves one request from the listener: admission (the head's size and
/// framing, the body's pace, load shedding), the request id, the server
/// span and the metrics around [`proxy`]. `ambiguous` is why the
/// connection's framing check found the head ambiguous, if it did.
pub(crate) async fn handle(
    state: &State,
    peer: Peer,
    ambiguous: Option<&'static str>,
    req: http::Request<axum::body::Body>,
) -> axum::response::Response {
    let Peer { client, tls } = peer;
    let started = Instant::now();
    let request_id = request_id(&req);
    // Every log line of this request, the sidecar's and its policies'
    // failures alike, carries its id.
    let span = tracing::info_span!("request", id = %request_id);
    let mut route = None;
    // A request takes a slot only once its body has started to come (or it
    // has none): a client that sends a head and then nothing waits here, on
    // a timer, holding no slot. HTTP/1 clients send the body right after the
    // head (with `Expect: 100-continue`, once reading it asks for it).
    let (parts, body) = req.into_parts();
    // The server span, child of the caller's `traceparent` (traces on).
    let trace = state
        .telemetry
        .as_ref()
        .map(|t| t.server_span(&parts, client, tls, &request_id));
    let grpc = grpc::is_grpc(&parts.headers);
    let http1 = parts.version < http::Version::HTTP_2;
    // hyper's own limit is on its read buffer, not the head: exact here.
    let head_ok = match ambiguous {
        Some(why) => Err(SidecarError::BadRequest(format!(
            "ambiguous framing: {why}"
        ))),
        None => convert::check_head(&parts, state.max_head_bytes),
    };
    // A head refused for its size or framing: where it ends, or where the
    // next request starts, is not known for sure.
    let close = head_ok.is_err();
    let (body, started_body) = match head_ok {
        Err(e) => (body, Err(e)),
        // No body (most GETs): nothing to pace.
        Ok(()) if http_body::Body::is_end_stream(&body) => (body, Ok(())),
        // A gRPC stream's client may rightly stay silent (a bidirectional
        // call where the service speaks first, a subscription): no wait for
        // its first message, no pace; the route's timeout bounds its
        // silences instead, as it bounds the answer's (see `proxy`).
        Ok(()) if grpc && !http1 => (body, Ok(())),
        Ok(()) => {
            let mut paced = crate::message::paced(
                crate::message::BoxBody::new(body.map_err(crate::message::BoxError::from)),
                state.body_read_timeout,
                state.body_min_rate,
            );
            let started = paced
                .started()
                .instrument(span.clone())
                .await
                .map_err(SidecarError::RequestBody);
            (axum::body::Body::new(paced), started)
        }
    };
    let req = http::Request::from_parts(parts, body);
    // Beyond the limit, shed at once: a queue would only add latency to
    // requests whose clients have likely given up.
    let result = match started_body.map(|()| state.in_flight.try_acquire()) {
        Err(e) => Err(e),
        Ok(Ok(_permit)) => {
            let gateway = state.gateway.borrow().clone();
            let shared = Shared {
                gateway: &gateway,
                upstream: &state.upstream,
                metrics: &state.metrics,
                client,
                tls,
                request_id: &request_id,
                completions: &state.completions,
            };
            let proxied = crate::proxy::proxy(shared, req, &mut route).instrument(span.clone());
            match &trace {
                Some(trace) => {
                    opentelemetry::context::FutureExt::with_context(
                        proxied,
                        trace.context().clone(),
                    )
                    .await
                }
                None => proxied.await,
            }
        }
        Ok(Err(_)) => Err(SidecarError::Overloaded {
            limit: state.max_in_flight,
        }),
    };
    let mut refused = None;
    let (mut resp, answered_here) = match result {
        Ok(resp) => {
            let here = resp.extensions().get::<AnsweredHere>().is_some();
            (resp, here)
        }
        Err(error) => {
            span.in_scope(|| tracing::warn!(%error, "request refused"));
            if trace.is_some() {
                refused = Some(error.to_string());
            }
            (error.into_response(), true)
        }
    };
    if grpc && answered_here {
        resp = grpc::answer(resp).await;
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if http1 && (close || resp.status() == http::StatusCode::REQUEST_TIMEOUT) {
        // The rest of a body that stalled cannot be told from the next
        // request: the connection ends with this answer. (An HTTP/2 stream
        // ends alone: its frames say where it stops.)
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(trace) = trace {
        trace.answered(route.as_deref(), resp.status(), refused.as_deref());
        resp = trace.end_with(resp);
    }
    let route = route.as_deref().unwrap_or(NO_ROUTE);
    state
        .metrics
        .request(route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The client's `x-request-id` if it is sane, else a new one.
fn request_id(req: &http::Request<axum::body::Body>) -> Arc<str> {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string().into(), Into::into)
}

/// What one request needs from the sidecar.
pub struct Shared<'a> {
    pub gateway: &'a Gateway,
    pub upstream: &'a UpstreamClient,
    pub metrics: &'a Arc<Metrics>,
    pub client: SocketAddr,
    pub tls: bool,
    pub request_id: &'a Arc<str>,
    pub completions: &'a Arc<Completions>,
}

/// Completion hooks not yet done: they run after their response went out,
/// on the worker that served it, and a shutdown waits for them before it
/// ends the workers (an access log's lines come from them).
#[derive(Debug, Default)]
pub struct Completions {
    running: AtomicU64,
    done: tokio::sync::Notify,
}

impl Completions {
    fn hold(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(self.clone())
    }

    /// Resolves once no completion hook is running or waiting to.
    pub async fn idle(&self) {
        loop {
            // Taken before the check: a `notify_waiters` in between still
            // wakes it.
            let done = self.done.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// One response whose completion hooks have not finished.
struct Running(Arc<Completions>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// Runs one request through its route. `matched` is set to the route's
/// name as soon as it is known (for the metrics).
///
/// # Errors
/// What stops the request before a response exists (no route, a path
/// trick, a body a 0.1 chain cannot take); everything later becomes a
/// response the policies see.
pub async fn proxy(
    cx: Shared<'_>,
    mut req: http::Request<axum::body::Body>,
    matched: &mut Option<Arc<str>>,
) -> Result<http::Response<axum::body::Body>, SidecarError> {
    let started = Instant::now();
    // Route. Paths that could dodge a prefix match never get this far.
    convert::check_path(req.uri().path())?;
    let route = cx
        .gateway
        .route(req.uri().path())
        .ok_or(SidecarError::NoRoute)?;
    *matched = Some(route.name.clone());

    // The exchange: the head, the body left streaming (counted, if a
    // completion hook will want to know how much came).
    let client_upgrade = req
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let completes = route.chain.policies().iter().any(|p| p.hooks().on_complete);
    let received = Arc::new(AtomicU64::new(0));
    let mut body = BoxBody::new(body.map_err(BoxError::from));
    if parts.version >= http::Version::HTTP_2 && grpc::is_grpc(&parts.headers) {
        // Not paced by the server (a gRPC client may be silent a while):
        // a silence as long as the route's timeout still ends it.
        body = message::idle_timeout(body, route.timeout);
    }
    let body = if completes {
        BoxBody::new(Counted {
            inner: body,
            count: received.clone(),
        })
    } else {
        body
    };
    let head = convert::request_head(parts, &route.name, cx.client, cx.request_id, cx.tls);
    let mut exchange = Exchange::new(head, Body::stream(body), cx.gateway.proxy.body_limits());

    // Request hooks, in chain order.
    let mut entered = route.chain.on_request(&mut exchange, cx.metrics).await?;

    // Upstream, unless a policy already answered. Its failures become
    // responses that the response hooks still see.
    let mut upstream_upgrade = None;
    let mut answered_here = exchange.response.is_some();
    if !answered_here {
        let answer = match forward(&cx, route, &mut exchange).await {
            Ok((answer, upgrade)) => {
                upstream_upgrade = upgrade;
                answer
            }
            Err(error) => {
                tracing::warn!(route = %route.name, %error, "upstream failed");
                if let SidecarError::Upstream(e) = &error {
                    cx.metrics.upstream_error(&route.name, e.kind());
                }
                answered_here = true;
                error.to_policy_response()
            }
        };
        exchange.response = Some(answer);
    }

    // Response hooks, in reverse chain order.
    entered.on_response(&mut exchange, cx.metrics).await;

    // The reply: the head now, the body as it comes.
    let Response { head, body } = exchange.response.take().expect("set above");
    let switching = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let (upgrade, tunnel) = match (switching, client_upgrade, upstream_upgrade) {
        (true, Some(client), Some((upstream, protocol))) => {
            (Some(protocol), Some((client, upstream)))
        }
        _ => (None, None),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let completing = entered.completing();
    let body = body.into_stream();
    let body = match completing {
        Some(completing) => axum::body::Body::new(Tracked {
            inner: body,
            sent: sent.clone(),
            done: Some(Done {
                completing,
                exchange,
                status: head.status.as_u16(),
                received,
                started,
                metrics: cx.metrics.clone(),
                span: tracing::Span::current(),
                trace: crate::telemetry::current(),
                running: cx.completions.hold(),
            }),
        }),
        None => axum::body::Body::new(body),
    };
    if let Some((client, upstream)) = tunnel {
        tokio::spawn(tunnel_bytes(client, upstream).instrument(tracing::Span::current()));
    }
    let mut out = convert::response_to_http(head, upgrade, body);
    if answered_here {
        out.extensions_mut().insert(AnsweredHere);
    }
    Ok(out)
}

/// Marks a response that a policy or the sidecar made, not the upstream.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredHere;

/// Sends the exchange's request upstream (balancing, retries) and returns
/// the response head with its body still streaming, and for a 101 what the
/// upstream switched to.
async fn forward(
    cx: &Shared<'_>,
    route: &Route,
    exchange: &mut Exchange,
) -> Result<(Response, Option<(OnUpgrade, HeaderValue)>), SidecarError> {
    let upstreams = route
        .upstreams
        .as_ref()
        .ok_or_else(|| SidecarError::NoUpstream {
            route: route.name.to_string(),
        })?;
    let head = &exchange.request;
    // Built per attempt: a retry may go to another endpoint.
    let outgoing = |endpoint: &http::Uri, body: BoxBody| {
        convert::request_to_upstream(
            head,
            body,
            endpoint,
            &route.prefix,
            route.rewrite.as_deref(),
        )
        .map_err(|detail| SidecarError::BadPolicyOutput {
            route: route.name.to_string(),
            what: "request",
            detail,
        })
    };
    let body = std::mem::take(&mut exchange.request_body);
    // What was buffered stays readable for the response hooks.
    if let Some(copy) = body.try_clone() {
        exchange.request_body = copy;
    }
    // Balancing, passive health and retries: see `balancer`.
    let mut resp = upstreams
        .send(
            // The route's own client if it has `[route.tls]`.
            route.client.as_ref().unwrap_or(cx.upstream),
            cx.metrics,
            outgoing,
            body,
            route.timeout,
        )
        .await?;
    let upgrade = resp.extensions_mut().remove::<OnUpgrade>();
    let (parts, incoming) = resp.into_parts();
    let (head, protocol) = convert::response_head(parts);
    // No size limit on a streamed body, but a bound on silence: one that
    // stalls for the route's timeout ends (the client sees it cut off).
    let body = Body::stream(message::idle_timeout(
        BoxBody::new(incoming.map_err(BoxError::from)),
        route.timeout,
    ));
    let upgrade = upgrade.zip(protocol);
    Ok((Response { head, body }, upgrade))
}

/// Copies bytes both ways between an upgraded client connection and the
/// upstream's, until either side closes.
async fn tunnel_bytes(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection closed with an error");
    }
}

/// Counts the bytes of a body as they pass.
struct Counted {
    inner: BoxBody,
    count: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the completion hooks need once the body is over.
struct Done {
    completing: Completing,
    exchange: Exchange,
    status: u16,
    received: Arc<AtomicU64>,
    started: Instant,
    metrics: Arc<Metrics>,
    span: tracing::Span,
    /// The request's trace (traces on): the hooks' spans join it.
    trace: Option<opentelemetry::Context>,
    running: Running,
}

/// The response body, counted; when it ends (sent whole, failed, or
/// dropped because the client went away) the completion hooks run, off the
/// request path.
struct Tracked {
    inner: BoxBody,
    sent: Arc<AtomicU64>,
    done: Option<Done>,
}

impl Tracked {
    fn finish(&mut self, complete: bool, error: Option<String>) {
        let Some(done) = self.done.take() else {
            return;
        };
        let info = Completion {
            status: done.status,
            request_body_bytes: done.received.load(Ordering::Relaxed),
            response_body_bytes: self.sent.load(Ordering::Relaxed),
            duration: done.started.elapsed(),
            complete,
            error,
        };
        let Done {
            completing,
            exchange,
            metrics,
            span,
            trace,
            running,
            ..
        } = done;
        let hooks = async move {
            completing.run(exchange, info, &metrics).await;
            drop(running);
        };
        tokio::spawn(crate::telemetry::within(trace, hooks).instrument(span));
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let why = format!("the upstream's body broke off: {e}");
                self.finish(false, Some(why));
            }
            Poll::Ready(None) => self.finish(true, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // hyper may drop a body it saw end without polling past it.
        let complete = self.inner.is_end_stream();
        let error = (!complete).then(|| "the client went away before the end".to_owned());
        self.finish(complete, error);
    }
}
