//! Black-box tests of the collector: against the simulator and against a real net-snmp
//! `snmpd`, end to end into an aggregator, with the aggregator and the collector killed.
//!
//! Ports: each test has its own range below the ephemeral ports (21000-22699); ranges must
//! not overlap, since the tests of this file run in parallel.

mod common;

use common::cluster::Cluster;
use common::snmp::{
    collector, collector_as, ipv6_loopback, metric, pollux, simulator, snmpget, workspace, Process, Snmpd, V3_AUTH,
    V3_PRIV, V3_USER,
};
use common::{get, tempdir, unix_now, wait_until, Aggregator, RepoCheck};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const INTERVAL: i64 = 2;

fn aggregator_at(shared: &Path, port: u16) -> Aggregator {
    aggregator_at_with(shared, port, &[])
}

fn aggregator_at_with(shared: &Path, port: u16, env: &[(&str, &str)]) -> Aggregator {
    let args: Vec<String> = [
        "aggregator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node-id",
        "da-test",
        "--shared-dir",
        &shared.display().to_string(),
        "--failwait",
        "4s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let aggregator = Aggregator::spawn(&args, env);
    aggregator.wait_active();
    aggregator
}

/// Per device, the cycles the repository holds for `family` (any item), each with its count.
fn cycles_by_device(shared: &Path, family: &str) -> BTreeMap<String, BTreeMap<i64, i64>> {
    let mut by_device: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    for (device, _item, cycle, count) in RepoCheck::open(shared).family_cycles(family) {
        *by_device.entry(device).or_default().entry(cycle).or_default() += count;
    }
    by_device
}

/// The ids of the DTOs waiting in a collector's spool (`<dir>/spool/outbox/<batch>/<id>.pxd`).
fn outbox_ids(dir: &Path) -> Vec<String> {
    let Ok(batches) = std::fs::read_dir(dir.join("spool/outbox")) else { return Vec::new() };
    batches
        .filter_map(|b| std::fs::read_dir(b.ok()?.path()).ok())
        .flatten()
        .filter_map(|f| f.ok()?.file_name().to_str()?.strip_suffix(".pxd").map(str::to_owned))
        .collect()
}

/// Waits until the clock is in the middle of a cycle, so that a kill and restart happen
/// within one cycle.
fn wait_mid_cycle() {
    wait_until(Duration::from_secs(5), "the middle of a cycle", || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let into = now % INTERVAL as f64;
        (0.6..1.2).contains(&into).then_some(())
    });
}

#[test]
fn no_cycle_lost_or_duplicated_when_the_aggregator_or_the_collector_dies() {
    let (dir, shared) = workspace();
    let inventory = dir.path().join("inventory.toml");
    let devices = 6;
    let _sim = simulator(21000, devices, 3, 2, &[], &inventory);
    let port = 21581;
    let url = format!("http://127.0.0.1:{port}");
    let mut aggregator = aggregator_at(&shared, port);
    let config = "timeout = \"500ms\"\n";
    let mut collector_ = collector(dir.path(), &url, &inventory, "2s", config);
    wait_until(Duration::from_secs(30), "three cycles loaded for every device", || {
        let cycles = cycles_by_device(&shared, "Availability");
        (cycles.len() == devices as usize && cycles.values().all(|c| c.len() >= 3)).then_some(())
    });

    // The aggregator dies for several cycles: the collector keeps polling into its spool.
    aggregator.kill9();
    wait_until(Duration::from_secs(30), "three cycles spooled", || {
        (metric(&collector_, "pollux_collector_spool_dtos") >= 12.0).then_some(())
    });
    // The collector dies too, with DTOs waiting, and comes back on the same spool.
    wait_mid_cycle();
    collector_.kill9();
    collector_ = collector(dir.path(), &url, &inventory, "2s", config);
    // Answers to stored DTOs can be held back 3 s on demand (a crash point, see below).
    let slow = dir.path().join("slow-answers");
    let fault = format!("store.after_link=delay-while:3000:{}", slow.display());
    let env: &[(&str, &str)] = if cfg!(feature = "failpoints") { &[("POLLUX_FAILPOINTS", &fault)] } else { &[] };
    let aggregator = aggregator_at_with(&shared, port, env);
    wait_until(Duration::from_secs(60), "the spool to drain", || {
        (metric(&collector_, "pollux_collector_spool_dtos") == 0.0).then_some(())
    });

    // The collector dies while a send is in flight: the aggregator is frozen so the PUT hangs,
    // then thawed after the collector is gone. It may have stored the DTO without anyone to
    // tell; the restarted collector sends it again and must get 200, not a second copy.
    aggregator.signal("STOP");
    wait_until(Duration::from_secs(10), "a DTO to be in flight", || {
        (metric(&collector_, "pollux_collector_spool_dtos") >= 2.0).then_some(())
    });
    wait_mid_cycle();
    collector_.kill9();
    aggregator.signal("CONT");
    collector_ = collector(dir.path(), &url, &inventory, "2s", config);
    let resumed = Instant::now();
    wait_until(Duration::from_secs(30), "two more cycles after the restart", || {
        (resumed.elapsed() > Duration::from_secs(5) && metric(&collector_, "pollux_collector_spool_dtos") == 0.0)
            .then_some(())
    });
    // The answer is lost for certain: the aggregator stores a DTO and holds its answer back
    // (crash point `store.after_link`, delayed 3 s); the collector dies while the DTO is
    // stored but not yet acknowledged to it. Its restart resends it and must get 200.
    if cfg!(feature = "failpoints") {
        std::fs::write(&slow, b"").unwrap();
        let caught = wait_until(Duration::from_secs(30), "a DTO stored and not yet acknowledged", || {
            outbox_ids(dir.path()).into_iter().find(|id| get(&format!("{url}/api/v1/dto/{id}")).0 == 200)
        });
        collector_.kill9();
        std::fs::remove_file(&slow).unwrap();
        assert!(outbox_ids(dir.path()).contains(&caught), "{caught} is still waiting in the spool");
        collector_ = collector(dir.path(), &url, &inventory, "2s", config);
        wait_until(Duration::from_secs(30), "the resend acknowledged", || {
            (!outbox_ids(dir.path()).contains(&caught)).then_some(())
        });
    }
    collector_.stop();
    // The resends were answered 200: duplicates, not second copies (and not conflicts: the
    // resent content is the same).
    let aggregator_metrics = common::get_text(&format!("{url}/metrics"));
    let figure = |name: &str| -> f64 {
        aggregator_metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
    };
    if cfg!(feature = "failpoints") {
        assert!(figure("pollux_dtos_duplicate_total") >= 1.0, "the resend was a duplicate:\n{aggregator_metrics}");
    }
    assert_eq!(figure("pollux_dtos_conflict_total"), 0.0);
    wait_until(Duration::from_secs(30), "the aggregator to load everything", || {
        (get(&format!("{url}/api/v1/status")).1["dto_backlog"].as_u64() == Some(0)).then_some(())
    });

    // Every device has every cycle from its first to its last, once. The collector was stopped
    // with DTOs of its last cycles perhaps still in its spool (stopping does not wait for the
    // sender): not lost, but not loaded either, so the check ends before the first of them.
    let unsent: Option<i64> = outbox_ids(dir.path()).iter().filter_map(|id| id.split('.').nth(2)?.parse().ok()).min();
    let availability = cycles_by_device(&shared, "Availability");
    let (first, loaded_last) = availability.values().fold((i64::MAX, i64::MIN), |(lo, hi), c| {
        (lo.min(*c.keys().next().unwrap()), hi.max(*c.keys().last().unwrap()))
    });
    let last = unsent.map_or(loaded_last, |u| loaded_last.min(u - INTERVAL));
    let availability: BTreeMap<String, BTreeMap<i64, i64>> = availability
        .into_iter()
        .map(|(device, cycles)| (device, cycles.into_iter().filter(|(c, _)| *c <= last).collect()))
        .collect();
    assert!((last - first) / INTERVAL >= 8, "too few cycles: {first}..{last}");
    for (device, cycles) in &availability {
        let expected: BTreeSet<i64> = (first..=last).step_by(INTERVAL as usize).collect();
        let got: BTreeSet<i64> = cycles.keys().copied().collect();
        let missing: Vec<_> = expected.difference(&got).collect();
        assert!(missing.is_empty(), "{device}: cycles missing {missing:?} of {first}..{last}");
        assert!(cycles.values().all(|&n| n == 1), "{device}: a cycle twice: {cycles:?}");
    }
    // Rates survive the restarts (previous counters live in the spool dir): every interface
    // has a rate in every cycle after its first.
    let interfaces = RepoCheck::open(&shared).family_cycles("Interface");
    let mut per_item: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for (device, item, cycle, count) in interfaces {
        assert_eq!(count, 1, "{device} {item} cycle {cycle} twice");
        if cycle <= last {
            per_item.entry((device, item)).or_default().push(cycle);
        }
    }
    assert_eq!(per_item.len(), devices as usize * 3);
    for ((device, item), cycles) in &per_item {
        let gaps: Vec<_> = cycles.windows(2).filter(|w| w[1] - w[0] != INTERVAL).collect();
        assert!(gaps.is_empty(), "{device} {item}: rate missing between {gaps:?}");
        assert_eq!(*cycles.last().unwrap(), last, "{device} {item}");
    }
    // A record cannot be stored twice for one item and cycle (the repository's key; the count
    // above also covers the recent and compacted tables together). What could go wrong is one
    // cycle's data sent under more than one id: every loaded id must be the one part of its
    // family and cycle, `dc1.<family>.<cycle>.0`.
    let mut ids_per_cycle: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for id in RepoCheck::open(&shared).loaded_ids() {
        let parts: Vec<&str> = id.split('.').collect();
        assert_eq!((parts.len(), parts[0], parts[3]), (4, "dc1", "0"), "unexpected DTO id {id}");
        ids_per_cycle.entry((parts[1].to_owned(), parts[2].parse().unwrap())).or_default().push(id.clone());
    }
    assert!(ids_per_cycle.values().all(|ids| ids.len() == 1), "{ids_per_cycle:?}");
    let availability_dtos = ids_per_cycle.keys().filter(|(f, c)| f == "Availability" && *c <= last).count() as i64;
    assert_eq!(availability_dtos, (last - first) / INTERVAL + 1);
}

/// The whole fault-tolerant environment: two aggregators, the proxy, and three collectors: one
/// sending through the proxy, one with both aggregators' URLs (the active first), and one with
/// the standby first (answered 503, so it moves on). The active is killed -9; the standby takes
/// over; no cycle of any collector is lost.
#[test]
fn collectors_lose_no_cycle_when_the_active_aggregator_dies() {
    let mut cluster = Cluster::start("2s", "30s", [&[], &[]]);
    cluster.wait_active(0, Duration::from_secs(30));
    let dir = tempdir();
    let simulated = dir.path().join("simulated.toml");
    let _sim = simulator(22600, 4, 3, 1, &[], &simulated);
    // The second collector polls the same agents under other device names.
    let renamed = dir.path().join("renamed.toml");
    std::fs::write(&renamed, std::fs::read_to_string(&simulated).unwrap().replace("\"sim-", "\"direct-")).unwrap();
    let config = "timeout = \"500ms\"\n";
    let (da1, da2) = (cluster.url(0), cluster.url(1));
    let through_proxy = collector_as("dc1", &dir.path().join("dc1"), &[&cluster.proxy.url], &simulated, "2s", config);
    let direct = collector_as("dc2", &dir.path().join("dc2"), &[&da1, &da2], &renamed, "2s", config);
    let standby_first = dir.path().join("standby-first.toml");
    std::fs::write(&standby_first, std::fs::read_to_string(&simulated).unwrap().replace("\"sim-", "\"sb-")).unwrap();
    let backwards = collector_as("dc3", &dir.path().join("dc3"), &[&da2, &da1], &standby_first, "2s", config);
    let shared = cluster.shared.path().to_owned();
    let enough = |n: usize| {
        let cycles = cycles_by_device(&shared, "Availability");
        (cycles.len() == 12 && cycles.values().all(|c| c.len() >= n)).then_some(())
    };
    wait_until(Duration::from_secs(30), "three cycles of every device", || enough(3));
    // dc3's data is there, so it got past the standby's 503 (counted as a failed send) to da1.
    assert!(metric(&backwards, "pollux_collector_send_failures_total") >= 1.0);
    let killed_at = unix_now();
    cluster.kill9(0);
    cluster.wait_active(1, Duration::from_secs(30));
    // The new active shows the collectors' last reports at once (they live in the shared
    // directory), connected, with their inventories.
    let (_, status) = get(&format!("{}/api/v1/status", cluster.proxy.url));
    let collectors = status["collectors"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = collectors.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["dc1", "dc2", "dc3"], "{status}");
    assert!(collectors.iter().all(|c| c["connected"] == true && c["devices"] == 4), "{collectors:?}");
    // Cycles that began after the kill: only the new active can have loaded them.
    wait_until(Duration::from_secs(30), "three more cycles after the takeover", || {
        let loaded = cycles_by_device(&shared, "Availability");
        (loaded.values().all(|c| c.keys().filter(|&&k| k > killed_at).count() >= 3)).then_some(())
    });
    for c in [&through_proxy, &direct, &backwards] {
        wait_until(Duration::from_secs(30), "the spools to drain", || {
            (metric(c, "pollux_collector_spool_dtos") == 0.0).then_some(())
        });
    }
    wait_until(Duration::from_secs(30), "the new active to load everything", || {
        (get(&format!("{da2}/api/v1/status")).1["dto_backlog"].as_u64() == Some(0)).then_some(())
    });
    // (Every device is there: the wait for three cycles of every device saw all twelve.)
    let availability = cycles_by_device(&shared, "Availability");
    for (device, cycles) in &availability {
        let got: Vec<i64> = cycles.keys().copied().collect();
        let gaps: Vec<_> = got.windows(2).filter(|w| w[1] - w[0] != INTERVAL).collect();
        assert!(gaps.is_empty(), "{device}: cycles missing between {gaps:?}\n{}", cluster.logs());
    }
    assert!(metric(&direct, "pollux_collector_send_failures_total") >= 1.0, "dc2 failed over from da1 to da2");
}

#[test]
fn malformed_answers_mark_the_device_down_and_the_collector_goes_on() {
    let (dir, shared) = workspace();
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    let _good_sim = simulator(21100, 2, 2, 0, &[], &good);
    let _bad_sim = simulator(21200, 2, 2, 0, &["--malformed", "100"], &bad);
    let inventory = dir.path().join("inventory.toml");
    let bad_text = std::fs::read_to_string(&bad).unwrap().replace("\"sim-", "\"bad-");
    std::fs::write(&inventory, std::fs::read_to_string(&good).unwrap() + &bad_text).unwrap();
    let aggregator = Aggregator::start(&shared, &["--failwait", "2s"], &[]);
    aggregator.wait_active();
    let collector_ = collector(dir.path(), &aggregator.url, &inventory, "2s", "timeout = \"300ms\"\nretries = 1\n");
    wait_until(Duration::from_secs(30), "three cycles of every device", || {
        let cycles = cycles_by_device(&shared, "Availability");
        (cycles.len() == 4 && cycles.values().all(|c| c.len() >= 3)).then_some(())
    });
    let now = unix_now();
    for (device, expected) in [("sim-000", 1.0), ("sim-001", 1.0), ("bad-000", 0.0), ("bad-001", 0.0)] {
        let url = format!(
            "{}/api/v1/series?family=Availability&device={device}&item={device}&metric=reachable&resolution=raw&from={}&to={}",
            aggregator.url,
            now - 60,
            now + 10
        );
        let (status, body) = get(&url);
        assert_eq!(status, 200, "{body}");
        let points = body["points"].as_array().unwrap();
        assert!(points.len() >= 3, "{device}: {body}");
        assert!(points.iter().all(|p| p[1].as_f64() == Some(expected)), "{device}: {body}");
    }
    // The damaged devices gave no Interface records; the healthy ones did.
    let interface_devices: BTreeSet<String> =
        RepoCheck::open(&shared).family_cycles("Interface").into_iter().map(|r| r.0).collect();
    assert_eq!(interface_devices, ["sim-000", "sim-001"].iter().map(|s| s.to_string()).collect());
    assert!(metric(&collector_, "pollux_collector_polls_unreachable_total") >= 6.0);
    assert!(metric(&collector_, "pollux_collector_timeouts_total") >= 6.0);
    assert!(metric(&collector_, "pollux_collector_cycles_total") >= 3.0);
}

/// Steady traffic on the loopback interface, so its counters move at a known pace.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let receiver = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
        receiver.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let (s1, s2) = (stop.clone(), stop.clone());
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s1.load(Ordering::Relaxed) {
                let _ = receiver.recv(&mut buf);
            }
        });
        let send = std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let payload = [0x5Au8; 1000];
            while !s2.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    let _ = socket.send_to(&payload, ("127.0.0.1", port));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic { stop, threads: vec![drain, send] }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn series(
    aggregator: &Aggregator,
    family: &str,
    device: &str,
    item: &str,
    metric: &str,
    from: i64,
    to: i64,
) -> Vec<(i64, f64)> {
    let url = format!(
        "{}/api/v1/series?family={family}&device={device}&item={item}&metric={metric}&resolution=raw&from={from}&to={to}",
        aggregator.url
    );
    let (status, body) = get(&url);
    if status == 400 && body["error"].as_str().is_some_and(|e| e.contains("unknown family")) {
        return Vec::new(); // nothing loaded for the family yet
    }
    assert_eq!(status, 200, "{url}: {body}");
    body["points"].as_array().unwrap().iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap())).collect()
}

fn items(aggregator: &Aggregator, device: &str, family: &str) -> BTreeSet<String> {
    let (_, body) = get(&format!("{}/api/v1/items?device={device}&family={family}", aggregator.url));
    // A family never loaded is unknown to the aggregator: no items.
    body["items"].as_array().into_iter().flatten().map(|i| i["item"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn values_from_a_real_snmpd_match_snmpget_over_v2c_and_v3() {
    let (dir, shared) = workspace();
    let snmpd = Snmpd::start(dir.path(), 21300);
    let _traffic = Traffic::start(21399);
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[[device]]\nname = \"netsnmp-v2c\"\naddress = \"127.0.0.1\"\nport = {port}\ncommunity = \"public\"\n\n\
             [[device]]\nname = \"netsnmp-ipv6\"\naddress = \"::1\"\nport = {port}\nfamilies = [\"Memory\", \"Availability\"]\n\n\
             [[device]]\nname = \"netsnmp-v3\"\naddress = \"127.0.0.1\"\nport = {port}\nversion = \"3\"\n\
             user = \"{V3_USER}\"\nauth_protocol = \"sha\"\nauth_password = \"{V3_AUTH}\"\n\
             priv_protocol = \"aes\"\npriv_password = \"{V3_PRIV}\"\n",
            port = snmpd.port
        ),
    )
    .unwrap();
    let aggregator = Aggregator::start(&shared, &["--failwait", "2s"], &[]);
    aggregator.wait_active();
    let _collector = collector(dir.path(), &aggregator.url, &inventory, "2s", "");

    // Reference rate of the loopback interface over a window covering several polls.
    let names = snmpd.walk("1.3.6.1.2.1.31.1.1.1.1");
    let lo = names.iter().find(|(_, name)| name == "lo").map(|(i, _)| i.clone()).expect("an interface named lo");
    let octets = || -> (f64, f64) {
        let value = snmpd.get(&format!("1.3.6.1.2.1.31.1.1.1.6.{lo}")).unwrap();
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        (value.parse().unwrap(), at)
    };
    let (c0, t0) = octets();
    let start = unix_now();
    for device in ["netsnmp-v2c", "netsnmp-v3"] {
        wait_until(Duration::from_secs(60), "ten rates of lo", || {
            let points: Vec<_> =
                series(&aggregator, "Interface", device, "lo", "in_bps", start, unix_now() + 5).into_iter().collect();
            (points.len() >= 10).then_some(())
        });
    }
    let (c1, t1) = octets();
    let reference = (c1 - c0) * 8.0 / (t1 - t0);
    for device in ["netsnmp-v2c", "netsnmp-v3"] {
        let points = series(&aggregator, "Interface", device, "lo", "in_bps", start, unix_now() + 5);
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        assert!(reference > 1e6, "the traffic generator should move lo: {reference} b/s");
        // snmpd refreshes interface counters from the kernel every few seconds, so one poll may
        // see no change and the next two polls' worth: only a mean over many polls compares.
        assert!(
            (mean / reference - 1.0).abs() < 0.35,
            "{device}: collector {mean:.0} b/s, snmpget {reference:.0} b/s: {points:?}"
        );
        // Every interface snmpd lists, by name.
        let expected: BTreeSet<String> = names.iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(items(&aggregator, device, "Interface"), expected, "{device}");
        // Processors by hrDeviceIndex.
        let cpus: BTreeSet<String> = snmpd.walk("1.3.6.1.2.1.25.3.3.1.2").into_iter().map(|(i, _)| i).collect();
        assert_eq!(items(&aggregator, device, "CPU"), cpus, "{device}");
        // RAM: the size exactly, the use within 10 %.
        let ram = snmpd
            .walk("1.3.6.1.2.1.25.2.3.1.2")
            .into_iter()
            .find(|(_, kind)| kind == ".1.3.6.1.2.1.25.2.1.2")
            .map(|(i, _)| i)
            .expect("a RAM entry in hrStorageTable");
        let number = |oid: &str| -> f64 { snmpd.get(&format!("{oid}.{ram}")).unwrap().parse().unwrap() };
        let unit = number("1.3.6.1.2.1.25.2.3.1.4");
        let total = series(&aggregator, "Memory", device, &ram, "total_bytes", start - 10, unix_now() + 5);
        assert_eq!(total.last().unwrap().1, number("1.3.6.1.2.1.25.2.3.1.5") * unit, "{device}");
        let used = series(&aggregator, "Memory", device, &ram, "used_bytes", start - 10, unix_now() + 5);
        let now_used = number("1.3.6.1.2.1.25.2.3.1.6") * unit;
        assert!((used.last().unwrap().1 / now_used - 1.0).abs() < 0.1, "{device}: {used:?} vs {now_used}");
        // The same agent over IPv6 (::1) reports the same RAM, where the host has IPv6.
        if ipv6_loopback() {
            let over_ipv6 =
                series(&aggregator, "Memory", "netsnmp-ipv6", &ram, "total_bytes", start - 10, unix_now() + 5);
            assert_eq!(over_ipv6.last().map(|p| p.1), Some(total.last().unwrap().1), "IPv6: {over_ipv6:?}");
        }
    }
}

#[test]
fn simulator_rates_match_snmpget_and_the_simulated_traffic() {
    let (dir, shared) = workspace();
    let inventory = dir.path().join("inventory.toml");
    let _sim = simulator(21500, 3, 2, 1, &[], &inventory);
    let aggregator = Aggregator::start(&shared, &["--failwait", "2s"], &[]);
    aggregator.wait_active();
    let _collector = collector(dir.path(), &aggregator.url, &inventory, "2s", "");
    let read = |port: u16, oid: &str| -> (f64, f64) {
        let value = snmpget(port, oid);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        (value.parse().unwrap(), at)
    };
    // Device 1 (v2c) and device 0 (v3, read through the collector only), interface 1. The
    // simulator's traffic is a known function of time, so the rate over any window is known.
    let device = pollux_simulator::mib::Device::new(1, "sim-001".into(), 0.0, 0.0);
    let expected = |from: f64, to: f64| pollux_simulator::mib::expected_octet_rate(&device, 1, true, from, to) * 8.0;
    let start = unix_now();
    let (c0, t0) = read(21501, "1.3.6.1.2.1.31.1.1.1.6.1");
    let points = wait_until(Duration::from_secs(30), "four polls", || {
        let points = series(&aggregator, "Interface", "sim-001", "ge-0/0/1", "in_bps", start, unix_now() + 5);
        // The first rate spans the collector's start (mid-cycle) to the next boundary: not a
        // whole cycle, so it is left out.
        (points.len() >= 4).then(|| points[1..].to_vec())
    });
    let (c1, t1) = read(21501, "1.3.6.1.2.1.31.1.1.1.6.1");
    // What snmpget reads is the simulated traffic (the timestamps are taken a few ms late).
    let by_snmpget = (c1 - c0) * 8.0 / (t1 - t0);
    assert!((by_snmpget / expected(t0, t1) - 1.0).abs() < 0.01, "snmpget {by_snmpget:.0} b/s");
    // Each collector rate is the traffic between two polls 2 s apart, taken within a few ms of
    // the cycle start that is the record's time.
    for (ts, bps) in &points {
        let want = expected(*ts as f64 - 2.0, *ts as f64);
        assert!((bps / want - 1.0).abs() < 0.01, "at {ts}: collector {bps:.0} b/s, simulated {want:.0} b/s");
    }
    let speed = read(21501, "1.3.6.1.2.1.31.1.1.1.15.1").0 * 1e6;
    let to = points.last().unwrap().0 + 1;
    let points = series(&aggregator, "Interface", "sim-001", "ge-0/0/1", "in_bps", start, to);
    assert!(points.len() >= 4);
    let util = series(&aggregator, "Interface", "sim-001", "ge-0/0/1", "in_util", start, to);
    assert_eq!(util.len(), points.len());
    for ((_, bps), (_, pct)) in points.iter().zip(&util) {
        assert!((pct - bps / speed * 100.0).abs() < 1e-6, "in_util {pct} for {bps} b/s on {speed} b/s");
    }
    // The v3 device's rates come through too, and CPU and Memory for both.
    wait_until(Duration::from_secs(10), "the v3 device's rates", || {
        (!series(&aggregator, "Interface", "sim-000", "ge-0/0/2", "out_bps", start, unix_now() + 5).is_empty())
            .then_some(())
    });
    for device in ["sim-000", "sim-001"] {
        assert_eq!(items(&aggregator, device, "CPU"), ["196608", "196609"].iter().map(|s| s.to_string()).collect());
        let used = series(&aggregator, "Memory", device, "1", "used_pct", start - 10, unix_now() + 5);
        assert!(used.iter().all(|(_, pct)| (0.0..100.0).contains(pct)) && !used.is_empty(), "{device}: {used:?}");
    }
}

/// A customized family defined in the shared directory reaches the collector through the
/// active aggregator; this one reads the 32-bit ifInOctets, which the simulator makes wrap
/// every few seconds at these rates, so its rates also prove the wrap handling.
#[test]
fn customized_families_come_from_the_aggregator_and_32_bit_counters_wrap() {
    let (dir, shared) = workspace();
    std::fs::write(
        shared.join("metric-families/IfLegacy.toml"),
        "name = \"IfLegacy\"\ndescription = \"ifTable's 32-bit octet counters\"\ntable = \"1.3.6.1.2.1.2.2\"\n\n\
         [[metric]]\nname = \"in_bits\"\nunit = \"bit/s\"\ntype = \"counter32\"\noid = \"1.3.6.1.2.1.2.2.1.10\"\nexpr = \"value * 8\"\n",
    )
    .unwrap();
    let simulated = dir.path().join("simulated.toml");
    let _sim = simulator(21600, 2, 2, 0, &[], &simulated);
    let inventory = dir.path().join("inventory.toml");
    let text = std::fs::read_to_string(&simulated).unwrap().replace(
        "community = \"public\"\n",
        "community = \"public\"\nfamilies = [\"Interface\", \"IfLegacy\", \"Availability\"]\n",
    );
    std::fs::write(&inventory, text).unwrap();
    let aggregator = Aggregator::start(&shared, &["--failwait", "2s"], &[]);
    aggregator.wait_active();
    // Small parts: each cycle's Interface records (2 devices x 2) go in two DTOs.
    let config = "families_refresh = \"1s\"\nmax_records_per_dto = 2\n";
    let collector_ = collector(dir.path(), &aggregator.url, &inventory, "2s", config);
    let start = unix_now();
    // The simulator wraps ifInOctets 10 to 20 s after it starts: see it happen.
    let read = || -> u64 { snmpget(21601, "1.3.6.1.2.1.2.2.1.10.1").parse().unwrap() };
    let mut last = read();
    let wrapped_at = wait_until(Duration::from_secs(30), "ifInOctets to wrap", || {
        let now = read();
        let wrapped = now < last;
        last = now;
        wrapped.then(unix_now)
    });
    // Items are the row index (ifIndex 1 and 2).
    let legacy = wait_until(Duration::from_secs(30), "rates of the customized family past the wrap", || {
        let points = series(&aggregator, "IfLegacy", "sim-001", "1", "in_bits", start, unix_now() + 5);
        (points.iter().filter(|p| p.0 > wrapped_at).count() >= 2).then_some(points)
    });
    let modern = series(&aggregator, "Interface", "sim-001", "ge-0/0/1", "in_bps", start, unix_now() + 5);
    let by_ts: BTreeMap<i64, f64> = modern.into_iter().collect();
    let mut compared = Vec::new();
    for (ts, bits) in &legacy {
        if let Some(bps) = by_ts.get(ts) {
            assert!((bits / bps - 1.0).abs() < 0.02, "at {ts}: 32-bit {bits:.0} b/s, 64-bit {bps:.0} b/s");
            compared.push(*ts);
        }
    }
    assert!(compared.len() >= 2, "{legacy:?}");
    // Rates on both sides of the wrap, and (below) one in every cycle: the pair of polls
    // around the wrap gave a rate, and the comparison above says it was right.
    assert!(
        legacy.first().unwrap().0 < wrapped_at - 1 && legacy.last().unwrap().0 > wrapped_at,
        "{legacy:?} (wrap at {wrapped_at})"
    );
    // No rate went missing at the wrap: one per cycle, without a gap.
    let cycles: Vec<i64> = RepoCheck::open(&shared)
        .family_cycles("IfLegacy")
        .into_iter()
        .filter(|r| r.0 == "sim-001" && r.1 == "1")
        .map(|r| r.2)
        .collect();
    assert!(cycles.windows(2).all(|w| w[1] - w[0] == INTERVAL), "{cycles:?}");
    assert_eq!(metric(&collector_, "pollux_collector_dtos_rejected_total"), 0.0);
    let ids = RepoCheck::open(&shared).loaded_ids();
    let second_parts = ids.iter().filter(|id| id.starts_with("dc1.Interface.") && id.ends_with(".1")).count();
    assert!(second_parts >= 3, "a cycle over max_records_per_dto is split into parts: {ids:?}");
}

/// With no aggregator for a long time, a spool at its bound drops its oldest DTOs: counted,
/// logged, never the newest; what is left is delivered once an aggregator answers.
#[test]
fn a_full_spool_drops_the_oldest_loudly() {
    let (dir, shared) = workspace();
    let inventory = dir.path().join("inventory.toml");
    let _sim = simulator(21700, 40, 10, 0, &[], &inventory);
    let port = 21781;
    let url = format!("http://127.0.0.1:{port}");
    let config = "spool_max_bytes = 65536\n";
    let collector_ = collector(dir.path(), &url, &inventory, "2s", config);
    let first_cycle = wait_until(Duration::from_secs(20), "a first cycle spooled", || {
        let outbox = std::fs::read_dir(dir.path().join("spool/outbox")).ok()?;
        outbox.filter_map(|e| e.ok()?.file_name().to_str()?.split('.').next()?.parse::<i64>().ok()).min()
    });
    wait_until(Duration::from_secs(40), "drops", || {
        (metric(&collector_, "pollux_collector_dropped_total") >= 3.0).then_some(())
    });
    assert!(metric(&collector_, "pollux_collector_spool_bytes") <= 65536.0);
    assert!(collector_.log().contains("DROPPED unsent DTO dc1."), "{}", collector_.log());
    let oldest_left = std::fs::read_dir(dir.path().join("spool/outbox"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.split('.').next()?.parse::<i64>().ok())
        .min()
        .unwrap();
    assert!(oldest_left > first_cycle, "the oldest go first");
    let _aggregator = aggregator_at(&shared, port);
    wait_until(Duration::from_secs(60), "the spool to drain", || {
        (metric(&collector_, "pollux_collector_spool_dtos") == 0.0).then_some(())
    });
    // Every DTO spooled was either delivered or dropped (or is still waiting), read from one
    // scrape so that no new cycle slips in between.
    let text = common::get_text(&format!("{}/metrics", collector_.url));
    let figure = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
    };
    let (spooled, sent, dropped) = (
        figure("pollux_collector_dtos_spooled_total"),
        figure("pollux_collector_dtos_sent_total"),
        figure("pollux_collector_dropped_total"),
    );
    let (waiting, rejected) = (figure("pollux_collector_spool_dtos"), figure("pollux_collector_dtos_rejected_total"));
    assert_eq!(spooled, sent + dropped + waiting + rejected, "every spooled DTO accounted for");
    assert!(dropped >= 3.0 && rejected == 0.0);
    // The oldest went first: the first Availability cycle delivered is the one after the last
    // dropped, for every device, and none is missing after it.
    let log = collector_.log();
    let last_dropped = log
        .split("DROPPED unsent DTO dc1.Availability.")
        .skip(1)
        .filter_map(|rest| rest.split('.').next()?.parse::<i64>().ok())
        .max()
        .expect("an Availability DTO was dropped");
    let cycles = cycles_by_device(&shared, "Availability");
    assert_eq!(cycles.len(), 40);
    for (device, cycles) in &cycles {
        let got: Vec<i64> = cycles.keys().copied().collect();
        assert_eq!(got[0], last_dropped + INTERVAL, "{device}: the oldest kept is the first delivered: {got:?}");
        assert!(got.windows(2).all(|w| w[1] - w[0] == INTERVAL), "{device}: a gap after the drops: {got:?}");
    }
}

#[test]
fn a_bad_inventory_or_configuration_stops_with_status_64_naming_the_place() {
    let dir = tempdir();
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, "[[device]]\nname = \"a\"\naddress = \"192.0.2.1\"\n\n[[device]]\nname = \"b\"\naddress = \"192.0.2.2\"\nversion = \"3\"\n").unwrap();
    let run = |extra: &[&str]| {
        let out = pollux()
            .args(["collector", "--spool-dir"])
            .arg(dir.path().join("spool"))
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let path = inventory.display().to_string();
    let (code, stderr) = run(&["--inventory", &path]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(&path) && stderr.contains("line 5 device[1].user"), "{stderr}");
    let (code, stderr) = run(&["--inventory", "/nonexistent/inventory.toml"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("/nonexistent/inventory.toml"), "{stderr}");
    let (code, stderr) = run(&["--inventory", &path, "--interval", "0s"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("interval"), "{stderr}");
    let out = pollux().args(["simulate", "--loss", "150"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loss"));
    // Nothing was polled or spooled.
    assert!(!dir.path().join("spool").exists());
}

/// The simulator carries many devices; a short check that the last one answers too.
#[test]
fn simulator_answers_on_every_port() {
    let dir = tempdir();
    let inventory = dir.path().join("inventory.toml");
    let _sim: Process = simulator(22000, 500, 2, 0, &[], &inventory);
    let text = std::fs::read_to_string(&inventory).unwrap();
    assert_eq!(text.matches("[[device]]").count(), 500);
    assert!(text.contains("port = 22499"));
    assert_eq!(snmpget(22499, "1.3.6.1.2.1.1.5.0"), "sim-499");
}

/// Finding 10 of the hardening issue: 2,000 devices whose hosts refuse (nothing listens on
/// their SNMP port) cost a refusal each, not timeout x retries, and do not hold back the live
/// devices: every cycle of 2 s finishes in time and the live devices have every cycle.
/// Before, each dead device cost 4 s (2 s timeout, 1 retry): about 32 s a cycle at 256 polls
/// in flight, every cycle overrun.
#[test]
fn dead_devices_are_refused_at_once_and_starve_no_cycle() {
    let (dir, shared) = workspace();
    let live = dir.path().join("live.toml");
    let _sim = simulator(21800, 3, 2, 0, &[], &live);
    let mut inventory = std::fs::read_to_string(&live).unwrap();
    // 127.0.0.5: a loopback address nothing in these tests listens on.
    for k in 0..2000 {
        inventory.push_str(&format!(
            "\n[[device]]\nname = \"dead-{k:04}\"\naddress = \"127.0.0.5\"\nport = {}\nfamilies = [\"Availability\", \"Interface\"]\n",
            30000 + k
        ));
    }
    let all = dir.path().join("inventory.toml");
    std::fs::write(&all, inventory).unwrap();
    let aggregator = Aggregator::start(&shared, &["--failwait", "2s"], &[]);
    aggregator.wait_active();
    let collector_ = collector(dir.path(), &aggregator.url, &all, "2s", "timeout = \"2s\"\nretries = 1\n");
    wait_until(Duration::from_secs(40), "four cycles of the live devices", || {
        let cycles = cycles_by_device(&shared, "Availability");
        let live: Vec<usize> =
            ["sim-000", "sim-001", "sim-002"].iter().map(|d| cycles.get(*d).map_or(0, |c| c.len())).collect();
        live.iter().all(|n| *n >= 4).then_some(())
    });
    assert!(metric(&collector_, "pollux_collector_polls_refused_total") >= 6000.0);
    let last = metric(&collector_, "pollux_collector_last_cycle_seconds");
    assert!(last < 2.0, "a cycle took {last} s");
    assert_eq!(metric(&collector_, "pollux_collector_cycles_skipped_total"), 0.0);
    // The live devices have every cycle since their first, and the dead ones are recorded down.
    let cycles = cycles_by_device(&shared, "Availability");
    for device in ["sim-000", "sim-001", "sim-002"] {
        let seen: Vec<i64> = cycles[device].keys().copied().collect();
        assert!(seen.windows(2).all(|w| w[1] - w[0] == INTERVAL), "{device}: {seen:?}");
    }
    assert!(cycles.get("dead-1999").is_some_and(|c| c.len() >= 3), "dead devices are recorded as down");
}

/// A tiny HTTP/1.1 server on 127.0.0.1 answering every request with the same bytes, keeping
/// each request's line (`PUT /api/v1/dto/...`). It stops when dropped.
struct Fake {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Fake {
    /// `status` (`302 Found`), extra header lines (each ending in `\r\n`) and a body.
    fn start(status: &str, headers: &str, body: &str) -> Fake {
        use std::io::{BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = format!("HTTP/1.1 {status}\r\n{headers}content-length: {}\r\n\r\n{body}", body.len());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (seen, answer) = (seen.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    loop {
                        // The request line and headers, then the body (whole), then the answer.
                        let Some((line, _)) = common::receiver::read_request(&mut reader) else { return };
                        seen.lock().unwrap().push(line);
                        let out = reader.get_mut();
                        if out.write_all(answer.as_bytes()).and_then(|()| out.flush()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Fake { url, requests, stop }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// DTO PUTs received.
    fn dto_puts(&self) -> usize {
        self.requests().iter().filter(|r| r.starts_with("PUT /api/v1/dto/")).count()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// A front end that moved (302 to a login page) and a login page (200 with HTML) in front of
/// the collector: neither is an aggregator, so neither acknowledges a DTO. Before, ureq followed
/// the redirect with a GET, got 200, and every DTO was dropped from the spool. They stay there,
/// each URL is named once in the log, and once a real aggregator is listed they are delivered.
#[test]
fn a_redirect_or_a_200_from_something_else_acknowledges_nothing() {
    let (dir, shared) = workspace();
    let inventory = dir.path().join("inventory.toml");
    let _sim = simulator(21900, 2, 2, 0, &[], &inventory);
    let login = Fake::start("200 OK", "content-type: text/html\r\n", "<html><body>Please log in</body></html>");
    let moved = Fake::start("302 Found", &format!("location: {}/login\r\n", login.url), "");
    let ack_log = dir.path().join("acked.log");
    let config = format!("timeout = \"500ms\"\nack_log = {ack_log:?}\n");
    let mut collector_ = collector_as("dc1", dir.path(), &[&moved.url, &login.url], &inventory, "2s", &config);
    // (Each DTO offered to the first URL and refused there goes to the second at once.)
    wait_until(Duration::from_secs(30), "three cycles, their DTOs offered", || {
        (metric(&collector_, "pollux_collector_cycles_total") >= 3.0 && moved.dto_puts() >= 3).then_some(())
    });
    let text = common::get_text(&format!("{}/metrics", collector_.url));
    let figure = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
    };
    let log = collector_.log();
    assert_eq!(figure("pollux_collector_dtos_sent_total"), 0.0, "acknowledged by no aggregator:\n{log}");
    assert_eq!(std::fs::read_to_string(&ack_log).unwrap_or_default(), "", "the ack log");
    let spooled = figure("pollux_collector_dtos_spooled_total");
    assert!(spooled >= 6.0, "{text}");
    assert_eq!(figure("pollux_collector_spool_dtos"), spooled, "every DTO spooled is still waiting:\n{log}");
    assert_eq!(figure("pollux_collector_dtos_rejected_total"), 0.0);
    let followed: Vec<String> = login.requests().into_iter().filter(|r| r.contains("/login")).collect();
    assert!(followed.is_empty(), "the redirect was followed: {followed:?}");
    // Each URL is named once, not once per DTO or per retry.
    let once = |what: &str| {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
        assert_eq!(lines.len(), 1, "{what:?} once:\n{log}");
    };
    once(&format!("{} answered 302 redirect to {}/login: not an aggregator; check the URL", moved.url, login.url));
    once(&format!("{} answered 200 without a Pollux acknowledgement", login.url));

    // The operator lists the real aggregator (after the other two): everything held back is
    // delivered, and only what the aggregator acknowledged is in the ack log.
    collector_.stop();
    let held: BTreeSet<String> = outbox_ids(dir.path()).into_iter().collect();
    assert!(held.len() as f64 >= spooled, "{held:?}");
    let aggregator = Aggregator::start(&shared, &["--failwait", "2s"], &[]);
    aggregator.wait_active();
    let urls = [moved.url.as_str(), login.url.as_str(), aggregator.url.as_str()];
    let _resumed = collector_as("dc1", dir.path(), &urls, &inventory, "2s", &config);
    let acked = || -> BTreeSet<String> {
        std::fs::read_to_string(&ack_log).unwrap_or_default().lines().map(str::to_owned).collect()
    };
    wait_until(Duration::from_secs(60), "every DTO held back loaded and in the ack log", || {
        let loaded: BTreeSet<String> = RepoCheck::open(&shared).loaded_ids().into_iter().collect();
        (held.is_subset(&loaded) && held.is_subset(&acked())).then_some(())
    });
    // Everything in the ack log reached the repository (the loader may be a moment behind).
    wait_until(Duration::from_secs(30), "every id of the ack log loaded", || {
        let loaded: BTreeSet<String> = RepoCheck::open(&shared).loaded_ids().into_iter().collect();
        acked().is_subset(&loaded).then_some(())
    });
    let followed: Vec<String> = login.requests().into_iter().filter(|r| r.contains("/login")).collect();
    assert!(followed.is_empty(), "the redirect was followed: {followed:?}");
}

/// A copy-pasted service unit: two collectors on one spool directory would send, remove and
/// rewrite each other's files. The second is refused at start (status 64, naming the directory
/// and the first one's pid); once the first is gone (kill -9: the kernel drops its lock) a
/// collector starts there again.
#[test]
fn a_second_collector_on_the_same_spool_is_refused() {
    let dir = tempdir();
    let inventory = dir.path().join("inventory.toml");
    let _sim = simulator(21950, 1, 1, 0, &[], &inventory);
    // Nothing listens there: the DTOs wait in the spool.
    let url = "http://127.0.0.1:21999";
    let mut first = collector(dir.path(), url, &inventory, "2s", "");
    wait_until(Duration::from_secs(20), "a cycle spooled", || {
        (metric(&first, "pollux_collector_spool_dtos") >= 1.0).then_some(())
    });
    let spool = dir.path().join("spool");
    // The same command line (but another metrics port, which a copy must have to get this far).
    let mut second = common::harnessed(common::BIN)
        .args(["collector", "--config"])
        .arg(dir.path().join("collector.toml"))
        .args(["--id", "dc1", "--aggregator", url, "--inventory"])
        .arg(&inventory)
        .arg("--spool-dir")
        .arg(&spool)
        .args(["--interval", "2s", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = second.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(64), "the second collector on {}:\n{stderr}", spool.display());
    let named: Vec<&str> = stderr.lines().filter(|l| l.contains(&spool.display().to_string())).collect();
    assert_eq!(named.len(), 1, "one line names the spool directory:\n{stderr}");
    assert!(named[0].contains(&format!("pid {}", first.pid())), "and the first one's pid:\n{stderr}");
    // The first goes on undisturbed.
    let cycles = metric(&first, "pollux_collector_cycles_total");
    wait_until(Duration::from_secs(20), "the first collector's next cycle", || {
        (metric(&first, "pollux_collector_cycles_total") > cycles).then_some(())
    });
    let waiting = metric(&first, "pollux_collector_spool_dtos");
    first.kill9();
    let third = collector(dir.path(), url, &inventory, "2s", "");
    let lock = std::fs::read_to_string(spool.join(".lock")).unwrap();
    assert!(lock.contains(&format!("pid {}", third.pid())), "the lock names its new holder: {lock:?}");
    wait_until(Duration::from_secs(20), "the new collector to find the spool and add a cycle", || {
        (metric(&third, "pollux_collector_spool_dtos") > waiting).then_some(())
    });
}
