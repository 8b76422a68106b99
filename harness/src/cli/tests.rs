use std::path::{Path, PathBuf};

use sidecar_testkit::TempDir;

use super::*;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn check_err(bytes: &[u8]) -> String {
    // Tests run in parallel: each call gets its own folder.
    let dir = TempDir::new("policy-cli-check");
    let path = dir.join("p.wasm");
    std::fs::write(&path, bytes).unwrap();
    let msg = format!("{:#}", check(&path).unwrap_err());
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    msg
}

#[test]
fn check_names_the_contract_and_lists_capabilities_and_hooks() {
    let report = check(Path::new(test_policies::CACHE)).unwrap();
    assert!(
        report.contains("ok, a sidecar:policy@0.2.1 policy"),
        "{report}"
    );
    assert!(report.contains("capabilities: log, kv, clock"), "{report}");
    assert!(
        report.contains("hooks with config {}: on-request, on-response"),
        "{report}"
    );
    assert!(report.contains("configured once"), "{report}");
    let report = check(Path::new(test_policies::LOGGING)).unwrap();
    assert!(report.contains("on-complete"), "{report}");
    let report = check(Path::new(test_policies::NOOP)).unwrap();
    assert!(report.contains("capabilities: none"), "{report}");
    assert!(
        report.contains("hooks with config {}: on-request\n"),
        "{report}"
    );
}

#[test]
fn check_names_the_version_an_older_0_2_component_was_built_against() {
    let report = check(Path::new(test_policies::V020_CACHE)).unwrap();
    assert!(
        report.contains("ok, a sidecar:policy@0.2.0 policy"),
        "{report}"
    );
    assert!(report.contains("capabilities: log, kv, clock"), "{report}");
}

#[test]
fn check_reports_a_refused_empty_config_instead_of_hooks() {
    // auth needs a secret.
    let report = check(Path::new(test_policies::AUTH)).unwrap();
    assert!(report.contains("ok, a sidecar:policy@0.2.1"), "{report}");
    assert!(
        report.contains("hooks: not known, config {} is refused"),
        "{report}"
    );
}

#[test]
fn check_accepts_a_0_1_policy() {
    let report = check(Path::new(test_policies::V01_CACHE)).unwrap();
    assert!(
        report.contains("ok, a sidecar:policy@0.1.0 policy"),
        "{report}"
    );
    assert!(report.contains("capabilities: log, kv, clock"), "{report}");
    assert!(!report.contains("hooks"), "{report}");
    let report = check(Path::new(test_policies::V01_TAG)).unwrap();
    assert!(report.contains("capabilities: none"), "{report}");
}

#[test]
fn check_rejects_a_file_that_is_not_wasm() {
    assert!(check_err(b"#!/bin/sh\n").contains("not a WebAssembly file"));
}

#[test]
fn check_rejects_a_core_module() {
    assert!(check_err(b"\0asm\x01\0\0\0").contains("core WebAssembly module, not a component"));
}

#[test]
fn check_rejects_a_component_for_another_world() {
    // The smallest valid component: it exports nothing.
    let msg = check_err(b"\0asm\x0d\0\x01\0");
    assert!(
        msg.contains(
            "does not export `sidecar:policy/handler@0.2.1` or `sidecar:policy/handler@0.2.0` or `sidecar:policy/handler@0.1.0`"
        ),
        "{msg}"
    );
    assert!(msg.contains("another world"), "{msg}");
}

#[test]
fn check_rejects_a_truncated_file() {
    let bytes = std::fs::read(test_policies::AUTH).unwrap();
    let msg = check_err(&bytes[..bytes.len() / 3]);
    assert!(msg.contains("not a valid component"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn call_prints_the_decision_and_the_log_lines() {
    for (wasm, contract) in [
        (test_policies::AUTH, "sidecar:policy@0.2.1"),
        (test_policies::V01_AUTH, "sidecar:policy@0.1.0"),
    ] {
        let out = call(
            Path::new(wasm),
            r#"{"secret":"s"}"#,
            r#"{"path":"/private"}"#,
            None,
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["contract"], contract, "{out}");
        assert_eq!(json["decision"]["respond"]["status"], 401, "{out}");
        assert_eq!(json["logs"][0]["msg"], "auth denied", "{out}");
        assert_eq!(json["logs"][0]["policy"], "auth", "{out}");
    }
}

#[test]
fn call_with_an_upstream_runs_the_response_hook() {
    for wasm in [test_policies::CACHE, test_policies::V01_CACHE] {
        let out = call(
            Path::new(wasm),
            "{}",
            r#"{"path":"/p"}"#,
            Some(r#"{"status":200,"body":"hi"}"#),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["decision"]["continue"], "unchanged", "{out}");
        assert_eq!(json["hooks"]["on_response"], true, "{out}");
        assert!(
            json["response"]["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == "x-cache: miss"),
            "{out}"
        );
    }
}

#[test]
fn call_with_an_upstream_runs_the_completion_hook_a_0_2_policy_asks_for() {
    let out = call(
        Path::new(test_policies::LOGGING),
        "{}",
        r#"{"path":"/p"}"#,
        Some(r#"{"status":200,"body":"hi"}"#),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["hooks"]["on_complete"], true, "{out}");
    assert_eq!(json["completion"]["status"], 200, "{out}");
    assert_eq!(json["completion"]["response_body_bytes"], 2, "{out}");
    assert_eq!(json["logs"].as_array().unwrap().len(), 1, "{out}");
}

#[test]
fn shipped_case_files_pass_on_both_contracts() {
    for (wasm, cases) in [
        (test_policies::AUTH, "plugins/auth/cases.toml"),
        (test_policies::V01_AUTH, "plugins/auth/cases.toml"),
        // Asymmetric keys: the 0.2 policy only (the 0.1 build predates them).
        (test_policies::AUTH, "plugins/auth/cases-jwks.toml"),
        (test_policies::AUTH, "plugins/auth/cases-jwks-url.toml"),
        (test_policies::CACHE, "plugins/cache/cases.toml"),
        (test_policies::V01_CACHE, "plugins/cache/cases.toml"),
    ] {
        let report = run_cases(Path::new(wasm), &repo(cases)).unwrap();
        assert_eq!(report.failed, 0, "{wasm} {cases}: {:#?}", report.lines);
        assert!(report.passed >= 5, "{cases}");
    }
}

#[test]
#[ignore = "needs the Python policy built (scripts/build-python-policies.sh); slow: compiles a large component"]
fn python_case_file_passes_when_the_component_is_built() {
    // Built by plugins-py's own build (componentize-py), not by cargo.
    let wasm = repo("plugins-py/target/acl.wasm");
    if !wasm.exists() {
        eprintln!("skipped: {} not built", wasm.display());
        return;
    }
    let report = run_cases(&wasm, &repo("plugins-py/acl/cases.toml")).unwrap();
    assert_eq!(report.failed, 0, "{:#?}", report.lines);
}

#[test]
fn failing_cases_are_counted_with_the_reason() {
    let dir = TempDir::new("policy-cli-cases");
    let cases = dir.join("cases.toml");
    std::fs::write(
        &cases,
        r#"
config = { name = "a" }
[[case]]
name = "wrong expectation"
request = { path = "/" }
expect = { decision = "respond" }
[[case]]
name = "right expectation"
request = { path = "/" }
expect = { decision = "continue", request_headers = { x-chain = "a" } }
"#,
    )
    .unwrap();
    let report = run_cases(Path::new(test_policies::TAG), &cases).unwrap();
    assert_eq!((report.passed, report.failed), (1, 1));
    assert!(
        report.lines[0].contains("expected decision `respond`, got `continue`"),
        "{:?}",
        report.lines
    );
}

#[test]
fn malformed_case_file_names_the_file() {
    let dir = TempDir::new("policy-cli-bad-cases");
    let cases = dir.join("cases.toml");
    std::fs::write(&cases, "[[case]]\nname = \"x\"\n").unwrap();
    let msg = format!(
        "{:#}",
        run_cases(Path::new(test_policies::TAG), &cases).unwrap_err()
    );
    assert!(msg.contains("cases.toml"), "{msg}");
}

#[test]
fn new_writes_a_crate_from_the_template() {
    let scratch = TempDir::new("policy-cli-new");
    let dir = scratch.join("my-policy");
    let next = new_policy("my-policy", &dir).unwrap();
    assert!(next.contains("cargo test"));
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(cargo.contains("name = \"my-policy\""));
    assert!(cargo.contains("[workspace]"));
    // The policies' workspace profiles, now the new crate's own.
    assert!(cargo.contains("[profile.release]"), "{cargo}");
    assert!(cargo.contains("[profile.dev.package.wasmtime]"), "{cargo}");
    assert!(
        !cargo.contains("../../harness"),
        "harness path made absolute"
    );
    let component = std::fs::read_to_string(dir.join("src/component.rs")).unwrap();
    assert!(component.contains("path: \"wit\""));
    let wit = std::fs::read_to_string(dir.join("wit/policy.wit")).unwrap();
    assert!(
        wit.contains(&format!("package {};", sidecar_runtime::bindings::CONTRACT)),
        "the new crate targets the current contract"
    );
    assert!(dir.join("tests/policy.rs").exists());
    assert!(
        new_policy("my-policy", &dir)
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    assert!(new_policy("Bad Name", &dir.with_file_name("x")).is_err());
}

#[test]
#[ignore = "slow: builds the new crate and its harness (wasmtime) and runs its tests; run with --ignored"]
fn new_crate_builds_and_passes_its_tests() {
    let scratch = TempDir::new("policy-cli-new-build");
    let dir = scratch.join("fresh-policy");
    new_policy("fresh-policy", &dir).unwrap();
    // The shipped policies' build: the same lock file and target folder
    // (the test command has just built and tested them) reuse their
    // dependencies' builds, the harness's wasmtime above all, instead of
    // minutes of building them again.
    std::fs::copy(repo("plugins/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target = repo("plugins/target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.arg("test")
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target);
    // This test's own build settings must not reach the new crate's build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(key.as_str(), "CARGO_HOME" | "CARGO_MAKEFLAGS")
            || key.starts_with("CARGO_NET_");
        if (key.starts_with("CARGO_") && !keep) || key == "RUSTFLAGS" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", &target);
    let out = cmd.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "cargo test in the new crate: {log}");
    assert!(
        log.contains("request_without_the_header_is_refused_with_json ... ok"),
        "the template's harness test ran: {log}"
    );
}
