//! `providers`: several issuers, each with its own keys; the token's `iss`
//! picks whose keys verify it.

use jsonwebtoken::Algorithm;
use policy_harness::{Configured, Harness, Stub, get};
use serde_json::{Value, json};

use super::{
    FIXTURE_JWKS, FIXTURE_JWKS_OTHER, NOW, denial_code, fixture_token, forwarded_user, harness,
    sign_with,
};

const IDP: &str = "https://idp.example";
const OTHER_IDP: &str = "https://other-idp.example";
const JWKS_URL: &str = "https://idp.example/jwks";
const OTHER_JWKS_URL: &str = "https://other-idp.example/keys";
const SERVICE_SECRET: &str = "user-service-secret";

/// Both IdPs granted and answering; a third issuer signs with HS256.
fn with_idps() -> Harness {
    let h = harness().allow_outbound(&[IDP, OTHER_IDP]);
    h.stub("GET", JWKS_URL, Stub::json(200, FIXTURE_JWKS));
    h.stub("GET", OTHER_JWKS_URL, Stub::json(200, FIXTURE_JWKS_OTHER));
    h
}

fn providers_config() -> Value {
    json!({
        "providers": [
            { "issuer": IDP, "audience": "sidecar-api", "jwks_url": JWKS_URL },
            { "issuer": OTHER_IDP, "audience": "sidecar-api", "jwks_url": OTHER_JWKS_URL },
            { "issuer": "user-service", "secret": SERVICE_SECRET },
        ]
    })
}

fn outcome(p: &Configured<'_>, token: &str) -> Result<String, String> {
    let d = p.on_request(get("/orders").bearer(token)).unwrap();
    forwarded_user(&d).ok_or_else(|| denial_code(&d))
}

#[test]
fn the_token_issuer_picks_the_provider() {
    let h = with_idps();
    let p = h.configure(providers_config()).unwrap();
    assert_eq!(
        h.outbound_requests(),
        [format!("GET {JWKS_URL}"), format!("GET {OTHER_JWKS_URL}")]
    );
    let hs = |iss: Option<&str>| {
        let mut claims = json!({ "sub": "svc-user", "iat": NOW, "exp": NOW + 300 });
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        sign_with(Algorithm::HS256, SERVICE_SECRET, &claims)
    };
    for (token, expected) in [
        (fixture_token("valid_ES256"), Ok("user-es256")),
        (fixture_token("valid_PS512"), Ok("user-ps512")),
        (fixture_token("other_ES256"), Ok("user-other")),
        (hs(Some("user-service")), Ok("svc-user")),
        // Both sets have a kid "ec-p256": the first issuer's key is used
        // for a token claiming that issuer, whoever signed it.
        (
            fixture_token("other_key_claiming_first_issuer"),
            Err("bad_signature"),
        ),
        (fixture_token("unknown_issuer"), Err("wrong_issuer")),
        (hs(None), Err("wrong_issuer")),
        // The user-service secret does not make an IdP's HS256 token good.
        (
            sign_with(
                Algorithm::HS256,
                SERVICE_SECRET,
                &json!({ "sub": "x", "iss": IDP, "aud": "sidecar-api", "exp": NOW + 300 }),
            ),
            Err("unsupported_algorithm"),
        ),
    ] {
        assert_eq!(
            outcome(&p, &token).as_deref(),
            expected.map_err(str::to_owned).as_deref(),
            "{token}"
        );
    }
    // Each provider's audience still applies.
    let wrong_aud = sign_with(
        Algorithm::HS256,
        SERVICE_SECRET,
        &json!({ "sub": "x", "iss": "user-service", "exp": NOW + 300 }),
    );
    assert_eq!(
        outcome(&p, &wrong_aud).as_deref(),
        Ok("x"),
        "no audience set"
    );
}

#[test]
fn providers_may_mix_inline_and_fetched_keys() {
    let h = harness().allow_outbound(&[OTHER_IDP]);
    h.stub("GET", OTHER_JWKS_URL, Stub::json(200, FIXTURE_JWKS_OTHER));
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    let p = h
        .configure(json!({ "providers": [
            { "issuer": IDP, "audience": "sidecar-api", "jwks": jwks },
            { "issuer": OTHER_IDP, "jwks_url": OTHER_JWKS_URL },
        ]}))
        .unwrap();
    assert_eq!(
        outcome(&p, &fixture_token("valid_EdDSA")).as_deref(),
        Ok("user-eddsa")
    );
    assert_eq!(
        outcome(&p, &fixture_token("other_ES256")).as_deref(),
        Ok("user-other")
    );
}

#[test]
fn a_provider_not_granted_refuses_the_config_naming_it() {
    let h = harness().allow_outbound(&[IDP]);
    h.stub("GET", JWKS_URL, Stub::json(200, FIXTURE_JWKS));
    let message = h.refusal(providers_config());
    assert!(message.starts_with("providers[1].jwks_url: "), "{message}");
    assert!(
        message.contains(OTHER_IDP) && message.contains("allow_outbound"),
        "{message}"
    );
}

#[test]
fn providers_config_errors_name_the_field() {
    let p = |v: Value| json!({ "providers": [v] });
    for (cfg, field) in [
        (
            json!({ "issuer": IDP, "providers": [{ "issuer": IDP, "secret": "s" }] }),
            "issuer: not with providers",
        ),
        (
            json!({ "secret": "s", "providers": [{ "issuer": IDP, "secret": "s" }] }),
            "secret: not with providers",
        ),
        (json!({ "providers": [] }), "providers: must not be empty"),
        (
            p(json!({ "secret": "s" })),
            "providers[0]: missing field `issuer`",
        ),
        (
            p(json!({ "issuer": "", "secret": "s" })),
            "providers[0].issuer",
        ),
        (p(json!({ "issuer": IDP })), "providers[0].secret: required"),
        (
            p(json!({ "issuer": IDP, "secret": "s", "subject_claim": "x" })),
            "providers[0].subject_claim: unknown field",
        ),
        (
            json!({ "providers": [
                { "issuer": IDP, "secret": "a" },
                { "issuer": IDP, "secret": "b" },
            ]}),
            "providers[1].issuer: \"https://idp.example\" is also the issuer of providers[0]",
        ),
        (
            p(json!({ "issuer": IDP, "jwks": { "keys": [{ "kty": "oct", "k": "AA" }] } })),
            "providers[0].jwks.keys[0]: kty \"oct\"",
        ),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.starts_with(field), "{cfg}: {message}");
    }
}
