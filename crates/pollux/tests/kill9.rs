//! kill -9 of the aggregator while senders keep PUTting DTOs: after restarts, every DTO that was
//! ever acknowledged is loaded exactly once, every stored value is the one sent (bit for bit),
//! and the hourly, daily and weekly rollups of every metric of every item equal a recomputation
//! from the raw data.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const SENDERS: usize = 3;
const CYCLES_PER_SENDER: i64 = 36; // three hours of 5-minute cycles each
const KILLS: usize = 3;

/// A sender as a collector behaves: each DTO is retried until it is answered 201 or 200.
fn sender(n: usize, url: Arc<RwLock<String>>, acked: Arc<Mutex<BTreeSet<String>>>, stop: Arc<AtomicBool>) {
    // Eight days long closed, spread so that every hour, day and the week have data to roll up.
    let first = week_base();
    for c in 0..CYCLES_PER_SENDER {
        let id = format!("dc{n}.Interface.{c}");
        let mut dto = interface_dto(&id, first + c * (8 * 86_400 / CYCLES_PER_SENDER), 2, 5);
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
    // The closed hours, days and the week are rolled up by the running aggregator: every metric
    // of every item, each resolution compared.
    let (from, to) = (week_base(), week_range_end(week_base()));
    let compared = wait_until(Duration::from_secs(90), "rollups equal to a recomputation from raw data", || {
        rollups_of_every_item(shared.path(), from, to)
    });
    let series = SENDERS * 2 * 5 * 3;
    assert!(
        compared[0] >= series * 2 && compared[1] >= series * 2 && compared[2] >= series,
        "every item and metric at every resolution: {compared:?} for {series} series"
    );
    assert_eq!(da.stop().code(), Some(0), "clean stop on SIGTERM");

    let repo = RepoCheck::open(shared.path());
    let loaded: Vec<String> = repo.loaded_ids();
    let unique: BTreeSet<String> = loaded.iter().cloned().collect();
    assert_eq!(unique.len(), loaded.len(), "an id is registered twice");
    assert_eq!(unique, acked, "loaded ids differ from acknowledged ids");
    let rows = repo.interface_rows();
    assert_eq!(rows.len(), total * 10, "every record of every DTO");
    assert!(rows.iter().all(|r| r.3 == 1), "a record appears twice");
    assert_eq!(repo.replaced_records(), 0, "a record arrived under two DTO ids");
    assert!(repo.epochs_never_go_back(), "a stale epoch loaded after a newer one");
    let values = repo.values_as_sent(5).unwrap_or_else(|e| panic!("a stored value differs: {e}"));
    assert_eq!(values, total * 10 * 3, "every value compared, bit for bit");
    assert!(dto_files(shared.path()).is_empty());
}
