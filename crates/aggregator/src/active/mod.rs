//! What runs only on the active aggregator, started and stopped as one unit with the epoch the
//! election gave it (a [`Term`]).
//!
//! ```text
//!   ActiveParts::start(epoch) ── supervisor thread:
//!       write the fence, reread families, discard temp leftovers
//!       spawn a runner thread per worker: loader, housekeeping, a notifier per receiver
//!       (all gated on the claim)
//!       report Ready, then claim the repository for the epoch, then open the gate
//!   ActiveServices::stop() ─── ends the term; every runner ends at its next step
//!   ActiveServices::wait(limit) ─ returns once every thread of the term has ended
//! ```
//!
//! Readiness does not wait for the repository claim: ingest needs only the shared directory and
//! queries only read. A deposed active frozen inside a write transaction (SIGSTOP) holds
//! SQLite's write lock until it resumes or dies; the new active acknowledges and answers
//! queries meanwhile, and claims the repository as soon as the lock is free.
//!
//! Every thread of a term holds a clone of one completion sender; when the last one ends the
//! receiver sees the channel closed (mini-redis's shutdown pattern), so waiting for a term is
//! one `recv_timeout`, never a poll.

pub mod housekeeping;
pub mod loader;
pub mod notifier;
pub mod term;
pub mod worker;

use crate::ingest::store::DtoStore;
use crate::shared_dir::families::Families;
use crate::shared_dir::SharedDir;
use pollux_repository::{Epoch, RepoError, Repository};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;
use term::{Report, Term, Wake};
use worker::{Worker, WorkerBoard};

pub use term::TermEvent;

/// How often a repository claim that failed for a reason other than a newer epoch (the write
/// lock held by a frozen predecessor, a busy disk) is tried again.
const CLAIM_RETRY: Duration = Duration::from_millis(250);

/// Everything a term needs, built once by the aggregator.
pub struct ActiveParts {
    pub node_id: String,
    pub shared: SharedDir,
    pub families: Arc<Families>,
    pub store: Arc<DtoStore>,
    pub repo: Arc<dyn Repository>,
    pub loader: loader::LoaderParts,
    pub housekeeping: housekeeping::HousekeepingParts,
    pub notifier: notifier::NotifierParts,
    pub board: Arc<WorkerBoard>,
}

/// The running services of one term.
pub struct ActiveServices {
    term: Arc<Term>,
    /// Closed once every thread of the term has ended.
    done: Receiver<()>,
}

impl ActiveParts {
    /// Starts the services of `epoch`; they report Ready or Fenced through `report`.
    pub fn start(self: &Arc<Self>, epoch: Epoch, report: Report) -> ActiveServices {
        let wakes: Vec<Arc<Wake>> = [self.loader.wake.clone(), self.housekeeping.wake.clone()]
            .into_iter()
            .chain(self.notifier.wakes.iter().cloned())
            .collect();
        let term = Arc::new(Term::new(epoch, report, wakes));
        let (finished, done) = std::sync::mpsc::channel();
        let (parts, supervised) = (self.clone(), term.clone());
        std::thread::Builder::new()
            .name("startup".into())
            .spawn(move || parts.supervise(&supervised, finished))
            .expect("spawn the startup thread");
        ActiveServices { term, done }
    }

    fn workers(&self) -> Vec<Box<dyn Worker>> {
        let mut workers: Vec<Box<dyn Worker>> = vec![
            Box::new(loader::Loader::new(self.loader.clone())),
            Box::new(housekeeping::Housekeeping::new(self.housekeeping.clone())),
        ];
        // One per receiver: a receiver that hangs holds up only itself.
        for notifier in notifier::Notifier::all(&self.notifier) {
            workers.push(Box::new(notifier));
        }
        workers
    }

    /// The startup of a term, then the claim. `finished` is held by every thread it starts.
    fn supervise(&self, term: &Arc<Term>, finished: Sender<()>) {
        if pollux_failpoint::hit("startup.hang") {
            return;
        }
        if !self.recover(term) {
            return;
        }
        for worker in self.workers() {
            let (term, board, finished) = (term.clone(), self.board.clone(), finished.clone());
            std::thread::Builder::new()
                .name(worker.name().to_owned())
                .spawn(move || {
                    worker::run(worker, &term, &board);
                    drop(finished);
                })
                .expect("spawn a worker thread");
        }
        term.ready();
        self.claim(term);
    }

    /// Takes over the shared directory for the term: fence, families, temp leftovers. False
    /// when the term must not go on.
    fn recover(&self, term: &Term) -> bool {
        let epoch = term.epoch;
        self.loader.wake.notify();
        if let Err(e) = self.shared.write_fence(epoch) {
            tracing::error!(epoch, error = %e, "cannot write the fence file; not starting");
            term.fenced(format!("fence file: {e}"));
            return false;
        }
        self.families.reread();
        // A start that lost its epoch meanwhile (stopped, or a newer leader's fence) touches
        // nothing more: the shared directory is the newer leader's now.
        let current = self.shared.read_fence();
        if term.stopped() || current.as_ref().is_ok_and(|f| *f != epoch) {
            tracing::warn!(epoch, fence = ?current.ok(), "start abandoned: no longer the current epoch");
            return false;
        }
        let discarded = match self.store.discard_temp(epoch) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(epoch, error = %e, "cannot clean the DTO store; not starting");
                return false;
            }
        };
        let (backlog, _) = self.store.backlog().unwrap_or((0, 0.0));
        tracing::info!(epoch, discarded_temp_files = discarded, backlog, "recovered the DTO store");
        !term.stopped()
    }

    /// Claims the repository for the term's epoch, retrying until it succeeds, the term ends
    /// or a newer epoch is found; then opens the gate for the workers.
    fn claim(&self, term: &Term) {
        loop {
            if term.stopped() {
                return;
            }
            match self.repo.claim_epoch(term.epoch, &self.node_id) {
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
        term.set_claimed();
    }
}

impl ActiveServices {
    /// Ends the term; its threads end at their next step.
    pub fn stop(&self) {
        self.term.stop();
    }

    /// Waits up to `limit` for every thread of the term to end; false if some did not (a start
    /// hung in I/O is left behind, and said so).
    pub fn wait(&self, limit: Duration) -> bool {
        match self.done.recv_timeout(limit) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(epoch = self.term.epoch, "the services of the term did not stop within {limit:?}");
                false
            }
        }
    }

    /// True once every thread of the term has ended (without waiting).
    pub fn ended(&self) -> bool {
        matches!(self.done.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected))
    }
}
