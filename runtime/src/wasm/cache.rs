//! Compiled components, cached in memory (a reload that keeps a file does
//! not recompile it) and on disk (a restart with unchanged policies does not
//! recompile them). Configured snapshots are cached the same way, under a
//! key made of the component and its config, so an unchanged policy is
//! neither compiled nor configured again.
//!
//! A disk entry is named by its key (the sha256 of the `.wasm`, or of the
//! snapshot's inputs) and a hash of the engine's compatibility settings
//! (wasmtime version, target, config), and carries the sha256 of its own
//! contents. An entry that does not match, is truncated, or that wasmtime
//! refuses, is ignored and replaced: never trusted blindly.
//!
//! Bounds: the memory cache keeps what the loads since a [`CompileCache::mark`]
//! used (the sidecar forgets the rest once a new gateway is in service, so a
//! replaced policy's code is freed with its last request); the directory is
//! kept under a size by removing the least recently used entries.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Version 2 carries metadata (a snapshot's hooks) beside the artifact.
const MAGIC: &[u8; 8] = b"SIDECAR2";

/// The disk cache's default size bound.
pub const DEFAULT_MAX_DISK_BYTES: u64 = 512 * 1024 * 1024;

/// The compile cache's folder when a config names none, shared by the
/// sidecar and `sidecar policy check|call|test` so that each reuses what the
/// other compiled: `$XDG_CACHE_HOME/wasm-policy-sidecar`, else
/// `~/.cache/wasm-policy-sidecar`; `None` without either variable. `env`
/// reads a variable (the process's, or a test's).
pub fn default_cache_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| Path::new(&h).join(".cache"))
        })?;
    Some(base.join("wasm-policy-sidecar"))
}

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Disk,
    Compiled,
}

/// A cache key: a sha256.
pub(crate) type Key = [u8; 32];

/// Whether a compiled component is kept in memory once compiled (a
/// component used only once, to take a snapshot, is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    InMemory,
    OnDiskOnly,
}

struct Entry {
    component: Component,
    meta: Vec<u8>,
    /// The newest mark under which it was used.
    used: u64,
}

pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
    max_disk_bytes: u64,
    memory: Mutex<HashMap<Key, Entry>>,
    mark: AtomicU64,
    /// Tells apart the temporary files of two writers in one process.
    writes: AtomicU64,
}

/// The sha256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CompileCache {
    pub(crate) fn new(dir: Option<PathBuf>, max_disk_bytes: u64) -> Self {
        Self {
            dir,
            max_disk_bytes,
            memory: Mutex::new(HashMap::new()),
            mark: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// Starts a new period of use: [`CompileCache::forget_unused_since`]
    /// with the value returned drops what was not used after it.
    pub(crate) fn mark(&self) -> u64 {
        self.mark.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Drops the in-memory entries not used since `mark`. A component still
    /// in use (by a gateway or a request) lives on until its last user goes.
    pub(crate) fn forget_unused_since(&self, mark: u64) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, e| e.used >= mark);
    }

    /// The component compiled from `bytes`: from memory, disk, or compiled
    /// now by `compile` (and then stored).
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        keep: Keep,
        compile: impl FnOnce(&[u8]) -> anyhow::Result<Component>,
    ) -> anyhow::Result<(Component, Source)> {
        let key: Key = Sha256::digest(bytes).into();
        if let Some((component, _, source)) = self.lookup(engine, &key, keep) {
            return Ok((component, source));
        }
        let component = compile(bytes)?;
        self.insert(engine, key, &component, Vec::new(), keep);
        Ok((component, Source::Compiled))
    }

    /// The entry under `key`, with its metadata, from memory or disk.
    pub(crate) fn lookup(
        &self,
        engine: &Engine,
        key: &Key,
        keep: Keep,
    ) -> Option<(Component, Vec<u8>, Source)> {
        let now = self.mark.load(Ordering::SeqCst);
        if let Some(e) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            e.used = now;
            return Some((e.component.clone(), e.meta.clone(), Source::Memory));
        }
        let path = self.path(engine, key)?;
        let (component, meta) = load(engine, &path)?;
        // Recently used: the last to go when the directory is over its bound.
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if keep == Keep::InMemory {
            self.remember(*key, &component, &meta);
        }
        Some((component, meta, Source::Disk))
    }

    /// Stores `component` under `key`, in memory (if `keep` says so) and on
    /// disk; then keeps the directory within its bound.
    pub(crate) fn insert(
        &self,
        engine: &Engine,
        key: Key,
        component: &Component,
        meta: Vec<u8>,
        keep: Keep,
    ) {
        if let Some(path) = self.path(engine, &key) {
            let tmp_id = self.writes.fetch_add(1, Ordering::Relaxed);
            // A cache that cannot be written only costs a recompile.
            match store(component, &meta, &path, tmp_id) {
                Ok(()) => self.prune(&path),
                Err(e) => eprintln!(
                    "warning: compile cache: cannot write {}: {e:#}",
                    path.display()
                ),
            }
        }
        if keep == Keep::InMemory {
            self.remember(key, component, &meta);
        }
    }

    fn remember(&self, key: Key, component: &Component, meta: &[u8]) {
        let used = self.mark.load(Ordering::SeqCst);
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key,
                Entry {
                    component: component.clone(),
                    meta: meta.to_vec(),
                    used,
                },
            );
    }

    fn path(&self, engine: &Engine, key: &Key) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(entry_name(engine, key)))
    }

    /// Removes the least recently used entries until the directory is within
    /// its bound; `keep` (just written) stays whatever its size.
    fn prune(&self, keep: &Path) {
        let Some(dir) = &self.dir else { return };
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = read
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_disk_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

fn entry_name(engine: &Engine, key: &Key) -> String {
    // DefaultHasher::new() has fixed keys: stable within one build of the
    // sidecar, which is all an entry may be shared by (the wasmtime
    // version is part of the compatibility hash anyway).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}.cwasm", hex(key), h.finish())
}

fn store(component: &Component, meta: &[u8], path: &Path, tmp_id: u64) -> anyhow::Result<()> {
    // The component just compiled, serialized: no second compile.
    let artifact = component.serialize().map_err(anyhow::Error::from)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let meta_len = u32::try_from(meta.len())?.to_le_bytes();
    let mut sum = Sha256::new();
    sum.update(meta_len);
    sum.update(meta);
    sum.update(&artifact);
    let mut data = Vec::with_capacity(MAGIC.len() + 32 + 4 + meta.len() + artifact.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&sum.finalize());
    data.extend_from_slice(&meta_len);
    data.extend_from_slice(meta);
    data.extend_from_slice(&artifact);
    // Write then rename: a reader never sees half an entry.
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{tmp_id}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn load(engine: &Engine, path: &Path) -> Option<(Component, Vec<u8>)> {
    let data = std::fs::read(path).ok()?;
    let (meta, artifact) = verified_payload(&data)?;
    Some((deserialize(engine, artifact)?, meta.to_vec()))
}

/// The metadata and artifact of an entry, if its header and checksum are right.
fn verified_payload(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = data.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < 36 {
        return None;
    }
    let (sum, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let (len, body) = body.split_at(4);
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    (body.len() >= len).then(|| body.split_at(len))
}

/// A component `Engine::precompile_component` just made, on an engine with
/// the same code settings as `engine`.
///
/// # Errors
/// If wasmtime refuses it (settings that differ: a bug).
#[allow(unsafe_code)]
pub(crate) fn deserialize_compiled(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: the bytes come straight from `precompile_component` of an
    // engine built from the same `code_config`, in this process; wasmtime
    // checks its header (version, settings) as well.
    unsafe { Component::deserialize(engine, artifact) }.map_err(anyhow::Error::from)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> Option<Component> {
    // SAFETY: wasmtime requires the bytes to come from `Component::serialize`
    // (or `Engine::precompile_component`) of a compatible engine. They do: the
    // entry was written by `store` above (into the sidecar's own cache
    // directory), its checksum matched, its name carries this engine's
    // compatibility hash, and wasmtime itself checks its header (version,
    // settings) and refuses a mismatch, which falls back to compiling.
    unsafe { Component::deserialize(engine, artifact) }.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(meta: &[u8], artifact: &[u8]) -> Vec<u8> {
        let len = (meta.len() as u32).to_le_bytes();
        let mut sum = Sha256::new();
        sum.update(len);
        sum.update(meta);
        sum.update(artifact);
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&sum.finalize());
        data.extend_from_slice(&len);
        data.extend_from_slice(meta);
        data.extend_from_slice(artifact);
        data
    }

    #[test]
    fn payload_must_match_its_checksum() {
        let data = entry(b"hooks", b"compiled");
        assert_eq!(
            verified_payload(&data),
            Some((&b"hooks"[..], &b"compiled"[..]))
        );
        let mut tampered = data.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(verified_payload(&tampered), None);
        assert_eq!(verified_payload(&data[..20]), None);
        assert_eq!(verified_payload(b"NOTMAGIC"), None);
        // A version 1 entry is not read as version 2.
        let mut old = data.clone();
        old[..8].copy_from_slice(b"SIDECAR1");
        assert_eq!(verified_payload(&old), None);
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_directory_is_pruned_oldest_first_to_its_bound() {
        let dir = std::env::temp_dir().join(format!("sidecar-cache-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cache = CompileCache::new(Some(dir.clone()), 250);
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.join(format!("{name}.cwasm"));
            std::fs::write(&p, [0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        std::fs::write(dir.join("other.txt"), [0u8; 1000]).unwrap();
        let newest = dir.join("d.cwasm");
        std::fs::write(&newest, [0u8; 100]).unwrap();
        cache.prune(&newest);
        let left: Vec<String> = {
            let mut v: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        // 400 bytes of entries over a 250-byte bound: the two oldest go;
        // files that are not entries are not the cache's to remove.
        assert_eq!(left, ["c.cwasm", "d.cwasm", "other.txt"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
