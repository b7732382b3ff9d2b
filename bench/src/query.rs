//! Query latency on a repository holding `hours` of `items` interfaces at a 5-minute cycle:
//! a 24-hour raw series of one item, and the top 10 of all items over one hour. Building the
//! repository also gives the loader's rate through the repository API (no HTTP), the cost of
//! compaction and rollups, and the bytes per stored value.

use crate::browser;
use crate::ingest::make_dto;
use crate::util::{self, agent, percentile, start_aggregator, Rng};
use anyhow::bail;
use pollux_model::{Catalog, Dto};
use pollux_repository::{Repository, RollupPolicy, SqliteOptions, SqliteRepository};
use std::time::{Duration, Instant};

const INTERFACES: usize = 10;
const RECORDS_PER_DTO: usize = 10_000;
const INTERVAL: i64 = 300;
const RECENT_WINDOW: i64 = 2 * 3600;

pub fn run(items: usize, hours: usize) -> anyhow::Result<()> {
    let devices = items / INTERFACES;
    let dtos_per_cycle = items.div_ceil(RECORDS_PER_DTO);
    let devices_per_dto = RECORDS_PER_DTO / INTERFACES;
    let end = util::unix_now() / 3600 * 3600;
    let start = end - hours as i64 * 3600;
    let cycles = (end - start) / INTERVAL;
    println!(
        "query: repository of {items} interfaces ({devices} devices x {INTERFACES}) x {cycles} cycles of 5 minutes ({hours} h), 8 metrics"
    );
    let shared = tempfile::tempdir()?;
    let path = shared.path().join("repository.sqlite");
    let repo = SqliteRepository::open(&path, SqliteOptions::default())?;
    repo.claim_epoch(1, "bench")?;
    repo.ensure_family(1, Catalog::builtin().get("Interface").unwrap())?;
    let mut rng = Rng::new(3);
    let mut values = 0usize;
    let mut load_time = Duration::ZERO;
    for c in 0..cycles {
        let cycle = start + c * INTERVAL;
        let batch: Vec<Dto> = (0..dtos_per_cycle)
            .map(|b| {
                let mut dto = make_dto(&format!("q.{c}.{b}"), cycle, devices_per_dto, INTERFACES, &mut rng);
                for (n, r) in dto.records.iter_mut().enumerate() {
                    r.device = format!("rtr-{:05}", b * devices_per_dto + n / INTERFACES);
                }
                dto
            })
            .collect();
        let t = Instant::now();
        for chunk in batch.chunks(5) {
            values += repo.load(1, chunk)?.values;
        }
        load_time += t.elapsed();
    }
    println!(
        "  load through the repository API: {:.2} M values/s ({:.1} M values in {:.1} s)",
        values as f64 / load_time.as_secs_f64() / 1e6,
        values as f64 / 1e6,
        load_time.as_secs_f64()
    );
    if std::env::var("BENCH_PROBE_RECENT").is_ok() {
        // The layout without compaction: a day of one item from the time-ordered table alone.
        let (p50, p99) = time_series(&repo, devices, end)?;
        println!("  24 h raw series from the recent table only (repository API): p50 {p50:.2} ms  p99 {p99:.2} ms");
    }
    let t = Instant::now();
    let mut compacted = 0;
    loop {
        let p = repo.compact(1, end - RECENT_WINDOW, 1000)?;
        compacted += p.done;
        if !p.more {
            break;
        }
    }
    let compact_time = t.elapsed().as_secs_f64();
    println!(
        "  compaction into item order: {compacted} cycles in {compact_time:.1} s ({:.2} M rows/s)",
        (compacted * items) as f64 / compact_time / 1e6
    );
    let t = Instant::now();
    let mut rolled = 0;
    loop {
        let p = repo.roll_up(1, util::unix_now(), &RollupPolicy::immediate(Duration::from_secs(600)), 1000)?;
        rolled += p.done;
        if !p.more {
            break;
        }
    }
    println!("  rollups: {rolled} periods in {:.1} s", t.elapsed().as_secs_f64());
    let (p50, p99) = time_series(&repo, devices, end)?;
    println!("  24 h raw series of one item through the repository API (no HTTP): p50 {p50:.2} ms  p99 {p99:.2} ms");
    drop(repo);
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "  repository: {:.2} GB, {:.2} bytes per stored value (raw, recent and history, plus rollups)",
        bytes as f64 / 1e9,
        bytes as f64 / values as f64
    );

    let (_proc, url) = start_aggregator(shared.path())?;
    let agent = agent();
    // Time the queries, not the new active's first maintenance (the hours that just left the
    // recent window are compacted, their rollups recomputed): wait until it is idle.
    let idle = |page: &str| {
        (util::metric(page, "pollux_pending_rollups"), util::metric(page, "pollux_cycles_compacted_total"))
    };
    let mut last = (None, None);
    let mut quiet_since = Instant::now();
    util::wait_for(Duration::from_secs(600), || {
        let now = idle(&util::get_text(&agent, &format!("{url}/metrics"))?);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        Ok(quiet_since.elapsed() > Duration::from_secs(5))
    })?;
    let mut rng = Rng::new(5);
    let timed = |path: String| -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut r = agent.get(&format!("{url}{path}")).call()?;
        let body = r.body_mut().read_to_string()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if r.status() != 200 {
            bail!("{path}: {} {body}", r.status());
        }
        Ok(ms)
    };
    let series_from = end - 24 * 3600;
    let paths: Vec<String> = (0..300)
        .map(|_| {
            let device = rng.next() as usize % devices;
            let item = rng.next() as usize % INTERFACES;
            format!(
                "/api/v1/series?family=Interface&device=rtr-{device:05}&item=ge-0/0/{item}&metric=in_bps&from={series_from}&to={end}&resolution=raw"
            )
        })
        .collect();
    // Twice over the same items: the first pass reads pages this process has not read yet, the
    // second shows the cost with them in its cache.
    for pass in ["first read of each item", "same items again"] {
        let mut series = paths.iter().map(|p| timed(p.clone())).collect::<anyhow::Result<Vec<f64>>>()?;
        println!(
            "  24 h raw series of one item (288 points, over HTTP, {pass}): p50 {:.2} ms  p99 {:.2} ms  (target < 5 ms)",
            percentile(&mut series, 50.0),
            percentile(&mut series, 99.0)
        );
    }
    let hour = end - 3 * 3600;
    let mut top = Vec::new();
    for _ in 0..30 {
        top.push(timed(format!("/api/v1/top?family=Interface&metric=in_bps&from={hour}&to={}&n=10", hour + 3600))?);
    }
    println!(
        "  top-10 of {items} items over one closed hour (hourly rollups): p50 {:.1} ms  p99 {:.1} ms  (target < 200 ms)",
        percentile(&mut top, 50.0),
        percentile(&mut top, 99.0)
    );
    let mut top_raw = Vec::new();
    for _ in 0..5 {
        top_raw.push(timed(format!(
            "/api/v1/top?family=Interface&metric=in_bps&from={}&to={}&n=10",
            hour + 60,
            hour + 3660
        ))?);
    }
    println!(
        "  top-10 over an hour not on hour boundaries (raw data): p50 {:.1} ms  p99 {:.1} ms",
        percentile(&mut top_raw, 50.0),
        percentile(&mut top_raw, 99.0)
    );
    portal_pages(&url, devices, &timed)?;
    Ok(())
}

/// The portal's pages on the same repository: server time (an HTTP GET on loopback, the body
/// read whole), and the device page's 24 h charts drawn in headless Chromium.
fn portal_pages(url: &str, devices: usize, timed: &dyn Fn(String) -> anyhow::Result<f64>) -> anyhow::Result<()> {
    let mut rng = Rng::new(13);
    let month = {
        let (y, m, _, _) = pollux_model::period::civil(util::unix_now());
        format!("{y}-{m:02}")
    };
    let device = move |rng: &mut Rng| format!("rtr-{:05}", rng.next() as usize % devices);
    type PathOf<'a> = Box<dyn Fn(&mut Rng) -> String + 'a>;
    let pages: Vec<(&str, usize, PathOf<'_>)> = vec![
        ("System Status /", 30, Box::new(|_| "/".to_owned())),
        ("devices, search", 10, Box::new(|rng| format!("/devices?q={}", &device(rng)[..8]))),
        ("devices, all 10,000", 5, Box::new(|_| "/devices".to_owned())),
        ("a device, 24 h charts", 30, Box::new(move |rng| format!("/devices/{}?range=24h", device(rng)))),
        ("a device, 7 d charts (hourly)", 30, Box::new(move |rng| format!("/devices/{}?range=7d", device(rng)))),
        ("top-20, 6 h", 10, Box::new(|_| "/top?metric=in_bps&range=6h".to_owned())),
        ("events", 30, Box::new(|_| "/events".to_owned())),
        (
            "95th percentile of one device's interfaces, this month",
            10,
            Box::new(move |rng| format!("/reports/percentile?month={month}&device={}", device(rng))),
        ),
    ];
    println!("portal pages on the same repository (server time over loopback; target p50 < 50 ms):");
    for (label, count, path) in &pages {
        let mut times = (0..*count).map(|_| timed(path(&mut rng))).collect::<anyhow::Result<Vec<f64>>>()?;
        println!(
            "  {label:<55} p50 {:>7.1} ms  p99 {:>7.1} ms",
            percentile(&mut times, 50.0),
            percentile(&mut times, 99.0)
        );
    }
    if !std::path::Path::new(browser::CHROMIUM).exists() {
        println!("  (no {}: the browser figure is skipped)", browser::CHROMIUM);
        return Ok(());
    }
    let mut b = browser::Browser::start();
    let mut drawn = Vec::new();
    for _ in 0..10 {
        b.navigate(&format!("{url}/devices/{}?range=24h", device(&mut rng)));
        let ms = b.eval("performance.getEntriesByType('navigation')[0].loadEventEnd");
        drawn.push(ms.as_f64().unwrap_or(f64::NAN));
    }
    println!(
        "  device page with 24 h charts, navigation to load event in headless Chromium: p50 {:.0} ms  p99 {:.0} ms  (target < 1 s)",
        percentile(&mut drawn, 50.0),
        percentile(&mut drawn, 99.0)
    );
    Ok(())
}

/// p50 and p99 of 300 raw 24-hour series of random items, through the repository API.
pub(crate) fn time_series(repo: &dyn Repository, devices: usize, end: i64) -> anyhow::Result<(f64, f64)> {
    let mut rng = Rng::new(9);
    let mut times = Vec::with_capacity(300);
    for _ in 0..300 {
        let q = pollux_repository::SeriesQuery {
            family: "Interface".into(),
            device: format!("rtr-{:05}", rng.next() as usize % devices),
            item: format!("ge-0/0/{}", rng.next() as usize % INTERFACES),
            metric: "in_bps".into(),
            from: end - 24 * 3600,
            to: end,
            resolution: pollux_model::Resolution::Raw,
        };
        let t = Instant::now();
        repo.series(&q)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((percentile(&mut times, 50.0), percentile(&mut times, 99.0)))
}
