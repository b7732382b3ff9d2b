//! The PostgreSQL repository: PUT -> loaded values/s beside a bare binary COPY of the same rows
//! into the same server and beside the SQLite backend, all in one run; then the query figures
//! of the `query` bench on PostgreSQL (24 h series, top-10 over an hour, bytes per value).
//!
//! The server is a throwaway one (initdb on a free loopback port, fsync on, default settings
//! otherwise but shared_buffers = 128 MB), on the same 2 cores as the aggregator and senders.

use crate::ingest::{dtos, make_dto, pollux_run, METRICS, NETWORK_DTOS_PER_CYCLE};
use crate::util::{median, percentile, Rng};
use anyhow::Context;
use pollux_model::codec::{binary, BINARY_CONTENT_TYPE};
use pollux_model::{Catalog, Dto};
use pollux_repository::postgres::scratch::ScratchServer;
use pollux_repository::{OpenOptions, RollupPolicy, TopQuery};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INTERFACES: usize = 20;
const INTERVAL: i64 = 300;

pub fn run(n: usize, runs: usize, items: usize, hours: usize) -> anyhow::Result<()> {
    let server = ScratchServer::start().map_err(anyhow::Error::msg)?;
    ingest(&server, n, runs)?;
    if items == 0 {
        return Ok(());
    }
    queries(&server, items, hours)
}

fn ingest(server: &ScratchServer, n: usize, runs: usize) -> anyhow::Result<()> {
    let dtos = dtos(n);
    let values: usize = dtos.iter().map(Dto::value_count).sum();
    let timed = values as f64 * (n - NETWORK_DTOS_PER_CYCLE) as f64 / n as f64;
    println!(
        "postgres ingest: {n} binary DTOs of {} records x {} metrics ({:.1} M values), median of {runs} runs",
        dtos[0].records.len(),
        METRICS.len(),
        values as f64 / 1e6
    );
    let bodies: Arc<Vec<(String, Vec<u8>)>> =
        Arc::new(dtos.iter().map(|d| (d.id.clone(), binary::encode(d))).collect());
    let (mut pg, mut sqlite, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let url = server.database(&format!("ingest{run}")).map_err(anyhow::Error::msg)?;
        let (_, loaded) = pollux_run(&bodies, BINARY_CONTENT_TYPE, &["--repository".into(), url])?;
        pg.push(timed / loaded);
        let (_, loaded) = pollux_run(&bodies, BINARY_CONTENT_TYPE, &[])?;
        sqlite.push(timed / loaded);
        let url = server.database(&format!("bare{run}")).map_err(anyhow::Error::msg)?;
        copy.push(bare_copy(&url, &dtos)?);
    }
    let (pg, sqlite, copy) = (median(&mut pg), median(&mut sqlite), median(&mut copy));
    println!("  pollux on PostgreSQL  PUT->loaded {:>6.2} M values/s", pg / 1e6);
    println!("  reference: bare binary COPY, same rows, same server {:>6.2} M values/s", copy / 1e6);
    println!("  pollux on SQLite      PUT->loaded {:>6.2} M values/s", sqlite / 1e6);
    println!(
        "  ratio PostgreSQL PUT->loaded / bare COPY: {:.2} (target >= 0.5); / SQLite backend: {:.2}",
        pg / copy,
        pg / sqlite
    );
    Ok(())
}

/// The server's limit: each DTO's rows with one binary COPY, one transaction per DTO, into a
/// table partitioned and keyed like the repository's raw table.
fn bare_copy(url: &str, dtos: &[Dto]) -> anyhow::Result<f64> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    let metrics: String = (1..=METRICS.len()).map(|m| format!(", m{m} double precision")).collect();
    client.batch_execute(&format!(
        "CREATE TABLE t (item_id bigint NOT NULL, cycle bigint NOT NULL, ts bigint NOT NULL{metrics},
            PRIMARY KEY (item_id, cycle)) PARTITION BY RANGE (cycle);
         CREATE INDEX ON t USING brin (cycle);"
    ))?;
    let days: std::collections::BTreeSet<i64> = dtos.iter().map(|d| d.cycle.div_euclid(86_400)).collect();
    for day in days {
        client.batch_execute(&format!(
            "CREATE TABLE t_{day} PARTITION OF t FOR VALUES FROM ({}) TO ({})",
            day * 86_400,
            (day + 1) * 86_400
        ))?;
    }
    let types: Vec<Type> = [Type::INT8; 3].into_iter().chain(METRICS.iter().map(|_| Type::FLOAT8)).collect();
    let mut timed_values = 0;
    let mut start = Instant::now();
    for (d, dto) in dtos.iter().enumerate() {
        if d == NETWORK_DTOS_PER_CYCLE {
            // As for Pollux, the first cycle is not timed.
            start = Instant::now();
        }
        let block = (d % NETWORK_DTOS_PER_CYCLE * dto.records.len()) as i64;
        let mut tx = client.transaction()?;
        let partition = format!("t_{}", dto.cycle.div_euclid(86_400));
        let mut copy = BinaryCopyInWriter::new(tx.copy_in(&format!("COPY {partition} FROM STDIN BINARY"))?, &types);
        for (i, r) in dto.records.iter().enumerate() {
            let item = block + i as i64;
            let mut fields: Vec<&(dyn ToSql + Sync)> = vec![&item, &dto.cycle, &r.ts];
            fields.extend(r.values.iter().map(|v| v as &(dyn ToSql + Sync)));
            copy.write(&fields)?;
        }
        copy.finish()?;
        tx.commit()?;
        if d >= NETWORK_DTOS_PER_CYCLE {
            timed_values += dto.value_count();
        }
    }
    Ok(timed_values as f64 / start.elapsed().as_secs_f64())
}

/// The `query` bench's figures on PostgreSQL, through the repository API.
fn queries(server: &ScratchServer, items: usize, hours: usize) -> anyhow::Result<()> {
    let url = server.database("query").map_err(anyhow::Error::msg)?;
    let repo = pollux_repository::open(&pollux_repository::Location::Postgres(url), &OpenOptions::default())?;
    let devices = items / INTERFACES;
    let end = crate::util::unix_now() / 3600 * 3600;
    let start = end - hours as i64 * 3600;
    let cycles = (end - start) / INTERVAL;
    println!("postgres query: {items} interfaces x {cycles} cycles of 5 minutes ({hours} h), 8 metrics");
    repo.claim_epoch(1, "bench")?;
    repo.ensure_family(1, Catalog::builtin().get("Interface").unwrap())?;
    let before: u64 = repo.stats()?.bytes;
    let mut rng = Rng::new(3);
    let per_dto = 10_000 / INTERFACES;
    let (mut values, t) = (0usize, Instant::now());
    for c in 0..cycles {
        let cycle = start + c * INTERVAL;
        let batch: Vec<Dto> = (0..devices.div_ceil(per_dto))
            .map(|b| {
                let mut dto = make_dto(&format!("q.{c}.{b}"), cycle, per_dto.min(devices), INTERFACES, &mut rng);
                for (k, r) in dto.records.iter_mut().enumerate() {
                    r.device = format!("rtr-{:05}", b * per_dto + k / INTERFACES);
                }
                dto
            })
            .collect();
        for chunk in batch.chunks(5) {
            values += repo.load(1, chunk)?.values;
        }
    }
    println!(
        "  load through the repository API: {:.2} M values/s ({:.1} M values in {:.1} s)",
        values as f64 / t.elapsed().as_secs_f64() / 1e6,
        values as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut rolled = 0;
    loop {
        let p = repo.roll_up(1, crate::util::unix_now(), &RollupPolicy::immediate(Duration::from_secs(600)), 1000)?;
        rolled += p.done;
        if !p.more {
            break;
        }
    }
    println!("  rollups computed in SQL: {rolled} periods in {:.1} s", t.elapsed().as_secs_f64());
    let (p50, p99) = crate::query::time_series(&*repo, devices, end)?;
    println!("  24 h raw series of one item (repository API): p50 {p50:.2} ms  p99 {p99:.2} ms");
    let mut times = Vec::new();
    for h in 0..20 {
        let from = end - (h % hours as i64 + 1) * 3600;
        let q = TopQuery { family: "Interface".into(), metric: "in_bps".into(), from, to: from + 3600, n: 10 };
        let t = Instant::now();
        anyhow::ensure!(repo.top(&q)?.len() == 10, "top-10 answered");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("  top-10 over an hour (rolled up; repository API): p50 {:.2} ms", percentile(&mut times, 50.0));
    grafana_query(server, "query", end)?;
    let bytes = repo.stats()?.bytes - before;
    println!(
        "  database growth: {:.2} GB, {:.2} bytes per stored value (raw with indexes, plus rollups)",
        bytes as f64 / 1e9,
        bytes as f64 / values as f64
    );
    Ok(())
}

/// The operator guide's Grafana query for an interface's in/out bps, with Grafana's macros replaced by
/// the last hour: it must answer a point per cycle.
fn grafana_query(server: &ScratchServer, database: &str, end: i64) -> anyhow::Result<()> {
    let readme = include_str!("../../docs/operator-guide.md");
    let start = readme.find("SELECT to_timestamp(r.ts) AS time").context("the operator guide's Grafana query")?;
    let sql = &readme[start..start + readme[start..].find("```").context("end of the query")?];
    let number: i64 = {
        let mut c = postgres::Client::connect(&server.url(database), postgres::NoTls)?;
        c.query_one("SELECT number FROM family_state WHERE family = 'Interface'", &[])?.get(0)
    };
    let sql = sql
        .replace("f1_raw", &format!("f{number}_raw"))
        .replace("$device", "rtr-00000")
        .replace("$interface", "ge-0/0/1")
        .replace("$__unixEpochFrom()", &(end - 3600).to_string())
        .replace("$__unixEpochTo()", &end.to_string());
    let mut client = postgres::Client::connect(&server.url(database), postgres::NoTls)?;
    let rows = client.query(sql.as_str(), &[])?;
    println!("  the operator guide's Grafana query over the last hour: {} points of in/out bps", rows.len());
    anyhow::ensure!(rows.len() >= 11, "a point per 5-minute cycle: {}", rows.len());
    Ok(())
}
