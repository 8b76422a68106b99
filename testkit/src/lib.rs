//! What the sidecar's tests share, in one place: a temporary folder that
//! removes itself ([`TempDir`]), waiting until a condition holds
//! ([`eventually`]), and the `sidecar` binary run as its users run it
//! ([`SidecarProcess`]). Tests only: a dev-dependency of the crates whose
//! tests need them.

mod process;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use self::process::{SidecarOptions, SidecarProcess};

/// A fresh folder under the system's temporary folder, removed on drop
/// (a failing test's too). Its name says the test, the process and a
/// counter, so tests running in parallel never share one.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// # Panics
    /// If the folder cannot be created.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sidecar-{name}-{}-{n}", std::process::id()));
        // Left over by a killed run with the same pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// A `&TempDir` is taken wherever a `&Path` is.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 20 ms until it holds.
///
/// # Panics
/// If it does not hold within `within` (generous in callers: the wait is
/// not what a test checks).
pub async fn eventually(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !cond().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
