//! The aggregator's own figures, exposed at `GET /metrics` in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated on the ingest and load paths; plain atomics, no locks.
#[derive(Debug, Default)]
pub struct Metrics {
    pub dtos_received: AtomicU64,
    pub dtos_stored: AtomicU64,
    pub dtos_duplicate: AtomicU64,
    /// An id sent again with other content (409).
    pub dtos_conflict: AtomicU64,
    pub dtos_rejected: AtomicU64,
    pub dtos_loaded: AtomicU64,
    pub dtos_already_loaded: AtomicU64,
    pub dtos_quarantined: AtomicU64,
    pub values_loaded: AtomicU64,
    pub load_errors: AtomicU64,
    pub rollups_computed: AtomicU64,
    pub cycles_compacted: AtomicU64,
    pub events_opened: AtomicU64,
    pub notifications_sent: AtomicU64,
    pub notification_failures: AtomicU64,
    /// Sum of ingest answer times in microseconds, with `dtos_received` as the count.
    pub ingest_micros: AtomicU64,
    /// The HTTP listener's connections.
    pub http: std::sync::Arc<pollux_transport::ServerStats>,
}

/// Values sampled at scrape time.
pub struct Gauges {
    pub epoch: u64,
    pub role: &'static str,
    pub ready: bool,
    pub dto_backlog: usize,
    pub load_lag_seconds: f64,
    pub repository_bytes: u64,
    pub pending_rollups: u64,
    /// Records replaced by another DTO id's record for the same item and cycle, ever.
    pub replaced_records: u64,
    pub open_events: std::collections::BTreeMap<String, u64>,
    pub outbox_depth: u64,
    pub outbox_oldest_age_seconds: i64,
    pub outbox_dropped: u64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: &AtomicU64| {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        };
        counter("pollux_dtos_received_total", "PUT /api/v1/dto requests", &self.dtos_received);
        counter("pollux_dtos_stored_total", "DTOs made durable in the shared dir (201)", &self.dtos_stored);
        counter(
            "pollux_dtos_duplicate_total",
            "DTOs whose id was already stored or loaded (200)",
            &self.dtos_duplicate,
        );
        counter("pollux_dtos_rejected_total", "DTOs refused with a 4xx", &self.dtos_rejected);
        counter(
            "pollux_dtos_conflict_total",
            "DTO ids sent again with other content (409; included in rejected)",
            &self.dtos_conflict,
        );
        let http = &self.http;
        counter("pollux_http_connections_accepted_total", "connections accepted", &http.accepted);
        counter("pollux_http_connections_refused_total", "connections closed at max_connections", &http.refused);
        counter("pollux_http_accept_errors_total", "failed accepts (file handles, mostly)", &http.accept_errors);
        counter("pollux_http_timeouts_total", "connections closed for a stalled head, body or reader", &http.timed_out);
        counter(
            "pollux_http_tls_failures_total",
            "failed TLS handshakes (untrusted certificate, old protocol, plain HTTP)",
            &http.tls_failures,
        );
        counter("pollux_dtos_loaded_total", "DTOs loaded into the repository", &self.dtos_loaded);
        counter("pollux_dtos_already_loaded_total", "stored DTOs found already loaded", &self.dtos_already_loaded);
        counter(
            "pollux_dtos_quarantined_total",
            "DTO files moved to dto/quarantine: damaged, or an id already loaded with other content",
            &self.dtos_quarantined,
        );
        counter("pollux_values_loaded_total", "values loaded into the repository", &self.values_loaded);
        counter("pollux_load_errors_total", "failed load transactions (retried)", &self.load_errors);
        counter("pollux_rollups_computed_total", "rollup periods computed", &self.rollups_computed);
        counter("pollux_cycles_compacted_total", "cycles moved to item-ordered history", &self.cycles_compacted);
        counter(
            "pollux_event_transitions_total",
            "events opened or cleared by loads on this node",
            &self.events_opened,
        );
        counter("pollux_notifications_sent_total", "notifications delivered (2xx)", &self.notifications_sent);
        counter(
            "pollux_notification_failures_total",
            "failed deliveries (retried with backoff)",
            &self.notification_failures,
        );
        counter("pollux_ingest_micros_total", "time spent answering PUTs, microseconds", &self.ingest_micros);
        let mut gauge = |name: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(
            "pollux_http_connections_open",
            "connections open now",
            self.http.open.load(Ordering::Relaxed).to_string(),
        );
        gauge("pollux_epoch", "this node's epoch", g.epoch.to_string());
        gauge("pollux_ready", "1 on the ready active", u8::from(g.ready).to_string());
        gauge("pollux_dto_backlog", "DTOs stored but not yet loaded", g.dto_backlog.to_string());
        gauge(
            "pollux_load_lag_seconds",
            "age of the oldest DTO waiting to be loaded",
            format!("{:.3}", g.load_lag_seconds),
        );
        gauge("pollux_repository_bytes", "size of the repository files", g.repository_bytes.to_string());
        gauge("pollux_pending_rollups", "rollup periods waiting to be computed", g.pending_rollups.to_string());
        gauge("pollux_outbox_depth", "notifications not yet delivered to every receiver", g.outbox_depth.to_string());
        gauge(
            "pollux_outbox_oldest_age_seconds",
            "age of the oldest undelivered notification",
            g.outbox_oldest_age_seconds.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP pollux_records_replaced_total records that replaced one stored for the same item and cycle \
             under another DTO id\n# TYPE pollux_records_replaced_total counter\npollux_records_replaced_total {}",
            g.replaced_records
        );
        let _ = writeln!(
            out,
            "# HELP pollux_outbox_dropped_total notifications dropped because the outbox was full\n\
             # TYPE pollux_outbox_dropped_total counter\npollux_outbox_dropped_total {}",
            g.outbox_dropped
        );
        let _ = writeln!(out, "# HELP pollux_events_open open threshold events\n# TYPE pollux_events_open gauge");
        for severity in pollux_repository::Severity::ALL {
            let n = g.open_events.get(severity.name()).copied().unwrap_or(0);
            let _ = writeln!(out, "pollux_events_open{{severity=\"{}\"}} {n}", severity.name());
        }
        let _ = writeln!(out, "# HELP pollux_role this node's role\n# TYPE pollux_role gauge");
        for role in ["standby", "starting", "active", "fenced"] {
            let _ = writeln!(out, "pollux_role{{role=\"{role}\"}} {}", u8::from(role == g.role));
        }
        out
    }
}
