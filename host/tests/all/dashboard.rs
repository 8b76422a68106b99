//! The dashboard (`GET /` on the admin listener) in a real headless browser:
//! Debian's `chromium` loads it against a running sidecar, runs its script,
//! and the test reads what it rendered (`--dump-dom`). What it rendered and
//! a screenshot are kept in `target/test-artifacts/dashboard.{html,png}`.
//!
//! Chromium is found at `$SIDECAR_TEST_CHROMIUM`, else `/usr/bin/chromium`
//! (`scripts/test.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sidecar::Sidecar;
use sidecar::{Admin, admin_router};
use tokio::net::TcpListener;

use crate::support::{Blackhole, TempDir, Upstream, client, get_json, serve};

const CONFIG: &str = r#"
[[route]]
name = "orders"
prefix = "/api/orders"
upstreams = ["{UPSTREAM}", "{DEAD}"]
policies = ["tagger", "stamp"]
[route.health]
eject_after_failures = 1
eject_ms = 120000

[[route]]
name = "private"
prefix = "/private"
upstream = "{UPSTREAM}"
policies = ["bouncer"]

[[route]]
name = "legacy"
prefix = "/legacy"
upstream = "{UPSTREAM}"
policies = ["boom"]

[policy.tagger]
wasm = "{TAG}"
config = { name = "t" }
[policy.stamp]
wasm = "{TAG}"
config = { name = "s" }
[policy.bouncer]
wasm = "{TAG}"
config = { name = "b", respond = 403 }
[policy.boom]
wasm = "{HOSTILE}"
config = { mode = "trap" }
"#;

/// A sidecar with three routes (one with a dead endpoint, now ejected), some
/// traffic through each: the sidecar, its URL and its admin listener's.
async fn busy_sidecar(upstream: &Upstream, dead: &Blackhole) -> (Arc<Sidecar>, String, String) {
    let text = CONFIG
        .replace("{UPSTREAM}", &upstream.url())
        .replace("{DEAD}", &dead.url())
        .replace("{TAG}", test_policies::TAG)
        .replace("{HOSTILE}", test_policies::HOSTILE);
    let config = sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
    let (base, _, sidecar) = serve(&config).await;
    let c = client();
    for (path, times) in [
        ("/api/orders/1", 24),
        ("/private/x", 5),
        ("/legacy/x", 3),
        ("/nowhere", 2),
    ] {
        for _ in 0..times {
            c.get(format!("{base}{path}")).send().await.unwrap();
        }
    }
    let admin = listen(admin_router(Admin::serving(sidecar.clone()))).await;
    (sidecar, base, admin)
}

async fn listen(router: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn chromium() -> PathBuf {
    std::env::var_os("SIDECAR_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Where tests keep what a person may want to look at afterwards.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args`, a fresh profile, nothing
/// fetched but the page, and `virtual_ms` of virtual time for the page's
/// script (a poll every 2 s of it); its stdout. Off the runtime's thread:
/// the sidecar keeps answering.
async fn chromium_on(url: &str, virtual_ms: u32, args: &[&str]) -> String {
    let profile = TempDir::new("dashboard");
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--virtual-time-budget={virtual_ms}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (install Debian's chromium, or set SIDECAR_TEST_CHROMIUM)",
                chromium().display()
            )
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    drop(profile);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The rendered DOM of the page at `url`.
async fn rendered(url: &str) -> String {
    let dom = chromium_on(url, 5000, &["--dump-dom"]).await;
    assert!(dom.contains("</html>"), "no page:\n{dom}");
    dom
}

/// The HTML from the tag holding `marker` up to the next `next` (or the
/// end): one route's card, say.
fn section<'a>(dom: &'a str, marker: &str, next: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = dom[at + marker.len()..]
        .find(next)
        .map_or(dom.len(), |i| at + marker.len() + i);
    &dom[start..end]
}

/// The opening tag around `marker`.
fn tag_of<'a>(dom: &'a str, marker: &str) -> &'a str {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

fn position(html: &str, needle: &str) -> usize {
    html.find(needle)
        .unwrap_or_else(|| panic!("no `{needle}` in:\n{html}"))
}

#[tokio::test]
#[ignore = "needs chromium (scripts/test.sh installs it)"]
async fn dashboard_renders_routes_chains_traffic_and_upstream_health_in_a_browser() {
    let upstream = Upstream::start().await;
    let dead = Blackhole::start().await;
    let (sidecar, base, admin) = busy_sidecar(&upstream, &dead).await;
    // The dead endpoint failed once and is out of rotation (for 2 minutes).
    let view = sidecar.gateway().upstreams();
    let orders_view = view.iter().find(|u| u.route == "orders").unwrap();
    let dead_view = orders_view
        .endpoints
        .iter()
        .find(|e| e.url.contains(&dead.addr.to_string()))
        .unwrap_or_else(|| panic!("{view:?}"));
    assert!(!dead_view.healthy, "{view:?}");

    let dom = rendered(&format!("{admin}/")).await;
    std::fs::write(artifacts().join("dashboard.html"), &dom).unwrap();

    assert!(
        tag_of(&dom, r#"id="state""#).contains(r#"data-state="ready""#),
        "{dom}"
    );
    assert!(
        tag_of(&dom, r#"id="banner""#).contains("hidden"),
        "no error shown:\n{dom}"
    );
    let orders = section(&dom, r#"data-route="orders""#, "data-route=");
    let requests: u64 = tag_of(orders, r#"data-route="orders""#)
        .split(r#"data-requests=""#)
        .nth(1)
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {orders}"));
    assert_eq!(requests, 24, "{orders}");
    // The chain in its order, not the alphabet's.
    assert!(
        position(orders, r#"data-policy="tagger""#) < position(orders, r#"data-policy="stamp""#),
        "{orders}"
    );
    for (url, health) in [(upstream.url(), "healthy"), (dead.url(), "ejected")] {
        assert!(
            tag_of(orders, &format!(r#"data-endpoint="{url}""#))
                .contains(&format!(r#"data-health="{health}""#)),
            "{url} {health}: {orders}"
        );
    }
    let private = section(&dom, r#"data-route="private""#, "data-route=");
    assert!(private.contains(r#"data-policy="bouncer""#), "{private}");
    // The trapping policy is marked as failing, with its failures counted.
    let legacy = section(&dom, r#"data-route="legacy""#, "data-route=");
    assert!(
        tag_of(legacy, r#"data-policy="boom""#).contains("failing"),
        "{legacy}"
    );
    assert!(legacy.contains(">3 failed<"), "{legacy}");
    let policies = section(&dom, r#"id="policies""#, "</table>");
    for name in ["tagger", "stamp", "bouncer", "boom"] {
        assert!(
            policies.contains(&format!(r#"data-policy-row="{name}""#)),
            "{name}: {policies}"
        );
    }
    assert!(
        policies.contains("trapped on purpose"),
        "the last failure: {policies}"
    );

    // A screenshot for people, taken while traffic flows:
    // target/test-artifacts/dashboard.png.
    let base = base.clone();
    let traffic = tokio::spawn(async move {
        let c = client();
        for i in 0u32.. {
            let path = match i % 20 {
                0 => "/private/x",
                7 if i % 60 == 7 => "/legacy/x",
                _ => "/api/orders/1",
            };
            let _ = c.get(format!("{base}{path}")).send().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let png = artifacts().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    // More polls than the DOM check's: sparklines with a past.
    chromium_on(
        &format!("{admin}/"),
        30_000,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,1000",
        ],
    )
    .await;
    traffic.abort();
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 20_000, "a blank page? {} bytes", bytes.len());
    eprintln!("screenshot: {}", png.display());
}

#[tokio::test]
#[ignore = "needs chromium (scripts/test.sh installs it)"]
async fn dashboard_says_so_when_an_admin_endpoint_fails_or_policies_are_loading() {
    let upstream = Upstream::start().await;
    let dead = Blackhole::start().await;
    let (sidecar, _, _) = busy_sidecar(&upstream, &dead).await;
    // The admin router behind one endpoint that fails.
    let failing = axum::Router::new()
        .route(
            "/stats",
            axum::routing::get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .fallback_service(admin_router(Admin::serving(sidecar)));
    let admin = listen(failing).await;
    let dom = rendered(&format!("{admin}/")).await;
    let banner = section(&dom, r#"id="banner""#, "</div>");
    assert!(!tag_of(&dom, r#"id="banner""#).contains("hidden"), "{dom}");
    assert!(
        banner.contains("Cannot read the admin endpoints") && banner.contains("500"),
        "{banner}"
    );
    assert!(
        tag_of(&dom, r#"id="state""#).contains(r#"data-state="unreachable""#),
        "{dom}"
    );

    // Still loading: said plainly, no error.
    let admin = listen(admin_router(Admin::loading())).await;
    let dom = rendered(&format!("{admin}/")).await;
    assert!(
        tag_of(&dom, r#"id="state""#).contains(r#"data-state="loading""#),
        "{dom}"
    );
    assert!(dom.contains("Policies are loading"), "{dom}");
    assert!(tag_of(&dom, r#"id="banner""#).contains("hidden"), "{dom}");
}

#[tokio::test]
async fn serves_one_self_contained_page_with_a_strict_content_security_policy() {
    let upstream = Upstream::start().await;
    let dead = Blackhole::start().await;
    let (_, _, admin) = busy_sidecar(&upstream, &dead).await;
    let resp = client().get(format!("{admin}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-store");
    let csp = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let page = resp.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");

    let (status, stats) = get_json(&format!("{admin}/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["routes"]["orders"]["requests"], 24, "{stats}");
    assert_eq!(stats["routes"]["private"]["status"]["4xx"], 5, "{stats}");
    assert_eq!(stats["routes"]["(none)"]["requests"], 2, "{stats}");
    assert_eq!(stats["policies"]["bouncer"]["denials"], 5, "{stats}");
    assert_eq!(stats["policies"]["boom"]["failures"], 3, "{stats}");
    assert!(
        stats["routes"]["orders"]["latency"]["p99_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(stats["at_unix_ms"].as_u64().unwrap() > 0);
}
