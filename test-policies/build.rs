//! Builds every policy in `plugins/` (a separate workspace, for
//! `wasm32-wasip2`) so that `cargo test` never runs against stale `.wasm`
//! files, and writes their paths as constants for the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Components the tests use: (constant name, file stem).
const POLICIES: [(&str, &str); 8] = [
    ("AUTH", "auth"),
    ("LOGGING", "logging"),
    ("CACHE", "cache"),
    ("TAG", "tag"),
    ("HOSTILE", "hostile"),
    ("NOOP", "noop"),
    ("SANDBOX", "sandbox"),
    ("TEMPLATE", "template"),
];

/// Committed 0.2.0 components: (constant name, file stem in `v0.2.0/`).
const V020: [(&str, &str); 4] = [
    ("V020_AUTH", "auth"),
    ("V020_LOGGING", "logging"),
    ("V020_CACHE", "cache"),
    ("V020_NOOP", "noop"),
];

/// Committed 0.1.0 components: (constant name, file stem in `v0.1.0/`).
const V01: [(&str, &str); 5] = [
    ("V01_AUTH", "auth"),
    ("V01_LOGGING", "logging"),
    ("V01_CACHE", "cache"),
    ("V01_TAG", "tag"),
    ("V01_NOOP", "noop"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("test-policies sits in the repo root");
    let plugins = root.join("plugins");

    watch(&root.join("wit"));
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join("Cargo.lock").display()
    );
    for dir in crate_dirs(&plugins) {
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
        watch(&dir.join("src"));
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(plugins.join("Cargo.toml"))
    .current_dir(&plugins);
    // The outer build's settings (target dir, flags, cfgs) must not leak
    // into a build for another target.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "CARGO_MAKEFLAGS")
            || key.starts_with("CARGO_NET_");
        if (key.starts_with("CARGO_") && !keep)
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
            )
        {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("running cargo to build the policies");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (see above). \
             If the target is missing: `rustup target add wasm32-wasip2` (scripts/test.sh does this)."
        );
    }

    let out_dir = plugins.join("target/wasm32-wasip2/release");
    let mut consts = String::new();
    for (name, stem) in POLICIES {
        let path = out_dir.join(format!("{stem}.wasm"));
        assert!(
            path.exists(),
            "expected {} after building plugins/",
            path.display()
        );
        consts.push_str(&format!(
            "/// `{stem}.wasm`, freshly built from `plugins/`.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    // Contract 0.1.0 builds of the shipped policies, committed as they
    // were before 0.2.0: users' existing policies must keep working.
    for (name, stem) in V01 {
        let path = manifest_dir.join(format!("v0.1.0/{stem}.wasm"));
        assert!(path.exists(), "missing fixture {}", path.display());
        consts.push_str(&format!(
            "/// `{stem}.wasm` as built against contract 0.1.0 (committed).\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    // Contract 0.2.0 builds, committed as they were before 0.2.1: a 0.2.1
    // sidecar must keep loading them.
    for (name, stem) in V020 {
        let path = manifest_dir.join(format!("v0.2.0/{stem}.wasm"));
        assert!(path.exists(), "missing fixture {}", path.display());
        consts.push_str(&format!(
            "/// `{stem}.wasm` as built against contract 0.2.0 (committed).\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("policies.rs");
    std::fs::write(dest, consts).expect("writing policies.rs");
}

/// Crates of the plugins workspace: `plugins/*` and `plugins/fixtures/*`.
fn crate_dirs(plugins: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for parent in [plugins.to_owned(), plugins.join("fixtures")] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.join("Cargo.toml").exists() {
                dirs.push(p);
            }
        }
    }
    dirs
}

/// Re-runs the build when anything under `dir` changes.
fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
}
