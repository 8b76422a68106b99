//! `sidecar`: the binary. Parses arguments and dispatches: `run` serves,
//! `config check` validates, `policy …` works on components (the
//! commands live in `policy_harness::cli`). Everything else lives in the
//! library.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use policy_harness::cli as policy_cli;
use sidecar::capabilities::{Level, Services, StdoutSink};
use sidecar::{Admin, Metrics, Shipping, Sidecar, config};

/// Gives freed memory back to the system: glibc's allocator kept a large
/// policy's compile scratch in fragmented arenas after every reload (+66 MB
/// after one reload of the 18.8 MB Python policy; jemalloc: +6 MB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: a background thread returns freed pages to the
/// system a second after they were freed.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// An HTTP sidecar that applies WebAssembly policies to the requests it proxies.
///
/// Policy log lines go to stdout as JSON, or to the sinks of `[[log.sink]]`
/// (files, a collector); the sidecar's own diagnostics go to stderr,
/// human-readable or JSON (--log-format), filtered by RUST_LOG (default
/// `info`). Every line about a request carries its request id.
#[derive(Parser)]
#[command(name = "sidecar", version)]
struct Cli {
    /// Format of the sidecar's own log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SIDECAR_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One readable line per event, with the request's span (`request{id=…}`).
    Human,
    /// One JSON object per line, with the request's span fields (`"span":{"id":…}`).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the routes and policies of a config file.
    Run {
        /// The TOML config (see README, "Configuring the sidecar").
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Policy components: check, call, test, or start a new one.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config and load its policies (compile, link, configure), then exit.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Is FILE a policy for this contract, and which capabilities does it import?
    Check { file: PathBuf },
    /// Run one request through a policy and print its decision and log lines.
    Call {
        file: PathBuf,
        /// The policy's config, a JSON object.
        #[arg(long, default_value = "{}")]
        config: String,
        /// The request: a JSON file, `-` for stdin, or inline JSON
        /// ({"method":"GET","path":"/x","headers":{"a":"b"},"body":""}).
        #[arg(long)]
        request: String,
        /// An upstream response (same forms): also run the response hook.
        #[arg(long)]
        upstream: Option<String>,
        /// Preload the policy's store: KEY=VALUE (repeatable; split at the
        /// first `=`), as a case file's `kv`.
        #[arg(long, value_name = "KEY=VALUE")]
        kv: Vec<String>,
        /// The clock during the call: RFC 3339 (2024-01-01T00:00:00Z) or Unix
        /// seconds (default: now), as a case file's `start_unix`.
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
        /// Let the policy call this origin (scheme://host[:port]; repeatable),
        /// as `allow_outbound` in the sidecar's config. Calls reach only
        /// --outbound-stub answers, never the network.
        #[arg(long, value_name = "ORIGIN")]
        allow_outbound: Vec<String>,
        /// What a call answers (repeatable), as a case file's `outbound`
        /// entry: inline JSON, a file, or `-` for stdin
        /// ({"url":"https://idp.example/jwks","status":200,"headers":{},"body":"..."};
        /// "method" defaults to GET; "fail":"reason" or "timeout":true instead).
        #[arg(long, value_name = "JSON")]
        outbound_stub: Vec<String>,
    },
    /// Run table-driven cases (TOML or JSON) against a policy.
    Test { file: PathBuf, cases: PathBuf },
    /// Create a new policy project from a template, with a passing test.
    New {
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The policy's language: a Rust crate (`cargo test`), an npm package
        /// built with componentize-js (`npm test`), or Python built with
        /// componentize-py (`python3 -m unittest`).
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Lang {
    Rust,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "py")]
    Python,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Human => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => serve(config)?,
        Command::Config(ConfigCommand::Check { file }) => check(file)?,
        Command::Policy(PolicyCommand::Check { file }) => println!("{}", policy_cli::check(&file)?),
        Command::Policy(PolicyCommand::Call {
            file,
            config,
            request,
            upstream,
            kv,
            now,
            allow_outbound,
            outbound_stub,
        }) => {
            let request = read_input("--request", &request)?;
            let upstream = upstream.map(|u| read_input("--upstream", &u)).transpose()?;
            let setup = policy_cli::CallSetup {
                kv,
                now,
                allow_outbound,
                outbound_stubs: outbound_stub
                    .iter()
                    .map(|s| read_input("--outbound-stub", s))
                    .collect::<anyhow::Result<_>>()?,
            };
            println!(
                "{}",
                policy_cli::call(&file, &config, &request, upstream.as_deref(), &setup)?
            );
        }
        Command::Policy(PolicyCommand::Test { file, cases }) => {
            let report = policy_cli::run_cases(&file, &cases)?;
            for line in &report.lines {
                println!("{line}");
            }
            println!("{} passed, {} failed", report.passed, report.failed);
            if report.failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Policy(PolicyCommand::New { name, dir, lang }) => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let lang = match lang {
                Lang::Rust => policy_cli::Lang::Rust,
                Lang::Js => policy_cli::Lang::Js,
                Lang::Python => policy_cli::Lang::Python,
            };
            // A JS or Python project runs its cases with this very binary.
            let exe = std::env::current_exe().ok();
            println!(
                "{}",
                policy_cli::new_policy(&name, &dir, lang, exe.as_deref())?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Inline JSON, `-` for stdin, or a file.
fn read_input(flag: &str, value: &str) -> anyhow::Result<String> {
    if value.trim_start().starts_with('{') {
        return Ok(value.to_owned());
    }
    if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("{flag}: reading stdin"))?;
        return Ok(text);
    }
    std::fs::read_to_string(Path::new(value))
        .with_context(|| format!("{flag}: cannot read {value}"))
}

fn check(file: PathBuf) -> anyhow::Result<()> {
    let config = config::load(&file)?;
    let sidecar =
        async_runtime()?.block_on(Sidecar::new(&config, Services::with_kv(&config.kv)?))?;
    let gateway = sidecar.gateway();
    println!(
        "{}: ok ({} routes, {} policies)",
        file.display(),
        gateway.routes.len(),
        gateway.policies.len()
    );
    Ok(())
}

fn serve(file: PathBuf) -> anyhow::Result<()> {
    let config = config::load(&file)?;
    async_runtime()?.block_on(async {
        // The admin listener comes first, so probes get answers (`/healthz`
        // 200, `/readyz` 503) while the policies load.
        let admin = Admin::loading();
        if let Some(addr) = config.admin.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("{}: admin.listen: cannot bind {addr}", file.display()))?;
            eprintln!(
                "sidecar admin on http://{} (dashboard at /; /healthz, /readyz, /metrics, /policies, /upstreams, /stats, POST /reload)",
                l.local_addr()?
            );
            let router = sidecar::admin_router(admin.clone());
            tokio::spawn(async move { axum::serve(l, router).await });
        }
        // The sinks record into the sidecar's metrics, so both exist first.
        let metrics = Arc::new(Metrics::new());
        let shipping = Shipping::start(
            &config.log,
            &metrics,
            Arc::new(StdoutSink::new(Level::Trace)),
        )
        .with_context(|| file.display().to_string())?;
        let mut services = Services::with_kv(&config.kv)?;
        services.log = shipping.sink();
        let sidecar = Arc::new(Sidecar::with_metrics(&config, services, metrics).await?);
        let open_files = sidecar::raise_fd_limit();
        if open_files.is_some_and(|n| n < config.server.max_connections as u64 * 2) {
            tracing::warn!(
                open_files,
                max_connections = config.server.max_connections,
                "the open-files limit is below twice [server] max_connections (each proxied request may need an upstream connection too)"
            );
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("{}: listen: cannot bind {}", file.display(), config.listen))?;
        let addr = listener.local_addr()?;
        for route in &sidecar.gateway().routes {
            let policies: Vec<&str> = route.chain.policies().iter().map(|p| &**p.name()).collect();
            tracing::info!(
                route = %route.name,
                prefix = %route.prefix,
                upstream = %route.upstreams.as_ref().map_or("(none)".to_owned(), |u| u.urls().collect::<Vec<_>>().join(", ")),
                policies = ?policies,
                "route ready"
            );
        }
        let scheme = if sidecar.is_tls() { "https" } else { "http" };
        eprintln!("sidecar listening on {scheme}://{addr}");
        admin.set_ready(sidecar.clone());
        if config.reload.watch {
            tokio::spawn(sidecar::watch_files(sidecar.clone(), config.reload.interval));
        }
        tokio::spawn(reload_on_sighup(sidecar.clone()));
        let shutdown = async move {
            shutdown_signal().await;
            admin.drain();
        };
        let served = sidecar.serve(listener, shutdown).await;
        // After the drain, so the last requests' lines are in the queues.
        shipping.shutdown(LOG_FLUSH_WITHIN).await;
        served
    })
}

/// On shutdown, how long log sinks get to write or send what they hold.
const LOG_FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Reloads on each SIGHUP, the Unix convention for "re-read your config".
async fn reload_on_sighup(sidecar: Arc<Sidecar>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = sidecar.reload().await;
        }
    }
    #[cfg(not(unix))]
    let _ = sidecar;
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
