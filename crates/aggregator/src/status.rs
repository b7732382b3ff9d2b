//! Gathers the System Status (a [`SystemStatus`], the wire type `/api/v1/status` serves) from
//! the narrow sources that know each part of it.
//!
//! ```text
//!   election/nodes/<id>.json (each node, every heartbeat) ─┐
//!   collectors/<id>.json (each collector, every 10 s)     ─┼─▶ StatusSources::gather ─▶ SystemStatus
//!   this node: role, store backlog, repository, workers   ─┘
//! ```

use crate::active::loader::LoadHealth;
use crate::active::notifier::NotifyHealth;
use crate::active::worker::WorkerBoard;
use crate::ingest::store::DtoStore;
use crate::node::Node;
use crate::progress::Tracker;
use crate::shared_dir::families::Families;
use crate::shared_dir::{SharedDir, SharedDirReport};
use pollux_model::duration;
use pollux_model::wire::{
    AlertingView, CollectorStatus, LeaseView, NodeStatus, OutboxView, RepositoryView, SecurityView, SharedDirView,
    SystemStatus, COLLECTOR_DOWN_AFTER, VERSION,
};
use pollux_repository::Repository;
use std::sync::Arc;
use std::time::Duration;

/// A stored DTO still not loaded after this long means loading is stuck (a family that is not
/// defined, a DTO the repository refuses): catching up after an outage loads far faster.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);
/// Data is late when the newest load is older than this many poll intervals (of that data).
pub const LATE_AFTER_INTERVALS: f64 = 2.0;
/// A background worker that failed this many steps in a row is a problem the status names.
pub const WORKER_FAILING_AFTER: u64 = 3;

/// Everything the System Status reads.
pub struct StatusSources {
    pub node: Arc<Node>,
    pub failwait: Duration,
    pub startwait: Duration,
    pub min_free_bytes: u64,
    pub shared: SharedDir,
    pub shared_report: SharedDirReport,
    pub store: Arc<DtoStore>,
    pub repo: Arc<dyn Repository>,
    /// Where the repository is, for the status (a URL's password hidden).
    pub repo_location: pollux_repository::Location,
    pub families: Arc<Families>,
    pub load_health: Arc<LoadHealth>,
    pub workers: Arc<WorkerBoard>,
    pub notify_health: Arc<NotifyHealth>,
    pub progress: Arc<Tracker>,
    pub tokens: Arc<pollux_transport::auth::TokenFiles>,
    pub tls: Option<pollux_transport::ServerTls>,
    /// The counters `/metrics` serves beside the gauges read from the sources above.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl StatusSources {
    /// This node's line of the System Status, as its status file carries it.
    pub fn node_status(&self) -> NodeStatus {
        let s = self.node.state();
        NodeStatus {
            node: self.node.id.clone(),
            role: s.role.name().to_owned(),
            epoch: s.epoch,
            ready: s.ready,
            advertise: self.node.advertise.clone(),
            version: VERSION.to_owned(),
            pid: std::process::id(),
            failwait: duration::format(self.failwait),
            startwait: duration::format(self.startwait),
            reason: s.reason,
            updated_at_ms: Some(crate::unix_now_ms()),
            heartbeat_age_seconds: None,
            reachable: true,
            this_node: false,
            loader: Some(self.load_health.state()),
            workers: self.workers.snapshot(),
        }
    }

    fn security(&self) -> SecurityView {
        let tls = self.tls.as_ref().map(|t| t.status());
        SecurityView {
            https: tls.is_some(),
            cert_not_after: tls.as_ref().and_then(|t| t.not_after),
            cert_error: tls.as_ref().and_then(|t| t.error.clone()),
            cert_reloads: tls.as_ref().map_or(0, |t| t.reloads),
            open_classes: self.tokens.current().open_classes().into_iter().map(str::to_owned).collect(),
        }
    }

    /// Gathers the view from the shared directory, the repository and this node. Blocking
    /// (directory listings and statvfs can stall on NFS): call it off the async workers.
    pub fn gather(&self) -> SystemStatus {
        let backlog = self.store.backlog();
        let repo = self.repo.stats();
        let reports = self.shared.read_node_statuses();
        let free_bytes = self.shared.free_bytes();
        let (dto_backlog, load_lag) = backlog.as_ref().map(|b| (b.0, b.1)).unwrap_or((0, 0.0));
        let state = self.node.state();
        let now_ms = crate::unix_now_ms();
        let failwait = self.failwait.as_secs_f64();
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
        let mut mine = self.node_status();
        mine.heartbeat_age_seconds = Some(0.0);
        mine.reachable = true;
        mine.this_node = true;
        match nodes.iter_mut().find(|n| n.node == self.node.id) {
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
        let family_files = self.families.problems();
        let mut problems: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let mut newest_load_age_seconds = None;
        if active.is_none() {
            problems.push("no aggregator is the ready active: nothing is acknowledged or loaded".into());
        }
        if let Err(e) = &backlog {
            problems.push(format!("shared dir: {e}"));
        }
        if free_bytes.is_some_and(|f| f < self.min_free_bytes) {
            problems.push(format!(
                "shared dir: {} MiB free, below min_free_bytes ({} MiB)",
                free_bytes.unwrap_or(0) >> 20,
                self.min_free_bytes >> 20
            ));
        }
        if let Err(e) = &repo {
            problems.push(format!("repository: {e}"));
        }
        if let Some(active) = active {
            if let Some(loader) = &active.loader {
                if let (Some(at), Some(interval)) = (loader.last_loaded_ms, loader.last_loaded_interval_s) {
                    let age = (now_ms - at).max(0) as f64 / 1000.0;
                    newest_load_age_seconds = Some(age);
                    if age > LATE_AFTER_INTERVALS * f64::from(interval) {
                        warnings.push(format!(
                            "the newest data was loaded {age:.0} s ago, more than {LATE_AFTER_INTERVALS} poll intervals \
                             ({interval} s): is a collector behind, down or cut off?"
                        ));
                    }
                }
                if loader.failing() {
                    problems.push(format!("loads are failing: {}", loader.last_error.clone().unwrap_or_default()));
                }
                for (family, dtos) in &loader.waiting {
                    problems.push(format!(
                        "{dtos} stored DTOs of family {family:?} wait: it is not defined (or its name is refused)"
                    ));
                }
            }
            // The loader's failures are said above, in its own words.
            for (worker, w) in active.workers.iter().filter(|(name, _)| name.as_str() != "loader") {
                if w.failures_in_a_row >= WORKER_FAILING_AFTER {
                    problems.push(format!(
                        "{worker} is failing ({} steps in a row): {}",
                        w.failures_in_a_row,
                        w.last_error.as_deref().unwrap_or("")
                    ));
                }
            }
        }
        if let Ok(stats) = &repo {
            if stats.failing_rollups > 0 {
                problems.push(format!(
                    "{} rollup periods keep failing and wait for a retry (the others go on): see the log",
                    stats.failing_rollups
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
        let security = self.security();
        if security.cert_not_after.is_some_and(|t| t <= crate::unix_now()) {
            problems.push("the HTTPS certificate has expired: clients refuse every request".to_owned());
        }
        let active = active.map(|n| n.node.clone());
        let (backend, location) = (self.repo_location.backend().to_owned(), self.repo_location.to_string());
        let repository = match &repo {
            Ok(s) => RepositoryView {
                ok: true,
                backend,
                location,
                epoch: s.epoch,
                bytes: s.bytes,
                loaded_dtos: s.loaded_dtos,
                pending_rollups: s.pending_rollups,
                failing_rollups: s.failing_rollups,
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
            receivers: self.notify_health.receivers(),
        });
        let collectors = self
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
            warnings,
            newest_load_age_seconds,
            family_files,
            nodes,
            lease,
            active,
            failwait: duration::format(self.failwait),
            startwait: duration::format(self.startwait),
            dto_backlog,
            loader_lag_seconds: load_lag,
            shared_dir: SharedDirView {
                path: self.shared.root().display().to_string(),
                ok: backlog.is_ok(),
                nfs: self.shared_report.nfs,
                free_bytes,
                error: backlog.as_ref().err().map(|e| e.to_string()),
            },
            repository,
            alerting,
            progress: self.progress.reports().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            collectors,
            security,
            version: VERSION.to_owned(),
        }
    }
}
