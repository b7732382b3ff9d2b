//! The Data Aggregator: durable DTO ingest, exactly-once loading, rollups, thresholds, the query
//! API, the portal and health. This file is the composition root only: it builds the narrow
//! parts and hands each to what uses it.
//!
//! ```text
//!            PUT /api/v1/dto/{id}                          GET /api/v1/{series,top,...}, portal
//!                  │ validate, fsync into dto/, 201              │
//!                  ▼                                             ▼
//!   api ──▶ ingest (store, handoff) ──▶ active: loader ──▶ repository ◀── active: housekeeping
//!                                        (exactly once)                    (rollups, compaction,
//!                                        active: notifier ──▶ Alertmanager, webhooks  retention)
//!   election runtime ── starts and stops the active services with each term (epoch)
//! ```
//!
//! - [`api`]: one file per route class; each handler takes only its part ([`api::ApiState`]).
//! - [`ingest`]: the DTO store in the shared directory and the handoff to the loader.
//! - [`active`]: what runs only on the active, as workers behind one runner.
//! - [`shared_dir`]: the fence, maintenance flags, node and collector reports, family files.
//! - [`election`]: the runtime around the pure elector.
//! - [`status`]: gathers the System Status from narrow sources.
//!
//! [`Aggregator::build`] checks the shared directory and opens the repository; binds nothing.
//! [`Aggregator::run`] serves until the shutdown token fires and returns once every thread and
//! task it started has ended.
#![forbid(unsafe_code)]

pub mod active;
pub mod api;
pub mod config;
pub mod election;
pub mod ingest;
pub mod metrics;
pub mod node;
mod portal;
pub mod progress;
pub mod shared_dir;
pub mod status;
pub mod wake;

use active::housekeeping::HousekeepingParts;
use active::loader::{LoadHealth, LoaderParts};
use active::notifier::{NotifierParts, NotifyHealth};
use active::worker::WorkerBoard;
use active::ActiveParts;
use config::{AggregatorConfig, JournalChoice};
use election::{Command, ElectionParts};
use ingest::handoff::Handoff;
use ingest::store::DtoStore;
use ingest::Ingest;
use metrics::Metrics;
use node::Node;
use pollux_election::{FileLeaseStore, Timing};
use pollux_model::Limits;
use pollux_repository::{JournalMode, OpenOptions, RepoError, Repository};
use progress::Tracker;
use shared_dir::families::Families;
use shared_dir::{SharedDir, SharedDirError};
use status::StatusSources;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wake::Wake;

/// How often `metric-families/` is read again while active.
pub const REREAD_FAMILIES: Duration = Duration::from_secs(10);
/// How often retention runs while active.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(600);

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

/// Intervals that production takes from constants and tests shorten.
#[derive(Debug, Clone)]
pub struct Intervals {
    pub reread_families: Duration,
    pub expire_every: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals { reread_families: REREAD_FAMILIES, expire_every: EXPIRE_EVERY }
    }
}

/// A built aggregator, not yet serving.
pub struct Aggregator {
    api: api::ApiState,
    tokens: Arc<pollux_transport::auth::TokenFiles>,
    tls: Option<pollux_transport::ServerTls>,
    server_limits: pollux_transport::ServerLimits,
    metrics: Arc<Metrics>,
    election: ElectionParts,
    commands: std::sync::mpsc::Sender<Command>,
    inbox: Receiver<Command>,
    listener: std::net::TcpListener,
    /// This node id, held for the process's life (see [`SharedDir::hold_node`]).
    node_lock: std::fs::File,
}

impl Aggregator {
    /// Checks the shared directory, reads the metric families and opens the repository. Binds
    /// nothing: the caller hands in the listener (tests bind port 0).
    pub fn build(config: AggregatorConfig, listener: std::net::TcpListener) -> Result<Aggregator, StartError> {
        Aggregator::build_with(config, listener, Intervals::default())
    }

    /// As [`Aggregator::build`], with the housekeeping intervals given (tests shorten them).
    pub fn build_with(
        config: AggregatorConfig,
        listener: std::net::TcpListener,
        intervals: Intervals,
    ) -> Result<Aggregator, StartError> {
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
        let node_lock = shared.hold_node(&config.node_id)?;
        let families = Arc::new(Families::read(shared.clone()));
        let journal = match config.journal_mode {
            JournalChoice::Wal => JournalMode::Wal,
            JournalChoice::Truncate => JournalMode::Truncate,
            JournalChoice::Auto if shared_report.nfs => JournalMode::Truncate,
            JournalChoice::Auto => JournalMode::Wal,
        };
        let location = config.repository_location().map_err(|problem| security(("repository".to_owned(), problem)))?;
        let options = OpenOptions { journal, outbox_max: config.notify.outbox_max, ..OpenOptions::default() };
        let repo: Arc<dyn Repository> = Arc::from(
            pollux_repository::open(&location, &options)
                .map_err(|source| StartError::Repository { path: location.to_string(), source })?,
        );
        tracing::info!(
            shared = %shared.root().display(), nfs = shared_report.nfs, repository = %location, ?journal,
            free_mib = shared_report.free_bytes >> 20, families = families.catalog().len(), "shared dir checked"
        );
        let store = Arc::new(
            DtoStore::open(shared.dto_dir())
                .map_err(|e| SharedDirError::Unusable { path: shared.dto_dir(), problem: e.to_string() })?,
        );
        // With port 0 (tests) the advertised URL must carry the port actually bound.
        let advertise = match (&config.advertise, listener.local_addr()) {
            (None, Ok(addr)) => format!("{}://{addr}", config.scheme()),
            _ => config.advertise_url(),
        };
        let node = Arc::new(Node::new(config.node_id.clone(), advertise));
        let metrics = Arc::new(Metrics::default());
        let handoff = Arc::new(Handoff::default());
        let progress = Arc::new(Tracker::default());
        let (loader_wake, housekeeping_wake) = (Arc::new(Wake::default()), Arc::new(Wake::default()));
        let notifier_wakes = NotifierParts::wakes_for(&config.notify);
        let load_health = Arc::new(LoadHealth::default());
        let notify_health = Arc::new(NotifyHealth::new(&config.notify));
        let board = Arc::new(WorkerBoard::default());
        let tokens = Arc::new(tokens);

        let active = Arc::new(ActiveParts {
            node_id: config.node_id.clone(),
            shared: shared.clone(),
            families: families.clone(),
            store: store.clone(),
            repo: repo.clone(),
            loader: LoaderParts {
                store: store.clone(),
                handoff: handoff.clone(),
                repo: repo.clone(),
                families: families.clone(),
                metrics: metrics.clone(),
                health: load_health.clone(),
                progress: progress.clone(),
                wake: loader_wake.clone(),
                housekeeping: housekeeping_wake.clone(),
                notifiers: notifier_wakes.clone(),
                batch_values: config.load_batch_values,
            },
            housekeeping: HousekeepingParts {
                repo: repo.clone(),
                families: families.clone(),
                metrics: metrics.clone(),
                progress: progress.clone(),
                wake: housekeeping_wake,
                rollup_grace: config.rollup_grace,
                recent_window: config.recent_window,
                retention: pollux_repository::Retention::from(&config.retention),
                reread_families: intervals.reread_families,
                expire_every: intervals.expire_every,
            },
            notifier: NotifierParts {
                repo: repo.clone(),
                node: node.clone(),
                config: config.notify.clone(),
                client_tls,
                health: notify_health.clone(),
                metrics: metrics.clone(),
                wakes: notifier_wakes,
            },
            board: board.clone(),
        });
        let status = Arc::new(StatusSources {
            node: node.clone(),
            failwait: config.failwait,
            startwait: config.startwait,
            min_free_bytes: config.min_free_bytes,
            shared: shared.clone(),
            shared_report,
            store: store.clone(),
            repo: repo.clone(),
            repo_location: location,
            families: families.clone(),
            load_health,
            workers: board,
            notify_health,
            progress: progress.clone(),
            tokens: tokens.clone(),
            tls: tls.clone(),
            metrics: metrics.clone(),
        });
        let (commands, inbox) = std::sync::mpsc::channel();
        let api = api::ApiState {
            node: node.clone(),
            ingest: Arc::new(Ingest {
                node: node.clone(),
                shared: shared.clone(),
                store,
                handoff: handoff.clone(),
                repo: repo.clone(),
                families: families.clone(),
                limits: Limits {
                    max_records: config.max_records,
                    max_future_seconds: config.max_clock_skew.as_secs() as i64,
                    max_age_seconds: config.retention.raw.as_secs() as i64,
                },
                max_body_bytes: config.max_body_bytes,
                body_budget: Arc::new(tokio::sync::Semaphore::new(config.max_body_bytes_in_flight)),
                decoders: Arc::new(tokio::sync::Semaphore::new(decoders())),
                metrics: metrics.clone(),
                loader: loader_wake,
            }),
            queries: Arc::new(api::Queries { node: node.clone(), repo, families }),
            status: status.clone(),
            operations: Arc::new(api::Operations {
                node: node.clone(),
                shared: shared.clone(),
                commands: Mutex::new(commands.clone()),
                failwait: config.failwait,
            }),
        };
        let election = ElectionParts {
            node,
            lease: Arc::new(FileLeaseStore::new(shared.election_dir())),
            shared,
            timing: Timing::new(config.failwait, config.startwait),
            poll_interval: config.poll_interval(),
            active,
            status,
            handoff,
            progress,
        };
        Ok(Aggregator {
            api,
            tokens,
            tls,
            server_limits: config.server_limits(),
            metrics,
            election,
            commands,
            inbox,
            listener,
            node_lock,
        })
    }

    /// Serves until `shutdown` fires; returns once the server and every thread have stopped.
    ///
    /// The node joins as standby; the election runtime takes the lease when it is free or
    /// stale, and starts the active services. On shutdown an active finishes its current step
    /// and releases the lease before the HTTP server stops.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        self.listener.set_nonblocking(true).map_err(StartError::Http)?;
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(StartError::Http)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("listening on {addr}");
        }
        let router = api::router(self.api.clone())
            .merge(pollux_portal::router(Arc::new(portal::PortalSource::new(&self.api))))
            .layer(axum::middleware::from_fn_with_state(self.tokens.clone(), api::auth::check));
        let server_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        // SIGHUP reads the token files again: a leaked token is replaced without a restart.
        let tokens = self.tokens.clone();
        tasks.spawn(pollux_transport::on_hangup(server_stop.clone(), move || match tokens.reload() {
            Ok(()) => tracing::info!("token files read again on SIGHUP"),
            Err((key, problem)) => tracing::error!("{key}: {problem}; the tokens in force stay"),
        }));
        let open_files = pollux_transport::raise_open_file_limit();
        let limits = self.server_limits.fitted(open_files);
        tracing::info!(open_files, max_connections = limits.max_connections, "connection limits");
        tasks.spawn(pollux_transport::serve_router(
            listener,
            self.tls.clone(),
            router,
            limits,
            self.metrics.http.clone(),
            server_stop.clone(),
        ));

        let election_stop = CancellationToken::new();
        let election = {
            let (parts, commands, inbox, stop) = (self.election, self.commands, self.inbox, election_stop.clone());
            std::thread::Builder::new()
                .name("election".into())
                .spawn(move || election::run(parts, commands, inbox, stop))
                .expect("spawn the election thread")
        };

        let _node_lock = self.node_lock;
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        election_stop.cancel();
        tokio::task::spawn_blocking(move || election.join()).await.expect("join").expect("election thread");
        server_stop.cancel();
        while let Some(ended) = tasks.join_next().await {
            ended.expect("server task");
        }
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
