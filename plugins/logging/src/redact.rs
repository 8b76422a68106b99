//! Keeping secrets out of logs: JSON bodies and query strings.

use serde_json::Value;

use crate::config::Config;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Non-JSON monitor bodies are logged as text, cut to this many bytes.
pub const MAX_BODY_TEXT: usize = 4096;

/// Replaces, at any depth, the value of every object key that
/// [`Config::is_redacted`] names with `"[redacted]"`. Other strings are
/// redacted as text ([`redact_text`]), so a secret written inside one
/// (`"Authorization: Bearer …"`, `"a=1&password=…"`) is caught too.
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
        Value::String(text) => *text = redact_text(text, cfg),
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

/// Text that is not JSON (a form post, headers pasted in a body, JSON with
/// a syntax error): every `name=value` or `name: value` whose name
/// [`Config::mentions_redacted`] gets its value replaced. A heuristic, so it
/// errs on redacting too much: a quoted value goes to its closing quote, a
/// `[…]` or `{…}` value to its closing bracket, any other value to the next
/// `&`, `,`, `;`, quote, `}`, `]` or line end, spaces included, so that
/// `Authorization: Bearer abc` loses its scheme and its token.
pub fn redact_text(text: &str, cfg: &Config) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // `text[..copied]` is in `out` already.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b'=' | b':')
            && let Some(name) = name_before(b, i)
            && cfg.mentions_redacted(&text[name])
            && let Some((start, end)) = value_after(b, i + 1)
        {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
            i = end;
            continue;
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// Bytes a field name is made of in text: ASCII letters and digits, and
/// what form encoding and bracket syntax add (`pass%77ord`, `password[]`).
fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"_-.%+[]".contains(&c)
}

/// The name before the separator at `sep`, past spaces and a closing quote.
/// Its bounds sit next to ASCII bytes, so they are character boundaries.
fn name_before(b: &[u8], sep: usize) -> Option<std::ops::Range<usize>> {
    let mut end = sep;
    while end > 0 && matches!(b[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    if end > 0 && matches!(b[end - 1], b'"' | b'\'') {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && is_name_byte(b[start - 1]) {
        start -= 1;
    }
    (start < end).then_some(start..end)
}

/// The byte range of the value that starts at `i` (after a separator),
/// past spaces. Every bound found is at an ASCII byte or the end.
fn value_after(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    let first = *b.get(i)?;
    let (start, end) = match first {
        b'"' | b'\'' => (i + 1, quoted_end(b, i)),
        b'[' | b'{' => (i, bracket_end(b, i)),
        _ => {
            let mut end = i;
            while end < b.len() && !b"&,;\"'}]\r\n".contains(&b[end]) {
                end += 1;
            }
            while end > i && matches!(b[end - 1], b' ' | b'\t') {
                end -= 1;
            }
            (i, end)
        }
    };
    (end > start).then_some((start, end))
}

/// Where the string quoted at `open` ends: its closing quote (a backslash
/// escapes the byte after it), or the end of the text.
fn quoted_end(b: &[u8], open: usize) -> usize {
    let quote = b[open];
    let mut i = open + 1;
    while i < b.len() && b[i] != quote {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    i.min(b.len())
}

/// Just past the bracket that closes the one at `open` (quoted strings
/// skipped), or the end of the text.
fn bracket_end(b: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => i = quoted_end(b, i),
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// `path?query` with the values of redacted parameters replaced; `&` and
/// `;` both separate parameters. Names are compared as
/// [`Config::is_redacted`] does: decoded, so `pass%77ord` and
/// `access%5Ftoken` are caught, and without brackets, so `password[]` is.
pub fn redact_path(path: &str, cfg: &Config) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    out.push('?');
    for piece in query.split_inclusive(['&', ';']) {
        let (param, sep) = match piece.strip_suffix(['&', ';']) {
            Some(param) => piece.split_at(param.len()),
            None => (piece, ""),
        };
        let name = param.split('=').next().unwrap_or(param);
        if cfg.is_redacted(name) {
            out.push_str(name);
            out.push('=');
            out.push_str(REDACTED);
        } else {
            out.push_str(param);
        }
        out.push_str(sep);
    }
    out
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

    #[test]
    fn authorization_loses_its_scheme_and_its_credential() {
        assert_eq!(
            redact_text("Authorization: Bearer abc.def.ghi\r\nAccept: */*", &cfg()),
            "Authorization: [redacted]\r\nAccept: */*"
        );
        assert_eq!(
            redact_text("authorization: Basic dXNlcjpwYXNz", &cfg()),
            "authorization: [redacted]"
        );
        assert_eq!(
            redact_text(r#"{"Authorization": "Bearer abc", "x": 1,}"#, &cfg()),
            r#"{"Authorization": "[redacted]", "x": 1,}"#
        );
    }

    #[test]
    fn encoded_and_bracketed_form_names_are_caught() {
        let form = "user=bob&pass%77ord=s1&%70assword=s2&access%5Ftoken=s3\
                    &password[]=s4&password%5B%5D=s5&password[0]=s6&user[password]=s7\
                    &id_token=s8&api_key=s9&pwd=s10";
        let out = redact_text(form, &cfg());
        assert!(out.starts_with("user=bob&"), "{out}");
        for n in 1..=10 {
            assert!(!out.contains(&format!("=s{n}")), "s{n} in {out}");
        }
        assert_eq!(out.matches(REDACTED).count(), 10, "{out}");
    }

    #[test]
    fn names_inside_longer_names_count_in_text() {
        assert_eq!(
            redact_text("mytoken=abc&page=2", &cfg()),
            "mytoken=[redacted]&page=2"
        );
    }

    #[test]
    fn quoted_and_bracketed_values_go_whole() {
        assert_eq!(
            redact_text(r#"{"password": "a \" b, c", "u": 1"#, &cfg()),
            r#"{"password": "[redacted]", "u": 1"#
        );
        assert_eq!(
            redact_text(
                r#"{"credentials": {"u": "a", "p": ["b", "}"]}, "x": 1,}"#,
                &cfg()
            ),
            r#"{"credentials": [redacted], "x": 1,}"#
        );
        // Unterminated: to the end.
        assert_eq!(
            redact_text(r#"secret: "abc"#, &cfg()),
            r#"secret: "[redacted]"#
        );
        assert_eq!(redact_text("secret=[abc", &cfg()), "secret=[redacted]");
        // Nothing after the separator: nothing to cut.
        assert_eq!(redact_text("password=", &cfg()), "password=");
        assert_eq!(redact_text(r#"password: """#, &cfg()), r#"password: """#);
    }

    #[test]
    fn non_ascii_text_is_cut_in_the_right_place() {
        assert_eq!(
            redact_text("名前=太郎&password=ひみつ&x=é", &cfg()),
            "名前=太郎&password=[redacted]&x=é"
        );
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
            "passport": "not a listed key"
        });
        redact_json(&mut v, &cfg());
        assert_eq!(
            v,
            json!({
                "username": "admin",
                "Password": "[redacted]",
                "nested": {"TOKEN": "[redacted]", "list": [{"secret": "[redacted]"}, {"ok": true}]},
                "authorization": "[redacted]",
                "passport": "not a listed key"
            })
        );
    }

    #[test]
    fn common_secret_keys_redacted_at_any_depth() {
        let mut v = json!({
            "access_token": "a1",
            "data": {"api_key": "a2", "list": [{"pwd": "a3"}, {"JWT": "a4"}]},
            "credentials": {"user": "bob", "password": "a5"},
            "id_token": "a6",
            "passwords": ["a7"],
            "apiKey": "a8",
            "user": "bob",
        });
        redact_json(&mut v, &cfg());
        let text = v.to_string();
        for n in 1..=8 {
            assert!(!text.contains(&format!("a{n}")), "a{n} in {text}");
        }
        assert_eq!(v["user"], "bob");
        assert_eq!(v["credentials"], REDACTED);
    }

    #[test]
    fn secrets_written_inside_json_strings_are_redacted() {
        let mut v = json!({
            "headers": ["Authorization: Bearer abc", "Accept: */*"],
            "callback": "/cb?access_token=xyz&state=1",
            "note": "plain",
        });
        redact_json(&mut v, &cfg());
        assert_eq!(
            v,
            json!({
                "headers": ["Authorization: [redacted]", "Accept: */*"],
                "callback": "/cb?access_token=[redacted]&state=1",
                "note": "plain",
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
    fn common_secret_params_redacted_however_spelled() {
        let c = cfg();
        assert_eq!(
            redact_path("/cb?access_token=a1&id_token=a2&state=s", &c),
            "/cb?access_token=[redacted]&id_token=[redacted]&state=s"
        );
        assert_eq!(
            redact_path(
                "/a?password[]=a1&password[0]=a2&user[password]=a3&password%5B%5D=a4",
                &c
            ),
            "/a?password[]=[redacted]&password[0]=[redacted]&user[password]=[redacted]\
             &password%5B%5D=[redacted]"
        );
        assert_eq!(
            redact_path("/a?%70assword=a1&access%5Ftoken=a2&API-KEY=a3&page=2", &c),
            "/a?%70assword=[redacted]&access%5Ftoken=[redacted]&API-KEY=[redacted]&page=2"
        );
        // `;` separates parameters too.
        assert_eq!(
            redact_path("/a?x=1;jwt=a1;y=2&", &c),
            "/a?x=1;jwt=[redacted];y=2&"
        );
    }
}
