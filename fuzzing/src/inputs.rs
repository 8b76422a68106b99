//! How fuzz bytes become the sidecar's inputs: a config file's text, and
//! requests and responses in the text-like format of the crate docs, each
//! with the surroundings a real one would have (route, TLS, client address).

use std::net::SocketAddr;
use std::path::Path;

use http::Uri;
use http::header::{HeaderName, HeaderValue};
use sidecar::config::{self, Config};

/// The file name every config error must start with.
pub(crate) const CONFIG_PATH: &str = "/etc/sidecar/fuzz.toml";

fn config_env(name: &str) -> Option<String> {
    match name {
        "JWT_SECRET" => Some("s3cret".into()),
        "HOME" => Some("/home/fuzz".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// `text` parsed as the config file [`CONFIG_PATH`], with a fixed environment.
pub(crate) fn parse_config(text: &str) -> anyhow::Result<Config> {
    config::parse(text, Path::new(CONFIG_PATH), &config_env)
}

/// One request or response in the format of the crate docs.
pub(crate) struct Message {
    pub(crate) start: Vec<u8>,
    /// Name, value, and whether the line had a `:` (without one, a policy
    /// removes the header instead of appending it).
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>, bool)>,
    pub(crate) body: Vec<u8>,
}

/// Header lines beyond this are ignored: enough to cross
/// [`MAX_HEADERS`](sidecar::convert::MAX_HEADERS)
/// with room to spare, few enough that every input runs fast.
const MAX_PARSED_HEADERS: usize = 4096;

impl Message {
    pub(crate) fn parse(data: &[u8]) -> Self {
        let mut rest = data;
        let next_line = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            if rest.is_empty() {
                return None;
            }
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
            let line = line.to_vec();
            *rest = rest.get(end + 1..).unwrap_or_default();
            Some(line)
        };
        let start = next_line(&mut rest).unwrap_or_default();
        let mut headers = Vec::new();
        while let Some(line) = next_line(&mut rest) {
            if line.is_empty() {
                break;
            }
            let (times, line) = repeat_count(&line);
            let colon = line.iter().position(|&b| b == b':');
            let name = line[..colon.unwrap_or(line.len())].to_vec();
            let value = colon.map_or(&[][..], |c| &line[c + 1..]);
            let skip = value
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            let value = value[skip..].to_vec();
            for _ in 0..times.min(MAX_PARSED_HEADERS - headers.len()) {
                headers.push((name.clone(), value.clone(), colon.is_some()));
            }
        }
        Self {
            start,
            headers,
            body: rest.to_vec(),
        }
    }

    /// Headers as an HTTP parser would hand them over: invalid ones skipped.
    pub(crate) fn http_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.headers
            .iter()
            .filter_map(|(n, v, _)| {
                Some((
                    HeaderName::from_bytes(n).ok()?,
                    HeaderValue::from_bytes(v).ok()?,
                ))
            })
            .collect()
    }

    /// Header edits as a policy might make them: any name (a guest string),
    /// any value bytes.
    pub(crate) fn policy_edits(&self) -> impl Iterator<Item = (String, Option<&[u8]>)> {
        self.headers.iter().map(|(n, v, colon)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                colon.then_some(v.as_slice()),
            )
        })
    }
}

/// `*N rest` → (N, rest), N at most 2048; anything else → (1, line).
fn repeat_count(line: &[u8]) -> (usize, &[u8]) {
    let Some(after) = line.strip_prefix(b"*") else {
        return (1, line);
    };
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    match after.get(digits) {
        Some(b' ') if (1..=4).contains(&digits) => {
            let n: usize = std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            (n.min(2048), &after[digits + 1..])
        }
        _ => (1, line),
    }
}

/// The client's address as the server saw it.
pub(crate) fn client() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 4242))
}

/// The request id the sidecar settled on.
pub(crate) const REQUEST_ID: &str = "fuzz-id-1";

/// Route shapes a config can produce: (prefix, rewrite).
const ROUTES: [(&str, Option<&str>); 5] = [
    ("/", None),
    ("/svc", Some("/")),
    ("/user-service", Some("/api/")),
    ("/svc", None),
    ("/", Some("/v1")),
];

/// A request: its start line split into method and request-target (`/`
/// when there is none), and a route and TLS chosen by the input's length so
/// that every seed meets each of them under mutation.
pub(crate) struct RequestInput {
    pub(crate) msg: Message,
    pub(crate) method: Vec<u8>,
    pub(crate) target: Vec<u8>,
    pub(crate) prefix: &'static str,
    pub(crate) rewrite: Option<&'static str>,
    pub(crate) tls: bool,
}

impl RequestInput {
    pub(crate) fn parse(data: &[u8]) -> Self {
        let msg = Message::parse(data);
        let (method, target) = match msg.start.iter().position(|&b| b == b' ') {
            Some(i) => (msg.start[..i].to_vec(), msg.start[i + 1..].to_vec()),
            None => (msg.start.clone(), b"/".to_vec()),
        };
        let (prefix, rewrite) = ROUTES[data.len() % ROUTES.len()];
        Self {
            msg,
            method,
            target,
            prefix,
            rewrite,
            tls: data.len() % 2 == 1,
        }
    }
}

/// A response: its start line's leading digits (at most five, modulo
/// 65536) as the status number, 200 without any.
pub(crate) struct ResponseInput {
    pub(crate) msg: Message,
    pub(crate) number: u16,
}

impl ResponseInput {
    pub(crate) fn parse(data: &[u8]) -> Self {
        let msg = Message::parse(data);
        let digits = msg.start.iter().take_while(|b| b.is_ascii_digit()).count();
        let number = std::str::from_utf8(&msg.start[..digits.min(5)])
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .and_then(|n| u16::try_from(n % 65536).ok())
            .unwrap_or(200);
        Self { msg, number }
    }
}

/// The URI hyper would hand over for request-target `target`, and the path
/// and query policies must see. Targets no parser accepts are
/// percent-encoded.
pub(crate) fn request_target(target: &[u8]) -> (Uri, String) {
    if let Ok(uri) = Uri::try_from(target) {
        if target.starts_with(b"/") {
            // A fragment never reaches the server's handler.
            let end = target.iter().position(|&b| b == b'#');
            let path = std::str::from_utf8(&target[..end.unwrap_or(target.len())])
                .expect("a valid URI path is UTF-8");
            return (uri.clone(), path.to_owned());
        }
        if uri.scheme().is_some() && uri.authority().is_some() {
            let path = match uri.query() {
                Some(q) => format!("{}?{q}", uri.path()),
                None => uri.path().to_owned(),
            };
            assert!(
                path.starts_with('/'),
                "absolute-form {uri} has path `{path}`"
            );
            return (uri, path);
        }
    }
    let mut path = String::from(if target.starts_with(b"/") { "" } else { "/" });
    for &b in target {
        if b.is_ascii_alphanumeric() || b"-._~/?=&".contains(&b) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let uri = Uri::try_from(path.as_str()).expect("percent-encoded path is a valid URI");
    (uri, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutators::seeds;

    #[test]
    fn seeds_parse_and_convert() {
        // The committed seeds reach past the parsers, so mutations start deep.
        for s in seeds("config_parse") {
            let text = std::str::from_utf8(&s).expect("UTF-8 seed");
            parse_config(text).expect("seed config parses");
        }
        let many = Message::parse(b"GET /\n*1100 x: v\n\nbody");
        assert_eq!(many.headers.len(), 1100);
        assert_eq!(many.body, b"body");
        let req = seeds("request_roundtrip")
            .iter()
            .filter(|s| Message::parse(s).headers.len() > sidecar::convert::MAX_HEADERS)
            .count();
        assert!(req > 0, "no request seed crosses MAX_HEADERS");
    }
}
