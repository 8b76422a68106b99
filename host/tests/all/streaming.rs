//! Real traffic through contract 0.2 chains: bodies nobody asked for
//! stream both ways (large uploads and downloads, server-sent events),
//! upgrades are tunnelled, and a policy that asks for a body gets it (or is
//! told it is too large while the body streams on).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Upstream, client, start, token};

/// An upstream that streams: `GET /bytes/N` sends N bytes in 64 KiB
/// chunks, `POST /count` answers how many body bytes came, `GET /events`
/// sends five events 300 ms apart, and an `upgrade` request is answered
/// 101 and then echoed byte for byte.
async fn streaming_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

type Out = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    mut req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Out>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on.await.unwrap();
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        let resp = http::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Out::default())
            .unwrap();
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap();
        return Ok(http::Response::new(Out::new(Repeat::new(total, b'x'))));
    }
    if path == "/count" {
        let mut n = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                n += data.len() as u64;
            }
        }
        return Ok(http::Response::new(Out::new(http_body_util::Full::new(
            Bytes::from(n.to_string()),
        ))));
    }
    if path == "/events" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for i in 0..5 {
                let event = Bytes::from(format!("data: {i}\n\n"));
                if tx.send(event).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let resp = http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Out::new(Channel(rx)))
            .unwrap();
        return Ok(resp);
    }
    Ok(http::Response::builder()
        .status(404)
        .body(Out::default())
        .unwrap())
}

/// `left` bytes of `b'x'`, 64 KiB at a time, made as they are read.
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Repeat {
    fn new(total: u64, byte: u8) -> Self {
        Self {
            left: total,
            chunk: Bytes::from(vec![byte; 64 * 1024]),
        }
    }
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// Frames as a channel hands them over.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// This process's resident memory, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

const CHAIN: &str = r#"
[policy.logging]
wasm = "{LOGGING}"

[policy.auth]
wasm = "{AUTH}"
config = { secret = "s3cret" }

[policy.tag]
wasm = "{TAG}"
config = { name = "t", read_body = 1024 }

[policy.tag_big]
wasm = "{TAG}"
config = { name = "t", read_body = 2097152, replace_body = "replaced" }

[[route]]
name = "stream"
prefix = "/s"
upstream = "{UPSTREAM}"
rewrite = "/"
policies = ["logging", "auth"]

[[route]]
name = "small"
prefix = "/small"
upstream = "{UPSTREAM}"
rewrite = "/"
policies = ["tag"]

[[route]]
name = "big"
prefix = "/big"
upstream = "{UPSTREAM}"
rewrite = "/"
policies = ["tag_big"]
"#;

async fn sidecar() -> crate::support::Running {
    let toml = CHAIN.replace("{UPSTREAM}", &streaming_upstream().await);
    start(&toml, &Upstream::start().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_1_gib_download_and_a_256_mib_upload_through_logging_and_auth() {
    let sidecar = sidecar().await;
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    const GIB: u64 = 1024 * 1024 * 1024;
    let mut resp = client()
        .get(format!("{}/s/bytes/{GIB}", sidecar.base))
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        assert!(chunk.iter().all(|&b| b == b'x'));
        got += chunk.len() as u64;
    }
    assert_eq!(got, GIB, "every byte arrived");

    // The upload is made as it is sent, so only the sidecar could hold it.
    const UP: u64 = 256 * 1024 * 1024;
    let addr: SocketAddr = sidecar.base.trim_start_matches("http://").parse().unwrap();
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/s/count")
        .header("host", "x")
        .header("authorization", format!("Bearer {}", token()))
        .body(Repeat::new(UP, b'y'))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&counted[..], UP.to_string().as_bytes());
    sampler.abort();
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    // This test process holds the client, the upstream and the sidecar:
    // all three stream, none buffers.
    assert!(grew < 64 * 1024 * 1024, "RSS grew by {grew} bytes");
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let sidecar = sidecar().await;
    let started = Instant::now();
    let mut resp = client()
        .get(format!("{}/s/events", sidecar.base))
        .bearer_auth(token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"data: 0\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let all_at = started.elapsed();
    assert!(
        first_at < Duration::from_millis(1000) && all_at >= Duration::from_millis(1200),
        "first event after {first_at:?}, the end after {all_at:?}"
    );
    assert!(String::from_utf8(rest).unwrap().ends_with("data: 4\n\n"));
}

/// Sends an upgrade request and returns the status line and the stream.
async fn upgrade(base: &str, token: Option<&str>) -> (String, TcpStream) {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or_else(String::new, |t| format!("authorization: Bearer {t}\r\n"));
    let head = format!(
        "GET /s/ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n > 0,
            "closed during the head: {}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let text = String::from_utf8(got).unwrap();
    (text.lines().next().unwrap().to_owned(), stream)
}

#[tokio::test]
async fn a_websocket_upgrade_passes_auth_then_tunnels_both_ways() {
    let sidecar = sidecar().await;
    let (status, _) = upgrade(&sidecar.base, None).await;
    assert!(status.contains(" 401"), "{status}");
    let (status, mut stream) = upgrade(&sidecar.base, Some(&token())).await;
    assert!(status.contains(" 101"), "{status}");
    for message in [&b"ping"[..], b"a second frame"] {
        stream.write_all(message).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, message);
    }
}

#[tokio::test]
async fn a_policy_that_asks_for_less_than_the_body_is_told_and_the_body_streams_on() {
    let sidecar = sidecar().await;
    let mib = vec![b'z'; 1024 * 1024];
    // 1 KiB asked of 1 MiB: too large for the policy, intact upstream.
    let resp = client()
        .post(format!("{}/small/count", sidecar.base))
        .body(mib.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), (1024 * 1024).to_string());
    // 2 MiB asked: the policy sees it all and replaces it.
    let resp = client()
        .post(format!("{}/big/count", sidecar.base))
        .body(mib)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "replaced".len().to_string());
}
