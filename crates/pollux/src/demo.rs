//! `pollux demo`: the whole fault-tolerant environment on one machine, from nothing but this
//! binary, as separate processes:
//!
//! ```text
//!   simulate (200 devices, a quarter SNMPv3) ◀── collector (both aggregators' URLs, ack log)
//!                                                   │ PUT DTOs
//!            proxy 127.0.0.1:8581 ──▶ da1 127.0.0.2:8581 ─┬─ <dir>/shared
//!                                 ──▶ da2 127.0.0.3:8581 ─┘
//! ```
//!
//! With `--chaos`, the active aggregator is killed -9 or frozen past failwait at random, about
//! once a `--chaos-interval`, and restarted; after each fault the demo checks every DTO the
//! collector got acknowledged against the repository (through the proxy, as any client would):
//! loaded, still waiting in the shared directory, or lost.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
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

/// One child process of the demo.
struct Proc {
    name: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    frozen: bool,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }
}

struct Demo {
    args: DemoArgs,
    dir: PathBuf,
    procs: Vec<Proc>,
    exe: PathBuf,
    proxy: String,
    /// `http` or `https`.
    scheme: &'static str,
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
    let client = match args.tls.then(|| make_tls(&dir)).transpose() {
        Ok(ca) => client(ca.as_deref()),
        Err(e) => {
            eprintln!("pollux demo: {e}");
            return ExitCode::from(super::EXIT_USAGE);
        }
    };
    let proxy = format!("{scheme}://127.0.0.1:{}", args.port);
    let mut demo = Demo {
        args,
        dir,
        procs: Vec::new(),
        exe,
        proxy,
        scheme,
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
/// tokens, made on the first `--tls` start and reused after; returns the CA file.
fn make_tls(dir: &Path) -> Result<PathBuf, String> {
    let tls = dir.join("tls");
    if !tls.join("demo.pem").exists() {
        let names: Vec<String> = ["demo", "127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost"].map(String::from).into();
        super::certs::issue(&tls, &names, 397, false)?;
    }
    std::fs::create_dir_all(dir.join("tokens")).map_err(|e| format!("{}: {e}", dir.display()))?;
    for class in ["ingest", "admin"] {
        super::certs::make_token(&dir.join(format!("tokens/{class}.token")))?;
    }
    Ok(tls.join("ca.pem"))
}

fn client(ca: Option<&Path>) -> ureq::Agent {
    let mut config =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).http_status_as_error(false);
    if let Some(ca) = ca {
        let tls = pollux_transport::ClientTls::load(Some(ca)).expect("the demo CA was just written");
        config = config.tls_config(tls.ureq());
    }
    ureq::Agent::new_with_config(config.build())
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
        let scheme = self.scheme;
        let aggregators = [format!("{scheme}://127.0.0.2:{port}"), format!("{scheme}://127.0.0.3:{port}")];
        let (mut aggregator_toml, mut proxy_toml, mut collector_toml) = (String::new(), String::new(), String::new());
        if self.args.tls {
            let (cert, key, ca) = (self.path("tls/demo.pem"), self.path("tls/demo.key"), self.path("tls/ca.pem"));
            let (ingest, admin) = (self.path("tokens/ingest.token"), self.path("tokens/admin.token"));
            aggregator_toml = format!(
                "tls_cert = {cert:?}\ntls_key = {key:?}\ningest_token_file = {ingest:?}\nadmin_token_file = {admin:?}\n"
            );
            proxy_toml = format!("tls_cert = {cert:?}\ntls_key = {key:?}\nca_file = {ca:?}\n");
            collector_toml = format!("ca_file = {ca:?}\ningest_token_file = {ingest:?}\n");
        }
        std::fs::write(self.dir.join("aggregator.toml"), aggregator_toml)?;
        std::fs::write(self.dir.join("proxy.toml"), proxy_toml)?;
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
        for (i, node) in ["da1", "da2"].iter().enumerate() {
            let listen = format!("127.0.0.{}:{port}", i + 2);
            let shared = self.path("shared");
            self.spawn(
                if i == 0 { "da1" } else { "da2" },
                &[
                    "aggregator",
                    "--config",
                    &self.path("aggregator.toml"),
                    "--node-id",
                    node,
                    "--listen",
                    &listen,
                    "--shared-dir",
                    &shared,
                    "--failwait",
                    FAILWAIT,
                    "--startwait",
                    STARTWAIT,
                ],
            )?;
            if i == 0 {
                // da1 first, so the screen's story starts with da1 active.
                let lease = self.dir.join("shared/election/lease");
                let _ = self.wait(stop, Duration::from_secs(10), "da1 to take the lease", |_| {
                    std::fs::read_to_string(&lease).is_ok_and(|l| l.contains("\"da1\""))
                });
            }
        }
        let proxy_listen = format!("127.0.0.1:{port}");
        self.spawn(
            "proxy",
            &[
                "proxy",
                "--config",
                &self.path("proxy.toml"),
                "--listen",
                &proxy_listen,
                "--aggregator",
                &aggregators[0],
                "--aggregator",
                &aggregators[1],
            ],
        )?;
        self.wait(stop, Duration::from_secs(60), "the simulator's inventory", |d| {
            d.dir.join("inventory.toml").exists()
        })?;
        std::fs::write(
            self.dir.join("collector.toml"),
            format!("ack_log = {:?}\nmax_concurrent_polls = 64\n{collector_toml}", self.path("acked.log")),
        )?;
        let interval = pollux_model::duration::format(self.args.interval);
        let metrics = format!("127.0.0.1:{}", u32::from(port) + 1);
        self.spawn(
            "collector",
            &[
                "collector",
                "--config",
                &self.path("collector.toml"),
                "--id",
                "demo",
                "--aggregator",
                &aggregators[0],
                "--aggregator",
                &aggregators[1],
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
        let proxy = self.proxy.clone();
        self.wait(stop, Duration::from_secs(120), "an active aggregator", |d| {
            d.http_get(&format!("{proxy}/health/active")).is_some_and(|(status, _)| status == 200)
        })?;
        self.ack_log_offset = std::fs::metadata(self.dir.join("acked.log")).map_or(0, |m| m.len());
        self.print_screen();
        self.watch(stop)
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> anyhow::Result<()> {
        let mut proc = Proc { name, args: args.iter().map(|s| s.to_string()).collect(), child: None, frozen: false };
        proc.child = Some(self.start(&proc)?);
        self.procs.push(proc);
        Ok(())
    }

    fn start(&self, proc: &Proc) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("logs/{}.log", proc.name)))?;
        Ok(Command::new(&self.exe)
            .args(&proc.args)
            .env(PARENT_ENV, std::process::id().to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,async_snmp=off".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
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
            for p in &mut self.procs {
                if let Some(Ok(Some(status))) = p.child.as_mut().map(Child::try_wait) {
                    p.child = None;
                    anyhow::bail!(
                        "{} exited ({status}) while waiting for {what}; see {}",
                        p.name,
                        self.dir.join(format!("logs/{}.log", p.name)).display()
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
        self.procs.iter().find(|p| p.name == name).and_then(Proc::pid).map_or("-".into(), |p| p.to_string())
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
        let _ = writeln!(out, "              or kill -9 the active's pid above: the standby takes over after failwait");
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

    /// Which aggregator the proxy routes to.
    fn active(&self) -> Option<(&'static str, u64)> {
        let (status, body) = self.http_get(&format!("{}/health/active", self.proxy))?;
        let name = match body["node"].as_str()? {
            "da1" => "da1",
            "da2" => "da2",
            _ => return None,
        };
        (status == 200).then(|| (name, body["epoch"].as_u64().unwrap_or(0)))
    }

    fn fault(&mut self, n: usize, rng: &mut Rng, stop: &CancellationToken) {
        let Some((active, epoch)) = self.active() else {
            println!("fault {n}: skipped, no active aggregator right now");
            return;
        };
        let started = Instant::now();
        let index = self.procs.iter().position(|p| p.name == active).expect("aggregators are started");
        let pid = self.procs[index].pid().unwrap_or(0);
        let freeze = rng.unit() < 0.5;
        if freeze {
            println!("fault {n}: SIGSTOP {active} (pid {pid}, the active, epoch {epoch}) for {:?}", FREEZE);
            self.procs[index].signal(nix::sys::signal::Signal::SIGSTOP);
            self.procs[index].frozen = true;
        } else {
            println!("fault {n}: kill -9 {active} (pid {pid}, the active, epoch {epoch})");
            if let Some(mut child) = self.procs[index].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
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
            self.procs[index].signal(nix::sys::signal::Signal::SIGCONT);
            self.procs[index].frozen = false;
            println!("  SIGCONT {active}: it finds a newer epoch, fences itself and rejoins as the standby");
        } else {
            // Only now: restarted at once, a node takes back the lease it held (its old process
            // is gone), and the standby would never get its turn.
            self.restart(index);
        }
        self.check_acknowledged();
        println!("  {}", self.summary());
    }

    fn restart(&mut self, index: usize) {
        match self.start(&self.procs[index]) {
            Ok(child) => {
                println!("  restarted {} (pid {}); it joins as the standby", self.procs[index].name, child.id());
                self.procs[index].child = Some(child);
            }
            Err(e) => println!("  cannot restart {}: {e}", self.procs[index].name),
        }
    }

    /// A child that died by itself (not by a fault) is started again, and said so.
    fn restart_exited(&mut self) {
        for i in 0..self.procs.len() {
            let exited = match self.procs[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                println!("{} exited ({status}); see its log", self.procs[i].name);
                self.procs[i].child = None;
                self.restart(i);
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
        for p in self.procs.iter().rev() {
            if p.frozen {
                p.signal(nix::sys::signal::Signal::SIGCONT);
            }
            p.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.procs {
            let Some(child) = p.child.as_mut() else { continue };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    Ok(None) => {
                        println!("{} did not stop within 5 s: killed", p.name);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            p.child = None;
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
