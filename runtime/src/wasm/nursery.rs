//! Fresh instances made before requests need them, and dropped after, on a
//! thread of the runtime's own (`wasm-nursery`).
//!
//! A fresh instance costs about as much to create (store, pool slot,
//! instantiation) as to tear down (the slot's memory reset from its image),
//! and together that is most of a policy call (BENCHMARKS.md). A request
//! needs neither: it needs an instance nobody has used, and to be rid of it
//! afterwards. So each policy keeps a few instances ready, made here, and
//! spent instances are sent here to be dropped. The CPU is the same; the
//! request stops waiting for it.
//!
//! A prepared instance is exactly what the request would have made: only
//! policies configured once (a snapshot) are prepared, so no guest code has
//! run in one before its request, and each serves one request only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::policy::{Policy, Warm};

/// Work for the nursery thread.
pub(super) enum Job {
    /// Top up this policy's ready instances (skipped if it was unloaded).
    Fill(Weak<Policy>),
    /// Drop a spent instance.
    Reap(Box<Warm>),
}

/// Spent instances waiting to be dropped, at most. Past it the request
/// drops its own: when the thread cannot keep up (every core busy), a
/// backlog would only hold pool slots and memory.
const MAX_BACKLOG: usize = 16;

/// The sending end of the nursery thread, started on first use.
#[derive(Default)]
pub(super) struct Nursery {
    jobs: OnceLock<Option<Sender<Job>>>,
    /// Reap jobs sent and not yet done.
    backlog: Arc<AtomicUsize>,
}

impl Nursery {
    /// Hands `job` to the thread. `Err(job)` if there is no thread (it
    /// could not be started): the caller does the work itself.
    pub(super) fn send(&self, job: Job) -> Result<(), Job> {
        let reap = matches!(job, Job::Reap(_));
        if reap && self.backlog.fetch_add(1, Ordering::AcqRel) >= MAX_BACKLOG {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
            return Err(job);
        }
        let sent = match self.jobs.get_or_init(|| start(self.backlog.clone())) {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if reap && sent.is_err() {
            self.backlog.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }
}

/// Starts the thread; it ends when the runtime (the last sender) is gone.
fn start(backlog: Arc<AtomicUsize>) -> Option<Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("wasm-nursery".into())
        .spawn(move || {
            // Instantiation is async only in name here (no host call runs
            // during it), so a small executor of its own is enough.
            let Ok(executor) = tokio::runtime::Builder::new_current_thread().build() else {
                return;
            };
            while let Ok(job) = rx.recv() {
                match job {
                    Job::Reap(warm) => {
                        drop(warm);
                        backlog.fetch_sub(1, Ordering::AcqRel);
                    }
                    Job::Fill(policy) => {
                        if let Some(policy) = policy.upgrade() {
                            executor.block_on(policy.fill());
                        }
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(error) => {
            tracing::warn!(%error, "no wasm-nursery thread: instances are made and dropped on the request path");
            None
        }
    }
}

/// One policy's instances made ahead of requests.
pub(super) struct Ready {
    instances: Mutex<Vec<Warm>>,
    /// How many to keep.
    target: usize,
    /// A fill job is queued or running: one at a time is enough.
    queued: AtomicBool,
}

impl Ready {
    pub(super) fn new(target: usize) -> Option<Self> {
        (target > 0).then(|| Self {
            instances: Mutex::new(Vec::with_capacity(target)),
            target,
            queued: false.into(),
        })
    }

    /// A ready instance, if there is one.
    pub(super) fn take(&self) -> Option<Warm> {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
    }

    pub(super) fn missing(&self) -> usize {
        let have = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        self.target.saturating_sub(have)
    }

    /// Keeps `warm` unless the target is already met.
    pub(super) fn put(&self, warm: Warm) -> bool {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if instances.len() >= self.target {
            return false;
        }
        instances.push(warm);
        true
    }

    /// Marks a fill as queued; `false` if one already is.
    pub(super) fn queue(&self) -> bool {
        !self.queued.swap(true, Ordering::AcqRel)
    }

    pub(super) fn filled(&self) {
        self.queued.store(false, Ordering::Release);
    }
}
