//! Housekeeping on the active: rollups, compaction, retention, and picking up changes to the
//! customized metric families. (Not to be confused with a node's maintenance state, which an
//! operator sets.)
//!
//! Each step is a bounded amount of work in its own transactions; when a step reports more work
//! due, the runner comes straight back instead of sleeping, so a new active finishes the pending
//! rollups it inherited without delay.

use super::term::{Term, Wake};
use super::worker::{Worker, WorkerState};
use crate::metrics::Metrics;
use crate::progress::Tracker;
use crate::shared_dir::families::Families;
use pollux_repository::{Epoch, Progress, RepoError, Repository, Retention, RollupPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest sleep with nothing due; a load wakes housekeeping at once.
const TICK: Duration = Duration::from_secs(1);
const ROLLUP_BUDGET: usize = 16;
/// A closed period is recomputed once no load has touched it for this long...
const ROLLUP_SETTLE: Duration = Duration::from_secs(5);
/// ...or once it has waited this long, however often late data keeps touching it.
const ROLLUP_MAX_DELAY: Duration = Duration::from_secs(300);
const COMPACT_BUDGET: usize = 4;

/// What housekeeping works with, and how often it does what.
#[derive(Clone)]
pub struct HousekeepingParts {
    pub repo: Arc<dyn Repository>,
    pub families: Arc<Families>,
    pub metrics: Arc<Metrics>,
    pub progress: Arc<Tracker>,
    pub wake: Arc<Wake>,
    pub rollup_grace: Duration,
    pub recent_window: Duration,
    pub retention: Retention,
    /// How often `metric-families/` is read again.
    pub reread_families: Duration,
    /// How often retention runs; the first run waits a full period (a node that just took
    /// over has rollups to finish and queries to answer first).
    pub expire_every: Duration,
}

pub struct Housekeeping {
    parts: HousekeepingParts,
    last_families: Instant,
    last_expire: Instant,
}

impl Housekeeping {
    pub fn new(parts: HousekeepingParts) -> Housekeeping {
        Housekeeping { parts, last_families: Instant::now(), last_expire: Instant::now() }
    }

    /// Shows a burst of work (a step that left more due) as a task in progress until done.
    fn track(&self, name: &'static str, unit: &'static str, step: &Progress, total: impl Fn() -> Option<u64>) {
        let progress = &self.parts.progress;
        if step.more && !progress.running(name) {
            progress.begin(name, unit, total().map(|t| t + step.done as u64));
        }
        progress.advance(name, step.done as u64);
        if !step.more {
            progress.end(name);
        }
    }

    /// One round; returns true when more work is due right away.
    fn step(&mut self, epoch: Epoch) -> Result<bool, RepoError> {
        let p = self.parts.clone();
        if self.last_families.elapsed() >= p.reread_families {
            self.last_families = Instant::now();
            p.families.define_changed(p.repo.as_ref(), epoch)?;
        }
        let now = crate::unix_now();
        let policy = RollupPolicy {
            grace: p.rollup_grace,
            settle: ROLLUP_SETTLE,
            max_delay: ROLLUP_MAX_DELAY,
            retention: Some(p.retention.clone()),
        };
        let rolled = p.repo.roll_up(epoch, now, &policy, ROLLUP_BUDGET)?;
        Metrics::add(&p.metrics.rollups_computed, rolled.done as u64);
        self.track("rollups", "periods", &rolled, || p.repo.stats().ok().map(|s| s.pending_rollups));
        let before = now - p.recent_window.as_secs() as i64;
        let compacted = p.repo.compact(epoch, before, COMPACT_BUDGET)?;
        Metrics::add(&p.metrics.cycles_compacted, compacted.done as u64);
        self.track("compaction", "cycles", &compacted, || None);
        if self.last_expire.elapsed() >= p.expire_every {
            self.last_expire = Instant::now();
            p.progress.begin("retention", "rows", None);
            let expired = p.repo.expire(epoch, now, &p.retention)?;
            p.progress.advance("retention", expired.done as u64);
            p.progress.end("retention");
        }
        Ok(rolled.more || compacted.more)
    }
}

impl Worker for Housekeeping {
    fn name(&self) -> &'static str {
        "housekeeping"
    }

    fn work(&mut self, term: &Term) -> Result<WorkerState, RepoError> {
        Ok(if self.step(term.epoch)? { WorkerState::Busy } else { WorkerState::Idle })
    }

    fn idle_wait(&self) -> Duration {
        TICK
    }

    fn wake(&self) -> Arc<Wake> {
        self.parts.wake.clone()
    }
}
