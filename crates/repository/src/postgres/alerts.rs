//! Thresholds in PostgreSQL: the statements of [`crate::alerting`], rules, events and the
//! outbox (the same rules as the SQLite backend, in PostgreSQL's dialect).

use super::{FamilyTables, PostgresRepository};
use crate::alerting::{parse_rule, readable_rules, transition_name, AlertStore, PairKey};
use crate::{Epoch, Event, EventFilter, EventState, OutboxEntry, RepoError, Result};
use pollux_model::Resolution;
use pollux_thresholds::baseline::HourStats;
use pollux_thresholds::{OpenEvent, Rule, RuleSpec, Severity, State};
use postgres::{Client, GenericClient, Row, Transaction};
use std::collections::BTreeMap;

/// The alert statements of one load transaction, for a DTO of `family`.
pub(crate) struct PgAlerts<'a, 't> {
    pub tx: &'a mut Transaction<'t>,
    pub family: &'a FamilyTables,
}

impl AlertStore for PgAlerts<'_, '_> {
    fn rules_version(&mut self) -> Result<i64> {
        Ok(self.tx.query_one("SELECT value FROM meta WHERE key = 'rules_version'", &[])?.get(0))
    }
    fn read_rules(&mut self) -> Result<Vec<Rule>> {
        read_rules(self.tx)
    }
    fn read_states(&mut self) -> Result<Vec<(PairKey, State)>> {
        let rows = self
            .tx
            .query("SELECT rule_id, item_id, last_cycle, history, event_id, peak, clear_run FROM rule_state", &[])?;
        Ok(rows
            .iter()
            .map(|r| {
                let open = r.get::<_, Option<i64>>(4).map(|id| OpenEvent {
                    id,
                    peak: r.get::<_, Option<f64>>(5).unwrap_or(0.0),
                    clear_run: r.get::<_, i64>(6) as u32,
                });
                ((r.get(0), r.get(1)), State { last_cycle: r.get(2), history: r.get::<_, i64>(3) as u64, open })
            })
            .collect())
    }
    fn hour_stats(&mut self, metric: &str, item_id: i64, hours: &[i64]) -> Result<Vec<HourStats>> {
        let sql = format!(
            "SELECT \"{metric}_count\", \"{metric}_sum\", \"{metric}_sq\" FROM {}
             WHERE item_id = $1 AND period = ANY($2) ORDER BY period DESC",
            self.family.rollup(Resolution::Hour)
        );
        let rows = self.tx.query(&sql, &[&item_id, &hours])?;
        // Periods rolled up without sums of squares do not count.
        Ok(rows
            .iter()
            .filter_map(|r| {
                let (count, sum, sq) =
                    (r.get::<_, Option<i64>>(0)?, r.get::<_, Option<f64>>(1)?, r.get::<_, Option<f64>>(2)?);
                Some(HourStats { count: count as u64, sum, sum_squares: sq })
            })
            .collect())
    }
    fn eval_watermark(&mut self, family: &str, collector: &str, interval: u32) -> Result<Option<i64>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT cycle FROM eval_watermark WHERE family = $1 AND collector = $2 AND interval = $3",
                &[&family, &collector, &i64::from(interval)],
            )?
            .map(|r| r.get(0)))
    }
    fn set_eval_watermark(&mut self, family: &str, collector: &str, interval: u32, cycle: i64) -> Result<()> {
        self.tx.execute(
            "INSERT INTO eval_watermark (family, collector, interval, cycle) VALUES ($1, $2, $3, $4)
             ON CONFLICT (family, collector, interval) DO UPDATE SET cycle = excluded.cycle",
            &[&family, &collector, &i64::from(interval), &cycle],
        )?;
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
            .query_one(
                "INSERT INTO events (rule_id, rule_name, severity, family, metric, device, item, state, opened_at,
                    opened_cycle, value, op, threshold, peak, epoch)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, $10, $11, $12, $10, $13) RETURNING id",
                &[
                    &rule.id,
                    &spec.display_name(),
                    &spec.severity.name(),
                    &spec.family,
                    &spec.metric,
                    &device,
                    &item,
                    &at,
                    &cycle,
                    &value,
                    &spec.op.symbol(),
                    &spec.value,
                    &(epoch as i64),
                ],
            )?
            .get(0))
    }
    fn set_peak(&mut self, event: i64, peak: f64) -> Result<()> {
        self.tx.execute("UPDATE events SET peak = $2 WHERE id = $1", &[&event, &peak])?;
        Ok(())
    }
    fn clear_event(&mut self, event: i64, at: i64, value: f64, peak: f64) -> Result<()> {
        self.tx.execute(
            "UPDATE events SET state = 'cleared', cleared_at = $2, clear_value = $3, peak = $4, cleared_by = 'value'
             WHERE id = $1",
            &[&event, &at, &value, &peak],
        )?;
        Ok(())
    }
    fn enqueue(&mut self, event: i64, transition: EventState) -> Result<()> {
        enqueue(self.tx, event, transition)
    }
    fn write_state(&mut self, (rule, item): PairKey, state: Option<&State>) -> Result<()> {
        match state {
            Some(s) => self.tx.execute(
                "INSERT INTO rule_state (rule_id, item_id, last_cycle, history, event_id, peak, clear_run)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (rule_id, item_id) DO UPDATE SET last_cycle = excluded.last_cycle,
                    history = excluded.history, event_id = excluded.event_id, peak = excluded.peak,
                    clear_run = excluded.clear_run",
                &[
                    &rule,
                    &item,
                    &s.last_cycle,
                    &(s.history as i64),
                    &s.open.map(|o| o.id),
                    &s.open.map(|o| o.peak),
                    &s.open.map_or(0, |o| i64::from(o.clear_run)),
                ],
            )?,
            None => self.tx.execute("DELETE FROM rule_state WHERE rule_id = $1 AND item_id = $2", &[&rule, &item])?,
        };
        Ok(())
    }
}

fn enqueue(tx: &mut Transaction<'_>, event: i64, transition: EventState) -> Result<()> {
    tx.execute(
        "INSERT INTO outbox (event_id, transition, created_at) VALUES ($1, $2, $3)",
        &[&event, &transition_name(transition), &super::unix_now()],
    )?;
    Ok(())
}

/// Drops the oldest notifications past `max`, counting them. Sequence numbers may have gaps
/// (a rolled-back load used some), so the bound counts entries, not numbers.
pub(crate) fn bound_outbox(tx: &mut Transaction<'_>, max: u64) -> Result<()> {
    let Some(row) = tx.query_opt("SELECT seq FROM outbox ORDER BY seq DESC OFFSET $1 LIMIT 1", &[&(max as i64)])?
    else {
        return Ok(());
    };
    let newest_dropped: i64 = row.get(0);
    let dropped = tx.execute("DELETE FROM outbox WHERE seq <= $1", &[&newest_dropped])?;
    tx.execute("UPDATE meta SET value = value + $1 WHERE key = 'outbox_dropped'", &[&(dropped as i64)])?;
    tracing::error!(dropped, max, "the notification outbox is full: the oldest notifications were dropped");
    Ok(())
}

fn bump_rules_version(tx: &mut Transaction<'_>) -> Result<()> {
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'rules_version'", &[])?;
    Ok(())
}

pub(crate) fn read_rules(c: &mut impl GenericClient) -> Result<Vec<Rule>> {
    let rows = c.query("SELECT id, spec FROM rules ORDER BY id", &[])?;
    Ok(readable_rules(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

pub(crate) fn get_rule(c: &mut Client, id: i64) -> Result<Option<Rule>> {
    let row = c.query_opt("SELECT id, spec FROM rules WHERE id = $1", &[&id])?;
    row.map(|r| parse_rule((r.get(0), r.get(1)))).transpose()
}

const EVENT_COLUMNS: &str = "id, rule_id, rule_name, severity, family, metric, device, item, state, opened_at,
    opened_cycle, value, op, threshold, peak, cleared_at, clear_value, cleared_by, acked_by, acked_at";

fn event_from_row(r: &Row, first: usize) -> Event {
    let text = |i: usize| r.get::<_, String>(first + i);
    Event {
        id: r.get(first),
        rule: r.get(first + 1),
        rule_name: text(2),
        severity: Severity::parse(&text(3)).unwrap_or(Severity::Warning),
        family: text(4),
        metric: text(5),
        device: text(6),
        item: text(7),
        state: if text(8) == "open" { EventState::Open } else { EventState::Cleared },
        opened_at: r.get(first + 9),
        opened_cycle: r.get(first + 10),
        value: r.get(first + 11),
        op: text(12),
        threshold: r.get(first + 13),
        peak: r.get(first + 14),
        cleared_at: r.get(first + 15),
        clear_value: r.get(first + 16),
        cleared_by: r.get(first + 17),
        acked_by: r.get(first + 18),
        acked_at: r.get(first + 19),
    }
}

pub(crate) fn open_by_severity(c: &mut Client) -> Result<BTreeMap<String, u64>> {
    let rows = c.query("SELECT severity, count(*) FROM events WHERE state = 'open' GROUP BY severity", &[])?;
    Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as u64)).collect())
}

pub(crate) fn list_events(c: &mut Client, filter: &EventFilter) -> Result<Vec<Event>> {
    let state = filter.state.map(|s| match s {
        EventState::Open => "open",
        EventState::Cleared => "cleared",
    });
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE ($1::bigint IS NULL OR opened_at < $1) AND ($2::bigint IS NULL OR cleared_at IS NULL OR cleared_at >= $2)
           AND ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR device = $4)
           AND ($5::text IS NULL OR severity = $5) AND ($6::bigint IS NULL OR rule_id = $6)
         ORDER BY id DESC LIMIT $7 OFFSET $8"
    );
    let rows = c.query(
        &sql,
        &[
            &filter.to,
            &filter.from,
            &state,
            &filter.device,
            &filter.severity.map(Severity::name),
            &filter.rule,
            &(filter.limit as i64),
            &(filter.offset as i64),
        ],
    )?;
    Ok(rows.iter().map(|r| event_from_row(r, 0)).collect())
}

pub(crate) fn get_event(c: &mut Client, id: i64) -> Result<Option<Event>> {
    Ok(c.query_opt(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"), &[&id])?
        .map(|r| event_from_row(&r, 0)))
}

pub(crate) fn pending_for(c: &mut Client, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>> {
    let columns: String = EVENT_COLUMNS.split(',').map(|col| format!(", e.{}", col.trim())).collect();
    let sql = format!(
        "SELECT o.seq, o.transition, o.created_at{columns} FROM outbox o JOIN events e ON e.id = o.event_id
         WHERE o.seq > coalesce((SELECT seq FROM notify_cursors WHERE receiver = $1), 0)
         ORDER BY o.seq LIMIT $2"
    );
    let rows = c.query(&sql, &[&receiver, &(limit as i64)])?;
    Ok(rows
        .iter()
        .map(|r| OutboxEntry {
            seq: r.get(0),
            transition: if r.get::<_, String>(1) == "open" { EventState::Open } else { EventState::Cleared },
            created_at: r.get(2),
            event: event_from_row(r, 3),
        })
        .collect())
}

/// Records a receiver's place and drops what every receiver has had (see the trait).
pub(crate) fn mark_delivered(
    tx: &mut Transaction<'_>,
    receiver: Option<(&str, i64)>,
    receivers: &[String],
) -> Result<()> {
    if let Some((name, seq)) = receiver {
        tx.execute(
            "INSERT INTO notify_cursors (receiver, seq) VALUES ($1, $2)
             ON CONFLICT (receiver) DO UPDATE SET seq = greatest(notify_cursors.seq, excluded.seq)",
            &[&name, &seq],
        )?;
    }
    let mut all_had = i64::MAX;
    for r in receivers {
        let seq: Option<i64> =
            tx.query_opt("SELECT seq FROM notify_cursors WHERE receiver = $1", &[r])?.map(|row| row.get(0));
        all_had = all_had.min(seq.unwrap_or(0));
    }
    let known: Option<i64> = tx.query_one("SELECT min(seq) FROM notify_cursors", &[])?.get(0);
    all_had = all_had.min(known.unwrap_or(i64::MAX));
    tx.execute("DELETE FROM outbox WHERE seq <= $1", &[&all_had])?;
    Ok(())
}

impl PostgresRepository {
    pub(crate) fn insert_rule(&self, epoch: Epoch, spec: &RuleSpec) -> Result<Rule> {
        let text = serde_json::to_string(spec).map_err(|e| RepoError::BadQuery(e.to_string()))?;
        let id = self.write_then(
            epoch,
            |tx, _| {
                let now = super::unix_now();
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO rules (family, spec, created_at, updated_at) VALUES ($1, $2, $3, $3) RETURNING id",
                        &[&spec.family, &text, &now],
                    )?
                    .get(0);
                bump_rules_version(tx)?;
                Ok(id)
            },
            |state, id| {
                state.alerting.forget_rules();
                id
            },
        )?;
        Ok(Rule { id, spec: spec.clone() })
    }

    /// Replaces (`Some(spec)`) or deletes (`None`) a rule; its open events clear and its pairs'
    /// states go. False when there is no such rule.
    pub(crate) fn change_rule(&self, epoch: Epoch, id: i64, spec: Option<&RuleSpec>) -> Result<bool> {
        let outbox_max = self.options.outbox_max;
        self.write_then(
            epoch,
            |tx, _| {
                let now = super::unix_now();
                let found = match spec {
                    Some(spec) => {
                        let text = serde_json::to_string(spec).map_err(|e| RepoError::BadQuery(e.to_string()))?;
                        tx.execute(
                            "UPDATE rules SET family = $2, spec = $3, updated_at = $4 WHERE id = $1",
                            &[&id, &spec.family, &text, &now],
                        )?
                    }
                    None => tx.execute("DELETE FROM rules WHERE id = $1", &[&id])?,
                };
                if found == 0 {
                    return Ok(false);
                }
                let reason = if spec.is_some() { "rule changed" } else { "rule deleted" };
                let open: Vec<i64> = tx
                    .query("SELECT id FROM events WHERE rule_id = $1 AND state = 'open' ORDER BY id", &[&id])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for event in &open {
                    tx.execute(
                        "UPDATE events SET state = 'cleared', cleared_at = $2, cleared_by = $3 WHERE id = $1",
                        &[event, &now, &reason],
                    )?;
                    enqueue(tx, *event, EventState::Cleared)?;
                }
                if !open.is_empty() {
                    bound_outbox(tx, outbox_max)?;
                }
                tx.execute("DELETE FROM rule_state WHERE rule_id = $1", &[&id])?;
                bump_rules_version(tx)?;
                Ok(true)
            },
            |state, found| {
                if found {
                    state.alerting.forget_rule(id);
                }
                found
            },
        )
    }
}
