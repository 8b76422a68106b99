//! The auth policy against a live identity provider: keys made by
//! `cryptography`, tokens signed by PyJWT, the JWKS fetched by the sidecar
//! over HTTP (`host/tests/clients/idp.py`). Ignored unless the Python peers
//! are installed (`SIDECAR_TEST_PYTHON`, set by `scripts/test.sh`, which runs
//! them).

use std::time::{Duration, Instant};

use crate::support::{PyServer, Running, TempDir, Upstream, client, start};

const ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A running IdP and a sidecar whose auth policy trusts it.
struct Setup {
    idp: PyServer,
    sidecar: Running,
    _upstream: Upstream,
}

impl Setup {
    async fn start(idp_args: &[&str], extra_config: &str) -> Self {
        let idp = PyServer::start_with("idp.py", idp_args);
        let origin = format!("http://127.0.0.1:{}", idp.port);
        let upstream = Upstream::start().await;
        let toml = format!(
            r#"
[[route]]
prefix = "/api"
upstream = "{{UPSTREAM}}"
policies = ["auth"]

[policy.auth]
wasm = "{{AUTH}}"
allow_outbound = ["{origin}"]
# A first fetch on a loaded CI machine may take more than the default 50 ms.
deadline_ms = 2000
config = {{ issuer = "{origin}", audience = "api", jwks_url = "{origin}/jwks", jwks_refresh_secs = 1{extra_config} }}
"#
        );
        let sidecar = start(&toml, &upstream).await;
        Self {
            idp,
            sidecar,
            _upstream: upstream,
        }
    }

    fn idp_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.idp.port)
    }

    /// A token from the IdP; `query` as `/token` takes it.
    async fn token(&self, query: &str) -> String {
        get_text(&self.idp_url(&format!("/token?{query}"))).await
    }

    /// The status of a request through the sidecar with `token`, and the
    /// subject the upstream saw.
    async fn call(&self, token: &str) -> (u16, Option<String>, String) {
        call_api(&self.sidecar.base, token).await
    }

    async fn jwks_fetches(&self) -> u64 {
        jwks_fetches(self.idp.port).await
    }
}

async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `GET {base}/api/me` with `token`: the status, the subject the upstream
/// saw, and the body.
async fn call_api(base: &str, token: &str) -> (u16, Option<String>, String) {
    let resp = client()
        .get(format!("{base}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let user = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v["headers"]["x-authenticated-user"]
                .as_str()
                .map(str::to_owned)
        });
    (status, user, text)
}

/// How many times the IdP on `port` served its JWKS.
async fn jwks_fetches(port: u16) -> u64 {
    let stats: serde_json::Value = client()
        .get(format!("http://127.0.0.1:{port}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["jwks"].as_u64().unwrap()
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn accepts_tokens_of_each_algorithm_from_a_live_jwks() {
    let s = Setup::start(&[], "").await;
    for alg in ALGS {
        let token = s.token(&format!("alg={alg}&sub=user-{alg}&aud=api")).await;
        let (status, user, body) = s.call(&token).await;
        assert_eq!(status, 200, "{alg}: {body}");
        assert_eq!(
            user.as_deref(),
            Some(format!("user-{alg}").as_str()),
            "{alg}"
        );
    }
    // The key set was fetched at load, not per request.
    assert!(
        s.jwks_fetches().await <= 2,
        "{} fetches",
        s.jwks_fetches().await
    );
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn refuses_wrong_issuer_audience_expired_and_not_yet_valid_tokens() {
    let s = Setup::start(&[], "").await;
    for (query, code) in [
        (
            "alg=RS256&aud=api&iss=https://other.example",
            "wrong_issuer",
        ),
        ("alg=ES256&aud=other", "wrong_audience"),
        ("alg=RS256&aud=api&exp_in=-600", "token_expired"),
        ("alg=EdDSA&aud=api&nbf_in=600", "token_not_yet_valid"),
    ] {
        let token = s.token(query).await;
        let (status, _, body) = s.call(&token).await;
        assert_eq!(status, 401, "{query}: {body}");
        assert!(body.contains(code), "{query}: {body}");
    }
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn refuses_the_rsa_public_key_used_as_an_hs256_secret() {
    let s = Setup::start(&[], "").await;
    let token = s.token("hs256_with_public_key=1&aud=api").await;
    let (status, user, body) = s.call(&token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(user, None);
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn ignores_jku_and_embedded_keys_and_never_contacts_the_jku() {
    let s = Setup::start(&[], "").await;
    let attacker = PyServer::start_with("idp.py", &[]);
    let jku = format!("http://127.0.0.1:{}/jwks", attacker.port);
    // A kid only the attacker's set has, and its jku: refused.
    let token = s
        .token(&format!("alg=RS256&aud=api&kid=attacker-key&jku={jku}"))
        .await;
    let (status, _, body) = s.call(&token).await;
    assert_eq!(status, 401, "{body}");
    // A token signed by a key it carries itself (`jwk`): refused.
    let token = s.token("alg=ES256&aud=api&embed_jwk=1").await;
    let (status, _, body) = s.call(&token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(jwks_fetches(attacker.port).await, 0, "the jku was fetched");
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn accepts_a_rotated_key_within_seconds() {
    let s = Setup::start(&[], "").await;
    let before = s.token("alg=ES256&aud=api").await;
    assert_eq!(s.call(&before).await.0, 200);
    client().post(s.idp_url("/rotate")).send().await.unwrap();
    let after = s.token("alg=ES256&aud=api&sub=rotated").await;
    let started = Instant::now();
    loop {
        let (status, user, body) = s.call(&after).await;
        if status == 200 {
            assert_eq!(user.as_deref(), Some("rotated"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new key was not accepted within 5 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old key is still published: its tokens still pass.
    assert_eq!(s.call(&before).await.0, 200);
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn a_storm_of_unknown_kids_fetches_at_most_once_per_interval() {
    let s = Setup::start(&[], "").await;
    let fetched = s.jwks_fetches().await;
    let token = s.token("alg=RS256&aud=api&kid=no-such-key").await;
    for _ in 0..30 {
        assert_eq!(s.call(&token).await.0, 401);
    }
    // `jwks_refresh_secs = 1`: the 30 requests span at most a few intervals.
    let more = s.jwks_fetches().await - fetched;
    assert!(more <= 3, "{more} fetches for 30 unknown kids");
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn keeps_serving_the_last_good_keys_when_the_jwks_server_stops() {
    let mut s = Setup::start(&["--max-age", "1"], ", jwks_max_age_secs = 1").await;
    let token = s.token("alg=RS256&aud=api&sub=steady").await;
    assert_eq!(s.call(&token).await.0, 200);
    s.idp.stop();
    // Past the key set's age: every refresh now fails, the keys stay.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for _ in 0..3 {
        let (status, user, body) = s.call(&token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(user.as_deref(), Some("steady"));
    }
    assert!(
        s.sidecar
            .logs
            .records()
            .iter()
            .any(|r| r.level >= sidecar::capabilities::Level::Warn && r.policy.as_ref() == "auth"),
        "the failed refresh was not logged"
    );
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn keeps_the_last_good_keys_when_the_jwks_turns_to_garbage() {
    let s = Setup::start(&["--max-age", "1"], ", jwks_max_age_secs = 1").await;
    let token = s.token("alg=PS256&aud=api").await;
    assert_eq!(s.call(&token).await.0, 200);
    client()
        .post(s.idp_url("/garbage?on=1"))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for _ in 0..3 {
        assert_eq!(s.call(&token).await.0, 200);
    }
}

#[tokio::test]
#[ignore = "needs the Python peers: run through scripts/test.sh"]
async fn reads_a_jwks_file_and_takes_a_new_one_on_reload() {
    let idp = PyServer::start_with("idp.py", &[]);
    let origin = format!("http://127.0.0.1:{}", idp.port);
    let dir = TempDir::new("jwks-file");
    std::fs::write(
        dir.join("jwks.json"),
        get_text(&format!("{origin}/jwks")).await,
    )
    .unwrap();
    let upstream = Upstream::start().await;
    // No `allow_outbound`: the sidecar reads the file, the policy calls out
    // to nothing.
    std::fs::write(
        dir.join("sidecar.toml"),
        format!(
            r#"
[[route]]
prefix = "/api"
upstream = "{}"
policies = ["auth"]

[policy.auth]
wasm = "{}"
config = {{ issuer = "{origin}", audience = "api", jwks = "${{file:jwks.json}}" }}
"#,
            upstream.url(),
            test_policies::AUTH
        ),
    )
    .unwrap();
    let config = sidecar::config::load(&dir.join("sidecar.toml")).unwrap();
    let (base, _logs, sidecar) = crate::support::serve(&config).await;
    let token = get_text(&format!("{origin}/token?alg=ES256&aud=api")).await;
    assert_eq!(call_api(&base, &token).await.0, 200);
    // The IdP rotates; the file still holds the old set.
    client()
        .post(format!("{origin}/rotate?drop_old=1"))
        .send()
        .await
        .unwrap();
    let rotated = get_text(&format!("{origin}/token?alg=ES256&aud=api")).await;
    assert_eq!(call_api(&base, &rotated).await.0, 401);
    std::fs::write(
        dir.join("jwks.json"),
        get_text(&format!("{origin}/jwks")).await,
    )
    .unwrap();
    sidecar.reload().await.unwrap();
    assert_eq!(call_api(&base, &rotated).await.0, 200);
}
