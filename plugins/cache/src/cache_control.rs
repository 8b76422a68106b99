//! `Cache-Control` parsing (RFC 9111 §5.2), enough for a private cache.

/// The directives of all `cache-control` header values, in order.
#[derive(Debug, Default)]
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    /// Parses every value; names are lower-cased, quoted values unquoted.
    /// Commas inside quoted strings (`private="a, b"`) do not split.
    /// Directives are ASCII: bytes that are not UTF-8 can only spoil the
    /// item they sit in, so they are read as U+FFFD.
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Directives {
        let mut out = Vec::new();
        for value in values {
            let value = String::from_utf8_lossy(value);
            for item in split_outside_quotes(&value) {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let (name, arg) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                    None => (item, None),
                };
                out.push((name.to_ascii_lowercase(), arg));
            }
        }
        Directives(out)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// A delta-seconds directive: `None` if absent, `Some(None)` if present
    /// but not a valid number (treated as "do not store" by callers).
    pub fn seconds(&self, name: &str) -> Option<Option<u64>> {
        let (_, arg) = self.0.iter().find(|(n, _)| n == name)?;
        Some(arg.as_deref().and_then(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) {
                // Values too large to represent are "infinity" (RFC 9111 §1.2.2).
                Some(a.parse().unwrap_or(u64::MAX))
            } else {
                None
            }
        }))
    }
}

fn split_outside_quotes(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\""),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Directives {
        Directives::parse(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn flags_and_values() {
        let d = parse("public, Max-Age=120, NO-CACHE");
        assert!(d.has("public") && d.has("no-cache") && !d.has("no-store"));
        assert_eq!(d.seconds("max-age"), Some(Some(120)));
        assert_eq!(d.seconds("s-maxage"), None);
    }

    #[test]
    fn several_header_values_combine() {
        let d = Directives::parse([&b"no-cache"[..], b"max-age=5"].into_iter());
        assert!(d.has("no-cache"));
        assert_eq!(d.seconds("max-age"), Some(Some(5)));
    }

    #[test]
    fn invalid_numbers() {
        assert_eq!(parse("max-age=abc").seconds("max-age"), Some(None));
        assert_eq!(parse("max-age=-1").seconds("max-age"), Some(None));
        assert_eq!(parse("max-age=").seconds("max-age"), Some(None));
        assert_eq!(parse("max-age").seconds("max-age"), Some(None));
        assert_eq!(parse(r#"max-age="60""#).seconds("max-age"), Some(Some(60)));
        assert_eq!(
            parse("max-age=99999999999999999999999").seconds("max-age"),
            Some(Some(u64::MAX))
        );
    }

    #[test]
    fn quoted_commas() {
        let d = parse(r#"private="set-cookie, x-foo", max-age=10"#);
        assert!(d.has("private"));
        assert_eq!(d.seconds("max-age"), Some(Some(10)));
        assert!(!d.has(" x-foo\""));
    }

    #[test]
    fn bytes_that_are_not_utf8_spoil_only_their_item() {
        let d = Directives::parse(std::iter::once(&b"no-store, max-age=\xff1"[..]));
        assert!(d.has("no-store"));
        assert_eq!(d.seconds("max-age"), Some(None));
    }

    #[test]
    fn empty_and_odd_input() {
        let d = parse(" , ,, ");
        assert!(!d.has(""));
        assert!(Directives::parse(std::iter::empty()).0.is_empty());
    }
}
