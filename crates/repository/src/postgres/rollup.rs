//! Background work on loaded data: rollups computed in SQL, and retention by dropping days.
//!
//! Each unit of work (one rollup period, one family's expiry) is its own transaction with the
//! epoch check, so loading interleaves with it and a takeover finds every unit done or pending.

use super::{floats, FamilyTables, PostgresRepository, DAY};
use crate::schedule::{Due, RollupWork};
use crate::{Epoch, Progress, Result, Retention};
use pollux_model::Resolution;
use postgres::Transaction;
use std::time::Duration;

impl RollupWork for PostgresRepository {
    fn drop_pending_before(&self, epoch: Epoch, resolution: Resolution, cutoff: i64) -> Result<usize> {
        self.write(epoch, |tx, _| {
            Ok(tx.execute(
                "DELETE FROM rollup_pending WHERE resolution = $1 AND period < $2",
                &[&resolution.name(), &cutoff],
            )? as usize)
        })
    }

    fn due(&self, resolution: Resolution, due: &Due, limit: usize) -> Result<Vec<(String, i64)>> {
        let (settled, overdue) = due.settling.unwrap_or((i64::MAX, i64::MAX));
        self.read(|c| {
            let rows = c.query(
                "SELECT family, period FROM rollup_pending
                 WHERE resolution = $1 AND period <= $2 AND (touched_at <= $4 OR marked_at <= $5) AND retry_at <= $6
                 ORDER BY period, family LIMIT $3",
                &[&resolution.name(), &due.before, &(limit as i64), &settled, &overdue, &due.now],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn roll_period(&self, epoch: Epoch, family: &str, resolution: Resolution, period: i64, now: i64) -> Result<()> {
        self.roll_one(epoch, family, resolution, period, now)
    }

    fn postpone(
        &self,
        epoch: Epoch,
        family: &str,
        resolution: Resolution,
        period: i64,
        now: i64,
    ) -> Result<Option<(i64, i64)>> {
        self.write(epoch, |tx, _| {
            let failures: Option<i64> = tx
                .query_opt(
                    "UPDATE rollup_pending SET failures = failures + 1
                     WHERE resolution = $1 AND family = $2 AND period = $3 RETURNING failures",
                    &[&resolution.name(), &family, &period],
                )?
                .map(|r| r.get(0));
            let Some(failures) = failures else { return Ok(None) };
            let retry_at = crate::schedule::retry_at(now, failures);
            tx.execute(
                "UPDATE rollup_pending SET retry_at = $4 WHERE resolution = $1 AND family = $2 AND period = $3",
                &[&resolution.name(), &family, &period, &retry_at],
            )?;
            Ok(Some((failures, retry_at)))
        })
    }
}

impl PostgresRepository {
    /// Recomputes one period of one family from the next finer resolution, replacing what was
    /// there, and marks the enclosing coarser period pending.
    fn roll_one(&self, epoch: Epoch, family: &str, resolution: Resolution, period: i64, now: i64) -> Result<()> {
        let family = self.family(family)?;
        self.write_then(
            epoch,
            |tx, _| {
                let end = period + resolution.length().expect("rollups have periods");
                let table = family.rollup(resolution);
                tx.execute(&format!("DELETE FROM {table} WHERE period = $1"), &[&period])?;
                let targets: String = family
                    .columns
                    .iter()
                    .map(|c| format!(", \"{c}_min\", \"{c}_max\", \"{c}_sum\", \"{c}_count\", \"{c}_sq\""))
                    .collect();
                let sql = match resolution.child().expect("rollups have a finer resolution") {
                    Resolution::Raw => raw_rollup_sql(tx, &family, &table, &targets)?,
                    finer => {
                        // Sums of sums cannot raise either (see `floats`). A finer period whose sum
                        // is missing although it counted values (NaN in a repository copied from
                        // SQLite, which stores NaN as NULL) makes this sum NaN too, as NaN would.
                        let (mut parts, mut stats) = (String::new(), String::new());
                        for (i, c) in family.columns.iter().enumerate() {
                            parts.push_str(&format!(
                                ", min(\"{c}_min\") AS m{i}_min, max(\"{c}_max\") AS m{i}_max, {sum}, \
                             count(CASE WHEN \"{c}_count\" > 0 AND \"{c}_sum\" IS NULL THEN 1 END) AS m{i}_nan, \
                             sum(\"{c}_count\")::bigint AS m{i}_count, {squares}",
                                sum = floats::sum_parts(&format!("\"{c}_sum\""), &format!("m{i}_sum")),
                                squares = floats::sum_parts(&format!("\"{c}_sq\""), &format!("m{i}_sq")),
                            ));
                            stats.push_str(&format!(
                                ", m{i}_min, m{i}_max, CASE WHEN m{i}_nan > 0 THEN 'NaN'::float8 ELSE {sum} END, \
                             m{i}_count, {squares}",
                                sum = floats::sum_of(&format!("m{i}_sum")),
                                squares = floats::sum_of(&format!("m{i}_sq")),
                            ));
                        }
                        format!(
                            "INSERT INTO {table} (period, item_id{targets})
                         SELECT $1::bigint, item_id{stats} FROM (
                             SELECT item_id{parts} FROM {finer_table}
                             WHERE period >= $1::bigint AND period < $2::bigint GROUP BY item_id) parts",
                            finer_table = family.rollup(finer)
                        )
                    }
                };
                tx.execute(&sql, &[&period, &end])?;
                tx.execute(
                    "DELETE FROM rollup_pending WHERE resolution = $1 AND family = $2 AND period = $3",
                    &[&resolution.name(), &family.name, &period],
                )?;
                if let Some(parent) = resolution.parent() {
                    tx.execute(
                        "INSERT INTO rollup_pending (resolution, family, period, marked_at, touched_at)
                     VALUES ($1, $2, $3, $4, $4)
                     ON CONFLICT (resolution, period, family) DO UPDATE SET touched_at = excluded.touched_at",
                        &[&parent.name(), &family.name, &parent.period_start(period), &now],
                    )?;
                }
                Ok(())
            },
            |state, ()| {
                if resolution == Resolution::Hour {
                    // Baselines are read from hourly rollups: one was just recomputed.
                    state.alerting.forget_baselines();
                }
            },
        )
    }

    pub(crate) fn expire_old(&self, epoch: Epoch, now: i64, retention: &Retention) -> Result<Progress> {
        let cutoff = |d: Duration| now.saturating_sub(d.as_secs() as i64);
        let raw_cutoff = cutoff(retention.raw);
        let names: Vec<String> =
            self.read(|c| Ok(c.query("SELECT family FROM family_state", &[])?.iter().map(|r| r.get(0)).collect()))?;
        let mut progress = Progress::default();
        for name in names {
            let family = self.family(&name)?;
            progress.done += self.write(epoch, |tx, state| {
                let mut done = 0;
                let max_interval: i64 =
                    tx.query_one("SELECT max_interval FROM family_state WHERE family = $1", &[&name])?.get(0);
                // A day whose every record is older than the cutoff goes whole.
                let stale_cycle = raw_cutoff - 2 * max_interval;
                for day in raw_days(tx, &family)? {
                    if (day + 1) * DAY <= stale_cycle {
                        done += tx
                            .query_one(&format!("SELECT count(*) FROM {}", family.raw_day(day)), &[])?
                            .get::<_, i64>(0) as usize;
                        tx.batch_execute(&format!("DROP TABLE {}", family.raw_day(day)))?;
                        state.partitions.remove(&(family.number, day));
                    }
                }
                done += tx
                    .execute(&format!("DELETE FROM {} WHERE cycle < $1 AND ts < $1", family.raw()), &[&raw_cutoff])?
                    as usize;
                for (resolution, keep) in [
                    (Resolution::Hour, retention.hour),
                    (Resolution::Day, retention.day),
                    (Resolution::Week, retention.week),
                ] {
                    done += tx.execute(
                        &format!("DELETE FROM {} WHERE period < $1", family.rollup(resolution)),
                        &[&cutoff(keep)],
                    )? as usize;
                }
                Ok(done)
            })?;
        }
        // The registry is kept as long as raw data (a resend older would reload expired data).
        progress.done += self
            .write(epoch, |tx, _| Ok(tx.execute("DELETE FROM loaded_dtos WHERE cycle < $1", &[&raw_cutoff])?))?
            as usize;
        Ok(progress)
    }
}

/// The days the raw table has a partition for, oldest first.
fn raw_days(tx: &mut Transaction<'_>, family: &FamilyTables) -> Result<Vec<i64>> {
    let prefix = format!("{}_d", family.raw());
    let rows = tx.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::text::regclass",
        &[&family.raw()],
    )?;
    let mut days: Vec<i64> =
        rows.iter().filter_map(|r| r.get::<_, String>(0).strip_prefix(&prefix).and_then(|d| d.parse().ok())).collect();
    days.sort_unstable();
    Ok(days)
}

/// The statement computing an hour from raw data: `$1` the period, `$2` its end.
fn raw_rollup_sql(tx: &mut Transaction<'_>, family: &FamilyTables, table: &str, targets: &str) -> Result<String> {
    let max_interval: i64 =
        tx.query_one("SELECT max_interval FROM family_state WHERE family = $1", &[&family.name])?.get(0);
    // A record with ts in [period, end) belongs to a cycle in (period - 2 * interval, end).
    let span = 2 * max_interval;
    // Sums and sums of squares that saturate instead of raising (see `floats`): one value
    // beyond 1.3e154 would otherwise fail this statement for good.
    let (mut parts, mut stats) = (String::new(), String::new());
    for (i, c) in family.columns.iter().enumerate() {
        let v = format!("\"{c}\"");
        parts.push_str(&format!(
            ", min({v}) AS m{i}_min, max({v}) AS m{i}_max, {sum}, count({v}) AS m{i}_count, {squares}",
            sum = floats::sum_parts(&v, &format!("m{i}_sum")),
            squares = floats::square_parts(&v, &format!("m{i}_sq")),
        ));
        stats.push_str(&format!(
            ", m{i}_min, m{i}_max, {sum}, m{i}_count, {squares}",
            sum = floats::sum_of(&format!("m{i}_sum")),
            squares = floats::sum_of(&format!("m{i}_sq")),
        ));
    }
    Ok(format!(
        "INSERT INTO {table} (period, item_id{targets})
         SELECT $1::bigint, item_id{stats} FROM (
             SELECT item_id{parts} FROM {raw}
             WHERE cycle > $1::bigint - {span} AND cycle < $2::bigint AND ts >= $1::bigint AND ts < $2::bigint
             GROUP BY item_id) parts",
        raw = family.raw()
    ))
}
