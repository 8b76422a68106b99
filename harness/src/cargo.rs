//! Building a policy crate's component from its own tests, so `cargo test`
//! in a policy crate always tests the current source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, bail};

/// Built components by manifest dir: one build per test process.
static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();

/// Runs `cargo build --release --target wasm32-wasip2` for the crate at
/// `manifest_dir` and returns the path of its `.wasm`.
///
/// # Errors
/// If cargo fails (its diagnostics are printed) or produces no `.wasm`.
pub fn build_component(manifest_dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest_dir = manifest_dir
        .canonicalize()
        .with_context(|| format!("no crate at {}", manifest_dir.display()))?;
    let built = BUILT.get_or_init(Default::default);
    // Held across the build: tests of one binary run in parallel, and one
    // build at a time is all cargo allows per target dir anyway.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(&manifest_dir) {
        return Ok(path.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = manifest_dir.join("Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build --target wasm32-wasip2 failed for {} (is the target installed? `rustup target add wasm32-wasip2`)",
            manifest.display()
        );
    }
    let wasm =
        find_artifact(&String::from_utf8_lossy(&output.stdout), &manifest).with_context(|| {
            format!(
                "cargo built no .wasm for {}: is it a `cdylib`?",
                manifest.display()
            )
        })?;
    built.insert(manifest_dir, wasm.clone());
    Ok(wasm)
}

/// The `.wasm` of the `cdylib` built from `manifest`, from cargo's JSON messages.
fn find_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_wasm_of_the_right_package() {
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/x/other/Cargo.toml","filenames":["/t/other.wasm"]}
{"reason":"compiler-artifact","manifest_path":"/x/auth/Cargo.toml","filenames":["/t/auth.wasm","/t/auth.d"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            find_artifact(messages, Path::new("/x/auth/Cargo.toml")),
            Some(PathBuf::from("/t/auth.wasm"))
        );
        assert_eq!(
            find_artifact(messages, Path::new("/x/none/Cargo.toml")),
            None
        );
    }
}
