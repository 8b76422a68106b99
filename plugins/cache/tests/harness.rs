//! The `cache` component, built for wasm32-wasip2 and run on the sidecar's
//! own policy host through `policy-harness`: what is stored in the host's kv
//! store, what is served from it, for whom and for how long.
//!
//! A hit is proved by giving the second round trip an upstream response with
//! a different body: a hit must answer with the stored body and never reach
//! that upstream.

use std::time::Duration;

use policy_harness::{
    Configured, DecisionExt, Harness, HeadersExt, Level, LogsExt, PolicyLimits, RequestBuilder,
    ResponseBuilder, ResponseExt, RoundTrip, delete, get, post, put, response,
};
use serde_json::json;

fn harness() -> Harness {
    Harness::build_crate(env!("CARGO_MANIFEST_DIR"))
        .expect("cache builds and loads")
        .named("cache")
}

fn ok(body: &str) -> ResponseBuilder {
    response(200)
        .header("content-type", "text/plain")
        .body(body)
}

fn trip(p: &Configured<'_>, req: RequestBuilder, upstream: ResponseBuilder) -> RoundTrip {
    p.round_trip(req, upstream).expect("hooks run")
}

/// Asserts the round trip was answered from the store with `body`.
#[track_caller]
fn assert_hit(t: &RoundTrip, body: &str) {
    assert!(
        t.forwarded.is_none(),
        "a hit never goes upstream: {:?}",
        t.decision
    );
    assert_eq!(t.response.status, 200);
    assert_eq!(t.response.text(), body);
    assert_eq!(t.response.header_all("x-cache"), ["hit"]);
}

/// Asserts the round trip went upstream and returned its `body`, marked as
/// a miss.
#[track_caller]
fn assert_miss(t: &RoundTrip, body: &str) {
    assert!(
        t.forwarded.is_some(),
        "a miss goes upstream: {:?}",
        t.decision
    );
    assert_eq!(t.response.text(), body);
    assert_eq!(t.response.header_all("x-cache"), ["miss"]);
    assert_eq!(t.response.header("age"), None);
}

/// Asserts the cache stayed out entirely: upstream reached, no `x-cache`.
#[track_caller]
fn assert_bypass(t: &RoundTrip, body: &str) {
    assert!(t.forwarded.is_some(), "{:?}", t.decision);
    assert_eq!(t.response.text(), body);
    assert_eq!(t.response.header("x-cache"), None);
}

// --- miss, hit, expiry -----------------------------------------------------

#[test]
fn first_get_is_a_miss_marked_x_cache_miss_and_stored() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let t = trip(&p, get("/items"), ok("v1"));
    assert!(
        t.decision.continued() && t.decision.changed_request().is_none(),
        "the request goes upstream untouched"
    );
    assert_miss(&t, "v1");
    assert_eq!(t.response.status, 200);
    assert_eq!(t.response.header("content-type"), Some("text/plain"));
    assert_eq!(h.kv_len(), 1, "one entry stored");
}

#[test]
fn serves_second_get_from_cache() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    assert_miss(&trip(&p, get("/items"), ok("v1")), "v1");
    h.advance(Duration::from_secs(5));
    let t = trip(&p, get("/items"), ok("v2 from upstream"));
    assert_hit(&t, "v1");
    assert_eq!(t.response.header("age"), Some("5"));
    assert_eq!(t.response.header("content-type"), Some("text/plain"));
    // The hit is the policy's own answer.
    assert_eq!(
        t.decision.responded().map(ResponseExt::text).as_deref(),
        Some("v1")
    );

    h.advance(Duration::from_secs(20));
    let t = trip(&p, get("/items"), ok("v3 from upstream"));
    assert_hit(&t, "v1");
    assert_eq!(t.response.header("age"), Some("25"));
}

#[test]
fn hit_replays_status_headers_and_binary_body() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let body = vec![0u8, 159, 146, 150, 255, b'{'];
    let upstream = response(200)
        .header("content-type", "application/octet-stream")
        .header("etag", "\"v1\"")
        .header("link", "</a>")
        .header("link", "</b>")
        // Hop-by-hop and this cache's own headers are not replayed.
        .header("connection", "close")
        .header("x-cache", "hit")
        .header("age", "100")
        .body(body.clone());
    let first = trip(&p, get("/blob"), upstream);
    assert_eq!(
        first.response.header_all("x-cache"),
        ["miss"],
        "ours replaces the upstream's"
    );

    let t = trip(&p, get("/blob"), response(200).body("other"));
    assert!(t.forwarded.is_none());
    assert_eq!(t.response.body, body);
    assert_eq!(
        t.response.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(t.response.header("etag"), Some("\"v1\""));
    assert_eq!(t.response.header_all("link"), ["</a>", "</b>"]);
    assert_eq!(t.response.header("connection"), None);
    assert_eq!(t.response.header_all("x-cache"), ["hit"]);
    assert_eq!(t.response.header_all("age"), ["0"]);
}

#[test]
fn entry_expires_after_default_ttl_then_misses_again() {
    let h = harness();
    let p = h.configure(json!({})).unwrap(); // ttl_secs: 60
    assert_miss(&trip(&p, get("/items"), ok("v1")), "v1");
    h.advance(Duration::from_secs(59));
    assert_hit(&trip(&p, get("/items"), ok("v2")), "v1");
    h.advance(Duration::from_secs(1));
    assert_miss(&trip(&p, get("/items"), ok("v3")), "v3");
    // The fresh response is stored in its turn.
    assert_hit(&trip(&p, get("/items"), ok("v4")), "v3");
}

#[test]
fn configured_ttl_secs_applies() {
    let h = harness();
    let p = h.configure(json!({ "ttl_secs": 5 })).unwrap();
    trip(&p, get("/items"), ok("v1"));
    h.advance(Duration::from_secs(4));
    assert_hit(&trip(&p, get("/items"), ok("v2")), "v1");
    h.advance(Duration::from_secs(1));
    assert_miss(&trip(&p, get("/items"), ok("v3")), "v3");
}

#[test]
fn response_max_age_sets_the_ttl() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let with_cc = |body: &str| ok(body).header("cache-control", "public, max-age=10");
    trip(&p, get("/short"), with_cc("v1"));
    h.advance(Duration::from_secs(9));
    assert_hit(&trip(&p, get("/short"), with_cc("v2")), "v1");
    h.advance(Duration::from_secs(1));
    assert_miss(&trip(&p, get("/short"), with_cc("v3")), "v3");
}

#[test]
fn response_max_age_longer_than_default_ttl_is_honoured() {
    let h = harness();
    let p = h.configure(json!({})).unwrap(); // ttl_secs 60, max 3600
    let with_cc = |body: &str| ok(body).header("cache-control", "max-age=120");
    trip(&p, get("/long"), with_cc("v1"));
    h.advance(Duration::from_secs(119));
    assert_hit(&trip(&p, get("/long"), with_cc("v2")), "v1");
    h.advance(Duration::from_secs(1));
    assert_miss(&trip(&p, get("/long"), with_cc("v3")), "v3");
}

#[test]
fn s_maxage_wins_over_max_age() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let with_cc = |body: &str| ok(body).header("cache-control", "max-age=5, s-maxage=20");
    trip(&p, get("/s"), with_cc("v1"));
    h.advance(Duration::from_secs(19));
    assert_hit(&trip(&p, get("/s"), with_cc("v2")), "v1");
    h.advance(Duration::from_secs(1));
    assert_miss(&trip(&p, get("/s"), with_cc("v3")), "v3");
}

#[test]
fn response_max_age_is_capped_by_max_ttl_secs() {
    let h = harness();
    let p = h
        .configure(json!({ "ttl_secs": 10, "max_ttl_secs": 100 }))
        .unwrap();
    let with_cc = |body: &str| ok(body).header("cache-control", "max-age=999999");
    trip(&p, get("/capped"), with_cc("v1"));
    h.advance(Duration::from_secs(99));
    assert_hit(&trip(&p, get("/capped"), with_cc("v2")), "v1");
    h.advance(Duration::from_secs(1));
    assert_miss(&trip(&p, get("/capped"), with_cc("v3")), "v3");
}

// --- keys: users and queries -----------------------------------------------

#[test]
fn users_never_share_an_entry() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let as_user = |user: &str| get("/profile").header("x-authenticated-user", user);

    assert_miss(
        &trip(&p, as_user("alice"), ok("alice's profile")),
        "alice's profile",
    );
    assert_miss(
        &trip(&p, as_user("bob"), ok("bob's profile")),
        "bob's profile",
    );
    assert_miss(&trip(&p, get("/profile"), ok("anonymous")), "anonymous");
    assert_eq!(h.kv_len(), 3);

    assert_hit(&trip(&p, as_user("alice"), ok("x")), "alice's profile");
    assert_hit(&trip(&p, as_user("bob"), ok("x")), "bob's profile");
    assert_hit(&trip(&p, get("/profile"), ok("x")), "anonymous");
    // Near-identical names are different users.
    assert_miss(&trip(&p, as_user("alice "), ok("other")), "other");
    assert_miss(&trip(&p, as_user("Alice"), ok("other 2")), "other 2");
}

#[test]
fn identity_header_is_configurable() {
    let h = harness();
    let p = h.configure(json!({ "identity_header": "X-User" })).unwrap();
    trip(&p, get("/p").header("x-user", "alice"), ok("alice's"));
    assert_miss(
        &trip(&p, get("/p").header("x-user", "bob"), ok("bob's")),
        "bob's",
    );
    assert_hit(
        &trip(&p, get("/p").header("x-user", "alice"), ok("x")),
        "alice's",
    );
}

#[test]
fn authorization_only_callers_get_their_own_entries() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let with_token = |t: &str| get("/profile").bearer(t);

    assert_miss(&trip(&p, with_token("token-a"), ok("for a")), "for a");
    assert_miss(&trip(&p, with_token("token-b"), ok("for b")), "for b");
    assert_miss(&trip(&p, get("/profile"), ok("anonymous")), "anonymous");
    assert_miss(
        &trip(
            &p,
            get("/profile").header("cookie", "sid=token-a"),
            ok("cookie a"),
        ),
        "cookie a",
    );
    assert_hit(&trip(&p, with_token("token-a"), ok("x")), "for a");
    assert_hit(&trip(&p, with_token("token-b"), ok("x")), "for b");
    assert_hit(
        &trip(&p, get("/profile").header("cookie", "sid=token-a"), ok("x")),
        "cookie a",
    );
    // A credential never matches the anonymous entry, nor vice versa.
    assert_hit(&trip(&p, get("/profile"), ok("x")), "anonymous");
    assert_miss(&trip(&p, with_token("token-c"), ok("for c")), "for c");
}

#[test]
fn vary_serves_a_stored_variant_only_to_requests_that_match_it() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let in_lang = |lang: &str| get("/greeting").header("accept-language", lang);
    let varied = |body: &str| ok(body).header("vary", "Accept-Language");

    assert_miss(&trip(&p, in_lang("en"), varied("hello")), "hello");
    assert_hit(&trip(&p, in_lang("en"), varied("x")), "hello");
    // Another language never gets the English variant; its answer replaces it.
    assert_miss(&trip(&p, in_lang("fr"), varied("bonjour")), "bonjour");
    assert_hit(&trip(&p, in_lang("fr"), varied("x")), "bonjour");
    // No accept-language at all is a value of its own.
    assert_miss(&trip(&p, get("/greeting"), varied("hi")), "hi");
    assert_hit(&trip(&p, get("/greeting"), varied("x")), "hi");
    assert_miss(
        &trip(&p, in_lang("en"), varied("hello again")),
        "hello again",
    );
}

#[test]
fn query_string_is_part_of_the_key() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    trip(&p, get("/items?page=1"), ok("page 1"));
    assert_miss(&trip(&p, get("/items?page=2"), ok("page 2")), "page 2");
    assert_miss(&trip(&p, get("/items"), ok("no page")), "no page");
    assert_hit(&trip(&p, get("/items?page=1"), ok("x")), "page 1");
    assert_hit(&trip(&p, get("/items?page=2"), ok("x")), "page 2");
}

// --- what bypasses the cache -------------------------------------------------

#[test]
fn request_no_store_bypasses_the_cache() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    // On an empty cache: nothing is stored.
    let t = trip(
        &p,
        get("/items").header("cache-control", "no-store"),
        ok("v1"),
    );
    assert_bypass(&t, "v1");
    assert_eq!(h.kv_len(), 0);

    // With an entry: it is not served, and not replaced.
    trip(&p, get("/items"), ok("stored"));
    let t = trip(
        &p,
        get("/items").header("cache-control", "max-age=0, No-Store"),
        ok("fresh"),
    );
    assert_bypass(&t, "fresh");
    assert_hit(&trip(&p, get("/items"), ok("x")), "stored");
}

#[test]
fn request_no_cache_skips_the_lookup_and_refreshes_the_entry() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    trip(&p, get("/items"), ok("old"));
    let t = trip(
        &p,
        get("/items").header("cache-control", "no-cache"),
        ok("new"),
    );
    assert_miss(&t, "new");
    assert_hit(&trip(&p, get("/items"), ok("x")), "new");
}

#[test]
fn response_no_store_private_and_no_cache_are_not_stored() {
    for cc in [
        "no-store",
        "private",
        "private, max-age=60",
        r#"private="set-cookie", max-age=60"#,
        "no-cache",
        "public, No-Store",
        "max-age=0",
        "max-age=soon",
    ] {
        let h = harness();
        let p = h.configure(json!({})).unwrap();
        let t = trip(&p, get("/items"), ok("v1").header("cache-control", cc));
        assert_miss(&t, "v1");
        assert_eq!(
            t.response.header("cache-control"),
            Some(cc),
            "the upstream's directive is passed on"
        );
        assert_eq!(h.kv_len(), 0, "{cc}: stored");
        assert_miss(&trip(&p, get("/items"), ok("v2")), "v2");
    }
}

#[test]
fn post_and_other_unsafe_methods_are_not_cached() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    assert_bypass(
        &trip(&p, post("/items").body("a"), ok("created 1")),
        "created 1",
    );
    assert_bypass(
        &trip(&p, post("/items").body("a"), ok("created 2")),
        "created 2",
    );
    assert_eq!(h.kv_len(), 0);

    // A stored GET is never the answer to another method.
    trip(&p, get("/items"), ok("list"));
    for req in [post("/items"), put("/items"), delete("/items")] {
        assert_bypass(&trip(&p, req, ok("written")), "written");
    }
    assert_hit(&trip(&p, get("/items"), ok("x")), "list");
}

#[test]
fn error_responses_are_not_cached() {
    for status in [404, 500, 503, 201, 206, 301] {
        let h = harness();
        let p = h.configure(json!({})).unwrap();
        let t = trip(&p, get("/items"), response(status).body("error"));
        assert_eq!(t.response.status, status);
        assert_miss(&t, "error");
        assert_eq!(h.kv_len(), 0, "{status}: stored");
        let t = trip(&p, get("/items"), ok("recovered"));
        assert_miss(&t, "recovered");
        assert_hit(&trip(&p, get("/items"), ok("x")), "recovered");
    }
}

#[test]
fn set_cookie_responses_are_not_stored() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let t = trip(
        &p,
        get("/login-page"),
        ok("page").header("set-cookie", "sid=abc; HttpOnly"),
    );
    assert_miss(&t, "page");
    assert_eq!(t.response.header("set-cookie"), Some("sid=abc; HttpOnly"));
    assert_eq!(h.kv_len(), 0);
    assert_miss(&trip(&p, get("/login-page"), ok("page 2")), "page 2");
}

#[test]
fn vary_star_responses_are_not_stored() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    trip(&p, get("/v"), ok("v1").header("vary", "accept, *"));
    assert_eq!(h.kv_len(), 0);
}

#[test]
fn bodies_over_max_entry_bytes_are_not_stored() {
    let h = harness();
    let p = h.configure(json!({ "max_entry_bytes": 16 })).unwrap();
    let big = "x".repeat(17);
    assert_miss(&trip(&p, get("/big"), ok(&big)), &big);
    assert_eq!(h.kv_len(), 0);
    assert_miss(&trip(&p, get("/big"), ok(&big)), &big);

    let exact = "y".repeat(16);
    trip(&p, get("/exact"), ok(&exact));
    assert_hit(&trip(&p, get("/exact"), ok("z")), &exact);
}

#[test]
fn store_refused_by_the_host_is_logged_and_the_response_still_passes() {
    // The default max_entry_bytes (1 MiB) admits a body the host's store
    // (1 MiB per value, metadata included) refuses.
    // Copying 1 MiB in and out of the guest twice takes the debug build of
    // the host (what `cargo test` runs here) tens of milliseconds, more on a
    // busy machine: this test is about the log line, not the 50 ms deadline.
    let h = harness().with_limits(PolicyLimits {
        deadline: Duration::from_secs(2),
        ..PolicyLimits::default()
    });
    let p = h.configure(json!({})).unwrap();
    let body = vec![b'a'; 1024 * 1024];
    let t = trip(&p, get("/huge"), response(200).body(body.clone()));
    assert_eq!(t.response.body.len(), body.len());
    assert_eq!(t.response.header("x-cache"), Some("miss"));
    assert_eq!(h.kv_len(), 0);
    let logs = h.logs();
    let lines = logs.with_message("cache store failed");
    assert_eq!(lines.len(), 1, "{logs:?}");
    assert_eq!(lines[0].level, Level::Warn);
}

#[test]
fn nothing_is_logged_on_ordinary_hits_and_misses() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    trip(&p, get("/a").bearer("secret-token"), ok("v1"));
    trip(&p, get("/a").bearer("secret-token"), ok("v2"));
    assert!(h.logs().is_empty(), "{:?}", h.logs());
}

// --- config ----------------------------------------------------------------

#[test]
fn refuses_bad_configs_naming_the_field() {
    for (cfg, field) in [
        (json!({ "ttl": 5 }), "ttl"),
        (json!({ "max_ttl_secs": 0 }), "max_ttl_secs"),
        (json!({ "ttl_secs": 100, "max_ttl_secs": 10 }), "ttl_secs"),
        (json!({ "max_entry_bytes": 0 }), "max_entry_bytes"),
        (json!({ "identity_header": "a b" }), "identity_header"),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.contains(field), "{cfg}: {message}");
    }
}
