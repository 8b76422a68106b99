//! HTTP/2 and gRPC on both sides, WebSocket over TLS, with real clients and
//! servers: grpcio and websockets from PyPI (`host/tests/clients/`, the
//! interpreter in `SIDECAR_TEST_PYTHON`, set up by `scripts/test.sh`), curl,
//! and hyper's HTTP/2 for what needs a hand on the frames.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use sidecar::capabilities::FieldValue;

use crate::support::{
    PyServer, TempDir, Upstream, assert_stall_closed, client, python, script, start, token,
};
use crate::tls::{provider, root_ca, server_leaf};

// --- the Python peers --------------------------------------------------

/// Runs a Python client to its end (off the async runtime) and returns its
/// one JSON line.
async fn py_client(name: &str, args: Vec<String>) -> serde_json::Value {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python())
            .arg(script(&name))
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {stdout}"))
    })
    .await
    .unwrap()
}

async fn grpc(target: &str, scenario: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![target.to_owned(), scenario.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    py_client("grpc_client.py", args).await
}

/// gRPC paths are `/package.Service/Method`: a route per service.
fn grpc_config(upstream: &str, policies: &str, extra: &str) -> String {
    format!(
        r#"
{extra}
[policy.logging]
wasm = "{{LOGGING}}"

[policy.auth]
wasm = "{{AUTH}}"
config = {{ secret = "s3cret" }}

[policy.hostile]
wasm = "{{HOSTILE}}"
deadline_ms = 100
config = {{ mode = "loop", hook = "request" }}

[[route]]
name = "echo"
prefix = "/test.Echo"
upstream = "{upstream}"
policies = [{policies}]
"#
    )
}

fn addr(base: &str) -> &str {
    base.split("://").nth(1).unwrap()
}

/// A CA and a listener certificate for `localhost` / `127.0.0.1`, written
/// to files: (their folder, CA file, `[server.tls]` TOML).
fn listener_tls(name: &str) -> (TempDir, PathBuf, String) {
    let dir = TempDir::new(name);
    let ca = root_ca("protocols test CA");
    let (cert, key) = server_leaf(&ca);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let toml = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let ca = dir.join("ca.pem");
    (dir, ca, toml)
}

// --- gRPC ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the protocol clients: bash scripts/test.sh installs them"]
async fn grpc_unary_and_streaming_calls_pass_with_trailers_through_logging_and_auth() {
    let server = PyServer::start("grpc_server.py");
    let upstream = format!("h2c://127.0.0.1:{}", server.port);
    let toml = grpc_config(&upstream, r#""logging", "auth""#, "");
    let sidecar = start(&toml, &Upstream::start().await).await;
    let target = addr(&sidecar.base);
    let token = token();
    let auth = ["--token", token.as_str()];

    let unary = grpc(target, "unary", &auth).await;
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["responses"], serde_json::json!(["echo:hello"]));
    assert_eq!(unary["trailers"]["x-trailer"], "kept", "{unary}");

    let streamed = grpc(target, "server_stream", &auth).await;
    assert_eq!(streamed["code"], "OK", "{streamed}");
    assert_eq!(
        streamed["responses"],
        serde_json::json!(["item-0", "item-1", "item-2"])
    );

    let joined = grpc(target, "client_stream", &auth).await;
    assert_eq!(joined["code"], "OK", "{joined}");
    assert_eq!(joined["responses"], serde_json::json!(["joined:a,b,c"]));

    // What the service saw: the caller's metadata, and the proxy's own.
    let seen = grpc(target, "metadata", &auth).await;
    assert_eq!(seen["code"], "OK", "{seen}");
    let seen: serde_json::Value =
        serde_json::from_str(seen["responses"][0].as_str().unwrap()).unwrap();
    assert_eq!(seen["authorization"], format!("Bearer {token}"));
    assert_eq!(seen["x-test-meta"], "hello");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    // The access log saw each call.
    let access = sidecar
        .logs
        .wait_for("access", 4, Duration::from_secs(5))
        .await;
    assert_eq!(access.len(), 4);
    for line in &access {
        assert_eq!(line.field("status"), Some(&FieldValue::Int(200)));
        // What the logging policy read from the request: `protocol()`.
        assert_eq!(
            line.field("protocol"),
            Some(&FieldValue::Str("HTTP/2".into()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the protocol clients: bash scripts/test.sh installs them"]
async fn a_grpc_error_status_and_its_details_reach_the_client() {
    let server = PyServer::start("grpc_server.py");
    let upstream = format!("h2c://127.0.0.1:{}", server.port);
    let sidecar = start(&grpc_config(&upstream, "", ""), &Upstream::start().await).await;
    let failed = grpc(addr(&sidecar.base), "fail", &[]).await;
    assert_eq!(failed["code"], "INVALID_ARGUMENT", "{failed}");
    assert_eq!(failed["details"], "bad input");
    // google.rpc.Status{code: 3, message: "bad input"}, as the service sent it.
    assert_eq!(
        failed["trailers"]["grpc-status-details-bin"],
        "CAMSCWJhZCBpbnB1dA=="
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the protocol clients: bash scripts/test.sh installs them"]
async fn a_grpc_call_auth_refuses_is_unauthenticated_and_a_stuck_policy_is_unavailable() {
    let server = PyServer::start("grpc_server.py");
    let upstream = format!("h2c://127.0.0.1:{}", server.port);
    let upstream_box = Upstream::start().await;

    let sidecar = start(&grpc_config(&upstream, r#""auth""#, ""), &upstream_box).await;
    let refused = grpc(addr(&sidecar.base), "unary", &[]).await;
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
    assert!(
        !refused["details"].as_str().unwrap().is_empty(),
        "a reason: {refused}"
    );
    let forged = grpc(addr(&sidecar.base), "unary", &["--token", "not.a.jwt"]).await;
    assert_eq!(forged["code"], "UNAUTHENTICATED", "{forged}");

    // A policy past its deadline: 14 UNAVAILABLE, without trap text.
    let stuck = start(&grpc_config(&upstream, r#""hostile""#, ""), &upstream_box).await;
    let failed = grpc(addr(&stuck.base), "unary", &[]).await;
    assert_eq!(failed["code"], "UNAVAILABLE", "{failed}");
    let details = failed["details"].as_str().unwrap();
    assert!(details.contains("hostile"), "{failed}");
    assert!(
        !details.contains("wasm") && !details.contains("epoch"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the protocol clients: bash scripts/test.sh installs them"]
async fn grpc_over_tls_negotiates_http2_by_alpn() {
    let server = PyServer::start("grpc_server.py");
    let upstream = format!("h2c://127.0.0.1:{}", server.port);
    let (_dir, ca, tls) = listener_tls("grpc-tls");
    let toml = grpc_config(&upstream, r#""auth""#, &tls);
    let sidecar = start(&toml, &Upstream::start().await).await;
    let token = token();
    let ca = ca.display().to_string();
    let answer = grpc(
        addr(&sidecar.base),
        "server_stream",
        &["--ca", &ca, "--token", &token],
    )
    .await;
    assert_eq!(answer["code"], "OK", "{answer}");
    assert_eq!(answer["responses"].as_array().unwrap().len(), 3);
    let refused = grpc(addr(&sidecar.base), "unary", &["--ca", &ca]).await;
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
}

// --- WebSocket -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the protocol clients: bash scripts/test.sh installs them"]
async fn a_websocket_over_tls_passes_auth_then_echoes_both_ways() {
    let server = PyServer::start("ws_server.py");
    let (_dir, ca, tls) = listener_tls("ws-tls");
    let toml = format!(
        r#"
{tls}
[policy.auth]
wasm = "{{AUTH}}"
config = {{ secret = "s3cret" }}

[[route]]
name = "ws"
prefix = "/ws"
upstream = "http://127.0.0.1:{port}"
rewrite = "/"
policies = ["auth"]
"#,
        port = server.port
    );
    let sidecar = start(&toml, &Upstream::start().await).await;
    let url = format!("wss://{}/ws/chat", addr(&sidecar.base));
    let ca = ca.display().to_string();
    let header = format!("authorization: Bearer {}", token());

    let echoed = py_client(
        "ws_client.py",
        vec![
            url.clone(),
            "--ca".into(),
            ca.clone(),
            "--header".into(),
            header.clone(),
            "--headers".into(),
        ],
    )
    .await;
    assert_eq!(echoed["ok"], true, "{echoed}");
    assert_eq!(
        echoed["echoes"],
        serde_json::json!(["echo:m0", "echo:m1", "echo:m2"])
    );
    assert_eq!(echoed["binary_ok"], true);
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");

    let refused = py_client("ws_client.py", vec![url, "--ca".into(), ca]).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["status"], 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the protocol clients: bash scripts/test.sh installs them"]
async fn a_websocket_on_a_cleartext_listener_still_upgrades() {
    let server = PyServer::start("ws_server.py");
    let toml = format!(
        "[[route]]\nprefix = \"/ws\"\nupstream = \"http://127.0.0.1:{}\"\nrewrite = \"/\"\n",
        server.port
    );
    let sidecar = start(&toml, &Upstream::start().await).await;
    let url = format!("ws://{}/ws/", addr(&sidecar.base));
    let echoed = py_client("ws_client.py", vec![url, "--count".into(), "5".into()]).await;
    assert_eq!(echoed["ok"], true, "{echoed}");
    assert_eq!(echoed["echoes"].as_array().unwrap().len(), 5);
}

// --- HTTP/2 with curl ----------------------------------------------------

/// `curl ARGS -w '%{http_version} %{http_code}'`, the body thrown away.
async fn curl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "10"])
            .args(["-w", "%{http_version} %{http_code}"])
            .args(&args)
            .output()
            .expect("curl must be installed (Debian: apt-get install curl)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_with_prior_knowledge_and_over_tls_and_http1_still_works() {
    let upstream = Upstream::start().await;
    let route = "[[route]]\nprefix = \"/api\"\nupstream = \"{UPSTREAM}\"\nrewrite = \"/\"\n";
    let plain = start(route, &upstream).await;
    let url = format!("{}/api/x", plain.base);
    assert_eq!(curl(&["--http2-prior-knowledge", &url]).await, "2 200");
    assert_eq!(curl(&["--http1.1", &url]).await, "1.1 200");

    let (_dir, ca, tls) = listener_tls("curl-tls");
    let secure = start(&format!("{tls}\n{route}"), &upstream).await;
    let url = format!("{}/api/x", secure.base);
    let ca = ca.display().to_string();
    assert_eq!(curl(&["--http2", "--cacert", &ca, &url]).await, "2 200");
    assert_eq!(curl(&["--http1.1", "--cacert", &ca, &url]).await, "1.1 200");

    // `[server] http2 = false`: ALPN offers HTTP/1.1 alone, and the
    // preface is not read as HTTP/2 (curl's attempt fails).
    let off = format!("[server]\nhttp2 = false\n{tls}\n{route}");
    let secure = start(&off, &upstream).await;
    let url = format!("{}/api/x", secure.base);
    assert_eq!(curl(&["--http2", "--cacert", &ca, &url]).await, "1.1 200");
    let off = format!("[server]\nhttp2 = false\n{route}");
    let plain = start(&off, &upstream).await;
    let url = format!("{}/api/x", plain.base);
    assert_ne!(curl(&["--http2-prior-knowledge", &url]).await, "2 200");
}

// --- HTTP/2 by hand ------------------------------------------------------

/// An upstream that says which HTTP version it was spoken to in:
/// `{"version": "HTTP/2.0", "path": …}`. Cleartext (h2c or HTTP/1.1,
/// detected) or, with `tls`, over TLS with ALPN `h2` and `http/1.1`.
async fn versioned_upstream(tls: Option<rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tls.map(|mut config| {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                    let body = serde_json::json!({
                        "version": format!("{:?}", req.version()),
                        "path": req.uri().path(),
                        "host": req.headers().get("host").map(|h| h.to_str().unwrap().to_owned()),
                        "te": req.headers().get("te").map(|h| h.to_str().unwrap().to_owned()),
                        "forwarded_host": req.headers().get("x-forwarded-host").map(|h| h.to_str().unwrap().to_owned()),
                    });
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                        body.to_string(),
                    ))))
                });
                let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(tcp).await else {
                            return;
                        };
                        server.serve_connection(TokioIo::new(stream), service).await
                    }
                    None => server.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstreams_get_http2_and_https_upstreams_get_it_when_alpn_agrees() {
    let h2c = versioned_upstream(None).await;
    let ca = root_ca("upstream CA");
    let (cert, key) = server_leaf(&ca);
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let https = versioned_upstream(Some(server_config)).await;
    let dir = TempDir::new("h2-upstreams");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let toml = format!(
        r#"
[[route]]
name = "h2c"
prefix = "/h2c"
upstream = "h2c://{h2c}"
rewrite = "/"

[[route]]
name = "h1"
prefix = "/h1"
upstream = "http://{h2c}"
rewrite = "/"

[[route]]
name = "tls"
prefix = "/tls"
upstream = "https://localhost:{port}"
rewrite = "/"
tls = {{ ca = "{ca}" }}
"#,
        port = https.port(),
        ca = dir.join("ca.pem").display()
    );
    let sidecar = start(&toml, &Upstream::start().await).await;
    // Many requests at once, multiplexed on the upstream connection.
    let h1 = client();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let h1 = h1.clone();
            let url = format!("{}/h2c/n{i}", sidecar.base);
            tokio::spawn(async move {
                let seen: serde_json::Value =
                    h1.get(url).send().await.unwrap().json().await.unwrap();
                (i, seen)
            })
        })
        .collect();
    for call in calls {
        let (i, seen) = call.await.unwrap();
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["path"], format!("/n{i}"));
    }
    let seen = seen_by(&h1, &format!("{}/h1/x", sidecar.base), None).await;
    assert_eq!(seen["version"], "HTTP/1.1");
    let seen = seen_by(&h1, &format!("{}/tls/x", sidecar.base), None).await;
    assert_eq!(seen["version"], "HTTP/2.0");

    // A client on HTTP/2 reaches an HTTP/1.1 upstream, its `:authority`
    // arriving as x-forwarded-host; `te: trailers` (what gRPC clients
    // send) reaches the upstream, other `te` values do not.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("{}/h1/y", sidecar.base);
    let seen = seen_by(&h2, &url, Some("trailers")).await;
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["forwarded_host"], addr(&sidecar.base));
    assert_eq!(seen["te"], "trailers");
    let url = format!("{}/h2c/z", sidecar.base);
    let seen = seen_by(&h1, &url, Some("gzip, trailers;q=0.5")).await;
    assert_eq!(seen["te"], "trailers");
    let seen = seen_by(&h1, &format!("{}/h1/z", sidecar.base), Some("gzip")).await;
    assert_eq!(seen["te"], serde_json::Value::Null);
}

/// What the versioned upstream saw of a GET of `url` sent by `client`
/// (with `te` if given).
async fn seen_by(client: &reqwest::Client, url: &str, te: Option<&str>) -> serde_json::Value {
    let mut req = client.get(url);
    if let Some(te) = te {
        req = req.header("te", te);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A raw HTTP/2 connection to the sidecar (prior knowledge).
async fn h2_connection(base: &str) -> hyper::client::conn::http2::SendRequest<H2Body> {
    let tcp = tokio::net::TcpStream::connect(addr(base)).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A request body that never sends a byte, nor ends.
struct Silent;

impl http_body::Body for Silent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }
}

fn no_body() -> H2Body {
    http_body_util::Empty::new().boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_body_never_comes_gets_408_and_the_connection_serves_on() {
    let upstream = Upstream::start().await;
    let toml = "[server]\nbody_read_timeout_ms = 300\nmax_header_bytes = 8192\n\
                [[route]]\nprefix = \"/api\"\nupstream = \"{UPSTREAM}\"\nrewrite = \"/\"\n";
    let sidecar = start(toml, &upstream).await;
    let mut h2 = h2_connection(&sidecar.base).await;

    // A POST that announces a body and never sends a byte of it.
    let started = Instant::now();
    let req = http::Request::post(format!("{}/api/upload", sidecar.base))
        .body(Silent.boxed())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("body_timeout"));

    // The connection's other streams go on, and heads are held to the limit.
    let req = http::Request::get(format!("{}/api/ok", sidecar.base))
        .body(no_body())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let req = http::Request::get(format!("{}/api/big", sidecar.base))
        .header("x-big", "a".repeat(10_000))
        .body(no_body())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_is_told_the_stream_limit_and_held_to_it() {
    let upstream = Upstream::start().await;
    let toml = "[server]\nmax_concurrent_streams = 3\nbody_read_timeout_ms = 5000\n\
                [[route]]\nprefix = \"/api\"\nupstream = \"{UPSTREAM}\"\nrewrite = \"/\"\n";
    let sidecar = start(toml, &upstream).await;
    let tcp = tokio::net::TcpStream::connect(addr(&sidecar.base))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.current_max_send_streams() != 3 {
        assert!(
            Instant::now() < deadline,
            "no SETTINGS_MAX_CONCURRENT_STREAMS = 3"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Three uploads held open: a fourth stream waits for one to end.
    let mut open = Vec::new();
    for i in 0..3 {
        let req = http::Request::post(format!("{}/api/u{i}", sidecar.base))
            .body(())
            .unwrap();
        let (answer, body) = client.send_request(req, false).unwrap();
        open.push((answer, body));
        client = client.ready().await.unwrap();
    }
    let fourth = http::Request::get(format!("{}/api/fourth", sidecar.base))
        .body(())
        .unwrap();
    let (fourth, _) = client.send_request(fourth, true).unwrap();
    let mut fourth = Box::pin(fourth);
    let early = tokio::time::timeout(Duration::from_millis(300), &mut fourth).await;
    assert!(early.is_err(), "a fourth stream was served beside three");
    // One upload ends: its answer comes, and the fourth stream opens.
    let (answer, mut body) = open.pop().unwrap();
    body.send_data(Bytes::from_static(b"done"), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    let fourth = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("the fourth stream opens once one ends")
        .unwrap();
    assert_eq!(fourth.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_the_http2_preface_is_disconnected_after_the_head_timeout() {
    let upstream = Upstream::start().await;
    let toml = "[server]\nheader_read_timeout_ms = 300\n\
                [[route]]\nprefix = \"/api\"\nupstream = \"{UPSTREAM}\"\n";
    let sidecar = start(toml, &upstream).await;
    // Could still become HTTP/2's preface, or an HTTP/1 `PRI` request.
    assert_stall_closed(&sidecar.base, b"PRI * HT", Duration::from_millis(300)).await;
    assert_eq!(upstream.hits(), 0);
}
