//! Helpers shared by the benchmarks: the pollux binary as a child process, HTTP, statistics.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A child process killed (by pid) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTPS and tokens for the processes the benchmarks start and the requests they send, while
/// switched on with [`set_tls`]: a CA and a certificate for 127.0.0.1-3 from `pollux certs`,
/// an ingest token (sent with every PUT) and an admin token (every POST). The read class stays
/// open, as an operator may leave it.
pub struct Tls {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ingest_file: PathBuf,
    admin_file: PathBuf,
    ingest: String,
    admin: String,
}

static TLS_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TLS: std::sync::OnceLock<Tls> = std::sync::OnceLock::new();

/// Switches HTTPS with tokens on or off for what starts and is sent from now on.
pub fn set_tls(on: bool) -> anyhow::Result<()> {
    if on && TLS.get().is_none() {
        let dir = tempfile::tempdir()?;
        let out = Command::new(pollux_bin()?)
            .args(["certs", "--dir"])
            .arg(dir.path())
            .args(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
            .output()?;
        anyhow::ensure!(out.status.success(), "pollux certs: {}", String::from_utf8_lossy(&out.stderr));
        let token = |name: &str| -> anyhow::Result<(PathBuf, String)> {
            let value = format!("{name}-bench-token-{:016x}", Rng::new(unix_now() as u64).next());
            let path = dir.path().join(format!("{name}.token"));
            std::fs::write(&path, &value)?;
            Ok((path, value))
        };
        let ((ingest_file, ingest), (admin_file, admin)) = (token("ingest")?, token("admin")?);
        let tls = dir.path();
        let _ = TLS.set(Tls {
            ca: tls.join("ca.pem"),
            cert: tls.join("127.0.0.1.pem"),
            key: tls.join("127.0.0.1.key"),
            ingest_file,
            admin_file,
            ingest,
            admin,
            _dir: dir,
        });
    }
    TLS_ON.store(on, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

pub fn tls() -> Option<&'static Tls> {
    TLS_ON.load(std::sync::atomic::Ordering::SeqCst).then(|| TLS.get()).flatten()
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
    let mut toml = format!("tls_cert = {:?}\ntls_key = {:?}\n", t.cert, t.key);
    match role {
        "aggregator" => {
            toml.push_str(&format!("ingest_token_file = {:?}\nadmin_token_file = {:?}\n", t.ingest_file, t.admin_file))
        }
        _ => toml.push_str(&format!("ca_file = {:?}\n", t.ca)),
    }
    let path = dir.join(format!("{role}-{}.toml", std::process::id()));
    std::fs::write(&path, toml)?;
    Ok(vec!["--config".into(), path.display().to_string()])
}

/// Starts `pollux <args>` and returns it with the URL it says it listens on.
pub fn spawn(args: &[String]) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(pollux_bin()?)
        .args(args)
        .env("RUST_LOG", "warn,pollux=info,pollux_aggregator=info,pollux_proxy=info,pollux_collector=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().unwrap();
    let proc = Proc { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).with_context(|| format!("pollux {args:?} did not start"))?;
    Ok((proc, format!("{}://{addr}", scheme())))
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
    let config =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(120))).http_status_as_error(false);
    let Some(t) = tls() else { return ureq::Agent::new_with_config(config.build()) };
    let tls = pollux_transport::ClientTls::load(Some(&t.ca)).expect("the benchmark CA");
    let (ingest, admin) = (format!("Bearer {}", t.ingest), format!("Bearer {}", t.admin));
    let with_token = move |mut request: ureq::http::Request<ureq::SendBody>, next: ureq::middleware::MiddlewareNext| {
        let token = match *request.method() {
            ureq::http::Method::PUT => Some(&ingest),
            ureq::http::Method::POST => Some(&admin),
            _ => None,
        };
        if let Some(token) = token {
            request.headers_mut().insert("authorization", token.parse().expect("a header value"));
        }
        next.handle(request)
    };
    ureq::Agent::new_with_config(config.tls_config(tls.ureq()).middleware(with_token).build())
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
