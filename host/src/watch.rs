//! File watching, shared by drop-in policies (the config and policy files)
//! and the listener's certificate: polling, so an atomic `rename` into
//! place is seen like any write, and a change applied only once it has been
//! stable for one more interval, so a copy in progress is not picked up.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `[reload]`: whether files are watched, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    pub watch: bool,
    /// How often files are checked; a change is applied once it has been
    /// stable for one more interval (a copy in progress is not picked up).
    pub interval: Duration,
}

/// Some files' identity and state: a rename into place changes the inode,
/// a write the length or modification time.
pub(crate) type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

pub(crate) fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt as _;
    files
        .iter()
        .map(|f| {
            let state = std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino()));
            (f.clone(), state)
        })
        .collect()
}

/// Tells a settled change from one still in progress, one poll at a time.
#[derive(Debug, Default)]
pub(crate) struct Settling(Option<Fingerprint>);

impl Settling {
    /// Called each poll with the files as they are `now`, and whether that
    /// is nothing new (what is loaded, refused or being loaded). Returns
    /// the fingerprint to load once a change has looked the same for two
    /// polls in a row.
    pub(crate) fn poll(&mut self, now: Fingerprint, nothing_new: bool) -> Option<Fingerprint> {
        if nothing_new {
            self.0 = None;
            return None;
        }
        if self.0.as_ref() != Some(&now) {
            // Changed since the last look: wait one more interval.
            self.0 = Some(now);
            return None;
        }
        self.0 = None;
        Some(now)
    }
}
