//! `required_scopes`: paths that need more than a valid token.
//!
//! A token's scopes are the union of its `scope` claim (space-separated,
//! RFC 8693 §4.2), `scp` (an array, or a string as some providers send it)
//! and `roles` (an array). Arrays are read in `scope` too: the claim is
//! signed, and its meaning is plain either way. A request needs every scope of every rule whose
//! prefix its path falls under.

use serde_json::{Map, Value};

/// One `required_scopes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRule {
    /// Starts with `/`; matches itself and what lies below it, on segment
    /// boundaries (`/admin` covers `/admin/users`, not `/administrator`).
    prefix: String,
    scopes: Vec<String>,
}

impl ScopeRule {
    /// # Errors
    /// What is wrong, prefixed with `at` (`required_scopes[0]`).
    pub fn new(prefix: String, scopes: Vec<String>, at: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') {
            return Err(format!("{at}.prefix: {prefix:?} must start with `/`"));
        }
        if scopes.is_empty() {
            return Err(format!("{at}.scopes: must not be empty"));
        }
        if let Some(s) = scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "{at}.scopes: {s:?} is not a scope (non-empty, no spaces)"
            ));
        }
        Ok(Self { prefix, scopes })
    }

    fn covers(&self, path: &str) -> bool {
        let prefix = self.prefix.trim_end_matches('/');
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// The scopes `rules` require on `path` (query ignored) that `claims` do
/// not grant, in rule order; empty when the token may pass.
pub fn missing<'r>(
    rules: &'r [ScopeRule],
    path: &str,
    claims: &Map<String, Value>,
) -> Vec<&'r str> {
    if rules.is_empty() {
        return Vec::new();
    }
    let path = crate::config::strip_query(path);
    // A path the upstream may read as another (`/x/../admin`, `/%61dmin`,
    // `//admin`) is held to every rule: failing closed costs a 403, guessing
    // wrong lets a token without the scope through.
    let normalized = decode_unreserved(path);
    let ambiguous = is_ambiguous(&normalized);
    let granted = granted(claims);
    let mut missing: Vec<&str> = Vec::new();
    for rule in rules.iter().filter(|r| ambiguous || r.covers(&normalized)) {
        for scope in &rule.scopes {
            if !granted.contains(&scope.as_str()) && !missing.contains(&scope.as_str()) {
                missing.push(scope);
            }
        }
    }
    missing
}

/// Every scope the token grants.
fn granted(claims: &Map<String, Value>) -> Vec<&str> {
    let mut scopes = Vec::new();
    for name in ["scope", "scp", "roles"] {
        match claims.get(name) {
            // A role is a name, not a list: `roles` is an array or nothing.
            Some(Value::String(s)) if name != "roles" => {
                scopes.extend(s.split(' ').filter(|s| !s.is_empty()));
            }
            Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    scopes
}

/// `%XX` of an unreserved character (RFC 3986 §2.3) decoded, as an upstream
/// may; anything else left encoded.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
            && (b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            out.push(b as char);
            i += 3;
            continue;
        }
        // Byte-wise is safe: only ASCII is ever decoded, and the rest is
        // copied a char at a time.
        let c = path[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn is_ambiguous(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains('\\')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("//")
        || path.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(prefix: &str, scopes: &[&str]) -> ScopeRule {
        ScopeRule::new(
            prefix.into(),
            scopes.iter().map(|s| s.to_string()).collect(),
            "r",
        )
        .unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prefix_covers_its_subtree_on_segment_boundaries() {
        let r = rule("/admin", &["admin"]);
        assert!(r.covers("/admin"));
        assert!(r.covers("/admin/"));
        assert!(r.covers("/admin/users"));
        assert!(!r.covers("/administrator"));
        assert!(!r.covers("/"));
        let slash = rule("/admin/", &["admin"]);
        assert!(slash.covers("/admin/x") && slash.covers("/admin"));
        assert!(rule("/", &["any"]).covers("/anything"));
    }

    #[test]
    fn scopes_come_from_scope_scp_and_roles() {
        let rules = [rule("/admin", &["admin", "write"])];
        for granted in [
            json!({"scope": "read admin write"}),
            json!({"scp": ["admin", "write"]}),
            json!({"scp": "write admin"}),
            json!({"roles": ["admin"], "scope": "write"}),
        ] {
            assert!(
                missing(&rules, "/admin/x", &claims(granted.clone())).is_empty(),
                "{granted}"
            );
        }
        assert_eq!(
            missing(&rules, "/admin", &claims(json!({"scope": "admin"}))),
            ["write"]
        );
        assert_eq!(
            missing(
                &rules,
                "/admin?x=1",
                &claims(json!({"scope": 7, "roles": "admin"}))
            ),
            ["admin", "write"]
        );
        // Another path needs nothing.
        assert!(missing(&rules, "/orders", &claims(json!({}))).is_empty());
    }

    #[test]
    fn every_matching_rule_applies() {
        let rules = [
            rule("/admin", &["admin"]),
            rule("/admin/billing", &["billing"]),
        ];
        let c = claims(json!({"scope": "admin"}));
        assert!(missing(&rules, "/admin/users", &c).is_empty());
        assert_eq!(missing(&rules, "/admin/billing/1", &c), ["billing"]);
    }

    #[test]
    fn paths_an_upstream_may_resolve_elsewhere_need_every_rule() {
        let rules = [rule("/admin", &["admin"])];
        let none = claims(json!({"scope": "read"}));
        for path in [
            "/public/../admin",
            "/./admin",
            "//admin",
            "/%61dmin",
            "/x%2f..%2fadmin",
            "/x\\..\\admin",
        ] {
            assert_eq!(missing(&rules, path, &none), ["admin"], "{path}");
        }
        assert!(missing(&rules, "/public/a%20b", &none).is_empty());
    }

    #[test]
    fn bad_rules_are_refused() {
        for (prefix, scopes, msg) in [
            ("admin", vec!["a"], "r.prefix"),
            ("/admin", vec![], "r.scopes: must not be empty"),
            ("/admin", vec![""], "r.scopes"),
            ("/admin", vec!["a b"], "r.scopes"),
        ] {
            let err = ScopeRule::new(
                prefix.into(),
                scopes.into_iter().map(String::from).collect(),
                "r",
            )
            .unwrap_err();
            assert!(err.starts_with(msg), "{err}");
        }
    }
}
