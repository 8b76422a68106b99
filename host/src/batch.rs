//! Batching off the request path, shared by the log sinks and the span
//! exporter: the request path offers an item to a bounded queue and never
//! waits ([`Lane::offered`] counts what a full or closed queue dropped); a
//! task per queue ([`ship`]) batches and delivers, one batch at a time, and
//! on shutdown delivers what is queued until a deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::SinkCounters;

/// One queued sink (or the span exporter) as the request path and its
/// task see it.
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    pub(crate) name: String,
    pub(crate) counters: SinkCounters,
    /// Why the last write or send failed, for the drop report.
    pub(crate) last_error: Arc<Mutex<Option<String>>>,
}

impl Lane {
    pub(crate) fn new(name: &str, counters: SinkCounters) -> Self {
        Self {
            name: name.to_owned(),
            counters,
            last_error: Arc::new(Mutex::new(None)),
        }
    }

    /// Counts what became of an item offered to the queue (`Err(true)`:
    /// full, `Err(false)`: closed).
    pub(crate) fn offered(&self, sent: Result<(), bool>) {
        match sent {
            Ok(()) => {}
            Err(true) => {
                self.counters.queue_full.inc();
            }
            Err(false) => {
                self.counters.shutdown.inc();
            }
        }
    }

    pub(crate) fn failed(&self, lines: usize, error: String) {
        self.counters.send_failed.inc_by(lines as u64);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

/// How a batching lane hands over one batch (see [`ship`]).
pub(crate) trait Deliver<T>: Send + 'static {
    /// Delivers `batch` (retrying as it sees fit); `Err` says why it was
    /// given up.
    fn deliver(&self, batch: Vec<T>) -> impl Future<Output = Result<(), String>> + Send;
}

/// A batching lane's task: a batch is delivered when it has `max` items or
/// its first item is `flush` old; one batch at a time, so a slow collector
/// fills the queue (and drops are counted) instead of piling up requests.
/// Once `stop` has a deadline, what is queued is delivered until then.
pub(crate) async fn ship<T: Send + 'static>(
    max: usize,
    flush: Duration,
    lane: Lane,
    mut queue: mpsc::Receiver<T>,
    mut stop: watch::Receiver<Option<Instant>>,
    delivery: impl Deliver<T>,
) {
    let mut batch: Vec<T> = Vec::with_capacity(max);
    let mut draining = false;
    loop {
        if draining {
            if queue.recv_many(&mut batch, max).await == 0 {
                break;
            }
        } else {
            // Wait for a first item, then fill until full or old enough.
            tokio::select! {
                n = queue.recv_many(&mut batch, max) => if n == 0 { break },
                () = stopping(&mut stop) => {
                    queue.close();
                    draining = true;
                    continue;
                }
            }
            let due = Instant::now() + flush;
            while batch.len() < max && !draining {
                let room = max - batch.len();
                tokio::select! {
                    n = queue.recv_many(&mut batch, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(due) => break,
                    () = stopping(&mut stop) => {
                        queue.close();
                        draining = true;
                    }
                }
            }
        }
        let items = batch.len();
        let full = std::mem::replace(&mut batch, Vec::with_capacity(max));
        let sent = tokio::select! {
            r = delivery.deliver(full) => Some(r),
            () = past_deadline(stop.clone()) => None,
        };
        match sent {
            Some(Ok(())) => {
                lane.counters.shipped.inc_by(items as u64);
            }
            Some(Err(e)) => lane.failed(items, e),
            None => {
                lane.counters.shutdown.inc_by((items + queue.len()) as u64);
                return;
            }
        }
    }
}

/// Resolves once shutdown has begun and its deadline has passed.
pub(crate) async fn past_deadline(mut stop: watch::Receiver<Option<Instant>>) {
    let deadline = loop {
        if let Some(d) = *stop.borrow_and_update() {
            break d;
        }
        if stop.changed().await.is_err() {
            // The sender is gone without a shutdown: never.
            std::future::pending::<()>().await;
        }
    };
    tokio::time::sleep_until(deadline).await;
}

/// Resolves once shutdown has begun.
pub(crate) async fn stopping(stop: &mut watch::Receiver<Option<Instant>>) {
    while stop.borrow_and_update().is_none() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
