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
pub mod loader;
pub mod maintenance;
pub mod metrics;
pub mod node;
pub mod shared;
pub mod store;

use config::{AggregatorConfig, JournalChoice};
use metrics::Metrics;
use node::{Node, Role, Wake};
use pollux_model::{Catalog, Limits};
use pollux_repository::{JournalMode, RepoError, Repository, SqliteOptions, SqliteRepository};
use shared::{SharedDir, SharedDirError, SharedDirReport};
use std::sync::{Arc, RwLock};
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
    #[error("fence file: {0}")]
    Fence(std::io::Error),
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
    catalog: RwLock<Arc<Catalog>>,
}

impl App {
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog").clone()
    }

    /// Rereads `metric-families/`; a bad file is logged and the families in use are kept.
    pub fn reload_catalog(&self) -> Result<(), RepoError> {
        match self.shared.load_catalog() {
            Ok(catalog) => {
                for family in catalog.iter() {
                    let known = self.catalog().get(&family.name).cloned();
                    if known.as_deref() != Some(family.as_ref()) {
                        self.repo.ensure_family(family)?;
                        tracing::info!(family = %family.name, "metric family defined");
                    }
                }
                *self.catalog.write().expect("catalog") = Arc::new(catalog);
            }
            Err(e) => tracing::error!(error = %e, "metric families not reloaded; keeping the ones in use"),
        }
        Ok(())
    }
}

pub struct Aggregator {
    app: Arc<App>,
    listener: std::net::TcpListener,
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
        let limits =
            Limits { max_records: config.max_records, max_future_seconds: config.max_clock_skew.as_secs() as i64 };
        // With port 0 (tests) the advertised URL must carry the port actually bound.
        let advertise = match (&config.advertise, listener.local_addr()) {
            (None, Ok(addr)) => format!("http://{addr}"),
            _ => config.advertise_url(),
        };
        let app = App {
            node: Node::new(config.node_id.clone(), advertise),
            store: DtoStore::new(shared.dto_dir()),
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
        Ok(Aggregator { app: Arc::new(app), listener })
    }

    pub fn app(&self) -> Arc<App> {
        self.app.clone()
    }

    /// Serves until `shutdown` fires; returns once the server and every thread have stopped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let app = self.app;
        self.listener.set_nonblocking(true).map_err(StartError::Http)?;
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(StartError::Http)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("listening on {addr}");
        }
        let router = api::router(app.clone());
        let server_stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(server_stop.cancelled_owned()).await
        });

        let workers_stop = shutdown.child_token();
        let start = {
            let app = app.clone();
            let stop = workers_stop.clone();
            tokio::task::spawn_blocking(move || become_active(app, stop))
        };
        let workers = match start.await.expect("start task") {
            Ok(workers) => workers,
            Err(e) => {
                tracing::error!(error = %e, "could not become active; serving health only");
                app.node.fence(e.to_string());
                Vec::new()
            }
        };

        shutdown.cancelled().await;
        tracing::info!("shutting down");
        app.loader_wake.notify();
        app.maintenance_wake.notify();
        tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await
        .expect("join workers");
        server.await.expect("server task").map_err(StartError::Http)
    }
}

/// Takes the repository for a new epoch and starts the active parts.
///
/// The order is the fencing protocol of DESIGN.md section 5: the new epoch goes into the fence
/// file, then into the repository's epoch row (from then on every older writer's transaction
/// fails), and only then does anything load.
fn become_active(app: Arc<App>, stop: CancellationToken) -> Result<Vec<std::thread::JoinHandle<()>>, StartError> {
    let repo_err = |source| StartError::Repository { path: app.shared.repository_path().display().to_string(), source };
    let fence = app.shared.read_fence().map_err(StartError::Fence)?;
    let current = app.repo.epoch().map_err(repo_err)?;
    let epoch = fence.max(current) + 1;
    app.node.set(Role::Starting, epoch, false);
    app.shared.write_fence(epoch).map_err(StartError::Fence)?;
    app.repo.claim_epoch(epoch, &app.node.id).map_err(repo_err)?;
    for family in app.catalog().iter() {
        app.repo.ensure_family(family).map_err(repo_err)?;
    }
    let discarded = app.store.discard_temp().map_err(StartError::Fence)?;
    let (backlog, _) = app.store.backlog().unwrap_or((0, 0.0));
    tracing::info!(epoch, discarded_temp_files = discarded, backlog, "recovered the DTO store");
    let spawn = |name: &str, body: fn(Arc<App>, u64, CancellationToken)| {
        let (app, stop) = (app.clone(), stop.clone());
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(app, epoch, stop))
            .expect("spawn worker thread")
    };
    let workers = vec![spawn("loader", loader::run), spawn("maintenance", maintenance::run)];
    app.node.set(Role::Active, epoch, true);
    Ok(workers)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
