//! The client-facing listener's limits (`[server]`): request heads too large
//! or too slow, more requests than the limit, and shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar::server::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Upstream, client, raw_status};

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
    let mut stream = TcpStream::connect(s.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let started = Instant::now();
    // A request line and half a header, then nothing (slowloris).
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the sidecar kept a stalled connection open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
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
