//! A fault-tolerant environment on one machine: two aggregators on 127.0.0.2 and 127.0.0.3, a
//! proxy on 127.0.0.1, one shared directory; a load generator that behaves like collectors; and
//! the checker that says, from the repository, whether anything was lost or duplicated.

use super::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub use pollux_cluster::NODE_NAMES as NAMES;
/// How long a takeover may take in the chaos suites (failwait 2 s).
const TAKEOVER: Duration = Duration::from_secs(20);

/// The cluster harness's [`pollux_cluster::Cluster`] on a shared directory of the test's own,
/// secured when the test process is, with its repository on the backend the test chose.
pub struct Cluster {
    inner: pollux_cluster::Cluster,
    pub shared: tempfile::TempDir,
    /// The PostgreSQL server holding the repository, when the test chose it (dropped last,
    /// after the aggregators).
    pub postgres: Option<pollux_repository::postgres::scratch::ScratchServer>,
}

impl std::ops::Deref for Cluster {
    type Target = pollux_cluster::Cluster;
    fn deref(&self) -> &pollux_cluster::Cluster {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut pollux_cluster::Cluster {
        &mut self.inner
    }
}

/// Where a cluster keeps its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn env_of(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Cluster {
    /// Starts da1 first (it becomes the active), then da2 and the proxy.
    pub fn start(failwait: &str, startwait: &str, env: [&[(&str, &str)]; 2]) -> Cluster {
        Cluster::start_configured(failwait, startwait, env, "")
    }

    /// As [`Cluster::start`], with `config` (TOML) as both aggregators' configuration file.
    pub fn start_configured(failwait: &str, startwait: &str, env: [&[(&str, &str)]; 2], config: &str) -> Cluster {
        Cluster::start_on(Backend::Sqlite, failwait, startwait, env, config).expect("SQLite is always there")
    }

    /// As [`Cluster::start_configured`], with the repository on `backend`; `None` (said
    /// loudly) when that is PostgreSQL and no PostgreSQL binaries exist.
    pub fn start_on(
        backend: Backend,
        failwait: &str,
        startwait: &str,
        env: [&[(&str, &str)]; 2],
        config: &str,
    ) -> Option<Cluster> {
        let shared = tempdir();
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(use_postgres(shared.path())?),
        };
        let mut spec = pollux_cluster::ClusterSpec::new(BIN, shared.path(), shared.path());
        spec.failwait = failwait.into();
        spec.startwait = startwait.into();
        spec.security = secured().map(|s| s.security.clone());
        spec.aggregator_toml = config.to_owned();
        spec.env = [env_of(env[0]), env_of(env[1])];
        if let pollux_repository::Location::Postgres(url) = repository_of(shared.path()) {
            spec.repository = Some(url);
        }
        let inner = pollux_cluster::Cluster::start(spec).unwrap_or_else(|e| panic!("{e}"));
        Some(Cluster { inner, shared, postgres })
    }

    /// Starts node `i` again, with `env`.
    pub fn start_node(&mut self, i: usize, env: &[(&str, &str)]) {
        self.inner.spec.env[i] = env_of(env);
        self.inner.start_node(i).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `(role, epoch)` from a node's /health, or None when it does not answer.
    pub fn role(&self, i: usize) -> Option<(String, u64)> {
        self.inner.health(i).map(|h| (h.role.name().to_owned(), h.epoch))
    }

    /// Waits until node `i` is the ready active (also as the proxy sees it); returns its epoch.
    /// On a timeout the panic carries every process's log.
    pub fn wait_active(&self, i: usize, limit: Duration) -> u64 {
        self.inner.wait_active(i, limit).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The active's index, as the proxy routes.
    pub fn active(&self) -> Option<usize> {
        self.inner.active().map(|(i, _)| i)
    }
}

/// Collectors: `senders` threads PUT DTOs through the proxy, each retried until answered 201
/// or 200, and record every acknowledged id.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
    pub sent: Arc<AtomicUsize>,
}

/// Records per DTO the load sends.
pub const LOAD_RECORDS: usize = 6;
/// Cycles a sender goes through before it starts over with new devices.
const CYCLES_PER_ROUND: i64 = 100;
/// How far apart a round's cycles are: a round spreads over eight days (see [`week_base`]), so
/// every hour, day and week it touches is long closed and its rollups are compared.
const CYCLE_STEP: i64 = 8 * 86_400 / CYCLES_PER_ROUND;

impl Load {
    pub fn start(proxy: &str, senders: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let base = week_base();
        let threads = (0..senders)
            .map(|t| {
                let (stop, sent, url) = (stop.clone(), sent.clone(), proxy.to_owned());
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut n: i64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // Cycles stay in eight closed days two weeks back: every hundred DTOs the
                        // sender starts over with new devices.
                        let (wrap, cycle) = (n / CYCLES_PER_ROUND, base + (n % CYCLES_PER_ROUND) * CYCLE_STEP);
                        let id = format!("c{t}.Interface.{n}");
                        let mut dto = interface_dto(&id, cycle, 2, LOAD_RECORDS / 2);
                        for r in dto["records"].as_array_mut().unwrap() {
                            r["device"] = format!("c{t}w{wrap}-{}", r["device"].as_str().unwrap()).into();
                        }
                        let deadline = Instant::now() + Duration::from_secs(90);
                        loop {
                            let (status, _) = put_json(&url, &dto);
                            if status == 201 || status == 200 {
                                break;
                            }
                            assert!(Instant::now() < deadline, "{id} not acknowledged within 90 s");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        acked.push(id);
                        sent.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    acked
                })
            })
            .collect();
        Load { stop, threads, sent }
    }

    /// Waits until `more` further DTOs have been acknowledged; false on a timeout.
    pub fn progressed(&self, more: usize, limit: Duration) -> bool {
        let target = self.sent.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + limit;
        while self.sent.load(Ordering::Relaxed) < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits until `more` further DTOs have been acknowledged.
    pub fn wait_progress(&self, more: usize, limit: Duration) {
        let target = self.sent.load(Ordering::Relaxed) + more;
        wait_until(limit, &format!("{more} more acknowledged DTOs"), || {
            (self.sent.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    /// Stops the senders (each finishes the DTO it holds) and returns every acknowledged id.
    pub fn stop(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads).into_iter().flat_map(|t| t.join().expect("a sender failed")).collect()
    }
}

impl Drop for Load {
    /// A test that panics stops its senders too (they would go on PUTting into a dead cluster).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The checker: every acknowledged DTO loaded exactly once, no record twice, epochs never going
/// back in load order, and rollups equal to a recomputation from raw data.
pub fn check_nothing_lost(cluster: &Cluster, acked: &BTreeSet<String>) {
    assert!(!acked.is_empty());
    let proxy = &cluster.proxy.url;
    wait_until(Duration::from_secs(60), "every acknowledged DTO loaded", || {
        let (status, body) = get(&format!("{proxy}/api/v1/status"));
        (status == 200
            && body["dto_backlog"] == 0
            && body["repository"]["loaded_dtos"].as_u64() >= Some(acked.len() as u64))
        .then_some(())
    });
    let repo = RepoCheck::open(cluster.shared.path());
    let loaded = repo.loaded_ids();
    let unique: BTreeSet<String> = loaded.iter().cloned().collect();
    assert_eq!(unique.len(), loaded.len(), "a DTO id was loaded twice");
    let lost: Vec<&String> = acked.difference(&unique).collect();
    assert!(lost.is_empty(), "acknowledged but never loaded: {lost:?}");
    let rows = repo.interface_rows();
    assert_eq!(rows.len(), unique.len() * LOAD_RECORDS, "every record of every loaded DTO");
    assert!(rows.iter().all(|r| r.3 == 1), "a record appears twice");
    assert_eq!(repo.replaced_records(), 0, "a record arrived under two DTO ids");
    assert!(repo.epochs_never_go_back(), "a DTO was loaded by an epoch after a higher epoch had begun");

    let values = repo.values_as_sent(LOAD_RECORDS / 2).unwrap_or_else(|e| panic!("a stored value differs: {e}"));
    assert_eq!(values, rows.len() * 3, "every value of every record compared");

    // Every metric of every item, hours, days and the week, and each resolution compared.
    let (from, to) = (week_base(), week_range_end(week_base()));
    let compared = wait_until(Duration::from_secs(90), "rollups equal to a recomputation from raw data", || {
        rollups_of_every_item(cluster.shared.path(), from, to)
    });
    let series = repo.interface_items().len() * 3;
    assert!(
        compared[0] >= series && compared[1] >= series && compared[2] >= series,
        "every item and metric compared at every resolution: {compared:?} for {series} series"
    );
}

/// Waits until node `i` answers /health with one of `roles`; returns it.
pub fn wait_role(cluster: &Cluster, i: usize, roles: &[&str]) -> String {
    wait_until(Duration::from_secs(20), &format!("node {i} to be one of {roles:?}"), || {
        cluster.role(i).map(|r| r.0).filter(|r| roles.contains(&r.as_str()))
    })
}

/// kill -9 of the active under load: the standby takes over, the restarted node rejoins as
/// standby, the standby refuses ingest naming the active, and nothing is lost.
pub fn kill_9_of_the_active_under_load(mut c: Cluster) {
    let first = c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(20, TAKEOVER);
    c.kill9(0);
    let second = c.wait_active(1, TAKEOVER);
    assert!(second > first);
    load.wait_progress(20, TAKEOVER);
    c.start_node(0, &[]);
    wait_role(&c, 0, &["standby"]);
    load.wait_progress(20, TAKEOVER);
    assert_eq!(c.active(), Some(1), "the returning node left the active alone");
    assert_eq!(c.role(1).unwrap().1, second);

    // The standby refuses ingest and queries, naming the active from the lease.
    let (status, body) = put_json(&c.url(0), &interface_dto("to-standby", unix_now() / 300 * 300 - 300, 1, 1));
    assert_eq!((status, body["role"].as_str()), (503, Some("standby")), "{body}");
    assert_eq!(body["active"].as_str(), Some(c.url(1).as_str()), "{body}");
    assert_eq!(get_retry_after(&format!("{}/api/v1/devices", c.url(0))), (503, Some("1".to_owned())));
    // The System Status, asked of either node, shows both.
    for i in 0..2 {
        let (_, status) = get(&format!("{}/api/v1/status", c.url(i)));
        let roles: Vec<(&str, &str)> = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["node"].as_str().unwrap(), n["role"].as_str().unwrap()))
            .collect();
        assert_eq!(roles, [("da1", "standby"), ("da2", "active")], "{status}");
        assert_eq!(status["lease"]["holder"], "da2");
        assert_eq!(status["lease"]["epoch"], second);
    }
    check_nothing_lost(&c, &load.stop());
}

/// SIGSTOP of the active past failwait: the standby takes over; SIGCONT: the old active fences
/// itself and the load goes on through the new one; nothing lost.
pub fn sigstop_of_the_active_past_failwait(c: Cluster) {
    c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(20, TAKEOVER);
    c.node(0).signal("STOP");
    let second = c.wait_active(1, TAKEOVER);
    load.wait_progress(20, TAKEOVER);
    c.node(0).signal("CONT");
    let role = wait_role(&c, 0, &["fenced", "standby"]);
    assert_ne!(role, "active");
    load.wait_progress(20, TAKEOVER);
    assert_eq!(c.active(), Some(1));
    assert_eq!(c.role(1).unwrap().1, second);
    assert!(c.node(0).log().contains("fenced"), "{}", c.node(0).log());
    check_nothing_lost(&c, &load.stop());
}

/// da1 was started with a crash point that aborts it at its first write or load: da2 takes
/// over, da1 comes back as standby, nothing lost.
pub fn crash_of_the_active(mut c: Cluster) {
    c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    c.wait_active(1, TAKEOVER);
    load.wait_progress(30, TAKEOVER);
    c.kill9(0);
    c.start_node(0, &[]);
    wait_role(&c, 0, &["standby"]);
    load.wait_progress(10, TAKEOVER);
    check_nothing_lost(&c, &load.stop());
}

/// The deposed active's write is refused, not merely absent: its loader is parked with a
/// batch in hand (crash point `loader.before_load`), the process is frozen past failwait,
/// the standby takes over and claims the repository, and the resumed loader's load is
/// rejected by the repository's epoch check.
pub fn stale_active_load_rejected(backend: Backend) {
    let dir = tempdir();
    let park = dir.path().join("park");
    let env = format!("loader.before_load=delay-while:8000:{}", park.display());
    let Some(c) = Cluster::start_on(backend, "2s", "6s", [&[("POLLUX_FAILPOINTS", &env)], &[]], "") else {
        return;
    };
    let first = c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(10, TAKEOVER);
    std::fs::write(&park, b"").unwrap();
    wait_until(Duration::from_secs(20), "the loader parked with a batch", || {
        c.node(0).log().contains("failpoint loader.before_load: delay").then_some(())
    });
    c.node(0).signal("STOP");
    let second = c.wait_active(1, TAKEOVER);
    assert!(second > first);
    load.wait_progress(10, TAKEOVER);
    std::fs::remove_file(&park).unwrap();
    c.node(0).signal("CONT");
    let log = wait_until(Duration::from_secs(30), "the stale load refused", || {
        let log = c.node(0).log();
        log.contains("load refused by the repository").then_some(log)
    });
    assert!(log.contains(&format!("the repository is at epoch {second}, this writer holds epoch {first}")), "{log}");
    wait_role(&c, 0, &["fenced", "standby"]);
    load.wait_progress(10, TAKEOVER);
    check_nothing_lost(&c, &load.stop());
}

/// Two planned switchovers (`pollux failover` through the proxy) under load, then one refused
/// by a standby; nothing lost.
pub fn switchover_under_load(c: Cluster) {
    c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    for (from, to) in [(0, 1), (1, 0)] {
        load.wait_progress(15, TAKEOVER);
        let out = failover(&c.proxy.url);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("from {}", NAMES[from])), "{stdout}");
        c.wait_active(to, TAKEOVER);
    }
    load.wait_progress(15, TAKEOVER);
    // A switchover asked of a standby is refused.
    let out = failover(&c.url(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("409"), "refused as not the active: {stderr}");
    assert_eq!(c.active(), Some(0), "the refused switchover moved nothing");
    check_nothing_lost(&c, &load.stop());
}

/// `pollux failover --url <url>`, with the admin token in a secured run.
fn failover(url: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["failover", "--url", url]);
    if let Some(s) = secured() {
        cmd.args(s.cli_args(&s.admin));
    }
    cmd.output().unwrap()
}
