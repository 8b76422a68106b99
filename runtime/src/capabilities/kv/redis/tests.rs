//! Against a real `redis-server` that each test starts on a free port (and
//! kills when done). Without `redis-server` installed these tests fail: the
//! test command (`scripts/test.sh`) installs it.

use sidecar_testkit::eventually;
use test_policies::redis_server::RedisServer;

use super::*;

/// A store on `server` with the given key prefix.
fn store(server: &RedisServer, prefix: &str, limits: KvLimits) -> RedisKv {
    let settings = RedisSettings {
        url: server.url(),
        // Generous for a loaded CI machine; production uses less.
        timeout: Duration::from_millis(500),
        key_prefix: prefix.to_owned(),
    };
    RedisKv::new(settings, limits).unwrap()
}

#[tokio::test]
async fn set_get_delete_round_trip() {
    let server = RedisServer::start();
    let kv = store(&server, "t:", KvLimits::default());
    assert_eq!(kv.get("p", "k").await, None);
    kv.set("p", "k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("p", "k").await.as_deref(), Some(&b"v"[..]));
    assert!(kv.delete("p", "k").await);
    assert!(!kv.delete("p", "k").await);
    assert_eq!(kv.get("p", "k").await, None);
}

#[tokio::test]
async fn entry_expires_after_its_ttl() {
    let server = RedisServer::start();
    let kv = store(&server, "t:", KvLimits::default());
    let set_at = Instant::now();
    kv.set("p", "k", b"v".to_vec(), Some(Duration::from_millis(200)))
        .await
        .unwrap();
    kv.set("p", "forever", b"f".to_vec(), None).await.unwrap();
    let first = kv.get("p", "k").await;
    if set_at.elapsed() < Duration::from_millis(150) {
        assert_eq!(first.as_deref(), Some(&b"v"[..]), "there before its TTL");
    }
    eventually("gone after its TTL", Duration::from_secs(3), async || {
        kv.get("p", "k").await.is_none()
    })
    .await;
    assert!(set_at.elapsed() >= Duration::from_millis(200));
    assert_eq!(kv.get("p", "forever").await.as_deref(), Some(&b"f"[..]));
}

#[tokio::test]
async fn zero_ttl_is_expired_at_once() {
    let server = RedisServer::start();
    let kv = store(&server, "t:", KvLimits::default());
    kv.set("p", "k", b"v".to_vec(), None).await.unwrap();
    kv.set("p", "k", b"w".to_vec(), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(kv.get("p", "k").await, None);
}

#[tokio::test]
async fn overwriting_a_key_replaces_value_and_ttl() {
    let server = RedisServer::start();
    let kv = store(&server, "t:", KvLimits::default());
    kv.set("p", "k", vec![1], Some(Duration::from_millis(100)))
        .await
        .unwrap();
    kv.set("p", "k", vec![2], None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kv.get("p", "k").await, Some(vec![2]));
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let server = RedisServer::start();
    let kv = store(&server, "t:", KvLimits::default());
    kv.set("a", "k", b"1".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("b", "k").await, None);
    assert!(!kv.delete("b", "k").await);
    assert!(kv.delete("a", "k").await);
    assert_eq!(kv.get("a", "k").await, None);
}

#[tokio::test]
async fn keys_carry_the_prefix_and_the_policy_name() {
    let server = RedisServer::start();
    let one = store(&server, "one:", KvLimits::default());
    let other = store(&server, "other:", KvLimits::default());
    one.set("cache", "k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(other.get("cache", "k").await, None, "prefixes are apart");

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg("one:cache:k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw.as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn refuses_oversized_keys_and_values() {
    let server = RedisServer::start();
    let limits = KvLimits {
        max_key_bytes: 4,
        max_value_bytes: 4,
        ..KvLimits::default()
    };
    let kv = store(&server, "t:", limits);
    assert!(matches!(
        kv.set("p", "too-long", vec![], None).await,
        Err(KvError::TooLarge(_))
    ));
    assert!(matches!(
        kv.set("p", "k", vec![0; 5], None).await,
        Err(KvError::TooLarge(_))
    ));
    assert_eq!(kv.get("p", "k").await, None);
    kv.set("p", "k", vec![0; 4], None).await.unwrap();
}

#[tokio::test]
async fn two_stores_on_one_redis_share_entries() {
    let server = RedisServer::start();
    let a = store(&server, "shared:", KvLimits::default());
    let b = store(&server, "shared:", KvLimits::default());
    a.set(
        "cache",
        "k",
        b"from-a".to_vec(),
        Some(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(b.get("cache", "k").await.as_deref(), Some(&b"from-a"[..]));
    assert!(b.delete("cache", "k").await);
    assert_eq!(a.get("cache", "k").await, None);
}

#[tokio::test]
async fn a_stopped_redis_is_a_miss_and_the_store_recovers_when_it_is_back() {
    let mut server = RedisServer::start();
    let kv = store(&server, "t:", KvLimits::default());
    kv.set("p", "k", b"v".to_vec(), None).await.unwrap();
    server.stop();

    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(kv.get("p", "k").await, None);
        let err = kv.set("p", "k", b"w".to_vec(), None).await.unwrap_err();
        assert!(
            matches!(&err, KvError::Other(m) if m.starts_with("store unavailable")),
            "{err:?}"
        );
        assert!(!kv.delete("p", "k").await);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an outage costs little: {:?} for 60 operations",
        started.elapsed()
    );

    server.restart();
    kv.set("p", "back", b"1".to_vec(), None).await.ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while kv.set("p", "back", b"1".to_vec(), None).await.is_err() {
        assert!(Instant::now() < deadline, "the store reconnects");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kv.get("p", "back").await.as_deref(), Some(&b"1"[..]));
}

#[tokio::test]
async fn no_redis_at_all_is_a_miss() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{port}"),
        ..RedisSettings::default()
    };
    let kv = RedisKv::new(settings, KvLimits::default()).unwrap();
    assert_eq!(kv.get("p", "k").await, None);
    assert!(kv.set("p", "k", vec![1], None).await.is_err());
    assert!(!kv.delete("p", "k").await);
}

#[test]
fn urls_are_checked_without_connecting() {
    assert!(check_url("redis://127.0.0.1:1").is_ok());
    assert!(check_url("redis://user:pw@cache.internal:6380/2").is_ok());
    assert!(check_url("http://127.0.0.1:6379").is_err());
    assert!(check_url("not a url").is_err());
}
