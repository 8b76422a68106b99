//! The cache's decisions, independent of the generated bindings.

use crate::cache_control::Directives;
use crate::config::Config;
use crate::entry::Entry;
use crate::headers::{Headers, joined};
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

/// `path` is the path and query, as the client sent them.
pub fn request_plan(
    cfg: &Config,
    method: &str,
    path: &str,
    headers: &(impl Headers + ?Sized),
) -> Plan {
    if method != "GET" {
        return Plan::Bypass;
    }
    let cc = directives(headers);
    if cc.has("no-store") {
        return Plan::Bypass;
    }
    Plan::Lookup {
        key: cache_key(method, path, &identity(cfg, headers)),
        serve: !cc.has("no-cache"),
    }
}

fn directives(headers: &(impl Headers + ?Sized)) -> Directives {
    Directives::parse(headers.values("cache-control").iter().map(Vec::as_slice))
}

/// Whether and for how long to keep a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Store {
    Yes { ttl_secs: u64 },
    No(&'static str),
}

/// Decided on the response head alone, so that a body is read only for a
/// response that may be stored. Whether the body fits `max_entry_bytes` is
/// the caller's to check, by asking for at most that many bytes.
pub fn store_decision(cfg: &Config, status: u16, headers: &(impl Headers + ?Sized)) -> Store {
    if status != 200 {
        return Store::No("status is not 200");
    }
    if !headers.values("set-cookie").is_empty() {
        return Store::No("response sets a cookie");
    }
    let vary_star = headers
        .values("vary")
        .iter()
        .any(|v| v.split(|&b| b == b',').any(|f| f.trim_ascii() == b"*"));
    if vary_star {
        return Store::No("vary: *");
    }
    let cc = directives(headers);
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

/// The entry to store for a response whose headers are `headers` (as text:
/// the entry keeps them as strings). `None` when a header the response
/// varies on has a request value that is not UTF-8: such a variant could
/// not be told apart from others, so it is not stored.
pub fn entry_for(
    status: u16,
    headers: &[(&str, &str)],
    request: &(impl Headers + ?Sized),
    body: Vec<u8>,
    now_micros: u64,
) -> Option<Entry> {
    Some(Entry {
        vary: vary_of(headers, request)?,
        status,
        headers: headers
            .iter()
            .filter(|(n, _)| !UNSTORED.contains(n))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        stored_at_micros: now_micros,
        body,
    })
}

/// The headers a response varies on (its `Vary`), each with the value the
/// request had (several values joined by `, `; `None` when absent), or
/// `None` if one of those values is not UTF-8.
pub fn vary_of(
    response: &[(&str, &str)],
    request: &(impl Headers + ?Sized),
) -> Option<Vec<(String, Option<String>)>> {
    let mut names: Vec<String> = response
        .iter()
        .filter(|(n, _)| *n == "vary")
        .flat_map(|(_, v)| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let value = match joined(request, &name) {
                Some(bytes) => Some(String::from_utf8(bytes).ok()?),
                None => None,
            };
            Some((name, value))
        })
        .collect()
}

/// Whether a stored entry may answer this request: every header its
/// response varied on has the same value now as when it was stored.
pub fn vary_matches(entry: &Entry, request: &(impl Headers + ?Sized)) -> bool {
    entry.vary.iter().all(|(name, value)| {
        joined(request, name).as_deref() == value.as_deref().map(str::as_bytes)
    })
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

    /// A request or response without headers.
    const NONE: [(&str, &str); 0] = [];

    #[test]
    fn vary_records_the_request_values_and_matches_only_the_same() {
        let response = [
            ("vary", "Accept-Language, accept-encoding"),
            ("vary", "x-v"),
        ];
        let request = [("accept-language", "en"), ("accept-encoding", "gzip")];
        let vary = vary_of(&response, &request).unwrap();
        assert_eq!(
            vary,
            [
                ("accept-encoding".to_owned(), Some("gzip".to_owned())),
                ("accept-language".to_owned(), Some("en".to_owned())),
                ("x-v".to_owned(), None),
            ]
        );
        let entry = entry_for(200, &response, &request, vec![], 0).unwrap();
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

    #[test]
    fn vary_values_that_are_not_utf8_are_never_stored_nor_matched() {
        let response = [("vary", "accept-language")];
        let odd: [(&str, &[u8]); 1] = [("accept-language", b"en\xff")];
        assert_eq!(vary_of(&response, &odd), None);
        assert!(entry_for(200, &response, &odd, vec![], 0).is_none());
        let stored = entry_for(200, &response, &[("accept-language", "en")], vec![], 0).unwrap();
        assert!(!vary_matches(&stored, &odd));
    }

    #[test]
    fn vary_star_is_found_among_bytes_that_are_not_utf8() {
        let c = cfg();
        // Header values are bytes: a `*` still counts next to other bytes.
        let star: [(&str, &[u8]); 1] = [("vary", b"\xff, *")];
        assert!(matches!(store_decision(&c, 200, &star), Store::No(_)));
    }

    fn cfg() -> Config {
        Config::parse("{}").unwrap()
    }

    #[test]
    fn only_get_is_cached() {
        for m in ["POST", "PUT", "DELETE", "HEAD", "PATCH", "get"] {
            assert_eq!(request_plan(&cfg(), m, "/a", &NONE), Plan::Bypass, "{m}");
        }
        assert!(matches!(
            request_plan(&cfg(), "GET", "/a", &NONE),
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
            store_decision(&cfg(), 200, &NONE),
            Store::Yes { ttl_secs: 60 }
        );
    }

    #[test]
    fn refuses_unstorable_responses() {
        let c = cfg();
        assert!(matches!(store_decision(&c, 404, &NONE), Store::No(_)));
        assert!(matches!(store_decision(&c, 206, &NONE), Store::No(_)));
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
                matches!(store_decision(&c, 200, &[h]), Store::No(_)),
                "{h:?}"
            );
        }
        assert!(matches!(
            store_decision(&c, 200, &[("vary", "accept")]),
            Store::Yes { .. }
        ));
    }

    #[test]
    fn ttl_from_response() {
        let c = cfg();
        let ttl = |cc: &str| store_decision(&c, 200, &[("cache-control", cc)]);
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
            store_decision(&only_explicit, 200, &NONE),
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
            &NONE,
            b"hi".to_vec(),
            5,
        )
        .unwrap();
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
            &NONE,
            vec![],
            1_000_000,
        )
        .unwrap();
        let h = hit_headers(&e, 8_500_000);
        assert_eq!(
            h[1..],
            [("x-cache".into(), "hit".into()), ("age".into(), "7".into())]
        );
        let h = hit_headers(&e, 0);
        assert_eq!(h.last().unwrap().1, "0");
    }
}
