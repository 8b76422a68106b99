//! One policy call, everything the sidecar does for it, on the runtime's
//! exchange API: the request head built from the HTTP request (the
//! sidecar's own `convert::request_head`), the body left streaming
//! (`Body::empty()`), an instance (a fresh one, or a reused one), the request
//! hook, the upstream's response set on the exchange, the response hook and
//! the completion hook if the policy asked for them, and the instance
//! dropped. Each shipped policy plus `noop`, a policy that does nothing, so
//! the host's own cost per call shows on its own; every case twice, built
//! against contract 0.2.0 (`plugins/`, rebuilt by `test-policies`) and
//! against 0.1.0 (the committed `test-policies/v0.1.0` builds), so before
//! and after are measured in one run.
//!
//! The same policy in three languages: the template policy (a header check
//! that refuses a request without it) in Rust (`plugins/template`), Python
//! (`plugins-py/template`) and JavaScript (`plugins-js/template`), fresh and
//! reused, for the per-language table. The Python and JavaScript builds are
//! taken from where their build scripts put them (or `POLICY_CALLS_PYTHON`,
//! `POLICY_CALLS_JS`); a language not built is left out, and said so.
//!
//! `cargo bench -p sidecar --bench policy_calls` runs criterion (mean and
//! median with confidence intervals), then times single calls to print the
//! median and p99 table that BENCHMARKS.md quotes. A filter argument
//! (`… -- auth`) limits both to the cases whose name contains it.
//! `cargo test --release --workspace --bench policy_calls` (in the test
//! command) only checks that every case takes the path its name says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use sidecar::Metrics;
use sidecar::capabilities::crypto::Verified;
use sidecar::capabilities::{
    Clock, KvLimits, LogRecord, LogSink, MemoryKv, NoNetwork, Outbound, Services, SystemClock,
};
use sidecar::convert;
use sidecar::message::{Body, BodyLimits, Completion, Exchange, Phase, Response};
use sidecar::wasm::{
    Contract, EngineSettings, FailureMode, Instances, Policy, PolicyLimits, PolicySpec, Runtime,
    Verdict,
};

const SECRET: &str = "bench-secret";

/// Formats every line, as the stdout sink does, then throws it away;
/// counts them, for the checks.
#[derive(Default)]
struct DiscardSink {
    lines: AtomicU64,
}

impl LogSink for DiscardSink {
    fn emit(&self, record: LogRecord) {
        std::hint::black_box(record.to_json_line());
        self.lines.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one iteration does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    /// The request hook only (a policy that answers, or a request that
    /// never reaches the response hooks).
    Request,
    /// Request hook, the upstream's response, then the response and
    /// completion hooks the policy asked for, on the same instance: a
    /// proxied request.
    RoundTrip,
}

/// The path a case must take, checked before timing.
#[derive(Clone, Copy)]
enum Path {
    /// The request hook continued, the request unchanged.
    Continue,
    /// The request hook continued and set `x-authenticated-user` to this.
    Authenticated(&'static str),
    /// Continued; the response went through the response hook, or the
    /// policy never asked for it (noop).
    Proxied,
    /// One access line logged per call (0.2: by the completion hook).
    Logged,
    /// Answered from the store by the request hook: `x-cache: hit`.
    CacheHit,
    /// Continued, and the response hook stored it: `x-cache: miss`.
    CacheMiss,
    /// Answered by the request hook with this status.
    Refused(u16),
}

struct Case {
    name: String,
    policy: Arc<Policy>,
    calls: Calls,
    /// Give every request its own path (a cache miss every time).
    unique_path: bool,
    path: Path,
    /// The bearer token sent.
    token: String,
    /// Whether the host may remember verified signatures (on in the
    /// sidecar; off measures a token's first verification).
    memo: bool,
}

/// What one call did, for the checks.
struct Outcome {
    answered: bool,
    /// The request's `x-authenticated-user` after the request hook.
    user: Option<String>,
    /// The final response's `x-cache`, if a response was set.
    x_cache: Option<String>,
    status: u16,
    response_hook: bool,
    completion_hook: bool,
}

struct Fixture {
    client: SocketAddr,
    route: Arc<str>,
    request_id: Arc<str>,
    token: String,
    upstream: (http::response::Parts, Bytes),
    counter: AtomicU64,
    /// Recorded as in the sidecar's chain: its cost is part of a call's.
    metrics: Metrics,
}

impl Fixture {
    fn new() -> Self {
        let claims = serde_json::json!({
            "sub": "alice",
            "exp": SystemClock.now_micros() / 1_000_000 + 3600,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .expect("signing the bench token");
        let body = Bytes::from_static(
            br#"{"username":"alice","email":"alice@example.com","role":"user","created":"2026-11-01"}"#,
        );
        let (parts, ()) = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("date", "Sun, 29 Nov 2026 03:00:00 GMT")
            .body(())
            .unwrap()
            .into_parts();
        Self {
            client: "127.0.0.1:50000".parse().unwrap(),
            route: "bench".into(),
            request_id: "bench-request".into(),
            token,
            upstream: (parts, body),
            counter: AtomicU64::new(0),
            metrics: Metrics::new(),
        }
    }

    /// A typical API call: a GET with a bearer token and browser-ish
    /// headers, as the exchange the sidecar builds for it.
    fn exchange(&self, unique: bool, token: &str) -> Exchange {
        let uri = if unique {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            format!("/api/profile?n={n}")
        } else {
            "/api/profile".to_owned()
        };
        let (parts, ()) = http::Request::builder()
            .method("GET")
            .uri(uri)
            .header("host", "127.0.0.1:4000")
            .header("user-agent", "bench/1.0")
            .header("accept", "application/json")
            .header("accept-encoding", "gzip, deflate")
            .header("authorization", format!("Bearer {token}"))
            .header("x-request-id", "bench-request")
            .body(())
            .unwrap()
            .into_parts();
        let head = convert::request_head(parts, &self.route, self.client, &self.request_id, false);
        Exchange::new(head, Body::empty(), BodyLimits::default())
    }

    /// The upstream's response as the exchange holds it.
    fn upstream_response(&self) -> Response {
        let (head, _upgrade) = convert::response_head(self.upstream.0.clone());
        Response {
            head,
            body: Body::full(self.upstream.1.clone()),
        }
    }

    /// One call as the sidecar's request path makes it.
    async fn call(&self, case: &Case) -> Outcome {
        // Off: each call verifies the signature as if for the first time.
        Verified::get().set_enabled(case.memo);
        let policy = &case.policy;
        let v01 = policy.contract() == Contract::V01;
        let mut ex = self.exchange(case.unique_path, &case.token);
        if v01 {
            // A 0.1 chain buffers the request body first (here: none).
            let limit = ex.limits.v01_request;
            ex.request_body.fill(limit, ex.limits.idle).await.unwrap();
        }
        let started = Instant::now();
        let mut instance = policy
            .instantiate(&ex.request.route, &ex.request.request_id)
            .await
            .expect("an instance");
        let verdict = instance
            .on_request(&mut ex)
            .await
            .expect("the request hook");
        self.metrics
            .policy_call(policy.name(), "request", started.elapsed());
        let user = ex
            .request
            .headers
            .get("x-authenticated-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answered = matches!(verdict, Verdict::Respond(_));
        let mut outcome = Outcome {
            answered,
            user,
            x_cache: None,
            status: 0,
            response_hook: false,
            completion_hook: false,
        };
        if case.calls == Calls::Request {
            if let Verdict::Respond(answer) = verdict {
                outcome.status = answer.head.status.as_u16();
            }
            return outcome;
        }
        ex.response = Some(match verdict {
            Verdict::Respond(answer) => answer,
            Verdict::Continue => self.upstream_response(),
        });
        if v01 {
            // … and the whole response.
            let limit = ex.limits.v01_response;
            let idle = ex.limits.idle;
            let resp = ex.response.as_mut().expect("set above");
            resp.body.fill(limit, idle).await.unwrap();
        }
        let hooks = policy.hooks();
        ex.phase = Phase::Response;
        if hooks.on_response {
            let started = Instant::now();
            instance
                .on_response(&mut ex)
                .await
                .expect("the response hook");
            self.metrics
                .policy_call(policy.name(), "response", started.elapsed());
            outcome.response_hook = true;
        }
        let resp = ex.response.as_ref().expect("set above");
        outcome.status = resp.head.status.as_u16();
        outcome.x_cache = resp
            .head
            .headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if hooks.on_complete {
            let info = Completion {
                status: outcome.status,
                request_body_bytes: 0,
                response_body_bytes: resp.body.known_len().unwrap_or(0),
                duration: Duration::from_micros(300),
                complete: true,
                error: None,
            };
            ex.phase = Phase::Complete;
            let started = Instant::now();
            instance
                .on_complete(&mut ex, &info)
                .await
                .expect("the completion hook");
            self.metrics
                .policy_call(policy.name(), "complete", started.elapsed());
            outcome.completion_hook = true;
        }
        drop(instance);
        outcome
    }
}

/// Checks that `case` takes the path its name says.
async fn check(fixture: &Fixture, sink: &DiscardSink, case: &Case) {
    let name = &case.name;
    let v02 = case.policy.contract() == Contract::V02;
    if matches!(case.path, Path::CacheHit) {
        // The first call is a miss that fills the store.
        fixture.call(case).await;
    }
    let lines_before = sink.lines.load(Ordering::Relaxed);
    let o = fixture.call(case).await;
    let lines = sink.lines.load(Ordering::Relaxed) - lines_before;
    match case.path {
        Path::Continue => {
            assert!(!o.answered, "{name}: answered");
            assert!(o.user.is_none(), "{name}: changed the request");
        }
        Path::Authenticated(user) => {
            assert!(!o.answered, "{name}: answered (token refused?)");
            assert_eq!(o.user.as_deref(), Some(user), "{name}: no subject");
        }
        Path::Proxied => {
            assert!(!o.answered, "{name}: answered");
            assert_eq!(o.status, 200, "{name}");
            // A 0.2 noop asks for no hook besides the request hook; a 0.1
            // policy always gets the response hook.
            assert_eq!(o.response_hook, !v02, "{name}: response hook");
            assert!(!o.completion_hook, "{name}: completion hook");
        }
        Path::Logged => {
            assert!(!o.answered, "{name}: answered");
            assert_eq!(o.status, 200, "{name}");
            assert_eq!(o.completion_hook, v02, "{name}: completion hook");
            assert_eq!(lines, 1, "{name}: one access line per call");
        }
        Path::CacheHit => {
            assert!(o.answered, "{name}: not answered from the store");
            assert_eq!(o.status, 200, "{name}");
            assert_eq!(o.x_cache.as_deref(), Some("hit"), "{name}");
        }
        Path::Refused(status) => {
            assert!(o.answered, "{name}: not answered");
            assert_eq!(o.status, status, "{name}");
        }
        Path::CacheMiss => {
            assert!(!o.answered, "{name}: answered");
            assert!(o.response_hook, "{name}: no response hook");
            assert_eq!(o.status, 200, "{name}");
            assert_eq!(o.x_cache.as_deref(), Some("miss"), "{name}");
        }
    }
}

async fn policy(
    runtime: &Arc<Runtime>,
    wasm: &str,
    name: &str,
    config: &serde_json::Value,
    instances: Instances,
) -> Arc<Policy> {
    let bytes = std::fs::read(wasm).expect("reading a bench policy");
    let component = runtime.compile(&bytes).expect("compiling a bench policy");
    let spec = PolicySpec {
        name: name.into(),
        config_json: config.to_string(),
        failure: FailureMode::Closed,
        limits: PolicyLimits {
            // An interpreter's heap (CPython, SpiderMonkey) needs more than
            // the default; the Rust policies use a fraction of either.
            memory_bytes: 64 * 1024 * 1024,
            ..PolicyLimits::default()
        },
        instances,
        outbound: Default::default(),
    };
    runtime
        .load(spec, &component, &bytes)
        .await
        .expect("loading a bench policy")
}

/// The component files of one contract.
struct Builds {
    /// `""` for 0.2, `" [0.1]"` for 0.1 (appended to case names).
    tag: &'static str,
    /// Store namespace suffix: each contract's cache has its own entries.
    ns: &'static str,
    noop: &'static str,
    auth: &'static str,
    logging: &'static str,
    cache: &'static str,
}

const BUILDS: [Builds; 2] = [
    Builds {
        tag: "",
        ns: "",
        noop: test_policies::NOOP,
        auth: test_policies::AUTH,
        logging: test_policies::LOGGING,
        cache: test_policies::CACHE,
    },
    Builds {
        tag: " [0.1]",
        ns: "-v01",
        noop: test_policies::V01_NOOP,
        auth: test_policies::V01_AUTH,
        logging: test_policies::V01_LOGGING,
        cache: test_policies::V01_CACHE,
    },
];

/// One case, before its policy is loaded.
struct Spec {
    name: &'static str,
    wasm: &'static str,
    policy: &'static str,
    config: serde_json::Value,
    instances: Instances,
    calls: Calls,
    unique_path: bool,
    path: Path,
    /// The bearer token: the HS256 one, or a fixture's (`tokens.json`).
    token: Token,
    memo: bool,
}

#[derive(Clone, Copy)]
enum Token {
    Hs256,
    Fixture(&'static str),
}

/// The auth policy's asymmetric fixtures, made by PyJWT (see
/// `plugins/auth/tests/fixtures/make_tokens.py`): its public keys, and
/// tokens valid until 2100.
const JWKS: &str = include_str!("../../plugins/auth/tests/fixtures/jwks.json");
const TOKENS: &str = include_str!("../../plugins/auth/tests/fixtures/tokens.json");

fn fixture_token(name: &str) -> String {
    let tokens: serde_json::Value = serde_json::from_str(TOKENS).expect("tokens.json");
    tokens["tokens"][name]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("tokens.json has no {name}"))
        .to_owned()
}

/// The cases on one contract's builds.
fn specs(b: &Builds) -> Vec<Spec> {
    use serde_json::json;
    let auth = json!({ "secret": SECRET, "subject_header": "x-authenticated-user" });
    let cache = json!({ "ttl_secs": 3600, "identity_header": "authorization" });
    let spec = |name, wasm, policy, config: &serde_json::Value| Spec {
        name,
        wasm,
        policy,
        config: config.clone(),
        instances: Instances::Fresh,
        calls: Calls::Request,
        unique_path: false,
        path: Path::Continue,
        token: Token::Hs256,
        memo: true,
    };
    let none = json!({});
    let mut specs = vec![
        spec("noop/request", b.noop, "noop", &none),
        Spec {
            calls: Calls::RoundTrip,
            path: Path::Proxied,
            ..spec("noop/round-trip", b.noop, "noop", &none)
        },
        Spec {
            path: Path::Authenticated("alice"),
            ..spec("auth/request (valid HS256 token)", b.auth, "auth", &auth)
        },
        Spec {
            instances: Instances::Reuse,
            ..spec("noop/request, reused instance", b.noop, "noop", &none)
        },
        Spec {
            instances: Instances::Reuse,
            path: Path::Authenticated("alice"),
            ..spec("auth/request, reused instance", b.auth, "auth", &auth)
        },
        Spec {
            calls: Calls::RoundTrip,
            path: Path::Logged,
            ..spec(
                "logging/round-trip (one access line)",
                b.logging,
                "logging",
                &none,
            )
        },
        Spec {
            calls: Calls::RoundTrip,
            path: Path::CacheHit,
            ..spec("cache/round-trip hit", b.cache, "cache", &cache)
        },
        Spec {
            calls: Calls::RoundTrip,
            unique_path: true,
            path: Path::CacheMiss,
            ..spec(
                "cache/round-trip miss (lookup, upstream, store)",
                b.cache,
                "cache",
                &cache,
            )
        },
    ];
    if b.tag.is_empty() {
        // Asymmetric keys arrived with 0.2's auth: the key set is the
        // policy's config here, parsed once by `configure` (a fetched one is
        // kept the same way).
        let tokens: serde_json::Value = serde_json::from_str(TOKENS).expect("tokens.json");
        let jwks = json!({
            "jwks": serde_json::from_str::<serde_json::Value>(JWKS).expect("jwks.json"),
            "issuer": tokens["issuer"],
            "audience": tokens["audience"],
        });
        for memo in [true, false] {
            for (alg, token, user) in [
                ("RS256", "valid_RS256", "user-rs256"),
                ("ES256", "valid_ES256", "user-es256"),
                ("EdDSA", "valid_EdDSA", "user-eddsa"),
            ] {
                // Leaked: case names are `&'static str`, and this runs once.
                let name: &'static str = if memo {
                    format!("auth/request (valid {alg} token, JWKS)").leak()
                } else {
                    format!("auth/request (valid {alg} token, JWKS, first verification)").leak()
                };
                specs.push(Spec {
                    path: Path::Authenticated(user),
                    token: Token::Fixture(token),
                    memo,
                    ..spec(name, b.auth, "auth", &jwks)
                });
            }
        }
    }
    specs
}

/// The template policy's build in each language: (language, file), or why
/// a language is left out.
fn template_builds() -> Vec<Result<(&'static str, String), String>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let built = |lang: &'static str, var: &str, default: &str, how: &str| {
        let path = std::env::var(var).unwrap_or_else(|_| format!("{root}/{default}"));
        if std::path::Path::new(&path).exists() {
            Ok((lang, path))
        } else {
            Err(format!(
                "{lang} template left out: no {path} ({how}, or set {var})"
            ))
        }
    };
    vec![
        Ok(("Rust", test_policies::TEMPLATE.to_owned())),
        built(
            "Python",
            "POLICY_CALLS_PYTHON",
            "plugins-py/target/template.wasm",
            "scripts/build-python-policies.sh builds it",
        ),
        built(
            "JS",
            "POLICY_CALLS_JS",
            "plugins-js/template/dist/template.wasm",
            "`npm run build` in plugins-js/template builds it",
        ),
    ]
}

/// The template policy in each language built, fresh and reused: a request
/// without the header it requires, refused with 401.
async fn language_cases(runtime: &Arc<Runtime>, fixture: &Fixture, filter: &str) -> Vec<Case> {
    let config = serde_json::json!({ "header": "x-api-key" });
    let mut out = Vec::new();
    for build in template_builds() {
        let (lang, wasm) = match build {
            Ok(build) => build,
            Err(why) => {
                eprintln!("{why}");
                continue;
            }
        };
        for (instances, how) in [
            (Instances::Fresh, ""),
            (Instances::Reuse, ", reused instance"),
        ] {
            let name = format!("template/request refused ({lang}{how})");
            if !name.contains(filter) {
                continue;
            }
            let policy_name = format!("template-{}", lang.to_ascii_lowercase());
            out.push(Case {
                name,
                policy: policy(runtime, &wasm, &policy_name, &config, instances).await,
                calls: Calls::Request,
                unique_path: false,
                path: Path::Refused(401),
                token: fixture.token.clone(),
                memo: true,
            });
        }
    }
    out
}

/// Every case whose name contains `filter`, 0.2 first, then the same on 0.1,
/// then the template in each language.
async fn cases(runtime: &Arc<Runtime>, fixture: &Fixture, filter: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for b in &BUILDS {
        for s in specs(b) {
            let name = format!("{}{}", s.name, b.tag);
            if !name.contains(filter) {
                continue;
            }
            let policy_name = format!("{}{}", s.policy, b.ns);
            let token = match s.token {
                Token::Hs256 => fixture.token.clone(),
                Token::Fixture(name) => fixture_token(name),
            };
            out.push(Case {
                name,
                policy: policy(runtime, s.wasm, &policy_name, &s.config, s.instances).await,
                calls: s.calls,
                unique_path: s.unique_path,
                path: s.path,
                token,
                memo: s.memo,
            });
        }
    }
    out.extend(language_cases(runtime, fixture, filter).await);
    out
}

fn main() {
    let filter = filter_arg();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sink = Arc::new(DiscardSink::default());
    let services = Services {
        kv: Arc::new(MemoryKv::new(clock.clone(), KvLimits::default())),
        outbound: Outbound::new(Arc::new(NoNetwork), clock.clone()),
        clock,
        log: sink.clone(),
    };
    let runtime = Runtime::new(EngineSettings::default(), services).unwrap();
    let fixture = Fixture::new();
    let cases = rt.block_on(cases(&runtime, &fixture, &filter));

    // A bench that measures the wrong path is worse than none.
    for case in &cases {
        rt.block_on(check(&fixture, &sink, case));
    }

    let mut criterion = Criterion::default().configure_from_args();
    for case in &cases {
        criterion.bench_function(&case.name, |b| {
            b.iter(|| rt.block_on(fixture.call(case)));
        });
    }
    criterion.final_summary();
    // `cargo test --benches` runs each case once (criterion's test mode):
    // the checks above are the test; timing is for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }

    println!("\nsingle calls, timed one by one (20 000 per case after 2 000 warm-up):\n");
    println!("| case | median | p99 |");
    println!("|---|---|---|");
    for case in &cases {
        let mut times = Vec::with_capacity(20_000);
        for i in 0..22_000 {
            let start = Instant::now();
            std::hint::black_box(rt.block_on(fixture.call(case)));
            if i >= 2_000 {
                times.push(start.elapsed());
            }
        }
        times.sort_unstable();
        println!(
            "| {} | {} | {} |",
            case.name,
            micros(times[times.len() / 2]),
            micros(times[times.len() * 99 / 100])
        );
    }
}

/// Criterion's positional filter, if any (its options that take a value
/// are skipped with their value).
fn filter_arg() -> String {
    const TAKES_VALUE: [&str; 8] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--noise-threshold",
        "--significance-level",
        "--confidence-level",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return arg;
        }
    }
    String::new()
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
