//! The policy's config.

use serde::Deserialize;

use crate::names;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `POST` to this path (query ignored) is answered by the policy itself;
    /// `null` disables the endpoint.
    #[serde(default = "default_monitor_path")]
    pub monitor_path: Option<String>,
    /// Request header naming the authenticated user (set by `auth`).
    #[serde(default = "default_user_header")]
    pub user_header: String,
    /// Names whose values are redacted: JSON keys, query and form parameter
    /// names. Compared by words (see [`Config::is_redacted`]).
    #[serde(default = "default_redact_fields")]
    pub redact_fields: Vec<String>,
    /// The words of each of `redact_fields`, none empty; filled by `parse`.
    #[serde(skip)]
    redact_words: Vec<Vec<String>>,
}

fn default_monitor_path() -> Option<String> {
    Some("/monitor".into())
}
fn default_user_header() -> String {
    "x-authenticated-user".into()
}
/// Common names of secrets. Matching by words makes `token` cover
/// `access_token`, `id_token` and `refresh_token`, `secret` cover
/// `client_secret`, `api_key` cover `x-api-key`; erring on the side of
/// redacting too much, a few plurals and short forms are listed as well.
fn default_redact_fields() -> Vec<String> {
    [
        "password",
        "passwords",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "secrets",
        "token",
        "tokens",
        "jwt",
        "api_key",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "cookie",
        "session",
        "private_key",
    ]
    .map(String::from)
    .to_vec()
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, String> {
        let mut cfg: Config = policy_common::parse_config(json)?;
        if let Some(p) = &cfg.monitor_path
            && !p.starts_with('/')
        {
            return Err(format!("monitor_path: {p:?} must start with `/`"));
        }
        if cfg.user_header.is_empty() {
            return Err("user_header: must not be empty".into());
        }
        // Header names arrive lower-case.
        cfg.user_header.make_ascii_lowercase();
        cfg.redact_words = cfg
            .redact_fields
            .iter()
            .map(|f| {
                let words = names::words(f);
                if words.is_empty() {
                    Err(format!("redact_fields: {f:?} has no letter or digit"))
                } else {
                    Ok(words)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(cfg)
    }

    /// Whether this request is a call to the monitor endpoint.
    pub fn is_monitor(&self, method: &str, path: &str) -> bool {
        method == "POST"
            && self
                .monitor_path
                .as_deref()
                .is_some_and(|m| m == path.split('?').next().unwrap_or(path))
    }

    /// Whether the value of JSON key or parameter `name` (as the client
    /// sent it) is redacted: its words, once percent-decoded, hold the words
    /// of a listed field in a row. Case, `_`/`-`/`.`/camelCase and brackets
    /// do not matter: `password` covers `Password`, `pass%77ord`,
    /// `password[]`, `password[0]` and `user[password]`; `token` covers
    /// `access_token` and `idToken`, but not `tokenizer`.
    pub fn is_redacted(&self, name: &str) -> bool {
        let words = names::sent_words(name);
        self.redact_words.iter().any(|f| names::holds(&words, f))
    }

    /// The looser test for names found in free text: the name, decoded and
    /// with everything but its letters and digits dropped, contains a listed
    /// field (so `mytoken` counts too). A heuristic that errs on redacting
    /// too much.
    pub fn mentions_redacted(&self, name: &str) -> bool {
        let compact = names::sent_words(name).concat();
        self.redact_words
            .iter()
            .any(|f| compact.contains(&f.concat()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::parse("{}").unwrap();
        assert_eq!(c.monitor_path.as_deref(), Some("/monitor"));
        assert_eq!(c.user_header, "x-authenticated-user");
        assert!(c.is_redacted("PassWord"));
        assert!(!c.is_redacted("username"));
    }

    #[test]
    fn default_fields_cover_common_secret_names() {
        let c = Config::parse("{}").unwrap();
        for name in [
            "password",
            "passwd",
            "pwd",
            "pass",
            "secret",
            "client_secret",
            "token",
            "access_token",
            "id_token",
            "refresh_token",
            "accessToken",
            "jwt",
            "api_key",
            "x-api-key",
            "apiKey",
            "credentials",
            "authorization",
            "cookie",
            "session_id",
            "private_key",
        ] {
            assert!(c.is_redacted(name), "{name}");
        }
        for name in ["user", "username", "email", "page", "passport", "keyboard"] {
            assert!(!c.is_redacted(name), "{name}");
        }
    }

    #[test]
    fn names_are_compared_as_sent_decoded_and_without_brackets() {
        let c = Config::parse("{}").unwrap();
        for name in [
            "pass%77ord",
            "%70assword",
            "access%5Ftoken",
            "ID%5FTOKEN",
            "password[]",
            "password%5B%5D",
            "password[0]",
            "user[password]",
            "Authorization",
        ] {
            assert!(c.is_redacted(name), "{name}");
        }
    }

    #[test]
    fn text_names_match_loosely() {
        let c = Config::parse("{}").unwrap();
        assert!(c.mentions_redacted("mytoken"));
        assert!(c.mentions_redacted("userPassword2"));
        assert!(!c.is_redacted("mytoken"));
        assert!(!c.mentions_redacted("user"));
    }

    #[test]
    fn null_disables_monitor() {
        let c = Config::parse(r#"{"monitor_path":null}"#).unwrap();
        assert!(c.monitor_path.is_none());
        assert!(!c.is_monitor("POST", "/monitor"));
    }

    #[test]
    fn monitor_match() {
        let c = Config::parse(r#"{"monitor_path":"/mon"}"#).unwrap();
        assert!(c.is_monitor("POST", "/mon"));
        assert!(c.is_monitor("POST", "/mon?x=1"));
        assert!(!c.is_monitor("GET", "/mon"));
        assert!(!c.is_monitor("POST", "/mon/x"));
        assert!(!c.is_monitor("POST", "/monitor"));
    }

    #[test]
    fn refusals() {
        let err = Config::parse(r#"{"monitor":"/x"}"#).unwrap_err();
        assert!(err.contains("monitor"), "{err}");
        assert!(
            Config::parse(r#"{"monitor_path":"x"}"#)
                .unwrap_err()
                .starts_with("monitor_path")
        );
        assert!(
            Config::parse(r#"{"user_header":""}"#)
                .unwrap_err()
                .starts_with("user_header")
        );
        assert!(Config::parse(r#"{"redact_fields":"password"}"#).is_err());
        // A field with no word in it would match every name, or none.
        assert!(
            Config::parse(r#"{"redact_fields":["token", "_"]}"#)
                .unwrap_err()
                .starts_with("redact_fields")
        );
    }

    #[test]
    fn custom_redaction_is_case_insensitive() {
        let c = Config::parse(r#"{"redact_fields":["API_Key"]}"#).unwrap();
        assert!(c.is_redacted("api_key"));
        assert!(c.is_redacted("API_KEY"));
        assert!(c.is_redacted("apiKey"));
        assert!(!c.is_redacted("password"), "the list replaces the defaults");
    }
}
