//! The sidecar's lifecycle: start (runtime, policies, routes), serve (the
//! listener until shutdown), reload (a new [`Gateway`] swapped in whole, see
//! [`reload`]) and the status the admin listener shows. The one module
//! besides `main` that reads [`Config`]: it hands each layer its settings.

mod reload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::capabilities::{Outbound, Services};
use crate::config::Config;
use crate::listener;
use crate::metrics::Metrics;
use crate::outbound::PolicyHttp;
use crate::proxy::State;
use crate::routes::Gateway;
use crate::telemetry::Telemetry;
use crate::tls::ListenerTls;
use crate::upstream::{UpstreamClient, spawn_health_checks};
use crate::wasm::Runtime;
use crate::watch::Fingerprint;

pub use self::reload::{ReloadStatus, watch_files};

/// A ready-to-serve sidecar: runtime, gateway, and the channel to swap it.
pub struct Sidecar {
    pub runtime: Arc<Runtime>,
    /// Kept across reloads: counters never reset while the process lives.
    pub metrics: Arc<Metrics>,
    gateway: watch::Sender<Arc<Gateway>>,
    state: Arc<State>,
    /// The config now applied: what reloads compare against and watch.
    config: std::sync::Mutex<Config>,
    /// One reload at a time (watcher, admin and SIGHUP may ask together).
    reload_lock: tokio::sync::Mutex<()>,
    /// Reloads asked for so far: one that sees a newer ask gives way to it.
    reloads_asked: Arc<std::sync::atomic::AtomicU64>,
    status: std::sync::Mutex<ReloadStatus>,
    /// The files as they were when the gateway now serving was loaded.
    loaded: std::sync::Mutex<Fingerprint>,
    /// `[server.tls]`: the certificate new connections get.
    tls: Option<Arc<ListenerTls>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// Builds the runtime and loads every policy of `config`.
    ///
    /// # Errors
    /// A message naming the config file and the field or policy at fault.
    pub async fn new(config: &Config, services: Services) -> anyhow::Result<Self> {
        Self::with_metrics(config, services, Arc::new(Metrics::new())).await
    }

    /// As [`Sidecar::new`], recording into `metrics`: for services made
    /// before the sidecar that record there too (the log sinks).
    ///
    /// # Errors
    /// As [`Sidecar::new`].
    pub async fn with_metrics(
        config: &Config,
        services: Services,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let loaded = reload::fingerprint_of(config);
        let tls = config
            .tls
            .as_ref()
            .map(|t| ListenerTls::load(t, config.server.http2, &config.source).map(Arc::new))
            .transpose()?;
        // Policies' `outbound` calls go out through the sidecar's own client.
        let mut services = services;
        services.outbound = Outbound::new(
            Arc::new(PolicyHttp::new(
                crate::tls::system_client_config(),
                metrics.clone(),
            )),
            services.clock.clone(),
        );
        let runtime = Runtime::with_compile_cache(
            config.engine,
            services,
            config.compile_cache.clone(),
            config.compile_cache_max_bytes,
        )?;
        let gateway =
            Gateway::build_apart(config.gateway_settings(), runtime.clone(), None, || false);
        let gateway = Arc::new(gateway.await?);
        // Compiles from now on (reloads) leave the request threads a core.
        runtime.serving();
        let telemetry =
            anyhow::Context::with_context(Telemetry::start(&config.telemetry, &metrics), || {
                config.source.display().to_string()
            })?
            .map(Arc::new);
        let (tx, rx) = watch::channel(gateway.clone());
        let state = Arc::new(State {
            gateway: rx,
            upstream: UpstreamClient::new(),
            metrics: metrics.clone(),
            in_flight: Arc::new(Semaphore::new(config.server.max_concurrent_requests)),
            max_in_flight: config.server.max_concurrent_requests,
            body_read_timeout: config.server.body_read_timeout,
            body_min_rate: config.server.body_min_bytes_per_sec,
            max_head_bytes: config.server.max_header_bytes,
            completions: Arc::default(),
            telemetry,
        });
        let sidecar = Self {
            runtime,
            metrics,
            gateway: tx,
            state,
            config: std::sync::Mutex::new(config.clone()),
            reload_lock: tokio::sync::Mutex::new(()),
            reloads_asked: Arc::default(),
            status: std::sync::Mutex::new(ReloadStatus::default()),
            loaded: std::sync::Mutex::new(loaded),
            tls,
        };
        sidecar.start_health_checks(&gateway);
        Ok(sidecar)
    }

    /// Starts `gateway`'s active upstream health checks; they end by
    /// themselves once a reload has replaced it.
    fn start_health_checks(&self, gateway: &Gateway) {
        let routes = gateway.routes.iter().filter_map(|route| {
            let client = route.client.as_ref().unwrap_or(&self.state.upstream);
            Some((route.upstreams.as_ref()?, client))
        });
        spawn_health_checks(routes, &self.metrics);
    }

    /// The routes and policies now serving.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.borrow().clone()
    }

    /// Whether the listener speaks HTTPS (`[server.tls]`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves on `listener` until `shutdown` resolves; then stops accepting,
    /// lets in-flight requests and their completion hooks finish for up to
    /// `[server] shutdown_grace`, flushes the spans they ended (traces on),
    /// and returns. Dropping the returned future stops the workers at once.
    ///
    /// Every connection gets the `[server]` limits: a request head over
    /// `max_header_bytes` is answered 431, a head (with `[server.tls]`, the
    /// handshake too) not complete within `header_read_timeout` closes the
    /// connection. With `[server.tls]` and `[reload] watch`, the certificate
    /// files are watched. Connections are served by `[server] workers`
    /// threads, each running its own single-threaded event loop and
    /// accepting on the same socket (Envoy's and nginx's layout): a request
    /// stays on the thread that accepted its connection. Everything else
    /// (admin, reloads, health checks, log shipping) stays on the caller's
    /// runtime.
    ///
    /// # Errors
    /// Only at start: the listener cannot be shared with the workers, or a
    /// worker thread cannot start. Accept errors (e.g. out of file
    /// descriptors) are logged and retried, not returned.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let config = self.current_config();
        // Ends with this function: the watcher serves this listener only.
        let _cert_watch = match &self.tls {
            Some(tls) if config.reload.watch => Some(AbortOnDrop(tokio::spawn(crate::tls::watch(
                tls.clone(),
                config.reload.interval,
            )))),
            _ => None,
        };
        let tls = self.tls.clone();
        listener::serve(
            listener,
            &config.server,
            &self.state,
            tls,
            &self.metrics,
            shutdown,
        )
        .await?;
        // Last: the spans of the requests just finished are queued now.
        if let Some(telemetry) = &self.state.telemetry {
            telemetry.shutdown(TRACE_FLUSH_WITHIN).await;
        }
        Ok(())
    }
}

/// On shutdown, how long the span exporter gets to send what it holds.
const TRACE_FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
