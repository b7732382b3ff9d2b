//! `GET /api/v1/status`: the System Status, which `pollux status` prints, the portal draws and
//! the demo reads.
//!
//! ```text
//!   election/nodes/<id>.json (each node, every heartbeat) ─┐
//!   collectors/<id>.json (each collector, every 10 s)     ─┼─▶ SystemStatus ─▶ JSON, text, HTML
//!   the answering node: role, store backlog, repository    ─┘
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A collector silent this long is "not connected", as the original marks a Data Collector
/// down (it reports every 10 s).
pub const COLLECTOR_DOWN_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemStatus {
    /// True when data flows: a ready active, healthy shared directory and repository, loads
    /// succeeding, nothing stuck. `pollux status` exits 0 only then.
    pub flowing: bool,
    /// Why data is not flowing, in words an operator can act on.
    pub problems: Vec<String>,
    /// What is late or worrying while data flows (the newest data older than two poll
    /// intervals): shown amber, `pollux status` still exits 0.
    pub warnings: Vec<String>,
    /// How long ago the active last loaded data.
    pub newest_load_age_seconds: Option<f64>,
    pub family_files: Vec<FamilyProblem>,
    pub nodes: Vec<NodeStatus>,
    pub lease: Option<LeaseView>,
    /// The ready active's node id.
    pub active: Option<String>,
    pub failwait: String,
    pub startwait: String,
    pub dto_backlog: usize,
    pub loader_lag_seconds: f64,
    pub shared_dir: SharedDirView,
    pub repository: RepositoryView,
    pub alerting: Option<AlertingView>,
    /// Long work in progress on the node that answered.
    pub progress: BTreeMap<String, TaskProgress>,
    pub collectors: Vec<CollectorStatus>,
    /// HTTPS and tokens of the node that answered.
    pub security: SecurityView,
    pub version: String,
}

/// The listener's certificate and which route classes are open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityView {
    pub https: bool,
    /// Unix seconds after which clients refuse the certificate.
    pub cert_not_after: Option<i64>,
    /// An expired certificate, or files that failed to (re)load while the previous pair serves.
    pub cert_error: Option<String>,
    pub cert_reloads: u64,
    /// Route classes without a token: open to anyone who reaches the port.
    pub open_classes: Vec<String>,
}

/// One aggregator's line: what it last wrote in its status file (this node's own is live).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    pub node: String,
    /// `active`, `starting`, `standby`, `fenced` or `maintenance` as the node said; see
    /// [`NodeStatus::state`] for what the page shows.
    pub role: String,
    pub epoch: u64,
    pub ready: bool,
    pub advertise: String,
    pub version: String,
    pub pid: u32,
    pub failwait: String,
    pub startwait: String,
    pub reason: Option<String>,
    pub updated_at_ms: Option<i64>,
    pub heartbeat_age_seconds: Option<f64>,
    /// False when the node has been silent for failwait: down, or cut off.
    pub reachable: bool,
    pub this_node: bool,
    pub loader: Option<LoaderState>,
    /// The background workers of the active (loader, housekeeping, notifier): a step that keeps
    /// failing shows here and in the problems.
    pub workers: BTreeMap<String, WorkerStatus>,
}

impl NodeStatus {
    /// The original's states: `down` for a node silent for failwait, else its role
    /// (`standby` is the original's inactive).
    pub fn state(&self) -> &str {
        if self.reachable {
            &self.role
        } else {
            "down"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseView {
    pub holder: String,
    pub advertise: String,
    pub epoch: u64,
    pub counter: u64,
    pub state: String,
    pub unchanged_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedDirView {
    pub path: String,
    pub ok: bool,
    pub nfs: bool,
    pub free_bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepositoryView {
    pub ok: bool,
    /// `sqlite` or `postgresql`, and where (a URL's password hidden).
    pub backend: String,
    pub location: String,
    pub epoch: u64,
    pub bytes: u64,
    pub loaded_dtos: u64,
    pub pending_rollups: u64,
    /// Pending rollup periods that failed for a reason other than an outage and wait for a
    /// later retry (the others go on).
    pub failing_rollups: u64,
    pub items: u64,
    pub replaced_records: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertingView {
    pub open_events: BTreeMap<String, u64>,
    pub outbox: OutboxView,
    pub receivers: Vec<ReceiverStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboxView {
    pub depth: u64,
    pub oldest_age_seconds: Option<i64>,
    pub dropped: u64,
}

/// What a collector reports every 10 s (`PUT /api/v1/collectors/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorReport {
    pub id: String,
    pub version: String,
    /// Devices in its inventory.
    pub devices: u64,
    /// Devices that did not answer in their last poll.
    pub unreachable: u64,
    pub spool_dtos: u64,
    pub spool_oldest_age_s: Option<f64>,
    pub last_cycle_s: Option<f64>,
    pub dropped_total: u64,
    /// When it last had a DTO acknowledged (Unix milliseconds).
    pub last_ack_ms: Option<i64>,
}

/// A collector as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectorStatus {
    #[serde(flatten)]
    pub report: CollectorReport,
    pub received_at_ms: i64,
    pub age_seconds: f64,
    /// False when it has not reported for 60 s.
    pub connected: bool,
}

/// What the status says of a node's loader: its last success and its last failure, so that
/// loads failing (a repository on a broken disk) show, and `pollux status` exits 1.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoaderState {
    /// Unix milliseconds of the last load that committed (or found nothing to do).
    pub last_ok_ms: Option<i64>,
    /// Unix milliseconds and text of the last failed load.
    pub last_error_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the last load that brought data, and the poll interval of that
    /// data: "late" is judged against it.
    pub last_loaded_ms: Option<i64>,
    pub last_loaded_interval_s: Option<u32>,
    /// Families whose stored DTOs the last pass over the store had to leave there (not
    /// defined, or refused by the repository), with how many DTOs each.
    pub waiting: BTreeMap<String, usize>,
}

impl LoaderState {
    /// True when the last attempt failed: no load has succeeded since the last error.
    pub fn failing(&self) -> bool {
        self.last_error_ms.is_some_and(|e| self.last_ok_ms.is_none_or(|ok| ok < e))
    }
}

/// One background worker's last success and failure.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    pub last_ok_ms: Option<i64>,
    pub last_error_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Failed steps since the last one that succeeded.
    pub failures_in_a_row: u64,
}

/// A kind of notification receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    Alertmanager,
    Webhook,
}

impl ReceiverKind {
    pub fn name(self) -> &'static str {
        match self {
            ReceiverKind::Alertmanager => "alertmanager",
            ReceiverKind::Webhook => "webhook",
        }
    }
}

/// One notification receiver's delivery figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    pub kind: ReceiverKind,
    pub url: String,
    pub delivered: u64,
    pub failures: u64,
    pub last_ok_ms: Option<i64>,
    pub last_error_ms: Option<i64>,
    pub last_error: Option<String>,
}

impl ReceiverStatus {
    /// True when the last attempt failed.
    pub fn failing(&self) -> bool {
        self.last_error_ms > self.last_ok_ms
    }
}

/// Long work in progress on the active (backlog recovery, rollups, compaction, retention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub unit: String,
    pub done: u64,
    pub total: Option<u64>,
    pub elapsed_seconds: f64,
    pub rate_per_second: f64,
    pub seconds_left: Option<f64>,
}

/// A metric family file that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyProblem {
    pub path: PathBuf,
    pub problem: String,
}

impl SystemStatus {
    /// The System Status as text for a terminal: one line per aggregator and collector, then
    /// the shared state and the verdict.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:>6} {:>5} {:>11} {:<8} URL",
            "NODE", "ROLE", "EPOCH", "READY", "HEARTBEAT", "VERSION"
        );
        for n in &self.nodes {
            let role = if n.reachable { n.role.clone() } else { format!("down({})", n.role) };
            let age = n.heartbeat_age_seconds.map_or("-".to_owned(), |a| format!("{a:.1}s ago"));
            let _ = writeln!(
                out,
                "{:<16} {:<14} {:>6} {:>5} {:>11} {:<8} {}{}",
                n.node,
                role,
                n.epoch,
                if n.ready { "yes" } else { "no" },
                age,
                n.version,
                n.advertise,
                n.reason.as_ref().map(|r| format!("  ({r})")).unwrap_or_default(),
            );
        }
        match &self.lease {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "lease: {} epoch {} {} (counter {}, unchanged for {:.1}s); failwait {}, startwait {}",
                    l.holder, l.epoch, l.state, l.counter, l.unchanged_seconds, self.failwait, self.startwait
                );
            }
            None => {
                let _ = writeln!(out, "lease: not taken yet");
            }
        }
        let (shared, repo) = (&self.shared_dir, &self.repository);
        let _ = writeln!(
            out,
            "DTO backlog {} (oldest {:.1}s); shared dir {} {} ({:.1} GiB free{}); repository {} {} ({:.1} MiB, {} DTOs loaded, {} rollups pending{})",
            self.dto_backlog,
            self.loader_lag_seconds,
            shared.path,
            if shared.ok { "ok" } else { "FAILING" },
            shared.free_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64,
            if shared.nfs { ", NFS" } else { "" },
            repo.backend,
            if repo.ok { "ok" } else { "FAILING" },
            repo.bytes as f64 / (1u64 << 20) as f64,
            repo.loaded_dtos,
            repo.pending_rollups,
            if repo.replaced_records > 0 {
                format!(", {} records replaced by another DTO id's", repo.replaced_records)
            } else {
                String::new()
            },
        );
        for c in &self.collectors {
            let r = &c.report;
            let _ = writeln!(
                out,
                "collector {} {} ({:.0}s ago): {} devices, {} unreachable; spool {} DTOs{}; last cycle {}; {} dropped",
                r.id,
                if c.connected { "connected" } else { "NOT CONNECTED" },
                c.age_seconds,
                r.devices,
                r.unreachable,
                r.spool_dtos,
                r.spool_oldest_age_s.map_or(String::new(), |a| format!(" (oldest {a:.0}s)")),
                r.last_cycle_s.map_or("-".to_owned(), |s| format!("{s:.1}s")),
                r.dropped_total,
            );
        }
        if let Some(a) = &self.alerting {
            let open: Vec<String> = a.open_events.iter().map(|(severity, n)| format!("{n} {severity}")).collect();
            let _ = write!(
                out,
                "events open: {}; outbox {} waiting (oldest {}s){}",
                if open.is_empty() { "none".to_owned() } else { open.join(", ") },
                a.outbox.depth,
                a.outbox.oldest_age_seconds.unwrap_or(0),
                if a.outbox.dropped > 0 {
                    format!(", {} DROPPED (outbox full)", a.outbox.dropped)
                } else {
                    String::new()
                }
            );
            for r in &a.receivers {
                let failing = r.failing();
                let state =
                    if failing { format!("FAILING: {}", r.last_error.as_deref().unwrap_or("-")) } else { "ok".into() };
                let _ = write!(out, "; {} {} {state}", r.kind.name(), r.url);
            }
            let _ = writeln!(out);
        }
        for (task, p) in &self.progress {
            let _ = writeln!(
                out,
                "{task} in progress: {}{} {}, {:.0}/s{}",
                p.done,
                p.total.map_or(String::new(), |t| format!(" of {t}")),
                p.unit,
                p.rate_per_second,
                p.seconds_left.map_or(String::new(), |s| format!(", about {s:.0} s left")),
            );
        }
        let sec = &self.security;
        let _ = writeln!(
            out,
            "{}; {}",
            match (sec.https, sec.cert_not_after) {
                (false, _) => "plain HTTP (no tls_cert)".to_owned(),
                (true, Some(t)) => format!("HTTPS, certificate valid until {} UTC", crate::period::format_utc(t)),
                (true, None) => "HTTPS".to_owned(),
            },
            if sec.open_classes.is_empty() {
                "every route class needs its token".to_owned()
            } else {
                format!("open to anyone (no token): {}", sec.open_classes.join(", "))
            },
        );
        if let Some(e) = &sec.cert_error {
            let _ = writeln!(out, "CERTIFICATE: {e}");
        }
        if self.problems.is_empty() && self.warnings.is_empty() {
            let _ = writeln!(out, "data is flowing");
        } else if self.problems.is_empty() {
            let _ = writeln!(out, "data is flowing, but:");
            for w in &self.warnings {
                let _ = writeln!(out, "  - {w}");
            }
        } else {
            let _ = writeln!(out, "DATA IS NOT FLOWING:");
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        out
    }
}
