use std::sync::Mutex;

use super::*;
use crate::capabilities::ManualClock;

/// Answers from a table by URL; records what reached it.
#[derive(Default)]
struct Table {
    replies: HashMap<String, Result<OutboundResponse, SendError>>,
    seen: Mutex<Vec<String>>,
}

impl Table {
    fn reply(mut self, url: &str, status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        self.replies.insert(
            url.into(),
            Ok(OutboundResponse {
                status: StatusCode::from_u16(status).unwrap(),
                headers: map,
                body: Bytes::from(body.to_owned()),
            }),
        );
        self
    }
}

impl HttpClient for Table {
    fn send(&self, req: OutboundRequest, _: Duration, _: usize) -> SendFuture<'_> {
        let url = req.uri.to_string();
        self.seen
            .lock()
            .unwrap()
            .push(format!("{} {url}", req.method));
        let reply = self
            .replies
            .get(&url)
            .cloned()
            .unwrap_or_else(|| Err(SendError::Failed(format!("no reply for {url}"))));
        Box::pin(async move { reply })
    }
}

fn state(table: Table, allow: &[&str], clock: Arc<ManualClock>) -> (OutboundState, Arc<Table>) {
    let table = Arc::new(table);
    let grant = OutboundGrant {
        allow: allow.iter().map(|o| o.parse().unwrap()).collect(),
        ..OutboundGrant::default()
    };
    let state = OutboundState {
        outbound: Outbound::new(table.clone(), clock),
        grant: Arc::new(grant),
        caller: Caller {
            policy: "auth".into(),
            route: "r".into(),
            request_id: "id".into(),
        },
        calls: 0,
        call_started: Instant::now(),
        deadline: Duration::from_secs(1),
    };
    (state, table)
}

fn get(url: &str) -> OutgoingRequest {
    OutgoingRequest {
        method: "GET".into(),
        url: url.into(),
        headers: vec![],
        body: vec![],
    }
}

fn call(
    state: &mut OutboundState,
    req: OutgoingRequest,
) -> Result<(IncomingResponse, bool), wit::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(send(state, req, Duration::from_secs(1))).1
}

#[test]
fn origins_parse_with_explicit_ports() {
    let o: Origin = "https://IdP.example.com".parse().unwrap();
    assert_eq!(o.to_string(), "https://idp.example.com:443");
    let o: Origin = "http://127.0.0.1:8080/".parse().unwrap();
    assert_eq!(o.to_string(), "http://127.0.0.1:8080");
    for bad in [
        "idp.example.com",
        "ftp://x",
        "https://x/path",
        "https://u@x",
    ] {
        assert!(bad.parse::<Origin>().is_err(), "{bad}");
    }
}

#[test]
fn reaches_only_granted_origins() {
    let clock = Arc::new(ManualClock::new(0));
    let table = Table::default().reply("https://idp.example/keys", 200, &[], "{}");
    let (mut st, table) = state(table, &["https://idp.example"], clock);
    assert!(call(&mut st, get("https://idp.example/keys")).is_ok());
    for url in [
        "https://idp.example:8443/keys",
        "http://idp.example/keys",
        "https://evil.example/keys",
        "/relative",
        "file:///etc/passwd",
    ] {
        match call(&mut st, get(url)) {
            Err(wit::Error::Denied(m)) => assert!(!m.is_empty()),
            other => panic!("{url}: {other:?}"),
        }
    }
    // The refused ones never reached the network.
    assert_eq!(table.seen.lock().unwrap().len(), 1);
}

#[test]
fn follows_redirects_to_granted_origins_only() {
    let clock = Arc::new(ManualClock::new(0));
    let table = Table::default()
        .reply("https://idp.example/a", 302, &[("location", "/b")], "")
        .reply("https://idp.example/b", 200, &[], "keys")
        .reply(
            "https://idp.example/out",
            301,
            &[("location", "https://evil.example/x")],
            "",
        );
    let (mut st, table) = state(table, &["https://idp.example"], clock);
    let (r, _) = call(&mut st, get("https://idp.example/a")).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"keys".as_slice()));
    match call(&mut st, get("https://idp.example/out")) {
        Err(wit::Error::Denied(m)) => assert!(m.contains("redirected"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !table
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.contains("evil"))
    );
}

#[test]
fn keeps_a_get_while_its_max_age_lasts() {
    let clock = Arc::new(ManualClock::new(0));
    let url = "https://idp.example/jwks";
    let table = Table::default().reply(url, 200, &[("cache-control", "public, max-age=60")], "k");
    let (mut st, table) = state(table, &["https://idp.example"], clock.clone());
    assert!(!call(&mut st, get(url)).unwrap().1);
    assert!(
        call(&mut st, get(url)).unwrap().1,
        "second call from the cache"
    );
    clock.advance(Duration::from_secs(61));
    assert!(!call(&mut st, get(url)).unwrap().1, "expired");
    assert_eq!(table.seen.lock().unwrap().len(), 2);
}

#[test]
fn a_no_cache_request_goes_past_the_cache() {
    let clock = Arc::new(ManualClock::new(0));
    let url = "https://idp.example/jwks";
    let table = Table::default().reply(url, 200, &[("cache-control", "max-age=60")], "k");
    let (mut st, table) = state(table, &["https://idp.example"], clock);
    call(&mut st, get(url)).unwrap();
    let mut fresh = get(url);
    fresh.headers.push(Header {
        name: "cache-control".into(),
        value: b"no-cache".to_vec(),
    });
    assert!(!call(&mut st, fresh).unwrap().1);
    assert_eq!(table.seen.lock().unwrap().len(), 2);
}

#[test]
fn keeps_nothing_the_response_forbids() {
    for cc in ["no-store, max-age=60", "no-cache", "public", "max-age=0"] {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
        assert_eq!(freshness(&headers), None, "{cc}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    headers.insert(header::AGE, HeaderValue::from_static("100"));
    assert_eq!(freshness(&headers), Some(Duration::from_secs(200)));
}

#[test]
fn counts_calls_against_the_request_quota() {
    let clock = Arc::new(ManualClock::new(0));
    let url = "https://idp.example/x";
    let (mut st, _) = state(
        Table::default().reply(url, 200, &[], ""),
        &["https://idp.example"],
        clock,
    );
    for _ in 0..OutboundGrant::default().calls_per_request {
        assert!(call(&mut st, get(url)).is_ok());
    }
    match call(&mut st, get(url)) {
        Err(wit::Error::Denied(m)) => assert!(m.contains("outbound_calls_per_request"), "{m}"),
        other => panic!("{other:?}"),
    }
    st.start_request();
    assert!(call(&mut st, get(url)).is_ok());
}

#[test]
fn refuses_invalid_requests() {
    let clock = Arc::new(ManualClock::new(0));
    let (mut st, _) = state(Table::default(), &["https://idp.example"], clock);
    let mut req = get("https://idp.example/x");
    req.method = "GE T".into();
    assert!(matches!(call(&mut st, req), Err(wit::Error::Invalid(_))));
    let mut req = get("https://idp.example/x");
    req.headers.push(Header {
        name: "x-bad".into(),
        value: b"a\r\nb".to_vec(),
    });
    assert!(matches!(call(&mut st, req), Err(wit::Error::Invalid(_))));
}

#[test]
fn a_timeout_leaves_the_policy_time_to_act() {
    let clock = Arc::new(ManualClock::new(0));
    let (mut st, _) = state(Table::default(), &["https://idp.example"], clock);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Nothing left of the deadline: no network call at all.
    let (_, r) = rt.block_on(send(&mut st, get("https://idp.example/x"), Duration::ZERO));
    assert!(matches!(r, Err(wit::Error::Timeout)), "{r:?}");
}
