//! The client-facing listener's limits (`[server]`): request heads too large
//! or too slow, more requests than the limit, and shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Upstream, assert_stall_closed, client, raw_status};

fn config(upstream: &Upstream, server: &str) -> sidecar::config::Config {
    let text = format!(
        r#"
[server]
{server}

[[route]]
name = "api"
prefix = "/api"
upstream = "{}"
rewrite = "/"
"#,
        upstream.url()
    );
    sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap()
}

/// A sidecar on a free port that stops when `stop` is sent; `done` reports
/// when `serve` returned.
struct Served {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Instant>,
}

async fn serve(config: &sidecar::config::Config) -> Served {
    let services = sidecar::capabilities::Services::production(Default::default());
    let sidecar = Arc::new(Sidecar::new(config, services).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        sidecar
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        Instant::now()
    });
    Served {
        base,
        stop: Some(tx),
        done,
    }
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "max_header_bytes = 8192")).await;
    let big = "a".repeat(16 * 1024);
    let status = raw_status(
        &s.base,
        &format!("GET /api/x HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(upstream.hits(), 0);
    let ok = raw_status(
        &s.base,
        "GET /api/x HTTP/1.1\r\nhost: x\r\nx-small: 1\r\n\r\n",
    )
    .await;
    assert_eq!(ok, 200);
}

#[tokio::test]
async fn a_stalled_request_head_is_disconnected_after_the_timeout() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "header_read_timeout_ms = 300")).await;
    // A request line and half a header, then nothing (slowloris).
    let head = b"GET /api/x HTTP/1.1\r\nhost: x\r\nx-slow: ";
    assert_stall_closed(&s.base, head, Duration::from_millis(300)).await;
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_get_503_with_retry_after() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "max_concurrent_requests = 2")).await;
    // Two requests occupy both slots (the upstream takes 3 s on /slow).
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("{}/api/slow", s.base);
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let resp = client()
        .get(format!("{}/api/x", s.base))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed at once, not queued"
    );
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    for handle in slow {
        assert_eq!(handle.await.unwrap(), 200);
    }
    // Slots free again.
    let resp = client()
        .get(format!("{}/api/x", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let upstream = Upstream::start().await;
    let mut s = serve(&config(&upstream, "shutdown_grace_ms = 10000")).await;
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/api/slow", s.base);
            tokio::spawn(async move {
                let resp = client().get(url).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(s.base.trim_start_matches("http://"))
            .await
            .is_err(),
        "no new connections once shutdown began"
    );
    for handle in in_flight {
        assert_eq!(
            handle.await.unwrap(),
            (200, "late".to_owned()),
            "no accepted request is lost"
        );
    }
    let returned = s.done.await.unwrap();
    assert!(returned.duration_since(asked) < Duration::from_secs(5));
}

#[tokio::test]
async fn shutdown_stops_waiting_after_the_grace_period() {
    let upstream = Upstream::start().await;
    let mut s = serve(&config(&upstream, "shutdown_grace_ms = 300")).await;
    let url = format!("{}/api/slow", s.base);
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    s.stop.take().unwrap().send(()).unwrap();
    let returned = s.done.await.unwrap();
    let took = returned.duration_since(asked);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "serve returned {took:?} after the signal"
    );
    drop(in_flight);
}

/// Opens `n` connections that each send a whole head announcing a 100-byte
/// body, and then nothing.
async fn slow_body_connections(base: &str, n: usize) -> Vec<TcpStream> {
    sidecar::raise_fd_limit();
    let addr = base.trim_start_matches("http://").to_owned();
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        streams.push(s);
    }
    streams
}

/// What the sidecar sent on `stream` until it closed it (or `within` passed).
async fn read_until_closed(mut stream: TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut buf))
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn a_normal_client_is_served_beside_a_thousand_slow_body_connections() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "body_read_timeout_ms = 3000")).await;
    let attack = slow_body_connections(&s.base, 1_030).await;
    let opened = Instant::now();
    // More heads than `max_concurrent_requests` (1 024), none with a body:
    // they hold no slot, so a normal client goes through at once.
    for _ in 0..3 {
        let started = Instant::now();
        let resp = client()
            .post(format!("{}/api/x", s.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    // Each slow one gets 408 and is closed, within the body timeout.
    let answers = futures_join(
        attack
            .into_iter()
            .map(|stream| read_until_closed(stream, Duration::from_secs(10))),
    )
    .await;
    let closed_after = opened.elapsed();
    for answer in &answers {
        let answer = answer
            .as_deref()
            .expect("a slow-body connection was left open");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    assert!(closed_after < Duration::from_secs(8), "{closed_after:?}");
    assert_eq!(
        upstream.hits(),
        3,
        "no stalled request reached the upstream"
    );
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_body_that_stalls_midway_gets_408_and_the_connection_is_closed() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "body_read_timeout_ms = 300")).await;
    let mut stream = TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(stream, Duration::from_secs(5))
        .await
        .expect("the connection of a stalled body was left open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_body_dripping_below_the_least_rate_gets_408() {
    let upstream = Upstream::start().await;
    let s = serve(&config(
        &upstream,
        "body_read_timeout_ms = 400\nbody_min_bytes_per_sec = 100",
    ))
    .await;
    let mut stream = TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // A byte every 150 ms: never silent for the timeout, far below 100 B/s.
    let (mut read, mut write) = stream.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..60 {
            if write.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut buf))
        .await
        .expect("a dripping body was never cut off")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_too_slow"), "{answer}");
    drip.abort();
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_closed_at_once() {
    let upstream = Upstream::start().await;
    let s = serve(&config(
        &upstream,
        "max_connections = 50\nmax_connections_per_ip = 3",
    ))
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Let the sidecar count them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fourth = TcpStream::connect(&addr).await.unwrap();
    let answer = read_until_closed(fourth, Duration::from_secs(2))
        .await
        .expect("a connection over the limit was kept open");
    assert_eq!(answer, "", "closed before anything was read or sent");
    // One closes: a new one is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = raw_status(&s.base, "GET /api/x HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status, 200);
}

/// The whole answer to `request` on a fresh connection, until it closes.
async fn raw_answer(base: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(stream, Duration::from_secs(5))
        .await
        .expect("the connection was left open")
}

#[tokio::test]
async fn ambiguous_framing_is_refused_with_400_and_the_connection_closed() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "")).await;
    for (what, head) in [
        (
            "chunked twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "identity, chunked",
            "Transfer-Encoding: identity, chunked\r\n",
        ),
        (
            "two equal lengths",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
        ),
        (
            "length and chunked",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
    ] {
        let request = format!("POST /api/x HTTP/1.1\r\nHost: x\r\n{head}\r\n0\r\n\r\n");
        let mut stream = TcpStream::connect(s.base.trim_start_matches("http://"))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{what}: the connection was left open"));
        // hyper refuses some itself (400, no body); the rest the sidecar does.
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }
    assert_eq!(upstream.hits(), 0, "nothing ambiguous reached the upstream");
    let ok = raw_status(&s.base, "GET /api/x HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(ok, 200);
}

#[tokio::test]
async fn the_head_limit_is_exact_whatever_the_writes() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "max_header_bytes = 65536")).await;
    // ~114 KB of headers in one write: 431, never forwarded.
    let fields: String = (0..114)
        .map(|i| format!("x-f{i}: {}\r\n", "v".repeat(1000)))
        .collect();
    let answer = raw_answer(
        &s.base,
        format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{fields}\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    // Just over the limit, in headers that hyper's buffer would take.
    let s = serve(&config(&upstream, "max_header_bytes = 16384")).await;
    let over = format!("x-a: {}\r\nx-b: {}\r\n", "a".repeat(9000), "b".repeat(8000));
    let answer = raw_answer(
        &s.base,
        format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{over}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A URI longer than the limit: 414.
    let long = format!(
        "GET /api/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(20_000)
    );
    let answer = raw_answer(&s.base, long.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_head_with_bare_lf_line_ends_is_refused_with_400() {
    let upstream = Upstream::start().await;
    let s = serve(&config(&upstream, "")).await;
    let answer = raw_answer(&s.base, b"GET /api/x HTTP/1.1\nHost: x\n\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("ambiguous framing"), "{answer}");
    // Pipelined behind a well-framed request whose body holds LFs.
    let answer = raw_answer(
        &s.base,
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na\nbGET /api/y HTTP/1.1\r\nHost: x\n\r\n",
    )
    .await;
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert!(
        !answer.contains("/api/y"),
        "the smuggled request was not forwarded: {answer}"
    );
}

#[tokio::test]
async fn a_policy_busy_on_one_worker_does_not_hold_up_another_workers_connections() {
    let upstream = Upstream::start().await;
    // Two workers; the hostile policy spins in wasm until its deadline,
    // holding its worker's thread the whole time.
    let toml = r#"
[server]
workers = 2

[[route]]
name = "busy"
prefix = "/busy"
upstream = "{UPSTREAM}"
policies = ["hostile"]

[[route]]
name = "free"
prefix = "/free"
upstream = "{UPSTREAM}"

[policy.hostile]
wasm = "{HOSTILE}"
deadline_ms = 2000
config = { mode = "loop" }
"#;
    let sidecar = crate::support::start(toml, &upstream).await;
    let busy = {
        let url = format!("{}/busy/x", sidecar.base);
        tokio::spawn(async move {
            let status = client().get(url).send().await.unwrap().status();
            (status, Instant::now())
        })
    };
    // Let the busy request reach its policy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new connection: the spinning worker cannot accept it, the other one
    // does and answers while the policy still spins.
    let free = client()
        .get(format!("{}/free/x", sidecar.base))
        .send()
        .await
        .unwrap();
    let free_answered = Instant::now();
    assert_eq!(free.status(), 200);
    let (busy_status, busy_answered) = busy.await.unwrap();
    assert_eq!(
        busy_status, 503,
        "the spinning policy fails closed at its deadline"
    );
    assert!(
        free_answered < busy_answered,
        "the free route waited for the spinning policy's worker"
    );
}
