//! Public keys from an inline JWKS (RFC 7517) and JWS signature checks with
//! them (RFC 7518 §3.3–3.5, RFC 8037).
//!
//! Each key is parsed and validated once, at configure time, and carries
//! its one algorithm: a token is checked with the key's algorithm, never
//! with one the token names.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier;
use rsa::{BoxedUint, Pkcs1v15Sign, Pss};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The asymmetric JWS algorithms a configured key can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    /// The `alg` name as JOSE spells it.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }
}

const RSA_ALGS: [Alg; 6] = [
    Alg::Rs256,
    Alg::Rs384,
    Alg::Rs512,
    Alg::Ps256,
    Alg::Ps384,
    Alg::Ps512,
];

/// RFC 7518 §3.3: 2048 bits at least. The upper bound caps what one
/// verification can cost.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

#[derive(Debug, Clone)]
enum Key {
    Rsa(rsa::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// One verification key: its optional `kid` and its algorithm.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub alg: Alg,
    key: Key,
}

impl PublicKey {
    /// Whether `sig` is this key's signature (in JWS form) over `signed`.
    pub fn verify(&self, signed: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            Key::Rsa(k) => match self.alg {
                Alg::Rs256 => rsa_ok(
                    k,
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(signed),
                    sig,
                ),
                Alg::Rs384 => rsa_ok(
                    k,
                    Pkcs1v15Sign::new::<Sha384>(),
                    &Sha384::digest(signed),
                    sig,
                ),
                Alg::Rs512 => rsa_ok(
                    k,
                    Pkcs1v15Sign::new::<Sha512>(),
                    &Sha512::digest(signed),
                    sig,
                ),
                // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash.
                Alg::Ps256 => rsa_ok(k, Pss::<Sha256>::new(), &Sha256::digest(signed), sig),
                Alg::Ps384 => rsa_ok(k, Pss::<Sha384>::new(), &Sha384::digest(signed), sig),
                Alg::Ps512 => rsa_ok(k, Pss::<Sha512>::new(), &Sha512::digest(signed), sig),
                _ => false,
            },
            // JWS ECDSA signatures are r||s, fixed length (RFC 7518 §3.4).
            Key::P256(k) => {
                p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(signed, &s).is_ok())
            }
            Key::P384(k) => {
                p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(signed, &s).is_ok())
            }
            // Strict: no small-order keys, no non-canonical signatures.
            Key::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(signed, &s).is_ok()),
        }
    }
}

fn rsa_ok(
    key: &rsa::PublicKey,
    scheme: impl rsa::traits::SignatureScheme,
    hashed: &[u8],
    sig: &[u8],
) -> bool {
    key.verify(scheme, hashed, sig).is_ok()
}

/// Members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Parses the `jwks` config value: `{"keys": [...]}`, at least one key.
/// Errors name the member, e.g. `jwks.keys[0].n: not base64url`.
pub fn parse_jwks(jwks: &Value) -> Result<Vec<PublicKey>, String> {
    let Some(keys) = jwks.as_object().and_then(|o| o.get("keys")) else {
        return Err(r#"jwks: must be a JWK Set, {"keys": [...]}"#.to_string());
    };
    let keys = match keys.as_array() {
        Some(keys) if !keys.is_empty() => keys,
        _ => return Err("jwks.keys: must be a non-empty array of JWKs".to_string()),
    };
    let mut parsed: Vec<PublicKey> = Vec::with_capacity(keys.len());
    for (i, jwk) in keys.iter().enumerate() {
        let at = format!("jwks.keys[{i}]");
        let key = parse_jwk(jwk, &at)?;
        if let Some(kid) = &key.kid
            && let Some(j) = parsed.iter().position(|k| k.kid.as_ref() == Some(kid))
        {
            return Err(format!(
                "{at}.kid: {kid:?} is also the kid of jwks.keys[{j}]"
            ));
        }
        parsed.push(key);
    }
    Ok(parsed)
}

fn parse_jwk(jwk: &Value, at: &str) -> Result<PublicKey, String> {
    let Some(jwk) = jwk.as_object() else {
        return Err(format!("{at}: must be a JSON object (a JWK)"));
    };
    let kty = string(jwk, "kty", at)?.ok_or_else(|| format!("{at}.kty: required"))?;
    if kty == "oct" {
        return Err(format!(
            "{at}: kty \"oct\" is not accepted (use secret for HS256)"
        ));
    }
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!(
            "{at}.{member}: private key material is not accepted (give the public keys only)"
        ));
    }
    if let Some(usage) = string(jwk, "use", at)?
        && usage != "sig"
    {
        return Err(format!("{at}.use: {usage:?} keys do not verify signatures"));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err(format!("{at}.key_ops: must include \"verify\""));
        }
    }
    let kid = string(jwk, "kid", at)?.map(str::to_owned);
    let alg_member = string(jwk, "alg", at)?;
    let (alg, key) = match kty {
        "RSA" => {
            // Without `alg`, RS256 only: the most common, and one algorithm
            // per key keeps the token from choosing.
            let alg = match alg_member {
                None => Alg::Rs256,
                Some(name) => *RSA_ALGS.iter().find(|a| a.name() == name).ok_or_else(|| {
                    format!("{at}.alg: {name:?} is not an RSA algorithm (RS256, RS384, RS512, PS256, PS384, PS512)")
                })?,
            };
            let n = bytes(jwk, "n", at)?;
            let e = bytes(jwk, "e", at)?;
            let n = BoxedUint::from_be_slice_vartime(&n);
            let bits = n.bit_width_vartime() as usize;
            if !RSA_BITS.contains(&bits) {
                return Err(format!(
                    "{at}.n: a {bits}-bit modulus is not accepted (2048 to 8192 bits)"
                ));
            }
            let key = rsa::PublicKey::new_with_size_limits(
                n,
                BoxedUint::from_be_slice_vartime(&e),
                RSA_BITS,
            )
            .map_err(|err| format!("{at}: not a valid RSA public key ({err})"))?;
            (alg, Key::Rsa(key))
        }
        "EC" => {
            let crv = string(jwk, "crv", at)?.ok_or_else(|| format!("{at}.crv: required"))?;
            let (alg, len) = match crv {
                "P-256" => (Alg::Es256, 32),
                "P-384" => (Alg::Es384, 48),
                _ => return Err(format!("{at}.crv: {crv:?} is not supported (P-256, P-384)")),
            };
            check_alg(alg, alg_member, at)?;
            let mut point = vec![0x04];
            point.extend(fixed(jwk, "x", len, at)?);
            point.extend(fixed(jwk, "y", len, at)?);
            let invalid = |_| format!("{at}: x, y is not a point on {crv}");
            let key = if alg == Alg::Es256 {
                Key::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(invalid)?)
            } else {
                Key::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map_err(invalid)?)
            };
            (alg, key)
        }
        "OKP" => {
            let crv = string(jwk, "crv", at)?.ok_or_else(|| format!("{at}.crv: required"))?;
            if crv != "Ed25519" {
                return Err(format!("{at}.crv: {crv:?} is not supported (Ed25519)"));
            }
            check_alg(Alg::EdDsa, alg_member, at)?;
            let x: [u8; 32] = fixed(jwk, "x", 32, at)?.try_into().expect("32 bytes");
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| format!("{at}.x: not an Ed25519 public key"))?;
            (Alg::EdDsa, Key::Ed25519(key))
        }
        _ => {
            return Err(format!("{at}: kty {kty:?} is not supported (RSA, EC, OKP)"));
        }
    };
    Ok(PublicKey { kid, alg, key })
}

/// `alg` on an EC or OKP key, if given, must be the one its curve implies.
fn check_alg(alg: Alg, given: Option<&str>, at: &str) -> Result<(), String> {
    match given {
        Some(name) if name != alg.name() => Err(format!(
            "{at}.alg: {name:?} does not fit this key (its curve means {})",
            alg.name()
        )),
        _ => Ok(()),
    }
}

/// An optional string member.
fn string<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{at}.{name}: must be a string")),
    }
}

/// A required base64url member (unpadded, as RFC 7518 §6 writes them).
fn bytes(jwk: &Map<String, Value>, name: &str, at: &str) -> Result<Vec<u8>, String> {
    let text = string(jwk, name, at)?.ok_or_else(|| format!("{at}.{name}: required"))?;
    match URL_SAFE_NO_PAD.decode(text) {
        Ok(b) if !b.is_empty() => Ok(b),
        _ => Err(format!("{at}.{name}: not base64url")),
    }
}

/// A base64url member of exactly `len` bytes (EC coordinates, Ed25519 keys).
fn fixed(jwk: &Map<String, Value>, name: &str, len: usize, at: &str) -> Result<Vec<u8>, String> {
    let b = bytes(jwk, name, at)?;
    if b.len() != len {
        return Err(format!("{at}.{name}: must be {len} bytes, not {}", b.len()));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The keys `tests/fixtures/make_tokens.py` made (with PyJWT).
    fn fixture() -> Value {
        serde_json::from_str(include_str!("../tests/fixtures/jwks.json")).unwrap()
    }

    fn fixture_key(kid: &str) -> Value {
        let jwks = fixture();
        let keys = jwks["keys"].as_array().unwrap();
        keys.iter().find(|k| k["kid"] == kid).unwrap().clone()
    }

    /// The error for a JWKS of the one key `jwk`.
    fn error(jwk: Value) -> String {
        parse_jwks(&json!({ "keys": [jwk] })).unwrap_err()
    }

    fn with(mut jwk: Value, member: &str, value: Value) -> Value {
        jwk[member] = value;
        jwk
    }

    fn without(mut jwk: Value, member: &str) -> Value {
        jwk.as_object_mut().unwrap().remove(member);
        jwk
    }

    #[test]
    fn fixture_keys_parse_with_their_algorithms() {
        let keys = parse_jwks(&fixture()).unwrap();
        let got: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.as_deref().unwrap(), k.alg.name()))
            .collect();
        assert_eq!(
            got,
            [
                ("rsa-rs256", "RS256"),
                ("rsa-rs384", "RS384"),
                ("rsa-rs512", "RS512"),
                ("rsa-ps256", "PS256"),
                ("rsa-ps384", "PS384"),
                ("rsa-ps512", "PS512"),
                ("ec-p256", "ES256"),
                ("ec-p384", "ES384"),
                ("ed25519", "EdDSA"),
            ]
        );
    }

    #[test]
    fn absent_alg_means_rs256_for_rsa_and_the_curve_for_ec_and_okp() {
        for (kid, alg) in [
            ("rsa-ps512", "RS256"),
            ("ec-p384", "ES384"),
            ("ed25519", "EdDSA"),
        ] {
            let keys = parse_jwks(&json!({ "keys": [without(fixture_key(kid), "alg")] })).unwrap();
            assert_eq!(keys[0].alg.name(), alg, "{kid}");
        }
        // Neither kid nor use nor key_ops is required.
        let bare = json!({ "kty": "OKP", "crv": "Ed25519", "x": fixture_key("ed25519")["x"] });
        assert!(
            parse_jwks(&json!({ "keys": [bare] })).unwrap()[0]
                .kid
                .is_none()
        );
    }

    #[test]
    fn jwks_shape_errors() {
        for (jwks, msg) in [
            (json!([]), "jwks: must be a JWK Set"),
            (json!({}), "jwks: must be a JWK Set"),
            (
                json!({ "keys": [] }),
                "jwks.keys: must be a non-empty array",
            ),
            (
                json!({ "keys": {} }),
                "jwks.keys: must be a non-empty array",
            ),
            (
                json!({ "keys": ["k"] }),
                "jwks.keys[0]: must be a JSON object",
            ),
        ] {
            let err = parse_jwks(&jwks).unwrap_err();
            assert!(err.starts_with(msg), "{jwks}: {err}");
        }
    }

    #[test]
    fn key_errors_name_the_key_and_member() {
        let rsa = fixture_key("rsa-rs256");
        let ec = fixture_key("ec-p256");
        let ed = fixture_key("ed25519");
        let short_n = URL_SAFE_NO_PAD.encode([0xc5; 128]); // 1024 bits
        for (jwk, msg) in [
            (
                json!({ "kty": "oct", "k": "c2VjcmV0" }),
                r#"jwks.keys[0]: kty "oct" is not accepted (use secret for HS256)"#,
            ),
            (
                json!({ "kty": "DSA" }),
                r#"jwks.keys[0]: kty "DSA" is not supported"#,
            ),
            (json!({ "n": "AQAB" }), "jwks.keys[0].kty: required"),
            (
                with(rsa.clone(), "kty", json!(1)),
                "jwks.keys[0].kty: must be a string",
            ),
            (
                with(rsa.clone(), "d", json!("AQAB")),
                "jwks.keys[0].d: private key material is not accepted",
            ),
            (
                with(ec.clone(), "d", json!("AQAB")),
                "jwks.keys[0].d: private key material",
            ),
            (
                with(ed.clone(), "d", json!("AQAB")),
                "jwks.keys[0].d: private key material",
            ),
            (
                with(rsa.clone(), "qi", json!("AQAB")),
                "jwks.keys[0].qi: private key material",
            ),
            (
                with(rsa.clone(), "use", json!("enc")),
                r#"jwks.keys[0].use: "enc" keys do not verify"#,
            ),
            (
                with(rsa.clone(), "key_ops", json!(["encrypt"])),
                "jwks.keys[0].key_ops: must include",
            ),
            (
                with(rsa.clone(), "kid", json!(7)),
                "jwks.keys[0].kid: must be a string",
            ),
            (
                with(rsa.clone(), "alg", json!("HS256")),
                r#"jwks.keys[0].alg: "HS256" is not an RSA algorithm"#,
            ),
            (
                with(rsa.clone(), "alg", json!("ES256")),
                "jwks.keys[0].alg: \"ES256\" is not an RSA",
            ),
            (
                with(rsa.clone(), "n", json!("not+base64/url")),
                "jwks.keys[0].n: not base64url",
            ),
            (
                with(rsa.clone(), "n", json!("AQAB==")),
                "jwks.keys[0].n: not base64url",
            ),
            (
                with(rsa.clone(), "n", json!("")),
                "jwks.keys[0].n: not base64url",
            ),
            (without(rsa.clone(), "e"), "jwks.keys[0].e: required"),
            (
                with(rsa.clone(), "n", json!(short_n)),
                "jwks.keys[0].n: a 1024-bit modulus is not accepted",
            ),
            (
                with(rsa.clone(), "e", json!("AAE")),
                "jwks.keys[0]: not a valid RSA public key",
            ),
            (
                with(ec.clone(), "crv", json!("P-521")),
                r#"jwks.keys[0].crv: "P-521" is not supported"#,
            ),
            (without(ec.clone(), "crv"), "jwks.keys[0].crv: required"),
            (
                with(ec.clone(), "alg", json!("ES384")),
                r#"jwks.keys[0].alg: "ES384" does not fit this key"#,
            ),
            (
                with(ec.clone(), "x", json!("AQAB")),
                "jwks.keys[0].x: must be 32 bytes, not 3",
            ),
            (without(ec.clone(), "y"), "jwks.keys[0].y: required"),
            (
                with(ec.clone(), "y", ec["x"].clone()),
                "jwks.keys[0]: x, y is not a point on P-256",
            ),
            (
                with(ed.clone(), "crv", json!("X25519")),
                r#"jwks.keys[0].crv: "X25519" is not supported"#,
            ),
            (
                with(ed.clone(), "alg", json!("ES256")),
                "jwks.keys[0].alg: \"ES256\" does not fit",
            ),
            (
                with(ed.clone(), "x", ec["x"].clone()),
                "jwks.keys[0].x: not an Ed25519 public key",
            ),
        ] {
            let err = error(jwk.clone());
            assert!(err.starts_with(msg), "{jwk}: {err}");
        }
        // The index is the key's.
        let err =
            parse_jwks(&json!({ "keys": [rsa, ec, { "kty": "oct", "k": "AA" }] })).unwrap_err();
        assert!(err.starts_with(r#"jwks.keys[2]: kty "oct""#), "{err}");
    }

    #[test]
    fn duplicate_kid_refused() {
        let a = fixture_key("ec-p256");
        let b = with(fixture_key("ed25519"), "kid", json!("ec-p256"));
        let err = parse_jwks(&json!({ "keys": [a, b] })).unwrap_err();
        assert_eq!(
            err,
            r#"jwks.keys[1].kid: "ec-p256" is also the kid of jwks.keys[0]"#
        );
    }
}
