//! Thresholds in SQLite: the statements of [`crate::alerting`], rules, events and the outbox.
//!
//! ```text
//!   notifier ── outbox(receiver) ──POST──▶ delivered(receiver, seq) ── drops what all have had
//! ```

use super::{check_epoch, unix_now, FamilyTables, SqliteRepository};
use crate::alerting::{parse_rule, readable_rules, transition_name, AlertStore, PairKey};
use crate::{Epoch, Event, EventFilter, EventState, OutboxEntry, RepoError, Result};
use pollux_model::Resolution;
use pollux_thresholds::baseline::HourStats;
use pollux_thresholds::{OpenEvent, Rule, RuleSpec, Severity, State};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use std::collections::BTreeMap;

/// The alert statements of one load transaction, for a DTO of `family`.
pub(crate) struct SqliteAlerts<'a, 't> {
    pub tx: &'a Transaction<'t>,
    pub family: &'a FamilyTables,
}

impl AlertStore for SqliteAlerts<'_, '_> {
    fn rules_version(&mut self) -> Result<i64> {
        rules_version(self.tx)
    }
    fn read_rules(&mut self) -> Result<Vec<Rule>> {
        read_rules(self.tx)
    }
    fn read_states(&mut self) -> Result<Vec<(PairKey, State)>> {
        let mut stmt = self
            .tx
            .prepare("SELECT rule_id, item_id, last_cycle, history, event_id, peak, clear_run FROM rule_state")?;
        let rows = stmt.query_map([], |r| {
            let open = match r.get::<_, Option<i64>>(4)? {
                Some(id) => Some(OpenEvent { id, peak: r.get(5)?, clear_run: r.get(6)? }),
                None => None,
            };
            Ok(((r.get(0)?, r.get(1)?), State { last_cycle: r.get(2)?, history: r.get::<_, i64>(3)? as u64, open }))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
    fn hour_stats(&mut self, metric: &str, item_id: i64, hours: &[i64]) -> Result<Vec<HourStats>> {
        let sql = format!(
            "SELECT \"{metric}_count\", \"{metric}_sum\", \"{metric}_sq\" FROM {} WHERE period = ?1 AND item_id = ?2",
            self.family.rollup(Resolution::Hour)
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let mut found = Vec::new();
        for start in hours {
            let stats = stmt
                .query_row(params![start, item_id], |r| {
                    Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<f64>>(1)?, r.get::<_, Option<f64>>(2)?))
                })
                .optional()?;
            // Periods rolled up before sums of squares were kept have none: they do not count.
            if let Some((Some(count), Some(sum), Some(sum_squares))) = stats {
                found.push(HourStats { count: count as u64, sum, sum_squares });
            }
        }
        Ok(found)
    }
    fn eval_watermark(&mut self, family: &str, collector: &str, interval: u32) -> Result<Option<i64>> {
        Ok(self
            .tx
            .prepare_cached("SELECT cycle FROM eval_watermark WHERE family = ?1 AND collector = ?2 AND interval = ?3")?
            .query_row(params![family, collector, interval], |r| r.get(0))
            .optional()?)
    }
    fn set_eval_watermark(&mut self, family: &str, collector: &str, interval: u32, cycle: i64) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO eval_watermark (family, collector, interval, cycle) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET cycle = excluded.cycle",
            )?
            .execute(params![family, collector, interval, cycle])?;
        Ok(())
    }
    fn open_event(
        &mut self,
        rule: &Rule,
        device: &str,
        item: &str,
        at: i64,
        cycle: i64,
        value: f64,
        epoch: Epoch,
    ) -> Result<i64> {
        let spec = &rule.spec;
        Ok(self
            .tx
            .prepare_cached(
                "INSERT INTO events (rule_id, rule_name, severity, family, metric, device, item, state, opened_at,
                    opened_cycle, value, op, threshold, peak, epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8, ?9, ?10, ?11, ?12, ?10, ?13) RETURNING id",
            )?
            .query_row(
                params![
                    rule.id,
                    spec.display_name(),
                    spec.severity.name(),
                    spec.family,
                    spec.metric,
                    device,
                    item,
                    at,
                    cycle,
                    value,
                    spec.op.symbol(),
                    spec.value,
                    epoch as i64
                ],
                |r| r.get(0),
            )?)
    }
    fn set_peak(&mut self, event: i64, peak: f64) -> Result<()> {
        self.tx.prepare_cached("UPDATE events SET peak = ?2 WHERE id = ?1")?.execute(params![event, peak])?;
        Ok(())
    }
    fn clear_event(&mut self, event: i64, at: i64, value: f64, peak: f64) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE events SET state = 'cleared', cleared_at = ?2, clear_value = ?3, peak = ?4,
                 cleared_by = 'value' WHERE id = ?1",
            )?
            .execute(params![event, at, value, peak])?;
        Ok(())
    }
    fn enqueue(&mut self, event: i64, transition: EventState) -> Result<()> {
        enqueue(self.tx, event, transition)
    }
    fn write_state(&mut self, key: PairKey, state: Option<&State>) -> Result<()> {
        write_state(self.tx, key, state)
    }
}

fn enqueue(tx: &Transaction<'_>, event: i64, transition: EventState) -> Result<()> {
    let name = transition_name(transition);
    tx.prepare_cached("INSERT INTO outbox (event_id, transition, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![event, name, unix_now()])?;
    Ok(())
}

fn write_state(tx: &Transaction<'_>, (rule, item): PairKey, state: Option<&State>) -> Result<()> {
    match state {
        Some(s) => {
            tx.prepare_cached(
                "INSERT INTO rule_state (rule_id, item_id, last_cycle, history, event_id, peak, clear_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT DO UPDATE SET last_cycle = excluded.last_cycle, history = excluded.history,
                    event_id = excluded.event_id, peak = excluded.peak, clear_run = excluded.clear_run",
            )?
            .execute(params![
                rule,
                item,
                s.last_cycle,
                s.history as i64,
                s.open.map(|o| o.id),
                s.open.map(|o| o.peak),
                s.open.map_or(0, |o| o.clear_run)
            ])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM rule_state WHERE rule_id = ?1 AND item_id = ?2")?.execute([rule, item])?;
        }
    }
    Ok(())
}

/// Drops the oldest notifications past `max`, counting them: a receiver down for days must not
/// fill the disk.
pub(crate) fn bound_outbox(tx: &Transaction<'_>, max: u64) -> Result<()> {
    // Entries leave from the oldest end only, so the sequence numbers held are contiguous.
    let (low, high): (Option<i64>, Option<i64>) =
        tx.query_row("SELECT min(seq), max(seq) FROM outbox", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(low), Some(high)) = (low, high) else { return Ok(()) };
    let keep_from = high - max as i64 + 1;
    if low < keep_from {
        let dropped = tx.execute("DELETE FROM outbox WHERE seq < ?1", [keep_from])?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('outbox_dropped', ?1)
             ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            [dropped as i64],
        )?;
        tracing::error!(dropped, max, "the notification outbox is full: the oldest notifications were dropped");
    }
    Ok(())
}

fn rules_version(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT coalesce((SELECT value FROM meta WHERE key = 'rules_version'), 0)", [], |r| r.get(0))?)
}

fn bump_rules_version(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('rules_version', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
        [],
    )?;
    Ok(())
}

fn rule_from_row(r: &Row<'_>) -> rusqlite::Result<(i64, String)> {
    Ok((r.get(0)?, r.get(1)?))
}

fn read_rules(c: &Connection) -> Result<Vec<Rule>> {
    let mut stmt = c.prepare("SELECT id, spec FROM rules ORDER BY id")?;
    let rows = stmt.query_map([], rule_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(readable_rules(rows))
}

const EVENT_COLUMNS: &str = "id, rule_id, rule_name, severity, family, metric, device, item, state, opened_at,
    opened_cycle, value, op, threshold, peak, cleared_at, clear_value, cleared_by, acked_by, acked_at";

fn event_from_row(r: &Row<'_>, first: usize) -> rusqlite::Result<Event> {
    let text = |i: usize| r.get::<_, String>(first + i);
    let severity = Severity::parse(&text(3)?).unwrap_or(Severity::Warning);
    Ok(Event {
        id: r.get(first)?,
        rule: r.get(first + 1)?,
        rule_name: text(2)?,
        severity,
        family: text(4)?,
        metric: text(5)?,
        device: text(6)?,
        item: text(7)?,
        state: if text(8)? == "open" { EventState::Open } else { EventState::Cleared },
        opened_at: r.get(first + 9)?,
        opened_cycle: r.get(first + 10)?,
        value: r.get(first + 11)?,
        op: text(12)?,
        threshold: r.get(first + 13)?,
        peak: r.get(first + 14)?,
        cleared_at: r.get(first + 15)?,
        clear_value: r.get(first + 16)?,
        cleared_by: r.get(first + 17)?,
        acked_by: r.get(first + 18)?,
        acked_at: r.get(first + 19)?,
    })
}

pub(crate) fn open_by_severity(c: &Connection) -> Result<BTreeMap<String, u64>> {
    let mut stmt = c.prepare_cached("SELECT severity, count(*) FROM events WHERE state = 'open' GROUP BY severity")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl SqliteRepository {
    pub(crate) fn list_rules(&self) -> Result<Vec<Rule>> {
        self.read(read_rules)
    }

    pub(crate) fn get_rule(&self, id: i64) -> Result<Option<Rule>> {
        self.read(|c| {
            let row = c.query_row("SELECT id, spec FROM rules WHERE id = ?1", [id], rule_from_row).optional()?;
            row.map(parse_rule).transpose()
        })
    }

    pub(crate) fn insert_rule(&self, epoch: Epoch, spec: &RuleSpec) -> Result<Rule> {
        let text = serde_json::to_string(spec).map_err(|e| RepoError::BadQuery(e.to_string()))?;
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let now = unix_now();
        let id: i64 = tx.query_row(
            "INSERT INTO rules (family, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3) RETURNING id",
            params![spec.family, text, now],
            |r| r.get(0),
        )?;
        bump_rules_version(&tx)?;
        tx.commit()?;
        writer.alerting.forget_rules();
        Ok(Rule { id, spec: spec.clone() })
    }

    /// Replaces (`Some(spec)`) or deletes (`None`) a rule; its open events clear and its pairs'
    /// states go. False when there is no such rule.
    pub(crate) fn change_rule(&self, epoch: Epoch, id: i64, spec: Option<&RuleSpec>) -> Result<bool> {
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let now = unix_now();
        let found = match spec {
            Some(spec) => {
                let text = serde_json::to_string(spec).map_err(|e| RepoError::BadQuery(e.to_string()))?;
                tx.execute(
                    "UPDATE rules SET family = ?2, spec = ?3, updated_at = ?4 WHERE id = ?1",
                    params![id, spec.family, text, now],
                )?
            }
            None => tx.execute("DELETE FROM rules WHERE id = ?1", [id])?,
        };
        if found == 0 {
            return Ok(false);
        }
        let reason = if spec.is_some() { "rule changed" } else { "rule deleted" };
        let open: Vec<i64> = {
            let mut stmt = tx.prepare("SELECT id FROM events WHERE rule_id = ?1 AND state = 'open'")?;
            let rows = stmt.query_map([id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for event in &open {
            tx.execute(
                "UPDATE events SET state = 'cleared', cleared_at = ?2, cleared_by = ?3 WHERE id = ?1",
                params![event, now, reason],
            )?;
            enqueue(&tx, *event, EventState::Cleared)?;
        }
        if !open.is_empty() {
            bound_outbox(&tx, self.options.outbox_max)?;
        }
        tx.execute("DELETE FROM rule_state WHERE rule_id = ?1", [id])?;
        bump_rules_version(&tx)?;
        tx.commit()?;
        writer.alerting.forget_rule(id);
        Ok(true)
    }

    pub(crate) fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        self.read(|c| {
            let state = filter.state.map(|s| match s {
                EventState::Open => "open",
                EventState::Cleared => "cleared",
            });
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE (?1 IS NULL OR opened_at < ?1) AND (?2 IS NULL OR cleared_at IS NULL OR cleared_at >= ?2)
                   AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR device = ?4)
                   AND (?5 IS NULL OR severity = ?5) AND (?6 IS NULL OR rule_id = ?6)
                 ORDER BY id DESC LIMIT ?7 OFFSET ?8"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let args = params![
                filter.to,
                filter.from,
                state,
                filter.device,
                filter.severity.map(Severity::name),
                filter.rule,
                filter.limit as i64,
                filter.offset as i64
            ];
            let rows = stmt.query_map(args, |r| event_from_row(r, 0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub(crate) fn get_event(&self, id: i64) -> Result<Option<Event>> {
        self.read(|c| {
            Ok(c.query_row(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"), [id], |r| {
                event_from_row(r, 0)
            })
            .optional()?)
        })
    }

    pub(crate) fn acknowledge(&self, epoch: Epoch, id: i64, by: &str) -> Result<Option<Event>> {
        {
            let mut writer = self.writer();
            let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            check_epoch(&tx, epoch)?;
            tx.execute(
                "UPDATE events SET acked_by = ?2, acked_at = ?3 WHERE id = ?1 AND acked_by IS NULL",
                params![id, by, unix_now()],
            )?;
            tx.commit()?;
        }
        self.get_event(id)
    }

    pub(crate) fn pending_for(&self, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>> {
        self.read(|c| {
            let columns: String = EVENT_COLUMNS.split(',').map(|col| format!(", e.{}", col.trim())).collect();
            let sql = format!(
                "SELECT o.seq, o.transition, o.created_at{columns} FROM outbox o JOIN events e ON e.id = o.event_id
                 WHERE o.seq > coalesce((SELECT seq FROM notify_cursors WHERE receiver = ?1), 0)
                 ORDER BY o.seq LIMIT ?2"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![receiver, limit as i64], |r| {
                Ok(OutboxEntry {
                    seq: r.get(0)?,
                    transition: if r.get::<_, String>(1)? == "open" { EventState::Open } else { EventState::Cleared },
                    created_at: r.get(2)?,
                    event: event_from_row(r, 3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub(crate) fn mark_delivered(
        &self,
        epoch: Epoch,
        receiver: Option<(&str, i64)>,
        receivers: &[String],
    ) -> Result<()> {
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        if let Some((name, seq)) = receiver {
            tx.execute(
                "INSERT INTO notify_cursors (receiver, seq) VALUES (?1, ?2)
                 ON CONFLICT DO UPDATE SET seq = max(seq, excluded.seq)",
                params![name, seq],
            )?;
        }
        // Kept until every receiver has had it: this node's (one without a cursor yet has had
        // nothing) and every one that ever had something, which the other aggregator may
        // deliver to. A receiver removed for good holds entries back until outbox_max drops them.
        let mut all_had = i64::MAX;
        for r in receivers {
            let seq: Option<i64> =
                tx.query_row("SELECT seq FROM notify_cursors WHERE receiver = ?1", [r], |row| row.get(0)).optional()?;
            all_had = all_had.min(seq.unwrap_or(0));
        }
        let known: Option<i64> = tx.query_row("SELECT min(seq) FROM notify_cursors", [], |row| row.get(0))?;
        all_had = all_had.min(known.unwrap_or(i64::MAX));
        tx.execute("DELETE FROM outbox WHERE seq <= ?1", [all_had])?;
        tx.commit()?;
        Ok(())
    }
}
