//! Helpers shared by the benchmarks: the pollux binary as a child process, HTTP, statistics.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `pollux` binary built beside this one.
pub fn pollux_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("pollux");
    if !bin.exists() {
        bail!("{} not found: run `cargo build --release -p pollux` first", bin.display());
    }
    Ok(bin)
}

/// A child process killed (by pid) when dropped: the cluster harness's.
pub type Proc = pollux_cluster::Process;

/// HTTPS and tokens for the processes the benchmarks start and the requests they send, while
/// switched on with [`set_tls`]: the cluster harness's CA, a certificate for 127.0.0.1-3 and an
/// ingest and admin token (sent with every PUT and POST). The read class stays open, as an
/// operator may leave it.
static TLS_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TLS: std::sync::OnceLock<(tempfile::TempDir, pollux_cluster::Security)> = std::sync::OnceLock::new();

/// Switches HTTPS with tokens on or off for what starts and is sent from now on.
pub fn set_tls(on: bool) -> anyhow::Result<()> {
    if on && TLS.get().is_none() {
        let dir = tempfile::tempdir()?;
        let security = pollux_cluster::Security::make(&pollux_bin()?, dir.path(), false).map_err(anyhow::Error::msg)?;
        let _ = TLS.set((dir, security));
    }
    TLS_ON.store(on, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

pub fn tls() -> Option<&'static pollux_cluster::Security> {
    TLS_ON.load(std::sync::atomic::Ordering::SeqCst).then(|| TLS.get().map(|(_, s)| s)).flatten()
}

pub fn scheme() -> &'static str {
    if tls().is_some() {
        "https"
    } else {
        "http"
    }
}

/// `--config FILE` with the TLS and token keys of `role` (aggregator or proxy), written in
/// `dir`; nothing while TLS is off.
pub fn security_args(role: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
    let Some(t) = tls() else { return Ok(Vec::new()) };
    let toml = match role {
        "aggregator" => t.aggregator_toml(),
        _ => t.proxy_toml(),
    };
    let path = dir.join(format!("{role}-{}.toml", std::process::id()));
    std::fs::write(&path, toml)?;
    Ok(vec!["--config".into(), path.display().to_string()])
}

/// Starts `pollux <args>` and returns it with the URL it says it listens on.
pub fn spawn(args: &[String]) -> anyhow::Result<(Proc, String)> {
    let launch = pollux_cluster::Launch::new("pollux", pollux_bin()?, args)
        .env("RUST_LOG", "warn,pollux=info,pollux_aggregator=info,pollux_proxy=info,pollux_collector=info");
    let mut proc = launch.spawn()?;
    let addr = proc
        .listening(Duration::from_secs(60))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("pollux {args:?}"))?;
    proc.url = format!("{}://{addr}", scheme());
    let url = proc.url.clone();
    Ok((proc, url))
}

/// Starts `pollux aggregator` on an ephemeral port; returns it with its base URL once active.
pub fn start_aggregator(shared: &Path) -> anyhow::Result<(Proc, String)> {
    start_aggregator_with(shared, &[])
}

/// As [`start_aggregator`], with `extra` arguments (`--repository URL`).
pub fn start_aggregator_with(shared: &Path, extra: &[String]) -> anyhow::Result<(Proc, String)> {
    let args: Vec<String> = ["aggregator", "--listen", "127.0.0.1:0", "--node-id", "bench", "--shared-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([shared.display().to_string()])
        .chain(security_args("aggregator", shared)?)
        .chain(extra.iter().cloned())
        .collect();
    let (proc, url) = spawn(&args)?;
    wait_for(Duration::from_secs(120), || Ok(get_status(&format!("{url}/health/active"))? == 200))?;
    Ok((proc, url))
}

/// Runs `senders` threads that call `send` on each of `items[first..]` once, in order of a
/// shared cursor; returns when all are sent or one failed.
pub fn send_all<T: Send + Sync + 'static>(
    items: &std::sync::Arc<Vec<T>>,
    first: usize,
    senders: usize,
    send: fn(&ureq::Agent, &T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = std::sync::Arc::new(AtomicUsize::new(first));
    let threads: Vec<_> = (0..senders)
        .map(|_| {
            let (items, next) = (items.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let agent = agent();
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    send(&agent, item)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread")?;
    }
    Ok(())
}

/// A client; while TLS is on it trusts the benchmark CA and sends the ingest token with PUTs
/// and the admin token with POSTs.
pub fn agent() -> ureq::Agent {
    pollux_cluster::security::client(tls(), Duration::from_secs(120))
}

pub fn get_status(url: &str) -> anyhow::Result<u16> {
    Ok(agent().get(url).call().map(|r| r.status().as_u16()).unwrap_or(0))
}

pub fn get_text(agent: &ureq::Agent, url: &str) -> anyhow::Result<String> {
    Ok(agent.get(url).call()?.body_mut().read_to_string()?)
}

/// Reads one sample from a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn wait_for(limit: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A small deterministic generator, so runs are comparable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn float(&mut self, max: f64) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * max
    }
}
