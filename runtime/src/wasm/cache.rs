//! Compiled components, cached in memory (a reload that keeps a file does
//! not recompile it) and on disk (a restart with unchanged policies does not
//! recompile them).
//!
//! A disk entry is named by the sha256 of the `.wasm` and a hash of the
//! engine's compatibility settings (wasmtime version, target, config), and
//! carries the sha256 of its own payload. An entry that does not match, is
//! truncated, or that wasmtime refuses, is ignored and replaced: never
//! trusted blindly.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"SIDECAR1";

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Disk,
    Compiled,
}

pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<[u8; 32], Component>>,
}

/// The sha256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CompileCache {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            memory: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, Source)> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
        {
            return Ok((c.clone(), Source::Memory));
        }
        let path = self
            .dir
            .as_ref()
            .map(|d| d.join(entry_name(engine, &digest)));
        let loaded = path.as_deref().and_then(|p| load(engine, p));
        let (component, source) = match loaded {
            Some(c) => (c, Source::Disk),
            None => {
                let c = Component::new(engine, bytes).map_err(anyhow::Error::from)?;
                if let Some(p) = &path {
                    // A cache that cannot be written only costs a recompile.
                    if let Err(e) = store(&c, p) {
                        eprintln!(
                            "warning: compile cache: cannot write {}: {e:#}",
                            p.display()
                        );
                    }
                }
                (c, Source::Compiled)
            }
        };
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, component.clone());
        Ok((component, source))
    }
}

fn entry_name(engine: &Engine, digest: &[u8; 32]) -> String {
    // DefaultHasher::new() has fixed keys: stable within one build of the
    // sidecar, which is all an entry may be shared by (the wasmtime
    // version is part of the compatibility hash anyway).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}.cwasm", hex(digest), h.finish())
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    // The component just compiled, serialized: no second compile.
    let artifact = component.serialize().map_err(anyhow::Error::from)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut data = Vec::with_capacity(MAGIC.len() + 32 + artifact.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&Sha256::digest(&artifact));
    data.extend_from_slice(&artifact);
    // Write then rename: a reader never sees half an entry.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn load(engine: &Engine, path: &Path) -> Option<Component> {
    let data = std::fs::read(path).ok()?;
    let artifact = verified_payload(&data)?;
    deserialize(engine, artifact)
}

/// The payload of an entry, if its header and checksum are right.
fn verified_payload(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, artifact) = rest.split_at(32);
    (Sha256::digest(artifact).as_slice() == sum).then_some(artifact)
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

    #[test]
    fn payload_must_match_its_checksum() {
        let artifact = b"compiled";
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&Sha256::digest(artifact));
        data.extend_from_slice(artifact);
        assert_eq!(verified_payload(&data), Some(&artifact[..]));
        let mut tampered = data.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(verified_payload(&tampered), None);
        assert_eq!(verified_payload(&data[..20]), None);
        assert_eq!(verified_payload(b"NOTMAGIC"), None);
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
