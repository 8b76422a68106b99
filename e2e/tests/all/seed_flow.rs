use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sidecar::Sidecar;
use sidecar::capabilities::{
    FieldValue, KvLimits, KvStore, MemoryKv, MemorySink, NoNetwork, Outbound, RedisKv,
    RedisSettings, Services, SystemClock,
};
use test_policies::redis_server::RedisServer;
use tokio::net::TcpListener;

pub struct Trio {
    pub main: String,
    pub sidecar: String,
    pub user_service_hits: Arc<AtomicUsize>,
    pub logs: Arc<MemorySink>,
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Starts the three services, the sidecar with `config/<config>` as shipped
/// (only its ports changed).
pub async fn start_trio(config: &str) -> Trio {
    let kv = Arc::new(MemoryKv::new(Arc::new(SystemClock), KvLimits::default()));
    start_trio_on(config, kv).await
}

/// The trio with the sidecar's kv store (the cache's storage) of choice.
pub async fn start_trio_on(config: &str, kv: Arc<dyn KvStore>) -> Trio {
    start_trio_with(config, kv, false).await
}

/// The trio; with `v01`, the sidecar runs the committed 0.1.0 builds of
/// the demo's policies instead of the ones just built.
async fn start_trio_with(config: &str, kv: Arc<dyn KvStore>, v01: bool) -> Trio {
    // user-service, counting what reaches it.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let users =
        user_service::app(user_service::Config::from_env()).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ));
    let (l, user_addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, users).await.unwrap() });

    // The sidecar, from config/demo.toml.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(config);
    let mut text = std::fs::read_to_string(&demo)
        .unwrap()
        .replace("127.0.0.1:3002", &user_addr);
    if v01 {
        for (stem, path) in [
            ("logging", test_policies::V01_LOGGING),
            ("auth", test_policies::V01_AUTH),
            ("cache", test_policies::V01_CACHE),
        ] {
            text = text.replace(
                &format!("../plugins/target/wasm32-wasip2/release/{stem}.wasm"),
                path,
            );
        }
    }
    let config = sidecar::config::parse(&text, &demo, &|_| None).unwrap();
    // Make sure the demo config's policies are the ones meant.
    let auth = if v01 {
        test_policies::V01_AUTH
    } else {
        test_policies::AUTH
    };
    assert_eq!(
        config.policies["auth"].wasm.canonicalize().unwrap(),
        Path::new(auth).canonicalize().unwrap()
    );
    let logs = Arc::new(MemorySink::default());
    let services = Services {
        kv,
        clock: Arc::new(SystemClock),
        log: logs.clone(),
        // The sidecar plugs in its own client.
        outbound: Outbound::new(Arc::new(NoNetwork), Arc::new(SystemClock)),
    };
    let sidecar = Arc::new(Sidecar::new(&config, services).await.unwrap());
    let (l, sidecar_addr) = listener().await;
    tokio::spawn(async move { sidecar.serve(l, std::future::pending()).await.unwrap() });

    // main-service, reaching user-service only through the sidecar.
    let main_config = main_service::Config {
        sidecar_url: format!("http://{sidecar_addr}"),
        timeout: Duration::from_secs(10),
    };
    let (l, main_addr) = listener().await;
    tokio::spawn(async move {
        main_service::serve(l, main_config, std::future::pending())
            .await
            .unwrap()
    });

    Trio {
        main: format!("http://{main_addr}"),
        sidecar: format!("http://{sidecar_addr}"),
        user_service_hits: hits,
        logs,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn login(trio: &Trio, user: &str, password: &str) -> (u16, Value) {
    let resp = client()
        .post(format!("{}/user/login", trio.main))
        .header("content-type", "application/json")
        .body(json!({ "username": user, "password": password }).to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

pub async fn profile(trio: &Trio, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = client().get(format!("{}/user/profile", trio.main));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let cache = resp
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), cache, resp.json().await.unwrap())
}

#[tokio::test]
async fn seed_flow_login_profile_denial_cache_and_logs() {
    seed_flow(&start_trio("demo.toml").await).await;
}

/// The same flow, cache included, with the store on a real Redis (what
/// replicas share with `[kv] backend = "redis"`).
#[tokio::test]
async fn seed_flow_on_the_committed_0_1_0_policies() {
    let kv = Arc::new(sidecar::capabilities::MemoryKv::new(
        Arc::new(SystemClock),
        sidecar::capabilities::KvLimits::default(),
    ));
    seed_flow(&start_trio_with("demo.toml", kv, true).await).await;
}

#[tokio::test]
async fn seed_flow_with_the_cache_on_redis() {
    let redis = RedisServer::start();
    let settings = RedisSettings {
        url: redis.url(),
        // Generous for a loaded CI machine; the default is 20 ms.
        timeout: Duration::from_millis(500),
        ..RedisSettings::default()
    };
    let kv = Arc::new(RedisKv::new(settings, KvLimits::default()).unwrap());
    seed_flow(&start_trio_on("demo.toml", kv).await).await;
}

async fn seed_flow(trio: &Trio) {
    // The seed's first command: login → 201 with a token.
    let (status, body) = login(trio, "admin", "password").await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("a token").to_owned();
    assert_eq!(trio.user_service_hits.load(Ordering::SeqCst), 1);

    // The seed's second command: profile with the token → 200.
    let (status, cache, body) = profile(trio, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "profile": { "name": "Admin User", "email": "admin@example.com" } })
    );
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(trio.user_service_hits.load(Ordering::SeqCst), 2);

    // Without the token: 401 from the auth policy; user-service never sees it.
    let (status, _, body) = profile(trio, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "missing_token");
    // A tampered token: 401 too.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _, _) = profile(trio, Some(&tampered)).await;
    assert_eq!(status, 401);
    assert_eq!(
        trio.user_service_hits.load(Ordering::SeqCst),
        2,
        "denied requests stop at the sidecar"
    );

    // The second profile read is served from the cache.
    let (status, cache, body) = profile(trio, Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!(body["profile"]["name"], "Admin User");
    assert_eq!(
        trio.user_service_hits.load(Ordering::SeqCst),
        2,
        "cache hit never reaches user-service"
    );

    // Another user gets their own profile, never admin's cached one.
    let (status, body) = login(trio, "alice", "wonderland").await;
    assert_eq!(status, 201);
    let alice = body["token"].as_str().unwrap().to_owned();
    let (status, cache, body) = profile(trio, Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body["profile"]["name"], "Alice Liddell");

    // Wrong password: the upstream's 401 passes through.
    let (status, body) = login(trio, "admin", "nope").await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "invalid_credentials");

    // One access log line per request that went through the sidecar's
    // user-service route (3 logins, 5 profile reads), in order, each with
    // its request id and the status the sidecar answered.
    let lines = trio
        .logs
        .wait_for("access", 8, Duration::from_secs(5))
        .await;
    let statuses: Vec<FieldValue> = lines
        .iter()
        .filter_map(|l| l.field("status").cloned())
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 401, 401, 200, 200, 200, 401].map(FieldValue::Int),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.request_id.is_empty() && l.route.as_ref() == "user-service")
    );
    let users: Vec<Option<&FieldValue>> = lines.iter().map(|l| l.field("user")).collect();
    assert_eq!(
        users[1],
        Some(&FieldValue::Str("admin".into())),
        "verified user logged"
    );
    // Secrets never reach the log.
    let all = format!("{:?}", trio.logs.records());
    assert!(!all.contains(&token), "token logged");
    assert!(!all.contains("\"password\""), "password logged");
}

#[tokio::test]
async fn hello_posts_to_monitor_and_the_sidecar_logs_it() {
    let trio = start_trio("demo.toml").await;
    let resp = client()
        .get(format!("{}/hello", trio.main))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "Hello from Main Microservice!");
    let monitor: Vec<_> = trio
        .logs
        .records()
        .into_iter()
        .filter(|r| r.message == "monitor")
        .collect();
    assert_eq!(monitor.len(), 1);
    assert!(format!("{:?}", monitor[0].fields).contains("Hello from Main Microservice!"));
    // And directly, as the seed's sidecar answers it.
    let resp = client()
        .post(format!("{}/monitor", trio.sidecar))
        .header("content-type", "application/json")
        .body(r#"{"event":"x","password":"hunter2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "Request logged by Sidecar!");
    assert!(
        !format!("{:?}", trio.logs.records()).contains("hunter2"),
        "password field redacted"
    );
}
