//! A stand-in for the host in unit tests: a clock, a `kv` with expiry, stub
//! HTTP answers, captured warnings, and signature checks by `ring` (what the
//! host's `crypto.verify` uses).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::imports::{FetchError, Field, HttpResponse, Imports};
use crate::keys::{Alg, KeyMaterial};

/// A value and when it expires (microseconds), if it does.
type Entry = (Vec<u8>, Option<u64>);
/// A warning's message and fields.
type Warning = (String, Vec<(String, Field)>);

pub struct FakeHost {
    now: Cell<u64>,
    kv: RefCell<HashMap<String, Entry>>,
    answers: RefCell<HashMap<String, Result<HttpResponse, FetchError>>>,
    /// `(url, fresh)` of each `get`.
    pub requests: RefCell<Vec<(String, bool)>>,
    pub warnings: RefCell<Vec<Warning>>,
}

impl FakeHost {
    /// A host whose clock reads `now_secs`.
    pub fn at(now_secs: u64) -> Self {
        Self {
            now: Cell::new(now_secs * 1_000_000),
            kv: RefCell::default(),
            answers: RefCell::default(),
            requests: RefCell::default(),
            warnings: RefCell::default(),
        }
    }

    pub fn advance_secs(&self, secs: u64) {
        self.now.set(self.now.get() + secs * 1_000_000);
    }

    /// Answers `GET url` with `answer` from now on.
    pub fn answer(&self, url: &str, answer: Result<HttpResponse, FetchError>) {
        self.answers.borrow_mut().insert(url.to_owned(), answer);
    }

    pub fn answer_json(&self, url: &str, status: u16, body: &str) {
        self.answer(
            url,
            Ok(HttpResponse {
                status,
                body: body.as_bytes().to_vec(),
            }),
        );
    }

    pub fn fetches(&self) -> usize {
        self.requests.borrow().len()
    }

    pub fn warned(&self, message: &str) -> usize {
        self.warnings
            .borrow()
            .iter()
            .filter(|(m, _)| m == message)
            .count()
    }

    pub fn kv_value(&self, key: &str) -> Option<Vec<u8>> {
        self.kv_get(key)
    }
}

impl Imports for FakeHost {
    fn now_micros(&self) -> u64 {
        self.now.get()
    }

    fn verify(&self, alg: Alg, key: &KeyMaterial, message: &[u8], sig: &[u8]) -> bool {
        match (alg, key) {
            (Alg::Es256 | Alg::Es384 | Alg::EdDsa, KeyMaterial::Rsa { .. }) => false,
            (_, KeyMaterial::Rsa { n, e }) => {
                let params: &signature::RsaParameters = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            (Alg::Es256, KeyMaterial::Ec(point)) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Alg::Es384, KeyMaterial::Ec(point)) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Alg::EdDsa, KeyMaterial::Ed25519(x)) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            _ => false,
        }
    }

    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now.get();
        match self.kv.borrow().get(key) {
            Some((v, expiry)) if expiry.is_none_or(|e| e > now) => Some(v.clone()),
            _ => None,
        }
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        let expiry = ttl_ms.map(|t| self.now.get() + t * 1000);
        self.kv
            .borrow_mut()
            .insert(key.to_owned(), (value.to_vec(), expiry));
        Ok(())
    }

    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        let value = match self.kv_get(key) {
            Some(v) => String::from_utf8(v).unwrap().parse::<i64>().unwrap() + delta,
            None => {
                self.kv_set(key, delta.to_string().as_bytes(), ttl_ms)?;
                return Ok(delta);
            }
        };
        let mut kv = self.kv.borrow_mut();
        let entry = kv.get_mut(key).unwrap();
        entry.0 = value.to_string().into_bytes();
        Ok(value)
    }

    fn get(&self, url: &str, fresh: bool) -> Result<HttpResponse, FetchError> {
        self.requests.borrow_mut().push((url.to_owned(), fresh));
        self.answers
            .borrow()
            .get(url)
            .cloned()
            .unwrap_or_else(|| Err(FetchError::Denied(format!("{url} is not granted"))))
    }

    fn warn(&self, message: &str, fields: &[(&str, Field)]) {
        self.warnings.borrow_mut().push((
            message.to_owned(),
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        ));
    }
}

/// The PyJWT fixtures' issue time (`tests/fixtures/make_tokens.py`), 2024-01-01.
pub const FIXTURES_NOW: u64 = 1_704_067_200;

/// `tests/fixtures/tokens.json`: named tokens and what each must do.
pub fn fixture_tokens() -> serde_json::Value {
    serde_json::from_str(include_str!("../tests/fixtures/tokens.json")).unwrap()
}

/// The fixture token `name`.
pub fn fixture_token(name: &str) -> String {
    fixture_tokens()["tokens"][name]["token"]
        .as_str()
        .unwrap()
        .to_owned()
}
