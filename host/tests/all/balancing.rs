//! Several upstream endpoints per route: the load split, ejection of a dead
//! endpoint with no failed request, retries and their budget, active health
//! checks, and reloads that change the endpoints.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sidecar::Sidecar;
use tower::ServiceExt as _;

use crate::support::{Blackhole, Replica, TempDir, client, eventually, refused_addr, serve};

/// A sidecar with one route, `/api` → `upstreams` (rewritten to `/`).
async fn sidecar(upstreams: &[String], route_extra: &str, top: &str) -> (String, Arc<Sidecar>) {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "{top}\n[[route]]\nname = \"api\"\nprefix = \"/api\"\nrewrite = \"/\"\nupstreams = [{}]\n{route_extra}\n",
        list.join(", ")
    );
    let config = sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
    let (base, _, sidecar) = serve(&config).await;
    (base, sidecar)
}

/// `GET path` on the admin router.
async fn admin(sidecar: &Arc<Sidecar>, path: &str) -> String {
    let router = sidecar::admin_router(sidecar::Admin::serving(sidecar.clone()));
    let resp = router
        .oneshot(
            http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The `/upstreams` entry of the endpoint at `url`.
async fn endpoint(sidecar: &Arc<Sidecar>, url: &str) -> serde_json::Value {
    let view: serde_json::Value =
        serde_json::from_str(&admin(sidecar, "/upstreams").await).unwrap();
    view["routes"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == url)
        .unwrap_or_else(|| panic!("{url} not in {view}"))
        .clone()
}

/// How long a wait may take: generous, it is not what is tested.
const WAIT: Duration = Duration::from_secs(10);

/// Which replica answered a GET of `url`.
async fn replica_of(url: &str) -> String {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.headers()["x-replica"].to_str().unwrap().to_owned()
}

fn metric_value(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn round_robin_splits_requests_evenly_across_replicas() {
    let replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let (base, sidecar) = sidecar(&urls, "", "").await;
    for _ in 0..30 {
        replica_of(&format!("{base}/api/x")).await;
    }
    for r in &replicas {
        assert_eq!(r.hits(), 10, "replica {}", r.name);
        assert_eq!(endpoint(&sidecar, &r.url()).await["requests"], 10);
    }
    let metrics = admin(&sidecar, "/metrics").await;
    for r in &replicas {
        let line = format!(
            "sidecar_upstream_requests_total{{route=\"api\",endpoint=\"{}\",outcome=\"ok\"}} 10",
            r.url()
        );
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
        let healthy = format!(
            "sidecar_upstream_endpoint_healthy{{route=\"api\",endpoint=\"{}\"}} 1",
            r.url()
        );
        assert!(metrics.contains(&healthy), "missing `{healthy}`");
    }
}

#[tokio::test]
async fn least_requests_sends_new_requests_away_from_a_busy_replica() {
    let replicas = [Replica::start("a").await, Replica::start("b").await];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let (base, _sidecar) = sidecar(&urls, "balance = \"least-requests\"", "").await;
    // One request held on whichever replica gets it.
    let held = tokio::spawn({
        let url = format!("{base}/api/hold");
        async move { replica_of(&url).await }
    });
    eventually("a request is held", WAIT, || async {
        replicas.iter().map(Replica::holding).sum::<usize>() == 1
    })
    .await;
    let (busy, idle) = if replicas[0].holding() == 1 {
        (&replicas[0], &replicas[1])
    } else {
        (&replicas[1], &replicas[0])
    };
    for _ in 0..10 {
        assert_eq!(replica_of(&format!("{base}/api/x")).await, idle.name);
    }
    assert_eq!(idle.hits(), 10);
    assert_eq!(busy.hits(), 0, "no new request went to the busy replica");
    busy.release();
    assert_eq!(held.await.unwrap(), busy.name);
    // Both idle again: the load is shared.
    for _ in 0..10 {
        replica_of(&format!("{base}/api/x")).await;
    }
    assert!(
        busy.hits() >= 4,
        "busy got {} of 10 once idle",
        busy.hits() - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_is_ejected_with_no_failed_request_and_used_again_once_back() {
    let mut replicas = [
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    ];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let (base, sidecar) = sidecar(
        &urls,
        "[route.health]\neject_after_failures = 2\neject_ms = 300\nmax_eject_ms = 600",
        "",
    )
    .await;

    // 8 clients, GETs back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let url = format!("{base}/api/x");
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::SeqCst) {
                    let resp = http.get(&url).send().await.unwrap();
                    sent.fetch_add(1, Ordering::SeqCst);
                    if resp.status() != 200 {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        failed.lock().unwrap().push(format!("{status} {body}"));
                    }
                }
            })
        })
        .collect();

    eventually("some load went to c", WAIT, || async {
        replicas[2].hits() > 20
    })
    .await;
    let c_url = replicas[2].url();
    replicas[2].stop();
    let before = sent.load(Ordering::SeqCst);
    // Seen ejected in the admin view (it comes back briefly between
    // ejections while it is dead, so poll).
    eventually("c is shown ejected", WAIT, || async {
        endpoint(&sidecar, &c_url).await["healthy"] == false
    })
    .await;
    eventually("load goes on while c is dead", WAIT, || async {
        sent.load(Ordering::SeqCst) > before + 200
    })
    .await;
    let metrics = admin(&sidecar, "/metrics").await;
    let ejections = metric_value(
        &metrics,
        &format!(
            "sidecar_upstream_ejections_total{{route=\"api\",endpoint=\"{c_url}\",reason=\"failures\"}}"
        ),
    );
    assert!(ejections >= 1, "no ejection of c counted:\n{metrics}");
    assert!(
        metric_value(
            &metrics,
            "sidecar_upstream_retries_total{route=\"api\",outcome=\"retried\"}"
        ) >= 1
    );

    // Back on the same port: used again once its ejection is over.
    let c_hits = replicas[2].hits();
    replicas[2].restart().await;
    eventually("c gets traffic again", WAIT, || async {
        replicas[2].hits() > c_hits + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        sent.load(Ordering::SeqCst),
        failed.first()
    );
    assert_eq!(endpoint(&sidecar, &c_url).await["healthy"], true);
}

#[tokio::test]
async fn post_is_never_retried_and_get_is_retried_up_to_the_limit() {
    let dead = Blackhole::start().await;
    let (base, sidecar) = sidecar(&[dead.url()], "retries = 2", "").await;

    let resp = client()
        .post(format!("{base}/api/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable", "{body}");
    assert_eq!(dead.accepted(), 1, "a POST is attempted once");

    let resp = client().get(format!("{base}/api/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        dead.accepted(),
        1 + 3,
        "a GET is attempted once plus 2 retries"
    );

    let metrics = admin(&sidecar, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "sidecar_upstream_retries_total{route=\"api\",outcome=\"retried\"}"
        ),
        2,
        "{metrics}"
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let dead = [Blackhole::start().await, Blackhole::start().await];
    let urls: Vec<String> = dead.iter().map(Blackhole::url).collect();
    // 1 retry a second over 10 s = 10, plus 10% of the requests.
    let (base, sidecar) = sidecar(
        &urls,
        "retries = 2",
        "[proxy]\nretry_budget_percent = 10\nretry_budget_min_per_sec = 1",
    )
    .await;
    let requests = 40;
    for _ in 0..requests {
        let resp = client().get(format!("{base}/api/x")).send().await.unwrap();
        assert_eq!(resp.status(), 502);
    }
    let attempts: usize = dead.iter().map(Blackhole::accepted).sum();
    let retries = attempts - requests;
    // Unbounded, 40 requests would have made 80 retries.
    assert!(
        (10..=10 + requests / 10 + 1).contains(&retries),
        "{retries} retries for {requests} requests"
    );
    let metrics = admin(&sidecar, "/metrics").await;
    let retried = metric_value(
        &metrics,
        "sidecar_upstream_retries_total{route=\"api\",outcome=\"retried\"}",
    );
    let refused = metric_value(
        &metrics,
        "sidecar_upstream_retries_total{route=\"api\",outcome=\"budget_exhausted\"}",
    );
    assert_eq!(retried as usize, retries, "{metrics}");
    assert!(refused > 0, "{metrics}");
}

#[tokio::test]
async fn active_health_check_ejects_a_dead_endpoint_and_readmits_it_when_it_answers() {
    let mut replicas = [Replica::start("a").await, Replica::start("b").await];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    // Ejections last a minute: only a health check can bring b back.
    let (base, sidecar) = sidecar(
        &urls,
        "[route.health]\neject_ms = 60000\npath = \"/health\"\ninterval_ms = 50\ntimeout_ms = 500",
        "",
    )
    .await;
    eventually("both are probed", WAIT, || async {
        replicas.iter().all(|r| r.health_hits() > 0)
    })
    .await;
    let b_url = replicas[1].url();
    replicas[1].stop();
    // No traffic at all: the check alone finds out.
    eventually("b is ejected", WAIT, || async {
        endpoint(&sidecar, &b_url).await["healthy"] == false
    })
    .await;
    for _ in 0..6 {
        assert_eq!(replica_of(&format!("{base}/api/x")).await, "a");
    }
    let metrics = admin(&sidecar, "/metrics").await;
    assert!(metrics.contains(&format!(
        "sidecar_upstream_endpoint_healthy{{route=\"api\",endpoint=\"{b_url}\"}} 0"
    )));
    assert!(metrics.contains(&format!(
        "sidecar_upstream_ejections_total{{route=\"api\",endpoint=\"{b_url}\",reason=\"health_check\"}} 1"
    )));

    replicas[1].restart().await;
    eventually("b is back", WAIT, || async {
        endpoint(&sidecar, &b_url).await["healthy"] == true
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(replica_of(&format!("{base}/api/x")).await);
    }
    assert_eq!(
        answers.iter().filter(|r| *r == "b").count(),
        3,
        "{answers:?}"
    );
}

#[tokio::test]
async fn reload_applies_new_endpoints_and_ends_the_old_health_checks() {
    let old = Replica::start("old").await;
    let new = [Replica::start("b").await, Replica::start("c").await];
    let dir = TempDir::new("balancing");
    let file = dir.join("sidecar.toml");
    let route = |upstreams: &str, extra: &str| {
        format!(
            "[[route]]\nname = \"api\"\nprefix = \"/api\"\nrewrite = \"/\"\nupstreams = [{upstreams}]\n{extra}\n"
        )
    };
    std::fs::write(
        &file,
        route(
            &format!("\"{}\"", old.url()),
            "[route.health]\npath = \"/health\"\ninterval_ms = 50",
        ),
    )
    .unwrap();
    let config = sidecar::config::load(&file).unwrap();
    let (base, _, sidecar) = serve(&config).await;
    assert_eq!(replica_of(&format!("{base}/api/x")).await, "old");
    eventually("the old endpoint is probed", WAIT, || async {
        old.health_hits() > 0
    })
    .await;

    std::fs::write(
        &file,
        route(&format!("\"{}\", \"{}\"", new[0].url(), new[1].url()), ""),
    )
    .unwrap();
    sidecar.reload().await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(replica_of(&format!("{base}/api/x")).await);
    }
    answers.sort();
    assert_eq!(answers, ["b", "b", "c", "c"]);
    assert_eq!(old.hits(), 1);
    let view: serde_json::Value =
        serde_json::from_str(&admin(&sidecar, "/upstreams").await).unwrap();
    let listed: Vec<&str> = view["routes"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [new[0].url(), new[1].url()]);

    // The old gateway's health-check task has ended: no more probes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probes = old.health_hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(old.health_hits(), probes, "the old health checks go on");
}

#[tokio::test]
async fn a_post_is_retried_when_no_connection_could_be_made() {
    // A port nothing listens on: the connection is refused, so the POST was
    // never sent and another endpoint may take it.
    let refused = format!("http://{}", refused_addr());
    let alive = Replica::start("alive").await;
    let (base, _sidecar) = sidecar(&[refused, alive.url()], "retries = 1", "").await;
    for _ in 0..4 {
        let resp = client()
            .post(format!("{base}/api/x"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-replica"], "alive");
    }
    assert_eq!(alive.hits(), 4, "each POST reached the live replica once");
}
