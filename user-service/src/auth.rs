//! JWT issuing/verification and the bearer-token extractor.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Claims carried by every token. `username` duplicates `sub` because the
/// seed's clients (and the sidecar's auth policy) read either. A token as the
/// seed's service issued it has `username` alone: it is accepted, with that
/// name as its subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub username: String,
    pub iat: u64,
    pub exp: u64,
}

/// Keys are derived once at startup rather than per request.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl Tokens {
    /// Fails only if the secret is empty (jsonwebtoken refuses empty HMAC keys).
    pub fn new(secret: &str, ttl_secs: u64) -> jsonwebtoken::errors::Result<Self> {
        let mut validation = Validation::new(Algorithm::HS256);
        // We are both issuer and verifier on one clock, so no skew allowance:
        // a token is dead the second its `exp` passes.
        validation.leeway = 0;
        // `sub` or `username`, checked in `verify`.
        validation.set_required_spec_claims(&["exp"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.as_bytes())?,
            decoding: DecodingKey::from_secret(secret.as_bytes())?,
            validation,
            ttl_secs,
        })
    }

    pub fn issue(&self, username: &str) -> Result<String, ApiError> {
        self.issue_at(username, unix_now())
    }

    /// Issues a token as if the current time were `iat` (lets tests mint expired tokens).
    pub fn issue_at(&self, username: &str, iat: u64) -> Result<String, ApiError> {
        let claims = Claims {
            sub: username.to_owned(),
            username: username.to_owned(),
            iat,
            exp: iat.saturating_add(self.ttl_secs),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing token: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                tracing::debug!(error = %e, "rejected token");
                ApiError::InvalidToken
            })?;
        match (claims.sub.is_empty(), claims.username.is_empty()) {
            (true, true) => return Err(ApiError::InvalidToken),
            (true, false) => claims.sub = claims.username.clone(),
            (false, true) => claims.username = claims.sub.clone(),
            (false, false) => {}
        }
        Ok(claims)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The raw token from `Authorization: Bearer <token>`; rejects with `missing_token`
/// when there is no bearer credential at all.
#[derive(Debug)]
pub struct BearerToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?
            .to_str()
            .map_err(|_| ApiError::InvalidToken)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingToken)?;
        // The scheme is case-insensitive per RFC 7235.
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::MissingToken);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::MissingToken);
        }
        Ok(Self(token.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_round_trips_with_configured_ttl() {
        let tokens = Tokens::new("s3cret", 120).unwrap();
        let claims = tokens.verify(&tokens.issue("alice").unwrap()).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.username, "alice");
        assert_eq!(claims.exp - claims.iat, 120);
    }

    #[test]
    fn seed_shaped_token_with_username_alone_is_accepted() {
        #[derive(Serialize)]
        struct Seed<'a> {
            username: &'a str,
            iat: u64,
            exp: u64,
        }
        let tokens = Tokens::new("s3cret", 60).unwrap();
        let key = EncodingKey::from_secret(b"s3cret").unwrap();
        let now = unix_now();
        let seed = Seed {
            username: "admin",
            iat: now,
            exp: now + 60,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &seed, &key).unwrap();
        let claims = tokens.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.username.as_str()),
            ("admin", "admin")
        );
        // Neither name: refused.
        #[derive(Serialize)]
        struct Nameless {
            iat: u64,
            exp: u64,
        }
        let nameless = Nameless {
            iat: now,
            exp: now + 60,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &nameless, &key).unwrap();
        assert!(matches!(tokens.verify(&token), Err(ApiError::InvalidToken)));
    }

    #[test]
    fn empty_secret_is_rejected_at_construction() {
        assert!(Tokens::new("", 60).is_err());
    }

    #[test]
    fn token_past_its_exp_is_invalid() {
        let tokens = Tokens::new("s3cret", 60).unwrap();
        let token = tokens.issue_at("alice", unix_now() - 61).unwrap();
        assert!(matches!(tokens.verify(&token), Err(ApiError::InvalidToken)));
    }

    #[test]
    fn token_signed_with_another_secret_is_invalid() {
        let ours = Tokens::new("ours", 60).unwrap();
        let theirs = Tokens::new("theirs", 60).unwrap();
        let token = theirs.issue("admin").unwrap();
        assert!(matches!(ours.verify(&token), Err(ApiError::InvalidToken)));
    }

    #[test]
    fn token_with_other_hmac_algorithm_is_invalid() {
        let tokens = Tokens::new("s3cret", 60).unwrap();
        let now = unix_now();
        let claims = Claims {
            sub: "admin".into(),
            username: "admin".into(),
            iat: now,
            exp: now + 60,
        };
        let key = EncodingKey::from_secret(b"s3cret").unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &key).unwrap();
        assert!(matches!(tokens.verify(&token), Err(ApiError::InvalidToken)));
    }
}
