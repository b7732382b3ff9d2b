//! The collector's report to the aggregators every 10 s (`PUT /api/v1/collectors/{id}`): what
//! the System Status shows of it, and how it tells "connected" from "not connected" (no report
//! for 60 s, as the original marks a Data Collector down).

use crate::metrics::Metrics;
use crate::spool::Spool;
use pollux_model::wire::CollectorReport;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EVERY: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Reporter {
    pub id: String,
    pub urls: Vec<String>,
    pub token: pollux_transport::auth::ClientToken,
    pub tls: pollux_transport::ClientTls,
    pub devices: usize,
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub stop: Arc<AtomicBool>,
}

impl Reporter {
    pub fn body(&self) -> CollectorReport {
        let (spool_dtos, _, oldest) = self.spool.depth();
        let now = crate::poll::unix_now();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let last_cycle_ms = get(&self.metrics.last_cycle_seconds_millis);
        let last_ack = get(&self.metrics.last_ack_ms);
        CollectorReport {
            id: self.id.clone(),
            version: pollux_model::wire::VERSION.to_owned(),
            devices: self.devices as u64,
            unreachable: self.metrics.unreachable_now(),
            spool_dtos: spool_dtos as u64,
            spool_oldest_age_s: oldest.map(|t| (now - t as f64).max(0.0)),
            last_cycle_s: (last_cycle_ms > 0).then(|| last_cycle_ms as f64 / 1000.0),
            dropped_total: get(&self.metrics.dropped),
            last_ack_ms: (last_ack > 0).then_some(last_ack as i64),
        }
    }

    /// Reports every [`EVERY`] to the first URL that takes it, until stopped.
    pub fn run(self) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .tls_config(self.tls.ureq())
            .http_status_as_error(false)
            // A report redirected would be a GET answered by whatever is there: not delivered.
            .max_redirects(0)
            .build()
            .into();
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                next = Instant::now() + EVERY;
                let body = self.body();
                let delivered = self.urls.iter().any(|url| {
                    let mut request = agent.put(format!("{url}/api/v1/collectors/{}", self.id));
                    if let Some(authorization) = self.token.header() {
                        request = request.header("Authorization", authorization);
                    }
                    match request.send_json(&body) {
                        Ok(r) if r.status().is_success() => true,
                        Ok(r) => {
                            tracing::debug!("report to {url}: {}", r.status());
                            false
                        }
                        Err(e) => {
                            tracing::debug!("report to {url}: {e}");
                            false
                        }
                    }
                });
                if !delivered {
                    tracing::debug!("no aggregator took this collector's report; next in {EVERY:?}");
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
