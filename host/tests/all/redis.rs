//! The cache policy on the Redis backend (`[kv] backend = "redis"`), against
//! a real `redis-server` each test starts on a free port and kills when done.
//! Without `redis-server` installed these tests fail: `scripts/test.sh`
//! installs it.

use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sidecar::Sidecar;
use sidecar::capabilities::{MemorySink, Services};
use tokio::net::TcpListener;

use test_policies::redis_server::RedisServer;

use crate::support::{Upstream, client};

/// A sidecar whose cache policy stores in `redis`, built the way `sidecar
/// run` builds it (`Services::with_kv`). The policy fails closed: a store
/// error that reached the request would be a 503.
async fn sidecar(redis: &RedisServer, upstream: &Upstream) -> String {
    let text = format!(
        r#"
[kv]
backend = "redis"
url = "redis://127.0.0.1:{port}"
timeout_ms = 500                 # generous: CI machines are busy
key_prefix = "test:"

[[route]]
name = "api"
prefix = "/api"
upstream = "{upstream}"
rewrite = "/"
policies = ["cache"]

[policy.cache]
wasm = "{cache}"
failure = "closed"
deadline_ms = 2000
config = {{ ttl_secs = 60 }}
"#,
        port = redis.port(),
        upstream = upstream.url(),
        cache = test_policies::CACHE,
    );
    let config = sidecar::config::parse(&text, Path::new("/test/sidecar.toml"), &|_| None).unwrap();
    let mut services = Services::with_kv(&config.kv).unwrap();
    services.log = Arc::new(MemorySink::default());
    let sidecar = Arc::new(Sidecar::new(&config, services).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        sidecar
            .serve(listener, std::future::pending())
            .await
            .unwrap()
    });
    base
}

/// Status and `x-cache` of a GET.
async fn get(url: &str) -> (u16, String) {
    let resp = client().get(url).send().await.unwrap();
    let cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status().as_u16(), cache)
}

#[tokio::test]
async fn cache_on_redis_misses_then_hits() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let base = sidecar(&redis, &upstream).await;
    assert_eq!(get(&format!("{base}/api/a")).await, (200, "miss".into()));
    assert_eq!(get(&format!("{base}/api/a")).await, (200, "hit".into()));
    assert_eq!(get(&format!("{base}/api/b")).await, (200, "miss".into()));
    assert_eq!(upstream.hits(), 2, "the hit never went upstream");
}

#[tokio::test]
async fn two_sidecars_on_one_redis_share_cached_responses() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let a = sidecar(&redis, &upstream).await;
    let b = sidecar(&redis, &upstream).await;
    assert_eq!(get(&format!("{a}/api/shared")).await, (200, "miss".into()));
    assert_eq!(
        get(&format!("{b}/api/shared")).await,
        (200, "hit".into()),
        "cached through A, served by B"
    );
    assert_eq!(upstream.hits(), 1);
    assert_eq!(get(&format!("{b}/api/other")).await, (200, "miss".into()));
    assert_eq!(get(&format!("{a}/api/other")).await, (200, "hit".into()));
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn redis_stopped_mid_run_degrades_to_misses_and_comes_back() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let base = sidecar(&redis, &upstream).await;
    assert_eq!(get(&format!("{base}/api/x")).await, (200, "miss".into()));
    assert_eq!(get(&format!("{base}/api/x")).await, (200, "hit".into()));

    redis.stop();
    let started = Instant::now();
    for i in 0..20 {
        let (status, cache) = get(&format!("{base}/api/x")).await;
        assert_eq!(
            (status, cache.as_str()),
            (200, "miss"),
            "request {i} with Redis down"
        );
    }
    assert_eq!(upstream.hits(), 21, "every request went upstream");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an outage does not stall requests: {:?} for 20",
        started.elapsed()
    );

    // Back (empty): entries are stored and served again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, cache) = get(&format!("{base}/api/after")).await;
        assert_eq!(status, 200);
        if cache == "hit" {
            break;
        }
        assert!(Instant::now() < deadline, "the cache works again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
