//! The `crypto` capability: signature verification in native code (ring).
//!
//! Verifying an RS256 or ES256 signature inside a policy's WebAssembly costs
//! 0.8–1.5 ms a call (BENCHMARKS.md); natively it is tens of microseconds.
//! The capability reaches nothing: it is pure computation on the bytes the
//! policy passes. Because it is pure, its successes are remembered
//! ([`Verified`]): a client sends the same token for its whole life, and
//! checking it again would give the same answer (Envoy's `jwt_authn` keeps
//! verified tokens in a cache the same way).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use ring::digest;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::v02::crypto::{self as wit, PublicKey, SignatureAlgorithm};

/// Per-instance state of the capability: none.
#[derive(Debug, Default)]
pub struct CryptoState;

impl wit::Host for CryptoState {
    fn verify(
        &mut self,
        algorithm: SignatureAlgorithm,
        key: PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        let verified = Verified::get();
        let digest = verified
            .enabled()
            .then(|| Verified::digest(algorithm, &key, &message, &signature));
        if digest.as_ref().is_some_and(|d| verified.contains(d)) {
            return true;
        }
        let ok = verify(algorithm, &key, &message, &signature);
        if ok && let Some(d) = digest {
            verified.insert(d);
        }
        ok
    }
}

/// Signatures verified lately: a SHA-256 of everything `verify` was given
/// (algorithm, key, message, signature), so a hit is exactly a call that
/// succeeded before. Only successes are kept; failures are recomputed, so
/// a flood of forged tokens cannot fill it with anything. Process-wide: the
/// answer depends on nothing but the inputs.
pub struct Verified {
    enabled: AtomicBool,
    inner: Mutex<Kept>,
}

/// The digests kept, and their order of arrival.
type Kept = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

/// Entries kept (about 100 bytes each); the oldest goes first.
const VERIFIED_ENTRIES: usize = 16_384;

impl Verified {
    /// The process's memo.
    pub fn get() -> &'static Self {
        static MEMO: OnceLock<Verified> = OnceLock::new();
        MEMO.get_or_init(|| Self {
            enabled: AtomicBool::new(true),
            inner: Mutex::default(),
        })
    }

    /// Turns the memo on or off (on by default): benchmarks measure the
    /// first verification of a token with it off.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if !on {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.0.clear();
            inner.1.clear();
        }
    }

    fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn digest(alg: SignatureAlgorithm, key: &PublicKey, message: &[u8], sig: &[u8]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        // Each part length-prefixed: no two different calls hash alike.
        let mut part = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        part(&[alg as u8]);
        match key {
            PublicKey::Rsa(k) => {
                part(b"rsa");
                part(&k.n);
                part(&k.e);
            }
            PublicKey::Ec(point) => {
                part(b"ec");
                part(point);
            }
            PublicKey::Ed25519(x) => {
                part(b"ed25519");
                part(x);
            }
        }
        part(message);
        part(sig);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn contains(&self, d: &[u8; 32]) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.contains(d)
    }

    fn insert(&self, d: [u8; 32]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *inner;
        if set.insert(d) {
            order.push_back(d);
            if order.len() > VERIFIED_ENTRIES
                && let Some(oldest) = order.pop_front()
            {
                set.remove(&oldest);
            }
        }
    }
}

/// Whether `sig` is `key`'s signature of `message` under `algorithm`;
/// `false` for a key that does not suit the algorithm.
pub fn verify(algorithm: SignatureAlgorithm, key: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    use SignatureAlgorithm as A;
    match (algorithm, key) {
        (A::Rs256 | A::Rs384 | A::Rs512 | A::Ps256 | A::Ps384 | A::Ps512, PublicKey::Rsa(k)) => {
            let params: &signature::RsaParameters = match algorithm {
                A::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                A::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                A::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                A::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                A::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            // ring refuses moduli outside 2048–8192 bits and even or tiny
            // exponents: such keys never verify.
            RsaPublicKeyComponents {
                n: k.n.as_slice(),
                e: k.e.as_slice(),
            }
            .verify(params, message, sig)
            .is_ok()
        }
        (A::Es256, PublicKey::Ec(point)) => {
            check(&signature::ECDSA_P256_SHA256_FIXED, point, message, sig)
        }
        (A::Es384, PublicKey::Ec(point)) => {
            check(&signature::ECDSA_P384_SHA384_FIXED, point, message, sig)
        }
        (A::Ed25519, PublicKey::Ed25519(x)) => check(&signature::ED25519, x, message, sig),
        _ => false,
    }
}

fn check(alg: &'static dyn VerificationAlgorithm, key: &[u8], message: &[u8], sig: &[u8]) -> bool {
    // ring checks the point is on the curve (and the key's length) here.
    UnparsedPublicKey::new(alg, key)
        .verify(message, sig)
        .is_ok()
}

/// Links `crypto` (0.2.1; a 0.1 component cannot import it), on the
/// context `get` finds in a store's data.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut CryptoState,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<CryptoState>>(linker, get)
}

#[cfg(test)]
mod tests;
