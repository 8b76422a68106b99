//! Cache keys: method + path-with-query + identity, under a version tag.

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::headers::Headers;

/// Bump when the key or the entry format changes: old entries are then
/// simply never found again and expire on their own.
pub const KEY_PREFIX: &str = "cache:v1:";

/// Who the response is for. The identity header (set by `auth`) wins; else a
/// hash of the credentials (`authorization`, `cookie`), so the raw secrets
/// are never used as a key; else `anon`. Prefixes keep the three disjoint.
/// Bytes, not text: header values are bytes, and two users whose names
/// differ only in bytes that are not UTF-8 must still get two entries.
pub fn identity(cfg: &Config, headers: &(impl Headers + ?Sized)) -> Vec<u8> {
    if let Some(user) = headers.values(&cfg.identity_header).into_iter().next() {
        return [&b"u:"[..], &user].concat();
    }
    let mut hasher = Sha256::new();
    let mut any = false;
    for name in ["authorization", "cookie"] {
        for value in headers.values(name) {
            any = true;
            feed(&mut hasher, name.as_bytes());
            feed(&mut hasher, &value);
        }
    }
    if any {
        format!("h:{}", hex(&hasher.finalize())).into_bytes()
    } else {
        b"anon".to_vec()
    }
}

/// The kv key. Parts are length-prefixed before hashing, so no choice of
/// path or identity can collide with another (`/a|u:b` + `x` vs `/a` +
/// `u:b|x`), and the key stays short whatever the path length.
pub fn cache_key(method: &str, path_and_query: &str, identity: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for part in [method.as_bytes(), path_and_query.as_bytes(), identity] {
        feed(&mut hasher, part);
    }
    format!("{KEY_PREFIX}{}", hex(&hasher.finalize()))
}

fn feed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request or response without headers.
    const NONE: [(&str, &str); 0] = [];

    fn cfg() -> Config {
        Config::parse("{}").unwrap()
    }

    #[test]
    fn identity_sources() {
        let c = cfg();
        assert_eq!(
            identity(&c, &[("x-authenticated-user", "alice")]),
            b"u:alice"
        );
        // The identity header wins over credentials.
        assert_eq!(
            identity(
                &c,
                &[
                    ("authorization", "Bearer t"),
                    ("x-authenticated-user", "alice")
                ]
            ),
            b"u:alice"
        );
        assert_eq!(identity(&c, &[("accept", "*/*")]), b"anon");
        assert_eq!(identity(&c, &NONE), b"anon");
        let h = String::from_utf8(identity(&c, &[("authorization", "Bearer t")])).unwrap();
        assert!(h.starts_with("h:") && h.len() == 2 + 64, "{h}");
        assert!(!h.contains("Bearer"));
    }

    #[test]
    fn credential_hash_distinguishes() {
        let c = cfg();
        let a = identity(&c, &[("authorization", "Bearer one")]);
        let b = identity(&c, &[("authorization", "Bearer two")]);
        let cookie = identity(&c, &[("cookie", "Bearer one")]);
        assert_ne!(a, b);
        assert_ne!(a, cookie, "header name is part of the hash");
        assert_eq!(
            a,
            identity(&c, &[("accept", "x"), ("authorization", "Bearer one")])
        );
    }

    #[test]
    fn configured_identity_header() {
        let c = Config::parse(r#"{"identity_header":"x-user"}"#).unwrap();
        assert_eq!(identity(&c, &[("x-user", "bob")]), b"u:bob");
        assert_eq!(identity(&c, &[("x-authenticated-user", "bob")]), b"anon");
    }

    #[test]
    fn users_differing_only_in_non_utf8_bytes_are_two_identities() {
        let c = cfg();
        let user = |v: &[u8]| identity(&c, &[("x-authenticated-user", v)]);
        assert_ne!(user(b"alice\xff"), user(b"alice\xfe"));
        assert_eq!(user(b"alice\xff"), b"u:alice\xff");
    }

    #[test]
    fn keys_are_versioned_and_distinct() {
        let k = cache_key("GET", "/a?x=1", b"anon");
        assert!(k.starts_with(KEY_PREFIX));
        assert_eq!(k.len(), KEY_PREFIX.len() + 64);
        assert_eq!(k, cache_key("GET", "/a?x=1", b"anon"));
        assert_ne!(k, cache_key("GET", "/a?x=2", b"anon"));
        assert_ne!(k, cache_key("GET", "/a", b"anon"));
        assert_ne!(k, cache_key("HEAD", "/a?x=1", b"anon"));
        assert_ne!(k, cache_key("GET", "/a?x=1", b"u:alice"));
        assert_ne!(
            cache_key("GET", "/a|u:b", b"x"),
            cache_key("GET", "/a", b"u:b|x")
        );
        assert_ne!(
            cache_key("GET", "/a", b"u:bx"),
            cache_key("GET", "/au", b":bx")
        );
    }

    #[test]
    fn hex_encoding() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
