//! Crash-point tests: the aggregator dies (abort, as with kill -9) at each point of the
//! durability path, is restarted, and the DTO is loaded exactly once with nothing left behind.
//!
//! Needs the crash points compiled in: `cargo test --features failpoints`.
#![cfg(feature = "failpoints")]

mod common;

use common::*;
use std::time::Duration;

/// Where the process dies, and whether the sender got its 201 before that.
struct Case {
    point: &'static str,
    acknowledged: bool,
}

fn crash_and_recover(case: Case) {
    let shared = tempdir();
    let cycle = unix_now() / 300 * 300 - 600;
    let dto = interface_dto("crash.1", cycle, 3, 4);
    let mut da = Aggregator::start(shared.path(), &[], &[("POLLUX_FAILPOINTS", &format!("{}=abort", case.point))]);
    da.wait_active();
    let (status, _) = put_json(&da.url, &dto);
    if case.acknowledged {
        assert_eq!(status, 201, "{}: acknowledged before the crash", case.point);
    } else {
        assert_eq!(status, 0, "{}: the process died before answering", case.point);
    }
    let exit = da.wait_exit(Duration::from_secs(20));
    assert!(!exit.success(), "{}: the crash point fired ({exit:?})", case.point);
    assert!(da.log().contains(&format!("failpoint {}", case.point)), "{}", da.log());
    drop(da);

    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    if !case.acknowledged {
        // The collector never got an answer, so it sends the DTO again.
        let (status, _) = put_json(&da.url, &dto);
        assert!(status == 201 || status == 200, "{}: resend answered {status}", case.point);
    }
    wait_until(Duration::from_secs(20), "the DTO loaded after the restart", || {
        (get(&format!("{}/api/v1/dto/crash.1", da.url)).1["state"] == "loaded").then_some(())
    });
    wait_until(Duration::from_secs(10), "the DTO store emptied", || dto_files(shared.path()).is_empty().then_some(()));
    let repo = RepoCheck::open(shared.path());
    assert_eq!(repo.registered("crash.1"), 1, "{}", case.point);
    let rows = repo.interface_rows();
    assert_eq!(rows.len(), 12, "{}: every record once", case.point);
    assert!(rows.iter().all(|r| r.3 == 1), "{}: a record appears twice: {rows:?}", case.point);
    // A resend after the load is still answered 200 and changes nothing.
    assert_eq!(put_json(&da.url, &dto).0, 200);
    assert_eq!(RepoCheck::open(shared.path()).interface_rows().len(), 12);
}

#[test]
fn crash_inside_the_temp_file_write() {
    crash_and_recover(Case { point: "store.mid_write", acknowledged: false });
}

#[test]
fn crash_after_fsync_before_publishing() {
    crash_and_recover(Case { point: "store.before_link", acknowledged: false });
}

#[test]
fn crash_after_the_rename_before_the_answer() {
    crash_and_recover(Case { point: "store.after_link", acknowledged: false });
}

#[test]
fn crash_inside_the_load_transaction() {
    crash_and_recover(Case { point: "repository.load.before_commit", acknowledged: true });
}

#[test]
fn crash_after_the_commit_before_the_file_is_removed() {
    crash_and_recover(Case { point: "loader.after_commit", acknowledged: true });
}

#[test]
fn temp_leftovers_are_discarded_at_start() {
    let shared = tempdir();
    let mut da = Aggregator::start(shared.path(), &[], &[("POLLUX_FAILPOINTS", "store.mid_write=abort")]);
    da.wait_active();
    let cycle = unix_now() / 300 * 300 - 600;
    assert_eq!(put_json(&da.url, &interface_dto("half", cycle, 2, 50)).0, 0);
    da.wait_exit(Duration::from_secs(20));
    let leftovers = dto_files(shared.path());
    assert!(leftovers.len() == 1 && leftovers[0].starts_with("tmp/1.half."), "{leftovers:?}");
    drop(da);
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    assert!(dto_files(shared.path()).is_empty(), "the partial file is discarded");
    assert!(da.log().contains("discarded_temp_files=1"), "{}", da.log());
    assert_eq!(get(&format!("{}/api/v1/dto/half", da.url)).0, 404, "a partial DTO is never loaded");
}

/// A resend that races the load of its first copy: its registry check comes before the load,
/// its store after the load removed the first copy's file. It must be answered 200 (the id is
/// loaded), never 201 as if new; and the DTO is loaded once.
#[test]
fn a_resend_racing_the_load_of_its_first_copy_is_answered_200() {
    let shared = tempdir();
    let (hold_load, hold_resend) = (shared.path().join("hold-load"), shared.path().join("hold-resend"));
    let points = format!(
        "loader.before_load=delay-while:30000:{},ingest.after_registry_check=delay-while:30000:{}",
        hold_load.display(),
        hold_resend.display()
    );
    let da = Aggregator::start(shared.path(), &[], &[("POLLUX_FAILPOINTS", &points)]);
    da.wait_active();
    let dto = interface_dto("race.1", unix_now() / 300 * 300 - 600, 1, 2);
    // The first copy is stored and waits, its load held.
    std::fs::write(&hold_load, b"").unwrap();
    assert_eq!(put_json(&da.url, &dto).0, 201);
    wait_until(Duration::from_secs(10), "the loader held before its load", || {
        da.log().contains("failpoint loader.before_load: delay").then_some(())
    });
    // The resend passes its registry check (not loaded yet) and is held before its store.
    std::fs::write(&hold_resend, b"").unwrap();
    let resend = {
        let (url, dto) = (da.url.clone(), dto.clone());
        std::thread::spawn(move || put_json(&url, &dto).0)
    };
    wait_until(Duration::from_secs(10), "the resend held after its registry check", || {
        da.log().contains("failpoint ingest.after_registry_check: delay").then_some(())
    });
    // The first copy is loaded and its file removed; then the resend goes on.
    std::fs::remove_file(&hold_load).unwrap();
    wait_until(Duration::from_secs(20), "the first copy loaded", || {
        (get(&format!("{}/api/v1/dto/race.1", da.url)).1["state"] == "loaded").then_some(())
    });
    std::fs::remove_file(&hold_resend).unwrap();
    assert_eq!(resend.join().unwrap(), 200, "a resend of a loaded id is not new");
    wait_until(Duration::from_secs(20), "nothing left in the store", || {
        dto_files(shared.path()).is_empty().then_some(())
    });
    assert_eq!(RepoCheck::open(shared.path()).registered("race.1"), 1);
}
