//! Thresholds in the repository: rules, the state of (rule, item) pairs, events and the outbox.
//!
//! ```text
//!   load transaction ─┬─ data, registry, pending rollups
//!                     └─ for each record × matching rule: evaluate() ─▶ rule_state
//!                                                          open/clear ─▶ events + outbox
//!   notifier ── outbox(receiver) ──POST──▶ delivered(receiver, seq) ── drops what all have had
//! ```
//!
//! Only pairs that are doing something (a violation in their window, an open event) have a
//! `rule_state` row; the writer keeps those rows in memory, so a poll that violates nothing
//! costs a hash lookup and a comparison, and no SQL.

use super::{check_epoch, unix_now, FamilyTables, SqliteRepository};
use crate::{Epoch, Event, EventFilter, EventState, LoadReport, OutboxEntry, RepoError, Result};
use pollux_model::{Dto, Resolution};
use pollux_thresholds::baseline::{self, HourStats};
use pollux_thresholds::{evaluate, Baseline, OpenEvent, Rule, RuleSpec, Sample, Severity, State, Step, Transition};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Baselines remembered before the cache is emptied (they change once an hour per item).
const MAX_CACHED_BASELINES: usize = 1 << 20;
/// Item ids up to this have their matching rules remembered (ids are dense from 1).
const MAX_CACHED_ITEM_ID: i64 = 1 << 27;

type PairKey = (i64, i64);

/// A hasher for integer keys: the evaluation looks a pair up for every record and rule, and
/// SipHash's protection against chosen keys buys nothing for ids the repository hands out.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing over the running value (the multiply-rotate of rustc's FxHasher).
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The writer's view of the rules and pair states, rebuilt after a claim (another node may have
/// written) and when the rules change.
#[derive(Default)]
pub(crate) struct Alerting {
    /// The `rules_version` the rules were read at.
    version: Option<i64>,
    rules: HashMap<String, Arc<FamilyRules>>,
    /// The rules (indexes into the family's list) that apply to an item, by item id: records
    /// come in item order, so this is read almost sequentially.
    matches: Vec<Option<Box<[u32]>>>,
    /// Item ids whose matches the transaction in progress cached: forgotten unless it commits,
    /// since SQLite hands a rolled-back id out again (to another device, maybe another family).
    matched_uncommitted: Vec<usize>,
    states: Option<IdMap<PairKey, State>>,
    baselines: HashMap<(i64, u32, i64), Option<Baseline>>,
}

/// The rules of one family, indexed by the literal start of their device pattern (what comes
/// before its first `*`; empty for no device): the rules that may apply to a device are those
/// filed under one of its prefixes, a few lookups instead of a glob match per rule.
pub(crate) struct FamilyRules {
    list: Vec<Rule>,
    by_prefix: HashMap<String, Vec<u32>>,
}

impl FamilyRules {
    fn new(list: Vec<Rule>) -> FamilyRules {
        let mut by_prefix: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, rule) in list.iter().enumerate() {
            let pattern = rule.spec.device.as_deref().unwrap_or("");
            let prefix = pattern.split('*').next().unwrap_or("");
            by_prefix.entry(prefix.to_owned()).or_default().push(i as u32);
        }
        FamilyRules { list, by_prefix }
    }

    /// The indexes, in rule order, of the rules that apply to an item.
    fn applying(&self, device: &str, item: &str, out: &mut Vec<u32>) {
        let prefixes = device.char_indices().map(|(i, _)| i).chain([device.len()]);
        for end in prefixes {
            if let Some(candidates) = self.by_prefix.get(&device[..end]) {
                out.extend(candidates.iter().filter(|&&r| self.list[r as usize].spec.applies_to(device, item)));
            }
        }
        out.sort_unstable();
    }
}

/// Pair states written by the transaction in progress: they join the cache if it commits.
pub(crate) type Overlay = IdMap<PairKey, Option<State>>;

impl Alerting {
    /// Brings the rules and states up to date within the load transaction.
    pub(crate) fn refresh(&mut self, tx: &Transaction<'_>) -> Result<()> {
        // What a transaction that did not commit cached goes.
        for slot in self.matched_uncommitted.drain(..) {
            if let Some(m) = self.matches.get_mut(slot) {
                *m = None;
            }
        }
        let version = rules_version(tx)?;
        if self.version != Some(version) {
            let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
            for rule in read_rules(tx)? {
                rules.entry(rule.spec.family.clone()).or_default().push(rule);
            }
            self.rules = rules.into_iter().map(|(family, list)| (family, Arc::new(FamilyRules::new(list)))).collect();
            self.matches.clear();
            self.version = Some(version);
        }
        if self.states.is_none() {
            let mut stmt =
                tx.prepare("SELECT rule_id, item_id, last_cycle, history, event_id, peak, clear_run FROM rule_state")?;
            let rows = stmt.query_map([], |r| {
                let open = match r.get::<_, Option<i64>>(4)? {
                    Some(id) => Some(OpenEvent { id, peak: r.get(5)?, clear_run: r.get(6)? }),
                    None => None,
                };
                Ok(((r.get(0)?, r.get(1)?), State { last_cycle: r.get(2)?, history: r.get::<_, i64>(3)? as u64, open }))
            })?;
            self.states = Some(rows.collect::<Result<_, _>>()?);
        }
        Ok(())
    }

    /// Merges what a committed transaction wrote.
    pub(crate) fn commit(&mut self, overlay: Overlay) {
        self.matched_uncommitted.clear();
        let Some(states) = &mut self.states else { return };
        for (key, state) in overlay {
            match state {
                Some(s) => states.insert(key, s),
                None => states.remove(&key),
            };
        }
    }

    pub(crate) fn forget_baselines(&mut self) {
        self.baselines.clear();
    }

    fn forget_rule(&mut self, rule: i64) {
        self.version = None;
        if let Some(states) = &mut self.states {
            states.retain(|(r, _), _| *r != rule);
        }
    }

    /// Puts the indexes of the rules that apply to an item in `out`.
    fn matching(&mut self, item_id: i64, rules: &FamilyRules, device: &str, item: &str, out: &mut Vec<u32>) {
        out.clear();
        let compute = |out: &mut Vec<u32>| rules.applying(device, item, out);
        if !(0..MAX_CACHED_ITEM_ID).contains(&item_id) {
            return compute(out);
        }
        let slot = item_id as usize;
        if self.matches.len() <= slot {
            self.matches.resize(slot + 1, None);
        }
        match &self.matches[slot] {
            Some(known) => out.extend_from_slice(known),
            None => {
                compute(out);
                self.matches[slot] = Some(out.clone().into_boxed_slice());
                self.matched_uncommitted.push(slot);
            }
        }
    }

    fn baseline(
        &mut self,
        tx: &Transaction<'_>,
        family: &FamilyTables,
        metric: &str,
        item_id: i64,
        ts: i64,
    ) -> Result<Option<Baseline>> {
        let column = family.columns.iter().position(|c| c == metric).expect("rules name the family's metrics") as u32;
        let hour = Resolution::Hour.period_start(ts);
        if let Some(known) = self.baselines.get(&(item_id, column, hour)) {
            return Ok(*known);
        }
        if self.baselines.len() >= MAX_CACHED_BASELINES {
            self.baselines.clear();
        }
        let sql = format!(
            "SELECT \"{metric}_count\", \"{metric}_sum\", \"{metric}_sq\" FROM {} WHERE period = ?1 AND item_id = ?2",
            family.rollup(Resolution::Hour)
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut hours = Vec::new();
        for start in baseline::hours_for(hour) {
            let stats = stmt
                .query_row(params![start, item_id], |r| {
                    Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<f64>>(1)?, r.get::<_, Option<f64>>(2)?))
                })
                .optional()?;
            // Periods rolled up before sums of squares were kept have none: they do not count.
            if let Some((Some(count), Some(sum), Some(sum_squares))) = stats {
                hours.push(HourStats { count: count as u64, sum, sum_squares });
            }
        }
        let found = baseline::baseline(&hours);
        self.baselines.insert((item_id, column, hour), found);
        Ok(found)
    }
}

/// Evaluates one loaded DTO's records against the rules of its family, inside the load
/// transaction. `rows` are the records' `(item_id, index)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_dto(
    tx: &Transaction<'_>,
    alerting: &mut Alerting,
    overlay: &mut Overlay,
    family: &FamilyTables,
    dto: &Dto,
    rows: &[(i64, usize)],
    epoch: Epoch,
    report: &mut LoadReport,
) -> Result<()> {
    let Some(rules) = alerting.rules.get(&family.name).cloned() else { return Ok(()) };
    let positions: Vec<Option<usize>> =
        rules.list.iter().map(|r| dto.metrics.iter().position(|m| *m == r.spec.metric)).collect();
    if positions.iter().all(Option::is_none) {
        return Ok(());
    }
    // Late data: a DTO older than what its collector already had evaluated for the family at
    // that poll interval (a collector polls each interval as a group of its own, at its pace).
    let watermark: Option<i64> = tx
        .prepare_cached("SELECT cycle FROM eval_watermark WHERE family = ?1 AND collector = ?2 AND interval = ?3")?
        .query_row(params![family.name, dto.collector, dto.interval], |r| r.get(0))
        .optional()?;
    if watermark.is_some_and(|w| dto.cycle < w) {
        report.late += 1;
        return Ok(());
    }
    if watermark != Some(dto.cycle) {
        tx.prepare_cached(
            "INSERT INTO eval_watermark (family, collector, interval, cycle) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO UPDATE SET cycle = excluded.cycle",
        )?
        .execute(params![family.name, dto.collector, dto.interval, dto.cycle])?;
    }
    let mut matched = Vec::new();
    for &(item_id, index) in rows {
        let record = &dto.records[index];
        alerting.matching(item_id, &rules, &record.device, &record.item, &mut matched);
        for &r in &matched {
            let Some(rule) = rules.list.get(r as usize) else { continue };
            let Some(value) = positions[r as usize].and_then(|p| record.values[p]) else { continue };
            let key = (rule.id, item_id);
            let old = match overlay.get(&key) {
                Some(s) => *s,
                None => alerting.states.as_ref().and_then(|s| s.get(&key)).copied(),
            };
            let baseline = match rule.spec.op.is_baseline() {
                true => alerting.baseline(tx, family, &rule.spec.metric, item_id, record.ts)?,
                false => None,
            };
            let sample = Sample { cycle: dto.cycle, ts: record.ts, value, baseline };
            let (mut state, transition) = match evaluate(&rule.spec, old.as_ref(), &sample) {
                Step::Late => continue,
                Step::Next { state: None, transition: None } if old.is_none() => continue,
                Step::Next { state, transition } => (state, transition),
            };
            match transition {
                Some(Transition::Open { at, cycle, value }) => {
                    let id = open_event(tx, rule, &record.device, &record.item, at, cycle, value, epoch)?;
                    if let Some(open) = state.as_mut().and_then(|s| s.open.as_mut()) {
                        open.id = id;
                    }
                    enqueue(tx, id, EventState::Open)?;
                    report.transitions += 1;
                }
                Some(Transition::Peak { event, peak }) => {
                    tx.prepare_cached("UPDATE events SET peak = ?2 WHERE id = ?1")?.execute(params![event, peak])?;
                }
                Some(Transition::Clear { event, at, value, peak }) => {
                    tx.prepare_cached(
                        "UPDATE events SET state = 'cleared', cleared_at = ?2, clear_value = ?3, peak = ?4,
                         cleared_by = 'value' WHERE id = ?1",
                    )?
                    .execute(params![event, at, value, peak])?;
                    enqueue(tx, event, EventState::Cleared)?;
                    report.transitions += 1;
                }
                None => {}
            }
            write_state(tx, key, state.as_ref())?;
            overlay.insert(key, state);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn open_event(
    tx: &Transaction<'_>,
    rule: &Rule,
    device: &str,
    item: &str,
    at: i64,
    cycle: i64,
    value: f64,
    epoch: Epoch,
) -> Result<i64> {
    let spec = &rule.spec;
    Ok(tx
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

fn enqueue(tx: &Transaction<'_>, event: i64, transition: EventState) -> Result<()> {
    let name = match transition {
        EventState::Open => "open",
        EventState::Cleared => "clear",
    };
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

fn parse_rule((id, spec): (i64, String)) -> Result<Rule> {
    let spec: RuleSpec =
        serde_json::from_str(&spec).map_err(|e| RepoError::Db(format!("rule {id} is stored unreadable: {e}")))?;
    Ok(Rule { id, spec })
}

/// Every rule this release can read. One it cannot (written by a newer release, with a field
/// this one does not know) is skipped and logged: it must not stop every load.
fn read_rules(c: &Connection) -> Result<Vec<Rule>> {
    let mut stmt = c.prepare("SELECT id, spec FROM rules ORDER BY id")?;
    let rows = stmt.query_map([], rule_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|row| match parse_rule(row) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::error!(error = %e, "threshold rule skipped");
                None
            }
        })
        .collect())
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
        writer.alerting.version = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefix index finds exactly the rules a glob match of every rule finds.
    #[test]
    fn the_prefix_index_finds_what_matching_every_rule_finds() {
        let patterns = [None, Some("*"), Some("core-*"), Some("core-rtr1"), Some("*-rtr*"), Some("c*1"), Some("edge*")];
        let items = [None, Some("ge-0/0/*"), Some("xe-1")];
        let mut list = Vec::new();
        for device in patterns {
            for item in items {
                let spec = serde_json::json!({"family": "Interface", "metric": "in_util", "op": ">", "value": 1,
                                              "device": device, "item": item});
                let mut spec: RuleSpec = serde_json::from_value(spec).unwrap();
                spec.device = device.map(str::to_owned);
                spec.item = item.map(str::to_owned);
                list.push(Rule { id: list.len() as i64 + 1, spec });
            }
        }
        let rules = FamilyRules::new(list.clone());
        for device in ["core-rtr1", "core-rtr12", "edge-rtr1", "c1", "", "żółw-rtr1"] {
            for item in ["ge-0/0/1", "xe-1", "lo0"] {
                let mut found = Vec::new();
                rules.applying(device, item, &mut found);
                let expected: Vec<u32> =
                    (0..list.len() as u32).filter(|&i| list[i as usize].spec.applies_to(device, item)).collect();
                assert_eq!(found, expected, "{device} {item}");
            }
        }
    }
}
