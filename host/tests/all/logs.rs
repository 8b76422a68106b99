//! The `sidecar` binary's own log lines: human or JSON, and the request id
//! on every line about a request.

use std::time::Duration;

use crate::support::{TempDir, client, sidecar_binary};

/// A config with a route whose upstream is down and one whose policy traps:
/// each request logs a line of its own.
fn config() -> String {
    format!(
        r#"
[wasm]
compile_cache = "off"
[reload]
watch = false
[[route]]
name = "down"
prefix = "/down"
upstream = "http://127.0.0.1:9"
[[route]]
name = "boom"
prefix = "/boom"
upstream = "http://127.0.0.1:9"
policies = ["boom"]
[policy.boom]
wasm = "{}"
config = {{ mode = "trap" }}
"#,
        test_policies::HOSTILE
    )
}

/// Runs the binary with `format`, sends one request to each route with its
/// own `x-request-id`, stops it, and returns its stderr.
async fn stderr_of_two_requests(format: &str) -> String {
    let dir = TempDir::new(&format!("logs-{format}"));
    let mut sidecar = sidecar_binary()
        .arg("--log-format")
        .arg(format)
        .env("RUST_LOG", "info")
        .start(dir.path(), &config());
    let base = sidecar.base.clone();
    for (path, id) in [
        ("/down/x", "id-of-the-down-request"),
        ("/boom/x", "id-of-the-trap-request"),
    ] {
        let resp = client()
            .get(format!("{base}{path}"))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_server_error());
        assert_eq!(resp.headers()["x-request-id"], id);
    }
    // SIGTERM: a graceful stop flushes stderr.
    sidecar.terminate(Duration::from_secs(60)).await;
    sidecar.stderr()
}

#[tokio::test]
async fn json_lines_about_a_request_carry_its_id() {
    let err = stderr_of_two_requests("json").await;
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |id: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["span"]["id"] == id).collect()
    };
    // "upstream failed", after the balancer's line ejecting the endpoint.
    let down: Vec<_> = of("id-of-the-down-request")
        .into_iter()
        .filter(|l| l["fields"]["message"] == "upstream failed")
        .collect();
    assert_eq!(down.len(), 1, "{err}");
    assert_eq!(down[0]["level"], "WARN");
    let trap = of("id-of-the-trap-request");
    assert_eq!(trap.len(), 1, "{err}");
    assert_eq!(trap[0]["level"], "ERROR");
    assert!(
        trap[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("trapped"),
        "{err}"
    );
    // No line mentions a request without being in its span.
    for line in &lines {
        let text = line.to_string();
        if text.contains("id-of-the-") {
            assert!(line["span"]["id"].is_string(), "{text}");
        }
    }
}

#[tokio::test]
async fn human_lines_about_a_request_carry_its_id() {
    let err = stderr_of_two_requests("human").await;
    let line = err
        .lines()
        .find(|l| l.contains("upstream failed"))
        .unwrap_or_else(|| panic!("no upstream line in:\n{err}"));
    assert!(
        line.contains("request{id=id-of-the-down-request}"),
        "{line}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("policy failed"))
        .unwrap_or_else(|| panic!("no policy line in:\n{err}"));
    assert!(
        line.contains("request{id=id-of-the-trap-request}"),
        "{line}"
    );
    assert!(!err.contains("{\"timestamp\""), "human format is not JSON");
}
