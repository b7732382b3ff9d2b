//! What thresholds cost.
//!
//! - Loader throughput through the repository API with 1,000 rules over 100,000 interfaces,
//!   against the same DTOs with no rules, in the same run. Every interface is in the scope of
//!   exactly one rule (rule `i` covers devices `rtr-{i:04}*`, 100 interfaces), so each record is
//!   evaluated once; values are uniform, so about 1 % of evaluations violate and events open and
//!   clear every cycle: more churn than a real network has.
//! - The time from the 201 of a violating DTO to the webhook's POST, on a real aggregator, with
//!   the webhook receiver in this process.

use crate::ingest::{make_dto, METRICS};
use crate::util::{self, agent, median, percentile, spawn, wait_for, Rng};
use anyhow::bail;
use pollux_model::codec::{json, JSON_CONTENT_TYPE};
use pollux_model::{Catalog, Dto, Record};
use pollux_repository::{Repository, RuleSpec, SqliteOptions, SqliteRepository};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ITEMS: usize = 100_000;
const INTERFACES: usize = 10;
const RECORDS_PER_DTO: usize = 10_000;
const RULES: usize = 1_000;

pub fn run(cycles: usize, runs: usize, latency_runs: usize) -> anyhow::Result<()> {
    throughput(cycles, runs)?;
    latency(latency_runs)
}

/// The 1,000 rules: one per block of ten devices, on four metrics in turn, each at the 99th
/// percentile of its metric's values (or, `calm`, above every value); a third open after one
/// poll, a third after two consecutive, a third after 2 of the last 4.
fn rules(calm: bool) -> Vec<RuleSpec> {
    (0..RULES)
        .map(|i| {
            let metric = i % 4;
            // make_dto draws metric m uniformly in [0, 1e9 / (m + 1)).
            let p99 = if calm { 1e18 } else { 0.99 * 1e9 / (metric + 1) as f64 };
            let (for_polls, window) = match i % 3 {
                0 => (1, None),
                1 => (2, None),
                _ => (2, Some(4)),
            };
            serde_json::from_value(serde_json::json!({
                "family": "Interface", "metric": METRICS[metric], "op": ">", "value": p99,
                "for_polls": for_polls, "window_polls": window, "severity": "major",
                "device": format!("rtr-{i:04}*"),
            }))
            .expect("a valid rule")
        })
        .collect()
}

/// `cycles` cycles of the 100,000-interface network, ten DTOs a cycle.
fn network(cycles: usize) -> Vec<Vec<Dto>> {
    let mut rng = Rng::new(5);
    let devices_per_dto = RECORDS_PER_DTO / INTERFACES;
    let first = (util::unix_now() / 300 - cycles as i64 - 1) * 300;
    (0..cycles)
        .map(|c| {
            (0..ITEMS / RECORDS_PER_DTO)
                .map(|b| {
                    let cycle = first + c as i64 * 300;
                    let mut dto = make_dto(&format!("a.{c}.{b}"), cycle, devices_per_dto, INTERFACES, &mut rng);
                    for (n, r) in dto.records.iter_mut().enumerate() {
                        r.device = format!("rtr-{:05}", b * devices_per_dto + n / INTERFACES);
                    }
                    dto
                })
                .collect()
        })
        .collect()
}

/// CPU time (user and system) this thread has used.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let time = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

/// A fresh repository with `rules`.
fn repository(dir: &std::path::Path, rules: &[RuleSpec]) -> anyhow::Result<SqliteRepository> {
    let repo = SqliteRepository::open(&dir.join("repository.sqlite"), SqliteOptions::default())?;
    repo.claim_epoch(1, "bench")?;
    repo.ensure_family(1, Catalog::builtin().get("Interface").unwrap())?;
    for rule in rules {
        repo.create_rule(1, rule)?;
    }
    Ok(repo)
}

/// The same cycles are loaded into three repositories (no rules, rules never violated, rules
/// violated by 1 % of polls), one cycle into each in turn, a cycle per transaction, so the three
/// loads of a cycle run within a second of each other and the machine's drift cancels out in
/// their ratio. The first cycle, which creates the items, is untimed.
fn throughput(cycles: usize, runs: usize) -> anyhow::Result<()> {
    let cycles = cycles.max(2);
    println!(
        "thresholds: loading {ITEMS} interfaces x 8 metrics a cycle (one transaction) through the repository API, \
         {RULES} rules (each record evaluated once) against none; {} cycles each, medians of per-cycle \
         rates and of per-cycle ratios (wall time with fsync, and the loading thread's CPU time)",
        runs * (cycles - 1)
    );
    let network = network(cycles);
    let modes = [Vec::new(), rules(true), rules(false)];
    // [mode] -> per timed cycle (wall, cpu) values per second.
    let mut rates: [Vec<(f64, f64)>; 3] = Default::default();
    let mut transitions = 0;
    for run in 0..runs {
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
        let repos: Vec<SqliteRepository> =
            (0..3).map(|m| repository(dirs[m].path(), &modes[m])).collect::<anyhow::Result<_>>()?;
        for (c, batch) in network.iter().enumerate() {
            for m in (0..3).map(|k| (k + run + c) % 3) {
                let (wall, cpu) = (Instant::now(), thread_cpu());
                let report = repos[m].load(1, batch)?;
                if m == 2 {
                    transitions += report.transitions;
                }
                if c > 0 {
                    let values = report.values as f64;
                    rates[m].push((values / wall.elapsed().as_secs_f64(), values / (thread_cpu() - cpu).as_secs_f64()));
                }
            }
        }
    }
    let column = |m: usize, cpu: bool| -> Vec<f64> { rates[m].iter().map(|r| if cpu { r.1 } else { r.0 }).collect() };
    let cost = |m: usize, cpu: bool| -> f64 {
        let mut ratios: Vec<f64> =
            column(m, cpu).iter().zip(column(0, cpu)).map(|(with, without)| 1.0 - with / without).collect();
        median(&mut ratios) * 100.0
    };
    println!(
        "  {:<32} {:>7.2} M values/s wall {:>7.2} M values/s CPU",
        "no rules (reference)",
        median(&mut column(0, false)) / 1e6,
        median(&mut column(0, true)) / 1e6
    );
    for (label, m) in [("rules, no poll violating", 1), ("rules, 1 % of polls violating", 2)] {
        println!(
            "  {label:<32} {:>7.2} M values/s wall {:>7.2} M values/s CPU   cost {:>5.1} % wall, {:>5.1} % CPU (target < 10 %)",
            median(&mut column(m, false)) / 1e6,
            median(&mut column(m, true)) / 1e6,
            cost(m, false),
            cost(m, true)
        );
    }
    println!("  (with 1 % violating: {} events opened or cleared per cycle)", transitions / (runs * cycles));
    Ok(())
}

/// Arrival times of the webhook's "open" notifications, by item.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn receiver() -> anyhow::Result<(String, Arrivals)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let arrivals: Arrivals = Arc::default();
    let sink = arrivals.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let now = Instant::now();
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    for n in body["notifications"].as_array().into_iter().flatten() {
                        if n["transition"] == "open" {
                            let item = n["event"]["item"].as_str().unwrap_or("").to_owned();
                            sink.lock().unwrap().insert(item, now);
                        }
                    }
                    if out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, arrivals))
}

fn latency(runs: usize) -> anyhow::Result<()> {
    let (hook, arrivals) = receiver()?;
    let shared = tempfile::tempdir()?;
    let config = shared.path().join("aggregator.toml");
    std::fs::write(&config, format!("[[notify.webhook]]\nurl = \"{hook}\"\n"))?;
    let args: Vec<String> =
        ["aggregator", "--listen", "127.0.0.1:0", "--node-id", "bench", "--config", &config.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .chain(["--shared-dir".to_owned(), shared.path().join("shared").display().to_string()])
            .collect();
    std::fs::create_dir_all(shared.path().join("shared"))?;
    let (_proc, url) = spawn(&args)?;
    wait_for(Duration::from_secs(120), || Ok(util::get_status(&format!("{url}/health/active"))? == 200))?;
    let agent = agent();
    let rule = serde_json::json!({"family": "Interface", "metric": "in_bps", "op": ">", "value": 1e12});
    let r = agent.post(&format!("{url}/api/v1/thresholds")).send_json(&rule)?;
    if r.status() != 201 {
        bail!("creating the rule: {}", r.status());
    }
    let cycle = (util::unix_now() / 300 - 1) * 300;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let item = format!("if-{i}");
        let dto = Dto {
            id: format!("lat.{i}"),
            collector: "bench".into(),
            family: "Interface".into(),
            cycle,
            interval: 300,
            metrics: vec!["in_bps".into()],
            records: vec![Record { device: "lat".into(), item: item.clone(), ts: cycle + 1, values: vec![Some(2e12)] }],
        };
        let r = agent
            .put(&format!("{url}/api/v1/dto/{}", dto.id))
            .header("content-type", JSON_CONTENT_TYPE)
            .send(&json::encode(&dto)[..])?;
        let acked = Instant::now();
        if r.status() != 201 {
            bail!("PUT {}: {}", dto.id, r.status());
        }
        wait_for(Duration::from_secs(30), || Ok(arrivals.lock().unwrap().contains_key(&item)))?;
        let arrived = arrivals.lock().unwrap()[&item];
        times.push(arrived.saturating_duration_since(acked).as_secs_f64() * 1e3);
    }
    println!("thresholds: from the 201 of a violating DTO to the webhook's POST ({runs} events, one at a time):");
    println!(
        "  p50 {:>7.1} ms   p90 {:>7.1} ms   max {:>7.1} ms   (target p50 < 1000 ms)",
        percentile(&mut times, 50.0),
        percentile(&mut times, 90.0),
        percentile(&mut times, 100.0)
    );
    Ok(())
}
