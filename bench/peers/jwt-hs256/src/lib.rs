//! The JWT check of the benchmark's peer plugins: the same work as the
//! sidecar's auth policy (plugins/auth) does on its default config, so that
//! the load benchmark compares hosts, not checks.
//!
//! Per request: take the one `Authorization: Bearer …` value (as bytes),
//! refuse tokens over 8 KiB, split the compact form, decode the three parts as
//! strict base64url, parse the header as JSON (`alg` must be `HS256`, no
//! `crit`), verify the HMAC-SHA256 signature in constant time
//! (`Mac::verify_slice`), then parse the claims as JSON, check `exp`
//! (required) and `nbf` with 5 s of leeway, and return the `sub` claim (which
//! the plugins forward as `x-authenticated-user`, like the policy).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header the verified subject is forwarded in (a client-sent one is removed).
pub const SUBJECT_HEADER: &str = "x-authenticated-user";
/// The largest token looked at (the policy's default `max_token_bytes`).
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Allowance for clock skew on `exp` and `nbf` (the policy's default).
pub const LEEWAY_SECS: f64 = 5.0;

/// Why a request is refused: goes into the 401's JSON body as `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    MissingToken,
    MalformedToken,
    UnsupportedAlgorithm,
    BadSignature,
    TokenExpired,
    TokenNotYetValid,
    MissingSubject,
    TokenTooLarge,
}

impl Denial {
    pub fn code(self) -> &'static str {
        match self {
            Denial::MissingToken => "missing_token",
            Denial::MalformedToken => "malformed_token",
            Denial::UnsupportedAlgorithm => "unsupported_algorithm",
            Denial::BadSignature => "bad_signature",
            Denial::TokenExpired => "token_expired",
            Denial::TokenNotYetValid => "token_not_yet_valid",
            Denial::MissingSubject => "missing_subject",
            Denial::TokenTooLarge => "token_too_large",
        }
    }

    /// The 401's body: `{"error":"unauthorized","code":"…"}` (fixed strings,
    /// nothing from the token is echoed).
    pub fn body(self) -> String {
        format!(r#"{{"error":"unauthorized","code":"{}"}}"#, self.code())
    }

    /// The RFC 6750 challenge: bare when no token was sent.
    pub fn challenge(self) -> &'static str {
        if self == Denial::MissingToken {
            "Bearer"
        } else {
            r#"Bearer error="invalid_token""#
        }
    }
}

/// Parses a configuration: JSON `{"secret": "…"}`, or else the raw bytes are
/// the secret. `None` if the secret is empty.
pub fn secret_from_config(config: &[u8]) -> Option<Vec<u8>> {
    let secret = match serde_json::from_slice::<Value>(config) {
        Ok(Value::Object(map)) => match map.get("secret") {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            _ => return None,
        },
        _ => trim_blanks(config).to_vec(),
    };
    (!secret.is_empty()).then_some(secret)
}

/// Checks the `authorization` header values (bytes, first to last) against
/// `secret` at `now_secs` (Unix seconds); returns the subject.
pub fn check<'a>(
    mut authorization: impl Iterator<Item = &'a [u8]>,
    secret: &[u8],
    now_secs: f64,
) -> Result<String, Denial> {
    let Some(value) = authorization.next() else {
        return Err(Denial::MissingToken);
    };
    if authorization.next().is_some() {
        return Err(Denial::MalformedToken);
    }
    let token = bearer_token(value)?;
    verify(token, secret, now_secs)
}

/// The token of one `Bearer` value; any other scheme counts as no token.
pub fn bearer_token(value: &[u8]) -> Result<&str, Denial> {
    let value = trim_blanks(value);
    let (scheme, rest) = match value.iter().position(|b| matches!(b, b' ' | b'\t')) {
        Some(at) => value.split_at(at),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Denial::MissingToken);
    }
    let token = trim_blanks(rest);
    if token.is_empty() {
        return Err(Denial::MissingToken);
    }
    std::str::from_utf8(token).map_err(|_| Denial::MalformedToken)
}

fn trim_blanks(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Verifies a compact HS256 JWT; returns its `sub`.
pub fn verify(token: &str, secret: &[u8], now_secs: f64) -> Result<String, Denial> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Denial::TokenTooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Denial::MalformedToken);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Denial::MalformedToken)
    };
    let header_bytes = decode(header_b64)?;
    let payload_bytes = decode(payload_b64)?;
    let signature = decode(sig_b64)?;

    let header = parse_object(&header_bytes)?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(_)) => return Err(Denial::UnsupportedAlgorithm),
        _ => return Err(Denial::MalformedToken),
    }
    if header.contains_key("crit") {
        return Err(Denial::MalformedToken);
    }

    // The signature covers the encoded header and payload as sent;
    // `verify_slice` compares in constant time.
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| Denial::BadSignature)?;
    mac.update(&token.as_bytes()[..signed_len]);
    mac.verify_slice(&signature)
        .map_err(|_| Denial::BadSignature)?;

    // Authenticated: now the claims.
    let claims = parse_object(&payload_bytes)?;
    match numeric_date(&claims, "exp")? {
        Some(exp) if now_secs > exp + LEEWAY_SECS => return Err(Denial::TokenExpired),
        Some(_) => {}
        None => return Err(Denial::TokenExpired),
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now_secs + LEEWAY_SECS < nbf
    {
        return Err(Denial::TokenNotYetValid);
    }
    match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() && !sub.chars().any(char::is_control) => {
            Ok(sub.clone())
        }
        _ => Err(Denial::MissingSubject),
    }
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Denial> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Denial::MalformedToken),
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(Denial::MalformedToken),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"Secreto";
    const NOW: f64 = 1_700_000_000.0;

    fn sign(header: &str, claims: &str, secret: &[u8]) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(signed.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    fn token(claims: &str) -> String {
        sign(r#"{"alg":"HS256","typ":"JWT"}"#, claims, SECRET)
    }

    fn run(value: &str) -> Result<String, Denial> {
        check(std::iter::once(value.as_bytes()), SECRET, NOW)
    }

    #[test]
    fn a_valid_token_passes() {
        let t = token(r#"{"sub":"admin","exp":1700000100}"#);
        assert_eq!(run(&format!("Bearer {t}")), Ok("admin".into()));
        assert_eq!(run(&format!("bearer   {t} ")), Ok("admin".into()));
    }

    #[test]
    fn refusals() {
        assert_eq!(check(std::iter::empty(), SECRET, NOW), Err(Denial::MissingToken));
        assert_eq!(run("Basic abc"), Err(Denial::MissingToken));
        assert_eq!(run("Bearer "), Err(Denial::MissingToken));
        assert_eq!(run("Bearer a.b"), Err(Denial::MalformedToken));
        let good = token(r#"{"sub":"admin","exp":1700000100}"#);
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(run(&format!("Bearer {tampered}")), Err(Denial::BadSignature));
        let other = sign(r#"{"alg":"HS256"}"#, r#"{"sub":"admin","exp":1700000100}"#, b"other");
        assert_eq!(run(&format!("Bearer {other}")), Err(Denial::BadSignature));
        let expired = token(r#"{"sub":"admin","exp":1699999990}"#);
        assert_eq!(run(&format!("Bearer {expired}")), Err(Denial::TokenExpired));
        let no_exp = token(r#"{"sub":"admin"}"#);
        assert_eq!(run(&format!("Bearer {no_exp}")), Err(Denial::TokenExpired));
        let early = token(r#"{"sub":"admin","exp":1700000100,"nbf":1700000060}"#);
        assert_eq!(run(&format!("Bearer {early}")), Err(Denial::TokenNotYetValid));
        let none = sign(r#"{"alg":"none"}"#, r#"{"sub":"admin","exp":1700000100}"#, SECRET);
        assert_eq!(run(&format!("Bearer {none}")), Err(Denial::UnsupportedAlgorithm));
        let no_sub = token(r#"{"exp":1700000100}"#);
        assert_eq!(run(&format!("Bearer {no_sub}")), Err(Denial::MissingSubject));
        let two = [b"Bearer a".as_slice(), b"Bearer b".as_slice()];
        assert_eq!(check(two.into_iter(), SECRET, NOW), Err(Denial::MalformedToken));
        assert_eq!(
            check(std::iter::once(&b"Bearer \xff\xfe"[..]), SECRET, NOW),
            Err(Denial::MalformedToken)
        );
    }

    #[test]
    fn config_forms() {
        assert_eq!(secret_from_config(br#"{"secret":"Secreto"}"#), Some(b"Secreto".to_vec()));
        assert_eq!(secret_from_config(b"Secreto\n".trim_ascii_end()), Some(b"Secreto".to_vec()));
        assert_eq!(secret_from_config(br#"{"secret":""}"#), None);
        assert_eq!(secret_from_config(b""), None);
    }
}
