//! JWT verification (RFC 7519 / RFC 7515 compact form).
//!
//! The algorithm comes from the key, never from the token: HS256 with the
//! provider's `secret` only, and each public key with its one algorithm. The
//! token's `alg` must equal that algorithm, which rules out `alg: none` and
//! algorithm-confusion attacks (an RSA public key is never an HMAC secret).
//! The header's `kid` selects among the public keys; `jku`, `x5u`, `x5c`
//! and `jwk` (keys the token points to or carries) are never read. HS256 is
//! checked here; every other signature by the host (`crypto.verify`).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::config::{Config, KeySource, Provider};
use crate::imports::Imports;
use crate::jwks::{Refresh, RemoteJwks};
use crate::keys::{Alg, PublicKey};

type HmacSha256 = Hmac<Sha256>;

/// Why a request was refused; `code` goes into the JSON error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    MissingToken,
    MalformedToken,
    UnsupportedAlgorithm,
    UnknownKey,
    BadSignature,
    TokenExpired,
    TokenNotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingSubject,
    TokenTooLarge,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::MissingToken => "missing_token",
            Code::MalformedToken => "malformed_token",
            Code::UnsupportedAlgorithm => "unsupported_algorithm",
            Code::UnknownKey => "unknown_key",
            Code::BadSignature => "bad_signature",
            Code::TokenExpired => "token_expired",
            Code::TokenNotYetValid => "token_not_yet_valid",
            Code::WrongIssuer => "wrong_issuer",
            Code::WrongAudience => "wrong_audience",
            Code::MissingSubject => "missing_subject",
            Code::TokenTooLarge => "token_too_large",
        }
    }
}

/// A refusal: machine code plus a human reason. Reasons are fixed strings so
/// nothing from the token is ever echoed back or logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub code: Code,
    pub reason: &'static str,
}

const fn deny(code: Code, reason: &'static str) -> Denial {
    Denial { code, reason }
}

fn malformed(reason: &'static str) -> Denial {
    deny(Code::MalformedToken, reason)
}

/// Extracts the bearer token from the `authorization` header values (bytes,
/// as the host hands them over).
///
/// No header, or a non-Bearer scheme, means "no token" (RFC 6750 §3). More
/// than one `authorization` header is ambiguous and refused as malformed.
pub fn bearer_token<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<&'a str, Denial> {
    let missing = deny(Code::MissingToken, "missing bearer token");
    let Some(value) = values.next() else {
        return Err(missing);
    };
    if values.next().is_some() {
        return Err(malformed("more than one authorization header"));
    }
    let value = trim_blanks(value);
    let (scheme, rest) = match value.iter().position(|b| matches!(b, b' ' | b'\t')) {
        Some(at) => value.split_at(at),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(missing);
    }
    let token = trim_blanks(rest);
    if token.is_empty() {
        return Err(missing);
    }
    // A JWT is base64url and dots: bytes that are not even UTF-8 cannot be one.
    std::str::from_utf8(token).map_err(|_| malformed("token is not valid base64url"))
}

/// Spaces and tabs only: the blanks HTTP allows around a header value's
/// parts (`trim_ascii` would also eat form feeds and the like).
fn trim_blanks(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// A verified token: its subject and all its claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The string value of `subject_claim`.
    pub subject: String,
    pub claims: Map<String, Value>,
}

/// A token split and decoded, nothing verified yet.
struct Jws<'t> {
    header: Map<String, Value>,
    payload: Vec<u8>,
    /// What the signature covers: the encoded header and payload as sent.
    signed: &'t [u8],
    signature: Vec<u8>,
}

impl Jws<'_> {
    fn alg(&self) -> &str {
        // `decode` made sure it is there and a string.
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }

    fn claims(&self) -> Result<Map<String, Value>, Denial> {
        parse_object(&self.payload, "token payload is not a JSON object")
    }
}

fn decode(token: &str, max_bytes: usize) -> Result<Jws<'_>, Denial> {
    // Size first, so an oversized token costs nothing more to refuse.
    if token.len() > max_bytes {
        return Err(deny(Code::TokenTooLarge, "token is larger than allowed"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("token must have three dot-separated parts"));
    };
    // Strict base64url: URL-safe alphabet, no padding, no whitespace, no
    // non-canonical trailing bits.
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| malformed("token header is not valid base64url"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| malformed("token payload is not valid base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| malformed("token signature is not valid base64url"))?;
    let header = parse_object(&header_bytes, "token header is not a JSON object")?;
    if !matches!(header.get("alg"), Some(Value::String(_))) {
        return Err(malformed("token header has no alg"));
    }
    Ok(Jws {
        header,
        payload,
        signed: &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()],
        signature,
    })
}

/// Verifies `token` against `cfg` at the host's time and returns the
/// subject and claims.
///
/// # Errors
/// Why the token is refused.
pub fn authenticate(token: &str, cfg: &Config, imports: &dyn Imports) -> Result<Verified, Denial> {
    let jws = decode(token, cfg.max_token_bytes)?;
    let wrong_issuer = deny(Code::WrongIssuer, "token issuer is not accepted");
    // With several providers the token's `iss`, unverified, only picks
    // whose keys to try; it is checked again once the signature holds.
    let (provider, claims) = if cfg.by_issuer {
        let claims = jws.claims()?;
        let iss = claims.get("iss").and_then(Value::as_str);
        (cfg.provider_for(iss).ok_or(wrong_issuer)?, Some(claims))
    } else {
        (cfg.provider_for(None).ok_or(wrong_issuer)?, None)
    };

    let now_micros = imports.now_micros();
    match &provider.keys {
        KeySource::None => check_signature(&jws, provider, &[], imports)?,
        KeySource::Inline(keys) => check_signature(&jws, provider, keys, imports)?,
        KeySource::Remote(remote) => {
            let keys = remote_keys(&jws, provider, remote, imports, now_micros)?;
            check_signature(&jws, provider, &keys, imports)?;
        }
    }

    // Only now, with the payload authenticated, look at the claims.
    let claims = match claims {
        Some(c) => c,
        None => jws.claims()?,
    };
    check_times(&claims, cfg, now_micros / 1_000_000)?;
    check_issuer(&claims, provider)?;
    check_audience(&claims, provider)?;

    match claims.get(&cfg.subject_claim) {
        // The subject becomes a header value: no control characters.
        Some(Value::String(sub)) if !sub.is_empty() && !sub.chars().any(char::is_control) => {
            Ok(Verified {
                subject: sub.clone(),
                claims,
            })
        }
        _ => Err(deny(
            Code::MissingSubject,
            "token has no usable subject claim",
        )),
    }
}

/// The keys of a `jwks_url` provider to check `jws` with, refreshed first
/// if the set is too old or lacks the token's key (at most one fetch).
fn remote_keys<'r>(
    jws: &Jws,
    provider: &Provider,
    remote: &'r RemoteJwks,
    imports: &dyn Imports,
    now_micros: u64,
) -> Result<Cow<'r, [PublicKey]>, Denial> {
    // An HS256 token without a kid needs the secret alone: no kv, no fetch.
    if jws.alg() == "HS256" && provider.secret.is_some() && !jws.header.contains_key("kid") {
        return Ok(Cow::Borrowed(&[]));
    }
    let mut set = remote.current(imports);
    let mut tried = false;
    if remote.is_stale(&set, now_micros) {
        tried = true;
        if let Some(fresh) = remote.refresh(imports, Refresh::Age) {
            set = Cow::Owned(fresh);
        }
    }
    if !tried
        && lacks_key(select_key(jws, provider, &set.keys), jws)
        && let Some(fresh) = remote.refresh(imports, Refresh::UnknownKey)
    {
        set = Cow::Owned(fresh);
    }
    Ok(match set {
        Cow::Borrowed(set) => Cow::Borrowed(&set.keys[..]),
        Cow::Owned(set) => Cow::Owned(set.keys),
    })
}

/// Whether a refresh could make `selected` succeed: the token names a kid
/// the set lacks, or has none and no key of its (asymmetric) `alg`.
fn lacks_key(selected: Result<KeyChoice, Denial>, jws: &Jws) -> bool {
    match selected {
        Err(d) if d.code == Code::UnknownKey => true,
        Err(d) if d.code == Code::UnsupportedAlgorithm => {
            !jws.header.contains_key("kid") && Alg::from_name(jws.alg()).is_some()
        }
        _ => false,
    }
}

fn check_signature(
    jws: &Jws,
    provider: &Provider,
    keys: &[PublicKey],
    imports: &dyn Imports,
) -> Result<(), Denial> {
    let verifier = select_key(jws, provider, keys)?;
    // We implement no JWS extensions, so per RFC 7515 §4.1.11 any `crit`
    // header makes the token unacceptable.
    if jws.header.contains_key("crit") {
        return Err(malformed("token header has an unsupported crit parameter"));
    }
    let valid = match verifier {
        // `verify_slice` compares in constant time.
        KeyChoice::Secret(secret) => HmacSha256::new_from_slice(secret).is_ok_and(|mut mac| {
            mac.update(jws.signed);
            mac.verify_slice(&jws.signature).is_ok()
        }),
        KeyChoice::Keys(keys) => keys
            .iter()
            .any(|k| imports.verify(k.alg, &k.key, jws.signed, &jws.signature)),
    };
    if valid {
        Ok(())
    } else {
        Err(deny(Code::BadSignature, "token signature is invalid"))
    }
}

/// The key(s) a token may be verified with.
enum KeyChoice<'a> {
    Secret(&'a [u8]),
    /// One key when the token names it by `kid`, else every key of its `alg`.
    Keys(Vec<&'a PublicKey>),
}

/// Picks the key(s) for a token. A `kid` naming one of `keys` pins that
/// key, whose algorithm must then be the token's `alg`. Otherwise HS256 is
/// verified with the `secret`, whatever its `kid` (as before public keys
/// existed), any other `kid` is unknown, and a token without one is tried
/// on every key of its `alg`.
fn select_key<'a>(
    jws: &Jws,
    provider: &'a Provider,
    keys: &'a [PublicKey],
) -> Result<KeyChoice<'a>, Denial> {
    let alg = jws.alg();
    let unsupported = || {
        deny(
            Code::UnsupportedAlgorithm,
            "token algorithm is not accepted",
        )
    };
    let kid = match jws.header.get("kid") {
        _ if !provider.has_public_keys() => None,
        None => None,
        Some(Value::String(kid)) => Some(kid),
        Some(_) => return Err(malformed("token header kid is not a string")),
    };
    if let Some(kid) = kid {
        if let Some(key) = keys.iter().find(|k| k.kid.as_ref() == Some(kid)) {
            return if key.alg.name() == alg {
                Ok(KeyChoice::Keys(vec![key]))
            } else {
                Err(deny(
                    Code::UnsupportedAlgorithm,
                    "token algorithm is not its key's",
                ))
            };
        }
        if alg != "HS256" || provider.secret.is_none() {
            return Err(deny(Code::UnknownKey, "token kid names no configured key"));
        }
    }
    if alg == "HS256" {
        return provider
            .secret
            .as_deref()
            .map(KeyChoice::Secret)
            .ok_or_else(unsupported);
    }
    let keys: Vec<_> = keys.iter().filter(|k| k.alg.name() == alg).collect();
    if keys.is_empty() {
        return Err(unsupported());
    }
    Ok(KeyChoice::Keys(keys))
}

fn parse_object(bytes: &[u8], reason: &'static str) -> Result<Map<String, Value>, Denial> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed(reason)),
    }
}

/// A NumericDate claim: absent, or a finite JSON number (fractions allowed).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(malformed("token time claim is not a number")),
        },
    }
}

fn check_times(claims: &Map<String, Value>, cfg: &Config, now_secs: u64) -> Result<(), Denial> {
    let now = now_secs as f64;
    let leeway = cfg.leeway_secs as f64;
    match numeric_date(claims, "exp")? {
        Some(exp) if now > exp + leeway => {
            return Err(deny(Code::TokenExpired, "token has expired"));
        }
        None if cfg.require_exp => {
            return Err(deny(Code::TokenExpired, "token has no exp claim"));
        }
        _ => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(deny(Code::TokenNotYetValid, "token is not valid yet"));
    }
    Ok(())
}

fn check_issuer(claims: &Map<String, Value>, provider: &Provider) -> Result<(), Denial> {
    let Some(expected) = &provider.issuer else {
        return Ok(());
    };
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == expected => Ok(()),
        _ => Err(deny(Code::WrongIssuer, "token issuer is not accepted")),
    }
}

/// `aud` may be one string or an array of strings (RFC 7519 §4.1.3).
fn check_audience(claims: &Map<String, Value>, provider: &Provider) -> Result<(), Denial> {
    let Some(expected) = &provider.audience else {
        return Ok(());
    };
    let ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expected,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expected.as_str())),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(deny(Code::WrongAudience, "token audience is not accepted"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    /// The subject of `token` if `cfg` accepts it at `now_secs`.
    fn verify(token: &str, cfg: &Config, now_secs: u64) -> Result<String, Denial> {
        authenticate(token, cfg, &FakeHost::at(now_secs)).map(|v| v.subject)
    }

    const SECRET: &str = "test-secret-please-change";
    const NOW: u64 = 1_700_000_000;

    fn cfg() -> Config {
        Config::parse(&format!(r#"{{"secret":"{SECRET}"}}"#)).unwrap()
    }

    fn cfg_with(extra: &str) -> Config {
        Config::parse(&format!(r#"{{"secret":"{SECRET}",{extra}}}"#)).unwrap()
    }

    fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(alg), claims, key).unwrap()
    }

    fn sign(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        sign_with(Algorithm::HS256, &key, claims)
    }

    /// Claims shaped like this repo's user-service tokens (`sub` and
    /// `username`; the seed's own tokens carry no `sub`).
    fn seed_claims() -> Value {
        json!({"username": "admin", "sub": "admin", "iat": NOW - 10, "exp": NOW + 3600})
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// A token with an arbitrary header, signed with HMAC-SHA256 by hand.
    fn hand_signed(header: &str, payload: &str, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(payload));
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    fn code_of(token: &str, cfg: &Config) -> Code {
        verify(token, cfg, NOW).unwrap_err().code
    }

    #[test]
    fn valid_token_yields_subject() {
        assert_eq!(verify(&sign(&seed_claims()), &cfg(), NOW).unwrap(), "admin");
    }

    #[test]
    fn hand_signed_matches_library() {
        // Our signer and jsonwebtoken agree, so hand-built tokens below are real.
        let payload = r#"{"sub":"admin","exp":1700003600}"#;
        let tok = hand_signed(r#"{"alg":"HS256","typ":"JWT"}"#, payload, SECRET.as_bytes());
        assert_eq!(verify(&tok, &cfg(), NOW).unwrap(), "admin");
    }

    #[test]
    fn subject_claim_is_configurable() {
        let c = cfg_with(r#""subject_claim":"username""#);
        let claims = json!({"username": "bob", "sub": "x", "exp": NOW + 60});
        assert_eq!(verify(&sign(&claims), &c, NOW).unwrap(), "bob");
        // The seed's user-service issues `username` and no `sub` at all.
        let seed = sign(&json!({"username": "admin", "iat": NOW - 10, "exp": NOW + 3600}));
        assert_eq!(verify(&seed, &c, NOW).unwrap(), "admin");
        assert_eq!(code_of(&seed, &cfg()), Code::MissingSubject);
    }

    #[test]
    fn expiry_and_leeway() {
        let c = cfg(); // leeway 5
        let at = |exp: u64| sign(&json!({"sub": "a", "exp": exp}));
        assert!(verify(&at(NOW - 5), &c, NOW).is_ok(), "within leeway");
        assert_eq!(code_of(&at(NOW - 6), &c), Code::TokenExpired);
        assert_eq!(code_of(&at(NOW - 20), &c), Code::TokenExpired);
        assert_eq!(code_of(&at(NOW - 3600), &c), Code::TokenExpired);
        let strict = cfg_with(r#""leeway_secs":0"#);
        assert!(verify(&at(NOW), &strict, NOW).is_ok());
        assert_eq!(code_of(&at(NOW - 1), &strict), Code::TokenExpired);
    }

    #[test]
    fn exp_required_unless_disabled() {
        let tok = sign(&json!({"sub": "a"}));
        assert_eq!(code_of(&tok, &cfg()), Code::TokenExpired);
        let lax = cfg_with(r#""require_exp":false"#);
        assert_eq!(verify(&tok, &lax, NOW).unwrap(), "a");
    }

    #[test]
    fn non_numeric_exp_is_malformed() {
        let tok = sign(&json!({"sub": "a", "exp": "tomorrow"}));
        assert_eq!(code_of(&tok, &cfg()), Code::MalformedToken);
    }

    #[test]
    fn fractional_exp_accepted() {
        let tok = sign(&json!({"sub": "a", "exp": (NOW as f64) + 0.5}));
        assert!(verify(&tok, &cfg_with(r#""leeway_secs":0"#), NOW).is_ok());
    }

    #[test]
    fn nbf_in_future() {
        let c = cfg();
        let nbf = |nbf: u64| sign(&json!({"sub": "a", "exp": NOW + 600, "nbf": nbf}));
        assert!(verify(&nbf(NOW + 5), &c, NOW).is_ok(), "within leeway");
        assert_eq!(code_of(&nbf(NOW + 6), &c), Code::TokenNotYetValid);
        assert_eq!(code_of(&nbf(NOW + 500), &c), Code::TokenNotYetValid);
        assert!(verify(&nbf(NOW - 100), &c, NOW).is_ok());
    }

    #[test]
    fn bad_signature() {
        let other = EncodingKey::from_secret(b"another-secret").unwrap();
        let tok = sign_with(Algorithm::HS256, &other, &seed_claims());
        assert_eq!(code_of(&tok, &cfg()), Code::BadSignature);

        // A valid token whose payload was swapped keeps its old signature.
        let good = sign(&seed_claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged_payload = b64(r#"{"sub":"root","exp":1700003600}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(code_of(&forged, &cfg()), Code::BadSignature);

        // Truncated or empty signatures are not valid either.
        let empty_sig = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(code_of(&empty_sig, &cfg()), Code::BadSignature);
        let short_sig = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert_eq!(code_of(&short_sig, &cfg()), Code::BadSignature);
    }

    #[test]
    fn alg_none_refused() {
        let payload = b64(r#"{"sub":"admin","exp":1700003600}"#);
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
            let tok = format!("{}.{}.", b64(header), payload);
            assert_eq!(
                code_of(&tok, &cfg()),
                Code::UnsupportedAlgorithm,
                "{header}"
            );
        }
        // Even with a correct HS256 MAC attached, `none` is refused.
        let tok = hand_signed(
            r#"{"alg":"none"}"#,
            r#"{"sub":"a","exp":1700003600}"#,
            SECRET.as_bytes(),
        );
        assert_eq!(code_of(&tok, &cfg()), Code::UnsupportedAlgorithm);
    }

    #[test]
    fn other_hmac_algorithms_refused() {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let tok = sign_with(alg, &key, &seed_claims());
            assert_eq!(code_of(&tok, &cfg()), Code::UnsupportedAlgorithm, "{alg:?}");
        }
    }

    /// RFC 7515 Appendix A.2: a real RS256 JWS from the spec's examples.
    const RFC7515_A2_RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

    #[test]
    fn rs256_refused() {
        // A genuine RS256 token (no private key needs to live in the repo).
        let lax = cfg_with(r#""require_exp":false,"subject_claim":"iss""#);
        assert_eq!(code_of(RFC7515_A2_RS256, &lax), Code::UnsupportedAlgorithm);
        // The confusion attack: header says RS256, MAC made with our secret.
        // The header's alg never selects the verification algorithm.
        let tok = hand_signed(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"sub":"admin","exp":1700003600}"#,
            SECRET.as_bytes(),
        );
        assert_eq!(code_of(&tok, &cfg()), Code::UnsupportedAlgorithm);
    }

    #[test]
    fn header_without_alg_or_with_crit() {
        let payload = r#"{"sub":"admin","exp":1700003600}"#;
        for header in [r#"{"typ":"JWT"}"#, r#"{"alg":256}"#] {
            let tok = hand_signed(header, payload, SECRET.as_bytes());
            assert_eq!(code_of(&tok, &cfg()), Code::MalformedToken, "{header}");
        }
        let tok = hand_signed(
            r#"{"alg":"HS256","crit":["exp"]}"#,
            payload,
            SECRET.as_bytes(),
        );
        assert_eq!(code_of(&tok, &cfg()), Code::MalformedToken);
    }

    #[test]
    fn wrong_issuer() {
        let c = cfg_with(r#""issuer":"user-service""#);
        let with_iss = |iss: Value| sign(&json!({"sub": "a", "exp": NOW + 60, "iss": iss}));
        assert!(verify(&with_iss(json!("user-service")), &c, NOW).is_ok());
        assert_eq!(code_of(&with_iss(json!("evil")), &c), Code::WrongIssuer);
        assert_eq!(
            code_of(&with_iss(json!(["user-service"])), &c),
            Code::WrongIssuer
        );
        assert_eq!(
            code_of(&sign(&seed_claims()), &c),
            Code::WrongIssuer,
            "iss missing"
        );
        // Without a configured issuer, any iss is fine.
        assert!(verify(&with_iss(json!("evil")), &cfg(), NOW).is_ok());
    }

    #[test]
    fn wrong_audience() {
        let c = cfg_with(r#""audience":"main-service""#);
        let with_aud = |aud: Value| sign(&json!({"sub": "a", "exp": NOW + 60, "aud": aud}));
        assert!(verify(&with_aud(json!("main-service")), &c, NOW).is_ok());
        assert!(verify(&with_aud(json!(["x", "main-service"])), &c, NOW).is_ok());
        assert_eq!(code_of(&with_aud(json!("other")), &c), Code::WrongAudience);
        assert_eq!(
            code_of(&with_aud(json!(["x", "y"])), &c),
            Code::WrongAudience
        );
        assert_eq!(code_of(&with_aud(json!([])), &c), Code::WrongAudience);
        assert_eq!(code_of(&with_aud(json!(42)), &c), Code::WrongAudience);
        assert_eq!(
            code_of(&sign(&seed_claims()), &c),
            Code::WrongAudience,
            "aud missing"
        );
    }

    #[test]
    fn subject_must_be_a_string() {
        let c = cfg();
        for claims in [
            json!({"exp": NOW + 60}),
            json!({"sub": 42, "exp": NOW + 60}),
            json!({"sub": "", "exp": NOW + 60}),
            json!({"sub": "a\r\nx-admin: 1", "exp": NOW + 60}),
        ] {
            assert_eq!(
                code_of(&sign(&claims), &c),
                Code::MissingSubject,
                "{claims}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        let good = sign(&seed_claims());
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            "".to_string(),
            "abc".to_string(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.extra"),
            // Padding, standard alphabet and whitespace are not base64url.
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            // `+` and `/` belong to the standard alphabet, not base64url.
            format!("{}.{}.+{}", parts[0], parts[1], &parts[2][1..]),
            format!("{}.{}./{}", parts[0], parts[1], &parts[2][1..]),
            format!("{} .{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}\n", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], "!!!!", parts[2]),
        ];
        for tok in &cases {
            assert_eq!(code_of(tok, &cfg()), Code::MalformedToken, "{tok:?}");
        }
    }

    #[test]
    fn non_canonical_base64_refused() {
        // A 32-byte MAC is 43 base64url chars whose last 2 bits must be zero;
        // a lenient decoder would map both spellings to the same bytes.
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let good = sign(&seed_claims());
        let (rest, sig) = good.rsplit_once('.').unwrap();
        let last = ALPHABET.find(sig.chars().last().unwrap()).unwrap();
        assert_eq!(last & 0b11, 0);
        let twin = ALPHABET.as_bytes()[last | 1] as char;
        let tok = format!("{rest}.{}{twin}", &sig[..sig.len() - 1]);
        assert_eq!(code_of(&tok, &cfg()), Code::MalformedToken);
    }

    #[test]
    fn header_and_payload_must_be_json_objects() {
        let payload = r#"{"sub":"admin","exp":1700003600}"#;
        for header in ["not json", "[]", r#""HS256""#, "null"] {
            let tok = hand_signed(header, payload, SECRET.as_bytes());
            assert_eq!(code_of(&tok, &cfg()), Code::MalformedToken, "{header}");
        }
        for payload in ["not json", "[1]", "42", ""] {
            let tok = hand_signed(r#"{"alg":"HS256"}"#, payload, SECRET.as_bytes());
            assert_eq!(code_of(&tok, &cfg()), Code::MalformedToken, "{payload}");
        }
    }

    #[test]
    fn oversized_token() {
        let big = "x".repeat(10_000);
        let tok = sign(&json!({"sub": "a", "exp": NOW + 60, "pad": big}));
        assert_eq!(code_of(&tok, &cfg()), Code::TokenTooLarge);
        // The limit applies before any parsing.
        assert_eq!(code_of(&"a".repeat(8193), &cfg()), Code::TokenTooLarge);
        let roomy = cfg_with(r#""max_token_bytes":20000"#);
        assert!(verify(&tok, &roomy, NOW).is_ok());
    }

    /// Tokens and keys made with PyJWT by `tests/fixtures/make_tokens.py`.
    mod fixtures {
        use super::*;
        use crate::testing::{
            FIXTURES_NOW as NOW, fixture_token as token, fixture_tokens as tokens,
        };

        /// The fixture JWKS, plus `extra` config members.
        fn jwks_cfg(extra: &str) -> Config {
            let t = tokens();
            Config::parse(&format!(
                r#"{{"jwks":{},"issuer":{},"audience":{}{extra}}}"#,
                include_str!("../tests/fixtures/jwks.json"),
                t["issuer"],
                t["audience"]
            ))
            .unwrap()
        }

        #[test]
        fn every_fixture_token_gets_its_expected_outcome() {
            let cfg = jwks_cfg("");
            let tokens = tokens();
            let tokens = tokens["tokens"].as_object().unwrap();
            assert!(tokens.len() > 20);
            for (name, t) in tokens {
                let got = verify(t["token"].as_str().unwrap(), &cfg, NOW);
                match (&t["sub"], &t["code"]) {
                    (Value::String(sub), _) => assert_eq!(got.as_ref(), Ok(sub), "{name}"),
                    (_, Value::String(code)) => {
                        assert_eq!(
                            got.map_err(|d| d.code.as_str()),
                            Err(code.as_str()),
                            "{name}"
                        )
                    }
                    _ => panic!("{name}: neither sub nor code"),
                }
            }
        }

        #[test]
        fn secret_and_jwks_together() {
            let cfg = jwks_cfg(&format!(r#","secret":"{SECRET}""#));
            assert_eq!(
                verify(&token("valid_PS384"), &cfg, NOW).unwrap(),
                "user-ps384"
            );
            let hs = sign(&json!({"sub": "h", "iss": "https://idp.example",
                "aud": "sidecar-api", "exp": NOW + 60}));
            assert_eq!(verify(&hs, &cfg, NOW).unwrap(), "h");
            // HS256 with the RSA public key as the MAC key: with no kid it is
            // checked against the secret, and fails; with the RSA key's kid
            // that key is pinned, and it is not an HS256 key.
            for (name, code) in [
                ("hs256_with_rsa_public_pem_no_kid", Code::BadSignature),
                ("hs256_with_rsa_public_der_no_kid", Code::BadSignature),
                ("hs256_with_rsa_public_n_no_kid", Code::BadSignature),
                ("hs256_with_rsa_public_pem_kid", Code::UnsupportedAlgorithm),
            ] {
                assert_eq!(code_of(&token(name), &cfg), code, "{name}");
            }
        }

        #[test]
        fn without_a_secret_hs256_is_not_accepted() {
            let cfg = jwks_cfg("");
            let hs = sign(&json!({"sub": "h", "exp": NOW + 60}));
            assert_eq!(
                verify(&hs, &cfg, NOW).unwrap_err().code,
                Code::UnsupportedAlgorithm
            );
        }

        #[test]
        fn a_key_verifies_only_its_own_algorithm() {
            // The RS256 token re-labelled: same key pair, other algorithms.
            let cfg = jwks_cfg(r#","require_exp":false"#);
            let good = token("valid_RS256");
            let (_, rest) = good.split_once('.').unwrap();
            for alg in ["RS384", "PS256", "ES256", "EdDSA", "none"] {
                for kid in [None, Some("rsa-rs256")] {
                    let mut header = json!({"alg": alg});
                    if let Some(kid) = kid {
                        header["kid"] = json!(kid);
                    }
                    let tok = format!("{}.{rest}", b64(&header.to_string()));
                    assert!(verify(&tok, &cfg, NOW).is_err(), "{alg} {kid:?}");
                }
            }
        }

        #[test]
        fn kid_pins_one_key() {
            // The ES256 token under another ES256 key's kid: refused, though
            // its own key is configured (without a kid) too.
            let jwks: Value =
                serde_json::from_str(include_str!("../tests/fixtures/jwks.json")).unwrap();
            let p256 = jwks["keys"].as_array().unwrap()[6].clone();
            assert_eq!(p256["kid"], "ec-p256");
            let mut anonymous = p256.clone();
            anonymous.as_object_mut().unwrap().remove("kid");
            let cfg = Config::parse(&json!({"jwks": {"keys": [anonymous]}}).to_string()).unwrap();
            let tok = token("valid_ES256");
            assert_eq!(code_of(&tok, &cfg), Code::UnknownKey);
            assert_eq!(
                verify(&token("valid_ES256_no_kid"), &cfg, NOW).unwrap(),
                "no-kid"
            );
        }

        #[test]
        fn non_string_kid_is_malformed_with_jwks() {
            let header = b64(r#"{"alg":"ES256","kid":7}"#);
            let good = token("valid_ES256");
            let (_, rest) = good.split_once('.').unwrap();
            let tok = format!("{header}.{rest}");
            assert_eq!(code_of(&tok, &jwks_cfg("")), Code::MalformedToken);
        }

        #[test]
        fn truncated_or_reencoded_signatures_fail() {
            let cfg = jwks_cfg("");
            for name in ["valid_RS256", "valid_PS512", "valid_ES384", "valid_EdDSA"] {
                let good = token(name);
                let (rest, sig) = good.rsplit_once('.').unwrap();
                let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                for bad in [&sig[..sig.len() - 1], &[], &[sig.as_slice(), &[0]].concat()] {
                    let tok = format!("{rest}.{}", URL_SAFE_NO_PAD.encode(bad));
                    assert_eq!(code_of(&tok, &cfg), Code::BadSignature, "{name}");
                }
                let mut flipped = sig.clone();
                flipped[5] ^= 1;
                let tok = format!("{rest}.{}", URL_SAFE_NO_PAD.encode(&flipped));
                assert_eq!(code_of(&tok, &cfg), Code::BadSignature, "{name}");
            }
        }
    }

    #[test]
    fn bearer_parsing() {
        let one = |v: &'static str| bearer_token(std::iter::once(v.as_bytes()));
        assert_eq!(one("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(one("bearer abc"), Ok("abc"));
        assert_eq!(one("BEARER   abc  "), Ok("abc"));
        assert_eq!(one("\tBearer\tabc\t"), Ok("abc"));
        assert_eq!(
            one("Basic dXNlcjpwYXNz").unwrap_err().code,
            Code::MissingToken
        );
        assert_eq!(one("Bearer").unwrap_err().code, Code::MissingToken);
        assert_eq!(one("Bearer   ").unwrap_err().code, Code::MissingToken);
        assert_eq!(one("Bearerabc").unwrap_err().code, Code::MissingToken);
        assert_eq!(
            bearer_token(std::iter::empty()).unwrap_err().code,
            Code::MissingToken
        );
        let two = [&b"Bearer a"[..], b"Bearer b"];
        assert_eq!(
            bearer_token(two.into_iter()).unwrap_err().code,
            Code::MalformedToken
        );
        // A token with inner whitespace is passed on and refused by `verify`.
        assert_eq!(one("Bearer a b"), Ok("a b"));
    }

    #[test]
    fn non_utf8_authorization_is_never_a_token() {
        let one = |v: &'static [u8]| bearer_token(std::iter::once(v)).map_err(|d| d.code);
        assert_eq!(one(b"Bearer a.b\xff.c"), Err(Code::MalformedToken));
        // Another scheme is "no token", whatever its bytes.
        assert_eq!(one(b"Basic \xff\xfe"), Err(Code::MissingToken));
        assert_eq!(one(b"\xffBearer abc"), Err(Code::MissingToken));
    }
}
