//! Which pending rollup periods are due, in what order, within what budget: the same for every
//! backend. A backend supplies the statements ([`RollupWork`]).
//!
//! # A period that keeps failing
//!
//! A period whose recomputation fails with an error that is not an outage (the repository
//! answered, and refused: [`Action::Rejected`] or [`Action::Bug`]) must not hold up the others,
//! nor compaction and retention after them. It is logged with its period and the error, stays
//! pending, and is set aside: its `failures` are counted in `rollup_pending` and it is not due
//! again before `retry_at`, one minute after its first failure, doubling up to an hour
//! ([`retry_at`]). The other due periods go on in the same call. Once it succeeds its row goes,
//! as any period's. The count shows in [`crate::RepoStats::failing_rollups`].
//!
//! An outage ([`Action::Retry`]: the repository unavailable, or an injected fault) and a fenced
//! writer stop the call with the error, as before: the same period is tried first next time.

use crate::{Action, Epoch, Progress, Result, RollupPolicy};
use pollux_model::Resolution;

/// The first wait after a period failed, in seconds; it doubles with each failure...
const FIRST_RETRY: i64 = 60;
/// ...up to this.
const LAST_RETRY: i64 = 3600;

/// When a pending period may be rolled: the settle and overdue marks of a [`RollupPolicy`].
pub(crate) struct Due {
    /// Periods that start at or before this have ended `grace` ago.
    pub before: i64,
    /// `Some((settled, overdue))`: only periods untouched since `settled`, or pending since
    /// `overdue`; `None`: every period that has ended.
    pub settling: Option<(i64, i64)>,
    /// The time of the call: a period that failed is due again once its `retry_at` is at or
    /// before it.
    pub now: i64,
}

pub(crate) trait RollupWork {
    /// Forgets pending periods of `resolution` that start before `cutoff`; returns how many.
    fn drop_pending_before(&self, epoch: Epoch, resolution: Resolution, cutoff: i64) -> Result<usize>;
    /// Up to `limit` due periods of `resolution` as `(family, period)`, oldest first; none that
    /// is waiting to be retried after a failure.
    fn due(&self, resolution: Resolution, due: &Due, limit: usize) -> Result<Vec<(String, i64)>>;
    /// Recomputes one period from the next finer resolution and marks its parent pending.
    fn roll_period(&self, epoch: Epoch, family: &str, resolution: Resolution, period: i64, now: i64) -> Result<()>;
    /// Records a failure of a pending period: its `failures` count goes up by one, and it is
    /// not due before [`retry_at`]`(now, failures)`. Returns the count and that time; `None`
    /// when the period is no longer pending.
    fn postpone(
        &self,
        epoch: Epoch,
        family: &str,
        resolution: Resolution,
        period: i64,
        now: i64,
    ) -> Result<Option<(i64, i64)>>;
}

/// When a period that has now failed `failures` times is tried again.
pub(crate) fn retry_at(now: i64, failures: i64) -> i64 {
    let doublings = failures.clamp(1, 32) - 1;
    now + (FIRST_RETRY << doublings).min(LAST_RETRY)
}

/// Recomputes the pending periods `policy` says are due at `now`, finest resolution first, at
/// most `budget` attempts per call (see [`crate::Repository::roll_up`], and the module's notes
/// on a period that keeps failing).
pub(crate) fn roll_up(
    work: &impl RollupWork,
    epoch: Epoch,
    now: i64,
    policy: &RollupPolicy,
    budget: usize,
) -> Result<Progress> {
    let settling = (!policy.settle.is_zero())
        .then(|| (now - policy.settle.as_secs() as i64, now - policy.max_delay.as_secs() as i64));
    let mut progress = Progress::default();
    let mut attempts = 0;
    for resolution in Resolution::ROLLUPS {
        let length = resolution.length().expect("rollups have periods");
        // A period is due once it ended `grace` ago: data for it may still be on its way until
        // then. Coarser periods wait until no finer period is due, so a day is rolled from
        // complete hours.
        let due = Due { before: now - policy.grace.as_secs() as i64 - length, settling, now };
        if let Some(retention) = &policy.retention {
            // A period whose finer data is past its retention would be rebuilt from the little
            // that is left: dropped, not recomputed.
            let finer = match resolution.child() {
                Some(Resolution::Hour) => retention.hour,
                Some(Resolution::Day) => retention.day,
                _ => retention.raw,
            };
            let dropped = work.drop_pending_before(epoch, resolution, now - finer.as_secs() as i64)?;
            if dropped > 0 {
                tracing::warn!(resolution = resolution.name(), dropped, "pending rollups past retention dropped");
            }
        }
        loop {
            let periods = work.due(resolution, &due, budget + 1)?;
            if periods.is_empty() {
                break;
            }
            for (family, period) in periods {
                if attempts == budget {
                    progress.more = true;
                    return Ok(progress);
                }
                attempts += 1;
                let error = match work.roll_period(epoch, &family, resolution, period, now) {
                    Ok(()) => {
                        progress.done += 1;
                        continue;
                    }
                    Err(e) => e,
                };
                if matches!(error.action(), Action::Fenced | Action::Retry) {
                    return Err(error);
                }
                // Set aside (the postponement makes `due` leave it out), so the loop goes on.
                let postponed = work.postpone(epoch, &family, resolution, period, now)?;
                let (failures, retry_at) = postponed.unwrap_or((0, now));
                tracing::error!(
                    resolution = resolution.name(),
                    family = family.as_str(),
                    period,
                    failures,
                    retry_in_s = retry_at - now,
                    error = %error,
                    "a rollup period failed: the other periods go on; this one stays pending and is tried again later"
                );
            }
        }
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RepoError;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const T: i64 = 1_763_337_600;

    /// Pending hours in memory: `(family, period) -> (failures, retry_at)`; `fail` says which
    /// fail and how.
    struct Fake {
        pending: RefCell<BTreeMap<(i64, String), (i64, i64)>>,
        rolled: RefCell<Vec<i64>>,
        fail: Box<dyn Fn(i64) -> Option<RepoError>>,
    }

    impl Fake {
        fn new(hours: &[i64], fail: impl Fn(i64) -> Option<RepoError> + 'static) -> Fake {
            Fake {
                pending: RefCell::new(hours.iter().map(|h| ((*h, "F".to_owned()), (0, 0))).collect()),
                rolled: RefCell::new(Vec::new()),
                fail: Box::new(fail),
            }
        }
    }

    impl RollupWork for Fake {
        fn drop_pending_before(&self, _: Epoch, _: Resolution, _: i64) -> Result<usize> {
            Ok(0)
        }
        fn due(&self, resolution: Resolution, due: &Due, limit: usize) -> Result<Vec<(String, i64)>> {
            if resolution != Resolution::Hour {
                return Ok(Vec::new());
            }
            let pending = self.pending.borrow();
            let due = pending.iter().filter(|((p, _), (_, retry))| *p <= due.before && *retry <= due.now);
            Ok(due.take(limit).map(|((p, f), _)| (f.clone(), *p)).collect())
        }
        fn roll_period(&self, _: Epoch, family: &str, _: Resolution, period: i64, _: i64) -> Result<()> {
            if let Some(e) = (self.fail)(period) {
                return Err(e);
            }
            self.pending.borrow_mut().remove(&(period, family.to_owned()));
            self.rolled.borrow_mut().push(period);
            Ok(())
        }
        fn postpone(&self, _: Epoch, family: &str, _: Resolution, period: i64, now: i64) -> Result<Option<(i64, i64)>> {
            let mut pending = self.pending.borrow_mut();
            let Some((failures, retry)) = pending.get_mut(&(period, family.to_owned())) else { return Ok(None) };
            *failures += 1;
            *retry = retry_at(now, *failures);
            Ok(Some((*failures, *retry)))
        }
    }

    fn roll(fake: &Fake, now: i64) -> Result<Progress> {
        roll_up(fake, 1, now, &RollupPolicy::immediate(Duration::ZERO), 10)
    }

    /// The first hour fails for good: the others are rolled in the same call, and it is tried
    /// again after one minute, then two, ... up to an hour.
    #[test]
    fn a_period_that_keeps_failing_is_set_aside_with_a_backoff() {
        let hours: Vec<i64> = (0..5).map(|h| T + h * 3600).collect();
        let fake = Fake::new(&hours, |p| (p == T).then(|| RepoError::Db("22003: value out of range".into())));
        let now = T + 86_400;
        assert_eq!(roll(&fake, now).unwrap(), Progress { done: 4, more: false });
        assert_eq!(*fake.rolled.borrow(), &hours[1..]);
        assert_eq!(fake.pending.borrow()[&(T, "F".into())], (1, now + 60));
        assert_eq!(roll(&fake, now + 59).unwrap(), Progress { done: 0, more: false }, "not before a minute");
        assert_eq!(roll(&fake, now + 60).unwrap().done, 0);
        assert_eq!(fake.pending.borrow()[&(T, "F".into())], (2, now + 180), "then two minutes");
        let mut waits = Vec::new();
        for _ in 0..8 {
            let at = fake.pending.borrow()[&(T, "F".into())].1;
            roll(&fake, at).unwrap();
            waits.push(fake.pending.borrow()[&(T, "F".into())].1 - at);
        }
        assert_eq!(waits, [240, 480, 960, 1920, 3600, 3600, 3600, 3600], "doubling up to an hour");
        assert_eq!(fake.pending.borrow()[&(T, "F".into())].0, 10);
        assert_eq!(retry_at(now, i64::MAX), now + 3600);
    }

    /// Failing periods count against the budget, so a call stays bounded however many fail.
    #[test]
    fn failures_use_the_budget() {
        // A day of hours, all ended; the first 15 fail.
        let hours: Vec<i64> = (0..24).map(|h| T + h * 3600).collect();
        let fake = Fake::new(&hours, |p| (p < T + 15 * 3600).then(|| RepoError::Rejected("no".into())));
        let now = T + 86_400;
        assert_eq!(roll(&fake, now).unwrap(), Progress { done: 0, more: true });
        assert_eq!(roll(&fake, now).unwrap(), Progress { done: 5, more: true });
        assert_eq!(roll(&fake, now).unwrap(), Progress { done: 4, more: false });
        assert_eq!(fake.pending.borrow().len(), 15);
    }

    /// An outage, an injected fault or a fenced writer stops the call as before, and the period
    /// is not set aside: it comes first next time.
    #[test]
    fn outages_and_fencing_stop_the_call() {
        let errors: [fn() -> RepoError; 3] = [
            || RepoError::Unavailable("connection refused".into()),
            || RepoError::Injected("x"),
            || RepoError::Fenced { ours: 1, current: 2 },
        ];
        for error in errors {
            let fake = Fake::new(&[T, T + 3600], move |p| (p == T).then(error));
            let err = roll(&fake, T + 86_400).unwrap_err();
            assert!(matches!(err.action(), Action::Retry | Action::Fenced), "{err}");
            assert!(fake.rolled.borrow().is_empty(), "nothing after it");
            assert_eq!(fake.pending.borrow()[&(T, "F".into())], (0, 0), "not postponed");
        }
    }
}
