//! `pollux demo`: the whole fault-tolerant environment on one machine, from nothing but this
//! binary, as separate processes:
//!
//! ```text
//!   simulate (200 devices, a quarter SNMPv3) ◀── collector (through the proxy, ack log)
//!                                                   │ PUT DTOs
//!            proxy 127.0.0.1:8581 ──▶ da1 127.0.0.2:8581 ─┬─ <dir>/shared
//!                                 ──▶ da2 127.0.0.3:8581 ─┘
//! ```
//!
//! The proxy and the aggregators are the cluster harness's ([`pollux_cluster::Cluster`]), the
//! same the tests and benchmarks start. With `--chaos`, the active aggregator is killed -9 or
//! frozen past failwait at random, about once a `--chaos-interval`; after each fault the demo
//! checks every DTO the collector got acknowledged against the repository (through the proxy,
//! as any client would): loaded, still waiting in the shared directory, or lost. An aggregator
//! that died (by a fault, or killed by hand) is started again only once the other one has taken
//! over: restarted at once, it would take its own lease back and the takeover would never show.

use pollux_cluster::{Cluster, ClusterSpec, Launch, LogTo, Process, Security, NODE_NAMES};
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const FAILWAIT: &str = "5s";
const STARTWAIT: &str = "30s";
/// How long a frozen active stays frozen: past failwait, so the standby takes over.
const FREEZE: Duration = Duration::from_secs(8);
/// The environment variable that makes a child die with the demo (see `die_with_parent`).
pub const PARENT_ENV: &str = "POLLUX_DEMO_PARENT";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Kill -9 and freeze the active aggregator at random and show that nothing is lost.
    #[arg(long)]
    chaos: bool,
    /// Where the demo keeps its shared directory, spool and logs (reused by the next start).
    #[arg(long, default_value = "pollux-demo")]
    dir: PathBuf,
    /// HTTP port of the proxy (127.0.0.1) and both aggregators (127.0.0.2, 127.0.0.3); the
    /// collector's /metrics takes the next one on 127.0.0.1.
    #[arg(long, default_value_t = 8581)]
    port: u16,
    /// First UDP port of the simulated devices (one port each, on 127.0.0.1).
    #[arg(long, default_value_t = 16100)]
    snmp_port: u16,
    /// Simulated devices (a quarter speak SNMPv3).
    #[arg(long, default_value_t = 200)]
    devices: u32,
    /// The collector's poll cycle.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    interval: Duration,
    /// With --chaos: the average time between faults.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    chaos_interval: Duration,
    /// Stop by itself after this long (default: at Ctrl-C).
    #[arg(long, value_parser = super::parse_duration)]
    duration: Option<Duration>,
    /// Everything over HTTPS with ingest and admin tokens: a private CA and a certificate made
    /// with `pollux certs` in <dir>/tls, the tokens in <dir>/tokens.
    #[arg(long)]
    tls: bool,
}

/// Makes this process die with the demo that started it, if it did.
pub fn die_with_parent() {
    let Ok(parent) = std::env::var(PARENT_ENV) else { return };
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    // The demo may have died before the line above ran.
    if nix::unistd::getppid().as_raw().to_string() != parent {
        std::process::exit(1);
    }
}

struct Demo {
    args: DemoArgs,
    dir: PathBuf,
    exe: PathBuf,
    /// The proxy and both aggregators, once started.
    cluster: Option<Cluster>,
    /// The simulator and the collector.
    others: Vec<Process>,
    /// An aggregator frozen by a fault, until it is continued.
    frozen: Option<usize>,
    /// Aggregators that died and wait for the other one to take over before they restart.
    dead: BTreeSet<usize>,
    proxy: String,
    /// `http` or `https`.
    scheme: &'static str,
    security: Option<Security>,
    /// The demo's own requests (trusting the demo CA with --tls).
    client: ureq::Agent,
    /// Acknowledged ids read so far from the collector's log, and those not loaded yet.
    acked: usize,
    waiting: BTreeSet<String>,
    lost: BTreeSet<String>,
    ack_log_offset: u64,
}

pub fn run(args: DemoArgs) -> ExitCode {
    if let Err(taken) = check_ports(&args) {
        eprintln!("pollux demo: {taken} is already in use (another demo or Pollux running?); stop it or pick --port / --snmp-port");
        return ExitCode::from(super::EXIT_USAGE);
    }
    let dir = match prepare_dir(&args.dir) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("pollux demo: {}: {e}", args.dir.display());
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("pollux demo: cannot find this binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if args.tls { "https" } else { "http" };
    let security = match args.tls.then(|| make_tls(&dir)).transpose() {
        Ok(security) => security,
        Err(e) => {
            eprintln!("pollux demo: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let client = pollux_cluster::security::client(security.as_ref(), Duration::from_secs(3));
    let proxy = format!("{scheme}://127.0.0.1:{}", args.port);
    let mut demo = Demo {
        args,
        dir,
        exe,
        cluster: None,
        others: Vec::new(),
        frozen: None,
        dead: BTreeSet::new(),
        proxy,
        scheme,
        security,
        client,
        acked: 0,
        waiting: BTreeSet::new(),
        lost: BTreeSet::new(),
        ack_log_offset: 0,
    };
    // A worker thread of its own runs the signal handler while this thread drives the demo.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    let stop = CancellationToken::new();
    runtime.spawn(super::stop_on_signal(stop.clone()));
    let outcome = demo.run(&stop);
    let started = Instant::now();
    demo.stop_all();
    println!(
        "stopped every process in {:.1} s; the data stays in {}",
        started.elapsed().as_secs_f64(),
        demo.dir.display()
    );
    match outcome {
        Ok(()) if demo.lost.is_empty() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pollux demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first address the demo needs that something else holds.
fn check_ports(args: &DemoArgs) -> Result<(), String> {
    let tcp = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|host| format!("{host}:{}", args.port))
        .chain([format!("127.0.0.1:{}", u32::from(args.port) + 1)]);
    for addr in tcp {
        let addr: SocketAddr = addr.parse().map_err(|_| format!("TCP {addr}"))?;
        TcpListener::bind(addr).map_err(|_| format!("TCP {addr}"))?;
    }
    for k in 0..args.devices {
        let port = u32::from(args.snmp_port) + k;
        let port = u16::try_from(port).map_err(|_| format!("UDP port {port} (past 65535: lower --snmp-port)"))?;
        UdpSocket::bind(("127.0.0.1", port)).map_err(|_| format!("UDP 127.0.0.1:{port}"))?;
    }
    Ok(())
}

/// The demo's CA and certificate (for 127.0.0.1-3 and localhost), and its ingest and admin
/// tokens, made on the first `--tls` start and reused after. Reads stay open, so the portal
/// needs no password.
fn make_tls(dir: &Path) -> Result<Security, String> {
    let tls = dir.join("tls");
    if !tls.join("demo.pem").exists() {
        let names: Vec<String> = ["demo", "127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost"].map(String::from).into();
        super::certs::issue(&tls, &names, 397, false)?;
    }
    std::fs::create_dir_all(dir.join("tokens")).map_err(|e| format!("{}: {e}", dir.display()))?;
    for class in ["ingest", "admin"] {
        super::certs::make_token(&dir.join(format!("tokens/{class}.token")))?;
    }
    Ok(Security {
        ca: tls.join("ca.pem"),
        cert: tls.join("demo.pem"),
        key: tls.join("demo.key"),
        ingest: dir.join("tokens/ingest.token"),
        admin: dir.join("tokens/admin.token"),
        read: None,
    })
}

fn prepare_dir(dir: &Path) -> std::io::Result<PathBuf> {
    for sub in ["shared", "logs", "spool"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::canonicalize(dir)
}

impl Demo {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn run(&mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        let port = self.args.port;
        let mut spec = ClusterSpec::new(&self.exe, &self.dir, self.dir.join("shared"));
        spec.failwait = FAILWAIT.into();
        spec.startwait = STARTWAIT.into();
        spec.ports = [port; 3];
        spec.security = self.security.clone();
        spec.log_dir = Some(self.dir.join("logs"));
        // The children die with the demo through PARENT_ENV (see `die_with_parent`), not with
        // the thread that started them: the demo restarts them from its own thread.
        spec.harnessed = false;
        spec.common_env = self.child_env();
        self.cluster = Some(Cluster::start(spec).map_err(|e| anyhow::anyhow!(e))?);
        let v3 = self.args.devices / 4;
        let _ = std::fs::remove_file(self.dir.join("inventory.toml"));
        self.spawn(
            "simulator",
            &[
                "simulate",
                "--devices",
                &self.args.devices.to_string(),
                "--v3-devices",
                &v3.to_string(),
                "--interfaces",
                "4",
                "--listen",
                &format!("127.0.0.1:{}", self.args.snmp_port),
                "--inventory-out",
                &self.path("inventory.toml"),
            ],
        )?;
        self.wait(stop, Duration::from_secs(60), "the simulator's inventory", |d| {
            d.dir.join("inventory.toml").exists()
        })?;
        let security = self.security.as_ref().map(Security::collector_toml).unwrap_or_default();
        std::fs::write(
            self.dir.join("collector.toml"),
            format!("ack_log = {:?}\nmax_concurrent_polls = 64\n{security}", self.path("acked.log")),
        )?;
        let interval = pollux_model::duration::format(self.args.interval);
        let metrics = format!("127.0.0.1:{}", u32::from(port) + 1);
        // Through the proxy, as every client: it follows the active, and a frozen active is
        // given up on in seconds instead of holding the collector's sends.
        let proxy = self.proxy.clone();
        self.spawn(
            "collector",
            &[
                "collector",
                "--config",
                &self.path("collector.toml"),
                "--id",
                "demo",
                "--aggregator",
                &proxy,
                "--inventory",
                &self.path("inventory.toml"),
                "--spool-dir",
                &self.path("spool"),
                "--interval",
                &interval,
                "--metrics-listen",
                &metrics,
            ],
        )?;
        self.wait(stop, Duration::from_secs(120), "an active aggregator", |d| d.active().is_some())?;
        self.ack_log_offset = std::fs::metadata(self.dir.join("acked.log")).map_or(0, |m| m.len());
        self.print_screen();
        self.watch(stop)
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![
            (PARENT_ENV.to_owned(), std::process::id().to_string()),
            ("RUST_LOG".to_owned(), std::env::var("RUST_LOG").unwrap_or_else(|_| "info,async_snmp=off".into())),
        ]
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> anyhow::Result<()> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut launch =
            Launch::new(name, &self.exe, &args).log_to(LogTo::File(self.dir.join(format!("logs/{name}.log"))));
        for (k, v) in self.child_env() {
            launch = launch.env(&k, &v);
        }
        self.others.push(launch.spawn()?);
        Ok(())
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("the cluster is started")
    }

    fn cluster_mut(&mut self) -> &mut Cluster {
        self.cluster.as_mut().expect("the cluster is started")
    }

    /// Waits for `ready`, failing after `limit`, when a child exits, or at Ctrl-C.
    fn wait(
        &mut self,
        stop: &CancellationToken,
        limit: Duration,
        what: &str,
        ready: impl Fn(&Demo) -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut waiting = super::waiting::Waiting::new(what);
        while !ready(self) {
            if stop.is_cancelled() {
                anyhow::bail!("stopped while waiting for {what}");
            }
            for p in &mut self.others {
                if !p.running() {
                    anyhow::bail!(
                        "{} exited while waiting for {what}; see {}",
                        p.name(),
                        self.dir.join(format!("logs/{}.log", p.name())).display()
                    );
                }
            }
            if start.elapsed() > limit {
                anyhow::bail!("no {what} after {limit:?}; see the logs in {}", self.dir.join("logs").display());
            }
            if start.elapsed() > Duration::from_secs(1) {
                waiting.tick();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        waiting.finish();
        Ok(())
    }

    fn pid_of(&self, name: &str) -> String {
        let node = NODE_NAMES.iter().position(|n| *n == name).and_then(|i| self.cluster().nodes[i].as_ref());
        let other = self.others.iter().find(|p| p.name() == name);
        node.or(other).map(Process::pid).filter(|p| *p != 0).map_or("-".into(), |p| p.to_string())
    }

    fn print_screen(&self) {
        let port = self.args.port;
        let me = self.exe.display();
        let scheme = self.scheme;
        let (client, curl, admin) = if self.args.tls {
            let ca = self.path("tls/ca.pem");
            let admin = self.path("tokens/admin.token");
            (format!(" --ca-file {ca}"), format!("curl --cacert {ca} "), format!(" --token-file {admin}"))
        } else {
            (String::new(), "curl ".to_owned(), String::new())
        };
        let mut out = String::new();
        use std::fmt::Write as _;
        let _ = writeln!(out, "\nPollux demo is running: a fault-tolerant environment on this machine.\n");
        let _ = writeln!(
            out,
            "  proxy       {scheme}://127.0.0.1:{port}   (every client goes here; it follows the active)"
        );
        let _ = writeln!(out, "  da1         {scheme}://127.0.0.2:{port}   pid {}", self.pid_of("da1"));
        let _ = writeln!(out, "  da2         {scheme}://127.0.0.3:{port}   pid {}", self.pid_of("da2"));
        let _ = writeln!(
            out,
            "  collector   {} devices ({} SNMPv3) every {}, pid {}; simulator pid {}",
            self.args.devices,
            self.args.devices / 4,
            pollux_model::duration::format(self.args.interval),
            self.pid_of("collector"),
            self.pid_of("simulator")
        );
        let _ = writeln!(out, "  failwait    {FAILWAIT}, startwait {STARTWAIT}\n");
        let _ = writeln!(out, "  portal      {scheme}://127.0.0.1:{port}/   (open it in a browser)");
        let _ = writeln!(out, "  status      {me} status --url {scheme}://127.0.0.1:{port}{client}");
        let _ = writeln!(out, "  data        {curl}'{scheme}://127.0.0.1:{port}/api/v1/devices'");
        let _ = writeln!(out, "  failover    {me} failover --url {scheme}://127.0.0.1:{port}{client}{admin}");
        if self.args.tls {
            let _ = writeln!(
                out,
                "  HTTPS       every hop; CA {}, tokens in {} (reads are open)",
                self.path("tls/ca.pem"),
                self.path("tokens")
            );
        }
        let _ = writeln!(
            out,
            "              or kill -9 the active's pid above: the standby takes over after failwait ({FAILWAIT}),"
        );
        let _ = writeln!(
            out,
            "              and the demo starts the killed one again once it has: it rejoins as the standby"
        );
        let _ = writeln!(out, "  logs        {}/", self.dir.join("logs").display());
        let _ = writeln!(out, "  data dir    {} (kept; the next start reuses it)\n", self.dir.display());
        if self.args.chaos {
            let _ = writeln!(
                out,
                "Chaos: about every {}, the active is killed -9 or frozen past failwait, then brought back.",
                pollux_model::duration::format(self.args.chaos_interval)
            );
        }
        let _ = writeln!(out, "Ctrl-C stops every process.");
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// Until Ctrl-C or `--duration`: a line every half minute, and with `--chaos` the faults.
    fn watch(&mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut rng = Rng::seeded();
        let mut next_fault = start + self.chaos_gap(&mut rng);
        let mut next_line = start + Duration::from_secs(30);
        let mut faults = 0;
        while !stop.is_cancelled() && self.args.duration.is_none_or(|d| start.elapsed() < d) {
            self.restart_exited();
            if self.args.chaos && Instant::now() >= next_fault {
                faults += 1;
                self.fault(faults, &mut rng, stop);
                next_fault = Instant::now() + self.chaos_gap(&mut rng);
            }
            if Instant::now() >= next_line {
                self.check_acknowledged();
                println!("{}", self.summary());
                next_line = Instant::now() + Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A last account, once what is waiting has had a moment to load.
        let deadline = Instant::now() + Duration::from_secs(15);
        self.check_acknowledged();
        while !self.waiting.is_empty() && Instant::now() < deadline && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(500));
            self.check_acknowledged();
        }
        println!("{}", self.summary());
        Ok(())
    }

    fn chaos_gap(&self, rng: &mut Rng) -> Duration {
        self.args.chaos_interval.mul_f64(0.5 + rng.unit())
    }

    /// Which aggregator the proxy routes to, and its epoch.
    fn active(&self) -> Option<(&'static str, u64)> {
        let (status, body) = self.http_get(&format!("{}/health/active", self.proxy))?;
        let name = NODE_NAMES.into_iter().find(|n| body["node"] == *n)?;
        (status == 200).then(|| (name, body["epoch"].as_u64().unwrap_or(0)))
    }

    fn fault(&mut self, n: usize, rng: &mut Rng, stop: &CancellationToken) {
        let Some((active, epoch)) = self.active() else {
            println!("fault {n}: skipped, no active aggregator right now");
            return;
        };
        let started = Instant::now();
        let index = NODE_NAMES.iter().position(|n| *n == active).expect("an aggregator of the demo");
        let pid = self.pid_of(active);
        let freeze = rng.unit() < 0.5;
        if freeze {
            println!("fault {n}: SIGSTOP {active} (pid {pid}, the active, epoch {epoch}) for {:?}", FREEZE);
            self.cluster().node(index).signal("STOP");
            self.frozen = Some(index);
        } else {
            println!("fault {n}: kill -9 {active} (pid {pid}, the active, epoch {epoch})");
            self.cluster_mut().kill9(index);
        }
        // The takeover: the other node active with a higher epoch.
        let mut took_over = None;
        while started.elapsed() < Duration::from_secs(60) && !stop.is_cancelled() {
            if let Some((now_active, e)) = self.active() {
                if now_active != active && e > epoch {
                    took_over = Some((now_active, e, started.elapsed()));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match took_over {
            Some((who, e, after)) => {
                println!("  {who} is the active (epoch {e}) {:.1} s after the fault", after.as_secs_f64())
            }
            None => println!("  no takeover seen within 60 s (see the logs)"),
        }
        if freeze {
            while started.elapsed() < FREEZE && !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.cluster().node(index).signal("CONT");
            self.frozen = None;
            println!("  SIGCONT {active}: it finds a newer epoch, fences itself and rejoins as the standby");
        } else {
            // Only now that the other took over: restarted at once, a node takes back the lease
            // it held (its old process is gone), and the standby would never get its turn.
            self.restart(index);
        }
        self.check_acknowledged();
        println!("  {}", self.summary());
    }

    fn restart(&mut self, index: usize) {
        match self.cluster_mut().start_node(index) {
            Ok(()) => {
                let pid = self.pid_of(NODE_NAMES[index]);
                println!("  restarted {} (pid {pid}); it joins as the standby", NODE_NAMES[index]);
                self.dead.remove(&index);
            }
            Err(e) => println!("  cannot restart {}: {e}", NODE_NAMES[index]),
        }
    }

    /// A child that died by itself, or was killed by hand, is started again, and said so. An
    /// aggregator only once the other one is the active: the takeover shows first.
    fn restart_exited(&mut self) {
        for i in 0..2 {
            let running = self.cluster_mut().nodes[i].as_mut().is_some_and(Process::running);
            if !running && self.dead.insert(i) {
                println!("{} exited; it starts again once {} has taken over", NODE_NAMES[i], NODE_NAMES[1 - i]);
            }
        }
        for i in self.dead.clone() {
            let other_active = self.active().is_some_and(|(name, _)| name == NODE_NAMES[1 - i]);
            let other_dead = self.dead.contains(&(1 - i));
            if other_active || other_dead {
                self.restart(i);
            }
        }
        for p in &mut self.others {
            if !p.running() {
                println!("{} exited; see its log", p.name());
                if let Err(e) = p.restart() {
                    println!("  cannot restart {}: {e}", p.name());
                }
            }
        }
    }

    /// Reads the ids the collector got acknowledged since last time and asks the repository
    /// (through the proxy) about every one not yet seen loaded.
    fn check_acknowledged(&mut self) {
        if let Ok(mut file) = std::fs::File::open(self.dir.join("acked.log")) {
            use std::io::Seek;
            if file.seek(std::io::SeekFrom::Start(self.ack_log_offset)).is_ok() {
                let mut reader = std::io::BufReader::new(file);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if !line.ends_with('\n') {
                        break; // a line still being written: next time
                    }
                    self.ack_log_offset += line.len() as u64;
                    self.acked += 1;
                    self.waiting.insert(line.trim().to_owned());
                    line.clear();
                }
            }
        }
        let ids: Vec<String> = self.waiting.iter().cloned().collect();
        for id in ids {
            match self.http_get(&format!("{}/api/v1/dto/{id}", self.proxy)) {
                Some((200, body)) if body["state"] == "loaded" => {
                    self.waiting.remove(&id);
                }
                Some((404, _)) => {
                    self.waiting.remove(&id);
                    self.lost.insert(id);
                }
                // Stored, or no active right now: ask again later.
                _ => {}
            }
        }
    }

    fn summary(&self) -> String {
        let active = self.active().map_or("none".to_owned(), |(n, e)| format!("{n} (epoch {e})"));
        let duplicated = self
            .http_get(&format!("{}/api/v1/status", self.proxy))
            .and_then(|(_, b)| b["repository"]["replaced_records"].as_u64())
            .map_or("?".to_owned(), |n| n.to_string());
        format!(
            "active {active}; DTOs acknowledged {}, loaded {}, waiting to load {}, lost {}, duplicated records {duplicated}",
            self.acked,
            self.acked - self.waiting.len() - self.lost.len(),
            self.waiting.len(),
            self.lost.len()
        )
    }

    /// SIGCONT then SIGTERM to every child, SIGKILL to any still there after 5 s.
    fn stop_all(&mut self) {
        let mut children: Vec<Process> = self.others.drain(..).rev().collect();
        children.extend(self.cluster.take().map(Cluster::into_processes).unwrap_or_default());
        for p in &children {
            p.signal("CONT");
            p.signal("TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for mut p in children {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.pid() != 0 && p.wait_exit(left).is_none() {
                println!("{} did not stop within 5 s: killed", p.name());
            }
            p.kill9();
        }
    }
}

impl Demo {
    fn http_get(&self, url: &str) -> Option<(u16, serde_json::Value)> {
        let mut response = self.client.get(url).call().ok()?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_json().unwrap_or_default();
        Some((status, body))
    }
}

/// xorshift, seeded from the clock: the faults need no cryptography.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        Rng(nanos as u64 | 1)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
