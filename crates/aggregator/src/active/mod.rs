//! The active services: what runs only on the active aggregator, started and stopped as one unit
//! with the epoch the election gave it.
//!
//! ```text
//!   start(epoch) ── startup thread: write fence, reread families, discard temp leftovers
//!                     ├── loader thread: claim the repository for the epoch, then load
//!                     └── maintenance thread: waits for the claim, then rollups, compaction
//!                   then reports Ready to the election runtime
//!   stop() ──────── cancels all three; each ends at its next step
//! ```
//!
//! Readiness does not wait for the repository claim: ingest needs only the shared directory and
//! queries only read. A deposed active frozen inside a write transaction (SIGSTOP) holds
//! SQLite's write lock until it resumes or dies; the new active acknowledges and answers
//! queries meanwhile, and its loader claims the repository as soon as the lock is free.

use crate::election::Command;
use crate::{loader, maintenance, notify, App};
use pollux_repository::{Epoch, RepoError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the loader retries a repository claim that failed for a reason other than a newer
/// epoch (the write lock held by a frozen predecessor, a busy disk).
const CLAIM_RETRY: Duration = Duration::from_millis(250);

pub struct ActiveServices {
    stop: CancellationToken,
    /// The startup thread, which runs the loader and maintenance threads and joins them.
    startup: JoinHandle<()>,
}

/// What the active threads share besides the app.
pub struct Term {
    pub epoch: Epoch,
    pub stop: CancellationToken,
    /// Set once the repository's epoch row is ours.
    pub claimed: AtomicBool,
    pub commands: Sender<Command>,
}

impl Term {
    /// Reports that a newer epoch owns the repository.
    pub fn fenced(&self, e: &RepoError) {
        let _ = self.commands.send(Command::Fenced { epoch: self.epoch, reason: e.to_string() });
    }
}

impl ActiveServices {
    pub fn start(app: Arc<App>, epoch: Epoch, commands: Sender<Command>) -> ActiveServices {
        let stop = CancellationToken::new();
        let term = Arc::new(Term { epoch, stop: stop.clone(), claimed: AtomicBool::new(false), commands });
        let startup = std::thread::Builder::new()
            .name("startup".into())
            .spawn(move || startup(app, term))
            .expect("spawn startup thread");
        ActiveServices { stop, startup }
    }

    /// Cancels every thread; they end at their next step.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops and waits up to `limit` for the threads to end (a hung start is left behind).
    pub fn stop_and_wait(self, limit: Duration) {
        self.stop();
        let deadline = std::time::Instant::now() + limit;
        while !self.startup.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.startup.is_finished() {
            let _ = self.startup.join();
        }
    }
}

fn startup(app: Arc<App>, term: Arc<Term>) {
    if pollux_failpoint::hit("startup.hang") {
        return;
    }
    let epoch = term.epoch;
    app.loader_wake.notify();
    if let Err(e) = app.shared.write_fence(epoch) {
        tracing::error!(epoch, error = %e, "cannot write the fence file; not starting");
        let _ = term.commands.send(Command::Fenced { epoch, reason: format!("fence file: {e}") });
        return;
    }
    app.reload_catalog_in_memory();
    // A start that lost its epoch meanwhile (stopped, or a newer leader's fence) touches
    // nothing more: the shared directory is the newer leader's now.
    let current = app.shared.read_fence();
    if term.stop.is_cancelled() || current.as_ref().is_ok_and(|f| *f != epoch) {
        tracing::warn!(epoch, fence = ?current.ok(), "start abandoned: no longer the current epoch");
        return;
    }
    let discarded = match app.store.discard_temp(epoch) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(epoch, error = %e, "cannot clean the DTO store; not starting");
            return;
        }
    };
    let (backlog, _) = app.store.backlog().unwrap_or((0, 0.0));
    tracing::info!(epoch, discarded_temp_files = discarded, backlog, "recovered the DTO store");
    if term.stop.is_cancelled() {
        return;
    }
    let spawn = |name: &str, body: fn(Arc<App>, Arc<Term>)| {
        let (app, term) = (app.clone(), term.clone());
        std::thread::Builder::new().name(name.to_owned()).spawn(move || body(app, term)).expect("spawn worker")
    };
    let loader = spawn("loader", run_loader);
    let maintenance = spawn("maintenance", maintenance::run);
    let notifier = spawn("notifier", notify::run);
    let _ = term.commands.send(Command::Ready { epoch });
    let _ = loader.join();
    let _ = maintenance.join();
    let _ = notifier.join();
}

/// Claims the repository for the term's epoch, then loads until stopped.
fn run_loader(app: Arc<App>, term: Arc<Term>) {
    loop {
        if term.stop.is_cancelled() {
            return;
        }
        match app.repo.claim_epoch(term.epoch, &app.node.id) {
            Ok(()) => break,
            Err(e @ RepoError::Fenced { .. }) => {
                term.fenced(&e);
                return;
            }
            Err(e) => {
                tracing::warn!(epoch = term.epoch, error = %e, "repository not claimed yet; retrying");
                std::thread::sleep(CLAIM_RETRY);
            }
        }
    }
    tracing::info!(epoch = term.epoch, "repository claimed");
    term.claimed.store(true, Ordering::Release);
    app.maintenance_wake.notify();
    loader::run(&app, &term);
}
