//! Pollux benchmarks. Each prints its figures beside the reference it is compared with,
//! measured in the same run, as medians over repeated runs (the machine is noisy).
//!
//! ```text
//! cargo build --release -p pollux -p pollux-bench
//! target/release/pollux-bench ingest      # PUT -> loaded values/s, bare SQLite, VictoriaMetrics
//! target/release/pollux-bench latency     # ingest answer latency p50/p99
//! target/release/pollux-bench query       # series and top-N latency on a day of 100,000 items
//! target/release/pollux-bench failover    # kill -9 -> first 201, planned switchover, proxy overhead
//! target/release/pollux-bench collector   # items polled/s vs snmpbulkwalk; 100,000 interfaces per cycle
//! target/release/pollux-bench alerts      # loader with 1,000 rules vs none; 201 -> webhook POST p50
//! target/release/pollux-bench tls         # HTTPS with tokens vs plain: ingest, latency, failover, proxy
//! target/release/pollux-bench postgres    # PostgreSQL: PUT -> loaded vs bare COPY and SQLite; queries
//! target/release/pollux-bench all
//! ```
//!
//! `BENCH_PROBE_RECENT=1 pollux-bench query` also times the series before compaction, i.e. the
//! layout with the time-ordered table alone (the measurement behind the two-table design).

mod alerts;
// The portal tests' headless Chromium driver, shared rather than copied.
#[allow(dead_code)]
#[path = "../../crates/pollux/tests/common/browser.rs"]
mod browser;
mod collector;
mod failover;
mod ingest;
mod postgres;
mod query;
mod tls;
mod util;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match what {
        "ingest" => ingest::throughput(flag("--dtos", 60), flag("--runs", 3)),
        "latency" => ingest::latency(flag("--runs", 40)),
        "query" => query::run(flag("--items", 100_000), flag("--hours", 24)),
        "failover" => failover::run(flag("--rounds", 5)),
        "collector" => collector::run(flag("--rate-devices", 1_000), flag("--devices", 10_000)),
        "alerts" => alerts::run(flag("--cycles", 6), flag("--runs", 5), flag("--events", 30)),
        "tls" => tls::run(flag("--dtos", 40), flag("--runs", 3), flag("--rounds", 5)),
        "postgres" => {
            postgres::run(flag("--dtos", 40), flag("--runs", 3), flag("--items", 100_000), flag("--hours", 24))
        }
        "all" => {
            ingest::throughput(60, 3)?;
            ingest::latency(40)?;
            failover::run(5)?;
            collector::run(1_000, 10_000)?;
            alerts::run(6, 5, 30)?;
            tls::run(40, 3, 5)?;
            query::run(100_000, 24)
        }
        other => {
            anyhow::bail!(
                "unknown benchmark {other:?}: ingest, latency, failover, collector, alerts, tls, postgres, query or all"
            )
        }
    }
}
