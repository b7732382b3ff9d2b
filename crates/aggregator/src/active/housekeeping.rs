//! Background work of the active aggregator: rollups, compaction, retention, and picking up
//! changes to the customized metric families.
//!
//! Each step is a bounded amount of work in its own transactions; when a step reports more work
//! due, the loop comes straight back instead of sleeping, so a new active finishes the pending
//! rollups it inherited without delay.

use crate::metrics::Metrics;
use crate::services::Term;
use crate::App;
use pollux_repository::{Epoch, Progress, RepoError, Retention, RollupPolicy};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_secs(1);
const CATALOG_EVERY: Duration = Duration::from_secs(10);
const EXPIRE_EVERY: Duration = Duration::from_secs(600);
const ROLLUP_BUDGET: usize = 16;
/// A closed period is recomputed once no load has touched it for this long...
const ROLLUP_SETTLE: Duration = Duration::from_secs(5);
/// ...or once it has waited this long, however often late data keeps touching it.
const ROLLUP_MAX_DELAY: Duration = Duration::from_secs(300);
const COMPACT_BUDGET: usize = 4;

pub fn run(app: Arc<App>, term: Arc<Term>) {
    let mut last_catalog = Instant::now();
    // The first expiry waits a full period: a node that just took over has rollups to finish
    // and queries to answer first.
    let mut last_expire = Instant::now();
    while !term.stop.is_cancelled() {
        if !term.claimed.load(Ordering::Acquire) {
            app.maintenance_wake.wait(TICK);
            continue;
        }
        match step(&app, term.epoch, &mut last_catalog, &mut last_expire) {
            Ok(true) => {}
            Ok(false) => app.maintenance_wake.wait(TICK),
            Err(e @ RepoError::Fenced { .. }) => {
                term.fenced(&e);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "maintenance step failed; retrying");
                app.maintenance_wake.wait(TICK);
            }
        }
    }
}

/// Shows a burst of work (a step that left more due) as a task in progress until it is done.
fn track(app: &App, name: &'static str, unit: &'static str, step: &Progress, total: impl Fn() -> Option<u64>) {
    if step.more && !app.progress.running(name) {
        app.progress.begin(name, unit, total().map(|t| t + step.done as u64));
    }
    app.progress.advance(name, step.done as u64);
    if !step.more {
        app.progress.end(name);
    }
}

/// One round; returns true when more work is due right away.
fn step(app: &App, epoch: Epoch, last_catalog: &mut Instant, last_expire: &mut Instant) -> Result<bool, RepoError> {
    if last_catalog.elapsed() >= CATALOG_EVERY {
        *last_catalog = Instant::now();
        app.reload_catalog(epoch)?;
    }
    let now = crate::unix_now();
    let config = &app.config;
    let policy = RollupPolicy {
        grace: config.rollup_grace,
        settle: ROLLUP_SETTLE,
        max_delay: ROLLUP_MAX_DELAY,
        retention: Some(Retention::from(&config.retention)),
    };
    let rolled = app.repo.roll_up(epoch, now, &policy, ROLLUP_BUDGET)?;
    Metrics::add(&app.metrics.rollups_computed, rolled.done as u64);
    track(app, "rollups", "periods", &rolled, || app.repo.stats().ok().map(|s| s.pending_rollups));
    let before = now - config.recent_window.as_secs() as i64;
    let compacted = app.repo.compact(epoch, before, COMPACT_BUDGET)?;
    Metrics::add(&app.metrics.cycles_compacted, compacted.done as u64);
    track(app, "compaction", "cycles", &compacted, || None);
    if last_expire.elapsed() >= EXPIRE_EVERY {
        *last_expire = Instant::now();
        app.progress.begin("retention", "rows", None);
        let expired = app.repo.expire(epoch, now, &Retention::from(&config.retention))?;
        app.progress.advance("retention", expired.done as u64);
        app.progress.end("retention");
    }
    Ok(rolled.more || compacted.more)
}
