//! The Data Aggregator: durable DTO ingest, exactly-once loading, rollups, the query API and
//! health.
//!
//! ```text
//!            PUT /api/v1/dto/{id}                          GET /api/v1/{series,top,...}
//!                  │ validate, fsync into dto/, 201              │
//!                  ▼                                             ▼
//!   api ──▶ store (<shared>/dto) ──▶ loader thread ──▶ repository ◀── maintenance thread
//!                                    (exactly once)     (SQLite)      (rollups, compaction,
//!                                                                      retention)
//! ```
//!
//! [`Aggregator::build`] checks the shared directory and opens the repository; [`Aggregator::run`]
//! serves HTTP, takes the active role (claims a new epoch, discards temp leftovers, starts the
//! loader and maintenance threads) and returns when the shutdown token fires and every thread has
//! ended. The active parts are started and stopped as a unit with an epoch, which is what the
//! election (a later layer) drives.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod election;
pub mod loader;
pub mod maintenance;
pub mod metrics;
pub mod node;
pub mod services;
pub mod shared;
pub mod store;

use config::{AggregatorConfig, JournalChoice};
use election::Command;
use metrics::Metrics;
use node::{Node, Wake};
use pollux_election::{FileLeaseStore, Timing};
use pollux_model::{Catalog, Limits};
use pollux_repository::{JournalMode, RepoError, Repository, SqliteOptions, SqliteRepository};
use shared::{SharedDir, SharedDirError, SharedDirReport};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use store::DtoStore;
use tokio_util::sync::CancellationToken;

/// DTOs the ingest path hands to the loader in memory; beyond this the loader reads the store.
const HANDOFF_CAPACITY: usize = 64;

/// Why the aggregator refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    SharedDir(#[from] SharedDirError),
    #[error("repository {path}: {source}")]
    Repository { path: String, source: RepoError },
    #[error("http: {0}")]
    Http(std::io::Error),
}

/// Everything the HTTP handlers and worker threads share.
pub struct App {
    pub config: AggregatorConfig,
    pub node: Node,
    pub shared: SharedDir,
    pub shared_report: SharedDirReport,
    pub store: DtoStore,
    pub repo: Arc<dyn Repository>,
    pub limits: Limits,
    pub metrics: Metrics,
    pub loader_wake: Wake,
    pub handoff: loader::Handoff,
    pub maintenance_wake: Wake,
    /// The election runtime's inbox (planned switchover requests).
    pub commands: Mutex<Sender<Command>>,
    catalog: RwLock<Arc<Catalog>>,
}

impl App {
    /// The failover timing derived from the configuration.
    pub fn timing(&self) -> Timing {
        Timing::new(self.config.failwait, self.config.startwait)
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog").clone()
    }

    /// Rereads `metric-families/` into memory; a bad file is logged and the families in use
    /// are kept. Returns the families that are new or changed.
    pub fn reload_catalog_in_memory(&self) -> Vec<Arc<pollux_model::MetricFamily>> {
        match self.shared.load_catalog() {
            Ok(catalog) => {
                let before = self.catalog();
                let changed = catalog
                    .iter()
                    .filter(|f| before.get(&f.name).map(|b| b.as_ref()) != Some(f.as_ref()))
                    .cloned()
                    .collect();
                *self.catalog.write().expect("catalog") = Arc::new(catalog);
                changed
            }
            Err(e) => {
                tracing::error!(error = %e, "metric families not reloaded; keeping the ones in use");
                Vec::new()
            }
        }
    }

    /// Rereads `metric-families/` and widens the repository for new or changed families.
    pub fn reload_catalog(&self, epoch: pollux_repository::Epoch) -> Result<(), RepoError> {
        for family in self.reload_catalog_in_memory() {
            self.repo.ensure_family(epoch, &family)?;
            tracing::info!(family = %family.name, "metric family defined");
        }
        Ok(())
    }
}

pub struct Aggregator {
    app: Arc<App>,
    listener: std::net::TcpListener,
    inbox: Receiver<Command>,
}

impl Aggregator {
    /// Checks the shared directory, reads the metric families and opens the repository. Binds
    /// nothing: the caller hands in the listener (tests bind port 0).
    pub fn build(config: AggregatorConfig, listener: std::net::TcpListener) -> Result<Aggregator, StartError> {
        let shared = SharedDir::new(&config.shared_dir);
        let shared_report = shared.check(config.min_free_bytes)?;
        let catalog = shared.load_catalog()?;
        let journal = match config.journal_mode {
            JournalChoice::Wal => JournalMode::Wal,
            JournalChoice::Truncate => JournalMode::Truncate,
            JournalChoice::Auto if shared_report.nfs => JournalMode::Truncate,
            JournalChoice::Auto => JournalMode::Wal,
        };
        let repo_path = shared.repository_path();
        let repo = SqliteRepository::open(&repo_path, SqliteOptions { journal, ..SqliteOptions::default() })
            .map_err(|source| StartError::Repository { path: repo_path.display().to_string(), source })?;
        tracing::info!(
            shared = %shared.root().display(), nfs = shared_report.nfs, ?journal,
            free_mib = shared_report.free_bytes >> 20, families = catalog.len(), "shared dir checked"
        );
        let limits = Limits {
            max_records: config.max_records,
            max_future_seconds: config.max_clock_skew.as_secs() as i64,
            max_age_seconds: config.retention.raw.as_secs() as i64,
        };
        // With port 0 (tests) the advertised URL must carry the port actually bound.
        let advertise = match (&config.advertise, listener.local_addr()) {
            (None, Ok(addr)) => format!("http://{addr}"),
            _ => config.advertise_url(),
        };
        let (commands, inbox) = std::sync::mpsc::channel();
        let app = App {
            node: Node::new(config.node_id.clone(), advertise),
            commands: Mutex::new(commands),
            store: DtoStore::open(shared.dto_dir())
                .map_err(|e| SharedDirError::Unusable { path: shared.dto_dir(), problem: e.to_string() })?,
            shared,
            shared_report,
            repo: Arc::new(repo),
            limits,
            metrics: Metrics::default(),
            loader_wake: Wake::default(),
            handoff: loader::Handoff::new(HANDOFF_CAPACITY),
            maintenance_wake: Wake::default(),
            catalog: RwLock::new(Arc::new(catalog)),
            config,
        };
        Ok(Aggregator { app: Arc::new(app), listener, inbox })
    }

    /// Serves until `shutdown` fires; returns once the server and every thread have stopped.
    ///
    /// The node joins as standby; the election runtime takes the lease when it is free or
    /// stale, and starts the active services. On shutdown an active finishes its current load
    /// and releases the lease before the HTTP server stops.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let app = self.app;
        self.listener.set_nonblocking(true).map_err(StartError::Http)?;
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(StartError::Http)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("listening on {addr}");
        }
        let router = api::router(app.clone());
        let server_stop = CancellationToken::new();
        let server = {
            let stop = server_stop.clone();
            tokio::spawn(
                async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await },
            )
        };

        let election_stop = CancellationToken::new();
        let election = {
            let (app, stop) = (app.clone(), election_stop.clone());
            let store = Arc::new(FileLeaseStore::new(app.shared.election_dir()));
            let commands = app.commands.lock().expect("commands").clone();
            let inbox = self.inbox;
            std::thread::Builder::new()
                .name("election".into())
                .spawn(move || election::run(app, store, commands, inbox, stop))
                .expect("spawn election thread")
        };

        shutdown.cancelled().await;
        tracing::info!("shutting down");
        election_stop.cancel();
        app.loader_wake.notify();
        app.maintenance_wake.notify();
        tokio::task::spawn_blocking(move || election.join()).await.expect("join").expect("election thread");
        server_stop.cancel();
        server.await.expect("server task").map_err(StartError::Http)
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
