//! Helpers the shipped policies share. Plain Rust with no WIT bindings, so it
//! builds for `wasm32-wasip2` inside each component and natively for tests.

use serde::de::DeserializeOwned;

/// Deserializes a policy's JSON config. A failure names the field at fault
/// (`leeway_secs: invalid value: integer -1, expected u64 …`), or `config` for
/// the object as a whole, so the sidecar's refusal message points at it.
///
/// # Errors
/// The message to return from `configure`.
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "config".to_owned()
        } else {
            path
        };
        format!("{field}: {}", e.into_inner())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[allow(dead_code)]
        limit: u64,
        #[allow(dead_code)]
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_config::<Config>(r#"{"limit": -1}"#).unwrap_err();
        assert!(e.starts_with("limit: "), "{e}");
        let e = parse_config::<Config>(r#"{"limit": 1, "inner": {"name": 3}}"#).unwrap_err();
        assert!(e.starts_with("inner.name: "), "{e}");
        let e = parse_config::<Config>("[]").unwrap_err();
        assert!(e.starts_with("config: "), "{e}");
        let e = parse_config::<Config>(r#"{"limit": 1, "extra": 2}"#).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
    }
}
