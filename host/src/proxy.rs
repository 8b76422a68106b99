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

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument as _;

use crate::chain::Completing;
use crate::convert;
use crate::error::SidecarError;
use crate::gateway::{Gateway, Route};
use crate::message::{self, Body, BoxBody, BoxError, Completion, Exchange, Response};
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

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
    if parts.version >= http::Version::HTTP_2 && crate::grpc::is_grpc(&parts.headers) {
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
                    cx.metrics.upstream_error(&route.name, e);
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
