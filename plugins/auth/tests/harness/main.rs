//! The `auth` component, built for wasm32-wasip2 and run on the sidecar's own
//! policy host through `policy-harness`: what a request sees, end to end,
//! without a server.
//!
//! Tokens are signed by `jsonwebtoken` (an independent implementation), or
//! hand-crafted where a library would refuse to build them (`alg: none`, a
//! forged header). Their times are relative to the harness clock, which
//! starts at `START_MICROS`, never to the real time.
//!
//! `jwks_url` (key sets fetched from stubbed identity providers),
//! `providers`, `claims_to_headers` and `required_scopes` have modules of
//! their own; the helpers here serve them all.

mod claims;
mod jwks_url;
mod providers;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use policy_harness::{
    Decision, DecisionExt, FieldValue, Harness, HeadersExt, Level, LogsExt, RequestBuilder,
    Response, ResponseExt, START_MICROS, get, post, response,
};
use serde_json::{Value, json};

const SECRET: &str = "harness-test-secret";
/// The harness clock's start, in Unix seconds: "now" for the tokens.
const NOW: u64 = START_MICROS / 1_000_000;
const USER_HEADER: &str = "x-authenticated-user";

fn harness() -> Harness {
    Harness::build_crate(env!("CARGO_MANIFEST_DIR"))
        .expect("auth builds and loads")
        .named("auth")
}

fn config() -> Value {
    json!({ "secret": SECRET })
}

fn key(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes()).expect("HMAC key")
}

fn sign_with(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &key(secret)).expect("jsonwebtoken signs")
}

fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, SECRET, claims)
}

/// A token for `sub`, issued now and valid for five minutes.
fn token_for(sub: &str) -> String {
    sign(&json!({ "sub": sub, "iat": NOW, "exp": NOW + 300 }))
}

fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// A token with an arbitrary header and payload whose signature is a real
/// HMAC-SHA256 with `secret` (computed by jsonwebtoken, not by the policy).
fn hand_signed(header: &str, payload: &str, secret: &str) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key(secret), Algorithm::HS256)
        .expect("HMAC signs");
    format!("{signing_input}.{sig}")
}

/// The 401 a denied request gets, checked for shape; returns the body's code.
fn denial_code(decision: &Decision) -> String {
    let resp = decision
        .responded()
        .unwrap_or_else(|| panic!("expected a 401, got {decision:?}"));
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{:?}",
        resp.headers
    );
    let body = resp.json();
    assert!(body["error"].is_string(), "{body}");
    body["code"].as_str().expect("code is a string").to_owned()
}

/// The subject the policy forwards, if it let the request through.
fn forwarded_user(decision: &Decision) -> Option<String> {
    let forwarded = decision.changed_request()?;
    let users = forwarded.header_all(USER_HEADER);
    assert!(users.len() <= 1, "one subject header at most: {users:?}");
    users.first().map(|u| (*u).to_owned())
}

fn call(cfg: Value, req: RequestBuilder) -> Decision {
    let h = harness();
    let p = h.configure(cfg).expect("config accepted");
    p.on_request(req).expect("hook runs")
}

fn code_for_token(cfg: Value, token: &str) -> String {
    denial_code(&call(cfg, get("/orders").bearer(token)))
}

// --- accepted tokens -------------------------------------------------------

#[test]
fn valid_token_continues_with_subject_header_set() {
    let token = token_for("alice");
    let d = call(config(), get("/orders?page=2").bearer(&token));
    assert!(d.continued(), "{d:?}");
    assert_eq!(forwarded_user(&d).as_deref(), Some("alice"));
    let forwarded = d.changed_request().unwrap();
    assert_eq!(
        forwarded.path, "/orders?page=2",
        "the request is otherwise kept"
    );
    assert_eq!(forwarded.method, "GET");
    assert_eq!(
        forwarded.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(forwarded.header("x-request-id"), Some("test-request"));
}

#[test]
fn subject_claim_and_header_are_configurable() {
    let token = sign(&json!({ "sub": "ignored", "username": "bob", "exp": NOW + 60 }));
    let d = call(
        json!({ "secret": SECRET, "subject_claim": "username", "subject_header": "X-User" }),
        get("/orders").bearer(&token),
    );
    let forwarded = d.changed_request().expect("continued with a change");
    assert_eq!(forwarded.header("x-user"), Some("bob"));
    assert_eq!(forwarded.header(USER_HEADER), None);
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let token = token_for("alice");
    let d = call(
        config(),
        get("/orders").header("authorization", &format!("bearer  {token} ")),
    );
    assert_eq!(forwarded_user(&d).as_deref(), Some("alice"));
}

#[test]
fn upstream_response_passes_through_untouched() {
    let h = harness();
    let p = h.configure(config()).unwrap();
    let upstream = response(200).header("x-upstream", "1").body("payload");
    let trip = p
        .round_trip(get("/orders").bearer(&token_for("alice")), upstream.clone())
        .unwrap();
    let expected = Response::from(upstream);
    assert_eq!(trip.response.status, expected.status);
    assert_eq!(
        format!("{:?}", trip.response.headers),
        format!("{:?}", expected.headers)
    );
    assert_eq!(trip.response.body, expected.body);
    assert_eq!(
        trip.forwarded.unwrap().header(USER_HEADER),
        Some("alice"),
        "the upstream sees the subject"
    );
}

#[test]
fn allowed_requests_log_nothing() {
    let h = harness();
    let p = h.configure(config()).unwrap();
    let d = p
        .on_request(get("/orders").bearer(&token_for("alice")))
        .unwrap();
    assert!(d.continued());
    assert!(h.logs().is_empty(), "{:?}", h.logs());
}

// --- the demo configs ------------------------------------------------------

/// The demo configs, whose auth sections must stay alike.
const DEMO_CONFIGS: [&str; 3] = ["demo.toml", "demo-python.toml", "demo-replicas.toml"];

/// `[policy.auth.config]` of `config/<file>`, as the sidecar hands it to the
/// policy, with `${VAR:-default}` taken as its default (the test reads no
/// environment). Reads only what those tables hold, one `key = value` per
/// line whose value is also JSON (strings, arrays, numbers); anything else
/// fails the test rather than being misread.
fn demo_auth_config(file: &str) -> Value {
    let path = format!("{}/../../config/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut table = serde_json::Map::new();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "[policy.auth.config]");
    assert!(lines.next().is_some(), "{path}: no [policy.auth.config]");
    for line in lines.map(str::trim).take_while(|l| !l.starts_with('[')) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{path}: not `key = value`: {line}"));
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = match values.next() {
            Some(Ok(v)) => v,
            other => panic!("{path}: value this reader does not know: {line} ({other:?})"),
        };
        let tail = rest[values.byte_offset()..].trim_start();
        assert!(tail.is_empty() || tail.starts_with('#'), "{path}: {line}");
        let value = match value {
            Value::String(s) if s.starts_with("${") => {
                let default = s
                    .strip_suffix('}')
                    .and_then(|s| s.split_once(":-"))
                    .map(|(_, default)| default.to_owned())
                    .unwrap_or_else(|| panic!("{path}: no default in {s}"));
                Value::String(default)
            }
            v => v,
        };
        table.insert(key.trim().to_owned(), value);
    }
    Value::Object(table)
}

#[test]
fn demo_configs_share_one_auth_config() {
    let demo = demo_auth_config(DEMO_CONFIGS[0]);
    assert_eq!(demo["secret"], "Secreto", "the seed's secret by default");
    for file in &DEMO_CONFIGS[1..] {
        assert_eq!(demo_auth_config(file), demo, "{file}");
    }
}

#[test]
fn demo_config_accepts_seed_tokens_and_forwards_the_username() {
    let h = harness();
    let p = h.configure(demo_auth_config("demo.toml")).unwrap();
    let secret = "Secreto";
    // What the seed's user-service issues: no `sub`.
    let seed = sign_with(
        Algorithm::HS256,
        secret,
        &json!({ "username": "admin", "iat": NOW, "exp": NOW + 3600 }),
    );
    // What this repo's user-service issues: both claims, equal.
    let ours = sign_with(
        Algorithm::HS256,
        secret,
        &json!({ "sub": "alice", "username": "alice", "iat": NOW, "exp": NOW + 3600 }),
    );
    for (token, user) in [(&seed, "admin"), (&ours, "alice")] {
        let d = p
            .on_request(get("/user-service/profile").bearer(token))
            .unwrap();
        assert_eq!(forwarded_user(&d).as_deref(), Some(user), "{d:?}");
    }
}

#[test]
fn demo_config_refuses_a_token_with_neither_sub_nor_username() {
    let token = sign_with(
        Algorithm::HS256,
        "Secreto",
        &json!({ "name": "admin", "iat": NOW, "exp": NOW + 3600 }),
    );
    assert_eq!(
        code_for_token(demo_auth_config("demo.toml"), &token),
        "missing_subject"
    );
}

// --- times -----------------------------------------------------------------

#[test]
fn rejects_expired_token() {
    let token = sign(&json!({ "sub": "alice", "iat": NOW - 7200, "exp": NOW - 3600 }));
    assert_eq!(code_for_token(config(), &token), "token_expired");
}

#[test]
fn rejects_token_without_exp_unless_not_required() {
    let token = sign(&json!({ "sub": "alice", "iat": NOW }));
    assert_eq!(code_for_token(config(), &token), "token_expired");
    let lax = json!({ "secret": SECRET, "require_exp": false });
    let d = call(lax, get("/orders").bearer(&token));
    assert_eq!(forwarded_user(&d).as_deref(), Some("alice"));
}

#[test]
fn token_expires_when_the_clock_passes_exp_plus_leeway() {
    let h = harness();
    let p = h.configure(config()).unwrap(); // default leeway: 5 s
    let token = sign(&json!({ "sub": "alice", "iat": NOW, "exp": NOW + 60 }));
    let call = || p.on_request(get("/orders").bearer(&token)).unwrap();

    assert_eq!(forwarded_user(&call()).as_deref(), Some("alice"));
    h.advance(Duration::from_secs(60 + 5));
    assert_eq!(
        forwarded_user(&call()).as_deref(),
        Some("alice"),
        "still inside the leeway"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(denial_code(&call()), "token_expired");
}

#[test]
fn rejects_token_not_yet_valid_until_nbf() {
    let h = harness();
    let p = h
        .configure(json!({ "secret": SECRET, "leeway_secs": 0 }))
        .unwrap();
    let token = sign(&json!({ "sub": "alice", "iat": NOW, "nbf": NOW + 600, "exp": NOW + 3600 }));
    let call = || p.on_request(get("/orders").bearer(&token)).unwrap();

    assert_eq!(denial_code(&call()), "token_not_yet_valid");
    h.advance(Duration::from_secs(599));
    assert_eq!(denial_code(&call()), "token_not_yet_valid");
    h.advance(Duration::from_secs(1));
    assert_eq!(forwarded_user(&call()).as_deref(), Some("alice"));
}

#[test]
fn leeway_is_honoured_for_exp_and_nbf() {
    let expired_20s_ago = sign(&json!({ "sub": "alice", "exp": NOW - 20 }));
    let valid_in_20s = sign(&json!({ "sub": "alice", "nbf": NOW + 20, "exp": NOW + 600 }));
    // The default leeway (5 s) does not stretch to 20 s: a token its issuer
    // already refuses is refused here too, so no cached answer reaches it.
    assert_eq!(code_for_token(config(), &expired_20s_ago), "token_expired");
    assert_eq!(
        code_for_token(config(), &valid_in_20s),
        "token_not_yet_valid"
    );
    // An explicit 20 s absorbs 20 s of clock skew...
    for token in [&expired_20s_ago, &valid_in_20s] {
        let d = call(
            json!({ "secret": SECRET, "leeway_secs": 20 }),
            get("/orders").bearer(token),
        );
        assert_eq!(forwarded_user(&d).as_deref(), Some("alice"));
    }
    // ...but 19 s does not.
    let strict = || json!({ "secret": SECRET, "leeway_secs": 19 });
    assert_eq!(code_for_token(strict(), &expired_20s_ago), "token_expired");
    assert_eq!(
        code_for_token(strict(), &valid_in_20s),
        "token_not_yet_valid"
    );
}

// --- signatures and algorithms ---------------------------------------------

#[test]
fn rejects_token_signed_with_another_secret() {
    let token = sign_with(
        Algorithm::HS256,
        "some-other-secret",
        &json!({ "sub": "alice", "exp": NOW + 300 }),
    );
    assert_eq!(code_for_token(config(), &token), "bad_signature");
}

#[test]
fn rejects_tampered_payload() {
    let good = token_for("alice");
    let parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(&json!({ "sub": "admin", "iat": NOW, "exp": NOW + 300 }).to_string());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(code_for_token(config(), &forged), "bad_signature");

    // Stripped or truncated signatures are no better.
    let no_sig = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(code_for_token(config(), &no_sig), "bad_signature");
    let short_sig = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..16]);
    assert_eq!(code_for_token(config(), &short_sig), "bad_signature");
}

#[test]
fn rejects_tampered_header_and_signature() {
    let good = token_for("alice");
    let parts: Vec<&str> = good.split('.').collect();
    // A header that differs by one field, signature kept.
    let header = b64(r#"{"alg":"HS256","typ":"JWT","x":"y"}"#);
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(code_for_token(config(), &forged), "bad_signature");
    // One flipped character in the signature.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.iter().collect::<String>()
    );
    assert_eq!(code_for_token(config(), &flipped), "bad_signature");
}

#[test]
fn kid_cannot_choose_the_key() {
    // Verifiers that look keys up by `kid` have been tricked into using a
    // file, an empty key or an attacker's key; this policy has one key and
    // never reads `kid`: whatever it says, only the configured secret verifies.
    let payload = json!({ "sub": "admin", "iat": NOW, "exp": NOW + 300 }).to_string();
    for kid in [
        "../../../../dev/null",
        "' OR '1'='1",
        "",
        "http://attacker.example/key",
    ] {
        let header = json!({ "alg": "HS256", "typ": "JWT", "kid": kid }).to_string();
        for secret in ["x", "attacker-secret"] {
            let token = hand_signed(&header, &payload, secret);
            assert_eq!(
                code_for_token(config(), &token),
                "bad_signature",
                "kid {kid:?}, signed with {secret:?}"
            );
        }
        // With the real secret the `kid` is simply ignored.
        let token = hand_signed(&header, &payload, SECRET);
        assert_eq!(
            forwarded_user(&call(config(), get("/").bearer(&token))).as_deref(),
            Some("admin"),
            "kid {kid:?}"
        );
    }
}

#[test]
fn rejects_alg_none() {
    let payload = json!({ "sub": "admin", "iat": NOW, "exp": NOW + 300 }).to_string();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        // The classic unsigned token: empty signature.
        let unsigned = format!("{}.{}.", b64(header), b64(&payload));
        assert_eq!(
            code_for_token(config(), &unsigned),
            "unsupported_algorithm",
            "{header}"
        );
        // Even with a correct HS256 MAC attached, `none` is refused.
        let with_mac = hand_signed(header, &payload, SECRET);
        assert_eq!(
            code_for_token(config(), &with_mac),
            "unsupported_algorithm",
            "{header}"
        );
    }
}

#[test]
fn rejects_other_hmac_algorithms_signed_with_the_right_secret() {
    let claims = json!({ "sub": "alice", "iat": NOW, "exp": NOW + 300 });
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign_with(alg, SECRET, &claims);
        assert_eq!(
            code_for_token(config(), &token),
            "unsupported_algorithm",
            "{alg:?}"
        );
    }
}

/// RFC 7515 Appendix A.2: a genuine RS256 JWS (no private key in the repo).
const RFC7515_A2_RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

#[test]
fn rejects_rs256_header_algorithm_confusion() {
    // The confusion attack: the header claims RS256 but the MAC is an
    // HMAC-SHA256 with our secret (as a verifier that lets the token pick
    // the algorithm, keyed with a public key, would compute).
    let payload = json!({ "sub": "admin", "iat": NOW, "exp": NOW + 300 }).to_string();
    for header in [r#"{"alg":"RS256","typ":"JWT"}"#, r#"{"alg":"ES256"}"#] {
        let token = hand_signed(header, &payload, SECRET);
        assert_eq!(
            code_for_token(config(), &token),
            "unsupported_algorithm",
            "{header}"
        );
    }
    // A real RS256 token is refused for its algorithm too.
    let lax = json!({ "secret": SECRET, "require_exp": false, "subject_claim": "iss" });
    assert_eq!(
        code_for_token(lax, RFC7515_A2_RS256),
        "unsupported_algorithm"
    );
}

// --- asymmetric keys (inline JWKS) ----------------------------------------

/// Keys and tokens made with PyJWT + cryptography by
/// `fixtures/make_tokens.py` (committed; the tests need no Python). Valid
/// tokens were issued at the harness clock's start and expire in 2100.
const FIXTURE_JWKS: &str = include_str!("../fixtures/jwks.json");
const FIXTURE_TOKENS: &str = include_str!("../fixtures/tokens.json");

const FIXTURE_JWKS_NEXT: &str = include_str!("../fixtures/jwks-next.json");
const FIXTURE_JWKS_OTHER: &str = include_str!("../fixtures/jwks-other.json");
const FIXTURE_TOKENS_EXTRA: &str = include_str!("../fixtures/tokens-extra.json");

/// The fixture token `name`, from `tokens.json` or `tokens-extra.json`.
fn fixture_token(name: &str) -> String {
    let extra: Value = serde_json::from_str(FIXTURE_TOKENS_EXTRA).expect("tokens-extra.json");
    [fixture_tokens(), extra]
        .iter()
        .find_map(|t| t["tokens"][name]["token"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no fixture token {name}"))
}

/// One JWK Set of the keys of all these sets (JSON texts).
fn merged_jwks(sets: &[&str]) -> String {
    let keys: Vec<Value> = sets
        .iter()
        .flat_map(|s| {
            let set: Value = serde_json::from_str(s).expect("a JWK Set");
            set["keys"].as_array().expect("keys").clone()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn fixture_tokens() -> Value {
    serde_json::from_str(FIXTURE_TOKENS).expect("tokens.json")
}

/// The fixture JWKS, with the issuer and audience its tokens carry.
fn jwks_config() -> Value {
    let t = fixture_tokens();
    json!({
        "jwks": serde_json::from_str::<Value>(FIXTURE_JWKS).expect("jwks.json"),
        "issuer": t["issuer"],
        "audience": t["audience"],
    })
}

#[test]
fn jwks_fixture_tokens_pass_or_get_a_401_as_expected() {
    let h = harness();
    let p = h.configure(jwks_config()).unwrap();
    let tokens = fixture_tokens();
    let tokens = tokens["tokens"].as_object().unwrap();
    let (mut passed, mut refused) = (0, 0);
    for (name, t) in tokens {
        let token = t["token"].as_str().unwrap();
        let d = p
            .on_request(get("/orders").header(USER_HEADER, "mallory").bearer(token))
            .unwrap();
        if let Some(sub) = t["sub"].as_str() {
            assert!(d.continued(), "{name}: {d:?}");
            assert_eq!(forwarded_user(&d).as_deref(), Some(sub), "{name}");
            passed += 1;
        } else {
            assert_eq!(denial_code(&d), t["code"].as_str().unwrap(), "{name}");
            refused += 1;
        }
    }
    // One per algorithm (and one without a kid); the attacks are all refused.
    assert_eq!(passed, 10);
    assert!(refused >= 17, "{refused}");
}

#[test]
fn jwks_valid_token_per_algorithm() {
    let h = harness();
    let p = h.configure(jwks_config()).unwrap();
    let tokens = fixture_tokens();
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ] {
        let token = tokens["tokens"][format!("valid_{alg}")]["token"]
            .as_str()
            .unwrap();
        let d = p.on_request(get("/orders").bearer(token)).unwrap();
        let expected = format!("user-{}", alg.to_ascii_lowercase());
        assert_eq!(forwarded_user(&d), Some(expected), "{alg}");
    }
}

#[test]
fn jwks_token_expires_on_the_harness_clock() {
    // The clock moves, not the token: past 2100 + leeway it is refused.
    let h = harness();
    let p = h.configure(jwks_config()).unwrap();
    let token = fixture_tokens()["tokens"]["valid_ES256"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(p.on_request(get("/").bearer(&token)).unwrap().continued());
    h.advance(Duration::from_secs(4_102_444_800 - NOW + 6));
    let d = p.on_request(get("/").bearer(&token)).unwrap();
    assert_eq!(denial_code(&d), "token_expired");
}

#[test]
fn rsa_public_key_is_never_an_hmac_secret() {
    // HS256 keyed with the RSA key's PEM, DER or `n`: refused whether or not
    // the token names that key, and whether or not a secret is configured.
    let tokens = fixture_tokens();
    let with_secret = {
        let mut c = jwks_config();
        c["secret"] = json!(SECRET);
        c
    };
    for enc in ["pem", "der", "n"] {
        for kid in ["kid", "no_kid"] {
            let name = format!("hs256_with_rsa_public_{enc}_{kid}");
            let token = tokens["tokens"][&name]["token"].as_str().unwrap();
            for cfg in [jwks_config(), with_secret.clone()] {
                let d = call(cfg, get("/orders").bearer(token));
                let code = denial_code(&d);
                assert!(
                    code == "unsupported_algorithm" || code == "bad_signature",
                    "{name}: {code}"
                );
            }
        }
    }
}

#[test]
fn secret_and_jwks_together_accept_both_kinds() {
    let mut cfg = jwks_config();
    cfg["secret"] = json!(SECRET);
    let h = harness();
    let p = h.configure(cfg).unwrap();
    let hs = sign(&json!({ "sub": "hs-user", "iss": "https://idp.example",
        "aud": "sidecar-api", "iat": NOW, "exp": NOW + 300 }));
    let rs = fixture_tokens()["tokens"]["valid_PS256"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (token, user) in [(hs, "hs-user"), (rs, "user-ps256")] {
        let d = p.on_request(get("/").bearer(&token)).unwrap();
        assert_eq!(forwarded_user(&d).as_deref(), Some(user));
    }
}

#[test]
fn jwks_config_without_secret_refuses_hs256() {
    let d = call(jwks_config(), get("/").bearer(&token_for("alice")));
    assert_eq!(denial_code(&d), "unsupported_algorithm");
}

#[test]
fn refuses_bad_jwks_naming_the_key_and_member() {
    let mut jwks: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys[0]["n"] = json!("not base64url!");
    keys[2] = json!({ "kty": "oct", "k": "c2VjcmV0" });
    let message = harness().refusal(json!({ "jwks": jwks.clone() }));
    assert!(
        message.starts_with("jwks.keys[0].n: not base64url"),
        "{message}"
    );

    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.remove(0);
    let message = harness().refusal(json!({ "jwks": jwks.clone() }));
    assert_eq!(
        message,
        r#"jwks.keys[1]: kty "oct" is not accepted (use secret for HS256)"#
    );

    let mut private: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    private["keys"][6]["d"] = json!("AAAA");
    let message = harness().refusal(json!({ "jwks": private }));
    assert!(
        message.starts_with("jwks.keys[6].d: private key material"),
        "{message}"
    );

    for cfg in [
        json!({ "jwks": { "keys": [] } }),
        json!({ "jwks": "https://idp.example/jwks" }),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.starts_with("jwks"), "{cfg}: {message}");
    }
}

// --- claims ----------------------------------------------------------------

#[test]
fn rejects_wrong_issuer() {
    let cfg = || json!({ "secret": SECRET, "issuer": "user-service" });
    let with_iss =
        |iss: Value| sign(&json!({ "sub": "alice", "iss": iss, "iat": NOW, "exp": NOW + 300 }));
    let d = call(
        cfg(),
        get("/orders").bearer(&with_iss(json!("user-service"))),
    );
    assert_eq!(forwarded_user(&d).as_deref(), Some("alice"));
    assert_eq!(
        code_for_token(cfg(), &with_iss(json!("evil"))),
        "wrong_issuer"
    );
    assert_eq!(
        code_for_token(cfg(), &token_for("alice")),
        "wrong_issuer",
        "iss missing"
    );
}

#[test]
fn rejects_wrong_audience() {
    let cfg = || json!({ "secret": SECRET, "audience": "main-service" });
    let with_aud =
        |aud: Value| sign(&json!({ "sub": "alice", "aud": aud, "iat": NOW, "exp": NOW + 300 }));
    for ok in [json!("main-service"), json!(["other", "main-service"])] {
        let d = call(cfg(), get("/orders").bearer(&with_aud(ok.clone())));
        assert_eq!(forwarded_user(&d).as_deref(), Some("alice"), "{ok}");
    }
    for bad in [json!("other"), json!(["x", "y"]), json!([])] {
        assert_eq!(
            code_for_token(cfg(), &with_aud(bad.clone())),
            "wrong_audience",
            "{bad}"
        );
    }
    assert_eq!(
        code_for_token(cfg(), &token_for("alice")),
        "wrong_audience",
        "aud missing"
    );
}

#[test]
fn rejects_token_without_usable_subject() {
    for claims in [
        json!({ "exp": NOW + 300 }),
        json!({ "sub": 42, "exp": NOW + 300 }),
        json!({ "sub": "", "exp": NOW + 300 }),
        // A subject that would inject a header line into the upstream request.
        json!({ "sub": "alice\r\nx-admin: 1", "exp": NOW + 300 }),
    ] {
        assert_eq!(
            code_for_token(config(), &sign(&claims)),
            "missing_subject",
            "{claims}"
        );
    }
}

// --- malformed and oversized -----------------------------------------------

#[test]
fn rejects_malformed_tokens() {
    let good = token_for("alice");
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        "not-a-jwt".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        "a.b.c.d".to_owned(),
        // Not base64url: `!`, standard-alphabet `+`/`/`, padding.
        format!("{}.!!!!.{}", parts[0], parts[2]),
        format!("{}.{}.+{}", parts[0], parts[1], &parts[2][1..]),
        format!("{}.{}./{}", parts[0], parts[1], &parts[2][1..]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        // Valid base64url that is not JSON, or JSON that is not an object.
        format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
        hand_signed(r#"{"alg":"HS256"}"#, "[1,2]", SECRET),
        hand_signed(r#"{"typ":"JWT"}"#, r#"{"sub":"a"}"#, SECRET),
    ];
    for token in &cases {
        assert_eq!(
            code_for_token(config(), token),
            "malformed_token",
            "{token:?}"
        );
    }
}

#[test]
fn rejects_more_than_one_authorization_header() {
    let d = call(
        config(),
        get("/orders")
            .bearer(&token_for("alice"))
            .bearer(&token_for("bob")),
    );
    assert_eq!(denial_code(&d), "malformed_token");
}

#[test]
fn rejects_oversized_token() {
    // Default limit: 8192 bytes. A real, validly signed token over it.
    let pad = "x".repeat(9000);
    let big = sign(&json!({ "sub": "alice", "exp": NOW + 300, "pad": pad }));
    assert!(big.len() > 8192);
    assert_eq!(code_for_token(config(), &big), "token_too_large");
    // The limit is checked before parsing: junk is refused for its size.
    assert_eq!(
        code_for_token(config(), &"a".repeat(8193)),
        "token_too_large"
    );
    // A configured limit applies to otherwise good tokens...
    let small = token_for("alice");
    let limit = small.len() - 1;
    assert_eq!(
        code_for_token(
            json!({ "secret": SECRET, "max_token_bytes": limit }),
            &small
        ),
        "token_too_large"
    );
    // ...and a larger one admits the big token.
    let d = call(
        json!({ "secret": SECRET, "max_token_bytes": 20_000 }),
        get("/orders").bearer(&big),
    );
    assert_eq!(forwarded_user(&d).as_deref(), Some("alice"));
}

// --- missing token and public paths ----------------------------------------

#[test]
fn missing_authorization_is_401_json_missing_token() {
    let d = call(config(), get("/orders"));
    let resp = d.responded().expect("answered by the policy");
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        resp.json(),
        json!({ "error": "missing bearer token", "code": "missing_token" })
    );
}

#[test]
fn invalid_token_challenge_says_invalid_token() {
    let d = call(config(), get("/orders").bearer("a.b"));
    let resp = d.responded().unwrap();
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
}

#[test]
fn non_bearer_authorization_counts_as_missing_token() {
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc"] {
        let d = call(config(), get("/orders").header("authorization", value));
        assert_eq!(denial_code(&d), "missing_token", "{value}");
    }
}

#[test]
fn public_path_passes_without_token() {
    let h = harness();
    let p = h
        .configure(json!({ "secret": SECRET, "public_paths": ["/login", "/static/*"] }))
        .unwrap();
    for path in ["/login", "/login?next=/orders", "/static/app.js"] {
        let d = p.on_request(post(path)).unwrap();
        assert!(
            matches!(d, Decision::Continue(None)),
            "{path}: passes untouched, got {d:?}"
        );
    }
    // A junk token on a public path is not even looked at.
    let d = p.on_request(get("/login").bearer("junk")).unwrap();
    assert!(d.continued());
    assert!(h.take_logs().is_empty(), "public requests are not denials");
    // Near misses and escapes from a prefix rule need a token.
    for path in [
        "/login/x",
        "/loginx",
        "/static",
        "/static/../admin",
        "/static/%2e%2e/admin",
    ] {
        let d = p.on_request(get(path)).unwrap();
        assert_eq!(denial_code(&d), "missing_token", "{path}");
    }
}

#[test]
fn spoofed_subject_header_is_stripped_on_public_paths() {
    let d = call(
        json!({ "secret": SECRET, "public_paths": ["/login"] }),
        get("/login")
            .header("X-Authenticated-User", "admin")
            .header(USER_HEADER, "root"),
    );
    let forwarded = d
        .changed_request()
        .expect("continued with the header removed");
    assert_eq!(forwarded.header_all(USER_HEADER), Vec::<&str>::new());
    assert_eq!(forwarded.path, "/login");
    assert_eq!(forwarded.header("x-request-id"), Some("test-request"));
}

#[test]
fn spoofed_subject_header_is_replaced_on_authenticated_paths() {
    let d = call(
        config(),
        get("/orders")
            .header(USER_HEADER, "admin")
            .bearer(&token_for("alice"))
            .header(USER_HEADER, "root"),
    );
    let forwarded = d.changed_request().expect("continued");
    assert_eq!(forwarded.header_all(USER_HEADER), ["alice"]);
}

#[test]
fn spoofed_subject_header_does_not_replace_a_token() {
    let d = call(config(), get("/orders").header(USER_HEADER, "admin"));
    assert_eq!(denial_code(&d), "missing_token");
}

// --- config ----------------------------------------------------------------

#[test]
fn refuses_config_without_secret() {
    // Without `jwks`, `secret` is required.
    for cfg in [
        json!({}),
        json!({ "secret": "" }),
        json!({ "secret": null }),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.contains("secret"), "{cfg}: {message}");
    }
}

#[test]
fn refuses_config_with_unknown_field() {
    let message = harness().refusal(json!({ "secret": SECRET, "issuerr": "user-service" }));
    assert!(message.contains("issuerr"), "{message}");
}

#[test]
fn refuses_config_with_bad_values_naming_the_field() {
    for (cfg, field) in [
        (
            json!({ "secret": SECRET, "subject_header": "bad header" }),
            "subject_header",
        ),
        (
            json!({ "secret": SECRET, "subject_header": "Authorization" }),
            "subject_header",
        ),
        (
            json!({ "secret": SECRET, "subject_claim": "" }),
            "subject_claim",
        ),
        (
            json!({ "secret": SECRET, "max_token_bytes": 0 }),
            "max_token_bytes",
        ),
        (
            json!({ "secret": SECRET, "public_paths": ["login"] }),
            "public_paths",
        ),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.contains(field), "{cfg}: {message}");
    }
}

// --- logs ------------------------------------------------------------------

#[test]
fn denial_logs_a_warn_line_without_the_token() {
    let h = harness();
    let p = h.configure(config()).unwrap();
    let token = sign_with(
        Algorithm::HS256,
        "some-other-secret",
        &json!({ "sub": "alice", "exp": NOW + 300 }),
    );
    let d = p
        .on_request(get("/orders?api_key=q-secret").bearer(&token))
        .unwrap();
    assert_eq!(denial_code(&d), "bad_signature");

    let logs = h.logs();
    let lines = logs.with_message("auth denied");
    assert_eq!(lines.len(), 1, "{logs:?}");
    let line = lines[0];
    assert_eq!(line.level, Level::Warn);
    assert_eq!(&*line.policy, "auth");
    assert_eq!(
        line.field("code"),
        Some(&FieldValue::Str("bad_signature".into()))
    );
    assert_eq!(line.field("path"), Some(&FieldValue::Str("/orders".into())));
    assert_eq!(line.field("method"), Some(&FieldValue::Str("GET".into())));

    // Neither the token nor any part of it, nor the query string.
    assert!(!logs.mention(&token));
    for part in token.split('.') {
        assert!(!logs.mention(part), "token part {part:?} logged: {logs:?}");
    }
    assert!(!logs.mention("q-secret"));
}

#[test]
fn every_kind_of_denial_is_logged_with_its_code_only() {
    let h = harness();
    let p = h.configure(config()).unwrap();
    let expired = sign(&json!({ "sub": "alice", "exp": NOW - 3600 }));
    let tokens = [expired.as_str(), "a.b", "x.y.z"];
    for token in tokens {
        p.on_request(get("/orders").bearer(token)).unwrap();
    }
    p.on_request(get("/orders")).unwrap();
    let logs = h.take_logs();
    let codes: Vec<_> = logs
        .with_message("auth denied")
        .iter()
        .map(|l| l.field("code").cloned())
        .collect();
    assert_eq!(
        codes,
        [
            "token_expired",
            "malformed_token",
            "malformed_token",
            "missing_token"
        ]
        .map(|c| Some(FieldValue::Str(c.into())))
    );
    for token in tokens {
        assert!(!logs.mention(token), "{token} logged");
    }
    assert!(!logs.mention("Bearer"));
}

#[test]
fn refuses_config_with_wrong_type_naming_the_field() {
    for (cfg, field) in [
        (
            json!({ "secret": SECRET, "leeway_secs": -1 }),
            "leeway_secs",
        ),
        (
            json!({ "secret": SECRET, "max_token_bytes": "big" }),
            "max_token_bytes",
        ),
        (json!({ "secret": 42 }), "secret"),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.contains(field), "{cfg}: {message}");
    }
}
