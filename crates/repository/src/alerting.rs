//! Threshold evaluation inside a load transaction, for every backend.
//!
//! ```text
//!   load transaction ─┬─ data, registry, pending rollups            (the backend)
//!                     └─ for each record × matching rule: evaluate() ─▶ rule_state
//!                                                          open/clear ─▶ events + outbox
//! ```
//!
//! Only pairs that are doing something (a violation in their window, an open event) have a
//! `rule_state` row; the writer keeps those rows in memory, so a poll that violates nothing
//! costs a hash lookup and a comparison, and no SQL. A backend supplies the statements through
//! [`AlertStore`], bound to its open load transaction; what to write is decided here.

use crate::{Epoch, EventState, LoadReport, RepoError, Result};
use pollux_model::{Dto, Resolution};
use pollux_thresholds::baseline::{self, HourStats};
use pollux_thresholds::{evaluate, Baseline, Rule, RuleSpec, Sample, State, Step, Transition};
use std::collections::HashMap;
use std::sync::Arc;

/// Baselines remembered before the cache is emptied (they change once an hour per item).
const MAX_CACHED_BASELINES: usize = 1 << 20;
/// Item ids up to this have their matching rules remembered (ids are dense from 1).
const MAX_CACHED_ITEM_ID: i64 = 1 << 27;

/// A (rule, item) pair.
pub(crate) type PairKey = (i64, i64);

/// The statements threshold evaluation needs, run inside the backend's load transaction.
pub(crate) trait AlertStore {
    /// A number that changes whenever a rule is created, changed or deleted.
    fn rules_version(&mut self) -> Result<i64>;
    /// Every rule this release can read, in id order.
    fn read_rules(&mut self) -> Result<Vec<Rule>>;
    fn read_states(&mut self) -> Result<Vec<(PairKey, State)>>;
    /// The hourly statistics of `metric` of the DTO's family for an item, for those of `hours`
    /// that were rolled up with sums of squares.
    fn hour_stats(&mut self, metric: &str, item_id: i64, hours: &[i64]) -> Result<Vec<HourStats>>;
    /// The newest cycle evaluated for a family, collector and poll interval.
    fn eval_watermark(&mut self, family: &str, collector: &str, interval: u32) -> Result<Option<i64>>;
    fn set_eval_watermark(&mut self, family: &str, collector: &str, interval: u32, cycle: i64) -> Result<()>;
    /// Inserts an open event; returns its id.
    #[allow(clippy::too_many_arguments)]
    fn open_event(
        &mut self,
        rule: &Rule,
        device: &str,
        item: &str,
        at: i64,
        cycle: i64,
        value: f64,
        epoch: Epoch,
    ) -> Result<i64>;
    fn set_peak(&mut self, event: i64, peak: f64) -> Result<()>;
    fn clear_event(&mut self, event: i64, at: i64, value: f64, peak: f64) -> Result<()>;
    /// Adds a notification of an event's transition to the outbox.
    fn enqueue(&mut self, event: i64, transition: EventState) -> Result<()>;
    /// Writes a pair's state, or deletes it (`None`).
    fn write_state(&mut self, key: PairKey, state: Option<&State>) -> Result<()>;
}

pub(crate) fn parse_rule((id, spec): (i64, String)) -> Result<Rule> {
    let spec: RuleSpec =
        serde_json::from_str(&spec).map_err(|e| RepoError::Db(format!("rule {id} is stored unreadable: {e}")))?;
    Ok(Rule { id, spec })
}

/// Every rule of `rows` (id and stored spec) this release can read. One it cannot (written by a
/// newer release, with a field this one does not know) is skipped and logged: it must not stop
/// every load.
pub(crate) fn readable_rules(rows: Vec<(i64, String)>) -> Vec<Rule> {
    rows.into_iter()
        .filter_map(|row| match parse_rule(row) {
            Ok(rule) => Some(rule),
            Err(e) => {
                tracing::error!(error = %e, "threshold rule skipped");
                None
            }
        })
        .collect()
}

/// The outbox's name for a transition.
pub(crate) fn transition_name(transition: EventState) -> &'static str {
    match transition {
        EventState::Open => "open",
        EventState::Cleared => "clear",
    }
}

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
    pub(crate) fn refresh(&mut self, store: &mut dyn AlertStore) -> Result<()> {
        // What a transaction that did not commit cached goes.
        for slot in self.matched_uncommitted.drain(..) {
            if let Some(m) = self.matches.get_mut(slot) {
                *m = None;
            }
        }
        let version = store.rules_version()?;
        if self.version != Some(version) {
            let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
            for rule in store.read_rules()? {
                rules.entry(rule.spec.family.clone()).or_default().push(rule);
            }
            self.rules = rules.into_iter().map(|(family, list)| (family, Arc::new(FamilyRules::new(list)))).collect();
            self.matches.clear();
            self.version = Some(version);
        }
        if self.states.is_none() {
            self.states = Some(store.read_states()?.into_iter().collect());
        }
        Ok(())
    }

    /// Forgets the rules read, so the next load reads them again.
    pub(crate) fn forget_rules(&mut self) {
        self.version = None;
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

    pub(crate) fn forget_rule(&mut self, rule: i64) {
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
        store: &mut dyn AlertStore,
        columns: &[String],
        metric: &str,
        item_id: i64,
        ts: i64,
    ) -> Result<Option<Baseline>> {
        let column = columns.iter().position(|c| c == metric).expect("rules name the family's metrics") as u32;
        let hour = Resolution::Hour.period_start(ts);
        if let Some(known) = self.baselines.get(&(item_id, column, hour)) {
            return Ok(*known);
        }
        if self.baselines.len() >= MAX_CACHED_BASELINES {
            self.baselines.clear();
        }
        let found = baseline::baseline(&store.hour_stats(metric, item_id, &baseline::hours_for(hour))?);
        self.baselines.insert((item_id, column, hour), found);
        Ok(found)
    }
}

/// Evaluates one loaded DTO's records against the rules of its family, inside the load
/// transaction. `rows` are the records' `(item_id, index)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_dto(
    store: &mut dyn AlertStore,
    alerting: &mut Alerting,
    overlay: &mut Overlay,
    columns: &[String],
    dto: &Dto,
    rows: &[(i64, usize)],
    epoch: Epoch,
    report: &mut LoadReport,
) -> Result<()> {
    let Some(rules) = alerting.rules.get(&dto.family).cloned() else { return Ok(()) };
    let positions: Vec<Option<usize>> =
        rules.list.iter().map(|r| dto.metrics.iter().position(|m| *m == r.spec.metric)).collect();
    if positions.iter().all(Option::is_none) {
        return Ok(());
    }
    // Late data: a DTO older than what its collector already had evaluated for the family at
    // that poll interval (a collector polls each interval as a group of its own, at its pace).
    let watermark = store.eval_watermark(&dto.family, &dto.collector, dto.interval)?;
    if watermark.is_some_and(|w| dto.cycle < w) {
        report.late += 1;
        return Ok(());
    }
    if watermark != Some(dto.cycle) {
        store.set_eval_watermark(&dto.family, &dto.collector, dto.interval, dto.cycle)?;
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
                true => alerting.baseline(store, columns, &rule.spec.metric, item_id, record.ts)?,
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
                    let id = store.open_event(rule, &record.device, &record.item, at, cycle, value, epoch)?;
                    if let Some(open) = state.as_mut().and_then(|s| s.open.as_mut()) {
                        open.id = id;
                    }
                    store.enqueue(id, EventState::Open)?;
                    report.transitions += 1;
                }
                Some(Transition::Peak { event, peak }) => {
                    store.set_peak(event, peak)?;
                }
                Some(Transition::Clear { event, at, value, peak }) => {
                    store.clear_event(event, at, value, peak)?;
                    store.enqueue(event, EventState::Cleared)?;
                    report.transitions += 1;
                }
                None => {}
            }
            store.write_state(key, state.as_ref())?;
            overlay.insert(key, state);
        }
    }
    Ok(())
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
