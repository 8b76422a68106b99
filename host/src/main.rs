//! `sidecar`: the binary. Parses arguments, loads the config, serves.
//! Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use sidecar::capabilities::Services;
use sidecar::config;
use sidecar::server::Sidecar;

const USAGE: &str = "\
usage:
  sidecar run --config FILE       serve with the policies FILE names
  sidecar config check FILE       validate FILE and load its policies, then exit

Policy log lines go to stdout as JSON; the sidecar's own diagnostics to stderr
(RUST_LOG=debug for more).";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["run", "--config", file] => serve(PathBuf::from(file)),
        ["config", "check", file] => check(PathBuf::from(file)),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unrecognised arguments {args:?}\n{USAGE}"),
    }
}

fn check(file: PathBuf) -> anyhow::Result<()> {
    let config = config::load(&file)?;
    let sidecar =
        async_runtime()?.block_on(Sidecar::new(&config, Services::production(config.kv)))?;
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
        let sidecar = Sidecar::new(&config, Services::production(config.kv)).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("{}: listen: cannot bind {}", file.display(), config.listen))?;
        let addr = listener.local_addr()?;
        for route in &sidecar.gateway().routes {
            let policies: Vec<&str> = route.chain.policies().iter().map(|p| &**p.name()).collect();
            tracing::info!(
                route = %route.name,
                prefix = %route.prefix,
                upstream = %route.upstream.as_ref().map_or("(none)".to_owned(), ToString::to_string),
                policies = ?policies,
                "route ready"
            );
        }
        eprintln!("sidecar listening on http://{addr}");
        sidecar.serve(listener, shutdown_signal()).await
    })
}

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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
