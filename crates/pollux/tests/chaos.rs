//! The chaos suite: two aggregators, a proxy and one shared directory as real processes; a load
//! of collectors PUTting through the proxy; faults injected while data flows. After each, the
//! checker verifies from the repository that every acknowledged DTO is loaded exactly once, no
//! record appears twice, rollups equal a recomputation from raw data, and no DTO was loaded by
//! an epoch after a higher epoch had begun.

mod common;

use common::cluster::{
    check_nothing_lost, kill_9_of_the_active_under_load, sigstop_of_the_active_past_failwait, switchover_under_load,
    wait_role, Cluster, Load,
};
use common::*;
use std::time::Duration;

const FAILWAIT: &str = "2s";
const STARTWAIT: &str = "6s";
const TAKEOVER: Duration = Duration::from_secs(20);

#[test]
fn kill_9_of_the_active_hands_over_and_the_restarted_node_rejoins_as_standby() {
    kill_9_of_the_active_under_load(Cluster::start(FAILWAIT, STARTWAIT, [&[], &[]]));
}

#[test]
fn sigstop_past_failwait_then_sigcont_the_old_active_fences_itself() {
    sigstop_of_the_active_past_failwait(Cluster::start(FAILWAIT, STARTWAIT, [&[], &[]]));
}

#[test]
fn kill_9_of_the_standby_changes_nothing() {
    let mut c = Cluster::start(FAILWAIT, STARTWAIT, [&[], &[]]);
    let epoch = c.wait_active(0, TAKEOVER);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(10, TAKEOVER);
    c.kill9(1);
    load.wait_progress(30, TAKEOVER);
    c.start_node(1, &[]);
    wait_role(&c, 1, &["standby"]);
    load.wait_progress(10, TAKEOVER);
    assert_eq!(c.active(), Some(0));
    assert_eq!(c.role(0).unwrap().1, epoch, "no takeover happened");
    check_nothing_lost(&c, &load.stop());
}

#[test]
fn planned_switchover_under_load_loses_nothing() {
    switchover_under_load(Cluster::start(FAILWAIT, STARTWAIT, [&[], &[]]));
}

#[cfg(feature = "failpoints")]
mod with_failpoints {
    use super::*;
    use common::cluster::{crash_of_the_active, stale_active_load_rejected, Backend};

    fn crash_of_the_active_at(point: &str) {
        let env = format!("{point}=abort");
        crash_of_the_active(Cluster::start(FAILWAIT, STARTWAIT, [&[("POLLUX_FAILPOINTS", &env)], &[]]));
    }

    /// The deposed active's write is refused, not merely absent (see
    /// [`stale_active_load_rejected`]).
    #[test]
    fn a_resumed_stale_active_has_its_load_rejected() {
        stale_active_load_rejected(Backend::Sqlite);
    }

    #[test]
    fn crash_of_the_active_inside_a_dto_write() {
        crash_of_the_active_at("store.mid_write");
    }

    #[test]
    fn crash_of_the_active_inside_a_load() {
        crash_of_the_active_at("repository.load.before_commit");
    }

    /// A new active that finds a backlog says how far it has got, in the status and the log.
    #[test]
    fn a_new_active_reports_its_recovery_of_the_backlog() {
        // da1 stores but never loads (its loader parks); da2 loads, each batch 2 s late.
        let parked = [("POLLUX_FAILPOINTS", "loader.before_load=hang")];
        let slow = [("POLLUX_FAILPOINTS", "loader.before_load=delay-while:2000:/")];
        let mut c = Cluster::start(FAILWAIT, STARTWAIT, [&parked, &slow]);
        c.wait_active(0, TAKEOVER);
        let first = (unix_now() / 300 - 40) * 300;
        for i in 0..30 {
            let dto = interface_dto(&format!("backlog.{i}"), first + i * 300, 2, 3);
            assert_eq!(put_json(&c.proxy.url, &dto).0, 201);
        }
        c.kill9(0);
        c.wait_active(1, TAKEOVER);
        let recovery = wait_until(TAKEOVER, "the status to show the recovery", || {
            let (_, status) = get(&format!("{}/api/v1/status", c.proxy.url));
            status["progress"]["recovery"].is_object().then(|| status["progress"]["recovery"].clone())
        });
        assert_eq!((recovery["total"].as_u64(), recovery["unit"].as_str()), (Some(30), Some("DTOs")), "{recovery}");
        let (_, text) = pollux(&["status", "--url", &c.proxy.url]);
        assert!(text.contains("recovery in progress:"), "{text}");
        wait_until(TAKEOVER, "the backlog to be loaded", || {
            (0..30)
                .all(|i| get(&format!("{}/api/v1/dto/backlog.{i}", c.proxy.url)).1["state"] == "loaded")
                .then_some(())
        });
        wait_until(TAKEOVER, "the recovery's end in the log", || {
            c.node(1).log().contains("recovery: done, 30 DTOs").then_some(())
        });
        let (_, status) = get(&format!("{}/api/v1/status", c.proxy.url));
        assert!(status["progress"]["recovery"].is_null(), "{status}");
    }

    #[test]
    fn a_start_that_hangs_hands_over_after_startwait() {
        let c = Cluster::start(FAILWAIT, STARTWAIT, [&[("POLLUX_FAILPOINTS", "startup.hang=hang")], &[]]);
        wait_role(&c, 0, &["starting"]);
        let load = Load::start(&c.proxy.url, 1);
        c.wait_active(1, Duration::from_secs(30));
        load.wait_progress(20, TAKEOVER);
        assert_ne!(c.role(0).unwrap().0, "active");
        // da1 yields at startwait, or da2 takes a start older than startwait: whichever first.
        assert!(c.node(0).log().contains("failpoint startup.hang"), "{}", c.node(0).log());
        check_nothing_lost(&c, &load.stop());
    }

    #[test]
    fn shared_dir_unwritable_for_a_while_acknowledges_nothing_and_loses_nothing() {
        let flags = tempdir();
        let flag = flags.path().join("unwritable");
        let env = format!("shared.write=error-while:{}", flag.display());
        let fault: &[(&str, &str)] = &[("POLLUX_FAILPOINTS", &env)];
        let c = Cluster::start(FAILWAIT, STARTWAIT, [fault, fault]);
        c.wait_active(0, TAKEOVER);
        let load = Load::start(&c.proxy.url, 2);
        load.wait_progress(20, TAKEOVER);
        std::fs::write(&flag, b"").unwrap();
        wait_until(TAKEOVER, "no active while the shared dir is unwritable", || c.active().is_none().then_some(()));
        // Collectors are told to come back: 503 with Retry-After from the proxy.
        assert_eq!(get_retry_after(&format!("{}/api/v1/devices", c.proxy.url)), (503, Some("1".to_owned())));
        let during = load.sent.load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1500)); // the fault lasts a while; nothing to wait for
        assert!(
            load.sent.load(std::sync::atomic::Ordering::Relaxed) <= during + 2,
            "DTOs were acknowledged while nothing could be stored"
        );
        std::fs::remove_file(&flag).unwrap();
        wait_until(TAKEOVER, "an active again", || c.active());
        load.wait_progress(20, TAKEOVER);
        check_nothing_lost(&c, &load.stop());
    }
}

fn pollux(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn maintenance_hands_over_and_keeps_the_node_off_the_lease() {
    let mut c = Cluster::start(FAILWAIT, STARTWAIT, [&[], &[]]);
    c.wait_active(0, TAKEOVER);
    wait_role(&c, 1, &["standby"]);
    let load = Load::start(&c.proxy.url, 2);
    load.wait_progress(10, TAKEOVER);
    // The active hands over first.
    let (ok, text) = pollux(&["maintenance", "on", "--url", &c.proxy.url]);
    assert!(ok && text.contains("da1 handed over"), "{text}");
    c.wait_active(1, TAKEOVER);
    wait_role(&c, 0, &["maintenance"]);
    load.wait_progress(10, TAKEOVER);
    // da2 is the active now, and da1 would not take over: refused without --force.
    let (ok, text) = pollux(&["maintenance", "on", "--url", &c.proxy.url]);
    assert!(!ok && text.contains("409") && text.contains("no healthy standby"), "{text}");
    // "off" through the proxy reaches da2, which is not the one in maintenance: refused,
    // naming da1, rather than a reassuring no-op.
    let (ok, text) = pollux(&["maintenance", "off", "--url", &c.proxy.url]);
    assert!(!ok && text.contains("409") && text.contains("da1 is"), "{text}");
    let acked = load.stop();
    // With da2 gone, da1 stays off the lease: no active, and the status says why.
    c.kill9(1);
    let (ok, text) = wait_until(TAKEOVER, "the status to say there is no active", || {
        let (ok, text) = pollux(&["status", "--url", &c.url(0)]);
        text.contains("no aggregator is the ready active").then_some((ok, text))
    });
    assert!(!ok, "status exits 1 with no active:\n{text}");
    assert!(text.contains("maintenance"), "da1's role is shown:\n{text}");
    // Twice failwait of silence, which any standby would have taken the lease after.
    wait_until(TAKEOVER, "the lease to be silent for twice failwait", || {
        let (_, status) = get(&format!("{}/api/v1/status", c.url(0)));
        (status["lease"]["unchanged_seconds"].as_f64()? > 4.0).then_some(())
    });
    assert_eq!(c.role(0).map(|r| r.0), Some("maintenance".to_owned()), "still off the lease");
    // Out of maintenance, it is a standby again and takes the lease da2 left.
    let (ok, text) = pollux(&["maintenance", "off", "--url", &c.url(0)]);
    assert!(ok, "{text}");
    c.wait_active(0, TAKEOVER);
    // Maintenance survives a restart: da2 put into maintenance, restarted, stays there.
    c.start_node(1, &[]);
    wait_role(&c, 1, &["standby"]);
    let (ok, text) = pollux(&["maintenance", "on", "--url", &c.proxy.url, "--node", "da2"]);
    assert!(ok, "{text}");
    wait_role(&c, 1, &["maintenance"]);
    c.kill9(1);
    c.start_node(1, &[]);
    wait_role(&c, 1, &["maintenance"]);
    check_nothing_lost(&c, &acked);
}

/// `pollux maintenance on` asked of both nodes at the same moment: the check and the flag are
/// one step for both, so one is refused and an active remains (both went into maintenance, and
/// nothing was active, in five rounds of five before).
#[test]
fn maintenance_asked_of_both_nodes_at_once_leaves_one_active() {
    let c = Cluster::start(FAILWAIT, STARTWAIT, [&[], &[]]);
    c.wait_active(0, TAKEOVER);
    wait_role(&c, 1, &["standby"]);
    let asks: Vec<_> = [c.url(0), c.url(1)]
        .into_iter()
        .map(|url| std::thread::spawn(move || pollux(&["maintenance", "on", "--url", &url])))
        .collect();
    let answers: Vec<(bool, String)> = asks.into_iter().map(|a| a.join().unwrap()).collect();
    assert_eq!(answers.iter().filter(|(ok, _)| *ok).count(), 1, "one of the two goes: {answers:?}");
    assert!(answers.iter().any(|(ok, text)| !ok && text.contains("409")), "{answers:?}");
    let active = wait_until(TAKEOVER, "an active aggregator", || c.active());
    // The other one is in maintenance from its next reading of the flags.
    wait_role(&c, 1 - active, &["maintenance"]);
    assert_eq!(c.active(), Some(active), "the one left out stays the active");
}
