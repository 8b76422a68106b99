//! The stored form of a cached response.
//!
//! Layout: 4-byte big-endian length of a JSON meta object, the meta, then
//! the raw body (kept out of the JSON so binary bodies cost nothing extra).

use serde::{Deserialize, Serialize};

/// Format version inside the meta, checked on read.
const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// When it was stored (host clock), for the `age` header.
    pub stored_at_micros: u64,
    /// The response's `Vary` headers (lower-case names) with the values the
    /// stored request had for them: served only to requests that match.
    pub vary: Vec<(String, Option<String>)>,
    pub body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    v: u32,
    status: u16,
    headers: Vec<(String, String)>,
    stored_at_micros: u64,
    vary: Vec<(String, Option<String>)>,
}

impl Entry {
    pub fn encode(self) -> Vec<u8> {
        let meta = Meta {
            v: VERSION,
            status: self.status,
            headers: self.headers,
            stored_at_micros: self.stored_at_micros,
            vary: self.vary,
        };
        // Serializing plain strings and integers cannot fail.
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + meta.len() + self.body.len());
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        out
    }

    /// `None` for anything not written by this version: treated as a miss.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let end = 4usize.checked_add(len)?;
        let meta: Meta = serde_json::from_slice(bytes.get(4..end)?).ok()?;
        (meta.v == VERSION).then(|| Entry {
            status: meta.status,
            headers: meta.headers,
            stored_at_micros: meta.stored_at_micros,
            vary: meta.vary,
            body: bytes[end..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            status: 200,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            stored_at_micros: 1_700_000_000_123_456,
            vary: vec![
                ("accept-language".into(), Some("en".into())),
                ("x-v".into(), None),
            ],
            body: vec![0, 159, 146, 150, 255, b'{'],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Entry::decode(&e.clone().encode()), Some(e));
        let empty = Entry {
            body: vec![],
            headers: vec![],
            ..sample()
        };
        assert_eq!(Entry::decode(&empty.clone().encode()), Some(empty));
    }

    #[test]
    fn garbage_is_a_miss() {
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(b"\x00\x00"), None);
        assert_eq!(
            Entry::decode(b"\x00\x00\x00\x10{}"),
            None,
            "length past the end"
        );
        assert_eq!(Entry::decode(b"\xff\xff\xff\xff"), None);
        assert_eq!(
            Entry::decode(b"\x00\x00\x00\x02{}body"),
            None,
            "meta fields missing"
        );
        let mut other_version = sample().encode();
        let pos = other_version
            .windows(5)
            .position(|w| w == b"\"v\":2")
            .unwrap();
        other_version[pos + 4] = b'1';
        assert_eq!(Entry::decode(&other_version), None);
    }
}
