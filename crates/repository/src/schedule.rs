//! Which pending rollup periods are due, in what order, within what budget: the same for every
//! backend. A backend supplies the three statements ([`RollupWork`]).

use crate::{Epoch, Progress, Result, RollupPolicy};
use pollux_model::Resolution;

/// When a pending period may be rolled: the settle and overdue marks of a [`RollupPolicy`].
pub(crate) struct Due {
    /// Periods that start at or before this have ended `grace` ago.
    pub before: i64,
    /// `Some((settled, overdue))`: only periods untouched since `settled`, or pending since
    /// `overdue`; `None`: every period that has ended.
    pub settling: Option<(i64, i64)>,
}

pub(crate) trait RollupWork {
    /// Forgets pending periods of `resolution` that start before `cutoff`; returns how many.
    fn drop_pending_before(&self, epoch: Epoch, resolution: Resolution, cutoff: i64) -> Result<usize>;
    /// Up to `limit` due periods of `resolution` as `(family, period)`, oldest first.
    fn due(&self, resolution: Resolution, due: &Due, limit: usize) -> Result<Vec<(String, i64)>>;
    /// Recomputes one period from the next finer resolution and marks its parent pending.
    fn roll_period(&self, epoch: Epoch, family: &str, resolution: Resolution, period: i64, now: i64) -> Result<()>;
}

/// Recomputes the pending periods `policy` says are due at `now`, finest resolution first, at
/// most `budget` per call (see [`crate::Repository::roll_up`]).
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
    for resolution in Resolution::ROLLUPS {
        let length = resolution.length().expect("rollups have periods");
        // A period is due once it ended `grace` ago: data for it may still be on its way until
        // then. Coarser periods wait until no finer period is due, so a day is rolled from
        // complete hours.
        let due = Due { before: now - policy.grace.as_secs() as i64 - length, settling };
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
                if progress.done == budget {
                    progress.more = true;
                    return Ok(progress);
                }
                work.roll_period(epoch, &family, resolution, period, now)?;
                progress.done += 1;
            }
        }
    }
    Ok(progress)
}
