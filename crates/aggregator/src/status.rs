//! The System Status: one type that `/api/v1/status` serves, `pollux status` reads back and
//! prints, and the portal's status page draws.
//!
//! ```text
//!   election/nodes/<id>.json (each node, every heartbeat) ─┐
//!   collectors/<id>.json (each collector, every 10 s)     ─┼─▶ SystemStatus::gather ─▶ JSON, text, HTML
//!   this node: role, store backlog, repository, alerting  ─┘
//! ```
//!
//! Every field has a default, so a newer `pollux status` reads an older aggregator's answer.

use crate::loader::LoadHealthState;
use crate::notify::ReceiverStatus;
use crate::progress;
use crate::shared::FamilyProblem;
use crate::App;
use pollux_model::duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A stored DTO still not loaded after this long means loading is stuck (a family that is not
/// defined, a DTO the repository refuses): catching up after an outage loads far faster.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);
/// Collectors whose reports are kept: a new id past this is refused (every status read lists
/// them all, and anyone with the ingest token could otherwise invent ids without end).
pub const MAX_COLLECTORS: usize = 1000;
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
    pub progress: BTreeMap<String, progress::Report>,
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

impl SecurityView {
    fn gather(app: &App) -> SecurityView {
        let tls = app.tls.as_ref().map(|t| t.status());
        SecurityView {
            https: tls.is_some(),
            cert_not_after: tls.as_ref().and_then(|t| t.not_after),
            cert_error: tls.as_ref().and_then(|t| t.error.clone()),
            cert_reloads: tls.as_ref().map_or(0, |t| t.reloads),
            open_classes: app.tokens.current().open_classes().into_iter().map(str::to_owned).collect(),
        }
    }
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
    pub loader: Option<LoadHealthState>,
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

impl SystemStatus {
    /// Gathers the view from the shared directory, the repository and this node. Blocking
    /// (directory listings and statvfs can stall on NFS): call it off the async workers.
    pub fn gather(app: &App) -> SystemStatus {
        let backlog = app.store.backlog();
        let repo = app.repo.stats();
        let reports = app.shared.read_node_statuses();
        let free_bytes = app.shared.free_bytes();
        let (dto_backlog, load_lag) = backlog.as_ref().map(|b| (b.0, b.1)).unwrap_or((0, 0.0));
        let state = app.node.state();
        let now_ms = crate::unix_now_ms();
        let failwait = app.config.failwait.as_secs_f64();
        let mut nodes: Vec<NodeStatus> = reports
            .into_iter()
            .filter_map(|(_, report)| serde_json::from_value::<NodeStatus>(report).ok())
            .map(|mut n| {
                let age = n.updated_at_ms.map(|t| (now_ms - t).max(0) as f64 / 1000.0);
                n.heartbeat_age_seconds = age;
                n.reachable = age.is_some_and(|a| a < failwait);
                n.this_node = false;
                n
            })
            .collect();
        // This node's own line is live, not its last report.
        let mut mine = app.node_status();
        mine.heartbeat_age_seconds = Some(0.0);
        mine.reachable = true;
        mine.this_node = true;
        match nodes.iter_mut().find(|n| n.node == app.node.id) {
            Some(n) => *n = mine,
            None => nodes.push(mine),
        }
        let lease = state.lease.as_ref().map(|l| LeaseView {
            holder: l.holder.clone(),
            advertise: l.advertise.clone(),
            epoch: l.epoch,
            counter: l.counter,
            state: serde_json::to_value(l.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            unchanged_seconds: state.lease_age.as_secs_f64(),
        });
        let active = nodes.iter().find(|n| n.role == "active" && n.ready && n.reachable);
        let family_files = app.family_problems();
        let mut problems: Vec<String> = Vec::new();
        if active.is_none() {
            problems.push("no aggregator is the ready active: nothing is acknowledged or loaded".into());
        }
        if let Err(e) = &backlog {
            problems.push(format!("shared dir: {e}"));
        }
        if free_bytes.is_some_and(|f| f < app.config.min_free_bytes) {
            problems.push(format!(
                "shared dir: {} MiB free, below min_free_bytes ({} MiB)",
                free_bytes.unwrap_or(0) >> 20,
                app.config.min_free_bytes >> 20
            ));
        }
        if let Err(e) = &repo {
            problems.push(format!("repository: {e}"));
        }
        if let Some(loader) = active.and_then(|n| n.loader.as_ref()) {
            if loader.failing() {
                problems.push(format!("loads are failing: {}", loader.last_error.clone().unwrap_or_default()));
            }
            for (family, dtos) in &loader.waiting {
                problems.push(format!(
                    "{dtos} stored DTOs of family {family:?} wait: it is not defined (or its name is refused)"
                ));
            }
        }
        if dto_backlog > 0 && load_lag > STUCK_AFTER.as_secs_f64() {
            problems.push(format!(
                "the oldest of {dto_backlog} stored DTOs has waited {load_lag:.0}s to be loaded (over {}s)",
                STUCK_AFTER.as_secs()
            ));
        }
        for p in &family_files {
            problems.push(format!("metric family file {}: {}", p.path.display(), p.problem));
        }
        let security = SecurityView::gather(app);
        if security.cert_not_after.is_some_and(|t| t <= crate::unix_now()) {
            problems.push("the HTTPS certificate has expired: clients refuse every request".to_owned());
        }
        let active = active.map(|n| n.node.clone());
        let (backend, location) = (app.repo_location.backend().to_owned(), app.repo_location.to_string());
        let repository = match &repo {
            Ok(s) => RepositoryView {
                ok: true,
                backend,
                location,
                epoch: s.epoch,
                bytes: s.bytes,
                loaded_dtos: s.loaded_dtos,
                pending_rollups: s.pending_rollups,
                items: s.items,
                replaced_records: s.replaced_records,
                error: None,
            },
            Err(e) => RepositoryView { backend, location, error: Some(e.to_string()), ..RepositoryView::default() },
        };
        let alerting = repo.as_ref().ok().map(|s| AlertingView {
            open_events: s.open_events.clone(),
            outbox: OutboxView {
                depth: s.outbox_depth,
                oldest_age_seconds: s.outbox_oldest.map(|t| (crate::unix_now() - t).max(0)),
                dropped: s.outbox_dropped,
            },
            receivers: app.notify_health.receivers(),
        });
        let collectors = app
            .shared
            .read_collector_reports()
            .into_iter()
            .map(|(report, received_at_ms)| {
                let age = (now_ms - received_at_ms).max(0) as f64 / 1000.0;
                CollectorStatus {
                    report,
                    received_at_ms,
                    age_seconds: age,
                    connected: age < COLLECTOR_DOWN_AFTER.as_secs_f64(),
                }
            })
            .collect();
        SystemStatus {
            flowing: problems.is_empty(),
            problems,
            family_files,
            nodes,
            lease,
            active,
            failwait: duration::format(app.config.failwait),
            startwait: duration::format(app.config.startwait),
            dto_backlog,
            loader_lag_seconds: load_lag,
            shared_dir: SharedDirView {
                path: app.shared.root().display().to_string(),
                ok: backlog.is_ok(),
                nfs: app.shared_report.nfs,
                free_bytes,
                error: backlog.as_ref().err().map(|e| e.to_string()),
            },
            repository,
            alerting,
            progress: app.progress.reports().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            collectors,
            security,
            version: crate::api::VERSION.to_owned(),
        }
    }

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
                let failing = r.last_error_ms > r.last_ok_ms;
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
                (true, Some(t)) => format!("HTTPS, certificate valid until {} UTC", pollux_transport::tls::utc(t)),
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
        if self.problems.is_empty() {
            let _ = writeln!(out, "data is flowing");
        } else {
            let _ = writeln!(out, "DATA IS NOT FLOWING:");
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        out
    }
}
