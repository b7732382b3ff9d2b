//! HTTPS with tokens against plain HTTP, in the same run: PUT -> acknowledged and loaded rates
//! of 10,000-record DTOs, the answer latency of one such PUT, then the failover benchmark
//! (kill -9 -> first 201 through the proxy, switchover, proxy overhead) in both modes.

use crate::ingest::{dtos, make_dto, pollux_run, NETWORK_DTOS_PER_CYCLE};
use crate::util::{self, median, percentile, set_tls, start_aggregator, Rng};
use pollux_model::codec::{binary, BINARY_CONTENT_TYPE};
use pollux_model::Dto;
use std::sync::Arc;
use std::time::Instant;

const MODES: [(&str, bool); 2] = [("plain", false), ("https", true)];

pub fn run(n: usize, runs: usize, rounds: usize) -> anyhow::Result<()> {
    let dtos = dtos(n);
    let values: usize = dtos[NETWORK_DTOS_PER_CYCLE..].iter().map(Dto::value_count).sum();
    let bodies: Arc<Vec<(String, Vec<u8>)>> =
        Arc::new(dtos.iter().map(|d| (d.id.clone(), binary::encode(d))).collect());
    println!(
        "tls: {n} binary DTOs of {} records, plain HTTP and HTTPS with tokens alternating, median of {runs} runs each",
        dtos[0].records.len()
    );
    let mut rates: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for _ in 0..runs {
        for (m, (_, on)) in MODES.iter().enumerate() {
            set_tls(*on)?;
            let (acked, loaded) = pollux_run(&bodies, BINARY_CONTENT_TYPE, &[])?;
            rates[m].0.push(values as f64 / acked);
            rates[m].1.push(values as f64 / loaded);
        }
    }
    let mut medians = Vec::new();
    for (m, (label, _)) in MODES.iter().enumerate() {
        let (acked, loaded) = (median(&mut rates[m].0), median(&mut rates[m].1));
        println!(
            "  {label:<6} PUT->acknowledged {:>6.2} M values/s   PUT->loaded {:>6.2} M values/s",
            acked / 1e6,
            loaded / 1e6
        );
        medians.push((acked, loaded));
    }
    println!(
        "  HTTPS cost (target < 10 %): acknowledged {:+.1} %, loaded {:+.1} %",
        (1.0 - medians[1].0 / medians[0].0) * 100.0,
        (1.0 - medians[1].1 / medians[0].1) * 100.0
    );

    let mut latencies = Vec::new();
    for (label, on) in MODES {
        set_tls(on)?;
        let shared = tempfile::tempdir()?;
        let (_proc, url) = start_aggregator(shared.path())?;
        let agent = util::agent();
        let mut rng = Rng::new(5);
        let cycle = (util::unix_now() / 300 - 3) * 300;
        let mut times = Vec::new();
        for i in 0..30 {
            let dto = make_dto(&format!("lat.{label}.{i}"), cycle, 500, 20, &mut rng);
            let body = binary::encode(&dto);
            let t = Instant::now();
            let r = agent
                .put(&format!("{url}/api/v1/dto/{}", dto.id))
                .header("content-type", BINARY_CONTENT_TYPE)
                .send(&body[..])?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(r.status() == 201, "PUT {}", r.status());
        }
        let p50 = percentile(&mut times, 50.0);
        println!("  {label:<6} one 10,000-record PUT at a time: p50 {p50:.2} ms");
        latencies.push(p50);
    }
    println!("  HTTPS latency cost at p50: {:+.1} %", (latencies[1] / latencies[0] - 1.0) * 100.0);

    for (label, on) in MODES.iter().filter(|_| rounds > 0) {
        set_tls(*on)?;
        println!("{label}:");
        crate::failover::run(rounds)?;
    }
    set_tls(false)
}
