//! Keeping secrets out of logs: JSON bodies and query strings.

use serde_json::Value;

use crate::config::Config;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Non-JSON monitor bodies are logged as text, cut to this many bytes.
pub const MAX_BODY_TEXT: usize = 4096;

/// Replaces, at any depth, the value of every object key listed in
/// `redact_fields` (case-insensitive) with `"[redacted]"`.
pub fn redact_json(value: &mut Value, cfg: &Config) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if cfg.is_redacted(key) {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_json(v, cfg);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_json(v, cfg)),
        _ => {}
    }
}

/// The log field for a monitor body: `("body", redacted JSON)` when it parses
/// as JSON, else `("body_text", lossy UTF-8 cut to 4 KiB)`.
pub fn monitor_body(body: &[u8], cfg: &Config) -> (&'static str, String) {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            redact_json(&mut v, cfg);
            ("body", v.to_string())
        }
        Err(_) => {
            let head = &body[..body.len().min(MAX_BODY_TEXT)];
            let mut text = String::from_utf8_lossy(head).into_owned();
            // Cutting mid-character yields a trailing U+FFFD; keep the result
            // within the byte budget regardless.
            while text.len() > MAX_BODY_TEXT {
                text.pop();
            }
            ("body_text", redact_text(&text, cfg))
        }
    }
}

/// Text that is not JSON (a form post, JSON with a syntax error): every
/// `name=value` or `"name": value` whose name is redacted gets its value
/// replaced. A heuristic, so it errs on redacting too much.
pub fn redact_text(text: &str, cfg: &Config) -> String {
    let lower = text.to_lowercase();
    // Byte ranges of values to replace; `lower` has the same byte offsets
    // for ASCII, and redact_fields are matched as ASCII-insensitive words.
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    if lower.len() == text.len() {
        for field in &cfg.redact_fields {
            let mut from = 0;
            while let Some(at) = lower[from..].find(field.as_str()) {
                let start = from + at;
                from = start + field.len();
                if let Some(range) = value_after(text.as_bytes(), from) {
                    cuts.push(range);
                }
            }
        }
    } else if cfg.redact_fields.iter().any(|f| lower.contains(f.as_str())) {
        // Case mapping changed byte offsets (non-ASCII text): redact it all
        // rather than risk cutting in the wrong place.
        return REDACTED.to_string();
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end) in cuts {
        if start < pos {
            continue;
        }
        out.push_str(&text[pos..start]);
        out.push_str(REDACTED);
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// After a field name at `i`: skip a closing quote and spaces, require `=`
/// or `:`, skip spaces and an opening quote; the value runs to the next
/// delimiter.
fn value_after(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    skip(&mut i, b"\"' \t");
    if i >= b.len() || !matches!(b[i], b'=' | b':') {
        return None;
    }
    i += 1;
    skip(&mut i, b" \t\"'");
    let start = i;
    while i < b.len() && !b"&,;\"' \t\r\n}]".contains(&b[i]) {
        i += 1;
    }
    (i > start).then_some((start, i))
}

/// `path?query` with the values of redacted parameters replaced. Names are
/// compared after percent- and `+`-decoding, so `pass%77ord` is caught too.
pub fn redact_path(path: &str, cfg: &Config) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| {
            let name = param.split('=').next().unwrap_or(param);
            if cfg.is_redacted(&percent_decode(name)) {
                format!("{name}={REDACTED}")
            } else {
                param.to_string()
            }
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// Lenient form-urlencoding decode (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod text_tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse("{}").unwrap()
    }

    #[test]
    fn redacts_form_and_broken_json_values() {
        assert_eq!(
            redact_text("user=bob&password=hunter2", &cfg()),
            "user=bob&password=[redacted]"
        );
        assert_eq!(
            redact_text(r#"{"user":"bob","Password": "hunter2",}"#, &cfg()),
            r#"{"user":"bob","Password": "[redacted]",}"#
        );
        assert_eq!(redact_text("no secrets here", &cfg()), "no secrets here");
        assert_eq!(redact_text("token", &cfg()), "token");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        Config::parse("{}").unwrap()
    }

    #[test]
    fn json_keys_redacted_recursively_and_case_insensitively() {
        let mut v = json!({
            "username": "admin",
            "Password": "hunter2",
            "nested": {"TOKEN": "abc", "list": [{"secret": 1}, {"ok": true}]},
            "authorization": {"deep": "x"},
            "passwords": "not a listed key"
        });
        redact_json(&mut v, &cfg());
        assert_eq!(
            v,
            json!({
                "username": "admin",
                "Password": "[redacted]",
                "nested": {"TOKEN": "[redacted]", "list": [{"secret": "[redacted]"}, {"ok": true}]},
                "authorization": "[redacted]",
                "passwords": "not a listed key"
            })
        );
    }

    #[test]
    fn monitor_body_json() {
        let (key, text) = monitor_body(br#"{"user":"a","passwd":"p"}"#, &cfg());
        assert_eq!(key, "body");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, json!({"user": "a", "passwd": "[redacted]"}));
        // Top-level arrays and scalars are JSON too.
        assert_eq!(monitor_body(b"[1,2]", &cfg()), ("body", "[1,2]".into()));
    }

    #[test]
    fn monitor_body_text() {
        assert_eq!(
            monitor_body(b"hello there", &cfg()),
            ("body_text", "hello there".into())
        );
        assert_eq!(monitor_body(b"", &cfg()), ("body_text", String::new()));
        let (key, text) = monitor_body(&[b'a', 0xff, b'b'], &cfg());
        assert_eq!((key, text.as_str()), ("body_text", "a\u{fffd}b"));
        let big = "x".repeat(10_000);
        let (_, text) = monitor_body(big.as_bytes(), &cfg());
        assert_eq!(text.len(), MAX_BODY_TEXT);
        // A multi-byte character cut at the limit never overflows it.
        let mut tricky = "y".repeat(MAX_BODY_TEXT - 1);
        tricky.push('é');
        let (_, text) = monitor_body(tricky.as_bytes(), &cfg());
        assert!(text.len() <= MAX_BODY_TEXT);
        assert!(text.starts_with("yyy"));
    }

    #[test]
    fn query_params_redacted() {
        let c = cfg();
        assert_eq!(redact_path("/a/b", &c), "/a/b");
        assert_eq!(redact_path("/a?x=1", &c), "/a?x=1");
        assert_eq!(
            redact_path("/login?user=bob&password=hunter2&Token=abc", &c),
            "/login?user=bob&password=[redacted]&Token=[redacted]"
        );
        assert_eq!(
            redact_path("/a?pass%77ord=x&secret", &c),
            "/a?pass%77ord=[redacted]&secret=[redacted]"
        );
        assert_eq!(redact_path("/a?", &c), "/a?");
        assert_eq!(
            redact_path("/a?q=%zz&token=1=2", &c),
            "/a?q=%zz&token=[redacted]"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41+b"), "aA b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
