//! TLS on both sides, with certificates made at test time: HTTPS on the
//! listener (the presented chain checked, the certificate reloaded when its
//! files change) and mutual TLS to an upstream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, TempDir, Upstream};

pub(crate) type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

pub(crate) fn root_ca(name: &str) -> Ca {
    CertifiedIssuer::self_signed(ca_params(name), KeyPair::generate().unwrap()).unwrap()
}

fn intermediate_ca(name: &str, parent: &Ca) -> Ca {
    CertifiedIssuer::signed_by(ca_params(name), KeyPair::generate().unwrap(), parent).unwrap()
}

/// A certificate for `names` (DNS names or IPs), issued by `issuer`.
fn leaf(names: &[&str], usage: ExtendedKeyUsagePurpose, issuer: &Ca) -> (Certificate, KeyPair) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

pub(crate) fn server_leaf(issuer: &Ca) -> (Certificate, KeyPair) {
    leaf(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        issuer,
    )
}

fn roots(ca: &Ca) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    roots
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts `ca` only and asks for HTTP/1.1 over ALPN.
fn trusting(ca: &Ca) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Writes `content` next to `path` and renames it into place, as a
/// certificate manager would.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What an HTTPS GET saw: the answer and the chain the server presented.
struct Answer {
    status: u16,
    body: serde_json::Value,
    chain: Vec<CertificateDer<'static>>,
}

/// GET `path` over HTTPS at `addr` (host `localhost`). `Err` carries the
/// handshake or HTTP error.
async fn https_get(addr: &str, config: ClientConfig, path: &str) -> Result<Answer, String> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        let chain = session.peer_certificates().unwrap_or_default().to_vec();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let req = http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok(Answer {
            status,
            body,
            chain,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

fn addr_of(base: &str) -> &str {
    base.strip_prefix("https://").expect("an https:// listener")
}

/// `[server.tls]` with these files, a route to `upstream`, and extra TOML.
fn https_config(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        r#"
{extra}
[server.tls]
cert = "{}"
key = "{}"

[[route]]
prefix = "/api"
upstream = "{{UPSTREAM}}"
rewrite = "/"
"#,
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn serves_https_with_configured_certificate() {
    let dir = TempDir::new("tls-serves");
    let root = root_ca("sidecar test root CA");
    let intermediate = intermediate_ca("sidecar test intermediate CA", &root);
    let (cert, key) = server_leaf(&intermediate);
    // The chain file: the leaf, then the intermediate the client lacks.
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem() + &intermediate.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let upstream = Upstream::start().await;
    let sidecar = support::start(&https_config(&cert_file, &key_file, ""), &upstream).await;

    let answer = https_get(addr_of(&sidecar.base), trusting(&root), "/api/hello")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["path"], "/hello", "proxied: {}", answer.body);
    assert_eq!(upstream.hits(), 1);

    // The chain presented: the configured leaf, then its issuer.
    assert_eq!(answer.chain.len(), 2);
    assert_eq!(&answer.chain[0], cert.der(), "the configured leaf");
    assert_eq!(&answer.chain[1], intermediate.der(), "its issuer");
    let leaf = ParsedCertificate::try_from(&answer.chain[0]).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        rustls::client::verify_server_name(&leaf, &ServerName::try_from(name).unwrap())
            .unwrap_or_else(|e| panic!("leaf not valid for {name}: {e}"));
    }
    assert!(
        rustls::client::verify_server_name(&leaf, &ServerName::try_from("example.com").unwrap())
            .is_err()
    );
    let algs = provider().signature_verification_algorithms.all;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots(&root),
        &answer.chain[1..],
        UnixTime::now(),
        algs,
    )
    .expect("leaf → intermediate → test root");
    assert!(
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots(&root),
            &[],
            UnixTime::now(),
            algs,
        )
        .is_err(),
        "the leaf is not issued by the root directly"
    );
}

#[tokio::test]
async fn plain_http_and_untrusting_clients_fail_and_https_keeps_serving() {
    let dir = TempDir::new("tls-refuses");
    let root = root_ca("sidecar test root CA");
    let (cert, key) = server_leaf(&root);
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let upstream = Upstream::start().await;
    let toml = https_config(
        &cert_file,
        &key_file,
        "[server]\nheader_read_timeout_ms = 1000",
    );
    let sidecar = support::start(&toml, &upstream).await;
    let addr = addr_of(&sidecar.base);

    // A client that connects and never starts its handshake holds up
    // neither accepting nor other clients, and is dropped after the
    // header read timeout.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let answer = https_get(addr, trusting(&root), "/api/x").await.unwrap();
    assert_eq!(answer.status, 200);
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "a stalled handshake was never timed out");
    assert!(got.is_empty());

    // Plain HTTP: no HTTP answer, and the connection is closed (not left
    // hanging).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection was left open");
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&got)
    );

    // A client that trusts another CA refuses the certificate.
    let stranger = root_ca("some other CA");
    let e = https_get(addr, trusting(&stranger), "/api/x")
        .await
        .err()
        .expect("the handshake must fail");
    assert!(e.starts_with("handshake: "), "{e}");
    assert!(e.contains("UnknownIssuer"), "{e}");

    assert_eq!(upstream.hits(), 1);
    let answer = https_get(addr, trusting(&root), "/api/x").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn requires_client_certificates_when_client_ca_is_set() {
    let dir = TempDir::new("tls-client-ca");
    let root = root_ca("sidecar test root CA");
    let clients = root_ca("clients CA");
    let (cert, key) = server_leaf(&root);
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("clients.pem"), clients.pem()).unwrap();
    let upstream = Upstream::start().await;
    let toml = https_config(&dir.join("cert.pem"), &dir.join("key.pem"), "").replace(
        "[[route]]",
        &format!(
            "client_ca = \"{}\"\n\n[[route]]",
            dir.join("clients.pem").display()
        ),
    );
    let sidecar = support::start(&toml, &upstream).await;
    let addr = addr_of(&sidecar.base);

    let with_cert = |issuer: &Ca| {
        let (cert, key) = leaf(
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            issuer,
        );
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&root))
            .with_client_auth_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    };
    // Refused during or right after the handshake (TLS 1.3 reports it on
    // the first read).
    assert!(https_get(addr, trusting(&root), "/api/x").await.is_err());
    assert!(https_get(addr, with_cert(&root), "/api/x").await.is_err());
    assert_eq!(upstream.hits(), 0);
    let answer = https_get(addr, with_cert(&clients), "/api/x")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.hits(), 1);
}

/// Connects until the leaf presented is `want`, or panics after a
/// generous deadline.
async fn wait_for_leaf(addr: &str, ca: &Ca, want: &CertificateDer<'_>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = https_get(addr, trusting(ca), "/api/x").await {
            assert_eq!(answer.status, 200);
            if answer.chain.first() == Some(want) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn reloads_certificate_on_change() {
    let dir = TempDir::new("tls-reloads");
    let root = root_ca("sidecar test root CA");
    let (first, first_key) = server_leaf(&root);
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, first.pem()).unwrap();
    std::fs::write(&key_file, first_key.serialize_pem()).unwrap();
    let upstream = Upstream::start().await;
    let toml = https_config(&cert_file, &key_file, "[reload]\ninterval_ms = 100");
    let sidecar = support::start(&toml, &upstream).await;
    let addr = addr_of(&sidecar.base);
    let answer = https_get(addr, trusting(&root), "/api/x").await.unwrap();
    assert_eq!(&answer.chain[0], first.der());

    // A new pair, each file renamed into place.
    let (second, second_key) = server_leaf(&root);
    replace(&key_file, &second_key.serialize_pem());
    replace(&cert_file, &second.pem());
    wait_for_leaf(addr, &root, second.der()).await;

    // A broken certificate is refused: the last good pair keeps serving.
    replace(&cert_file, "-----BEGIN CERTIFICATE-----\nbroken\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let answer = https_get(addr, trusting(&root), "/api/x").await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.chain[0], second.der(), "the old pair still serves");
    }

    // And a good pair after that is picked up again.
    let (third, third_key) = server_leaf(&root);
    replace(&key_file, &third_key.serialize_pem());
    replace(&cert_file, &third.pem());
    wait_for_leaf(addr, &root, third.der()).await;
}

/// An HTTPS upstream that requires a client certificate issued by
/// `client_ca`, and answers `{"path": …, "client_certificates": n}`.
struct TlsUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl TlsUpstream {
    async fn start(cert: &Certificate, key: &KeyPair, client_ca: &Ca) -> Self {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)), provider())
                .build()
                .unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    // Refused client certificates end here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let presented = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = serde_json::json!({
                            "path": req.uri().path(),
                            "client_certificates": presented,
                        });
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body.to_string()),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, hits }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

#[tokio::test]
async fn proxies_to_tls_upstream_with_mutual_tls() {
    let dir = TempDir::new("tls-mtls");
    let root = root_ca("upstream test CA");
    let (upstream_cert, upstream_key) = server_leaf(&root);
    let upstream = TlsUpstream::start(&upstream_cert, &upstream_key, &root).await;
    // Same client CA, but a certificate no client trusts.
    let rogue_ca = root_ca("rogue CA");
    let (rogue_cert, rogue_key) = server_leaf(&rogue_ca);
    let rogue = TlsUpstream::start(&rogue_cert, &rogue_key, &root).await;

    let (client_cert, client_key) = leaf(
        &["sidecar.test"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &root,
    );
    let files = [
        ("ca.pem", root.pem()),
        ("client.pem", client_cert.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    for (name, content) in &files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let toml = format!(
        r#"
[[route]]
prefix = "/mtls"
upstream = "{good}"
rewrite = "/"
[route.tls]
ca = "{ca}"
client_cert = "{cert}"
client_key = "{key}"

[[route]]
prefix = "/no-client-cert"
upstream = "{good}"
[route.tls]
ca = "{ca}"

[[route]]
prefix = "/untrusted"
upstream = "{rogue}"
[route.tls]
ca = "{ca}"
client_cert = "{cert}"
client_key = "{key}"
"#,
        good = upstream.url(),
        rogue = rogue.url(),
        ca = path("ca.pem"),
        cert = path("client.pem"),
        key = path("client.key"),
    );
    let config = sidecar::config::parse(&toml, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
    let (base, _, _) = support::serve(&config).await;

    let (status, body) = support::get_json(&format!("{base}/mtls/hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/hello");
    assert_eq!(
        body["client_certificates"], 1,
        "the sidecar presented its certificate"
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);

    for (path, why) in [
        (
            "/no-client-cert/x",
            "the upstream refuses a client without a certificate",
        ),
        (
            "/untrusted/x",
            "the sidecar refuses a certificate its CA did not issue",
        ),
    ] {
        let (status, body) = support::get_json(&format!("{base}{path}")).await;
        assert_eq!(status, 502, "{why}: {body}");
        assert_eq!(body["code"], "upstream_unavailable", "{why}: {body}");
        assert_eq!(body["error"], "upstream is unavailable", "{why}: {body}");
    }
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);
    assert_eq!(rogue.hits.load(Ordering::SeqCst), 0);

    // What the log gets instead: the handshake's own reason.
    let reason = |tls: &sidecar::UpstreamTls, url: String| {
        let config = sidecar::client_config(tls, "test").unwrap();
        async move {
            let req = http::Request::get(url)
                .body(sidecar::message::Body::empty().into_stream())
                .unwrap();
            match sidecar::UpstreamClient::with_tls(config)
                .send(req, Duration::from_secs(10))
                .await
            {
                Err(
                    sidecar::UpstreamError::Unreachable(reason)
                    | sidecar::UpstreamError::Unavailable(reason),
                ) => reason,
                other => panic!("not unavailable: {other:?}"),
            }
        }
    };
    let ca_only = sidecar::UpstreamTls {
        ca: Some(dir.join("ca.pem")),
        client_cert: None,
    };
    let e = reason(&ca_only, format!("{}/x", upstream.url())).await;
    assert!(e.contains("CertificateRequired"), "{e}");
    let e = reason(&ca_only, format!("{}/x", rogue.url())).await;
    assert!(e.contains("UnknownIssuer"), "{e}");
}
