//! Helpers the shipped policies share. Plain Rust with no WIT bindings, so it
//! builds for `wasm32-wasip2` inside each component and natively for tests:
//! config parsing with errors that name the field, keeping the parsed
//! config, and putting a request's path and query back together.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;

/// Keeps the config `configure` parsed for every later hook.
///
/// The host calls `configure` once per load and snapshots the instance, so
/// each request's instance starts with `slot` filled; a host that cannot
/// snapshot calls it on each fresh instance instead, where `slot` is empty.
/// Either way it is never filled twice; if it were, silently keeping the
/// first config would be worse than refusing the second.
///
/// # Errors
/// The message to return from `configure` when `slot` is already filled.
pub fn install<T>(slot: &OnceLock<T>, config: T) -> Result<(), String> {
    slot.set(config)
        .map_err(|_| "configure ran twice on one instance".to_owned())
}

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

/// `path?query` as the client sent it, from the request's `path()` and
/// `query()`: what a cache key or a log line means by "the path". A bare `?`
/// (an empty query) is kept, as it was sent.
pub fn path_and_query(path: String, query: Option<String>) -> String {
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
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
    fn install_fills_the_slot_once() {
        let slot = OnceLock::new();
        assert_eq!(install(&slot, 1), Ok(()));
        assert!(install(&slot, 2).unwrap_err().contains("twice"));
        assert_eq!(slot.get(), Some(&1));
    }

    #[test]
    fn query_is_joined_back_onto_the_path() {
        assert_eq!(path_and_query("/a".into(), None), "/a");
        assert_eq!(path_and_query("/a".into(), Some("x=1".into())), "/a?x=1");
        assert_eq!(path_and_query("/a".into(), Some(String::new())), "/a?");
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
