use super::*;
use crate::shipping::{FileSinkSettings, HttpSinkSettings, SinkKind};

fn parse_str(text: &str) -> anyhow::Result<Config> {
    parse(text, Path::new("/etc/sidecar/sidecar.toml"), &|name| {
        (name == "SECRET").then(|| "from-env".to_owned())
    })
}

fn err(text: &str) -> String {
    format!("{:#}", parse_str(text).unwrap_err())
}

const MINIMAL: &str = r#"
[[route]]
prefix = "/api"
upstream = "http://127.0.0.1:3002"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:4000".parse().unwrap());
    assert_eq!(c.routes[0].name, "/api");
    assert_eq!(
        c.routes[0].timeout,
        ProxySettings::default().upstream_timeout
    );
    assert_eq!(c.proxy, ProxySettings::default());
}

#[test]
fn policy_paths_resolve_against_the_config_folder_and_env_expands() {
    let c = parse_str(
        r#"
[[route]]
prefix = "/api/"
upstream = "http://127.0.0.1:3002"
rewrite = "/"
policies = ["auth"]

[policy.auth]
wasm = "policies/auth.wasm"
failure = "open"
deadline_ms = 5
config = { secret = "${SECRET}", other = "${MISSING:-fallback}", list = ["a${SECRET}"] }
"#,
    )
    .unwrap();
    let p = &c.policies["auth"];
    assert_eq!(p.wasm, Path::new("/etc/sidecar/policies/auth.wasm"));
    assert_eq!(p.failure, FailureMode::Open);
    assert_eq!(p.limits.deadline, Duration::from_millis(5));
    let json: serde_json::Value = serde_json::from_str(&p.config_json).unwrap();
    assert_eq!(json["secret"], "from-env");
    assert_eq!(json["other"], "fallback");
    assert_eq!(json["list"][0], "afrom-env");
    assert_eq!(c.routes[0].prefix, "/api", "trailing slash trimmed");
}

#[test]
fn errors_name_the_file_and_the_field() {
    let e = err("listen = \"nope\"\n[[route]]\nprefix = \"/\"\nupstream = \"http://h:1\"\n");
    assert!(e.starts_with("/etc/sidecar/sidecar.toml: listen:"), "{e}");

    let e = err("[[route]]\nprefix = \"/\"\nupstream = \"ftp://h\"\n");
    assert!(e.contains("route[0].upstream"), "{e}");
    assert!(e.contains("(use http, https or h2c)"), "{e}");
    let c = parse_str("[[route]]\nprefix = \"/\"\nupstream = \"h2c://grpc:50051\"\n").unwrap();
    assert_eq!(c.routes[0].upstreams[0].to_string(), "h2c://grpc:50051/");
    // A log collector is HTTP/1.1 or HTTPS only.
    let e = err(&format!(
        "{MINIMAL}[[log.sink]]\ntype = \"http\"\nurl = \"h2c://x/logs\"\n"
    ));
    assert!(e.contains("(use http or https)"), "{e}");

    let e = err("[[route]]\nprefix = \"/a\"\npolicies = [\"ghost\"]\n");
    assert!(
        e.contains("route[0].policies[0]: no policy named `ghost`"),
        "{e}"
    );

    let e = err("[[route]]\nprefix = \"nope\"\nupstream = \"http://h:1\"\n");
    assert!(e.contains("route[0].prefix"), "{e}");

    let e = err(
        "[[route]]\nprefix = \"/a\"\npolicies = [\"p\"]\n[policy.p]\nwasm = \"p.wasm\"\nconfig = { k = \"${UNSET}\" }\n",
    );
    assert!(
        e.contains("policy.p.config.k: environment variable `UNSET`"),
        "{e}"
    );

    let e = err("[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\ntimeout_ms = 0\n");
    assert!(
        e.contains("route[0].timeout_ms: must be greater than 0"),
        "{e}"
    );
}

#[test]
fn unknown_fields_and_bad_types_are_refused_with_their_name() {
    let e = err("[[route]]\nprefix = \"/a\"\nupstrem = \"http://h:1\"\n");
    assert!(e.contains("unknown field `upstrem`"), "{e}");
    assert!(e.starts_with("/etc/sidecar/sidecar.toml"), "{e}");

    let e = err(
        "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\n[policy.p]\nwasm = \"x\"\nfailure = \"sideways\"\n",
    );
    assert!(e.contains("sideways"), "{e}");
}

#[test]
fn duplicate_routes_and_empty_configs_are_refused() {
    let e = err(
        "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\n[[route]]\nprefix = \"/a/\"\nupstream = \"http://h:2\"\n",
    );
    assert!(e.contains("route[1]: same prefix"), "{e}");
    assert!(err("").contains("no routes defined"));
    assert!(err("[[route]]\nprefix = \"/a\"\n").contains("needs an `upstream`"));
}

#[test]
fn policy_memory_cap_cannot_exceed_engine_maximum() {
    let e = err(
        "[wasm]\nmax_memory_mb = 8\n[[route]]\nprefix = \"/a\"\npolicies = [\"p\"]\n[policy.p]\nwasm = \"p.wasm\"\nmemory_mb = 16\n",
    );
    assert!(e.contains("policy.p.memory_mb"), "{e}");
}

#[test]
fn admin_reload_and_compile_cache_have_safe_defaults_and_can_be_turned_off() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(
        c.admin.listen,
        Some("127.0.0.1:9901".parse().unwrap()),
        "admin on loopback"
    );
    assert!(c.reload.watch);
    assert_eq!(c.reload.interval, Duration::from_millis(200));
    assert_eq!(
        c.compile_cache, None,
        "no HOME, no XDG_CACHE_HOME: no cache"
    );
    let with_home = parse(MINIMAL, Path::new("/etc/sidecar/sidecar.toml"), &|name| {
        (name == "HOME").then(|| "/home/ann".to_owned())
    })
    .unwrap();
    assert_eq!(
        with_home.compile_cache.as_deref(),
        Some(Path::new("/home/ann/.cache/wasm-policy-sidecar"))
    );

    let off = parse_str(&format!(
        "[admin]\nlisten = \"off\"\n[reload]\nwatch = false\n[wasm]\ncompile_cache = \"off\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(off.admin.listen, None);
    assert!(!off.reload.watch);
    assert_eq!(off.compile_cache, None);
    assert_eq!(c.compile_cache_max_bytes, 512 * 1024 * 1024);
    let bounded = parse_str(&format!("[wasm]\ncompile_cache_max_mb = 64\n{MINIMAL}")).unwrap();
    assert_eq!(bounded.compile_cache_max_bytes, 64 * 1024 * 1024);
    let e = err(&format!("[wasm]\ncompile_cache_max_mb = 0\n{MINIMAL}"));
    assert!(
        e.contains("wasm.compile_cache_max_mb: must be greater than 0"),
        "{e}"
    );

    let e = err(&format!("[admin]\nlisten = \"everywhere\"\n{MINIMAL}"));
    assert!(e.contains("admin.listen"), "{e}");
    let e = err(&format!(
        "{MINIMAL}policies = [\"p\"]\n[policy.p]\nwasm = \"p.wasm\"\nsha256 = \"abc\"\n"
    ));
    assert!(e.contains("policy.p.sha256"), "{e}");
}

#[test]
fn kv_defaults_to_memory_and_takes_a_redis_backend() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.kv, KvSettings::default());
    assert_eq!(c.kv.backend, KvBackend::Memory);

    let c = parse_str(&format!(
        "[kv]\nbackend = \"redis\"\nmax_value_bytes = 2048\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.kv.backend, KvBackend::Redis(RedisSettings::default()));
    assert_eq!(c.kv.limits.max_value_bytes, 2048);

    let c = parse_str(&format!(
        "[kv]\nbackend = \"redis\"\nurl = \"redis://cache.internal:6380/2\"\ntimeout_ms = 5\nkey_prefix = \"edge:\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.kv.backend,
        KvBackend::Redis(RedisSettings {
            url: "redis://cache.internal:6380/2".to_owned(),
            timeout: Duration::from_millis(5),
            key_prefix: "edge:".to_owned(),
        })
    );
}

#[test]
fn kv_errors_name_the_file_and_the_field() {
    let e = err(&format!("[kv]\nbackend = \"memcached\"\n{MINIMAL}"));
    assert!(
        e.starts_with("/etc/sidecar/sidecar.toml: kv.backend: `memcached`"),
        "{e}"
    );

    let e = err(&format!(
        "[kv]\nbackend = \"redis\"\nurl = \"http://127.0.0.1:6379\"\n{MINIMAL}"
    ));
    assert!(
        e.starts_with("/etc/sidecar/sidecar.toml: kv.url: `http://127.0.0.1:6379`"),
        "{e}"
    );

    let e = err(&format!(
        "[kv]\nbackend = \"redis\"\ntimeout_ms = 0\n{MINIMAL}"
    ));
    assert!(e.contains("kv.timeout_ms: must be greater than 0"), "{e}");

    let e = err(&format!(
        "[kv]\nbackend = \"redis\"\nmax_entries = 10\n{MINIMAL}"
    ));
    assert!(
        e.contains("kv.max_entries: bounds the memory backend"),
        "{e}"
    );

    let e = err(&format!(
        "[kv]\nurl = \"redis://127.0.0.1:6379\"\n{MINIMAL}"
    ));
    assert!(
        e.contains("kv.url: only used with backend = \"redis\""),
        "{e}"
    );
    let e = err(&format!("[kv]\nkey_prefix = \"x:\"\n{MINIMAL}"));
    assert!(e.contains("kv.key_prefix: only used"), "{e}");

    let e = err(&format!(
        "[kv]\nbackend = \"redis\"\nurll = \"x\"\n{MINIMAL}"
    ));
    assert!(e.contains("unknown field `urll`"), "{e}");
}

#[test]
fn server_limits_have_defaults_and_errors_name_the_field() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.server, ServerSettings::default());
    let c = parse_str(&format!(
        "[server]\nmax_header_bytes = 16384\nheader_read_timeout_ms = 500\n\
         max_concurrent_requests = 8\nshutdown_grace_ms = 2000\nbody_read_timeout_ms = 700\n\
         body_min_bytes_per_sec = 0\nmax_connections = 100\nmax_connections_per_ip = 10\n\
         workers = 3\nhttp2 = false\nmax_concurrent_streams = 16\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.server,
        ServerSettings {
            max_header_bytes: 16384,
            header_read_timeout: Duration::from_millis(500),
            max_concurrent_requests: 8,
            shutdown_grace: Duration::from_secs(2),
            body_read_timeout: Duration::from_millis(700),
            body_min_bytes_per_sec: 0,
            max_connections: 100,
            max_connections_per_ip: 10,
            workers: Some(3),
            http2: false,
            max_concurrent_streams: 16,
        }
    );
    let e = err(&format!("[server]\nmax_concurrent_streams = 0\n{MINIMAL}"));
    assert!(
        e.contains("server.max_concurrent_streams: must be greater than 0"),
        "{e}"
    );
    let e = err(&format!("[server]\nhttp2 = \"yes\"\n{MINIMAL}"));
    assert!(e.contains("http2"), "{e}");
    let e = err(&format!("[server]\nworkers = 0\n{MINIMAL}"));
    assert!(e.contains("server.workers: must be greater than 0"), "{e}");
    let e = err(&format!("[server]\nworkers = 100000\n{MINIMAL}"));
    assert!(
        e.contains("server.workers: 100000 is more than 1024"),
        "{e}"
    );
    let e = err(&format!(
        "[server]\nmax_connections = 10\nmax_connections_per_ip = 20\n{MINIMAL}"
    ));
    assert!(
        e.contains("server.max_connections_per_ip: 20 is more than server.max_connections (10)"),
        "{e}"
    );
    let e = err(&format!("[server]\nbody_read_timeout_ms = 0\n{MINIMAL}"));
    assert!(
        e.contains("server.body_read_timeout_ms: must be greater than 0"),
        "{e}"
    );
    let e = err(&format!("[server]\nmax_header_bytes = 1024\n{MINIMAL}"));
    assert!(
        e.contains("server.max_header_bytes: 1024 is below the smallest enforceable limit, 8192"),
        "{e}"
    );
    let e = err(&format!("[server]\nmax_concurrent_requests = 0\n{MINIMAL}"));
    assert!(
        e.contains("server.max_concurrent_requests: must be greater than 0"),
        "{e}"
    );
    let e = err(&format!("[server]\nslow_loris = true\n{MINIMAL}"));
    assert!(e.contains("slow_loris"), "{e}");
}

#[test]
fn kv_quotas_default_are_overridable_and_must_be_positive() {
    let c = parse_str(
        "[wasm]\nkv_ops_per_request = 50\n[[route]]\nprefix = \"/a\"\npolicies = [\"p\", \"q\"]\n[policy.p]\nwasm = \"p.wasm\"\n[policy.q]\nwasm = \"q.wasm\"\nkv_ops_per_request = 7\nkv_bytes_per_request = 4096\n",
    )
    .unwrap();
    let (p, q) = (&c.policies["p"].limits, &c.policies["q"].limits);
    assert_eq!(
        (p.kv_ops, p.kv_bytes),
        (50, PolicyLimits::default().kv_bytes)
    );
    assert_eq!((q.kv_ops, q.kv_bytes), (7, 4096));

    let e = err(
        "[[route]]\nprefix = \"/a\"\npolicies = [\"p\"]\n[policy.p]\nwasm = \"p.wasm\"\nkv_ops_per_request = 0\n",
    );
    assert!(e.contains("policy.p.kv_ops_per_request"), "{e}");
    let e = err(
        "[wasm]\nkv_bytes_per_request = 0\n[[route]]\nprefix = \"/\"\nupstream = \"http://h:1\"\n",
    );
    assert!(e.contains("wasm.kv_bytes_per_request"), "{e}");
}

#[test]
fn log_sinks_default_to_stdout_and_take_files_and_collectors() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.log, LogSettings::default());
    assert_eq!(c.log.sinks[0].kind, SinkKind::Stdout);
    assert_eq!(c.log.sinks[0].level, crate::capabilities::Level::Info);

    let c = parse_str(&format!(
        r#"{MINIMAL}
[[log.sink]]
type = "file"
path = "logs/access.log"
max_bytes = 1000
keep = 2
level = "warn"

[[log.sink]]
type = "http"
url = "http://collector.internal:8080/v1/logs?tenant=a"
batch_lines = 100
flush_ms = 250
buffer_lines = 5000
timeout_ms = 2000
retries = 0
headers = {{ authorization = "Bearer ${{SECRET}}" }}

[[log.sink]]
type = "http"
name = "backup"
url = "http://backup:9000/"
"#
    ))
    .unwrap();
    let [file, http, backup] = &c.log.sinks[..] else {
        panic!("{:?}", c.log.sinks)
    };
    assert_eq!(file.name, "file");
    assert_eq!(file.level, crate::capabilities::Level::Warn);
    assert_eq!(
        file.kind,
        SinkKind::File(FileSinkSettings {
            path: PathBuf::from("/etc/sidecar/logs/access.log"),
            max_bytes: 1000,
            keep: 2,
            ..FileSinkSettings::default()
        })
    );
    let SinkKind::Http(h) = &http.kind else {
        panic!("{http:?}")
    };
    assert_eq!(http.name, "http");
    assert_eq!(h.url, "http://collector.internal:8080/v1/logs?tenant=a");
    assert_eq!((h.batch_lines, h.buffer_lines, h.retries), (100, 5000, 0));
    assert_eq!(h.flush, Duration::from_millis(250));
    assert_eq!(h.timeout, Duration::from_secs(2));
    assert_eq!(h.headers[0].0, "authorization");
    assert_eq!(h.headers[0].1, "Bearer from-env");
    let SinkKind::Http(b) = &backup.kind else {
        panic!("{backup:?}")
    };
    assert_eq!(backup.name, "backup");
    assert_eq!(
        *b,
        HttpSinkSettings::new("http://backup:9000/".parse().unwrap()),
        "defaults"
    );
}

#[test]
fn upstreams_list_balancing_and_health_are_read_with_defaults() {
    let c = parse_str(
        r#"
[proxy]
retry_budget_percent = 50
retry_budget_min_per_sec = 0

[[route]]
prefix = "/one"
upstream = "http://127.0.0.1:3002"

[[route]]
prefix = "/many"
upstreams = ["http://127.0.0.1:3002", "http://127.0.0.1:3003"]
balance = "least-requests"
retries = 1
[route.health]
eject_after_failures = 5
eject_ms = 2000
path = "/health"
interval_ms = 500
"#,
    )
    .unwrap();
    assert_eq!(c.routes[0].upstreams.len(), 1);
    assert_eq!(c.routes[0].balance, BalanceSettings::default());
    let many = &c.routes[1];
    assert_eq!(many.upstreams.len(), 2);
    assert_eq!(many.upstreams[1].port_u16(), Some(3003));
    let b = &many.balance;
    assert_eq!(b.strategy, Strategy::LeastRequests);
    assert_eq!(b.retries, 1);
    assert_eq!(b.eject_after_failures, 5);
    assert_eq!(b.eject, Duration::from_secs(2));
    assert_eq!(b.max_eject, Duration::from_secs(300));
    let check = b.health_check.as_ref().unwrap();
    assert_eq!(check.path, "/health");
    assert_eq!(check.interval, Duration::from_millis(500));
    assert_eq!(check.timeout, Duration::from_secs(1));
    assert_eq!(
        c.proxy.retry_budget,
        RetryBudgetSettings {
            percent: 50,
            min_per_sec: 0
        }
    );
}

#[test]
fn tls_paths_resolve_against_the_config_folder() {
    let c = parse_str(&format!(
        "[server.tls]\ncert = \"tls/cert.pem\"\nkey = \"/secrets/key.pem\"\nclient_ca = \"ca.pem\"\n\
         [[route]]\nprefix = \"/b\"\nupstream = \"https://billing.internal:8443\"\n\
         [route.tls]\nca = \"internal-ca.pem\"\nclient_cert = \"me.pem\"\nclient_key = \"me.key\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.tls,
        Some(ServerTls {
            cert: "/etc/sidecar/tls/cert.pem".into(),
            key: "/secrets/key.pem".into(),
            client_ca: Some("/etc/sidecar/ca.pem".into()),
        })
    );
    assert_eq!(
        c.routes[0].tls,
        Some(UpstreamTls {
            ca: Some("/etc/sidecar/internal-ca.pem".into()),
            client_cert: Some(ClientCert {
                cert: "/etc/sidecar/me.pem".into(),
                key: "/etc/sidecar/me.key".into(),
            }),
        })
    );
    assert_eq!(c.routes[0].upstreams[0].scheme_str(), Some("https"));
    assert_eq!(c.routes[1].tls, None, "system roots, no client certificate");
    assert_eq!(
        parse_str(MINIMAL).unwrap().tls,
        None,
        "plain HTTP by default"
    );

    let c = parse_str("[[route]]\nprefix = \"/\"\nupstream = \"https://example.com\"\n").unwrap();
    assert_eq!(
        c.routes[0].tls, None,
        "https:// alone trusts the system roots"
    );
}

#[test]
fn log_sink_errors_name_the_file_and_the_field() {
    let sink = |body: &str| err(&format!("{MINIMAL}[[log.sink]]\n{body}\n"));
    let e = sink("type = \"syslog\"");
    assert!(
        e.starts_with("/etc/sidecar/sidecar.toml: log.sink[0].type: `syslog`"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[[log.sink]]\ntype = \"stdout\"\n[[log.sink]]\ntype = \"http\"\nurl = \"ftp://x\"\n"
    ));
    assert!(
        e.starts_with("/etc/sidecar/sidecar.toml: log.sink[1].url: `ftp://x`"),
        "{e}"
    );
    assert!(sink("type = \"http\"").contains("log.sink[0].url: required"));
    assert!(sink("type = \"file\"").contains("log.sink[0].path: required"));
    let e = sink("type = \"file\"\npath = \"a.log\"\nurl = \"http://h:1/\"");
    assert!(
        e.contains("log.sink[0].url: not used with type = \"file\""),
        "{e}"
    );
    let e = sink("type = \"stdout\"\nlevel = \"loud\"");
    assert!(e.contains("log.sink[0].level: `loud`"), "{e}");
    let e = sink("type = \"http\"\nurl = \"http://h:1/\"\nbatch_lines = 0");
    assert!(
        e.contains("log.sink[0].batch_lines: must be greater than 0"),
        "{e}"
    );
    let e = sink("type = \"http\"\nurl = \"http://h:1/\"\nformat = \"otlp\"");
    assert!(e.contains("log.sink[0].format: `otlp`"), "{e}");
    let e = sink("type = \"http\"\nurl = \"http://h:1/\"\nheaders = { \"bad header\" = \"x\" }");
    assert!(e.contains("log.sink[0].headers.bad header"), "{e}");
    let e =
        sink("type = \"http\"\nurl = \"http://h:1/\"\nheaders = { authorization = \"${UNSET}\" }");
    assert!(
        e.contains("log.sink[0].headers.authorization: environment variable `UNSET`"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[[log.sink]]\ntype = \"file\"\npath = \"a.log\"\n[[log.sink]]\ntype = \"file\"\npath = \"b.log\"\n"
    ));
    assert!(
        e.contains("log.sink[1].name: `file` is already the name of log.sink[0]"),
        "{e}"
    );
    let e = sink("type = \"stdout\"\nlevle = \"info\"");
    assert!(e.contains("unknown field `levle`"), "{e}");
}

#[test]
fn tls_errors_name_the_file_and_the_field() {
    let e = err(&format!("[server.tls]\ncert = \"cert.pem\"\n{MINIMAL}"));
    assert!(
        e.starts_with("/etc/sidecar/sidecar.toml: server.tls.key: required"),
        "{e}"
    );
    let e = err(&format!("[server.tls]\nkey = \"key.pem\"\n{MINIMAL}"));
    assert!(e.contains("server.tls.cert: required"), "{e}");
    let e = err(&format!(
        "[server.tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n{MINIMAL}"
    ));
    assert!(e.contains("unknown field `ca`"), "{e}");

    let https = "[[route]]\nprefix = \"/b\"\nupstream = \"https://h:1\"\n[route.tls]\n";
    let e = err(&format!("{https}client_cert = \"me.pem\"\n"));
    assert!(
        e.starts_with(
            "/etc/sidecar/sidecar.toml: route[0].tls.client_key: required with client_cert"
        ),
        "{e}"
    );
    let e = err(&format!("{https}client_key = \"me.key\"\n"));
    assert!(
        e.contains("route[0].tls.client_cert: required with client_key"),
        "{e}"
    );
    let e = err(&format!("{https}cert = \"me.pem\"\n"));
    assert!(e.contains("unknown field `cert`"), "{e}");

    let e = err(
        "[[route]]\nprefix = \"/b\"\nupstream = \"http://h:1\"\n[route.tls]\nca = \"ca.pem\"\n",
    );
    assert!(
        e.contains("route[0].tls: the upstream is not https://"),
        "{e}"
    );
}

#[test]
fn balancing_errors_name_the_file_and_the_field() {
    let route = |body: &str| format!("[[route]]\nprefix = \"/a\"\n{body}\n");
    let cases = [
        (
            route("upstreams = [\"http://h:1\", \"ftp://h:2\"]"),
            "route[0].upstreams[1]: `ftp://h:2`",
        ),
        (
            route("upstreams = [\"http://h:1\", \"not a url\"]"),
            "route[0].upstreams[1]:",
        ),
        (
            route("upstream = \"http://h:1\"\nupstreams = [\"http://h:2\"]"),
            "route[0].upstreams: give either `upstream`",
        ),
        (route("upstreams = []"), "route[0].upstreams: the list is empty"),
        (
            route("upstreams = [\"http://h:1\", \"http://h:1\"]"),
            "route[0].upstreams[1]: `http://h:1` is listed twice",
        ),
        (
            route("upstream = \"http://h:1\"\nbalance = \"random\""),
            "route[0].balance: `random` is not",
        ),
        (
            route("upstream = \"http://h:1\"\nretries = 11"),
            "route[0].retries: 11 is above",
        ),
        (
            "[[route]]\nprefix = \"/a\"\npolicies = [\"p\"]\nretries = 1\n[policy.p]\nwasm = \"p.wasm\"\n"
                .to_owned(),
            "route[0].retries: only used with `upstream` or `upstreams`",
        ),
        (
            route("upstream = \"http://h:1\"\n[route.health]\neject_after_failures = 0"),
            "route[0].health.eject_after_failures: must be greater than 0",
        ),
        (
            route("upstream = \"http://h:1\"\n[route.health]\neject_ms = 5000\nmax_eject_ms = 100"),
            "route[0].health.max_eject_ms: 100 ms is below eject_ms (5000 ms)",
        ),
        (
            route("upstream = \"http://h:1\"\n[route.health]\npath = \"health\""),
            "route[0].health.path: `health` must start with `/`",
        ),
        (
            route("upstream = \"http://h:1\"\n[route.health]\ninterval_ms = 100"),
            "route[0].health.interval_ms: only used with `path`",
        ),
        (
            route("upstream = \"http://h:1\"\n[route.health]\nunknown = 1"),
            "unknown field `unknown`",
        ),
        (
            format!("[proxy]\nretry_budget_percent = 0\nretry_budget_min_per_sec = 0\n{}", route("upstream = \"http://h:1\"")),
            "proxy.retry_budget_percent: 0 with retry_budget_min_per_sec = 0 allows no retry",
        ),
        (
            format!("[proxy]\nretry_budget_percent = 101\n{}", route("upstream = \"http://h:1\"")),
            "proxy.retry_budget_percent: 101 is above 100",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text);
        assert!(e.starts_with("/etc/sidecar/sidecar.toml: "), "{e}");
        assert!(e.contains(expected), "expected `{expected}` in: {e}");
    }
}

#[test]
fn the_replicas_demo_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo-replicas.toml");
    let c = load(&path).unwrap();
    let route = &c.routes[0];
    assert_eq!(route.upstreams.len(), 2);
    assert!(route.balance.health_check.is_some());
}

#[test]
fn a_policy_config_reads_files_next_to_the_config() {
    let dir = std::env::temp_dir().join(format!("sidecar-config-files-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/jwks.json"), r#"{"keys":[]}"#).unwrap();
    let text = "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\npolicies = [\"p\"]\n[policy.p]\nwasm = \"p.wasm\"\nconfig = { jwks = \"${file:keys/jwks.json}\", note = \"x ${file:keys/jwks.json} y\" }\n";
    let config = parse(text, &dir.join("sidecar.toml"), &|_| None).unwrap();
    let p = &config.policies["p"];
    let json: serde_json::Value = serde_json::from_str(&p.config_json).unwrap();
    assert_eq!(json["jwks"], r#"{"keys":[]}"#);
    assert_eq!(json["note"], r#"x {"keys":[]} y"#);
    // The file is watched with the policy: editing it reloads.
    assert_eq!(
        p.files,
        [dir.join("keys/jwks.json"), dir.join("keys/jwks.json")]
    );
    assert!(
        config
            .watched_files()
            .iter()
            .any(|f| f.ends_with("keys/jwks.json"))
    );

    let missing = text.replace("keys/jwks.json", "keys/none.json");
    let e = format!(
        "{:#}",
        parse(&missing, &dir.join("sidecar.toml"), &|_| None).unwrap_err()
    );
    assert!(
        e.contains("policy.p.config.jwks: `${file:keys/none.json}`: cannot read"),
        "{e}"
    );
    // Elsewhere than a policy's config it is not read.
    let e = err(
        "listen = \"127.0.0.1:1\"\n[[log.sink]]\ntype = \"http\"\nurl = \"http://h:1/\"\nheaders = { a = \"${file:x}\" }\n",
    );
    assert!(e.contains("is read in a policy's `config` only"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
