//! Signatures made by PyJWT + cryptography (`plugins/auth/tests/fixtures`),
//! checked with the keys of the JWKS it published.

use super::*;
use crate::bindings::v02::crypto::RsaPublicKey;

const JWKS: &str = include_str!("../../../../plugins/auth/tests/fixtures/jwks.json");
const TOKENS: &str = include_str!("../../../../plugins/auth/tests/fixtures/tokens.json");

fn b64url(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn jwk(kid: &str) -> (SignatureAlgorithm, PublicKey) {
    let jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    let k = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no key {kid}"));
    let field = |name: &str| b64url(k[name].as_str().unwrap());
    let key = match k["kty"].as_str().unwrap() {
        "RSA" => PublicKey::Rsa(RsaPublicKey {
            n: field("n"),
            e: field("e"),
        }),
        "EC" => PublicKey::Ec([vec![4], field("x"), field("y")].concat()),
        _ => PublicKey::Ed25519(field("x")),
    };
    let alg = match k["alg"].as_str().unwrap() {
        "RS256" => SignatureAlgorithm::Rs256,
        "RS384" => SignatureAlgorithm::Rs384,
        "RS512" => SignatureAlgorithm::Rs512,
        "PS256" => SignatureAlgorithm::Ps256,
        "PS384" => SignatureAlgorithm::Ps384,
        "PS512" => SignatureAlgorithm::Ps512,
        "ES256" => SignatureAlgorithm::Es256,
        "ES384" => SignatureAlgorithm::Es384,
        _ => SignatureAlgorithm::Ed25519,
    };
    (alg, key)
}

/// (signed part, signature) of the fixture token `name`.
fn token(name: &str) -> (Vec<u8>, Vec<u8>) {
    let tokens: serde_json::Value = serde_json::from_str(TOKENS).unwrap();
    let t = tokens["tokens"][name]["token"].as_str().unwrap();
    let (signed, sig) = t.rsplit_once('.').unwrap();
    (signed.as_bytes().to_vec(), b64url(sig))
}

const CASES: [(&str, &str); 9] = [
    ("valid_RS256", "rsa-rs256"),
    ("valid_RS384", "rsa-rs384"),
    ("valid_RS512", "rsa-rs512"),
    ("valid_PS256", "rsa-ps256"),
    ("valid_PS384", "rsa-ps384"),
    ("valid_PS512", "rsa-ps512"),
    ("valid_ES256", "ec-p256"),
    ("valid_ES384", "ec-p384"),
    ("valid_EdDSA", "ed25519"),
];

#[test]
fn verifies_each_algorithm_from_a_foreign_signer() {
    for (name, kid) in CASES {
        let (alg, key) = jwk(kid);
        let (signed, sig) = token(name);
        assert!(verify(alg, &key, &signed, &sig), "{name}");
    }
}

#[test]
fn refuses_a_changed_message_or_signature() {
    for (name, kid) in CASES {
        let (alg, key) = jwk(kid);
        let (mut signed, mut sig) = token(name);
        let last = sig.len() - 1;
        sig[last] ^= 1;
        assert!(!verify(alg, &key, &signed, &sig), "{name}: signature");
        sig[last] ^= 1;
        signed.push(b'x');
        assert!(!verify(alg, &key, &signed, &sig), "{name}: message");
    }
}

#[test]
fn the_algorithm_must_suit_the_key() {
    let (signed, sig) = token("valid_RS256");
    let (_, rsa) = jwk("rsa-rs256");
    // Same key, other padding or hash: refused.
    for alg in [
        SignatureAlgorithm::Rs384,
        SignatureAlgorithm::Ps256,
        SignatureAlgorithm::Es256,
        SignatureAlgorithm::Ed25519,
    ] {
        assert!(!verify(alg, &rsa, &signed, &sig), "{alg:?}");
    }
    let (_, ec) = jwk("ec-p256");
    let (signed, sig) = token("valid_ES256");
    assert!(!verify(SignatureAlgorithm::Es384, &ec, &signed, &sig));
    assert!(!verify(SignatureAlgorithm::Rs256, &ec, &signed, &sig));
}

#[test]
fn refuses_invalid_keys() {
    let (signed, sig) = token("valid_ES256");
    // Off the curve.
    let mut point = vec![4u8; 65];
    point[64] = 7;
    assert!(!verify(
        SignatureAlgorithm::Es256,
        &PublicKey::Ec(point),
        &signed,
        &sig
    ));
    // A 1024-bit modulus is below what the capability accepts.
    let small = PublicKey::Rsa(RsaPublicKey {
        n: vec![0xc5; 128],
        e: vec![1, 0, 1],
    });
    let (signed, sig) = token("valid_RS256");
    assert!(!verify(SignatureAlgorithm::Rs256, &small, &signed, &sig));
    assert!(!verify(
        SignatureAlgorithm::Ed25519,
        &PublicKey::Ed25519(vec![]),
        &signed,
        &sig
    ));
}

#[test]
fn remembers_successes_only_and_exactly() {
    use crate::bindings::v02::crypto::Host as _;
    let mut host = CryptoState;
    let (alg, key) = jwk("ec-p384");
    let (signed, sig) = token("valid_ES384");
    let digest = Verified::digest(alg, &key, &signed, &sig);
    assert!(host.verify(alg, key.clone(), signed.clone(), sig.clone()));
    assert!(Verified::get().contains(&digest), "a success is kept");
    // Anything else differs in its digest, and is checked afresh.
    let mut forged = sig.clone();
    forged[0] ^= 1;
    assert!(!host.verify(alg, key.clone(), signed.clone(), forged.clone()));
    assert!(!Verified::get().contains(&Verified::digest(alg, &key, &signed, &forged)));
    let (_, other_key) = jwk("ec-p256");
    assert!(!host.verify(alg, other_key, signed.clone(), sig.clone()));
    assert!(!host.verify(SignatureAlgorithm::Es256, key, signed, sig));
}
