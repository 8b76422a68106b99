//! The policy's config.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// TTL for responses without `max-age`/`s-maxage`; 0 stores only
    /// responses that carry one.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Upper bound for any TTL, including a response's own `max-age`.
    #[serde(default = "default_max_ttl")]
    pub max_ttl_secs: u64,
    /// Request header naming the user (set by `auth`); part of the key so
    /// one user's cached response is never served to another.
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Larger response bodies are not stored.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
}

fn default_ttl() -> u64 {
    60
}
fn default_max_ttl() -> u64 {
    3600
}
fn default_identity_header() -> String {
    "x-authenticated-user".into()
}
fn default_max_entry_bytes() -> usize {
    1024 * 1024
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, String> {
        let mut cfg: Config = policy_common::parse_config(json)?;
        if cfg.max_ttl_secs == 0 {
            return Err("max_ttl_secs: must be greater than 0".into());
        }
        if cfg.ttl_secs > cfg.max_ttl_secs {
            return Err(format!(
                "ttl_secs: {} exceeds max_ttl_secs ({})",
                cfg.ttl_secs, cfg.max_ttl_secs
            ));
        }
        if cfg.max_entry_bytes == 0 {
            return Err("max_entry_bytes: must be greater than 0".into());
        }
        cfg.identity_header.make_ascii_lowercase();
        if cfg.identity_header.is_empty()
            || !cfg
                .identity_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(format!(
                "identity_header: {:?} is not a valid HTTP header name",
                cfg.identity_header
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::parse("{}").unwrap();
        assert_eq!((c.ttl_secs, c.max_ttl_secs), (60, 3600));
        assert_eq!(c.identity_header, "x-authenticated-user");
        assert_eq!(c.max_entry_bytes, 1_048_576);
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, field) in [
            (r#"{"ttl":5}"#, "ttl"),
            (r#"{"max_ttl_secs":0}"#, "max_ttl_secs"),
            (r#"{"ttl_secs":100,"max_ttl_secs":10}"#, "ttl_secs"),
            (r#"{"max_entry_bytes":0}"#, "max_entry_bytes"),
            (r#"{"identity_header":"a b"}"#, "identity_header"),
            (r#"{"identity_header":""}"#, "identity_header"),
        ] {
            let err = Config::parse(json).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn identity_header_lower_cased() {
        let c = Config::parse(r#"{"identity_header":"X-User"}"#).unwrap();
        assert_eq!(c.identity_header, "x-user");
    }
}
