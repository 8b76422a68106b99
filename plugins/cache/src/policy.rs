//! The cache's decisions, independent of the generated bindings.

use crate::cache_control::Directives;
use crate::config::Config;
use crate::entry::Entry;
use crate::key::{cache_key, identity};

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not cacheable (not a GET, or `cache-control: no-store`): stay out.
    Bypass,
    /// Look up `key` (unless `serve` is false: request `no-cache`), and on a
    /// miss maybe store the response under it.
    Lookup { key: String, serve: bool },
}

pub fn request_plan(cfg: &Config, method: &str, path: &str, headers: &[(&str, &str)]) -> Plan {
    if method != "GET" {
        return Plan::Bypass;
    }
    let cc = Directives::parse(values(headers, "cache-control"));
    if cc.has("no-store") {
        return Plan::Bypass;
    }
    Plan::Lookup {
        key: cache_key(method, path, &identity(cfg, headers)),
        serve: !cc.has("no-cache"),
    }
}

fn values<'a>(headers: &'a [(&str, &'a str)], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// Whether and for how long to keep a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Store {
    Yes { ttl_secs: u64 },
    No(&'static str),
}

pub fn store_decision(
    cfg: &Config,
    status: u16,
    headers: &[(&str, &str)],
    body_len: usize,
) -> Store {
    if status != 200 {
        return Store::No("status is not 200");
    }
    if body_len > cfg.max_entry_bytes {
        return Store::No("body larger than max_entry_bytes");
    }
    if values(headers, "set-cookie").next().is_some() {
        return Store::No("response sets a cookie");
    }
    if values(headers, "vary").any(|v| v.split(',').any(|f| f.trim() == "*")) {
        return Store::No("vary: *");
    }
    let cc = Directives::parse(values(headers, "cache-control"));
    // `no-cache` means "revalidate before every reuse", which this cache
    // cannot do, so such responses are not stored either.
    for flag in ["no-store", "private", "no-cache"] {
        if cc.has(flag) {
            return Store::No("cache-control forbids storing");
        }
    }
    let ttl = match cc.seconds("s-maxage").or_else(|| cc.seconds("max-age")) {
        None => cfg.ttl_secs,
        Some(None) => return Store::No("invalid max-age"),
        Some(Some(secs)) => secs,
    };
    match ttl.min(cfg.max_ttl_secs) {
        0 => Store::No("max-age is 0"),
        ttl_secs => Store::Yes { ttl_secs },
    }
}

/// Headers that describe one hop or this cache's own view; never stored.
const UNSTORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-cache",
    "age",
];

/// The entry to store for a response.
pub fn entry_for(
    status: u16,
    headers: &[(&str, &str)],
    request_headers: &[(&str, &str)],
    body: Vec<u8>,
    now_micros: u64,
) -> Entry {
    Entry {
        vary: vary_of(headers, request_headers),
        status,
        headers: headers
            .iter()
            .filter(|(n, _)| !UNSTORED.contains(n))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        stored_at_micros: now_micros,
        body,
    }
}

/// The headers a response varies on (its `Vary`), each with the value the
/// request had (several values joined by `, `; `None` when absent).
pub fn vary_of(
    response: &[(&str, &str)],
    request: &[(&str, &str)],
) -> Vec<(String, Option<String>)> {
    let mut names: Vec<String> = values(response, "vary")
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let value = request_value(request, &name);
            (name, value)
        })
        .collect()
}

fn request_value(request: &[(&str, &str)], name: &str) -> Option<String> {
    let found: Vec<&str> = values(request, name).collect();
    (!found.is_empty()).then(|| found.join(", "))
}

/// Whether a stored entry may answer this request: every header its
/// response varied on has the same value now as when it was stored.
pub fn vary_matches(entry: &Entry, request: &[(&str, &str)]) -> bool {
    entry
        .vary
        .iter()
        .all(|(name, value)| request_value(request, name) == *value)
}

/// The headers of a hit: the stored ones plus `x-cache: hit` and `age`.
pub fn hit_headers(entry: &Entry, now_micros: u64) -> Vec<(String, String)> {
    let age = now_micros.saturating_sub(entry.stored_at_micros) / 1_000_000;
    let mut headers = entry.headers.clone();
    headers.push(("x-cache".into(), "hit".into()));
    headers.push(("age".into(), age.to_string()));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_records_the_request_values_and_matches_only_the_same() {
        let response = [
            ("vary", "Accept-Language, accept-encoding"),
            ("vary", "x-v"),
        ];
        let request = [("accept-language", "en"), ("accept-encoding", "gzip")];
        let vary = vary_of(&response, &request);
        assert_eq!(
            vary,
            [
                ("accept-encoding".to_owned(), Some("gzip".to_owned())),
                ("accept-language".to_owned(), Some("en".to_owned())),
                ("x-v".to_owned(), None),
            ]
        );
        let entry = entry_for(200, &response, &request, vec![], 0);
        assert!(vary_matches(&entry, &request));
        assert!(!vary_matches(
            &entry,
            &[("accept-language", "fr"), ("accept-encoding", "gzip")]
        ));
        assert!(!vary_matches(&entry, &[("accept-encoding", "gzip")]));
        assert!(!vary_matches(
            &entry,
            &[
                ("accept-language", "en"),
                ("accept-encoding", "gzip"),
                ("x-v", "1")
            ]
        ));
    }

    fn cfg() -> Config {
        Config::parse("{}").unwrap()
    }

    #[test]
    fn only_get_is_cached() {
        for m in ["POST", "PUT", "DELETE", "HEAD", "PATCH", "get"] {
            assert_eq!(request_plan(&cfg(), m, "/a", &[]), Plan::Bypass, "{m}");
        }
        assert!(matches!(
            request_plan(&cfg(), "GET", "/a", &[]),
            Plan::Lookup { serve: true, .. }
        ));
    }

    #[test]
    fn request_cache_control() {
        let c = cfg();
        let plan = |cc: &str| request_plan(&c, "GET", "/a", &[("cache-control", cc)]);
        assert_eq!(plan("no-store"), Plan::Bypass);
        assert_eq!(plan("max-age=0, No-Store"), Plan::Bypass);
        assert!(matches!(
            plan("no-cache"),
            Plan::Lookup { serve: false, .. }
        ));
        assert!(matches!(
            plan("max-age=10"),
            Plan::Lookup { serve: true, .. }
        ));
    }

    #[test]
    fn key_depends_on_identity_and_query() {
        let c = cfg();
        let key =
            |path: &str, headers: &[(&str, &str)]| match request_plan(&c, "GET", path, headers) {
                Plan::Lookup { key, .. } => key,
                Plan::Bypass => panic!("bypass"),
            };
        let alice = key("/p", &[("x-authenticated-user", "alice")]);
        let bob = key("/p", &[("x-authenticated-user", "bob")]);
        let anon = key("/p", &[]);
        let token = key("/p", &[("authorization", "Bearer x")]);
        assert!(alice != bob && alice != anon && anon != token && bob != token);
        assert_ne!(key("/p?a=1", &[]), anon);
        // Headers other than identity and credentials don't matter.
        assert_eq!(key("/p", &[("accept", "text/html")]), anon);
    }

    #[test]
    fn stores_plain_200_with_default_ttl() {
        assert_eq!(
            store_decision(&cfg(), 200, &[], 10),
            Store::Yes { ttl_secs: 60 }
        );
    }

    #[test]
    fn refuses_unstorable_responses() {
        let c = cfg();
        assert!(matches!(store_decision(&c, 404, &[], 0), Store::No(_)));
        assert!(matches!(store_decision(&c, 206, &[], 0), Store::No(_)));
        assert!(matches!(
            store_decision(&c, 200, &[], 1_048_577),
            Store::No(_)
        ));
        assert!(matches!(
            store_decision(&c, 200, &[], 1_048_576),
            Store::Yes { .. }
        ));
        for h in [
            ("set-cookie", "a=b"),
            ("cache-control", "no-store"),
            ("cache-control", "private"),
            ("cache-control", "private=\"x-a, x-b\", max-age=60"),
            ("cache-control", "no-cache"),
            ("cache-control", "max-age=0"),
            ("cache-control", "max-age=soon"),
            ("vary", "*"),
            ("vary", "accept, *"),
        ] {
            assert!(
                matches!(store_decision(&c, 200, &[h], 1), Store::No(_)),
                "{h:?}"
            );
        }
        assert!(matches!(
            store_decision(&c, 200, &[("vary", "accept")], 1),
            Store::Yes { .. }
        ));
    }

    #[test]
    fn ttl_from_response() {
        let c = cfg();
        let ttl = |cc: &str| store_decision(&c, 200, &[("cache-control", cc)], 1);
        assert_eq!(ttl("max-age=10"), Store::Yes { ttl_secs: 10 });
        assert_eq!(
            ttl("public, max-age=10, s-maxage=20"),
            Store::Yes { ttl_secs: 20 }
        );
        assert_eq!(ttl("s-maxage=20, max-age=10"), Store::Yes { ttl_secs: 20 });
        assert_eq!(ttl("max-age=999999"), Store::Yes { ttl_secs: 3600 });
        assert!(matches!(ttl("s-maxage=0, max-age=10"), Store::No(_)));
        assert_eq!(ttl("public"), Store::Yes { ttl_secs: 60 });
        let only_explicit = Config::parse(r#"{"ttl_secs":0}"#).unwrap();
        assert!(matches!(
            store_decision(&only_explicit, 200, &[], 1),
            Store::No(_)
        ));
    }

    #[test]
    fn stored_entry_drops_hop_by_hop_and_own_headers() {
        let e = entry_for(
            200,
            &[
                ("content-type", "text/plain"),
                ("connection", "close"),
                ("transfer-encoding", "chunked"),
                ("x-cache", "miss"),
                ("age", "3"),
                ("etag", "\"1\""),
            ],
            &[],
            b"hi".to_vec(),
            5,
        );
        assert_eq!(
            e.headers,
            vec![
                ("content-type".to_string(), "text/plain".to_string()),
                ("etag".to_string(), "\"1\"".to_string())
            ]
        );
        assert_eq!(e.stored_at_micros, 5);
    }

    #[test]
    fn hit_headers_add_age() {
        let e = entry_for(
            200,
            &[("content-type", "text/plain")],
            &[],
            vec![],
            1_000_000,
        );
        let h = hit_headers(&e, 8_500_000);
        assert_eq!(
            h[1..],
            [("x-cache".into(), "hit".into()), ("age".into(), "7".into())]
        );
        let h = hit_headers(&e, 0);
        assert_eq!(h.last().unwrap().1, "0");
    }
}
