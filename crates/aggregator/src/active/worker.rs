//! One worker abstraction and one runner for everything the active does in the background.
//!
//! ```text
//!   runner(worker, term):
//!     wait for the claim gate (workers that write) ── cut short by the term's end
//!     loop until the term ends:
//!       work() ─▶ Busy  ─▶ again at once
//!              ─▶ Idle  ─▶ wait for a wake, at most idle_wait()
//!              ─▶ Done  ─▶ end
//!              ─▶ Err(fenced) ─▶ report to the election, end
//!              ─▶ Err(other)  ─▶ record it, back off (1 s doubling to 5 s; wakes do not cut it)
//! ```
//!
//! A worker owns its dependencies and its state; stopping, the gate, fencing, backoff and the
//! health the status shows live here, once.

use super::term::{Term, Wake};
use pollux_model::wire::WorkerStatus;
use pollux_repository::{Action, RepoError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a step of work left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// More is due right away.
    Busy,
    /// Nothing due: wait for a wake or `idle_wait`.
    Idle,
    /// The worker has nothing more to do in this term.
    Done,
}

pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;

    /// Its line in the status: the name, unless several workers share it (a notifier per
    /// receiver).
    fn label(&self) -> String {
        self.name().to_owned()
    }

    /// Whether the worker writes to the repository, and so waits until the term has claimed it.
    fn needs_claim(&self) -> bool {
        true
    }

    /// One bounded step of work.
    fn work(&mut self, term: &Term) -> Result<WorkerState, RepoError>;

    /// The longest wait when idle; a wake cuts it short.
    fn idle_wait(&self) -> Duration;

    /// What wakes this worker when work arrives.
    fn wake(&self) -> Arc<Wake>;
}

/// The first wait after a failed step; it doubles up to [`MAX_BACKOFF`] while failures go on.
/// A full wait whatever arrives meanwhile: a failing disk is not asked again at the rate of
/// ingest.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Every worker's health, for the status: shared by the runners of all terms of this node.
#[derive(Debug, Default)]
pub struct WorkerBoard {
    workers: Mutex<BTreeMap<String, WorkerStatus>>,
}

impl WorkerBoard {
    fn ok(&self, name: &str) {
        let mut workers = self.workers.lock().expect("worker board");
        let w = workers.entry(name.to_owned()).or_default();
        w.last_ok_ms = Some(crate::unix_now_ms());
        w.failures_in_a_row = 0;
    }

    fn failed(&self, name: &str, e: &RepoError) {
        let mut workers = self.workers.lock().expect("worker board");
        let w = workers.entry(name.to_owned()).or_default();
        w.last_error_ms = Some(crate::unix_now_ms());
        w.last_error = Some(e.to_string());
        w.failures_in_a_row += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, WorkerStatus> {
        self.workers.lock().expect("worker board").clone()
    }

    pub fn clear(&self) {
        self.workers.lock().expect("worker board").clear();
    }
}

/// Runs `worker` until the term ends, it is fenced or it is done.
pub fn run(mut worker: Box<dyn Worker>, term: &Term, board: &WorkerBoard) {
    let (name, label) = (worker.name(), worker.label());
    let wake = worker.wake();
    while worker.needs_claim() && !term.claimed() {
        if !term.pause(&wake, Duration::from_millis(100)) {
            return;
        }
    }
    let mut backoff = FIRST_BACKOFF;
    while !term.stopped() {
        match worker.work(term) {
            Ok(WorkerState::Busy) => {
                board.ok(&label);
                backoff = FIRST_BACKOFF;
            }
            Ok(WorkerState::Idle) => {
                board.ok(&label);
                backoff = FIRST_BACKOFF;
                term.pause(&wake, worker.idle_wait());
            }
            Ok(WorkerState::Done) => break,
            Err(e) if e.action() == Action::Fenced => {
                tracing::warn!(worker = name, epoch = term.epoch, error = %e, "fenced: the new active goes on from here");
                term.fenced(&e);
                break;
            }
            Err(e) => {
                board.failed(&label, &e);
                tracing::warn!(worker = %label, error = %e, retry_in = ?backoff, "step failed; retrying");
                let until = Instant::now() + backoff;
                while !term.stopped() && Instant::now() < until {
                    wake.wait(until.saturating_duration_since(Instant::now()));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!(worker = name, epoch = term.epoch, "{name} of this epoch stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Scripted steps, then idle.
    struct Scripted {
        steps: Vec<Result<WorkerState, RepoError>>,
        calls: Arc<AtomicUsize>,
        wake: Arc<Wake>,
    }

    impl Worker for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn work(&mut self, _term: &Term) -> Result<WorkerState, RepoError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.steps.is_empty() {
                Ok(WorkerState::Idle)
            } else {
                self.steps.remove(0)
            }
        }
        fn idle_wait(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn wake(&self) -> Arc<Wake> {
            self.wake.clone()
        }
    }

    fn term(events: Arc<Mutex<Vec<super::super::TermEvent>>>, wake: &Arc<Wake>) -> Arc<Term> {
        Arc::new(Term::new(3, Arc::new(move |e| events.lock().unwrap().push(e)), vec![wake.clone()]))
    }

    /// The runner of `worker` on a thread of its own, and the board it reports to.
    fn spawn(worker: Scripted, term: &Arc<Term>) -> (std::thread::JoinHandle<()>, Arc<WorkerBoard>) {
        let board = Arc::new(WorkerBoard::default());
        let (term, shared) = (term.clone(), board.clone());
        (std::thread::spawn(move || run(Box::new(worker), &term, &shared)), board)
    }

    #[test]
    fn a_worker_waits_for_the_claim_then_works_until_fenced() {
        let (events, wake, calls) = (Arc::default(), Arc::new(Wake::default()), Arc::new(AtomicUsize::new(0)));
        let term = term(Arc::clone(&events), &wake);
        let worker = Scripted {
            steps: vec![Ok(WorkerState::Busy), Err(RepoError::Fenced { ours: 3, current: 4 })],
            calls: calls.clone(),
            wake: wake.clone(),
        };
        let (runner, board) = spawn(worker, &term);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no work before the claim");
        term.set_claimed();
        runner.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(matches!(&events.lock().unwrap()[..], [super::super::TermEvent::Fenced { epoch: 3, .. }]));
        assert!(board.snapshot()["scripted"].last_ok_ms.is_some());
    }

    #[test]
    fn failures_are_recorded_and_a_stop_ends_the_backoff_and_the_idle_wait() {
        let (events, wake, calls) = (Arc::default(), Arc::new(Wake::default()), Arc::new(AtomicUsize::new(0)));
        let term = term(events, &wake);
        term.set_claimed();
        let worker = Scripted {
            steps: vec![Err(RepoError::Unavailable("disk".into()))],
            calls: calls.clone(),
            wake: wake.clone(),
        };
        let (runner, board) = spawn(worker, &term);
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "the step after a failure comes after the backoff");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = &board.snapshot()["scripted"];
        assert_eq!(status.last_error.as_deref(), Some("repository unavailable: disk"));
        let stopping = Instant::now();
        term.stop();
        runner.join().unwrap();
        assert!(stopping.elapsed() < Duration::from_secs(5), "the idle wait of 60 s is cut short");
    }
}
