//! The HTTP(S) client of the sidecar's own calls (policies' `outbound`,
//! the span exporter), apart from the upstream pools, and how any client
//! error is told.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The HTTP(S) client of the sidecar's own calls (policies' `outbound`, the
/// span exporter): apart from the upstream pools, a few idle connections
/// per host.
pub(crate) fn small_client(
    tls: rustls::ClientConfig,
) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut plain = HttpConnector::new();
    plain.set_nodelay(true);
    plain.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(plain);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// `e` and its sources, `: `-separated, each said once.
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        next = cause.source();
    }
    text
}
