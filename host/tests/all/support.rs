//! A sidecar on a free port in front of an echoing upstream.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::Request;
use axum::routing::any;
use http_body_util::BodyExt;
use sidecar::Metrics;
use sidecar::Shipping;
use sidecar::Sidecar;
use sidecar::capabilities::{KvLimits, MemorySink, Services};
use tokio::net::TcpListener;

pub use sidecar_testkit::{SidecarOptions, SidecarProcess, TempDir, eventually};

/// The `sidecar` binary of this build, to start with a config; see
/// [`SidecarProcess`].
pub fn sidecar_binary() -> SidecarOptions {
    SidecarProcess::builder(env!("CARGO_BIN_EXE_sidecar"))
}

/// An address nothing listens on, so a connection to it is refused: bound
/// by the system, then released.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Counts the requests it gets and echoes them back as JSON.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new()
            .route(
                "/slow",
                any(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "late"
                }),
            )
            .fallback(any(move |req: Request| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (parts, body) = req.into_parts();
                    let headers: BTreeMap<String, String> = parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect();
                    let body = body.collect().await.unwrap().to_bytes();
                    (
                        [
                            ("x-upstream", "echo"),
                            ("connection", "keep-alive, x-hop"),
                            ("x-hop", "1"),
                        ],
                        Json(serde_json::json!({
                            "method": parts.method.as_str(),
                            "path": parts.uri.path_and_query().map(|p| p.as_str()),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        })),
                    )
                }
            }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A running sidecar and what the tests inspect.
pub struct Running {
    pub base: String,
    pub logs: Arc<MemorySink>,
    pub sidecar: Arc<Sidecar>,
}

/// `toml` may use `{UPSTREAM}` and `{TAG}`, `{HOSTILE}`, `{AUTH}`,
/// `{LOGGING}`, `{CACHE}` for the built policies' paths.
pub async fn start(toml: &str, upstream: &Upstream) -> Running {
    let text = toml
        .replace("{UPSTREAM}", &upstream.url())
        .replace("{TAG}", test_policies::TAG)
        .replace("{HOSTILE}", test_policies::HOSTILE)
        .replace("{AUTH}", test_policies::AUTH)
        .replace("{LOGGING}", test_policies::LOGGING)
        .replace("{CACHE}", test_policies::CACHE)
        .replace("{V01_NOOP}", test_policies::V01_NOOP);
    let config = sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
    let (base, logs, sidecar) = serve(&config).await;
    Running {
        base,
        logs,
        sidecar,
    }
}

/// Serves `config` on a free port, with logs captured: the base URL, the
/// log lines, and the sidecar (to reload it, or serve its admin router).
pub async fn serve(config: &sidecar::config::Config) -> (String, Arc<MemorySink>, Arc<Sidecar>) {
    let logs = Arc::new(MemorySink::default());
    let services = Services {
        log: logs.clone(),
        ..Services::production(KvLimits::default())
    };
    let sidecar = Arc::new(Sidecar::new(config, services).await.unwrap());
    let base = listen(&sidecar).await;
    (base, logs, sidecar)
}

/// Serves `sidecar` on a free port until the test ends; its base URL.
async fn listen(sidecar: &Arc<Sidecar>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if sidecar.is_tls() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let serving = sidecar.clone();
    tokio::spawn(async move {
        serving
            .serve(listener, std::future::pending())
            .await
            .unwrap()
    });
    base
}

/// A sidecar serving with its `[[log.sink]]` sinks running, as `sidecar
/// run` does; `type = "stdout"` sinks write to `logs`.
pub struct Shipped {
    pub base: String,
    pub logs: Arc<MemorySink>,
    pub sidecar: Arc<Sidecar>,
    pub shipping: Shipping,
}

pub async fn serve_with_sinks(config: &sidecar::config::Config) -> Shipped {
    let logs = Arc::new(MemorySink::default());
    let metrics = Arc::new(Metrics::new());
    let shipping = Shipping::start(&config.log, &metrics, logs.clone()).unwrap();
    let services = Services {
        log: shipping.sink(),
        ..Services::production(KvLimits::default())
    };
    let sidecar = Arc::new(
        Sidecar::with_metrics(config, services, metrics)
            .await
            .unwrap(),
    );
    let base = listen(&sidecar).await;
    Shipped {
        base,
        logs,
        sidecar,
        shipping,
    }
}

/// A valid HS256 token for `alice`, signed with the secret the tests give
/// the auth policy (`s3cret`).
pub fn token() -> String {
    let claims = serde_json::json!({ "sub": "alice", "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret").unwrap(),
    )
    .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Status and JSON body of a GET.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Connects to `base`, sends `bytes`, then nothing, and asserts that the
/// sidecar closes the connection after about `timeout` (not before 5/6 of
/// it, not after 3 s).
pub async fn assert_stall_closed(base: &str, bytes: &[u8], timeout: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.split("://").nth(1).unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    stream.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the sidecar kept a stalled connection open");
    let waited = started.elapsed();
    assert!(
        waited >= timeout * 5 / 6 && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

/// Sends `request` as raw bytes (no client-side URL normalisation) and
/// returns the status code of the answer.
pub async fn raw_status(base: &str, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An upstream replica that tags its answers (`x-replica: NAME`, body
/// `NAME`), can be stopped (listener and every open connection closed, like
/// a killed process) and started again on the same port.
///
/// Paths: `/health` (counted apart), `/hold` (waits for [`Replica::release`]),
/// anything else answers at once.
pub struct Replica {
    pub name: &'static str,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    holding: Arc<AtomicUsize>,
    released: Arc<tokio::sync::watch::Sender<bool>>,
    /// Dropping it stops the accept loop and every connection.
    running: Option<tokio::sync::watch::Sender<()>>,
}

impl Replica {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut replica = Self {
            name,
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            health_hits: Arc::default(),
            holding: Arc::default(),
            released: Arc::new(tokio::sync::watch::channel(false).0),
            running: None,
        };
        replica.serve(listener);
        replica
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered, `/health` aside.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.health_hits.load(Ordering::SeqCst)
    }

    /// `/hold` requests now waiting.
    pub fn holding(&self) -> usize {
        self.holding.load(Ordering::SeqCst)
    }

    /// Lets every `/hold` request (now and later) answer.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Closes the listener and every connection, like a killed process.
    pub fn stop(&mut self) {
        self.running = None;
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        self.serve(socket.listen(1024).unwrap());
    }

    fn serve(&mut self, listener: TcpListener) {
        use hyper_util::rt::TokioIo;
        use hyper_util::service::TowerToHyperService;

        let (running, stopped) = tokio::sync::watch::channel(());
        self.running = Some(running);
        let name = self.name;
        let (hits, health_hits, holding) = (
            self.hits.clone(),
            self.health_hits.clone(),
            self.holding.clone(),
        );
        let released = self.released.subscribe();
        let tagged = move |counter: Arc<AtomicUsize>| {
            counter.fetch_add(1, Ordering::SeqCst);
            ([("x-replica", name)], name)
        };
        let app = axum::Router::new()
            .route(
                "/health",
                any(move || {
                    let n = health_hits.clone();
                    async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        "ok"
                    }
                }),
            )
            .route(
                "/hold",
                any({
                    let hits = hits.clone();
                    move || {
                        let (hits, holding, mut released) =
                            (hits.clone(), holding.clone(), released.clone());
                        async move {
                            holding.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                            holding.fetch_sub(1, Ordering::SeqCst);
                            tagged(hits)
                        }
                    }
                }),
            )
            .fallback(any(move || {
                let hits = hits.clone();
                async move { tagged(hits) }
            }));
        tokio::spawn(async move {
            loop {
                let mut stop = stopped.clone();
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stop.changed() => return,
                };
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    // Dropping the connection closes its socket.
                    tokio::select! {
                        _ = connection => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
    }
}

/// An endpoint that accepts connections and closes them at once, without a
/// word: every attempt on it fails before any answer. Counts the attempts.
pub struct Blackhole {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Blackhole {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { addr, accepted }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

// --- Python peers (host/tests/clients/) ---------------------------------

/// The interpreter `scripts/test.sh` installed grpcio and websockets for.
pub fn python() -> String {
    std::env::var("SIDECAR_TEST_PYTHON").expect(
        "SIDECAR_TEST_PYTHON is not set: run `bash scripts/test.sh`, which installs \
         the protocol clients (host/tests/clients/) and sets it",
    )
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A Python server, killed when dropped (or by [`PyServer::stop`]).
pub struct PyServer {
    child: Child,
    pub port: u16,
}

impl PyServer {
    /// Starts `name` and waits for its `READY <port>`.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// Starts `name` with `args` and waits for its `READY <port>`.
    pub fn start_with(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(python())
            .arg(script(name))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} did not start: `{line}`"));
        Self { child, port }
    }
}

impl PyServer {
    /// Kills it now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
