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
            &CallSetup::default(),
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
            &CallSetup::default(),
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
        &CallSetup::default(),
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
    let next = new_policy("my-policy", &dir, Lang::Rust, None).unwrap();
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
        new_policy("my-policy", &dir, Lang::Rust, None)
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    assert!(new_policy("Bad Name", &dir.with_file_name("x"), Lang::Rust, None).is_err());
}

#[test]
#[ignore = "slow: builds the new crate and its harness (wasmtime) and runs its tests; run with --ignored"]
fn new_crate_builds_and_passes_its_tests() {
    let scratch = TempDir::new("policy-cli-new-build");
    let dir = scratch.join("fresh-policy");
    new_policy("fresh-policy", &dir, Lang::Rust, None).unwrap();
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

/// The JWK Set and an ES256 token of `plugins/auth/cases-jwks-url.toml`.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"ec-p256","x":"4exJ27Mz6aI33CplrvtXaY_ODvng4EnrLzs5eEPwBbk","y":"Uhh9yGtbi1815AGziS5YebpNlw1vD6ESMNcFSHFidyI"}]}"#;
const ES256_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLXAyNTYiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ1c2VyLWVzMjU2IiwiaXNzIjoiaHR0cHM6Ly9pZHAuZXhhbXBsZSIsImF1ZCI6InNpZGVjYXItYXBpIiwiaWF0IjoxNzA0MDY3MjAwLCJleHAiOjQxMDI0NDQ4MDB9.HgtRWugHa2MVyXawgv8-UNhy4-XJDbaN8lOy0MNkNeCv95gu7N7hUO7rxuSHld9DShLNnCiRW-hzTStqhIdQTg";

/// An auth config fetching its keys from `https://idp.example/jwks`. Each
/// test has its own `jwks_max_age_secs`: a configured policy is snapshotted
/// and cached by component and config, so a set one test fetched at load
/// must not show up in another's.
fn jwks_config(max_age_secs: u64) -> String {
    serde_json::json!({
        "jwks_url": "https://idp.example/jwks",
        "issuer": "https://idp.example",
        "audience": "sidecar-api",
        "jwks_max_age_secs": max_age_secs,
    })
    .to_string()
}

fn call_json(config: &str, request: &str, setup: &CallSetup) -> serde_json::Value {
    let out = call(Path::new(test_policies::AUTH), config, request, None, setup).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn es256_request() -> String {
    serde_json::json!({
        "path": "/profile",
        "headers": { "authorization": format!("Bearer {ES256_TOKEN}") },
    })
    .to_string()
}

/// The `outbound_requests` of a call's output: `GET`s of the key set (at
/// load, unless the configured policy came from the cache, and after).
fn jwks_fetches(json: &serde_json::Value) -> usize {
    let sent = json["outbound_requests"].as_array().expect("listed");
    assert!(
        sent.iter().all(|r| r == "GET https://idp.example/jwks"),
        "{json}"
    );
    sent.len()
}

#[test]
fn call_with_a_preloaded_store_uses_what_is_in_it() {
    // The identity provider is down: the key set comes from the store,
    // where another request of the sidecar left it, or from nowhere.
    let config = jwks_config(301);
    let down = CallSetup {
        now: Some("2024-01-01T00:00:00Z".into()),
        allow_outbound: vec!["https://idp.example".into()],
        outbound_stubs: vec![
            r#"{"url":"https://idp.example/jwks","fail":"connection refused"}"#.into(),
        ],
        ..CallSetup::default()
    };
    let json = call_json(&config, &es256_request(), &down);
    assert_eq!(json["decision"]["respond"]["status"], 401, "{json}");
    assert!(
        jwks_fetches(&json) >= 1,
        "the unknown key refreshes the set"
    );
    let preloaded = CallSetup {
        kv: vec![
            format!("jwks:https://idp.example/jwks={JWKS}"),
            "jwks-at:https://idp.example/jwks=1704067200000000".into(),
        ],
        ..down
    };
    let json = call_json(&config, &es256_request(), &preloaded);
    let forwarded = &json["decision"]["continue"]["headers"];
    assert!(
        forwarded
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "x-authenticated-user: user-es256"),
        "{json}"
    );
    assert!(jwks_fetches(&json) <= 1, "no refresh: {json}");
}

#[test]
fn call_with_a_stub_lets_the_policy_call_out_to_an_allowed_origin() {
    let setup = CallSetup {
        // A newer set in the store, without the token's key: the request
        // fetches the set again, from the stub (whatever the load fetched).
        kv: vec![
            r#"jwks:https://idp.example/jwks={"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed25519","x":"bBtspDd9-L8I7bTHWsm32BNs2iTRAtSdfk4PW1V0s0s"}]}"#.into(),
            "jwks-at:https://idp.example/jwks=1704067200000000".into(),
        ],
        now: Some("1704067200".into()),
        allow_outbound: vec!["https://idp.example".into()],
        outbound_stubs: vec![
            serde_json::json!({ "url": "https://idp.example/jwks", "body": JWKS }).to_string(),
        ],
        ..CallSetup::default()
    };
    let json = call_json(&jwks_config(302), &es256_request(), &setup);
    assert!(json["decision"]["continue"].is_object(), "{json}");
    assert!(jwks_fetches(&json) >= 1, "{json}");
    // Without the grant, the config is refused (one never loaded with it,
    // so no configured copy is cached).
    let msg = format!(
        "{:#}",
        call(
            Path::new(test_policies::AUTH),
            &jwks_config(303),
            &es256_request(),
            None,
            &CallSetup {
                allow_outbound: vec![],
                ..setup
            },
        )
        .unwrap_err()
    );
    assert!(msg.contains("allow_outbound"), "{msg}");
}

#[test]
fn call_now_sets_the_clock_tokens_are_checked_against() {
    // Expires at 2023-12-31T22:00:00Z (`exp` 1704060000).
    let expired = r#"{"path":"/profile","headers":{"authorization":"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiIsImlhdCI6MTcwMzk4MDgwMCwiZXhwIjoxNzA0MDYwMDAwfQ.y628E3zBbwLNgr78BJrGtxsfSH6e6RIRt4QdlNK9pAk"}}"#;
    let config = r#"{"secret":"Secreto"}"#;
    let json = call_json(config, expired, &CallSetup::default());
    assert_eq!(json["decision"]["respond"]["status"], 401, "{json}");
    let before = CallSetup {
        now: Some("2023-12-31T21:00:00Z".into()),
        ..CallSetup::default()
    };
    let json = call_json(config, expired, &before);
    assert!(json["decision"]["continue"].is_object(), "{json}");
    assert!(
        json.get("outbound_requests").is_none(),
        "no grant, no list: {json}"
    );
}

#[test]
fn call_errors_name_the_flag() {
    for (setup, flag, says) in [
        (
            CallSetup {
                kv: vec!["no-equals-sign".into()],
                ..CallSetup::default()
            },
            "--kv",
            "KEY=VALUE",
        ),
        (
            CallSetup {
                kv: vec![format!("k={}", "v".repeat(2 << 20))],
                ..CallSetup::default()
            },
            "--kv",
            "the store refused it",
        ),
        (
            CallSetup {
                now: Some("tomorrow".into()),
                ..CallSetup::default()
            },
            "--now",
            "RFC 3339",
        ),
        (
            CallSetup {
                allow_outbound: vec!["idp.example".into()],
                ..CallSetup::default()
            },
            "--allow-outbound `idp.example`",
            "",
        ),
        (
            CallSetup {
                outbound_stubs: vec![r#"{"url":"https://a","bogus":1}"#.into()],
                ..CallSetup::default()
            },
            "--outbound-stub",
            "not a stub like",
        ),
    ] {
        let msg = format!(
            "{:#}",
            call(
                Path::new(test_policies::NOOP),
                "{}",
                r#"{"path":"/"}"#,
                None,
                &setup
            )
            .unwrap_err()
        );
        assert!(msg.starts_with(flag), "{flag}: {msg}");
        assert!(msg.contains(says), "{says}: {msg}");
    }
}

/// The files of `plugins-js/template` or `plugins-py/template` that a new
/// project gets: all but what their builds and tests leave, and `wit` (a
/// link to the repository's).
fn template_dir_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let skipped = [
                "node_modules",
                "dist",
                "package-lock.json",
                "wit",
                ".venv",
                "__pycache__",
            ];
            if skipped.contains(&name.as_str()) {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn templates_embed_every_file_of_their_folder() {
    for (lang, dir) in [
        (Lang::Js, "plugins-js/template"),
        (Lang::Python, "plugins-py/template"),
    ] {
        let mut embedded: Vec<String> = new::template_files(lang)
            .into_iter()
            .map(str::to_owned)
            .collect();
        embedded.sort();
        assert_eq!(embedded, template_dir_files(&repo(dir)), "{dir}");
        // The contract they build against is the repository's.
        let wit = std::fs::read_to_string(repo(dir).join("wit/policy.wit")).unwrap();
        assert_eq!(
            wit,
            std::fs::read_to_string(repo("wit/policy.wit")).unwrap()
        );
    }
}

/// Every file of a generated project, by path.
fn generated(dir: &Path) -> std::collections::BTreeMap<String, String> {
    template_dir_files(dir)
        .into_iter()
        .map(|rel| {
            let text = std::fs::read_to_string(dir.join(&rel)).unwrap();
            (rel, text)
        })
        .collect()
}

#[test]
fn new_writes_a_js_package_from_the_template() {
    let scratch = TempDir::new("policy-cli-new-js");
    let dir = scratch.join("my-policy");
    let sidecar = Path::new("/opt/sidecar/bin/sidecar");
    let next = new_policy("my-policy", &dir, Lang::Js, Some(sidecar)).unwrap();
    assert!(
        next.contains("npm install") && next.contains("npm test"),
        "{next}"
    );
    let files = generated(&dir);
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            ".gitignore",
            "README.md",
            "cases.toml",
            "package.json",
            "scripts/cases.js",
            "scripts/fresh.js",
            "src/logic.js",
            "src/policy.js",
            "test/logic.test.js",
        ]
    );
    for (rel, text) in &files {
        assert!(!text.contains("template"), "{rel} still says `template`");
    }
    let package: serde_json::Value = serde_json::from_str(&files["package.json"]).unwrap();
    assert_eq!(package["name"], "my-policy");
    assert_eq!(package["type"], "module");
    assert_eq!(
        package["devDependencies"]["@bytecodealliance/componentize-js"], "0.23.0",
        "pinned exactly"
    );
    let build = package["scripts"]["build"].as_str().unwrap();
    assert!(
        build.contains("--wit wit --world-name policy --out dist/my-policy.wasm"),
        "{build}"
    );
    assert!(!build.contains(" -d "), "default features: {build}");
    assert!(package["scripts"]["pretest"].is_string());
    assert!(
        files["scripts/cases.js"].contains(r#"const GENERATED_BY = "/opt/sidecar/bin/sidecar";"#),
        "the sidecar that made it runs its cases"
    );
    assert!(files["scripts/cases.js"].contains("dist/my-policy.wasm"));
    let wit = std::fs::read_to_string(dir.join("wit/policy.wit")).unwrap();
    assert!(wit.contains(&format!("package {};", sidecar_runtime::bindings::CONTRACT)));
    // Unknown: the tests look for `sidecar` on the PATH.
    let other = scratch.join("other");
    new_policy("other", &other, Lang::Js, None).unwrap();
    let cases = std::fs::read_to_string(other.join("scripts/cases.js")).unwrap();
    assert!(cases.contains("const GENERATED_BY = null;"));
}

#[test]
fn new_writes_a_python_project_with_module_names_from_the_policy_name() {
    let scratch = TempDir::new("policy-cli-new-py");
    let dir = scratch.join("my-policy");
    let sidecar = Path::new("/opt/sidecar/bin/sidecar");
    let next = new_policy("my-policy", &dir, Lang::Python, Some(sidecar)).unwrap();
    assert!(next.contains("pip install -r requirements.txt"), "{next}");
    let files = generated(&dir);
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            ".gitignore",
            "README.md",
            "app.py",
            "cases.toml",
            "my_policy_logic.py",
            "requirements.txt",
            "test_component.py",
            "test_my_policy_logic.py",
        ]
    );
    for (rel, text) in &files {
        assert!(!text.contains("template"), "{rel} still says `template`");
    }
    assert!(files["app.py"].contains("import my_policy_logic\n"));
    assert!(files["app.py"].contains("my_policy_logic.parse_config(config)"));
    assert!(files["test_my_policy_logic.py"].contains("import my_policy_logic\n"));
    assert!(files["requirements.txt"].contains("componentize-py==0.25.1"));
    let test = &files["test_component.py"];
    assert!(test.contains(r#"POLICY = "my-policy""#), "{test}");
    assert!(test.contains(r#"GENERATED_BY = "/opt/sidecar/bin/sidecar""#));
    assert!(test.contains(r#""-d", "wit", "-w", "policy""#));
    assert!(dir.join("wit/policy.wit").exists());
}

/// The `sidecar` binary of this build (beside the test binary's folder):
/// the end-to-end tests create projects with it, as a user would.
fn sidecar_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(format!("sidecar{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: run the tests with --workspace",
        bin.display()
    );
    bin
}

/// Runs `cmd`, failing the test with its output unless it succeeds;
/// returns the output.
fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{log}");
    log
}

#[test]
#[ignore = "needs node, npm and the npm registry; slow: builds a 12 MB component and compiles it once (then the compile cache)"]
fn new_js_project_passes_npm_test() {
    let scratch = TempDir::new("policy-cli-new-js-e2e");
    let dir = scratch.join("require-key");
    run(std::process::Command::new(sidecar_binary())
        .args(["policy", "new", "require-key", "--lang", "js", "--dir"])
        .arg(&dir));
    run(std::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(&dir));
    // No $SIDECAR: the project runs its cases with the sidecar that made it.
    let log = run(std::process::Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env_remove("SIDECAR"));
    assert!(dir.join("dist/require-key.wasm").exists(), "{log}");
    assert!(log.contains("# fail 0"), "node's test runner ran: {log}");
    assert!(log.contains("3 passed, 0 failed"), "the cases ran: {log}");
    // Built once: a second run finds it fresh.
    let again = run(std::process::Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env_remove("SIDECAR"));
    assert!(!again.contains("componentize-js --wit"), "{again}");
}

#[test]
#[ignore = "needs python3 with venv and PyPI; slow: builds an 18 MB component and compiles it once (then the compile cache)"]
fn new_python_project_passes_its_unittests() {
    let scratch = TempDir::new("policy-cli-new-py-e2e");
    let dir = scratch.join("require-key");
    run(std::process::Command::new(sidecar_binary())
        .args(["policy", "new", "require-key", "--lang", "python", "--dir"])
        .arg(&dir));
    run(std::process::Command::new("python3")
        .args(["-m", "venv", ".venv"])
        .current_dir(&dir));
    let python = dir.join(".venv/bin/python");
    run(std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "requirements.txt",
        ])
        .current_dir(&dir));
    let log = run(std::process::Command::new(&python)
        .args(["-m", "unittest", "-v"])
        .current_dir(&dir)
        .env_remove("SIDECAR")
        .env_remove("VIRTUAL_ENV"));
    assert!(
        log.contains("test_cases_pass_on_the_sidecar") && log.contains("3 passed, 0 failed"),
        "the component's cases ran: {log}"
    );
    assert!(
        log.contains("test_a_request_without_the_header_is_refused_with_json"),
        "{log}"
    );
    assert!(log.contains("\nOK"), "{log}");
}
