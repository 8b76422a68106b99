//! `sidecar policy new NAME [--lang rust|js|python]`: a new policy project
//! from one of this repository's templates, with a passing test in its
//! language's own way (`cargo test`, `npm test`, `python3 -m unittest`).
//!
//! The templates are real projects, built and tested as they are
//! (`plugins/template`, `plugins-js/template`, `plugins-py/template`), and
//! embedded here so the binary works from anywhere. Each is written out with
//! its name replaced by the new one.

mod js;
mod python;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The language of a new policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lang {
    /// A crate built for `wasm32-wasip2`, tested through `policy-harness`.
    #[default]
    Rust,
    /// An npm package built with componentize-js.
    Js,
    /// Modules built with componentize-py.
    Python,
}

const CARGO_TOML: &str = include_str!("../../../plugins/template/Cargo.toml");
const LIB_RS: &str = include_str!("../../../plugins/template/src/lib.rs");
const COMPONENT_RS: &str = include_str!("../../../plugins/template/src/component.rs");
const TEST_RS: &str = include_str!("../../../plugins/template/tests/policy.rs");
/// The contract, copied into every new project's `wit/`.
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

/// A file of a new project: its path inside the project, and its text.
type File = (String, String);

/// Writes a new `lang` policy called `name` into `dir` and returns what to
/// do next. `sidecar` is the binary running this (absolute): a JS or
/// Python project's tests run their cases with it unless `$SIDECAR` names
/// another.
///
/// # Errors
/// A bad name, an existing `dir`, or a write failure.
pub fn new_policy(
    name: &str,
    dir: &Path,
    lang: Lang,
    sidecar: Option<&Path>,
) -> anyhow::Result<String> {
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
    let (files, next) = match lang {
        Lang::Rust => rust(name)?,
        Lang::Js => js::files(name, sidecar),
        Lang::Python => python::files(name, sidecar),
    };
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(format!(
        "created policy `{name}` in {dir}\nnext:\n  cd {dir}\n{next}",
        dir = dir.display(),
    ))
}

/// A crate from `plugins/template`, depending on this harness by path.
fn rust(name: &str) -> anyhow::Result<(Vec<File>, String)> {
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
    let files = [
        ("Cargo.toml", cargo_toml),
        ("src/lib.rs", LIB_RS.to_owned()),
        (
            "src/component.rs",
            COMPONENT_RS.replace("\"../../wit\"", "\"wit\""),
        ),
        ("tests/policy.rs", TEST_RS.to_owned()),
        ("wit/policy.wit", WIT.to_owned()),
        (".gitignore", "/target\n".to_owned()),
    ]
    .map(|(rel, text)| (rel.to_owned(), text))
    .into();
    let stem = name.replace('-', "_");
    let next = format!(
        "  cargo test                                          # builds the component, runs its harness tests\n  \
         cargo build --release --target wasm32-wasip2        # target/wasm32-wasip2/release/{stem}.wasm\n  \
         sidecar policy check target/wasm32-wasip2/release/{stem}.wasm"
    );
    Ok((files, next))
}

/// `path` as a string literal of JavaScript and Python alike (JSON's
/// escapes are both's), or `null`/`None` when unknown.
fn literal(path: Option<&Path>, none: &str) -> String {
    path.and_then(|p| serde_json::to_string(&p.to_str()?).ok())
        .unwrap_or_else(|| none.to_owned())
}

#[cfg(test)]
pub(super) fn template_files(lang: Lang) -> Vec<&'static str> {
    match lang {
        Lang::Rust => vec![],
        Lang::Js => js::TEMPLATE.iter().map(|(rel, _)| *rel).collect(),
        Lang::Python => python::TEMPLATE.iter().map(|(rel, _)| *rel).collect(),
    }
}
