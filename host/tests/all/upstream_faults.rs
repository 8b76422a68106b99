//! Upstreams that fail in the middle of an exchange: a reset mid-body, bytes
//! that are not HTTP, a connection closed unanswered, a body that stalls, a
//! malformed chunked body. Each is a prompt JSON error (504 only for the
//! stall, at the route timeout), nothing internal leaks, no connection is
//! left open, and the sidecar keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Upstream, client, start};

/// What the fake upstream does with a request, chosen by the last segment
/// of its path.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Head with `content-length: 100000`, part of the body, then a TCP RST.
    Reset,
    /// Random bytes instead of a response; the socket stays open.
    Garbage,
    /// A status line that does not parse; the socket stays open.
    BadStatus,
    /// Reads the request, then closes without a byte.
    Close,
    /// Head and part of the body, then nothing, forever.
    Stall,
    /// A chunked body whose chunk size is not hex; the socket stays open.
    BadChunk,
}

/// Faults after a good head: the head (200) has gone to the client, whose
/// body then breaks off (as with Envoy: the stream is reset).
const BROKEN_BODY: [(Fault, &str); 3] = [
    (Fault::Reset, "reset"),
    (Fault::BadChunk, "bad-chunk"),
    (Fault::Stall, "stall"),
];

/// The faults that are a 502 and the code they get.
const BAD_GATEWAY: [(Fault, &str, &str); 3] = [
    (Fault::Garbage, "garbage", "upstream_bad_response"),
    (Fault::BadStatus, "bad-status", "upstream_bad_response"),
    // Nothing came back, so the request may never have reached the service:
    // an unavailable upstream (which an idempotent request may retry).
    (Fault::Close, "close", "upstream_unavailable"),
];

/// A raw TCP upstream that misbehaves on request, and answers `/ok` with a
/// proper keep-alive 200 (so the sidecar's pool may keep that connection).
struct Faulty {
    addr: std::net::SocketAddr,
    /// Connections that got a fault request and have not ended yet.
    open: Arc<AtomicUsize>,
    /// Fault requests received.
    faults: Arc<AtomicUsize>,
}

impl Faulty {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(AtomicUsize::new(0));
        let (o, f) = (open.clone(), faults.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, o.clone(), f.clone()));
            }
        });
        Self { addr, open, faults }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Reads one request head; `None` at EOF or on an error.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Waits until the peer (the sidecar) closes the connection: the proof it
/// did not keep a broken connection.
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Deterministic noise (xorshift), never starting like a status line.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    out[0] = 0xff;
    out
}

async fn serve(mut stream: TcpStream, open: Arc<AtomicUsize>, faults: Arc<AtomicUsize>) {
    // Keep-alive: `/ok` answers and waits for the next request.
    let fault = loop {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let fault = match path.rsplit('/').next().unwrap_or("") {
            "reset" => Fault::Reset,
            "garbage" => Fault::Garbage,
            "bad-status" => Fault::BadStatus,
            "close" => Fault::Close,
            "stall" => Fault::Stall,
            "bad-chunk" => Fault::BadChunk,
            _ => {
                let ok =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
                continue;
            }
        };
        break fault;
    };
    faults.fetch_add(1, Ordering::SeqCst);
    open.fetch_add(1, Ordering::SeqCst);
    let partial_body = vec![b'x'; 10_000];
    match fault {
        Fault::Reset => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await;
            let _ = stream.write_all(&partial_body).await;
            let _ = stream.flush().await;
            // Let the head and the first bytes arrive before the RST.
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
        Fault::Garbage => {
            let _ = stream.write_all(&garbage(4096)).await;
            until_closed(&mut stream).await;
        }
        Fault::BadStatus => {
            let _ = stream
                .write_all(b"HTTP/1.1 2OO OK\r\ncontent-length: 0\r\n\r\n")
                .await;
            until_closed(&mut stream).await;
        }
        Fault::Close => drop(stream),
        Fault::Stall => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await;
            let _ = stream.write_all(&partial_body).await;
            until_closed(&mut stream).await;
        }
        Fault::BadChunk => {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
                )
                .await;
            until_closed(&mut stream).await;
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// A healthy route (`/api`), the faulty upstream with a generous timeout
/// (`/faulty`, so a 502 that came late would show as a 504), and with a
/// short one (`/stalling`).
const ROUTES: &str = r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{UPSTREAM}"

[[route]]
name = "faulty"
prefix = "/faulty"
upstream = "{FAULTY}"
timeout_ms = 30000
retries = 0      # one exchange per request: the test counts them

[[route]]
name = "stalling"
prefix = "/stalling"
upstream = "{FAULTY}"
timeout_ms = 300
retries = 0
"#;

async fn sidecar(upstream: &Upstream, faulty: &Faulty) -> String {
    let toml = ROUTES.replace("{FAULTY}", &format!("http://{}", faulty.addr));
    start(&toml, upstream).await.base
}

/// Status and body of a GET, after checking the body is the sidecar's
/// error shape (`{"error", "code"}` and nothing else, as JSON) with no
/// internal detail in the message. Returns the code.
async fn error_code(url: &str) -> (u16, String) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "{url}: {status}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    let object = body.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "error"], "{url}: {body}");
    let message = body["error"].as_str().unwrap().to_lowercase();
    for internal in [
        "hyper",
        "os error",
        "reset",
        "chunk",
        "parse",
        "closed",
        "incomplete",
        "eof",
        "connection",
    ] {
        assert!(
            !message.contains(internal),
            "{url}: client sees internal detail `{internal}`: {message}"
        );
    }
    (status, body["code"].as_str().unwrap().to_owned())
}

async fn healthy(base: &str) {
    let resp = client().get(format!("{base}/api/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "echo");
}

/// Waits (bounded) until the faulty upstream has no connection left open.
async fn all_closed(faulty: &Faulty, deadline: Duration) -> usize {
    let until = Instant::now() + deadline;
    while faulty.open() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    faulty.open()
}

#[tokio::test]
async fn broken_upstream_responses_are_prompt_502_json_and_the_sidecar_keeps_serving() {
    let upstream = Upstream::start().await;
    let faulty = Faulty::start().await;
    let base = sidecar(&upstream, &faulty).await;
    for (_, name, expected) in BAD_GATEWAY {
        let (status, code) = error_code(&format!("{base}/faulty/{name}")).await;
        assert_eq!((status, code.as_str()), (502, expected), "{name}");
        healthy(&base).await;
    }
}

/// Status of a GET, and whether its body broke off.
async fn broken_off(url: &str) -> (u16, bool) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.is_err())
}

#[tokio::test]
async fn a_body_that_breaks_after_the_head_is_cut_off_for_the_client_too() {
    let upstream = Upstream::start().await;
    let faulty = Faulty::start().await;
    let base = sidecar(&upstream, &faulty).await;
    for (_, name) in &BROKEN_BODY[..2] {
        let started = Instant::now();
        let answer = broken_off(&format!("{base}/faulty/{name}")).await;
        assert_eq!(answer, (200, true), "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: not prompt"
        );
        healthy(&base).await;
    }
}

#[tokio::test]
async fn a_body_that_stalls_after_the_head_is_cut_off_at_the_route_timeout() {
    let upstream = Upstream::start().await;
    let faulty = Faulty::start().await;
    let base = sidecar(&upstream, &faulty).await;
    let started = Instant::now();
    let answer = broken_off(&format!("{base}/stalling/stall")).await;
    let took = started.elapsed();
    assert_eq!(answer, (200, true));
    // Not before the route's 300 ms of silence; well before the client's 10 s.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    // The stalled connection is dropped, not left hanging in the pool.
    assert_eq!(all_closed(&faulty, Duration::from_secs(5)).await, 0);
    healthy(&base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_faulty_exchanges_leave_no_connection_open_and_the_pool_healthy() {
    let upstream = Upstream::start().await;
    let faulty = Faulty::start().await;
    let base = sidecar(&upstream, &faulty).await;
    // A pooled keep-alive connection to the faulty host before the faults.
    let resp = client()
        .get(format!("{base}/faulty/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // 8 clients, 25 requests each, cycling through every fault.
    let mut clients = Vec::new();
    for c in 0..8 {
        let base = base.clone();
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut wrong = Vec::new();
            for i in 0..25 {
                let n = c * 25 + i;
                // Before the head: a 502. After it: a 200 cut off.
                let (url, before_head) = match n % 6 {
                    k @ 0..3 => (format!("{base}/faulty/{}", BAD_GATEWAY[k].1), true),
                    5 => (format!("{base}/stalling/stall"), false),
                    k => (format!("{base}/faulty/{}", BROKEN_BODY[k - 3].1), false),
                };
                match http.get(&url).send().await {
                    Ok(r) if before_head && r.status() == 502 => {}
                    Ok(r) if !before_head && r.status() == 200 => {
                        if r.bytes().await.is_ok() {
                            wrong.push(format!("{url}: a whole body"));
                        }
                    }
                    Ok(r) => wrong.push(format!("{url}: {}", r.status())),
                    Err(e) => wrong.push(format!("{url}: {e}")),
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for c in clients {
        wrong.extend(c.await.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} unexpected answers: {wrong:?}",
        wrong.len()
    );
    assert_eq!(faulty.faults.load(Ordering::SeqCst), 200);

    // Every connection that saw a fault ends: the sidecar closed the ones
    // the upstream left open.
    let open = all_closed(&faulty, Duration::from_secs(10)).await;
    assert_eq!(open, 0, "connections still open after the faults");

    // The pool kept no broken connection: the same host answers properly.
    for _ in 0..5 {
        let resp = client()
            .get(format!("{base}/faulty/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    healthy(&base).await;
}
