//! The chaos suite with the repository on PostgreSQL: a real server (a throwaway cluster made
//! with initdb on a free loopback port), both aggregators pointing at it. The same scenarios as
//! on SQLite, plus the server itself crashing under load and a connection cut in the middle
//! of a COPY. The checker reads the repository through its API, as on SQLite.
//!
//! Without PostgreSQL binaries these tests say SKIPPED and pass; `.ci/run` installs them.

mod common;

use common::cluster::{
    check_nothing_lost, crash_of_the_active, kill_9_of_the_active_under_load, sigstop_of_the_active_past_failwait,
    switchover_under_load, Backend, Cluster, Load,
};
use common::*;
use std::time::Duration;

const FAILWAIT: &str = "2s";
const STARTWAIT: &str = "6s";
const TAKEOVER: Duration = Duration::from_secs(20);

fn cluster(env: [&[(&str, &str)]; 2]) -> Option<Cluster> {
    Cluster::start_on(Backend::Postgres, FAILWAIT, STARTWAIT, env, "")
}

#[test]
fn kill_9_of_the_active_on_postgresql() {
    let Some(c) = cluster([&[], &[]]) else { return };
    kill_9_of_the_active_under_load(c);
}

#[test]
fn sigstop_of_the_active_on_postgresql() {
    let Some(c) = cluster([&[], &[]]) else { return };
    sigstop_of_the_active_past_failwait(c);
}

#[test]
fn planned_switchover_on_postgresql() {
    let Some(c) = cluster([&[], &[]]) else { return };
    switchover_under_load(c);
}

#[cfg(feature = "failpoints")]
#[test]
fn crash_inside_the_load_transaction_on_postgresql() {
    let Some(c) = cluster([&[("POLLUX_FAILPOINTS", "repository.load.before_commit=abort")], &[]]) else { return };
    crash_of_the_active(c);
}

#[cfg(feature = "failpoints")]
#[test]
fn crash_after_the_commit_on_postgresql() {
    let Some(c) = cluster([&[("POLLUX_FAILPOINTS", "loader.after_commit=abort")], &[]]) else { return };
    crash_of_the_active(c);
}

/// The fencing proof on PostgreSQL: a deposed active resumed with a batch in hand has its load
/// refused by the epoch row it must lock.
#[cfg(feature = "failpoints")]
#[test]
fn a_resumed_stale_active_has_its_load_rejected_on_postgresql() {
    common::cluster::stale_active_load_rejected(Backend::Postgres);
}

/// The status of the active, as JSON.
fn status(c: &Cluster) -> serde_json::Value {
    get(&format!("{}/api/v1/status", c.proxy.url)).1
}

/// PostgreSQL crashes (SIGKILL of the postmaster) under load: ingest goes on (DTOs are durable
/// in the shared directory), the status says the repository is down, and once the server is
/// back the loads resume and nothing is lost.
#[test]
fn postgresql_crashes_and_restarts_under_load() {
    let Some(mut c) = cluster([&[], &[]]) else { return };
    c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(20, TAKEOVER);
    c.postgres.as_mut().unwrap().kill(nix::sys::signal::Signal::SIGKILL);
    // Acknowledgements go on while the repository is away.
    load.wait_progress(20, TAKEOVER);
    let down = wait_until(Duration::from_secs(20), "the status to say the repository is down", || {
        let s = status(&c);
        (s["repository"]["ok"] == false).then_some(s)
    });
    assert_eq!(down["repository"]["backend"], "postgresql", "{down}");
    assert!(down["repository"]["error"].as_str().unwrap_or("").contains("unavailable"), "{down}");
    assert!(c.node(0).log().contains("repository"), "{}", c.node(0).log());
    c.postgres.as_mut().unwrap().restart().unwrap();
    wait_until(Duration::from_secs(30), "the repository to be back in the status", || {
        (status(&c)["repository"]["ok"] == true).then_some(())
    });
    load.wait_progress(20, TAKEOVER);
    assert_eq!(c.active(), Some(0), "a repository outage is not a reason to fail over");
    check_nothing_lost(&c, &load.stop());
}

/// The writer's connection is cut (pg_terminate_backend) while it streams a COPY: that load
/// fails as something to retry, the loader reconnects, and nothing is lost or loaded twice.
#[test]
fn a_connection_cut_in_the_middle_of_a_copy() {
    let Some(c) = cluster([&[], &[]]) else { return };
    c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(10, TAKEOVER);
    let server = c.postgres.as_ref().unwrap();
    wait_until(Duration::from_secs(60), "a COPY of the loader to cut", || {
        let cut = server
            .admin_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'pollux' AND query LIKE 'COPY%' AND state = 'active'",
            )
            .unwrap();
        cut.iter().any(|t| t.as_deref() == Some("t")).then_some(())
    });
    load.wait_progress(20, TAKEOVER);
    wait_until(Duration::from_secs(30), "the loader to say the repository was unavailable", || {
        c.node(0).log().contains("repository unavailable").then_some(())
    });
    check_nothing_lost(&c, &load.stop());
}

/// While PostgreSQL is away, ingest cannot ask the registry, so a resend of a loaded id with
/// other content is acknowledged (201) instead of refused (409). Once the server is back, the
/// loader finds the id registered with another fingerprint and quarantines the file: the
/// loaded data stays as it was, and the other content is kept for the operator, not dropped.
#[test]
fn other_content_acknowledged_during_an_outage_is_quarantined_not_dropped() {
    let shared = tempdir();
    let Some(mut server) = use_postgres(shared.path()) else { return };
    let node = Aggregator::start(shared.path(), &["--failwait", "2s", "--startwait", "6s"], &[]);
    node.wait_active();
    let cycle = unix_now() / 300 * 300 - 600;
    let first = interface_dto("twice", cycle, 1, 2);
    assert_eq!(put_json(&node.url, &first).0, 201);
    wait_until(Duration::from_secs(20), "the first content loaded", || {
        (get(&format!("{}/api/v1/dto/twice", node.url)).1["state"] == "loaded").then_some(())
    });
    server.kill(nix::sys::signal::Signal::SIGKILL);
    let mut other = first.clone();
    other["records"][0]["values"]["in_bps"] = serde_json::json!(1.5);
    assert_eq!(put_json(&node.url, &other).0, 201, "acknowledged without the registry");
    server.restart().unwrap();
    let quarantined = shared.path().join("dto/quarantine/twice.dto");
    wait_until(Duration::from_secs(30), "the other content quarantined", || quarantined.exists().then_some(()));
    assert!(node.log().contains("already loaded with other content"), "{}", node.log());
    assert_eq!(RepoCheck::open(shared.path()).values_as_sent(2).unwrap(), 2 * 3, "the loaded content is untouched");
    let kept = std::fs::read(&quarantined).unwrap();
    assert!(!kept.is_empty());
}

/// PostgreSQL frozen (SIGSTOP of the server and its backends: connections stay open, the
/// kernel acknowledges, nothing answers): ingest waits a second for the registry at most, then
/// stops asking it, so acknowledgements go on, the status says the server is not answering, and once the
/// server resumes every acknowledged DTO is loaded.
#[test]
fn a_frozen_postgresql_does_not_stop_acknowledgements() {
    let shared = tempdir();
    let Some(server) = use_postgres(shared.path()) else { return };
    let node = Aggregator::start(shared.path(), &["--failwait", "2s", "--startwait", "6s"], &[]);
    node.wait_active();
    let base = unix_now() / 300 * 300 - 3600;
    let dto = move |n: i64| interface_dto(&format!("frozen.{n}"), base + n * 300, 1, 2);
    assert_eq!(put_json(&node.url, &dto(0)).0, 201);
    wait_until(Duration::from_secs(20), "the first DTO loaded", || {
        (get(&format!("{}/api/v1/dto/frozen.0", node.url)).1["state"] == "loaded").then_some(())
    });
    server.signal_all(nix::sys::signal::Signal::SIGSTOP);
    // Each PUT waits a second for the registry at most, then none once the stall is seen.
    let mut acked = Vec::new();
    for n in 1..=8 {
        let started = std::time::Instant::now();
        assert_eq!(put_json(&node.url, &dto(n)).0, 201, "frozen.{n}");
        assert!(started.elapsed() < Duration::from_secs(5), "frozen.{n} took {:?}", started.elapsed());
        acked.push(n);
    }
    let (_, status) = get(&format!("{}/api/v1/status", node.url));
    assert_eq!(status["repository"]["ok"], false, "{status}");
    assert!(status["repository"]["error"].as_str().unwrap_or("").contains("not answered"), "{status}");
    server.signal_all(nix::sys::signal::Signal::SIGCONT);
    let dtos = acked.len() + 1;
    for n in acked {
        wait_until(Duration::from_secs(30), &format!("frozen.{n} loaded"), || {
            (get(&format!("{}/api/v1/dto/frozen.{n}", node.url)).1["state"] == "loaded").then_some(())
        });
    }
    // Every value of every acknowledged DTO, as sent: 2 records x 3 metrics each.
    assert_eq!(RepoCheck::open(shared.path()).values_as_sent(2).unwrap(), dtos * 6);
}
