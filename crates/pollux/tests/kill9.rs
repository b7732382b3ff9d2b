//! kill -9 of the aggregator while senders keep PUTting DTOs: after restarts, every DTO that was
//! ever acknowledged is loaded exactly once, no record appears twice, and the rollups equal a
//! recomputation from the raw data.

mod common;

use common::*;
use pollux_repository::{conformance::rollups_match_raw, SqliteOptions, SqliteRepository};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const SENDERS: usize = 3;
const CYCLES_PER_SENDER: i64 = 36; // three hours of 5-minute cycles each
const KILLS: usize = 3;

/// A sender as a collector behaves: each DTO is retried until it is answered 201 or 200.
fn sender(n: usize, url: Arc<RwLock<String>>, acked: Arc<Mutex<BTreeSet<String>>>, stop: Arc<AtomicBool>) {
    // Hours long closed by now, so their rollups are due at once.
    let first = (unix_now() / 3600 - 6) * 3600;
    for c in 0..CYCLES_PER_SENDER {
        let id = format!("dc{n}.Interface.{c}");
        let mut dto = interface_dto(&id, first + c * 300, 2, 5);
        for r in dto["records"].as_array_mut().unwrap() {
            r["device"] = format!("dc{n}-{}", r["device"].as_str().unwrap()).into();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let base = url.read().unwrap().clone();
            let (status, _) = put_json(&base, &dto);
            if status == 201 || status == 200 {
                acked.lock().unwrap().insert(id.clone());
                break;
            }
            assert!(Instant::now() < deadline && !stop.load(Ordering::Relaxed), "{id} never acknowledged");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

#[test]
fn kill_9_under_load_loses_and_duplicates_nothing() {
    let shared = tempdir();
    let mut da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let url = Arc::new(RwLock::new(da.url.clone()));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || sender(n, url, acked, stop))
        })
        .collect();
    let total = SENDERS * CYCLES_PER_SENDER as usize;
    for kill in 1..=KILLS {
        let target = total * kill / (KILLS + 1);
        wait_until(Duration::from_secs(60), "senders to make progress", || {
            (acked.lock().unwrap().len() >= target).then_some(())
        });
        da.kill9();
        da = Aggregator::start(shared.path(), &[], &[]);
        da.wait_active();
        *url.write().unwrap() = da.url.clone();
    }
    for s in senders {
        s.join().expect("a sender failed");
    }
    stop.store(true, Ordering::Relaxed);
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), total);

    wait_until(Duration::from_secs(60), "every acknowledged DTO loaded", || {
        let (_, status) = get(&format!("{}/api/v1/status", da.url));
        (status["dto_backlog"] == 0 && status["repository"]["loaded_dtos"] == total as u64).then_some(())
    });
    // The closed hours, days and weeks are rolled up by the running aggregator.
    let repo = SqliteRepository::open(&shared.path().join("repository.sqlite"), SqliteOptions::default()).unwrap();
    let (from, to) = ((unix_now() / 3600 - 6) * 3600, unix_now() / 3600 * 3600);
    let compared = wait_until(Duration::from_secs(60), "rollups equal to a recomputation from raw data", || {
        let mut compared = 0;
        for n in 0..SENDERS {
            for d in 0..2 {
                for i in [0, 4] {
                    let (device, item) = (format!("dc{n}-rtr-{d}"), format!("ge-0/0/{i}"));
                    compared += rollups_match_raw(&repo, "Interface", "in_bps", &device, &item, from, to).ok()?;
                }
            }
        }
        Some(compared)
    });
    assert!(compared >= SENDERS * 4 * 3, "hourly rollups were compared ({compared})");
    drop(repo);
    assert_eq!(da.stop().code(), Some(0), "clean stop on SIGTERM");

    let repo = RepoCheck::open(shared.path());
    let loaded: Vec<String> = repo.loaded_ids();
    let unique: BTreeSet<String> = loaded.iter().cloned().collect();
    assert_eq!(unique.len(), loaded.len(), "an id is registered twice");
    assert_eq!(unique, acked, "loaded ids differ from acknowledged ids");
    let rows = repo.interface_rows();
    assert_eq!(rows.len(), total * 10, "every record of every DTO");
    assert!(rows.iter().all(|r| r.3 == 1), "a record appears twice");
    assert!(repo.epochs_never_go_back(), "a stale epoch loaded after a newer one");
    assert!(dto_files(shared.path()).is_empty());
}
