//! `sidecar policy new NAME`: a new policy crate from `plugins/template`,
//! with a passing harness test, ready for `cargo test`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The template, embedded so the binary works from anywhere. `plugins/template`
/// is the one source: it is built and tested with the other policies.
const CARGO_TOML: &str = include_str!("../../../plugins/template/Cargo.toml");
const LIB_RS: &str = include_str!("../../../plugins/template/src/lib.rs");
const COMPONENT_RS: &str = include_str!("../../../plugins/template/src/component.rs");
const TEST_RS: &str = include_str!("../../../plugins/template/tests/policy.rs");
const WIT: &str = include_str!("../../../wit/policy.wit");
/// The policies' workspace manifest: its profiles (small release builds; a
/// debug build of the harness's compiler crates fast enough for tests that
/// snapshot a policy per config) go into the new crate, its own workspace.
const WORKSPACE_TOML: &str = include_str!("../../../plugins/Cargo.toml");

/// The `[profile.*]` tables of the policies' workspace, as one block.
fn profiles() -> &'static str {
    WORKSPACE_TOML
        .find("[profile.")
        .map_or("", |start| &WORKSPACE_TOML[start..])
}

/// Where this repository's harness is (this crate): the generated crate
/// depends on it by path.
fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a new policy crate called `name` into `dir` and returns what to do next.
///
/// # Errors
/// A bad name, an existing `dir`, or a write failure.
pub fn new_policy(name: &str, dir: &Path) -> anyhow::Result<String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "policy name `{name}`: use lower-case letters, digits, `-` and `_`, starting with a letter"
        );
    }
    if dir.exists() {
        bail!(
            "{} already exists; pick another name or --dir",
            dir.display()
        );
    }
    let harness = harness_dir()
        .canonicalize()
        .context("the harness crate is not where this sidecar was built from")?;
    let cargo_toml = CARGO_TOML
        .replacen("name = \"template\"", &format!("name = \"{name}\""), 1)
        .replace(
            "path = \"../../harness\"",
            &format!("path = {:?}", harness.display().to_string()),
        )
        + "\n# A crate of its own, not part of an enclosing workspace.\n[workspace]\n\n"
        + profiles();
    let files: [(&str, String); 6] = [
        ("Cargo.toml", cargo_toml),
        ("src/lib.rs", LIB_RS.to_owned()),
        (
            "src/component.rs",
            COMPONENT_RS.replace("\"../../wit\"", "\"wit\""),
        ),
        ("tests/policy.rs", TEST_RS.to_owned()),
        ("wit/policy.wit", WIT.to_owned()),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(format!(
        "created policy `{name}` in {dir}\n\
         next:\n  cd {dir}\n  cargo test                                          # builds the component, runs its harness tests\n  \
         cargo build --release --target wasm32-wasip2        # target/wasm32-wasip2/release/{stem}.wasm\n  \
         sidecar policy check target/wasm32-wasip2/release/{stem}.wasm",
        dir = dir.display(),
        stem = name.replace('-', "_"),
    ))
}
