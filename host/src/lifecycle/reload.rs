//! Drop-in policies: reloading the config and policy files without a restart.
//!
//! A reload builds a whole new [`Gateway`] off the request path (read,
//! verify, compile, configure every policy) and only then swaps it in
//! through the `watch` channel. A request reads the gateway once, so it
//! finishes on the chain it started with; a failed reload changes nothing
//! but the status the admin view shows.
//!
//! The build runs on a thread of its own (compiling a large policy takes
//! seconds of CPU; compiles keep to a pool one thread short of the cores),
//! and gives way to a newer reload: a reload asked for while another is
//! loading stops that one before its next policy, and reloads queued behind
//! a newer one are skipped. Once the new
//! gateway serves, the compile cache forgets what it no longer uses (the
//! binary's allocator, jemalloc, gives freed memory back to the system).
//!
//! Triggers: the file watcher (polling, so an atomic `rename` into place is
//! seen like any write; a change is applied once it has been stable for one
//! more interval, so a copy in progress is not picked up), `POST /reload` on
//! the admin listener, and SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Sidecar;
use crate::config::{self, Config};
use crate::routes::{Gateway, Superseded};
use crate::watch::{Fingerprint, Settling, fingerprint};

/// What the admin view reports about reloads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// How many gateways have been swapped in since start (0: the first).
    pub generation: u64,
    /// Unix seconds of the last attempt, and of the last success.
    pub last_attempt_at: Option<u64>,
    pub last_success_at: Option<u64>,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sidecar {
    /// Re-reads the config file and every policy it names, and swaps the
    /// result in if all of it is valid. Settings that only a restart can
    /// change (listen and admin addresses, engine and store limits, compile
    /// cache) are kept, with a warning.
    ///
    /// # Errors
    /// Why the new config or a policy was refused (naming file and field);
    /// the running gateway is unchanged.
    pub async fn reload(&self) -> anyhow::Result<u64> {
        let ticket = self.reloads_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _one_at_a_time = self.reload_lock.lock().await;
        if self.reloads_asked.load(Ordering::SeqCst) > ticket {
            // A newer reload waits: it reads the same files, or newer ones.
            return Err(Superseded.into());
        }
        // The listener's certificate too, for deployments that reload by
        // signal rather than by watching files.
        if let Some(tls) = &self.tls
            && let Err(error) = tls.reload_if_changed()
        {
            tracing::error!(
                error = %format!("{error:#}"),
                "new TLS certificate refused; the old one keeps serving"
            );
        }
        let result = self.try_reload(ticket).await;
        if let Err(e) = &result
            && e.is::<Superseded>()
        {
            tracing::info!("reload gave way to a newer one");
            return Err(Superseded.into());
        }
        self.metrics.reload(result.is_ok());
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_attempt_at = Some(now_secs());
        match &result {
            Ok(()) => {
                status.generation += 1;
                status.last_success_at = status.last_attempt_at;
                status.last_error = None;
                tracing::info!(
                    generation = status.generation,
                    "reloaded: new routes and policies in service"
                );
            }
            Err(e) => {
                status.last_error = Some(format!("{e:#}"));
                tracing::error!(error = %format!("{e:#}"), "reload refused; the running config keeps serving");
            }
        }
        result.map(|()| status.generation)
    }

    async fn try_reload(&self, ticket: u64) -> anyhow::Result<()> {
        let path = self.current_config().source;
        // Fingerprints are taken before reading, so a change made while
        // this reload runs is seen as a change afterwards.
        let config_print = fingerprint(std::slice::from_ref(&path));
        let new = config::load(&path)?;
        let old = self.current_config();
        let restart_only = [
            ("listen", old.listen != new.listen),
            ("[server]", old.server != new.server),
            ("[server.tls] files", old.tls != new.tls),
            ("admin.listen", old.admin != new.admin),
            ("[wasm] engine limits", old.engine != new.engine),
            ("[kv]", old.kv != new.kv),
            ("[[log.sink]]", old.log != new.log),
            ("[telemetry]", old.telemetry != new.telemetry),
            (
                "wasm.compile_cache",
                old.compile_cache != new.compile_cache
                    || old.compile_cache_max_bytes != new.compile_cache_max_bytes,
            ),
            ("[reload]", old.reload != new.reload),
        ];
        for (what, changed) in restart_only {
            if changed {
                tracing::warn!(
                    "{}: {what} changed; it takes effect at the next restart",
                    path.display()
                );
            }
        }
        let mut print = config_print;
        print.extend(fingerprint(&new.policy_files()));
        let mark = self.runtime.mark_loads();
        let asked = self.reloads_asked.clone();
        // A superseded build's error carries `Superseded`: `reload` tells it apart.
        let gateway = Arc::new(
            Gateway::build_apart(
                new.gateway_settings(),
                self.runtime.clone(),
                Some(self.gateway()),
                move || asked.load(Ordering::SeqCst) > ticket,
            )
            .await?,
        );
        let old = self.gateway.send_replace(gateway.clone());
        // The old gateway's code goes with its last request; the compile
        // cache keeps only what this load used.
        drop(old);
        self.runtime.forget_compiled_unused_since(mark);
        self.start_health_checks(&gateway);
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = new;
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = print;
        Ok(())
    }

    /// The config now applied.
    pub fn current_config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The config file and every policy file it names.
    fn watched_files(&self) -> Vec<PathBuf> {
        self.current_config().watched_files()
    }

    fn loaded_fingerprint(&self) -> Fingerprint {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The fingerprint of a config and its policy files, taken before they are
/// read for a load.
pub(super) fn fingerprint_of(config: &Config) -> Fingerprint {
    fingerprint(&config.watched_files())
}

/// Watches the config and policy files until the task is dropped, and
/// reloads when they differ from what was loaded and have settled. A change
/// seen while a reload runs starts another at once (the running one gives
/// way to it).
pub async fn watch_files(sidecar: Arc<Sidecar>, interval: Duration) {
    // Files whose reload failed: not retried until they change again.
    let mut refused: Option<Fingerprint> = None;
    let mut settling = Settling::default();
    // The reload in progress, and the files it was started for.
    let mut running: Option<(Fingerprint, tokio::task::JoinHandle<anyhow::Result<u64>>)> = None;
    loop {
        tokio::time::sleep(interval).await;
        if let Some((print, task)) = running.take_if(|(_, task)| task.is_finished())
            && let Ok(Err(e)) = task.await
            && !e.is::<Superseded>()
        {
            refused = Some(print);
        }
        let now = fingerprint(&sidecar.watched_files());
        let loading = running.as_ref().map(|(print, _)| print);
        let nothing_new = now == sidecar.loaded_fingerprint()
            || Some(&now) == refused.as_ref()
            || Some(&now) == loading;
        let Some(now) = settling.poll(now, nothing_new) else {
            continue;
        };
        tracing::info!("policy or config files changed; reloading");
        let reloading = sidecar.clone();
        running = Some((now, tokio::spawn(async move { reloading.reload().await })));
    }
}
