//! The collector's own figures, served as Prometheus text on `GET /metrics` (and `GET /health`)
//! from a small listener (`metrics_listen`).

use crate::spool::Spool;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Metrics {
    pub cycles: AtomicU64,
    pub cycles_skipped: AtomicU64,
    pub polls: AtomicU64,
    pub polls_unreachable: AtomicU64,
    /// Devices whose host refused the probe (nothing on the SNMP port), not asked at all.
    pub polls_refused: AtomicU64,
    pub timeouts: AtomicU64,
    pub family_failures: AtomicU64,
    pub records: AtomicU64,
    pub dtos_spooled: AtomicU64,
    pub dtos_sent: AtomicU64,
    pub dtos_rejected: AtomicU64,
    /// Refused with 409: the aggregator holds the id with other content.
    pub dtos_conflict: AtomicU64,
    pub dropped: AtomicU64,
    /// Spooled DTOs whose file disappeared before any aggregator acknowledged them.
    pub spool_vanished: AtomicU64,
    pub send_failures: AtomicU64,
    pub last_cycle_seconds_millis: AtomicU64,
    /// Unix milliseconds of the last acknowledged DTO (0: none yet).
    pub last_ack_ms: AtomicU64,
    /// Devices that did not answer in their group's last cycle, by poll interval.
    pub unreachable: std::sync::Mutex<std::collections::BTreeMap<u32, u64>>,
}

impl Metrics {
    /// Devices that did not answer in their last poll, over every group.
    pub fn unreachable_now(&self) -> u64 {
        self.unreachable.lock().expect("metrics").values().sum()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, spool: &Spool, now: i64) -> String {
        let (depth, bytes, oldest) = spool.depth();
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        line("pollux_collector_spool_dtos", "gauge", "DTOs in the spool, not yet acknowledged.", depth as f64);
        line("pollux_collector_spool_bytes", "gauge", "Bytes of DTOs in the spool.", bytes as f64);
        line(
            "pollux_collector_spool_oldest_age_seconds",
            "gauge",
            "Age of the oldest unacknowledged DTO's cycle (0 when the spool is empty).",
            oldest.map_or(0.0, |cycle| (now - cycle).max(0) as f64),
        );
        line("pollux_collector_cycles_total", "counter", "Poll cycles completed.", get(&self.cycles));
        line(
            "pollux_collector_cycles_skipped_total",
            "counter",
            "Cycles not polled because the one before overran its interval.",
            get(&self.cycles_skipped),
        );
        line("pollux_collector_polls_total", "counter", "Device polls.", get(&self.polls));
        line(
            "pollux_collector_polls_unreachable_total",
            "counter",
            "Device polls without an answer (recorded as reachable=0).",
            get(&self.polls_unreachable),
        );
        line(
            "pollux_collector_polls_refused_total",
            "counter",
            "Device polls skipped because the host refused the probe: nothing listens on its SNMP port.",
            get(&self.polls_refused),
        );
        line("pollux_collector_timeouts_total", "counter", "SNMP requests that timed out.", get(&self.timeouts));
        line(
            "pollux_collector_family_failures_total",
            "counter",
            "Families of a reachable device that could not be polled in a cycle.",
            get(&self.family_failures),
        );
        line("pollux_collector_records_total", "counter", "Records put in DTOs.", get(&self.records));
        line("pollux_collector_dtos_spooled_total", "counter", "DTOs written to the spool.", get(&self.dtos_spooled));
        line("pollux_collector_dtos_sent_total", "counter", "DTOs acknowledged (201 or 200).", get(&self.dtos_sent));
        line(
            "pollux_collector_dtos_rejected_total",
            "counter",
            "DTOs an aggregator refused (moved to rejected/).",
            get(&self.dtos_rejected),
        );
        line(
            "pollux_collector_dtos_conflict_total",
            "counter",
            "DTOs refused with 409: the aggregator holds their id with other content (included in rejected).",
            get(&self.dtos_conflict),
        );
        line(
            "pollux_collector_dropped_total",
            "counter",
            "DTOs deleted unsent because the spool reached spool_max_bytes.",
            get(&self.dropped),
        );
        line(
            "pollux_collector_spool_vanished_total",
            "counter",
            "Spooled DTOs whose file disappeared before any aggregator acknowledged them (deleted outside the \
             collector): lost, not sent.",
            get(&self.spool_vanished),
        );
        line(
            "pollux_collector_send_failures_total",
            "counter",
            "Sends that failed (connection, timeout, 503, 5xx) and were retried.",
            get(&self.send_failures),
        );
        line(
            "pollux_collector_last_cycle_seconds",
            "gauge",
            "How long the last cycle's polls took.",
            get(&self.last_cycle_seconds_millis) / 1000.0,
        );
        out
    }
}

type Shared = (Arc<Metrics>, Arc<Spool>);

async fn metrics(State((metrics, spool)): State<Shared>) -> String {
    metrics.render(&spool, crate::poll::unix_now() as i64)
}

/// Serves `/metrics` and `/health` until `shutdown`. With a read token, `/metrics` needs it
/// (`Authorization: Bearer`, as a Prometheus scrape sends it); `/health` stays open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<pollux_transport::ServerTls>,
    tokens: Arc<pollux_transport::auth::TokenFiles>,
    metrics_: Arc<Metrics>,
    spool: Arc<Spool>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            let tokens = tokens.clone();
            async move {
                let authorization = request.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes());
                match tokens.current().check(pollux_transport::auth::Class::Read, authorization) {
                    Ok(()) => next.run(request).await,
                    Err(_) => (
                        axum::http::StatusCode::UNAUTHORIZED,
                        [(axum::http::header::WWW_AUTHENTICATE, "Bearer realm=\"pollux\"")],
                        "this collector's /metrics needs its read token: send Authorization: Bearer <token>\n",
                    )
                        .into_response(),
                }
            }
        }))
        .route("/health", get(|| async { "ok\n" }))
        .with_state((metrics_, spool));
    let limits = pollux_transport::ServerLimits { max_connections: 64, ..Default::default() };
    pollux_transport::serve_router(listener, tls, app, limits, Default::default(), shutdown).await;
}
