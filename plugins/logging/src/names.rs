//! Field names as redaction compares them: one name however a client spells
//! it (case, percent-encoding, `_` or `-` or camelCase, `[]` suffixes).

/// The lower-case words of `name`: it is split at every character that is
/// not a letter or digit, and where an upper-case letter follows a
/// lower-case one or a digit. `Access-Token`, `access_token`, `accessToken`
/// and `access_token[]` are all `["access", "token"]`.
pub fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut after_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            out.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
            after_lower = false;
            continue;
        }
        if c.is_uppercase() && after_lower {
            out.push(std::mem::take(&mut word));
        }
        after_lower = c.is_lowercase() || c.is_numeric();
        word.extend(c.to_lowercase());
    }
    out.extend((!word.is_empty()).then_some(word));
    out
}

/// The words of a name as a client sent it, percent- and `+`-decoded first
/// (a server decodes `pass%77ord` to `password` before reading it).
pub fn sent_words(name: &str) -> Vec<String> {
    words(&percent_decode(name))
}

/// Whether `words` holds `field` (non-empty) as a run of whole words:
/// `token` is in `access_token` and `id_token[]`, not in `tokens`.
pub fn holds(words: &[String], field: &[String]) -> bool {
    words.windows(field.len()).any(|w| w == field)
}

/// Lenient form-urlencoding decode (invalid escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
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
mod tests {
    use super::*;

    fn w(name: &str) -> Vec<String> {
        words(name)
    }

    #[test]
    fn spellings_of_one_name_have_the_same_words() {
        for name in [
            "access_token",
            "Access-Token",
            "ACCESS_TOKEN",
            "accessToken",
            "AccessToken",
            "access.token",
            "access_token[]",
        ] {
            assert_eq!(w(name), ["access", "token"], "{name}");
        }
        assert_eq!(w("access_token[0]"), ["access", "token", "0"]);
        assert_eq!(w("user[password]"), ["user", "password"]);
        assert_eq!(w("OAuth2Token"), ["oauth2", "token"]);
        assert_eq!(w("APIKey"), ["apikey"]);
        assert_eq!(w("[]_-"), Vec::<String>::new());
    }

    #[test]
    fn sent_names_are_decoded_first() {
        assert_eq!(sent_words("pass%77ord"), ["password"]);
        assert_eq!(sent_words("%70assword"), ["password"]);
        assert_eq!(sent_words("access%5Ftoken"), ["access", "token"]);
        assert_eq!(sent_words("password%5B%5D"), ["password"]);
        assert_eq!(sent_words("api+key"), ["api", "key"]);
    }

    #[test]
    fn holds_whole_words_in_a_row() {
        let field = |f: &str| words(f);
        assert!(holds(&w("id_token"), &field("token")));
        assert!(holds(&w("x-api-key"), &field("api_key")));
        assert!(!holds(&w("api_version_key"), &field("api_key")));
        assert!(!holds(&w("tokens"), &field("token")));
        assert!(!holds(&w("passwords"), &field("password")));
        assert!(!holds(&[], &field("token")));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41+b"), "aA b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
