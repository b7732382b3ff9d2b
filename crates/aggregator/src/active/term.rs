//! A term: the epoch the election gave this node, and what the active services of that epoch
//! share. A leaf: it knows nothing of the election, the workers or the API.
//!
//! ```text
//!   election runtime ──start(epoch)──▶ Term ──▶ startup, workers (read epoch, stop, gate)
//!          ▲                             │
//!          └──── TermEvent::{Ready, Fenced} (the `report` callback)
//! ```

pub use crate::wake::Wake;
use pollux_repository::Epoch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a term tells the election runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum TermEvent {
    /// The services of `epoch` can ingest and answer queries.
    Ready { epoch: Epoch },
    /// The services of `epoch` found a newer epoch (in the repository or the fence file).
    Fenced { epoch: Epoch, reason: String },
}

/// How a term reports to whoever started it.
pub type Report = Arc<dyn Fn(TermEvent) + Send + Sync>;

pub struct Term {
    pub epoch: Epoch,
    stop: CancellationToken,
    /// Set once the repository's epoch row is ours: workers that write wait for it.
    claimed: AtomicBool,
    report: Report,
    /// Woken when the term stops, so no worker sleeps through its end.
    wakes: Vec<Arc<Wake>>,
}

impl Term {
    pub fn new(epoch: Epoch, report: Report, wakes: Vec<Arc<Wake>>) -> Term {
        Term { epoch, stop: CancellationToken::new(), claimed: AtomicBool::new(false), report, wakes }
    }

    /// Ends the term: every wait is cut short and every worker ends at its next step.
    pub fn stop(&self) {
        self.stop.cancel();
        for wake in &self.wakes {
            wake.notify();
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub fn claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Opens the gate: the repository is claimed for this epoch.
    pub fn set_claimed(&self) {
        self.claimed.store(true, Ordering::Release);
        for wake in &self.wakes {
            wake.notify();
        }
    }

    pub fn ready(&self) {
        (self.report)(TermEvent::Ready { epoch: self.epoch });
    }

    /// Reports that a newer epoch owns the repository or the shared directory.
    pub fn fenced(&self, reason: impl std::fmt::Display) {
        (self.report)(TermEvent::Fenced { epoch: self.epoch, reason: reason.to_string() });
    }

    /// Sleeps `limit`, cut short by the term's end; true if the term is still running.
    pub fn pause(&self, wake: &Wake, limit: Duration) -> bool {
        if self.stopped() {
            return false;
        }
        wake.wait(limit);
        !self.stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    #[test]
    fn stopping_a_term_cuts_every_wait_short_and_reports_go_to_the_starter() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let wake = Arc::new(Wake::default());
        let term = Arc::new(Term::new(7, Arc::new(move |e| sink.lock().unwrap().push(e)), vec![wake.clone()]));
        let sleeper = {
            let (term, wake) = (term.clone(), wake.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                wake.wait(Duration::ZERO); // drain
                while term.pause(&wake, Duration::from_secs(60)) {}
                started.elapsed()
            })
        };
        term.ready();
        term.fenced("the repository is at epoch 8");
        term.stop();
        assert!(sleeper.join().unwrap() < Duration::from_secs(10));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                TermEvent::Ready { epoch: 7 },
                TermEvent::Fenced { epoch: 7, reason: "the repository is at epoch 8".into() }
            ]
        );
        assert!(!term.pause(&wake, Duration::from_secs(60)), "a stopped term does not sleep");
    }
}
