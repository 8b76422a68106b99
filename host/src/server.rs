//! The sidecar's HTTP server: the worker threads (one event loop each, all
//! accepting on the listener), accept (TLS handshake if `[server.tls]`),
//! HTTP/1.1 or HTTP/2 per connection (ALPN, or the client's first bytes),
//! the `[server]` limits, load shedding, the request id and the request's
//! span and metrics; the request path itself is [`crate::proxy`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::capabilities::{Outbound, Services};
use crate::config::Config;
use crate::connections::{ConnectionLimits, Refused};
use crate::detect::{Prefixed, Protocol};
use crate::error::SidecarError;
use crate::framing::{StrictFraming, Violation};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::outbound::PolicyHttp;
use crate::proxy::{AnsweredHere, Completions, Shared};
use crate::telemetry::Telemetry;
use crate::tls::ListenerTls;
use crate::upstream::UpstreamClient;
use crate::wasm::Runtime;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every request handler shares.
pub struct AppState {
    /// The current routes and policies. A request reads it once and keeps
    /// that version to the end, so a swap never mixes two configs.
    gateway: watch::Receiver<Arc<Gateway>>,
    upstream: UpstreamClient,
    metrics: Arc<Metrics>,
    /// One permit per request in progress (`[server] max_concurrent_requests`),
    /// shared by the workers.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// `[server] body_read_timeout_ms` and `body_min_bytes_per_sec`.
    body_read_timeout: Duration,
    body_min_rate: u64,
    /// `[server] max_header_bytes`, checked exactly on every head.
    max_head_bytes: usize,
    /// Shared by the workers: what a shutdown waits for last.
    completions: Arc<Completions>,
    /// `Some` when traces are on (`[telemetry]`).
    telemetry: Option<Arc<Telemetry>>,
}

impl AppState {
    /// The state one worker serves with: everything shared but the
    /// upstream connection pool, which is the worker's own.
    fn for_worker(&self) -> Self {
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
}

/// A ready-to-serve sidecar: runtime, gateway, and the channel to swap it.
pub struct Sidecar {
    pub runtime: Arc<Runtime>,
    /// Kept across reloads: counters never reset while the process lives.
    pub metrics: Arc<Metrics>,
    pub(crate) gateway: watch::Sender<Arc<Gateway>>,
    state: Arc<AppState>,
    /// The config now applied: what reloads compare against and watch.
    pub(crate) config: std::sync::Mutex<Config>,
    /// One reload at a time (watcher, admin and SIGHUP may ask together).
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Reloads asked for so far: one that sees a newer ask gives way to it.
    pub(crate) reloads_asked: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) status: std::sync::Mutex<crate::reload::ReloadStatus>,
    /// The files as they were when the gateway now serving was loaded.
    pub(crate) loaded: std::sync::Mutex<crate::reload::Fingerprint>,
    /// `[server.tls]`: the certificate new connections get.
    pub(crate) tls: Option<Arc<ListenerTls>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// Builds the runtime and loads every policy of `config`.
    ///
    /// # Errors
    /// A message naming the config file and the field or policy at fault.
    pub async fn new(config: &Config, services: Services) -> anyhow::Result<Self> {
        Self::with_metrics(config, services, Arc::new(Metrics::new())).await
    }

    /// As [`Sidecar::new`], recording into `metrics`: for services made
    /// before the sidecar that record there too (the log sinks).
    ///
    /// # Errors
    /// As [`Sidecar::new`].
    pub async fn with_metrics(
        config: &Config,
        services: Services,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let loaded = crate::reload::fingerprint_of(config);
        let tls = config
            .tls
            .as_ref()
            .map(|t| ListenerTls::load(t, config.server.http2, &config.source).map(Arc::new))
            .transpose()?;
        // Policies' `outbound` calls go out through the sidecar's own client.
        let mut services = services;
        services.outbound = Outbound::new(
            Arc::new(PolicyHttp::new(
                crate::tls::system_client_config(),
                metrics.clone(),
            )),
            services.clock.clone(),
        );
        let runtime = Runtime::with_compile_cache(
            config.engine,
            services,
            config.compile_cache.clone(),
            config.compile_cache_max_bytes,
        )?;
        let gateway =
            Arc::new(Gateway::build_apart(config.clone(), runtime.clone(), None, || false).await?);
        // Compiles from now on (reloads) leave the request threads a core.
        runtime.serving();
        let telemetry =
            anyhow::Context::with_context(Telemetry::start(&config.telemetry, &metrics), || {
                config.source.display().to_string()
            })?
            .map(Arc::new);
        let (tx, rx) = watch::channel(gateway.clone());
        let state = Arc::new(AppState {
            gateway: rx,
            upstream: UpstreamClient::new(),
            metrics: metrics.clone(),
            in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
            max_in_flight: config.server.max_concurrent_requests,
            body_read_timeout: config.server.body_read_timeout,
            body_min_rate: config.server.body_min_bytes_per_sec,
            max_head_bytes: config.server.max_header_bytes,
            completions: Arc::default(),
            telemetry,
        });
        let sidecar = Self {
            runtime,
            metrics,
            gateway: tx,
            state,
            config: std::sync::Mutex::new(config.clone()),
            reload_lock: tokio::sync::Mutex::new(()),
            reloads_asked: Arc::default(),
            status: std::sync::Mutex::new(crate::reload::ReloadStatus::default()),
            loaded: std::sync::Mutex::new(loaded),
            tls,
        };
        sidecar.start_health_checks(&gateway);
        Ok(sidecar)
    }

    /// Starts `gateway`'s active upstream health checks; they end by
    /// themselves once a reload has replaced it.
    pub(crate) fn start_health_checks(&self, gateway: &Gateway) {
        crate::balancer::spawn_health_checks(gateway, &self.state.upstream, &self.metrics);
    }

    /// The routes and policies now serving.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.borrow().clone()
    }

    /// Whether the listener speaks HTTPS (`[server.tls]`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves on `listener` until `shutdown` resolves; then stops accepting,
    /// lets in-flight requests finish for up to `[server] shutdown_grace`,
    /// and returns. Every connection gets the `[server]` limits: a request
    /// head over `max_header_bytes` is answered 431, a head not complete
    /// within `header_read_timeout` closes the connection. With
    /// `[server.tls]`, the handshake must also finish within
    /// `header_read_timeout`, and the certificate files are watched while
    /// `[reload] watch` is on.
    ///
    /// Connections are served by `[server] workers` threads, each running
    /// its own single-threaded event loop and accepting on the same socket
    /// (Envoy's and nginx's layout): a request stays on the thread that
    /// accepted its connection, with no work stealing and no cross-thread
    /// wake-up on its path. Everything else (admin, reloads, health checks,
    /// log shipping) stays on the caller's runtime. Dropping the returned
    /// future stops the workers at once.
    ///
    /// # Errors
    /// The listener cannot be shared with the workers, or a worker thread
    /// cannot start. Accept errors (e.g. out of file descriptors) are logged
    /// and retried, not fatal.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let config = self.current_config();
        let settings = config.server;
        // Ends with this function: the watcher serves this listener only.
        let _cert_watch = match &self.tls {
            Some(tls) if config.reload.watch => Some(AbortOnDrop(tokio::spawn(crate::tls::watch(
                tls.clone(),
                config.reload.interval,
            )))),
            _ => None,
        };
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            // Room for a head a little over the limit, so that the exact
            // check (431, or 414 for a URI) answers it, not hyper's buffer.
            .max_buf_size(settings.max_header_bytes.saturating_mul(2));
        let http2 = settings.http2.then(|| {
            let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2
                .timer(TokioTimer::new())
                .max_concurrent_streams(settings.max_concurrent_streams)
                // As for HTTP/1: room over the limit for the exact check.
                .max_header_list_size(
                    u32::try_from(settings.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
                )
                // A peer gone without a word is found by a ping.
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            http2
        });
        let acceptor = Acceptor {
            state: self.state.clone(),
            http: Http {
                http1,
                http2,
                detect_timeout: settings.header_read_timeout,
            },
            connections: ConnectionLimits::new(
                settings.max_connections,
                settings.max_connections_per_ip,
            ),
            metrics: self.metrics.clone(),
            tls: self.tls.clone(),
            handshake_timeout: settings.header_read_timeout,
        };
        // Graceful shutdown by hand: hyper-util's watcher cannot hold a
        // connection that may upgrade. `stop` tells the workers to stop
        // accepting and their connections to finish their request and
        // close; each connection holds a `live` sender, so the receiver
        // ends once the last one is gone.
        let (live, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        let workers = settings.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let listener = listener
            .into_std()
            .context("handing the listener to the workers")?;
        let mut running = Workers::new();
        for index in 0..workers {
            let listener = listener
                .try_clone()
                .context("sharing the listener with a worker")?;
            let acceptor = Acceptor {
                state: Arc::new(self.state.for_worker()),
                ..acceptor.clone()
            };
            running.start(index, acceptor, listener, live.clone())?;
        }
        drop((listener, live));
        shutdown.await;
        // No new connections from here; idle keep-alive ones are closed,
        // busy ones finish their request first.
        running.stop_accepting();
        let finished = async {
            let _ = all_closed.recv().await;
            self.state.completions.idle().await;
        };
        tokio::select! {
            () = finished => tracing::info!("every in-flight request finished"),
            () = tokio::time::sleep(settings.shutdown_grace) => tracing::warn!(
                grace = ?settings.shutdown_grace,
                "shutdown grace period over; closing the connections still open"
            ),
        }
        running.finish().await;
        // Last: the spans of the requests just finished are queued now.
        if let Some(telemetry) = &self.state.telemetry {
            telemetry.shutdown(TRACE_FLUSH_WITHIN).await;
        }
        Ok(())
    }
}

/// On shutdown, how long the span exporter gets to send what it holds.
const TRACE_FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The worker threads of one [`Sidecar::serve`]. Dropped (the serve future
/// cancelled, or returning), it tells them to stop at once.
struct Workers {
    /// `true`: stop accepting; connections finish their request and close.
    stop: watch::Sender<bool>,
    /// `true`: end the event loop now, dropping what is still open.
    end: watch::Sender<bool>,
    ended: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Workers {
    fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            end: watch::channel(false).0,
            ended: Vec::new(),
        }
    }

    fn start(
        &mut self,
        index: usize,
        acceptor: Acceptor,
        listener: std::net::TcpListener,
        live: tokio::sync::mpsc::Sender<()>,
    ) -> anyhow::Result<()> {
        let (stopping, mut ending) = (self.stop.subscribe(), self.end.subscribe());
        let (ended, ended_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("sidecar-worker-{index}"))
            .spawn(move || {
                let event_loop = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match event_loop {
                    Ok(event_loop) => event_loop.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => acceptor.accept(listener, stopping, live).await,
                            Err(error) => tracing::error!(%error, "worker cannot listen"),
                        }
                        // Its connections run on this loop: it lasts until
                        // they are done or the grace period is over.
                        let _ = ending.wait_for(|end| *end).await;
                    }),
                    Err(error) => tracing::error!(%error, "worker cannot start its event loop"),
                }
                let _ = ended.send(());
            })
            .context("starting a worker thread")?;
        self.ended.push(ended_rx);
        Ok(())
    }

    fn stop_accepting(&self) {
        self.stop.send_replace(true);
    }

    /// Ends the event loops and waits for the threads to be done.
    async fn finish(mut self) {
        self.end.send_replace(true);
        for ended in std::mem::take(&mut self.ended) {
            let _ = ended.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.end.send_replace(true);
    }
}

/// What a worker needs to accept and serve connections.
#[derive(Clone)]
struct Acceptor {
    /// The worker's own (see [`AppState::for_worker`]).
    state: Arc<AppState>,
    http: Http,
    /// Shared by all workers: the limits are the process's.
    connections: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    tls: Option<Arc<ListenerTls>>,
    handshake_timeout: Duration,
}

impl Acceptor {
    /// Accepts until `stopping` turns true; each connection is served on a
    /// task of the calling (the worker's) event loop.
    async fn accept(
        &self,
        listener: TcpListener,
        mut stopping: watch::Receiver<bool>,
        live: tokio::sync::mpsc::Sender<()>,
    ) {
        loop {
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            // Over a limit: closed at once, before anything is read.
            let admitted = match self.connections.admit(client.ip()) {
                Ok(admitted) => admitted,
                Err(limit) => {
                    self.metrics.connection_refused(match limit {
                        Refused::Total => "max_connections",
                        Refused::PerIp => "max_connections_per_ip",
                    });
                    tracing::debug!(%client, ?limit, "connection refused: over the limit");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                state: self.state.clone(),
                client,
                tls: self.tls.is_some(),
                violation: Violation::default(),
            };
            let http = self.http.clone();
            // Taken now, so a shutdown that starts during the handshake
            // still reaches this connection.
            let mut stopping = stopping.clone();
            let live = live.clone();
            // The handshake runs in the connection's task, never here: a
            // slow or hostile client cannot hold up accepting.
            let acceptor = self.tls.as_ref().map(|tls| tls.acceptor());
            let handshake_timeout = self.handshake_timeout;
            tokio::spawn(async move {
                let _live = live;
                let _admitted = admitted;
                match acceptor {
                    None => http.serve(stream, false, connection, &mut stopping).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                http.serve(stream, h2, connection, &mut stopping).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%client, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%client, "TLS handshake not done in time");
                            }
                        }
                    }
                }
            });
        }
    }
}

/// The HTTP/1.1 and HTTP/2 servers a connection may be served by.
#[derive(Clone)]
struct Http {
    http1: hyper::server::conn::http1::Builder,
    /// `None`: `[server] http2 = false`.
    http2: Option<hyper::server::conn::http2::Builder<TokioExecutor>>,
    /// How long a cleartext client may take to show which it speaks.
    detect_timeout: Duration,
}

impl Http {
    /// Serves one client connection with the protocol it speaks (`h2`:
    /// ALPN chose HTTP/2) until it closes, or until `stopping` says to shut
    /// down: then the request in progress (HTTP/2: the streams open) may
    /// finish first.
    async fn serve<S>(
        &self,
        mut stream: S,
        h2: bool,
        connection: Connection,
        stopping: &mut watch::Receiver<bool>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let client = connection.client;
        let (protocol, prefix) = match &self.http2 {
            Some(_) if h2 => (Protocol::Http2, Bytes::new()),
            Some(_) => match crate::detect::sniff(&mut stream, self.detect_timeout).await {
                Ok(sniffed) => sniffed,
                Err(error) => {
                    tracing::debug!(%client, %error, "connection closed before a request");
                    return;
                }
            },
            None => (Protocol::Http1, Bytes::new()),
        };
        let stream = Prefixed::new(prefix, stream);
        let violation = connection.violation.clone();
        // Called for each request (HTTP/2: each stream) of the connection,
        // with what the connection knows: no per-request extensions.
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let connection = connection.clone();
            async move {
                Ok::<_, std::convert::Infallible>(handle(&connection, req.map(Body::new)).await)
            }
        });
        let served = match (protocol, &self.http2) {
            (Protocol::Http2, Some(http2)) => {
                let conn = http2.serve_connection(TokioIo::new(stream), service);
                until_stopped!(conn, stopping)
            }
            _ => {
                let conn = self
                    .http1
                    .serve_connection(TokioIo::new(StrictFraming::new(stream, violation)), service)
                    .with_upgrades();
                until_stopped!(conn, stopping)
            }
        };
        if let Err(error) = served {
            tracing::debug!(%client, %error, "connection closed with an error");
        }
    }
}

/// Serves a connection until it ends, or until `stopping` says to shut
/// down: then it finishes the request in progress and closes.
macro_rules! until_stopped {
    ($conn:expr, $stopping:expr) => {{
        let mut conn = std::pin::pin!($conn);
        tokio::select! {
            served = conn.as_mut() => served,
            () = async { let _ = $stopping.wait_for(|stop| *stop).await; } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}
use until_stopped;

/// What each request of one client connection is served with.
#[derive(Clone)]
struct Connection {
    state: Arc<AppState>,
    client: SocketAddr,
    tls: bool,
    /// Set by the connection's framing check when a head was ambiguous.
    violation: Violation,
}

/// Route label of requests that matched no route (or were refused first).
const NO_ROUTE: &str = "(none)";

async fn handle(connection: &Connection, req: http::Request<Body>) -> axum::response::Response {
    let Connection {
        state,
        client,
        tls,
        violation,
    } = connection;
    let (client, tls) = (*client, *tls);
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
    let grpc = crate::grpc::is_grpc(&parts.headers);
    let http1 = parts.version < http::Version::HTTP_2;
    // hyper's own limit is on its read buffer, not the head: exact here.
    let head_ok = match violation.get() {
        Some(why) => Err(SidecarError::BadRequest(format!(
            "ambiguous framing: {why}"
        ))),
        None => crate::convert::check_head(&parts, state.max_head_bytes),
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
            (Body::new(paced), started)
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
        resp = crate::grpc::answer(resp).await;
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

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client's `x-request-id` if it is sane, else a new one.
fn request_id(req: &http::Request<Body>) -> Arc<str> {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string().into(), Into::into)
}
