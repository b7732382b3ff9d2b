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
pub mod notify;
pub mod progress;
pub mod services;
pub mod shared;
pub mod status;
pub mod store;

use config::{AggregatorConfig, JournalChoice};
use election::Command;
use metrics::Metrics;
use node::{Node, Wake};
use pollux_election::{FileLeaseStore, Timing};
use pollux_model::{Catalog, Limits};
use pollux_repository::{JournalMode, OpenOptions, RepoError, Repository};
use shared::{FamilyFiles, SharedDir, SharedDirError, SharedDirReport};
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
    /// A TLS or token file, or the repository, named by the configuration cannot be used.
    #[error("{0}: {1}")]
    Security(String, String),
}

/// Everything the HTTP handlers and worker threads share.
pub struct App {
    pub config: AggregatorConfig,
    /// The token of each route class (see `api::auth`), read again on SIGHUP.
    pub tokens: pollux_transport::auth::TokenFiles,
    /// The listener's certificate, when it speaks HTTPS.
    pub tls: Option<pollux_transport::ServerTls>,
    /// What the notifiers trust.
    pub client_tls: pollux_transport::ClientTls,
    pub node: Node,
    pub shared: SharedDir,
    pub shared_report: SharedDirReport,
    pub store: DtoStore,
    pub repo: Arc<dyn Repository>,
    /// Where the repository is, for the status (a URL's password hidden).
    pub repo_location: pollux_repository::Location,
    pub limits: Limits,
    pub metrics: Metrics,
    pub loader_wake: Wake,
    /// The loader's last success and failure, for the System Status.
    pub load_health: loader::LoadHealth,
    /// Bytes of request bodies held in memory, over all connections (`max_body_bytes_in_flight`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// DTO bodies decoded at once: decoding is CPU work, and each decode holds a body and its
    /// DTO in memory, so more at once than cores only costs memory.
    pub decoders: Arc<tokio::sync::Semaphore>,
    pub handoff: loader::Handoff,
    pub maintenance_wake: Wake,
    /// Woken by a load that opened or cleared an event.
    pub notify_wake: Wake,
    pub notify_health: notify::NotifyHealth,
    /// Long work in progress on this node (backlog recovery, rollups, compaction, retention).
    pub progress: progress::Tracker,
    /// The election runtime's inbox (planned switchover requests).
    pub commands: Mutex<Sender<Command>>,
    families: RwLock<Arc<FamilyFiles>>,
}

impl App {
    /// This node's line of the System Status, as its status file carries it.
    pub fn node_status(&self) -> status::NodeStatus {
        let s = self.node.state();
        status::NodeStatus {
            node: self.node.id.clone(),
            role: s.role.name().to_owned(),
            epoch: s.epoch,
            ready: s.ready,
            advertise: self.node.advertise.clone(),
            version: api::VERSION.to_owned(),
            pid: std::process::id(),
            failwait: pollux_model::duration::format(self.config.failwait),
            startwait: pollux_model::duration::format(self.config.startwait),
            reason: s.reason,
            updated_at_ms: Some(unix_now_ms()),
            heartbeat_age_seconds: None,
            reachable: true,
            this_node: false,
            loader: Some(self.load_health.state()),
        }
    }

    /// The failover timing derived from the configuration.
    pub fn timing(&self) -> Timing {
        Timing::new(self.config.failwait, self.config.startwait)
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.families.read().expect("families").catalog.clone()
    }

    /// The family files skipped at the last reading, and why.
    pub fn family_problems(&self) -> Vec<shared::FamilyProblem> {
        self.families.read().expect("families").problems.clone()
    }

    /// Rereads `metric-families/` into memory (never blocking: see
    /// [`SharedDir::load_families`]). Returns the families that are new or changed.
    pub fn reload_catalog_in_memory(&self) -> Vec<Arc<pollux_model::MetricFamily>> {
        let before = self.families.read().expect("families").clone();
        let files = self.shared.load_families(Some(&before));
        for problem in files.problems.iter().filter(|p| !before.problems.contains(p)) {
            tracing::error!(path = %problem.path.display(), problem = %problem.problem, "metric family file skipped");
        }
        let changed = files
            .catalog
            .iter()
            .filter(|f| before.catalog.get(&f.name).map(|b| b.as_ref()) != Some(f.as_ref()))
            .cloned()
            .collect();
        *self.families.write().expect("families") = Arc::new(files);
        changed
    }

    /// Rereads `metric-families/` and widens the repository for new or changed families. A
    /// family the repository refuses (its name collides with one it holds) is logged; its DTOs
    /// wait in the store.
    pub fn reload_catalog(&self, epoch: pollux_repository::Epoch) -> Result<(), RepoError> {
        for family in self.reload_catalog_in_memory() {
            match self.repo.ensure_family(epoch, &family) {
                Ok(()) => tracing::info!(family = %family.name, "metric family defined"),
                Err(RepoError::Rejected(why)) => tracing::error!(family = %family.name, %why, "metric family refused"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Routes served beside the API (the portal), built once the app exists.
type ExtraRoutes = Box<dyn FnOnce(Arc<App>) -> axum::Router + Send>;

pub struct Aggregator {
    app: Arc<App>,
    listener: std::net::TcpListener,
    inbox: Receiver<Command>,
    extra: Option<ExtraRoutes>,
}

impl Aggregator {
    /// Checks the shared directory, reads the metric families and opens the repository. Binds
    /// nothing: the caller hands in the listener (tests bind port 0).
    pub fn build(config: AggregatorConfig, listener: std::net::TcpListener) -> Result<Aggregator, StartError> {
        let security = |(key, problem)| StartError::Security(key, problem);
        let tokens = pollux_transport::auth::TokenFiles::load(
            config.ingest_token_file.as_deref(),
            config.admin_token_file.as_deref(),
            config.read_token_file.as_deref(),
        )
        .map_err(security)?;
        let tls = pollux_transport::tls::listener_tls(config.tls_cert.as_deref(), config.tls_key.as_deref())
            .map_err(security)?;
        let client_tls =
            pollux_transport::ClientTls::load(config.ca_file.as_deref()).map_err(|e| security(e.into_key_problem()))?;
        let open = tokens.current().open_classes();
        if !open.is_empty() {
            tracing::warn!("no token for {}: those routes are open to anyone who reaches the port", open.join(", "));
        }
        let shared = SharedDir::new(&config.shared_dir);
        let shared_report = shared.check(config.min_free_bytes)?;
        let families = shared.load_families(None);
        for problem in &families.problems {
            tracing::error!(path = %problem.path.display(), problem = %problem.problem, "metric family file skipped");
        }
        let journal = match config.journal_mode {
            JournalChoice::Wal => JournalMode::Wal,
            JournalChoice::Truncate => JournalMode::Truncate,
            JournalChoice::Auto if shared_report.nfs => JournalMode::Truncate,
            JournalChoice::Auto => JournalMode::Wal,
        };
        let location = config.repository_location().map_err(|problem| security(("repository".to_owned(), problem)))?;
        let options = OpenOptions { journal, outbox_max: config.notify.outbox_max, ..OpenOptions::default() };
        let repo = pollux_repository::open(&location, &options)
            .map_err(|source| StartError::Repository { path: location.to_string(), source })?;
        tracing::info!(
            shared = %shared.root().display(), nfs = shared_report.nfs, repository = %location, ?journal,
            free_mib = shared_report.free_bytes >> 20, families = families.catalog.len(), "shared dir checked"
        );
        let limits = Limits {
            max_records: config.max_records,
            max_future_seconds: config.max_clock_skew.as_secs() as i64,
            max_age_seconds: config.retention.raw.as_secs() as i64,
        };
        // With port 0 (tests) the advertised URL must carry the port actually bound.
        let advertise = match (&config.advertise, listener.local_addr()) {
            (None, Ok(addr)) => format!("{}://{addr}", config.scheme()),
            _ => config.advertise_url(),
        };
        let (commands, inbox) = std::sync::mpsc::channel();
        let app = App {
            node: Node::new(config.node_id.clone(), advertise),
            tokens,
            tls,
            client_tls,
            commands: Mutex::new(commands),
            store: DtoStore::open(shared.dto_dir())
                .map_err(|e| SharedDirError::Unusable { path: shared.dto_dir(), problem: e.to_string() })?,
            shared,
            shared_report,
            repo: Arc::from(repo),
            repo_location: location,
            limits,
            metrics: Metrics::default(),
            loader_wake: Wake::default(),
            load_health: loader::LoadHealth::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(config.max_body_bytes_in_flight)),
            decoders: Arc::new(tokio::sync::Semaphore::new(decoders())),
            handoff: loader::Handoff::new(HANDOFF_CAPACITY),
            maintenance_wake: Wake::default(),
            notify_wake: Wake::default(),
            notify_health: notify::NotifyHealth::new(&config.notify),
            progress: progress::Tracker::default(),
            families: RwLock::new(Arc::new(families)),
            config,
        };
        Ok(Aggregator { app: Arc::new(app), listener, inbox, extra: None })
    }

    /// Serves `routes` (the portal's pages) beside the API; the API's paths win.
    pub fn with_routes(mut self, routes: impl FnOnce(Arc<App>) -> axum::Router + Send + 'static) -> Aggregator {
        self.extra = Some(Box::new(routes));
        self
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
        let mut router = api::router(app.clone());
        if let Some(extra) = self.extra {
            router = router.merge(extra(app.clone()));
        }
        let router = router.layer(axum::middleware::from_fn_with_state(app.clone(), api::auth::check));
        let server_stop = CancellationToken::new();
        // SIGHUP reads the token files again: a leaked token is replaced without a restart.
        let tokens_app = app.clone();
        tokio::spawn(pollux_transport::on_hangup(server_stop.clone(), move || match tokens_app.tokens.reload() {
            Ok(()) => tracing::info!("token files read again on SIGHUP"),
            Err((key, problem)) => tracing::error!("{key}: {problem}; the tokens in force stay"),
        }));
        let open_files = pollux_transport::raise_open_file_limit();
        let limits = app.config.server_limits().fitted(open_files);
        tracing::info!(open_files, max_connections = limits.max_connections, "connection limits");
        let server = tokio::spawn(pollux_transport::serve_router(
            listener,
            app.tls.clone(),
            router,
            limits,
            app.metrics.http.clone(),
            server_stop.clone(),
        ));

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
        app.notify_wake.notify();
        tokio::task::spawn_blocking(move || election.join()).await.expect("join").expect("election thread");
        server_stop.cancel();
        server.await.expect("server task");
        Ok(())
    }
}

fn decoders() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
