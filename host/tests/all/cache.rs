//! The cache policy under concurrency: users never see each other's answers.

use crate::support::{Upstream, client, start};

const CACHED: &str = r#"
[[route]]
name = "api"
prefix = "/api"
upstream = "{UPSTREAM}"
rewrite = "/"
policies = ["cache"]

[policy.cache]
wasm = "{CACHE}"
config = { ttl_secs = 60 }
"#;

#[tokio::test]
async fn concurrent_users_of_one_url_each_get_their_own_answer() {
    let upstream = Upstream::start().await;
    let sidecar = start(CACHED, &upstream).await;
    // The upstream echoes the request's headers: each answer shows whose it
    // is. Three waves of 32 at once: misses racing to store, then hits.
    let mut hits = 0;
    for _wave in 0..3 {
        let requests: Vec<_> = (0..32)
            .map(|i| {
                let token = format!("token-of-user-{}", i % 4);
                let url = format!("{}/api/profile", sidecar.base);
                tokio::spawn(async move {
                    let resp = client().get(url).bearer_auth(&token).send().await.unwrap();
                    let cache = resp.headers()["x-cache"].to_str().unwrap().to_owned();
                    let body: serde_json::Value = resp.json().await.unwrap();
                    (token, cache, body)
                })
            })
            .collect();
        for handle in requests {
            let (token, cache, body) = handle.await.unwrap();
            assert_eq!(
                body["headers"]["authorization"],
                format!("Bearer {token}"),
                "{token} got someone else's answer ({cache})"
            );
            hits += usize::from(cache == "hit");
        }
    }
    assert!(hits > 0, "the cache served some of them");
    assert!(
        upstream.hits() >= 4,
        "each user's first request went upstream"
    );
}
