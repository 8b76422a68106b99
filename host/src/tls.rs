//! TLS with rustls (`ring` provider), on both sides of the proxy.
//!
//! - The listener (`[server.tls]`): [`ListenerTls`] holds the `ServerConfig`
//!   that new connections use. [`watch`] re-reads the certificate, key and
//!   client CA when their files change and swaps a new config in; a broken
//!   pair is logged (naming the file and the reason) and the old one keeps
//!   serving. Connections already open keep the certificate they shook hands
//!   with.
//! - Upstreams (`[route.tls]`): [`client_config`] builds the client side:
//!   the system's roots (via `rustls-native-certs`: the OS store, or
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR`) unless the route names its own `ca`,
//!   and an optional client certificate for mutual TLS.
//!
//! Every error names the config file, the field and the PEM file at fault.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::watch::{Fingerprint, Settling, fingerprint};

/// `[server.tls]`: the listener's certificate. The files are read at start
/// and re-read when they change (see [`watch`]); the paths themselves
/// change only at a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM: the leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: if set, clients must present a certificate issued by one of these.
    pub client_ca: Option<PathBuf>,
}

/// `[route.tls]`: how the sidecar speaks TLS to an `https://` upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// PEM: the only roots trusted for this upstream; `None` trusts the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// Certificate and key the sidecar presents (mutual TLS).
    pub client_cert: Option<ClientCert>,
}

/// A certificate chain and its key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS: the config for new connections, swapped whole when
/// the files change.
pub struct ListenerTls {
    settings: ServerTls,
    /// `sidecar.toml: server.tls`, the start of every message.
    field: String,
    current: RwLock<Arc<ServerConfig>>,
    /// `[server] http2`: whether ALPN offers `h2`.
    http2: bool,
    /// The files as they were when `current` was read.
    loaded: Mutex<Fingerprint>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Reads the certificate chain, key and client CA of `settings`.
    ///
    /// # Errors
    /// A message naming `source` (the config file), the field and the PEM
    /// file: unreadable, not PEM, no certificate or key in it, or a key that
    /// does not belong to the certificate.
    pub fn load(settings: &ServerTls, http2: bool, source: &Path) -> anyhow::Result<Self> {
        let field = format!("{}: server.tls", source.display());
        let print = fingerprint(&files(settings));
        let config = server_config(settings, http2, &field)?;
        tracing::info!(
            cert = %settings.cert.display(),
            client_certificates = if settings.client_ca.is_some() { "required" } else { "not asked for" },
            "TLS on the listener"
        );
        Ok(Self {
            settings: settings.clone(),
            field,
            current: RwLock::new(Arc::new(config)),
            http2,
            loaded: Mutex::new(print),
        })
    }

    /// What a new connection shakes hands with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Re-reads the files if they differ from what is serving.
    ///
    /// # Errors
    /// Why the new files were refused; the old certificate keeps serving.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now = fingerprint(&files(&self.settings));
        if now == *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        self.reload(now).map(|()| true)
    }

    /// `print` is taken before the files are read, so a change made while
    /// reading is seen as a change on the next look.
    fn reload(&self, print: Fingerprint) -> anyhow::Result<()> {
        let config = server_config(&self.settings, self.http2, &self.field)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = print;
        tracing::info!(
            cert = %self.settings.cert.display(),
            "TLS certificate reloaded; new connections use it"
        );
        Ok(())
    }
}

/// Polls the listener's certificate, key and client CA every `interval`
/// until the task is dropped. A change is applied once it has been stable
/// for one more interval (a copy in progress is not picked up); files that
/// were refused are not retried until they change again.
pub async fn watch(tls: Arc<ListenerTls>, interval: Duration) {
    let mut refused: Option<Fingerprint> = None;
    let mut settling = Settling::default();
    loop {
        tokio::time::sleep(interval).await;
        let now = fingerprint(&files(&tls.settings));
        let loaded = tls.loaded.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let nothing_new = now == loaded || Some(&now) == refused.as_ref();
        let Some(now) = settling.poll(now, nothing_new) else {
            continue;
        };
        if let Err(error) = tls.reload(now.clone()) {
            tracing::error!(
                error = %format!("{error:#}"),
                "new TLS certificate refused; the old one keeps serving"
            );
            refused = Some(now);
        }
    }
}

fn files(settings: &ServerTls) -> Vec<PathBuf> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

/// The listener's rustls config: ALPN `h2` (if `http2`) and `http/1.1`,
/// and client certificates required if `client_ca` is set. `field` starts
/// messages.
///
/// # Errors
/// As [`ListenerTls::load`].
pub fn server_config(
    settings: &ServerTls,
    http2: bool,
    field: &str,
) -> anyhow::Result<ServerConfig> {
    let chain = read_certs(&settings.cert, &format!("{field}.cert"))?;
    let key = read_key(&settings.key, &format!("{field}.key"))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("the ring provider lacks the default TLS versions")?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let ca_field = format!("{field}.client_ca");
            let roots = read_roots(ca, &ca_field)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow!("{ca_field}: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        anyhow!(
            "{field}.key: {} cannot serve certificate {} ({e})",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// The client side for one route's upstream: its own `ca` or the system
/// roots, plus a client certificate if it has one. `field` (like
/// `sidecar.toml: route[0].tls`) starts messages.
///
/// # Errors
/// A message naming the field and the PEM file at fault.
pub fn client_config(tls: &UpstreamTls, field: &str) -> anyhow::Result<ClientConfig> {
    let roots = match &tls.ca {
        Some(ca) => Arc::new(read_roots(ca, &format!("{field}.ca"))?),
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the ring provider lacks the default TLS versions")?
        .with_root_certificates(roots);
    match &tls.client_cert {
        Some(pair) => {
            let chain = read_certs(&pair.cert, &format!("{field}.client_cert"))?;
            let key = read_key(&pair.key, &format!("{field}.client_key"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                anyhow!(
                    "{field}.client_key: {} cannot serve certificate {} ({e})",
                    pair.key.display(),
                    pair.cert.display()
                )
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The client side for upstreams without `[route.tls]`: system roots, no
/// client certificate.
pub fn system_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(system_roots())
        .with_no_client_auth()
}

/// The OS trust store, read once per process. Certificates it cannot parse
/// are skipped with a warning; with none at all, `https://` upstreams
/// without a `ca` fail their handshake (502) until one is configured.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading the system's root certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::warn!(ignored, "system root certificates that could not be parsed");
            }
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found; https:// upstreams need `[route.tls] ca`"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

fn read_pem(path: &Path, field: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{field}: cannot read {}", path.display()))
}

/// Every certificate in a PEM file, in order; at least one.
fn read_certs(path: &Path, field: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, field)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{field}: {} is not valid PEM ({e})", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{field}: {} holds no certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

fn read_key(path: &Path, field: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path, field)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "{field}: {} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM)",
            path.display()
        ),
        e => anyhow!("{field}: {} is not valid PEM ({e})", path.display()),
    })
}

fn read_roots(path: &Path, field: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(path, field)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            anyhow!(
                "{field}: certificate {} in {} is not a usable CA certificate ({e})",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests;
