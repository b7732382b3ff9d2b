//! `pollux`: one binary, one subcommand per role. This file only parses arguments, loads
//! configuration and runs the role; everything else lives in the role crates.
#![forbid(unsafe_code)]

mod failover;
mod status;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pollux_aggregator::config::{AggregatorConfig, Overrides};
use pollux_aggregator::Aggregator;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The exit status of a usage or configuration error (sysexits.h EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "pollux", version, about = "A fault-tolerant network performance data pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Data Aggregator: DTO ingest, loading, rollups, query API and health.
    Aggregator(AggregatorArgs),
    /// Route every client request to whichever aggregator is the ready active.
    Proxy(ProxyArgs),
    /// Print the System Status: every aggregator, the lease, the shared state.
    Status(status::StatusArgs),
    /// Planned switchover: the active hands over to the standby without waiting for failwait.
    Failover(failover::FailoverArgs),
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on (default 0.0.0.0:8581).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// An aggregator's base URL; repeat for each (replaces the file's list).
    #[arg(long = "aggregator")]
    aggregators: Vec<String>,
}

#[derive(clap::Args)]
struct AggregatorArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Address to serve HTTP on (default 0.0.0.0:8581).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// URL others reach this node at (default http://<listen>).
    #[arg(long)]
    advertise: Option<String>,
    /// The shared directory (default /var/lib/pollux/shared).
    #[arg(long)]
    shared_dir: Option<PathBuf>,
    /// How long the active may miss heartbeats before a takeover (default 5m).
    #[arg(long, value_parser = parse_duration)]
    failwait: Option<Duration>,
    /// How long a new leader may take to become ready (default 45m).
    #[arg(long, value_parser = parse_duration)]
    startwait: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    pollux_model::duration::parse(text)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Command::Aggregator(args) => run_aggregator(args),
        Command::Proxy(args) => run_proxy(args),
        Command::Status(args) => status::run(args),
        Command::Failover(args) => failover::run(args),
    }
}

fn run_aggregator(args: AggregatorArgs) -> ExitCode {
    let aggregator = match start_aggregator(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    run_until_signal("aggregator", Flavor::MultiThread, |shutdown| async move {
        aggregator.run(shutdown).await.context("aggregator")
    })
}

/// Configuration, listener and shared-dir checks: everything that can refuse a start.
fn start_aggregator(args: AggregatorArgs) -> Result<Aggregator, ExitCode> {
    let overrides = Overrides {
        node_id: args.node_id,
        listen: args.listen,
        advertise: args.advertise,
        shared_dir: args.shared_dir,
        failwait: args.failwait,
        startwait: args.startwait,
    };
    let config = AggregatorConfig::load(args.config.as_deref(), overrides).map_err(|e| refuse("aggregator", e))?;
    let listener = bind("aggregator", config.listen)?;
    Aggregator::build(config, listener).map_err(|e| refuse("aggregator", e))
}

fn run_proxy(args: ProxyArgs) -> ExitCode {
    let start = || -> Result<pollux_proxy::Proxy, ExitCode> {
        let config = pollux_proxy::ProxyConfig::load(args.config.as_deref(), args.listen, args.aggregators)
            .map_err(|e| refuse("proxy", e))?;
        let listener = bind("proxy", config.listen)?;
        Ok(pollux_proxy::Proxy::build(config, listener))
    };
    let proxy = match start() {
        Ok(p) => p,
        Err(code) => return code,
    };
    run_until_signal(
        "proxy",
        Flavor::CurrentThread,
        |shutdown| async move { proxy.run(shutdown).await.context("proxy") },
    )
}

/// Prints why a role will not start, in one line, and gives the usage exit status.
fn refuse(role: &str, problem: impl std::fmt::Display) -> ExitCode {
    eprintln!("pollux {role}: {problem}");
    ExitCode::from(EXIT_USAGE)
}

fn bind(role: &str, addr: SocketAddr) -> Result<std::net::TcpListener, ExitCode> {
    std::net::TcpListener::bind(addr).map_err(|e| refuse(role, format!("listen {addr}: {e}")))
}

/// Which tokio runtime a role runs on.
enum Flavor {
    MultiThread,
    /// One thread: for the proxy, whose work per request is a few microseconds of byte
    /// shovelling, where hand-offs between worker threads cost more than they give.
    CurrentThread,
}

/// Runs a role until SIGINT or SIGTERM.
fn run_until_signal<F, Fut>(role: &str, flavor: Flavor, body: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match flavor {
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .expect("tokio runtime");
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        body(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollux {role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fires `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}
