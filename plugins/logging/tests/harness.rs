//! The `logging` component, built for wasm32-wasip2 and run on the sidecar's
//! own policy host through `policy-harness`: the access line each request
//! leaves, what never gets into it, and the `/monitor` endpoint.

use policy_harness::{
    Decision, DecisionExt, FieldValue, Harness, HeadersExt, Level, LogsExt, ResponseExt, get, post,
    put, request, response,
};
use serde_json::{Value, json};

const MONITOR_REPLY: &str = "Request logged by Sidecar!";

fn harness() -> Harness {
    Harness::build_crate(env!("CARGO_MANIFEST_DIR"))
        .expect("logging builds and loads")
        .named("logging")
}

type Fields = Vec<(String, FieldValue)>;

/// The fields of the one line logged with `message`, after checking its
/// level and host tags.
fn only_line(h: &Harness, message: &str) -> Fields {
    let logs = h.logs();
    let lines = logs.with_message(message);
    assert_eq!(lines.len(), 1, "one {message:?} line expected: {logs:?}");
    let line = lines[0];
    assert_eq!(line.level, Level::Info);
    assert_eq!(&*line.policy, "logging");
    line.fields.clone()
}

fn field<'a>(fields: &'a Fields, key: &str) -> Option<&'a FieldValue> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn str_field(fields: &Fields, key: &str) -> Option<String> {
    match field(fields, key)? {
        FieldValue::Str(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn s(v: &str) -> FieldValue {
    FieldValue::Str(v.into())
}

// --- the access line -------------------------------------------------------

#[test]
fn logs_one_access_line_per_round_trip_with_every_field() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let req = get("/user-service/profile?x=1")
        .route("users")
        .client("10.1.2.3:5555")
        .request_id("rid-7");
    let upstream = response(200)
        .header("x-cache", "hit")
        .header("content-type", "text/plain")
        .body("hello");
    let trip = p.round_trip(req, upstream).unwrap();

    // Logging never gets in the way: request and response pass untouched.
    assert!(matches!(trip.decision, Decision::Continue(None)));
    assert_eq!(trip.response.status, 200);
    assert_eq!(trip.response.text(), "hello");
    assert_eq!(trip.response.header("x-cache"), Some("hit"));

    let logs = h.logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(&*logs[0].request_id, "rid-7");
    assert_eq!(&*logs[0].route, "users");
    let f = only_line(&h, "access");
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "method",
            "path",
            "protocol",
            "status",
            "duration_ms",
            "request_id",
            "route",
            "client",
            "cache",
            "bytes",
            "request_bytes",
            "response_bytes"
        ]
    );
    assert_eq!(field(&f, "method"), Some(&s("GET")));
    assert_eq!(field(&f, "path"), Some(&s("/user-service/profile?x=1")));
    assert_eq!(field(&f, "protocol"), Some(&s("HTTP/1.1")));
    assert_eq!(field(&f, "status"), Some(&FieldValue::Int(200)));
    // `user` comes only from a policy later in a real chain (`auth`);
    // alone on the harness, no policy sets it.
    assert_eq!(field(&f, "request_id"), Some(&s("rid-7")));
    assert_eq!(field(&f, "route"), Some(&s("users")));
    assert_eq!(field(&f, "client"), Some(&s("10.1.2.3:5555")));
    assert_eq!(field(&f, "cache"), Some(&s("hit")));
    assert_eq!(field(&f, "bytes"), Some(&FieldValue::Int(5)));
    assert_eq!(field(&f, "request_bytes"), Some(&FieldValue::Int(0)));
    assert_eq!(field(&f, "response_bytes"), Some(&FieldValue::Int(5)));
    assert_eq!(field(&f, "error"), None, "the response went out whole");
}

#[test]
fn access_line_counts_the_bytes_of_both_bodies() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.round_trip(
        put("/items/1").body("twelve bytes"),
        response(200).body("ok"),
    )
    .unwrap();
    let f = only_line(&h, "access");
    assert_eq!(field(&f, "request_bytes"), Some(&FieldValue::Int(12)));
    assert_eq!(field(&f, "response_bytes"), Some(&FieldValue::Int(2)));
    assert_eq!(field(&f, "bytes"), Some(&FieldValue::Int(2)));
}

#[test]
fn duration_is_a_float_of_milliseconds() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.round_trip(get("/x"), response(204)).unwrap();
    let f = only_line(&h, "access");
    // From the completion record; on the harness clock it may be 0.
    match field(&f, "duration_ms") {
        Some(FieldValue::Float(ms)) => assert!(ms.is_finite() && *ms >= 0.0, "{ms}"),
        other => panic!("duration_ms: {other:?}"),
    }
}

#[test]
fn each_round_trip_logs_its_own_line() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.round_trip(get("/a").request_id("r1"), response(200))
        .unwrap();
    p.round_trip(put("/b").request_id("r2"), response(201).body("ok"))
        .unwrap();
    let logs = h.take_logs();
    let lines = logs.with_message("access");
    assert_eq!(lines.len(), 2, "{logs:?}");
    let summary: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l.field("method").cloned(),
                l.field("path").cloned(),
                l.field("status").cloned(),
                l.request_id.to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                Some(s("GET")),
                Some(s("/a")),
                Some(FieldValue::Int(200)),
                "r1".into()
            ),
            (
                Some(s("PUT")),
                Some(s("/b")),
                Some(FieldValue::Int(201)),
                "r2".into()
            ),
        ]
    );
    assert!(h.logs().is_empty(), "take_logs cleared them");
}

#[test]
fn request_hook_alone_logs_nothing() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let d = p.on_request(get("/x")).unwrap();
    assert!(matches!(d, Decision::Continue(None)));
    assert!(
        h.logs().is_empty(),
        "the line is written by the completion hook"
    );
}

#[test]
fn optional_fields_are_left_out_when_their_headers_are_absent() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.round_trip(get("/x"), response(200)).unwrap();
    let f = only_line(&h, "access");
    assert_eq!(field(&f, "user"), None);
    assert_eq!(field(&f, "cache"), None);
    assert_eq!(field(&f, "bytes"), Some(&FieldValue::Int(0)));
    assert_eq!(
        field(&f, "request_id"),
        Some(&s("test-request")),
        "the builder's default id"
    );
}

// --- the user ----------------------------------------------------------

#[test]
fn client_sent_user_on_a_denied_request_is_not_logged() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    // logging runs first; a later policy answered 401 before `auth` could
    // strip the header, so the request still carries the client's claim.
    let denial = json!({ "error": "missing bearer token", "code": "missing_token" });
    p.round_trip(
        get("/orders").header("x-authenticated-user", "admin"),
        response(401).json(&denial),
    )
    .unwrap();
    let f = only_line(&h, "access");
    assert_eq!(field(&f, "status"), Some(&FieldValue::Int(401)));
    assert_eq!(field(&f, "user"), None, "{f:?}");
    assert!(!h.logs().mention("admin"), "{:?}", h.logs());
}

#[test]
fn client_sent_user_is_never_logged_whatever_the_status() {
    let h = harness();
    for (cfg, header) in [
        (json!({}), "x-authenticated-user"),
        (json!({ "user_header": "X-User" }), "x-user"),
    ] {
        let p = h.configure(cfg).unwrap();
        for status in [200, 403, 429, 503] {
            p.round_trip(get("/x").header(header, "admin"), response(status))
                .unwrap();
        }
        // The monitor endpoint's own answer too.
        p.round_trip(
            post("/monitor").header(header, "admin").body("ping"),
            response(502),
        )
        .unwrap();
    }
    let logs = h.take_logs();
    assert_eq!(logs.with_message("access").len(), 10, "{logs:?}");
    assert!(!logs.mention("admin"), "{logs:?}");
}

#[test]
fn denied_responses_are_logged_with_their_status() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    // As when a later policy (auth) answered 401: logging's completion hook
    // still sees that answer.
    let denial = json!({ "error": "missing bearer token", "code": "missing_token" });
    let trip = p
        .round_trip(get("/orders"), response(401).json(&denial))
        .unwrap();
    assert_eq!(trip.response.status, 401);
    let f = only_line(&h, "access");
    assert_eq!(field(&f, "status"), Some(&FieldValue::Int(401)));
    assert_eq!(field(&f, "path"), Some(&s("/orders")));
    let len = i64::try_from(denial.to_string().len()).unwrap();
    assert_eq!(field(&f, "bytes"), Some(&FieldValue::Int(len)));
}

#[test]
fn upstream_errors_are_logged_with_their_status() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    for status in [404, 500, 503] {
        p.round_trip(get("/x"), response(status)).unwrap();
    }
    let statuses: Vec<_> = h
        .logs()
        .with_message("access")
        .iter()
        .map(|l| l.field("status").cloned())
        .collect();
    assert_eq!(statuses, [404, 500, 503].map(|c| Some(FieldValue::Int(c))));
}

// --- secrets ---------------------------------------------------------------

#[test]
fn secrets_never_reach_the_access_line() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let req = get("/login?user=bob&password=hunter2&Token=tok-value&pass%77ord=enc-value&x=1")
        .bearer("header.jwt.value")
        .header("cookie", "session=cookie-value")
        .header("x-api-key", "api-key-value")
        .body("request-body-value");
    let upstream = response(200)
        .header("set-cookie", "sid=set-cookie-value")
        .body("response-body-value");
    p.round_trip(req, upstream).unwrap();

    let f = only_line(&h, "access");
    assert_eq!(
        str_field(&f, "path").as_deref(),
        Some("/login?user=bob&password=[redacted]&Token=[redacted]&pass%77ord=[redacted]&x=1")
    );
    let logs = h.logs();
    for secret in [
        "hunter2",
        "tok-value",
        "enc-value",
        "header.jwt.value",
        "Bearer",
        "cookie-value",
        "api-key-value",
        "request-body-value",
        "set-cookie-value",
        "response-body-value",
    ] {
        assert!(!logs.mention(secret), "{secret} logged: {logs:?}");
    }
}

#[test]
fn custom_redact_fields_apply_to_the_query() {
    let h = harness();
    let p = h
        .configure(json!({ "redact_fields": ["API_Key", "password"] }))
        .unwrap();
    p.round_trip(
        get("/x?api_key=k-value&PASSWORD=p-value&page=2"),
        response(200),
    )
    .unwrap();
    let f = only_line(&h, "access");
    assert_eq!(
        str_field(&f, "path").as_deref(),
        Some("/x?api_key=[redacted]&PASSWORD=[redacted]&page=2")
    );
}

#[test]
fn common_secret_names_are_redacted_however_spelled_in_the_query() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.round_trip(
        get(
            "/cb?access_token=q1&id_token=q2&password[]=q3&pass%77ord=q4\
             &%70assword=q5&access%5Ftoken=q6&user[password]=q7&state=ok",
        ),
        response(302),
    )
    .unwrap();
    let f = only_line(&h, "access");
    assert_eq!(
        str_field(&f, "path").as_deref(),
        Some(
            "/cb?access_token=[redacted]&id_token=[redacted]&password[]=[redacted]\
             &pass%77ord=[redacted]&%70assword=[redacted]&access%5Ftoken=[redacted]\
             &user[password]=[redacted]&state=ok"
        )
    );
    let logs = h.logs();
    for n in 1..=7 {
        assert!(!logs.mention(&format!("q{n}")), "q{n} logged: {logs:?}");
    }
}

// --- /monitor --------------------------------------------------------------

#[test]
fn post_monitor_answers_200_and_logs_the_redacted_body() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let body = json!({
        "user": "bob",
        "password": "hunter2",
        "nested": { "Token": "tok-value", "list": [{ "Secret": "s-value" }, { "ok": true }] },
    });
    let trip = p
        .round_trip(
            post("/monitor").json(&body),
            response(502).body("the upstream must not be reached"),
        )
        .unwrap();

    assert!(trip.forwarded.is_none(), "answered by the policy");
    let answer = trip.decision.responded().unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), MONITOR_REPLY);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        answer.headers
    );
    assert_eq!(trip.response.status, 200);
    assert_eq!(trip.response.text(), MONITOR_REPLY);

    let f = only_line(&h, "monitor");
    let logged: Value = serde_json::from_str(&str_field(&f, "body").unwrap()).unwrap();
    assert_eq!(
        logged,
        json!({
            "user": "bob",
            "password": "[redacted]",
            "nested": { "Token": "[redacted]", "list": [{ "Secret": "[redacted]" }, { "ok": true }] },
        })
    );
    let logs = h.logs();
    for secret in ["hunter2", "tok-value", "s-value"] {
        assert!(!logs.mention(secret), "{secret} logged: {logs:?}");
    }
    // The monitor request gets its access line too, with the policy's answer.
    let access = only_line(&h, "access");
    assert_eq!(field(&access, "status"), Some(&FieldValue::Int(200)));
    assert_eq!(field(&access, "method"), Some(&s("POST")));
    let reply_len = i64::try_from(MONITOR_REPLY.len()).unwrap();
    assert_eq!(field(&access, "bytes"), Some(&FieldValue::Int(reply_len)));
}

#[test]
fn post_monitor_with_a_query_string_is_answered() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let d = p
        .on_request(post("/monitor?source=probe").body("ping"))
        .unwrap();
    assert_eq!(
        d.responded().map(ResponseExt::text).as_deref(),
        Some(MONITOR_REPLY)
    );
}

#[test]
fn non_json_monitor_body_is_logged_as_text() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.on_request(post("/monitor").body("plain words")).unwrap();
    let f = only_line(&h, "monitor");
    assert_eq!(field(&f, "body_text"), Some(&s("plain words")));
    assert_eq!(field(&f, "body"), None);
}

#[test]
fn huge_text_monitor_body_is_cut() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.on_request(post("/monitor").body("x".repeat(100_000)))
        .unwrap();
    let f = only_line(&h, "monitor");
    let text = str_field(&f, "body_text").unwrap();
    assert!(text.len() <= 4096, "{} bytes logged", text.len());
}

#[test]
fn monitor_body_that_is_not_json_has_its_password_redacted() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    for (content_type, body) in [
        // An HTML form post.
        (
            "application/x-www-form-urlencoded",
            "user=bob&password=hunter2",
        ),
        // JSON with a trailing comma, or trailing garbage: not JSON to serde.
        (
            "application/json",
            r#"{"user":"bob","password":"hunter2",}"#,
        ),
        (
            "application/json",
            r#"{"user":"bob","password":"hunter2"} x"#,
        ),
    ] {
        p.on_request(
            post("/monitor")
                .header("content-type", content_type)
                .body(body),
        )
        .unwrap();
        let logs = h.take_logs();
        assert_eq!(logs.with_message("monitor").len(), 1, "{logs:?}");
        assert!(!logs.mention("hunter2"), "{body:?} logged as {logs:?}");
    }
}

#[test]
fn other_methods_on_monitor_are_not_answered() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    for req in [
        get("/monitor"),
        put("/monitor"),
        request("HEAD", "/monitor"),
    ] {
        let d = p.on_request(req).unwrap();
        assert!(matches!(d, Decision::Continue(None)), "{d:?}");
    }
    // Nor are neighbouring paths.
    for path in ["/monitor/x", "/monitoring", "/api/monitor"] {
        let d = p.on_request(post(path).body("{}")).unwrap();
        assert!(matches!(d, Decision::Continue(None)), "{path}: {d:?}");
    }
    assert!(h.logs().with_message("monitor").is_empty());
}

#[test]
fn null_monitor_path_disables_the_endpoint() {
    let h = harness();
    let p = h.configure(json!({ "monitor_path": null })).unwrap();
    let trip = p
        .round_trip(
            post("/monitor").json(&json!({ "a": 1 })),
            response(404).body("upstream"),
        )
        .unwrap();
    assert!(matches!(trip.decision, Decision::Continue(None)));
    assert_eq!(trip.response.text(), "upstream");
    assert!(h.logs().with_message("monitor").is_empty());
    let f = only_line(&h, "access");
    assert_eq!(field(&f, "status"), Some(&FieldValue::Int(404)));
}

#[test]
fn monitor_path_is_configurable() {
    let h = harness();
    let p = h.configure(json!({ "monitor_path": "/_mon" })).unwrap();
    let d = p.on_request(post("/_mon").body("x")).unwrap();
    assert_eq!(d.responded().map(|r| r.status), Some(200));
    let d = p.on_request(post("/monitor").body("x")).unwrap();
    assert!(d.continued());
}

#[test]
fn custom_redact_fields_apply_to_the_monitor_body() {
    let h = harness();
    let p = h.configure(json!({ "redact_fields": ["card"] })).unwrap();
    p.on_request(post("/monitor").json(&json!({ "Card": "4111", "name": "bob" })))
        .unwrap();
    let f = only_line(&h, "monitor");
    let logged: Value = serde_json::from_str(&str_field(&f, "body").unwrap()).unwrap();
    assert_eq!(logged, json!({ "Card": "[redacted]", "name": "bob" }));
}

#[test]
fn monitor_json_body_has_common_secret_keys_redacted_at_any_depth() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    let body = json!({
        "access_token": "j1",
        "client": { "api_key": "j2", "login": { "pwd": "j3", "jwt": "j4" } },
        "credentials": { "user": "bob", "key": "j5" },
        "items": [{ "Access_Token": "j6" }],
        "user": "bob",
    });
    p.on_request(post("/monitor").json(&body)).unwrap();
    let f = only_line(&h, "monitor");
    let logged: Value = serde_json::from_str(&str_field(&f, "body").unwrap()).unwrap();
    assert_eq!(
        logged,
        json!({
            "access_token": "[redacted]",
            "client": { "api_key": "[redacted]", "login": { "pwd": "[redacted]", "jwt": "[redacted]" } },
            "credentials": "[redacted]",
            "items": [{ "Access_Token": "[redacted]" }],
            "user": "bob",
        })
    );
}

#[test]
fn monitor_text_body_loses_whole_credentials_and_encoded_names() {
    let h = harness();
    let p = h.configure(json!({})).unwrap();
    p.on_request(
        post("/monitor")
            .header("content-type", "text/plain")
            .body("Authorization: Bearer t1.t2.t3\r\nAccept: */*"),
    )
    .unwrap();
    let f = only_line(&h, "monitor");
    assert_eq!(
        str_field(&f, "body_text").as_deref(),
        Some("Authorization: [redacted]\r\nAccept: */*")
    );
    h.take_logs();

    p.on_request(
        post("/monitor")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("user=bob&pass%77ord=f1&%70assword=f2&access%5Ftoken=f3&password[]=f4&pwd=f5"),
    )
    .unwrap();
    let f = only_line(&h, "monitor");
    let text = str_field(&f, "body_text").unwrap();
    assert!(text.starts_with("user=bob&"), "{text}");
    for n in 1..=5 {
        assert!(!text.contains(&format!("f{n}")), "f{n} logged: {text}");
    }
}

// --- config ----------------------------------------------------------------

#[test]
fn refuses_bad_configs_naming_the_field() {
    for (cfg, field) in [
        (json!({ "monitor": "/x" }), "monitor"),
        (json!({ "monitor_path": "monitor" }), "monitor_path"),
        (json!({ "user_header": "" }), "user_header"),
    ] {
        let message = harness().refusal(cfg.clone());
        assert!(message.contains(field), "{cfg}: {message}");
    }
    // A type error is refused too.
    harness().refusal(json!({ "redact_fields": "password" }));
}
