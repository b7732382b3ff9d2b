//! Black-box test harness: starts the real `pollux` binary as separate processes, talks to them
//! over HTTP, kills them, and inspects what they left in the shared directory.
//!
//! Every wait has a deadline; every process started is killed (by pid) when its handle drops.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod receiver;
pub mod snmp;

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pollux");

/// A command for a child of the harness that is not a long-running role (a CLI call with its
/// own output handling): in a process group of its own and killed if the thread that started it
/// dies, as [`pollux_cluster::Launch::harnessed`] does for the processes the harness keeps.
pub fn harnessed(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--", program]);
    cmd.process_group(0);
    cmd
}

/// Polls `check` every 20 ms until it returns `Some`, or panics naming `what` after `limit`.
pub fn wait_until<T>(limit: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    pollux_cluster::wait_for(limit, what, check).unwrap_or_else(|e| panic!("{e}"))
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A running `pollux` process that serves HTTP (an aggregator, the proxy, a collector's
/// metrics): a [`pollux_cluster::Process`] with its URL.
pub struct Aggregator {
    process: pollux_cluster::Process,
    pub url: String,
}

impl Aggregator {
    /// Starts an aggregator on an ephemeral port of 127.0.0.1 and waits until it listens.
    pub fn start(shared: &Path, extra: &[&str], env: &[(&str, &str)]) -> Aggregator {
        let mut args: Vec<String> = ["aggregator", "--listen", "127.0.0.1:0", "--node-id", "da-test", "--shared-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(shared.display().to_string());
        args.extend(repository_args(shared));
        args.extend(extra.iter().map(|s| s.to_string()));
        Aggregator::spawn(&args, env)
    }

    /// Starts `pollux <args>` and waits until it says where it listens.
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Aggregator {
        Aggregator::spawn_program(BIN, args, env)
    }

    /// Starts `program <args>` (a wrapper such as `prlimit` that runs pollux) and waits until
    /// pollux says where it listens (the port 0 it was given became a port; readiness itself is
    /// each test's wait on /health).
    pub fn spawn_program(program: &str, args: &[String], env: &[(&str, &str)]) -> Aggregator {
        let mut launch = pollux_cluster::Launch::new("pollux", program, args).harnessed();
        for (k, v) in env {
            launch = launch.env(k, v);
        }
        let process = launch.spawn().expect("start pollux");
        let addr = process.listening(Duration::from_secs(30)).unwrap_or_else(|e| panic!("pollux {args:?}: {e}"));
        Aggregator { process, url: format!("{}://{addr}", scheme()) }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until `/health/active` answers 200.
    pub fn wait_active(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&format!("{}/health/active", self.url)).0 != 200 {
            assert!(Instant::now() < deadline, "not the ready active after 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Sends a signal by name: "STOP", "CONT", "TERM" or "HUP".
    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// Waits for the process to exit on its own (a crash point), returning its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let log = self.log();
        self.process
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("timed out after {limit:?} waiting for the process to exit:\n{log}"))
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15))
    }
}

/// HTTPS and a token per class for every process a test starts, and for the harness's own
/// requests (GETs send the read token, PUTs the ingest token). Set once per test process by
/// [`secure`]; a test binary either runs wholly secured or not at all.
pub struct Secure {
    pub dir: tempfile::TempDir,
    pub ca: std::path::PathBuf,
    pub ingest: std::path::PathBuf,
    pub admin: std::path::PathBuf,
    pub read: std::path::PathBuf,
    /// One certificate (and key) for 127.0.0.1, .2, .3 and localhost.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub security: pollux_cluster::Security,
}

static SECURE: std::sync::OnceLock<Secure> = std::sync::OnceLock::new();

/// Makes (once) a CA, one certificate for 127.0.0.1, .2, .3 and localhost, and a token file per
/// class (the cluster harness's [`pollux_cluster::Security`]), and switches the harness to HTTPS
/// with tokens.
pub fn secure() -> &'static Secure {
    SECURE.get_or_init(|| {
        let dir = tempdir();
        let security = pollux_cluster::Security::make(Path::new(BIN), dir.path(), true).unwrap();
        Secure {
            ca: security.ca.clone(),
            cert: security.cert.clone(),
            key: security.key.clone(),
            ingest: security.ingest.clone(),
            admin: security.admin.clone(),
            read: security.read.clone().expect("a read token"),
            security,
            dir,
        }
    })
}

pub fn secured() -> Option<&'static Secure> {
    SECURE.get()
}

impl Secure {
    /// The TLS and token keys of an aggregator's configuration.
    pub fn aggregator_toml(&self) -> String {
        self.security.aggregator_toml()
    }

    /// The TLS keys of the proxy's configuration.
    pub fn proxy_toml(&self) -> String {
        self.security.proxy_toml()
    }

    /// `--ca-file` and `--token-file` for a command-line client.
    pub fn cli_args(&self, token: &Path) -> Vec<String> {
        self.security.cli_args(token)
    }

    /// `Authorization: Bearer <token of the file>`.
    pub fn bearer(&self, token: &Path) -> String {
        pollux_cluster::Security::bearer(token)
    }
}

/// `http` or, in a secured test process, `https`.
pub fn scheme() -> &'static str {
    if secured().is_some() {
        "https"
    } else {
        "http"
    }
}

fn agent() -> ureq::Agent {
    let mut config =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).http_status_as_error(false);
    if let Some(s) = secured() {
        config = config.tls_config(pollux_transport::ClientTls::load(Some(&s.ca)).unwrap().ureq());
    }
    ureq::Agent::new_with_config(config.build())
}

fn with_token<B>(request: ureq::RequestBuilder<B>, token: impl Fn(&Secure) -> &Path) -> ureq::RequestBuilder<B> {
    match secured() {
        Some(s) => request.header("authorization", s.bearer(token(s))),
        None => request,
    }
}

/// GET: status and JSON body (`Value::Null` when the body is not JSON). Status 0 when the
/// connection failed.
pub fn get(url: &str) -> (u16, Value) {
    match with_token(agent().get(url), |s| &s.read).call() {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// GET: status and the `Retry-After` header, if any.
pub fn get_retry_after(url: &str) -> (u16, Option<String>) {
    match with_token(agent().get(url), |s| &s.read).call() {
        Ok(r) => (r.status().as_u16(), r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned)),
        Err(_) => (0, None),
    }
}

pub fn get_text(url: &str) -> String {
    with_token(agent().get(url), |s| &s.read).call().unwrap().body_mut().read_to_string().unwrap()
}

/// PUT bytes with a content type: status and JSON body; status 0 when the connection failed
/// (for instance because the process died before answering).
pub fn put(url: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    match with_token(agent().put(url), |s| &s.ingest).header("content-type", content_type).send(body) {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

pub fn put_json(base: &str, dto: &Value) -> (u16, Value) {
    let id = dto["id"].as_str().unwrap();
    put(&format!("{base}/api/v1/dto/{id}"), "application/json", dto.to_string().as_bytes())
}

/// An Interface DTO: `devices` x `items` records with values derived from the cycle.
pub fn interface_dto(id: &str, cycle: i64, devices: usize, items: usize) -> Value {
    let mut records = Vec::new();
    for d in 0..devices {
        for i in 0..items {
            let base = ((cycle / 300) % 1000) as f64 + (d * items + i) as f64;
            records.push(json!({
                "device": format!("rtr-{d}"), "item": format!("ge-0/0/{i}"), "ts": cycle + 1 + (i as i64 % 60),
                "values": {"in_bps": base * 1000.0, "out_bps": base * 500.0, "in_util": base % 100.0}
            }));
        }
    }
    json!({"id": id, "collector": "dc1", "family": "Interface", "cycle": cycle, "interval": 300, "records": records})
}

/// Files in `<shared>/dto` and its `tmp/` (whole DTOs and temp leftovers alike).
pub fn dto_files(shared: &Path) -> Vec<String> {
    let list = |dir: &Path, prefix: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_file())
                    .map(|e| format!("{prefix}{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names = list(&shared.join("dto"), "");
    names.extend(list(&shared.join("dto/tmp"), "tmp/"));
    names.sort();
    names
}

/// Where a test's aggregators keep the repository: the SQLite file in the shared directory,
/// unless the test put a PostgreSQL URL in `<shared>/.repository` (see [`use_postgres`]).
pub fn repository_of(shared: &Path) -> pollux_repository::Location {
    match std::fs::read_to_string(shared.join(".repository")) {
        Ok(url) => pollux_repository::Location::Postgres(url.trim().to_owned()),
        Err(_) => pollux_repository::Location::Sqlite(shared.join("repository.sqlite")),
    }
}

/// The `--repository` arguments for an aggregator of `shared`.
pub fn repository_args(shared: &Path) -> Vec<String> {
    match repository_of(shared) {
        pollux_repository::Location::Postgres(url) => vec!["--repository".into(), url],
        pollux_repository::Location::Sqlite(_) => Vec::new(),
    }
}

/// Makes the aggregators of `shared` use a database of a throwaway PostgreSQL server, which the
/// caller keeps until the test ends. `None`, said loudly, when no PostgreSQL binaries exist.
pub fn use_postgres(shared: &Path) -> Option<pollux_repository::postgres::scratch::ScratchServer> {
    use pollux_repository::postgres::scratch;
    let server = match scratch::ScratchServer::start() {
        Ok(server) => server,
        Err(e) if scratch::binaries().is_none() && !scratch::required() => {
            eprintln!("SKIPPED: this test needs PostgreSQL: {e}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let url = server.database("pollux").unwrap();
    std::fs::write(shared.join(".repository"), &url).unwrap();
    Some(server)
}

/// A view of the repository a test's aggregators wrote, through the repository API only, so
/// every check runs on every backend.
pub struct RepoCheck {
    repo: Box<dyn pollux_repository::Repository>,
}

impl RepoCheck {
    pub fn open(shared: &Path) -> RepoCheck {
        let options = pollux_repository::OpenOptions::default();
        RepoCheck { repo: pollux_repository::open(&repository_of(shared), &options).unwrap() }
    }

    pub fn repository(&self) -> &dyn pollux_repository::Repository {
        &*self.repo
    }

    /// How many times the registry holds `id` (must be 0 or 1).
    pub fn registered(&self, id: &str) -> i64 {
        self.registry().iter().filter(|(_, e)| e.id == id).count() as i64
    }

    /// The whole registry in load order.
    fn registry(&self) -> Vec<(i64, pollux_repository::LoadedDto)> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |(seq, _)| *seq);
            let page = self.repo.registry(after, 10_000).unwrap();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    pub fn loaded_ids(&self) -> Vec<String> {
        self.registry().into_iter().map(|(_, e)| e.id).collect()
    }

    /// Every stored record of a family as `(device, item, cycle, ts, values)`.
    fn records(&self, family: &str) -> Vec<pollux_repository::RawRecord> {
        let mut all = Vec::new();
        match self.repo.raw_records(family, &mut |r| all.push(r)) {
            Ok(()) => all,
            // The family's tables appear with its first load.
            Err(pollux_repository::RepoError::UnknownFamily(_)) => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Raw Interface records as `(device, item, ts)` with their count.
    pub fn interface_rows(&self) -> Vec<(String, String, i64, i64)> {
        let mut counts: std::collections::BTreeMap<(String, String, i64), i64> = Default::default();
        for r in self.records("Interface") {
            *counts.entry((r.device, r.item, r.ts)).or_default() += 1;
        }
        counts.into_iter().map(|((d, i, ts), n)| (d, i, ts, n)).collect()
    }

    /// Raw records of a family as `(device, item, cycle)` with their count.
    pub fn family_cycles(&self, family: &str) -> Vec<(String, String, i64, i64)> {
        let mut counts: std::collections::BTreeMap<(String, String, i64), i64> = Default::default();
        for r in self.records(family) {
            *counts.entry((r.device, r.item, r.cycle)).or_default() += 1;
        }
        counts.into_iter().map(|((d, i, c), n)| (d, i, c, n)).collect()
    }

    /// Epochs of the loaded DTOs in load order never go down, and no load of an epoch was
    /// registered after a newer epoch claimed the repository (each claim records the last
    /// registry entry before it): a stale writer that committed between a newer epoch's claim
    /// and that epoch's first load is caught too.
    pub fn epochs_never_go_back(&self) -> bool {
        let epochs: Vec<u64> = self.registry().iter().map(|(_, e)| e.epoch).collect();
        epochs.windows(2).all(|w| w[0] <= w[1]) && self.stale_loads_after_a_claim() == 0
    }

    /// Loads registered after a newer epoch's claim (must be 0).
    pub fn stale_loads_after_a_claim(&self) -> i64 {
        let claims = self.repo.claims().unwrap();
        let registry = self.registry();
        registry
            .iter()
            .filter(|(seq, entry)| {
                claims.iter().any(|c| entry.epoch < c.epoch && c.after_seq.is_some_and(|after| *seq > after))
            })
            .count() as i64
    }

    /// Every stored Interface value against what [`interface_dto`] sent for its device, item
    /// and cycle, bit for bit (devices renamed by a prefix keep their `rtr-<d>` suffix).
    /// Returns the values compared, or the first that differs.
    pub fn values_as_sent(&self, items_per_device: usize) -> Result<usize, String> {
        let columns = self.repo.family_columns("Interface").unwrap();
        let metrics = ["in_bps", "out_bps", "in_util"];
        let at: Vec<usize> = metrics.iter().map(|m| columns.iter().position(|c| c == m).unwrap()).collect();
        let mut compared = 0;
        for r in self.records("Interface") {
            let (device, item, cycle) = (&r.device, &r.item, r.cycle);
            let d: usize =
                device.rsplit("rtr-").next().and_then(|n| n.parse().ok()).ok_or(format!("device {device}"))?;
            let i: usize = item.rsplit('/').next().and_then(|n| n.parse().ok()).ok_or(format!("item {item}"))?;
            let base = ((cycle / 300) % 1000) as f64 + (d * items_per_device + i) as f64;
            let sent = [base * 1000.0, base * 500.0, base % 100.0];
            for (k, metric) in metrics.iter().enumerate() {
                let got = r.values[at[k]];
                if got.map(f64::to_bits) != Some(sent[k].to_bits()) {
                    return Err(format!("{device} {item} cycle {cycle} {metric}: stored {got:?}, sent {:?}", sent[k]));
                }
                compared += 1;
            }
        }
        Ok(compared)
    }

    /// Every (device, item) of the Interface family.
    pub fn interface_items(&self) -> Vec<(String, String)> {
        let filter = pollux_repository::ItemFilter {
            family: Some("Interface".into()),
            limit: usize::MAX >> 1,
            ..Default::default()
        };
        self.repo.items(&filter).unwrap().into_iter().map(|i| (i.device, i.item)).collect()
    }

    /// Records that replaced a stored one for the same item and cycle under another DTO id
    /// (must be 0: the schema's key would otherwise overwrite such a duplicate unseen).
    pub fn replaced_records(&self) -> i64 {
        self.repo.stats().unwrap().replaced_records as i64
    }

    /// How many epochs claimed the repository.
    pub fn claims(&self) -> i64 {
        self.repo.claims().unwrap().len() as i64
    }
}

/// Monday 00:00 UTC of a week that began at least two weeks ago: load placed in
/// `[week_base(), week_base() + 8 days)` covers a whole week and eight whole days, long closed,
/// so the checkers compare hourly, daily and weekly rollups alike.
pub fn week_base() -> i64 {
    const DAY: i64 = 86_400;
    const MONDAY: i64 = 4 * DAY; // 1970-01-05 was a Monday
    (unix_now() - 14 * DAY - MONDAY) / (7 * DAY) * (7 * DAY) + MONDAY
}

/// The end of the range [`week_base`] starts.
pub fn week_range_end(base: i64) -> i64 {
    base + 8 * 86_400
}

/// Every hourly, daily and weekly rollup of every Interface item and metric in `[from, to)`
/// against a recomputation from raw data. Returns the periods compared per resolution (hour,
/// day, week); `None` while some rollup is still off (the caller waits for pending rollups).
pub fn rollups_of_every_item(shared: &Path, from: i64, to: i64) -> Option<[usize; 3]> {
    use pollux_repository::conformance::rollups_match_raw_by_resolution;
    let check = RepoCheck::open(shared);
    let items = check.interface_items();
    let mut compared = [0; 3];
    for (device, item) in &items {
        for metric in ["in_bps", "out_bps", "in_util"] {
            let c = rollups_match_raw_by_resolution(check.repository(), "Interface", metric, device, item, from, to)
                .ok()?;
            for r in 0..3 {
                compared[r] += c[r];
            }
        }
    }
    Some(compared)
}

/// A shared directory for one test, removed when it drops.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
