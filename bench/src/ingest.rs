//! Ingest: values per second from PUT to loaded, beside a bare SQLite insert of the same rows
//! (the backend's limit) and VictoriaMetrics' Prometheus import of the same samples; and the
//! answer latency of one PUT.

use crate::util::{self, agent, median, metric, percentile, wait_for, Rng};
use anyhow::{bail, Context};
use pollux_model::codec::{binary, json, BINARY_CONTENT_TYPE, JSON_CONTENT_TYPE};
use pollux_model::{Dto, Record};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICES: usize = 500;
const INTERFACES: usize = 20;
pub const METRICS: [&str; 8] =
    ["in_bps", "out_bps", "in_pps", "out_pps", "in_errors", "out_errors", "in_discards", "out_discards"];
const CLIENTS: usize = 4;

/// A DTO of `devices x interfaces` Interface records with the eight counter-rate metrics.
pub fn make_dto(id: &str, cycle: i64, devices: usize, interfaces: usize, rng: &mut Rng) -> Dto {
    let records = (0..devices * interfaces)
        .map(|n| Record {
            device: format!("rtr-{:05}", n / interfaces),
            item: format!("ge-0/0/{}", n % interfaces),
            ts: cycle + (n % 240) as i64,
            values: (0..METRICS.len()).map(|m| Some((rng.float(1e9) / (m + 1) as f64).round())).collect(),
        })
        .collect();
    Dto {
        id: id.to_owned(),
        collector: "bench".into(),
        family: "Interface".into(),
        cycle,
        interval: 300,
        metrics: METRICS.iter().map(|m| m.to_string()).collect(),
        records,
    }
}

/// Size of the simulated network: 100,000 interfaces, so one poll cycle is ten DTOs.
pub(crate) const NETWORK_DTOS_PER_CYCLE: usize = 10;

/// `n` DTOs as a 100,000-interface network produces them: ten per 5-minute cycle, each from a
/// different block of devices, over the last cycles before now.
pub(crate) fn dtos(n: usize) -> Vec<Dto> {
    let mut rng = Rng::new(7);
    let cycles = n.div_ceil(NETWORK_DTOS_PER_CYCLE) as i64;
    let first = (util::unix_now() / 300 - cycles - 1) * 300;
    (0..n)
        .map(|i| {
            let cycle = first + (i / NETWORK_DTOS_PER_CYCLE) as i64 * 300;
            let mut dto = make_dto(&format!("bench.Interface.{i}"), cycle, DEVICES, INTERFACES, &mut rng);
            let block = i % NETWORK_DTOS_PER_CYCLE;
            for r in &mut dto.records {
                r.device = format!("b{block}-{}", r.device);
            }
            dto
        })
        .collect()
}

/// One PUT of a DTO body.
struct Put {
    url: String,
    content_type: &'static str,
    id: String,
    body: Vec<u8>,
}

/// Sends every body with `CLIENTS` concurrent senders; returns (seconds to all acknowledged,
/// seconds to all loaded). The first cycle's DTOs are sent first, untimed, so that the timed
/// part measures the steady state of a known network (item ids exist).
pub(crate) fn pollux_run(
    bodies: &Arc<Vec<(String, Vec<u8>)>>,
    content_type: &'static str,
    extra: &[String],
) -> anyhow::Result<(f64, f64)> {
    let shared = tempfile::tempdir()?;
    let (_proc, url) = util::start_aggregator_with(shared.path(), extra)?;
    let agent = agent();
    for (id, body) in &bodies[..NETWORK_DTOS_PER_CYCLE] {
        agent.put(&format!("{url}/api/v1/dto/{id}")).header("content-type", content_type).send(&body[..])?;
    }
    let warm = NETWORK_DTOS_PER_CYCLE as f64;
    wait_for(Duration::from_secs(600), || {
        let page = util::get_text(&agent, &format!("{url}/metrics"))?;
        Ok(metric(&page, "pollux_dtos_loaded_total") == Some(warm))
    })?;
    let start = Instant::now();
    let with_url: Arc<Vec<Put>> = Arc::new(
        bodies
            .iter()
            .map(|(id, body)| Put { url: url.clone(), content_type, id: id.clone(), body: body.clone() })
            .collect(),
    );
    util::send_all(&with_url, NETWORK_DTOS_PER_CYCLE, CLIENTS, |agent, Put { url, content_type, id, body }| {
        let r = agent.put(&format!("{url}/api/v1/dto/{id}")).header("content-type", *content_type).send(&body[..])?;
        if r.status() != 201 {
            bail!("PUT {id}: {}", r.status());
        }
        Ok(())
    })?;
    let acked = start.elapsed().as_secs_f64();
    let n = bodies.len() as f64;
    wait_for(Duration::from_secs(600), || {
        let page = util::get_text(&agent, &format!("{url}/metrics"))?;
        Ok(metric(&page, "pollux_dtos_loaded_total") == Some(n))
    })?;
    Ok((acked, start.elapsed().as_secs_f64()))
}

/// The backend's limit: the same rows inserted with one prepared statement, one transaction per
/// DTO, into a table keyed like Pollux's recent table, with the same durability settings.
fn bare_sqlite(dtos: &[Dto]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("bare.sqlite"))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE t (cycle INTEGER, item INTEGER, ts INTEGER, m1 REAL, m2 REAL, m3 REAL, m4 REAL,
                         m5 REAL, m6 REAL, m7 REAL, m8 REAL, PRIMARY KEY (cycle, item)) WITHOUT ROWID;",
    )?;
    let start = Instant::now();
    for (d, dto) in dtos.iter().enumerate() {
        let block = (d % NETWORK_DTOS_PER_CYCLE * dto.records.len()) as i64;
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")?;
            for (i, r) in dto.records.iter().enumerate() {
                stmt.raw_bind_parameter(1, dto.cycle)?;
                stmt.raw_bind_parameter(2, block + i as i64)?;
                stmt.raw_bind_parameter(3, r.ts)?;
                for (c, v) in r.values.iter().enumerate() {
                    stmt.raw_bind_parameter(4 + c, *v)?;
                }
                stmt.raw_execute()?;
            }
        }
        tx.commit()?;
    }
    let values: usize = dtos.iter().map(Dto::value_count).sum();
    Ok(values as f64 / start.elapsed().as_secs_f64())
}

/// VictoriaMetrics' `/api/v1/import/prometheus` rate for the same samples, when the Debian
/// package is installed; `None` otherwise.
fn victoria_metrics(dtos: &[Dto]) -> anyhow::Result<Option<f64>> {
    let bin = std::path::Path::new("/usr/bin/victoria-metrics");
    if !bin.exists() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let args = [
        format!("-storageDataPath={}", dir.path().display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-loggerLevel=ERROR".to_owned(),
    ];
    let _proc =
        pollux_cluster::Launch::new("victoria-metrics", bin, &args).spawn().context("starting victoria-metrics")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(30), || Ok(util::get_status(&format!("{url}/health"))? == 200))?;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        dtos.iter()
            .map(|d| {
                let mut out = String::with_capacity(d.records.len() * 8 * 64);
                for r in &d.records {
                    for (m, v) in d.metrics.iter().zip(&r.values) {
                        let v = v.unwrap();
                        out.push_str(&format!(
                            "{m}{{device=\"{}\",item=\"{}\"}} {v} {}\n",
                            r.device,
                            r.item,
                            r.ts * 1000
                        ));
                    }
                }
                out.into_bytes()
            })
            .collect(),
    );
    // As for Pollux, the first cycle registers the series untimed.
    for body in &bodies[..NETWORK_DTOS_PER_CYCLE] {
        agent().post(&format!("{url}/api/v1/import/prometheus")).send(&body[..])?;
    }
    let start = Instant::now();
    let with_url: Arc<Vec<(String, Vec<u8>)>> = Arc::new(bodies.iter().map(|b| (url.clone(), b.clone())).collect());
    util::send_all(&with_url, NETWORK_DTOS_PER_CYCLE, CLIENTS, |agent, (url, body)| {
        let r = agent.post(&format!("{url}/api/v1/import/prometheus")).send(&body[..])?;
        if !r.status().is_success() {
            bail!("import: {}", r.status());
        }
        Ok(())
    })?;
    let values: usize = dtos[NETWORK_DTOS_PER_CYCLE..].iter().map(Dto::value_count).sum();
    Ok(Some(values as f64 / start.elapsed().as_secs_f64()))
}

pub fn throughput(n: usize, runs: usize) -> anyhow::Result<()> {
    let dtos = dtos(n);
    let values: usize = dtos.iter().map(Dto::value_count).sum();
    println!(
        "ingest: {n} DTOs of {} records x {} metrics ({:.1} M values), {CLIENTS} concurrent senders, median of {runs} runs",
        DEVICES * INTERFACES,
        METRICS.len(),
        values as f64 / 1e6
    );
    let mut results = Vec::new();
    for (label, content_type) in [("json", JSON_CONTENT_TYPE), ("binary", BINARY_CONTENT_TYPE)] {
        let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
            dtos.iter()
                .map(|d| (d.id.clone(), if label == "json" { json::encode(d) } else { binary::encode(d) }))
                .collect(),
        );
        let size = bodies.iter().map(|b| b.1.len()).sum::<usize>() as f64 / n as f64;
        let (mut acked, mut loaded) = (Vec::new(), Vec::new());
        let timed_values = values as f64 * (n - NETWORK_DTOS_PER_CYCLE) as f64 / n as f64;
        for _ in 0..runs {
            let (a, l) = pollux_run(&bodies, content_type, &[])?;
            acked.push(timed_values / a);
            loaded.push(timed_values / l);
        }
        let (acked, loaded) = (median(&mut acked), median(&mut loaded));
        println!(
            "  pollux {label:<6} body {:>6.2} MB/DTO   PUT->acknowledged {:>6.2} M values/s   PUT->loaded {:>6.2} M values/s",
            size / 1e6,
            acked / 1e6,
            loaded / 1e6
        );
        results.push(loaded);
    }
    let mut bare: Vec<f64> = (0..runs).map(|_| bare_sqlite(&dtos)).collect::<anyhow::Result<_>>()?;
    let bare = median(&mut bare);
    println!("  reference: bare SQLite insert of the same rows     {:>6.2} M values/s", bare / 1e6);
    let best = results.iter().cloned().fold(0.0, f64::max);
    println!(
        "  ratio pollux PUT->loaded / bare SQLite: json {:.2}, binary {:.2}",
        results[0] / bare,
        results[1] / bare
    );
    let mut vm = Vec::new();
    for _ in 0..runs {
        if let Some(rate) = victoria_metrics(&dtos)? {
            vm.push(rate);
        }
    }
    if vm.is_empty() {
        println!("  reference: VictoriaMetrics not installed (apt-get install victoria-metrics)");
    } else {
        let vm = median(&mut vm);
        println!(
            "  reference: VictoriaMetrics import/prometheus      {:>6.2} M samples/s (acknowledged, not fsync'd)",
            vm / 1e6
        );
        println!("  ratio pollux best PUT->loaded / VictoriaMetrics: {:.2}", best / vm);
    }
    Ok(())
}

pub fn latency(runs: usize) -> anyhow::Result<()> {
    let shared = tempfile::tempdir()?;
    let (_proc, url) = util::start_aggregator(shared.path())?;
    let agent = agent();
    let mut rng = Rng::new(11);
    let first = (util::unix_now() / 300 - 3) * 300;
    println!("ingest answer latency (one sender, sequential PUTs, fsync'd before the answer):");
    for (label, devices, count) in [("10,000 records", DEVICES, runs), ("100 records", 5, runs * 5)] {
        for (codec, content_type) in [("json", JSON_CONTENT_TYPE), ("binary", BINARY_CONTENT_TYPE)] {
            let mut times = Vec::with_capacity(count);
            for i in 0..count {
                let id = format!("lat.{label}.{codec}.{i}").replace([' ', ','], "");
                let dto = make_dto(&id, first, devices, INTERFACES, &mut rng);
                let body = if codec == "json" { json::encode(&dto) } else { binary::encode(&dto) };
                let start = Instant::now();
                let r = agent
                    .put(&format!("{url}/api/v1/dto/{id}"))
                    .header("content-type", content_type)
                    .send(&body[..])?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
                if r.status() != 201 {
                    bail!("PUT {id}: {}", r.status());
                }
            }
            println!(
                "  {label:<15} {codec:<6} p50 {:>7.2} ms   p99 {:>7.2} ms   ({count} PUTs)",
                percentile(&mut times, 50.0),
                percentile(&mut times, 99.0)
            );
        }
    }
    Ok(())
}
