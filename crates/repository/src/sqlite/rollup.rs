//! Background work on loaded data: rollups, compaction of the recent tables, retention.
//!
//! Each unit of work (one rollup period, one cycle to compact, one family to expire) is its own
//! transaction with the epoch check, so loading interleaves with it and a takeover finds every
//! unit either done or still pending.

use super::{check_epoch, FamilyTables, SqliteRepository};
use crate::schedule::{Due, RollupWork};
use crate::{Epoch, Progress, Result, Retention};
use pollux_model::Resolution;
use rusqlite::{params, OptionalExtension, Transaction};
use std::time::Duration;

impl RollupWork for SqliteRepository {
    fn drop_pending_before(&self, epoch: Epoch, resolution: Resolution, cutoff: i64) -> Result<usize> {
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let dropped = tx.execute(
            "DELETE FROM rollup_pending WHERE resolution = ?1 AND period < ?2",
            params![resolution.name(), cutoff],
        )?;
        tx.commit()?;
        Ok(dropped)
    }

    fn due(&self, resolution: Resolution, due: &Due, limit: usize) -> Result<Vec<(String, i64)>> {
        let (settled, overdue) = due.settling.unwrap_or((i64::MAX, i64::MAX));
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT family, period FROM rollup_pending
                 WHERE resolution = ?1 AND period <= ?2 AND (touched_at <= ?4 OR marked_at <= ?5) AND retry_at <= ?6
                 ORDER BY period, family LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![resolution.name(), due.before, limit as i64, settled, overdue, due.now], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
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
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let key = params![resolution.name(), family, period];
        let failures: Option<i64> = tx
            .query_row(
                "UPDATE rollup_pending SET failures = failures + 1
                 WHERE resolution = ?1 AND family = ?2 AND period = ?3 RETURNING failures",
                key,
                |r| r.get(0),
            )
            .optional()?;
        let Some(failures) = failures else { return Ok(None) };
        let retry_at = crate::schedule::retry_at(now, failures);
        tx.execute(
            "UPDATE rollup_pending SET retry_at = ?4 WHERE resolution = ?1 AND family = ?2 AND period = ?3",
            params![resolution.name(), family, period, retry_at],
        )?;
        tx.commit()?;
        Ok(Some((failures, retry_at)))
    }
}

impl SqliteRepository {
    /// Recomputes one period of one family from the next finer resolution, replacing what was
    /// there, and marks the enclosing coarser period pending.
    fn roll_one(&self, epoch: Epoch, family: &str, resolution: Resolution, period: i64, now: i64) -> Result<()> {
        let family = self.family(family)?;
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let end = period + resolution.length().expect("rollups have periods");
        let table = family.rollup(resolution);
        tx.execute(&format!("DELETE FROM {table} WHERE period = ?1"), [period])?;
        let targets: String = family
            .columns
            .iter()
            .map(|c| format!(", \"{c}_min\", \"{c}_max\", \"{c}_sum\", \"{c}_count\", \"{c}_sq\""))
            .collect();
        let (sql, by_family) = match resolution.child().expect("rollups have a finer resolution") {
            Resolution::Raw => raw_rollup_sql(&tx, &family, &table, &targets, period)?,
            finer => {
                // A finer sum of +inf and -inf is NaN, which SQLite stores as NULL and sum()
                // would skip: the coarser sum is NaN (NULL) too, as PostgreSQL's is.
                let stats: String = family
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            ", min(\"{c}_min\"), max(\"{c}_max\"),
                             CASE WHEN count(CASE WHEN \"{c}_count\" > 0 AND \"{c}_sum\" IS NULL THEN 1 END) = 0
                                  THEN sum(\"{c}_sum\") END,
                             sum(\"{c}_count\"), sum(\"{c}_sq\")"
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO {table} (period, item_id{targets})
                     SELECT ?1, item_id{stats} FROM {finer_table}
                     WHERE period >= ?1 AND period < ?2 GROUP BY item_id",
                    finer_table = family.rollup(finer)
                );
                (sql, false)
            }
        };
        if by_family {
            tx.execute(&sql, params![period, end, family.name])?;
        } else {
            tx.execute(&sql, params![period, end])?;
        }
        tx.execute(
            "DELETE FROM rollup_pending WHERE resolution = ?1 AND family = ?2 AND period = ?3",
            params![resolution.name(), family.name, period],
        )?;
        if let Some(parent) = resolution.parent() {
            tx.execute(
                "INSERT INTO rollup_pending (resolution, family, period, marked_at, touched_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT DO UPDATE SET touched_at = excluded.touched_at",
                params![parent.name(), family.name, parent.period_start(period), now],
            )?;
        }
        tx.commit()?;
        if resolution == Resolution::Hour {
            // Baselines are read from hourly rollups: one was just recomputed.
            writer.alerting.forget_baselines();
        }
        Ok(())
    }

    pub(crate) fn compact_before(&self, epoch: Epoch, before: i64, budget: usize) -> Result<Progress> {
        let mut progress = Progress::default();
        loop {
            let oldest: Option<(String, i64)> = self.read(|c| {
                Ok(c.query_row(
                    "SELECT family, cycle FROM recent_cycles WHERE cycle < ?1 ORDER BY cycle LIMIT 1",
                    [before],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
            })?;
            let Some((family, cycle)) = oldest else {
                return Ok(progress);
            };
            if progress.done == budget {
                progress.more = true;
                return Ok(progress);
            }
            // Move the oldest cycle's whole hour at once: in item order, an item's dozen rows
            // then land together in one leaf page instead of a dozen scattered writes.
            let until = (Resolution::Hour.period_start(cycle) + 3600).min(before);
            let family = self.family(&family)?;
            let mut writer = self.writer();
            let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            check_epoch(&tx, epoch)?;
            progress.done += move_cycles(&tx, &family, until)?;
            tx.commit()?;
        }
    }

    pub(crate) fn expire_old(&self, epoch: Epoch, now: i64, retention: &Retention) -> Result<Progress> {
        let cutoff = |d: Duration| now.saturating_sub(d.as_secs() as i64);
        let families: Vec<String> = self.read(|c| {
            let mut stmt = c.prepare("SELECT family FROM family_state")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        let mut progress = Progress::default();
        for name in families {
            let family = self.family(&name)?;
            let mut writer = self.writer();
            let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            check_epoch(&tx, epoch)?;
            let raw_cutoff = cutoff(retention.raw);
            let max_interval: i64 =
                tx.query_row("SELECT max_interval FROM family_state WHERE family = ?1", [&name], |r| r.get(0))?;
            progress.done += tx.execute(
                &format!(
                    "DELETE FROM {} WHERE item_id IN (SELECT id FROM items WHERE family = ?1) AND cycle < ?2 AND ts < ?2",
                    family.raw()
                ),
                params![name, raw_cutoff],
            )?;
            // A recent cycle whose every possible record is older than the cutoff.
            let stale_cycle = raw_cutoff - 2 * max_interval;
            progress.done += tx.execute(&format!("DELETE FROM {} WHERE cycle < ?1", family.recent()), [stale_cycle])?;
            tx.execute("DELETE FROM recent_cycles WHERE family = ?1 AND cycle < ?2", params![name, stale_cycle])?;
            for (resolution, keep) in [
                (Resolution::Hour, retention.hour),
                (Resolution::Day, retention.day),
                (Resolution::Week, retention.week),
            ] {
                progress.done += tx
                    .execute(&format!("DELETE FROM {} WHERE period < ?1", family.rollup(resolution)), [cutoff(keep)])?;
            }
            tx.commit()?;
        }
        // The registry of loaded ids is kept as long as raw data: a resend older than that
        // would only reload data that has expired anyway.
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        progress.done += tx.execute("DELETE FROM loaded_dtos WHERE cycle < ?1", [cutoff(retention.raw)])?;
        tx.commit()?;
        Ok(progress)
    }
}

/// The statement computing an hour from raw data, in both raw tables. The history table is read
/// only when part of the hour's cycles were compacted into it (late data, or a rollup that
/// waited longer than the recent window), since reading it means one seek per item.
/// Returns the statement and whether it takes the family name as `?3`.
fn raw_rollup_sql(
    tx: &Transaction<'_>,
    family: &FamilyTables,
    table: &str,
    targets: &str,
    period: i64,
) -> Result<(String, bool)> {
    let (watermark, max_interval): (i64, i64) =
        tx.query_row("SELECT watermark, max_interval FROM family_state WHERE family = ?1", [&family.name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    // A record with ts in [period, end) belongs to a cycle in (period - 2 * interval, end).
    let first_cycle = period - 2 * max_interval;
    let cols: String = family.columns.iter().map(|c| format!(", \"{c}\"")).collect();
    // SQLite's float arithmetic never raises: a square beyond the range is +inf, and so is a
    // sum whose total is (its sum() is compensated). PostgreSQL's raises instead, and computes
    // the same in `postgres::floats`. They differ only where a partial sum goes beyond the range
    // and the total does not (two values above 9e307 and one below -9e307): SQLite's sum then
    // stays at the infinity it reached, or not, depending on the order of the rows;
    // PostgreSQL's is the total.
    let stats: String = family
        .columns
        .iter()
        .map(|c| format!(", min(\"{c}\"), max(\"{c}\"), sum(\"{c}\"), count(\"{c}\"), sum(\"{c}\" * \"{c}\")"))
        .collect();
    let mut source = format!(
        "SELECT item_id{cols} FROM {recent} WHERE cycle > {first_cycle} AND cycle < ?2 AND ts >= ?1 AND ts < ?2",
        recent = family.recent()
    );
    let read_history = watermark > first_cycle;
    if read_history {
        source.push_str(&format!(
            " UNION ALL SELECT item_id{cols} FROM {raw}
              WHERE item_id IN (SELECT id FROM items WHERE family = ?3)
                AND cycle > {first_cycle} AND cycle < ?2 AND ts >= ?1 AND ts < ?2",
            raw = family.raw()
        ));
    }
    let sql = format!(
        "INSERT INTO {table} (period, item_id{targets})
         SELECT ?1, item_id{stats} FROM ({source}) GROUP BY item_id"
    );
    Ok((sql, read_history))
}

/// Moves every recent cycle that started before `until` into the history table and raises the
/// watermark past them; returns how many cycles moved.
fn move_cycles(tx: &Transaction<'_>, family: &FamilyTables, until: i64) -> Result<usize> {
    let cols: String = family.columns.iter().map(|c| format!(", \"{c}\"")).collect();
    let (moved, last): (i64, Option<i64>) = tx.query_row(
        "SELECT count(*), max(cycle) FROM recent_cycles WHERE family = ?1 AND cycle < ?2",
        params![family.name, until],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(last) = last else { return Ok(0) };
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO {raw} (item_id, cycle, ts{cols})
             SELECT item_id, cycle, ts{cols} FROM {recent} WHERE cycle < ?1 ORDER BY item_id, cycle",
            raw = family.raw(),
            recent = family.recent()
        ),
        [until],
    )?;
    tx.execute(&format!("DELETE FROM {} WHERE cycle < ?1", family.recent()), [until])?;
    tx.execute("DELETE FROM recent_cycles WHERE family = ?1 AND cycle < ?2", params![family.name, until])?;
    tx.execute(
        "UPDATE family_state SET watermark = max(watermark, ?2) WHERE family = ?1",
        params![family.name, last + 1],
    )?;
    Ok(moved as usize)
}
