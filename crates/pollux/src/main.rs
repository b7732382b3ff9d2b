//! `pollux`: one binary, one subcommand per role. This file only parses arguments, loads
//! configuration and runs the role; everything else lives in the role crates.
#![forbid(unsafe_code)]

mod certs;
mod client;
mod demo;
mod failover;
mod init;
mod maintenance;
mod repository;
mod status;
mod waiting;

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
/// sysexits EX_UNAVAILABLE: a service this one needs (the repository server) is down.
const EXIT_UNAVAILABLE: u8 = 69;

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
    /// Poll devices over SNMP and send one DTO per metric family per cycle, spooled durably.
    Collector(CollectorArgs),
    /// Simulated SNMP devices (v2c and v3), and the collector inventory that polls them.
    Simulate(SimulateArgs),
    /// Print the System Status: every aggregator, the lease, the shared state.
    Status(status::StatusArgs),
    /// Planned switchover: the active hands over to the standby without waiting for failwait.
    Failover(failover::FailoverArgs),
    /// The whole fault-tolerant environment on this machine: simulated devices, a collector,
    /// two aggregators and the proxy; with --chaos, failures at random and a running account.
    Demo(demo::DemoArgs),
    /// Put an aggregator into maintenance (it never takes the lease; an active hands over
    /// first) or take it out.
    Maintenance(maintenance::MaintenanceArgs),
    /// Configure this host for one role with the original installer's prompts: writes the
    /// configuration file and a systemd unit, and saves the answers for upgrades.
    Init(init::InitArgs),
    /// Make a private CA (first run) and a certificate for the given host names and addresses.
    Certs(certs::CertsArgs),
    /// Work on a Data Repository offline: `copy` an installation's SQLite repository into
    /// PostgreSQL.
    Repository(repository::RepositoryArgs),
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
struct CollectorArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This collector's name, the first part of its DTO ids (default: the host name).
    #[arg(long)]
    id: Option<String>,
    /// An aggregator's (or the proxy's) base URL; repeat for failover locations, first is primary.
    #[arg(long = "aggregator")]
    aggregators: Vec<String>,
    /// The device inventory (default /etc/pollux/inventory.toml).
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Where DTOs wait until acknowledged (default /var/lib/pollux/spool).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Poll cycle for devices without their own (default 5m).
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Address of the /metrics listener (default 127.0.0.1:8582).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    devices: u32,
    /// Interfaces per device.
    #[arg(long, default_value_t = 10)]
    interfaces: u32,
    /// Address and first port: device k answers on port+k.
    #[arg(long, default_value = pollux_simulator::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Write the collector inventory for the simulated devices here.
    #[arg(long)]
    inventory_out: Option<PathBuf>,
    /// How many devices (the first ones) speak SNMPv3 (authPriv, SHA and AES); the rest v2c.
    #[arg(long, default_value_t = 0)]
    v3_devices: u32,
    /// Percentage of v2c requests left unanswered.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Delay before each v2c answer.
    #[arg(long, value_parser = parse_duration)]
    latency: Option<Duration>,
    /// Percentage of v2c answers sent damaged (truncated, bad length, flipped bytes).
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
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
    /// Where the Data Repository is: sqlite (default, in the shared directory), sqlite:PATH,
    /// or a postgresql:// URL. Both aggregators must name the same one.
    #[arg(long)]
    repository: Option<String>,
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
    demo::die_with_parent();
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
        .with_env_filter(log_filter())
        .init();
    if let Err(e) = pollux_failpoint::check_configuration() {
        eprintln!("pollux: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Aggregator(args) => run_aggregator(args),
        Command::Proxy(args) => run_proxy(args),
        Command::Collector(args) => run_collector(args),
        Command::Simulate(args) => run_simulate(args),
        Command::Status(args) => status::run(args),
        Command::Failover(args) => failover::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Maintenance(args) => maintenance::run(args),
        Command::Init(args) => init::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Repository(args) => repository::run(args),
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
        repository: args.repository,
        failwait: args.failwait,
        startwait: args.startwait,
    };
    let config = AggregatorConfig::load(args.config.as_deref(), overrides).map_err(|e| refuse("aggregator", e))?;
    let listener = bind("aggregator", config.listen)?;
    Aggregator::build(config, listener).map_err(|e| match &e {
        // A repository server that is down is not a mistake in the configuration: EX_UNAVAILABLE,
        // so a supervisor tries again.
        pollux_aggregator::StartError::Repository { source, .. }
            if source.action() == pollux_repository::Action::Retry =>
        {
            eprintln!("pollux aggregator: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        _ => refuse("aggregator", e),
    })
}

fn run_proxy(args: ProxyArgs) -> ExitCode {
    let start = || -> Result<pollux_proxy::Proxy, ExitCode> {
        let config = pollux_proxy::ProxyConfig::load(args.config.as_deref(), args.listen, args.aggregators)
            .map_err(|e| refuse("proxy", e))?;
        let listener = bind("proxy", config.listen)?;
        pollux_proxy::Proxy::build(config, listener)
            .map_err(|(key, problem)| refuse("proxy", format!("{key}: {problem}")))
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

fn run_collector(args: CollectorArgs) -> ExitCode {
    use pollux_collector::config::{CollectorConfig, Overrides};
    let start = || -> Result<pollux_collector::Collector, ExitCode> {
        let overrides = Overrides {
            id: args.id,
            aggregators: args.aggregators,
            inventory: args.inventory,
            spool_dir: args.spool_dir,
            interval: args.interval,
            metrics_listen: args.metrics_listen,
        };
        let config = CollectorConfig::load(args.config.as_deref(), overrides).map_err(|e| refuse("collector", e))?;
        let security = config.security().map_err(|(key, problem)| refuse("collector", format!("{key}: {problem}")))?;
        let devices = pollux_collector::inventory::load(&config.inventory).map_err(|e| refuse("collector", e))?;
        let listener = bind("collector", config.metrics_listen)?;
        let spool_dir = config.spool_dir.clone();
        pollux_collector::Collector::build(config, security, devices, listener).map_err(|e| match e {
            // Another process holds the spool: a mistake in the setup, refused like one.
            e @ pollux_collector::spool::OpenError::InUse { .. } => refuse("collector", e),
            e => {
                eprintln!("pollux collector: spool {}: {e}", spool_dir.display());
                ExitCode::FAILURE
            }
        })
    };
    let collector = match start() {
        Ok(c) => c,
        Err(code) => return code,
    };
    run_until_signal("collector", Flavor::MultiThread, |shutdown| async move {
        collector.run(shutdown).await.context("collector")
    })
}

fn run_simulate(args: SimulateArgs) -> ExitCode {
    use pollux_simulator::{agent::Impairments, Simulator, SimulatorConfig};
    for (flag, value) in [("--loss", args.loss), ("--malformed", args.malformed)] {
        if !(0.0..=100.0).contains(&value) {
            return refuse("simulate", format!("{flag}: {value} is not a percentage from 0 to 100"));
        }
    }
    if args.v3_devices > args.devices {
        return refuse("simulate", "--v3-devices: more than --devices");
    }
    let config = SimulatorConfig {
        devices: args.devices,
        interfaces: args.interfaces,
        listen: args.listen,
        v3_devices: args.v3_devices,
        impairments: Impairments {
            loss: args.loss / 100.0,
            latency: args.latency.unwrap_or_default(),
            malformed: args.malformed / 100.0,
        },
        ..SimulatorConfig::default()
    };
    let inventory_out = args.inventory_out;
    run_until_signal("simulate", Flavor::MultiThread, |shutdown| async move {
        let simulator = Simulator::start(config.clone(), shutdown.clone()).await.context("simulate")?;
        if let Some(path) = &inventory_out {
            std::fs::write(path, simulator.inventory()).with_context(|| format!("{}", path.display()))?;
        }
        tracing::info!(
            "{} devices ({} SNMPv3) with {} interfaces each on ports {}-{}, listening on {}",
            config.devices,
            config.v3_devices,
            config.interfaces,
            config.listen.port(),
            u32::from(config.listen.port()) + config.devices - 1,
            config.listen
        );
        simulator.run(shutdown).await;
        Ok(())
    })
}

/// RUST_LOG, or `info`. The HTTP client's wire dump (`ureq_proto` at trace level: every byte of
/// every request, the Authorization header included) is off whatever RUST_LOG says: tokens are
/// never logged.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,async_snmp=off".into());
    filter.add_directive("ureq_proto=off".parse().expect("a valid directive"))
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
