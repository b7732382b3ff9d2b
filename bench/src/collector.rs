//! The collector's benchmarks, against `pollux simulate`:
//!
//! 1. **Items polled per second** by one collector over `rate_devices` devices × 10 interfaces
//!    (the Interface family: a dozen ifTable/ifXTable columns per interface, plus sysUpTime),
//!    beside net-snmp's `snmpbulkwalk` walking ifXTable and ifTable of the same devices, run in
//!    parallel (the best of 4 and 16 processes at once). An item is one interface.
//! 2. **A 60-second cycle of 100,000 interfaces**: 10,000 devices × 10 interfaces, every
//!    built-in family, DTOs sent to a real aggregator. It reports the cycle's duration, the CPU
//!    the collector spends per cycle (from /proc; cores = CPU seconds / 60), and its resident
//!    memory per polled item. The cycle is shortened to 30 s to keep the benchmark short; the
//!    work per cycle is the same.
//! 3. **Memory of the sessions alone**: the same devices polled for Availability only.

use crate::util::{agent, get_text, median, metric, spawn, start_aggregator, wait_for, Proc};
use anyhow::{bail, Context};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIRST_PORT: u16 = 16100;
/// The simulator's address: a loopback address of its own, so its 10,000 ports never collide
/// with the collector tests' simulators and agents (127.0.0.1, ports 21000-22699).
const SIM_HOST: &str = "127.0.0.9";
const INTERFACES: u32 = 10;

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(") ").context("stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Resident memory of a process in bytes, from /proc/<pid>/status.
fn rss_bytes(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).context("VmRSS")?;
    Ok(kb.trim().trim_end_matches("kB").trim().parse::<f64>()? * 1024.0)
}

/// The first `devices` devices of a simulator inventory, limited to `families` when given.
fn inventory(full: &str, devices: usize, families: Option<&str>) -> String {
    let mut out = String::new();
    for block in full.split("[[device]]").skip(1).take(devices) {
        out.push_str("[[device]]");
        out.push_str(block.trim_end());
        if let Some(f) = families {
            out.push_str(&format!("\nfamilies = {f}"));
        }
        out.push_str("\n\n");
    }
    out
}

fn start_collector(dir: &Path, aggregator: &str, inventory: &Path, interval: &str) -> anyhow::Result<(Proc, String)> {
    let config = dir.join("collector.toml");
    std::fs::write(&config, "max_concurrent_polls = 256\n")?;
    let args: Vec<String> = [
        "collector",
        "--config",
        &config.display().to_string(),
        "--id",
        "bench",
        "--aggregator",
        aggregator,
        "--inventory",
        &inventory.display().to_string(),
        "--spool-dir",
        &dir.join("spool").display().to_string(),
        "--interval",
        interval,
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    spawn(&args)
}

/// Waits for `cycles` more completed cycles, returning each one's duration in seconds.
fn cycle_times(metrics_url: &str, cycles: usize, limit: Duration) -> anyhow::Result<Vec<f64>> {
    let agent = agent();
    let read = |name: &str| -> anyhow::Result<f64> {
        metric(&get_text(&agent, metrics_url)?, name).with_context(|| format!("{name} in {metrics_url}"))
    };
    let mut seen = read("pollux_collector_cycles_total")?;
    let mut times = Vec::new();
    let deadline = Instant::now() + limit;
    while times.len() < cycles {
        if Instant::now() > deadline {
            bail!("timed out waiting for collector cycles");
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = read("pollux_collector_cycles_total")?;
        if now > seen {
            seen = now;
            times.push(read("pollux_collector_last_cycle_seconds")?);
        }
    }
    Ok(times)
}

/// Walks every device's ifXTable and ifTable with `snmpbulkwalk`, `parallel` processes at a
/// time; returns the seconds it took.
fn snmpbulkwalk_all(devices: usize, parallel: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut running: Vec<std::process::Child> = Vec::new();
    let mut jobs = (0..devices).flat_map(|d| ["1.3.6.1.2.1.31.1.1", "1.3.6.1.2.1.2.2"].map(move |t| (d, t)));
    loop {
        while running.len() < parallel {
            let Some((device, table)) = jobs.next() else { break };
            let child = Command::new("snmpbulkwalk")
                .args(["-v2c", "-c", "public", "-Cr25", "-On", "-t", "2", "-r", "1"])
                .arg(format!("{SIM_HOST}:{}", FIRST_PORT as usize + device))
                .arg(table)
                .env("MIBS", "")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("snmpbulkwalk (Debian package snmp)")?;
            running.push(child);
        }
        if running.is_empty() {
            break;
        }
        let mut finished = false;
        for child in running.iter_mut() {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("snmpbulkwalk failed: {status}");
                }
                finished = true;
            }
        }
        if finished {
            running.retain_mut(|c| c.try_wait().ok().flatten().is_none());
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(rate_devices: usize, big_devices: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared)?;
    let full_inventory = dir.path().join("simulated.toml");
    let sim_args: Vec<String> = [
        "simulate",
        "--devices",
        &big_devices.to_string(),
        "--interfaces",
        &INTERFACES.to_string(),
        "--listen",
        &format!("{SIM_HOST}:{FIRST_PORT}"),
        "--inventory-out",
        &full_inventory.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sim_started = Instant::now();
    let (sim, _) = spawn(&sim_args)?;
    let sim_pid = sim.pid();
    println!(
        "collector: simulator with {big_devices} devices x {INTERFACES} interfaces up in {:.1} s, RSS {:.0} MB",
        sim_started.elapsed().as_secs_f64(),
        rss_bytes(sim_pid)? / 1e6
    );
    let (_aggregator, aggregator_url) = start_aggregator(&shared)?;
    let full = std::fs::read_to_string(&full_inventory)?;

    // 1. Items polled per second, collector vs snmpbulkwalk, over the same devices.
    let items = (rate_devices as u32 * INTERFACES) as f64;
    let rate_inventory = dir.path().join("rate.toml");
    std::fs::write(&rate_inventory, inventory(&full, rate_devices, Some("[\"Interface\"]")))?;
    let rate_dir = dir.path().join("rate");
    std::fs::create_dir_all(&rate_dir)?;
    let (collector, metrics_url) = start_collector(&rate_dir, &aggregator_url, &rate_inventory, "5s")?;
    let metrics_url = format!("{metrics_url}/metrics");
    // The first cycle opens the sessions; time the ones after it.
    let mut times = cycle_times(&metrics_url, 4, Duration::from_secs(120))?;
    drop(collector);
    let mut collector_rates: Vec<f64> = times.drain(1..).map(|t| items / t).collect();
    let collector_rate = median(&mut collector_rates);
    let mut best_reference = 0.0f64;
    for parallel in [4, 16] {
        let mut rates: Vec<f64> =
            (0..3).map(|_| snmpbulkwalk_all(rate_devices, parallel).map(|s| items / s)).collect::<Result<_, _>>()?;
        let rate = median(&mut rates);
        println!(
            "collector: snmpbulkwalk x{parallel} in parallel: {rate:.0} interfaces/s (ifXTable + ifTable per device)"
        );
        best_reference = best_reference.max(rate);
    }
    println!(
        "collector: items polled/s over {rate_devices} devices x {INTERFACES} interfaces: pollux {collector_rate:.0} \
         interfaces/s (median of 3 cycles), snmpbulkwalk best {best_reference:.0}/s, ratio {:.1}x (target >= 1.0x)",
        collector_rate / best_reference
    );

    // 2. 100,000 interfaces per cycle, all built-in families, into the aggregator.
    let big_inventory = dir.path().join("big.toml");
    std::fs::write(&big_inventory, inventory(&full, big_devices, None))?;
    let big_dir = dir.path().join("big");
    std::fs::create_dir_all(&big_dir)?;
    let (collector, metrics_url) = start_collector(&big_dir, &aggregator_url, &big_inventory, "30s")?;
    let pid = collector.pid();
    let metrics_url = format!("{metrics_url}/metrics");
    // Skip the first cycle (sessions, and no rates yet), then measure over the next two.
    cycle_times(&metrics_url, 1, Duration::from_secs(120))?;
    let (cpu0, sim_cpu0) = (cpu_seconds(pid)?, cpu_seconds(sim_pid)?);
    let mut times = cycle_times(&metrics_url, 2, Duration::from_secs(120))?;
    let cpu_per_cycle = (cpu_seconds(pid)? - cpu0) / 2.0;
    let sim_cpu_per_cycle = (cpu_seconds(sim_pid)? - sim_cpu0) / 2.0;
    let rss = rss_bytes(pid)?;
    let page = get_text(&agent(), &metrics_url)?;
    let unreachable = metric(&page, "pollux_collector_polls_unreachable_total").unwrap_or(f64::NAN);
    let records = metric(&page, "pollux_collector_records_total").unwrap_or(f64::NAN);
    wait_for(Duration::from_secs(120), || {
        Ok(metric(&get_text(&agent(), &metrics_url)?, "pollux_collector_spool_dtos") == Some(0.0))
    })?;
    let interfaces = big_devices as f64 * f64::from(INTERFACES);
    // Items: interfaces, 2 CPUs, RAM and the device itself per device.
    let polled_items = interfaces + big_devices as f64 * 4.0;
    println!(
        "collector: {interfaces:.0} interfaces ({big_devices} devices, all built-in families): cycle {:.1} s (median of 2), \
         collector CPU {cpu_per_cycle:.1} s per cycle = {:.2} cores at a 60 s cycle (target < 1), simulator CPU \
         {sim_cpu_per_cycle:.1} s per cycle; collector RSS {:.0} MB = {:.0} bytes per polled item; {records:.0} records \
         so far, {unreachable:.0} unreachable polls",
        median(&mut times),
        cpu_per_cycle / 60.0,
        rss / 1e6,
        rss / polled_items
    );
    drop(collector);

    // 3. What the sessions alone cost: the same devices, Availability only (one GET each).
    let sessions_inventory = dir.path().join("sessions.toml");
    std::fs::write(&sessions_inventory, inventory(&full, big_devices, Some("[\"Availability\"]")))?;
    let sessions_dir = dir.path().join("sessions");
    std::fs::create_dir_all(&sessions_dir)?;
    let (collector, metrics_url) = start_collector(&sessions_dir, &aggregator_url, &sessions_inventory, "5s")?;
    cycle_times(&format!("{metrics_url}/metrics"), 2, Duration::from_secs(120))?;
    let sessions_rss = rss_bytes(collector.pid())?;
    println!(
        "collector: the same {big_devices} devices, Availability only: RSS {:.0} MB = {:.1} KB per device \
         (SNMP sessions and the process itself); the rest of the full run's RSS is {:.0} bytes per other item",
        sessions_rss / 1e6,
        sessions_rss / big_devices as f64 / 1e3,
        (rss - sessions_rss) / (polled_items - big_devices as f64)
    );
    drop(collector);
    drop(sim);
    Ok(())
}
