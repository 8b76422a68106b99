//! Public keys from a JWK Set (RFC 7517), parsed and validated for the
//! host's `crypto.verify` (RFC 7518 §3.3–3.5, RFC 8037).
//!
//! Each key carries its one algorithm, taken from the key (`kty`, `crv`,
//! `alg`), never from a token. The signature check itself is the host's
//! (native code, a tenth of the cost in WebAssembly): this module only turns
//! a JWK into the bytes `crypto.verify` takes and refuses what no honest
//! public key looks like. Whether an EC point is on its curve is the host's
//! check too, on each call: a key that is not never verifies anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// The asymmetric JWS algorithms a key can have; one-to-one with the
/// contract's `crypto.signature-algorithm`.
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
    pub const ALL: [Alg; 9] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

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

    /// The algorithm a JOSE `alg` name means, if a key can have it.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
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
/// verification can cost (the host refuses larger moduli too).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// A key as `crypto.public-key` carries it: big-endian bytes, not base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Modulus and exponent, without leading zero bytes (the host's RSA
    /// refuses them, and RFC 7518 §6.3.1 forbids them anyway).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed SEC1 point `0x04 || x || y`.
    Ec(Vec<u8>),
    /// The 32-byte Ed25519 key.
    Ed25519(Vec<u8>),
}

/// One verification key: its optional `kid`, its algorithm and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub alg: Alg,
    pub key: KeyMaterial,
}

/// Members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Parses a configured `jwks`: `{"keys": [...]}`, at least one key, every
/// key usable. Errors name the member, e.g. `jwks.keys[0].n: not base64url`.
///
/// # Errors
/// The first key (or shape) at fault: a config names what it means to
/// trust, so nothing in it is skipped.
pub fn parse_jwks(jwks: &Value) -> Result<Vec<PublicKey>, String> {
    let mut parsed: Vec<PublicKey> = Vec::new();
    for (i, jwk) in key_array(jwks)?.iter().enumerate() {
        let at = format!("jwks.keys[{i}]");
        let key = parse_jwk(jwk, &at)?;
        if let Some(j) = same_kid(&parsed, &key) {
            return Err(format!(
                "{at}.kid: {:?} is also the kid of jwks.keys[{j}]",
                key.kid.unwrap_or_default()
            ));
        }
        parsed.push(key);
    }
    Ok(parsed)
}

/// A key set as an identity provider serves it at its `jwks_uri`.
#[derive(Debug)]
pub struct Fetched {
    pub keys: Vec<PublicKey>,
    /// Why keys were left out, e.g. `jwks.keys[2].use: "enc" keys do not
    /// verify signatures`: a provider may publish keys for other uses or
    /// algorithms, which must not cost us the ones we can use.
    pub skipped: Vec<String>,
}

/// Parses a fetched JWKS document: unusable keys are skipped (and said
/// why), a later key with an earlier one's `kid` too.
///
/// # Errors
/// The body is not a JWK Set, or holds no usable key.
pub fn parse_fetched(body: &[u8]) -> Result<Fetched, String> {
    let jwks: Value = serde_json::from_slice(body).map_err(|e| format!("jwks: not JSON ({e})"))?;
    let mut fetched = Fetched {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, jwk) in key_array(&jwks)?.iter().enumerate() {
        let at = format!("jwks.keys[{i}]");
        match parse_jwk(jwk, &at) {
            Ok(key) if same_kid(&fetched.keys, &key).is_some() => fetched.skipped.push(format!(
                "{at}.kid: {:?} is repeated",
                key.kid.unwrap_or_default()
            )),
            Ok(key) => fetched.keys.push(key),
            Err(e) => fetched.skipped.push(e),
        }
    }
    if fetched.keys.is_empty() {
        let first = fetched.skipped.first().map_or("", String::as_str);
        return Err(format!("jwks: no usable key ({first})"));
    }
    Ok(fetched)
}

fn key_array(jwks: &Value) -> Result<&Vec<Value>, String> {
    let Some(keys) = jwks.as_object().and_then(|o| o.get("keys")) else {
        return Err(r#"jwks: must be a JWK Set, {"keys": [...]}"#.to_string());
    };
    match keys.as_array() {
        Some(keys) if !keys.is_empty() => Ok(keys),
        _ => Err("jwks.keys: must be a non-empty array of JWKs".to_string()),
    }
}

/// The index of a key in `keys` with `key`'s kid, if it has one.
fn same_kid(keys: &[PublicKey], key: &PublicKey) -> Option<usize> {
    let kid = key.kid.as_ref()?;
    keys.iter().position(|k| k.kid.as_ref() == Some(kid))
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
            let n = unsigned(bytes(jwk, "n", at)?);
            let e = unsigned(bytes(jwk, "e", at)?);
            let bits = bit_width(&n);
            if !RSA_BITS.contains(&bits) {
                return Err(format!(
                    "{at}.n: a {bits}-bit modulus is not accepted (2048 to 8192 bits)"
                ));
            }
            // What the host's RSA (ring) requires; a key it would refuse is
            // better refused here, with a message.
            if n.last().is_some_and(|b| b & 1 == 0) {
                return Err(format!("{at}: not a valid RSA public key (n is even)"));
            }
            if !(2..=33).contains(&bit_width(&e)) || e.last().is_some_and(|b| b & 1 == 0) {
                return Err(format!(
                    "{at}: not a valid RSA public key (e must be odd, 3 to 2^33 - 1)"
                ));
            }
            (alg, KeyMaterial::Rsa { n, e })
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
            (alg, KeyMaterial::Ec(point))
        }
        "OKP" => {
            let crv = string(jwk, "crv", at)?.ok_or_else(|| format!("{at}.crv: required"))?;
            if crv != "Ed25519" {
                return Err(format!("{at}.crv: {crv:?} is not supported (Ed25519)"));
            }
            check_alg(Alg::EdDsa, alg_member, at)?;
            (Alg::EdDsa, KeyMaterial::Ed25519(fixed(jwk, "x", 32, at)?))
        }
        _ => {
            return Err(format!("{at}: kty {kty:?} is not supported (RSA, EC, OKP)"));
        }
    };
    Ok(PublicKey { kid, alg, key })
}

/// A big-endian unsigned integer without its leading zero bytes.
fn unsigned(mut b: Vec<u8>) -> Vec<u8> {
    let zeros = b.iter().take_while(|&&x| x == 0).count();
    b.drain(..zeros);
    b
}

/// Bits in a big-endian integer that has no leading zero bytes.
fn bit_width(b: &[u8]) -> usize {
    match b.first() {
        None => 0,
        Some(first) => b.len() * 8 - first.leading_zeros() as usize,
    }
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
                with(ed.clone(), "crv", json!("X25519")),
                r#"jwks.keys[0].crv: "X25519" is not supported"#,
            ),
            (
                with(ed.clone(), "alg", json!("ES256")),
                "jwks.keys[0].alg: \"ES256\" does not fit",
            ),
            (
                with(ed.clone(), "x", json!("AQAB")),
                "jwks.keys[0].x: must be 32 bytes, not 3",
            ),
            (
                with(rsa.clone(), "e", json!("AAI")),
                "jwks.keys[0]: not a valid RSA public key (e must be odd",
            ),
            (
                with(rsa.clone(), "e", json!("AgAAAAE")),
                "jwks.keys[0]: not a valid RSA public key (e must be odd",
            ),
            (
                with(rsa.clone(), "n", json!(URL_SAFE_NO_PAD.encode([0xc4; 256]))),
                "jwks.keys[0]: not a valid RSA public key (n is even)",
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

    #[test]
    fn integers_lose_their_leading_zeros_for_the_host() {
        let rsa = fixture_key("rsa-rs256");
        let n = URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap();
        let padded = [&[0, 0][..], &n].concat();
        let padded = with(rsa.clone(), "n", json!(URL_SAFE_NO_PAD.encode(padded)));
        let padded = with(padded, "e", json!("AAEAAQ"));
        let [a, b] = &parse_jwks(&json!({ "keys": [rsa, without(padded, "kid")] })).unwrap()[..]
        else {
            panic!("two keys")
        };
        assert_eq!(a.key, b.key);
        let KeyMaterial::Rsa { n: stripped, e } = &a.key else {
            panic!("{a:?}")
        };
        assert_eq!((stripped, e.as_slice()), (&n, &[1, 0, 1][..]));
    }

    #[test]
    fn a_point_off_its_curve_is_left_to_the_host() {
        // The host checks the point on every call (and it never verifies);
        // checking it here would take the elliptic-curve arithmetic this
        // crate no longer carries.
        let ec = fixture_key("ec-p256");
        let off = with(ec.clone(), "y", ec["x"].clone());
        let keys = parse_jwks(&json!({ "keys": [off] })).unwrap();
        assert!(matches!(&keys[0].key, KeyMaterial::Ec(p) if p.len() == 65 && p[0] == 4));
    }

    #[test]
    fn fetched_sets_skip_the_keys_they_cannot_use() {
        let body = json!({ "keys": [
            with(fixture_key("rsa-rs256"), "use", json!("enc")),
            { "kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA" },
            with(fixture_key("ec-p256"), "d", json!("AAAA")),
            fixture_key("ed25519"),
            with(fixture_key("ec-p384"), "kid", json!("ed25519")),
            fixture_key("ec-p256"),
        ]});
        let fetched = parse_fetched(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = fetched
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap())
            .collect();
        assert_eq!(kids, ["ed25519", "ec-p256"]);
        assert_eq!(fetched.skipped.len(), 4, "{:?}", fetched.skipped);
        assert!(fetched.skipped[0].starts_with("jwks.keys[0].use"));
        assert!(fetched.skipped[2].starts_with("jwks.keys[2].d: private key material"));
        assert!(fetched.skipped[3].starts_with(r#"jwks.keys[4].kid: "ed25519" is repeated"#));
    }

    #[test]
    fn fetched_sets_without_a_usable_key_are_refused() {
        for (body, msg) in [
            ("<html>", "jwks: not JSON"),
            ("{}", "jwks: must be a JWK Set"),
            (r#"{"keys": []}"#, "jwks.keys: must be a non-empty array"),
            (
                r#"{"keys": [{"kty": "oct", "k": "AA"}]}"#,
                r#"jwks: no usable key (jwks.keys[0]: kty "oct""#,
            ),
        ] {
            let err = parse_fetched(body.as_bytes()).unwrap_err();
            assert!(err.starts_with(msg), "{body}: {err}");
        }
    }
}
