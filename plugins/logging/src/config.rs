//! The policy's config.

use serde::Deserialize;

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
    /// JSON keys and query parameter names to redact, case-insensitively.
    #[serde(default = "default_redact_fields")]
    pub redact_fields: Vec<String>,
}

fn default_monitor_path() -> Option<String> {
    Some("/monitor".into())
}
fn default_user_header() -> String {
    "x-authenticated-user".into()
}
fn default_redact_fields() -> Vec<String> {
    ["password", "passwd", "secret", "token", "authorization"]
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
        // Header names arrive lower-case; redaction compares lower-case.
        cfg.user_header.make_ascii_lowercase();
        for f in &mut cfg.redact_fields {
            *f = f.to_lowercase();
        }
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

    pub fn is_redacted(&self, name: &str) -> bool {
        let lower = name.to_lowercase();
        self.redact_fields.contains(&lower)
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
        assert_eq!(c.redact_fields.len(), 5);
        assert!(c.is_redacted("PassWord"));
        assert!(!c.is_redacted("username"));
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
    }

    #[test]
    fn custom_redaction_is_case_insensitive() {
        let c = Config::parse(r#"{"redact_fields":["API_Key"]}"#).unwrap();
        assert!(c.is_redacted("api_key"));
        assert!(c.is_redacted("API_KEY"));
        assert!(!c.is_redacted("password"));
    }
}
