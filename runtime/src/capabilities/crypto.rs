//! The `crypto` capability: signature verification in native code (ring).
//!
//! Verifying an RS256 or ES256 signature inside a policy's WebAssembly costs
//! 0.8–1.5 ms a call (BENCHMARKS.md); natively it is tens of microseconds.
//! The capability holds no state and reaches nothing: it is pure computation
//! on the bytes the policy passes.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::v02::crypto::{self as wit, PublicKey, SignatureAlgorithm};
use crate::wasm::HostState;

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
        verify(algorithm, &key, &message, &signature)
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

/// Links `crypto` (0.2.1; a 0.1 component cannot import it).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<HostState, HasSelf<CryptoState>>(linker, |s| &mut s.crypto)
}

#[cfg(test)]
mod tests;
