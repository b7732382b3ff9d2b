//! The soak: random faults against a loaded fault-tolerant environment for a while, then the
//! checker. Not part of the regular run (it is `#[ignore]`d); run it with
//!
//! ```text
//! POLLUX_SOAK_SECONDS=600 cargo test --release -p pollux --features failpoints --test soak -- --ignored --nocapture
//! ```
//!
//! It prints the faults it injected and the DTOs acknowledged, lost and duplicated.

mod common;

use common::cluster::{check_nothing_lost, Cluster, Load};
use common::*;
use std::time::{Duration, Instant};

#[test]
#[ignore = "long: run explicitly (see the file's documentation)"]
fn soak_with_random_faults() {
    let seconds: u64 = std::env::var("POLLUX_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let mut c = Cluster::start("2s", "6s", [&[], &[]]);
    c.wait_active(0, Duration::from_secs(20));
    let load = Load::start(&c.proxy.url, 2);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut seed = std::env::var("POLLUX_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(unix_now() as u64) | 1;
    // The faults follow from the seed (their timing does not): print it, so a run can be repeated.
    println!("soak: seed {seed} (POLLUX_SOAK_SEED={seed} repeats these faults)");
    let mut faults: std::collections::BTreeMap<String, usize> = Default::default();
    while Instant::now() < end {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if !load.progressed(10, Duration::from_secs(60)) {
            let probe = interface_dto("probe.1", (unix_now() / 300 - 1) * 300, 1, 1);
            let diagnosis = format!(
                "proxy: {:?}\nda1: {:?}\nda2: {:?}\nPUT via proxy: {:?}\nPUT to da1: {:?}\nPUT to da2: {:?}",
                get(&format!("{}/proxy/status", c.proxy.url)),
                get(&format!("{}/health", c.url(0))),
                get(&format!("{}/health", c.url(1))),
                put_json(&c.proxy.url, &probe),
                put_json(&c.url(0), &probe),
                put_json(&c.url(1), &probe),
            );
            panic!("the load made no progress for 60 s after {faults:?}\n{diagnosis}\n{}", c.logs());
        }
        let active = wait_until(Duration::from_secs(60), "an active", || c.active());
        let standby = 1 - active;
        let fault: String = match seed % 6 {
            0 => {
                c.kill9(active);
                c.wait_active(standby, Duration::from_secs(30));
                c.start_node(active, &[]);
                "kill -9 of the active".into()
            }
            1 => {
                c.node(active).signal("STOP");
                c.wait_active(standby, Duration::from_secs(30));
                c.node(active).signal("CONT");
                "SIGSTOP past failwait of the active".into()
            }
            2 => {
                c.kill9(standby);
                load.wait_progress(5, Duration::from_secs(30));
                c.start_node(standby, &[]);
                "kill -9 of the standby".into()
            }
            3 => {
                let out = std::process::Command::new(BIN).args(["failover", "--url", &c.proxy.url]).output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                c.wait_active(standby, Duration::from_secs(30));
                "planned switchover".into()
            }
            4 => {
                // The standby comes back with a crash point armed, is handed the lease, and
                // dies at that point of the durability path with the load running.
                let points = [
                    "store.mid_write",
                    "store.before_link",
                    "store.after_link",
                    "repository.load.before_commit",
                    "loader.after_commit",
                ];
                let point = points[(seed >> 8) as usize % points.len()];
                c.kill9(standby);
                c.start_node(standby, &[("POLLUX_FAILPOINTS", &format!("{point}=abort"))]);
                wait_until(Duration::from_secs(30), "the armed node as standby", || {
                    (c.role(standby).is_some_and(|r| r.0 == "standby")).then_some(())
                });
                // The switchover itself may report failure: the node it hands over to dies.
                let _ = std::process::Command::new(BIN).args(["failover", "--url", &c.proxy.url]).output();
                c.node_mut(standby).wait_exit(Duration::from_secs(60));
                c.wait_active(active, Duration::from_secs(30));
                c.start_node(standby, &[]);
                format!("crash at {point}")
            }
            _ => {
                c.node(active).signal("TERM");
                c.wait_active(standby, Duration::from_secs(30));
                c.kill9(active);
                c.start_node(active, &[]);
                "clean stop of the active".into()
            }
        };
        eprintln!("soak: {fault}");
        *faults.entry(fault).or_default() += 1;
        // Let the returning node settle as standby before the next fault.
        wait_until(Duration::from_secs(30), "both nodes up", || {
            (c.role(0).is_some() && c.role(1).is_some()).then_some(())
        });
    }
    let acked = load.stop();
    check_nothing_lost(&c, &acked);
    let repo = RepoCheck::open(c.shared.path());
    let loaded = repo.loaded_ids();
    let duplicated = loaded.len() - loaded.iter().collect::<std::collections::BTreeSet<_>>().len();
    let lost = acked.iter().filter(|id| repo.registered(id) == 0).count();
    println!("soak: {seconds} s, faults injected: {}", faults.values().sum::<usize>());
    for (fault, n) in &faults {
        println!("  {n:>4} x {fault}");
    }
    println!("  DTOs acknowledged {}, lost {lost}, duplicated {duplicated}", acked.len());
}
