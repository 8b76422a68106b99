//! A policy that denies requests lacking a configured header (an API key,
//! say). Start your own policy from here: the decision logic is plain Rust
//! in this file, tested natively by `cargo test`; `component.rs` only
//! connects it to the WIT bindings (`wit/policy.wit` explains the contract).
//!
//! Config: `{"header": "x-api-key", "status": 401}` (`status` optional).

#[cfg(target_arch = "wasm32")]
mod component;

use serde::Deserialize;

/// The policy's config, parsed once per load by `configure`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header every request must carry.
    pub header: String,
    /// The status of the refusal.
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    401
}

impl Config {
    /// Parses and checks the config; the error becomes the refusal message.
    ///
    /// # Errors
    /// A message naming the field at fault.
    pub fn parse(json: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| format!("config: {e}"))?;
        if config.header.is_empty() {
            return Err("header: must not be empty".into());
        }
        if !(400..=599).contains(&config.status) {
            return Err(format!(
                "status: {} is not an error status (400-599)",
                config.status
            ));
        }
        Ok(Self {
            header: config.header.to_ascii_lowercase(),
            ..config
        })
    }
}

/// What to do with a request, given the values of the configured header
/// (bytes, as on the wire; empty when the request lacks it).
/// `Some((status, body))` refuses it.
pub fn decide(config: &Config, header_values: &[Vec<u8>]) -> Option<(u16, String)> {
    if !header_values.is_empty() {
        return None;
    }
    let body = serde_json::json!({
        "error": format!("missing header `{}`", config.header),
        "code": "missing_header",
    });
    Some((config.status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_an_empty_header_name() {
        assert!(
            Config::parse(r#"{"header": ""}"#)
                .unwrap_err()
                .starts_with("header:")
        );
    }

    #[test]
    fn lets_through_a_request_with_the_header() {
        let config = Config::parse(r#"{"header": "X-Api-Key"}"#).unwrap();
        assert_eq!(decide(&config, &[b"k".to_vec()]), None);
        assert_eq!(decide(&config, &[]).map(|(s, _)| s), Some(401));
    }
}
