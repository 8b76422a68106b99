//! The listener: worker threads (one event loop each, all accepting on the
//! socket), connection limits, the TLS handshake, HTTP/1.1 or HTTP/2 per
//! connection (ALPN, or the client's first bytes), strict HTTP/1 framing,
//! and the drain on shutdown. Each request it reads goes to
//! [`crate::proxy::handle`].

mod connections;
mod detect;
mod framing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::connections::{ConnectionLimits, Refused};
use self::detect::{Prefixed, Protocol};
use self::framing::{StrictFraming, Violation};
use crate::metrics::Metrics;
use crate::proxy::{Peer, State};
use crate::tls::ListenerTls;

pub use self::connections::raise_fd_limit;

/// The client-facing listener's limits (`[server]`); a change takes effect
/// at the next restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// A request head (request line and headers) larger than this gets 431.
    pub max_header_bytes: usize,
    /// A client that has not sent a whole request head within this time
    /// (slow or stalled headers) is disconnected.
    pub header_read_timeout: Duration,
    /// Requests in progress at once; beyond it 503 with `retry-after`, at
    /// once, never queued.
    pub max_concurrent_requests: usize,
    /// On SIGTERM: how long in-flight requests may take to finish before the
    /// sidecar exits anyway.
    pub shutdown_grace: Duration,
    /// The longest a client may leave a request body waiting: from the head
    /// to its first byte, and between any two reads. Beyond it, 408 and the
    /// connection is closed. A request takes a concurrency slot only once
    /// its body has started to arrive.
    pub body_read_timeout: Duration,
    /// Once a body has been waited on for `body_read_timeout`, it must have
    /// come at this average pace at least (bytes per second of waiting), or
    /// 408 (a drip of a byte now and then). 0 turns the check off.
    pub body_min_bytes_per_sec: u64,
    /// Client connections open at once; a new one beyond it is closed at once.
    pub max_connections: usize,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Threads serving connections, each with its own event loop (as
    /// Envoy's `--concurrency`); `None`: one per CPU the process may use.
    pub workers: Option<usize>,
    /// Whether clients may speak HTTP/2: with prior knowledge on a
    /// cleartext listener (h2c), or by ALPN `h2` with `[server.tls]`.
    pub http2: bool,
    /// HTTP/2 streams one connection may have open at once (the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the sidecar announces).
    pub max_concurrent_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
            shutdown_grace: Duration::from_secs(20),
            body_read_timeout: Duration::from_secs(10),
            // Apache's mod_reqtimeout default.
            body_min_bytes_per_sec: 500,
            max_connections: 10_000,
            // A sidecar's callers are often all on one host: a quarter of
            // the total still leaves room for everyone else.
            max_connections_per_ip: 2_500,
            workers: None,
            http2: true,
            // nginx's and the HTTP/2 RFC's recommended floor.
            max_concurrent_streams: 128,
        }
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting,
/// lets in-flight requests (and their completion hooks) finish for up to
/// `shutdown_grace`, and returns. See [`crate::Sidecar::serve`].
pub(crate) async fn serve(
    listener: TcpListener,
    settings: &ServerSettings,
    state: &Arc<State>,
    tls: Option<Arc<ListenerTls>>,
    metrics: &Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
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
        state: state.clone(),
        http: Http {
            http1,
            http2,
            detect_timeout: settings.header_read_timeout,
        },
        connections: ConnectionLimits::new(
            settings.max_connections,
            settings.max_connections_per_ip,
        ),
        metrics: metrics.clone(),
        tls,
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
            state: Arc::new(state.for_worker()),
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
        state.completions_idle().await;
    };
    tokio::select! {
        () = finished => tracing::info!("every in-flight request finished"),
        () = tokio::time::sleep(settings.shutdown_grace) => tracing::warn!(
            grace = ?settings.shutdown_grace,
            "shutdown grace period over; closing the connections still open"
        ),
    }
    running.finish().await;
    Ok(())
}

/// The worker threads of one [`serve`]. Dropped (the serve future
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
    /// The worker's own (see [`State::for_worker`]).
    state: Arc<State>,
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
                peer: Peer {
                    client,
                    tls: self.tls.is_some(),
                },
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
        let client = connection.peer.client;
        let (protocol, prefix) = match &self.http2 {
            Some(_) if h2 => (Protocol::Http2, Bytes::new()),
            Some(_) => match detect::sniff(&mut stream, self.detect_timeout).await {
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
                // Read as the request starts: the framing check has seen its head.
                let ambiguous = connection.violation.get();
                let req = req.map(Body::new);
                let resp = crate::proxy::handle(&connection.state, connection.peer, ambiguous, req);
                Ok::<_, std::convert::Infallible>(resp.await)
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
    state: Arc<State>,
    peer: Peer,
    /// Set by the connection's framing check when a head was ambiguous.
    violation: Violation,
}
