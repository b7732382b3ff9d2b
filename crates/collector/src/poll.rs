//! Polling one device for one cycle: its sysUpTime first (Availability, and the reboot check
//! that keeps rates honest), then each family's table in one multi-column GETBULK walk, then
//! the family's records.
//!
//! ```text
//!  GET sysUpTime.0 ──timeout──> Availability {reachable: 0}; nothing else this cycle
//!        │ ok: Availability {reachable: 1, response_ms}
//!        v
//!  per family: TableWalk (GETBULK) ──> rows ──> counters into rates (state) ──> records
//! ```
//!
//! A family whose walk fails (timeout, refusal, an agent that loops) gives no records for
//! this device and cycle and is counted; the other families and devices go on.

use crate::rates::{self, Sample, Uptime, Width};
use crate::snmp::{SnmpError, SnmpSession, SnmpValue};
use crate::state::{DeviceState, ItemState};
use crate::walk::{self, Rows, TableWalk};
use pollux_model::expr::Expr;
use pollux_model::{MetricFamily, MetricKind};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const SYS_UPTIME: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 3, 0];
/// Repetitions asked for per GETBULK; agents return fewer when the answer would not fit.
pub const MAX_REPETITIONS: u32 = 25;
/// Most GETBULK requests for one table walk of one device.
const MAX_REQUESTS_PER_WALK: usize = 10_000;

const IF_DESCR: &str = "1.3.6.1.2.1.2.2.1.2";
const HR_STORAGE_RAM: [u32; 10] = [1, 3, 6, 1, 2, 1, 25, 2, 1, 2];

/// How a family's table turns into records.
enum Shape {
    Interface,
    Cpu,
    Memory,
    /// An operator's family: one column (or scalar) per metric with an OID.
    Custom {
        exprs: Vec<Option<Expr>>,
    },
}

/// What to poll for one family, prepared once per catalog.
pub struct Plan {
    pub family: Arc<MetricFamily>,
    shape: Shape,
    /// The table columns walked (or the scalars fetched, for a custom family without a table).
    columns: Vec<Vec<u32>>,
    scalar: bool,
    /// A fingerprint of the metrics' names, OIDs and types (0 for built-ins), kept with each
    /// item's counters: when an operator changes a customized family, its counters restart.
    layout: u64,
}

/// Interface columns, in the order [`interface_values`] reads them.
const INTERFACE_COLUMNS: [&str; 12] = [
    IF_DESCR,
    "1.3.6.1.2.1.2.2.1.13",    // ifInDiscards
    "1.3.6.1.2.1.2.2.1.14",    // ifInErrors
    "1.3.6.1.2.1.2.2.1.19",    // ifOutDiscards
    "1.3.6.1.2.1.2.2.1.20",    // ifOutErrors
    "1.3.6.1.2.1.31.1.1.1.1",  // ifName
    "1.3.6.1.2.1.31.1.1.1.6",  // ifHCInOctets
    "1.3.6.1.2.1.31.1.1.1.7",  // ifHCInUcastPkts
    "1.3.6.1.2.1.31.1.1.1.10", // ifHCOutOctets
    "1.3.6.1.2.1.31.1.1.1.11", // ifHCOutUcastPkts
    "1.3.6.1.2.1.31.1.1.1.15", // ifHighSpeed
    "1.3.6.1.2.1.31.1.1.1.19", // ifCounterDiscontinuityTime
];
const CPU_COLUMNS: [&str; 1] = ["1.3.6.1.2.1.25.3.3.1.2"]; // hrProcessorLoad
const MEMORY_COLUMNS: [&str; 4] = [
    "1.3.6.1.2.1.25.2.3.1.2", // hrStorageType
    "1.3.6.1.2.1.25.2.3.1.4", // hrStorageAllocationUnits
    "1.3.6.1.2.1.25.2.3.1.5", // hrStorageSize
    "1.3.6.1.2.1.25.2.3.1.6", // hrStorageUsed
];

fn oids(columns: &[&str]) -> Vec<Vec<u32>> {
    columns.iter().map(|c| walk::parse_oid(c).expect("built-in OID")).collect()
}

impl Plan {
    /// The plan for a family, or `None` for Availability (it comes with every poll) and for a
    /// custom family with nothing to poll.
    pub fn new(family: Arc<MetricFamily>) -> Option<Plan> {
        let (shape, columns, scalar) = match (family.builtin, family.name.as_str()) {
            (true, "Interface") => (Shape::Interface, oids(&INTERFACE_COLUMNS), false),
            (true, "CPU") => (Shape::Cpu, oids(&CPU_COLUMNS), false),
            (true, "Memory") => (Shape::Memory, oids(&MEMORY_COLUMNS), false),
            (true, _) => return None,
            (false, _) => {
                let columns: Vec<Vec<u32>> =
                    family.metrics.iter().filter_map(|m| m.oid.as_deref().and_then(walk::parse_oid)).collect();
                if columns.is_empty() {
                    return None;
                }
                let exprs =
                    family.metrics.iter().map(|m| m.expr.as_deref().and_then(|e| Expr::parse(e).ok())).collect();
                (Shape::Custom { exprs }, columns, family.table.is_none())
            }
        };
        let layout = if family.builtin {
            0
        } else {
            // Stable across builds (unlike std's hasher): it is kept in the state file.
            let mut text = family.table.clone().unwrap_or_default();
            for m in &family.metrics {
                text.push_str(&format!("|{}:{}:{:?}", m.name, m.oid.as_deref().unwrap_or(""), m.kind));
            }
            fnv1a(text.as_bytes()) | 1
        };
        Some(Plan { family, shape, columns, scalar, layout })
    }
}

/// One device's result for one cycle.
#[derive(Debug, Default)]
pub struct DevicePoll {
    /// When the device was asked for sysUpTime (Unix seconds); `None` if it was not asked.
    pub polled_at: Option<f64>,
    pub reachable: bool,
    /// Availability's values: reachable, response_ms.
    pub response_ms: Option<f64>,
    /// Per family name, its records.
    pub families: Vec<(String, Records)>,
    pub timeouts: u32,
    /// The device's host refused the probe (nothing listens on its SNMP port): not asked.
    pub refused: bool,
    /// Families that could not be polled, with why.
    pub failures: Vec<(String, String)>,
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Polls one device: Availability always, then every family of `plans` the device lists.
pub async fn poll_device(
    session: &dyn SnmpSession,
    interval: f64,
    device_name: &str,
    families: &[String],
    plans: &HashMap<String, Arc<Plan>>,
    state: &mut DeviceState,
) -> DevicePoll {
    let mut poll = DevicePoll { polled_at: Some(unix_now()), ..DevicePoll::default() };
    let started = Instant::now();
    let uptime = match session.get(&[SYS_UPTIME.to_vec()]).await {
        Ok(bindings) => match bindings.first().map(|b| &b.value) {
            Some(SnmpValue::TimeTicks(ticks)) => Some(*ticks),
            _ => None,
        },
        Err(SnmpError::Timeout) => {
            poll.timeouts += 1;
            return poll;
        }
        Err(e) => {
            poll.failures.push(("Availability".into(), e.to_string()));
            return poll;
        }
    };
    poll.reachable = true;
    poll.response_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    let rebooted = match uptime {
        Some(ticks) => {
            let now = Uptime { ticks, at: unix_now() };
            let rebooted = state.uptime.is_some_and(|before| rates::rebooted(before, now));
            state.uptime = Some(now);
            rebooted
        }
        None => false,
    };
    if rebooted {
        // Every counter restarted, including those of families that fail this cycle: with no
        // previous sample, no counter gives a rate until its next poll.
        state.items.clear();
        tracing::info!(device = device_name, "sysUpTime went back: the device restarted; no rates this poll");
    }
    for name in families {
        let Some(plan) = plans.get(name) else { continue };
        let started = unix_now();
        let rows = match fetch(session, plan, &mut state.repetitions).await {
            Ok(rows) => rows,
            Err(Failure { timeout, problem }) => {
                poll.timeouts += u32::from(timeout);
                poll.failures.push((name.clone(), problem));
                continue;
            }
        };
        let at = (started + unix_now()) / 2.0;
        let previous = state.items.remove(name).unwrap_or_default();
        let reading = Reading { at, max_gap: interval * MAX_GAP_INTERVALS };
        let (records, items) = build(plan, device_name, &rows, &reading, previous);
        state.items.insert(name.clone(), items);
        poll.families.push((name.clone(), records));
    }
    poll
}

/// Why a family could not be fetched.
struct Failure {
    timeout: bool,
    problem: String,
}

impl From<SnmpError> for Failure {
    fn from(e: SnmpError) -> Failure {
        Failure { timeout: e == SnmpError::Timeout, problem: e.to_string() }
    }
}

/// Walks a plan's columns (or GETs its scalars).
///
/// Some agents answer a GETBULK whose full answer would not fit their message size with an
/// error (net-snmp over SNMPv3 says genErr) instead of fewer repetitions: on an error status the
/// walk asks again with half the repetitions, and remembers what worked for the device.
async fn fetch(session: &dyn SnmpSession, plan: &Plan, repetitions: &mut Option<u32>) -> Result<Rows, Failure> {
    if plan.scalar {
        let bindings = session.get(&plan.columns).await?;
        let values = bindings.into_iter().map(|b| (b.value != SnmpValue::Missing).then_some(b.value)).collect();
        return Ok(Rows::from([(Vec::new(), values)]));
    }
    let mut walk = TableWalk::new(plan.columns.clone());
    for _ in 0..MAX_REQUESTS_PER_WALK {
        let Some(request) = walk.next_request() else { return Ok(walk.into_rows()) };
        let bindings = loop {
            let asked = repetitions.unwrap_or(MAX_REPETITIONS);
            match session.get_bulk(&request, 0, asked).await {
                Err(SnmpError::TooBig(_)) if asked > 1 => *repetitions = Some(asked / 2),
                other => break other?,
            }
        };
        walk.feed(&bindings).map_err(|e| Failure { timeout: false, problem: e.to_string() })?;
    }
    Err(Failure { timeout: false, problem: format!("table walk took more than {MAX_REQUESTS_PER_WALK} requests") })
}

/// Counter slots of the Interface family, in state order, with the column each comes from.
const INTERFACE_COUNTERS: [(usize, Width); 8] = [
    (6, Width::Bits64), // in octets
    (8, Width::Bits64), // out octets
    (7, Width::Bits64), // in packets
    (9, Width::Bits64), // out packets
    (2, Width::Bits32), // in errors
    (4, Width::Bits32), // out errors
    (1, Width::Bits32), // in discards
    (3, Width::Bits32), // out discards
];

/// Records of one family: (item, poll time, values in the family's metric order).
pub type Records = Vec<(String, f64, Vec<Option<f64>>)>;
/// The plans of a catalog, by family name.
pub type Plans = HashMap<String, Arc<Plan>>;

/// When a family's rows were read, and what limits their rates.
pub struct Reading {
    /// Unix time of the read (the middle of the walk).
    pub at: f64,
    /// Samples further apart give no rate (see `rates`).
    pub max_gap: f64,
}

/// Rates span at most this many poll intervals (a missed poll or two still gives a rate).
const MAX_GAP_INTERVALS: f64 = 3.5;

/// Turns a family's rows into records, updating each item's counters.
fn build(
    plan: &Plan,
    device: &str,
    rows: &Rows,
    reading: &Reading,
    mut previous: HashMap<String, ItemState>,
) -> (Records, HashMap<String, ItemState>) {
    let mut records = Vec::with_capacity(rows.len());
    let mut items = HashMap::with_capacity(rows.len());
    let mut names = HashSet::with_capacity(rows.len());
    for (index, row) in rows {
        let dotted = walk::dotted(index);
        let name = match plan.shape {
            Shape::Interface => [5, 0]
                .iter()
                .filter_map(|&c| row[c].as_ref().and_then(SnmpValue::as_text))
                .map(|n| clean_name(&n))
                .find(|n| !n.is_empty())
                .unwrap_or_else(|| clean_name(&dotted)),
            _ if plan.scalar => device.to_owned(),
            _ => clean_name(&dotted),
        };
        let item = unique_name(name, &dotted, &mut names);
        let mut state = previous.remove(&item).filter(|s| s.layout == plan.layout).unwrap_or_default();
        state.layout = plan.layout;
        let values = match &plan.shape {
            Shape::Interface => interface_values(row, reading, &mut state),
            Shape::Cpu => vec![row[0].as_ref().and_then(SnmpValue::as_f64)],
            Shape::Memory => match memory_values(row) {
                Some(values) => values,
                None => continue,
            },
            Shape::Custom { exprs } => custom_values(plan, exprs, row, reading, &mut state),
        };
        // An item with no value yet (the first poll of its counters) has nothing to send.
        if values.iter().any(Option::is_some) {
            records.push((item.clone(), reading.at, values));
        }
        items.insert(item, state);
    }
    (records, items)
}

/// An item name the aggregator accepts, from what a device says: no control characters (agents
/// often end ifDescr with a NUL), trimmed, at most 255 bytes.
fn clean_name(raw: &str) -> String {
    let cleaned: String = raw.chars().filter(|c| !c.is_control()).collect();
    truncate(cleaned.trim(), pollux_model::dto::MAX_NAME_LEN).to_owned()
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// FNV-1a: a small hash that is the same in every build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `name`, or when a device has two items of that name, the name with its index (and a number
/// if even that is taken), so that a DTO never holds one item twice. An index too long to fit
/// in 255 bytes is replaced by its hash.
fn unique_name(name: String, index: &str, taken: &mut HashSet<String>) -> String {
    if taken.insert(name.clone()) {
        return name;
    }
    let index = if index.len() > 64 { format!("{:016x}", fnv1a(index.as_bytes())) } else { index.to_owned() };
    for n in 0.. {
        let suffix = if n == 0 { format!("#{index}") } else { format!("#{index}.{n}") };
        let budget = pollux_model::dto::MAX_NAME_LEN.saturating_sub(suffix.len());
        let candidate = format!("{}{suffix}", truncate(&name, budget));
        if taken.insert(candidate.clone()) {
            return candidate;
        }
    }
    unreachable!("some suffix is free")
}

/// Sample of a counter column, if it holds a counter.
fn counter(value: Option<&SnmpValue>, at: f64) -> Option<Sample> {
    match value? {
        SnmpValue::Counter32(n) => Some(Sample { value: u64::from(*n), at }),
        SnmpValue::Counter64(n) => Some(Sample { value: *n, at }),
        SnmpValue::Integer(n) if *n >= 0 => Some(Sample { value: *n as u64, at }),
        SnmpValue::Gauge32(n) => Some(Sample { value: u64::from(*n), at }),
        _ => None,
    }
}

/// Moves one counter slot on and gives its rate, if there is an honest one.
fn advance(
    state: &mut ItemState,
    slot: usize,
    value: Option<&SnmpValue>,
    width: Width,
    reading: &Reading,
    reset: bool,
) -> Option<f64> {
    if state.counters.len() <= slot {
        state.counters.resize(slot + 1, None);
    }
    let sample = counter(value, reading.at);
    let previous = std::mem::replace(&mut state.counters[slot], sample);
    match (previous, sample) {
        (Some(p), Some(c)) if !reset => rates::rate(p, c, width, reading.max_gap),
        _ => None,
    }
}

fn interface_values(row: &[Option<SnmpValue>], reading: &Reading, state: &mut ItemState) -> Vec<Option<f64>> {
    let discontinuity = match row[11] {
        Some(SnmpValue::TimeTicks(t)) => Some(t),
        _ => None,
    };
    let reset = state.discontinuity.is_some() && discontinuity != state.discontinuity;
    state.discontinuity = discontinuity;
    let speed_bps = row[10].as_ref().and_then(SnmpValue::as_f64).filter(|s| *s > 0.0).map(|mbps| mbps * 1e6);
    let mut rates = [None; 8];
    for (slot, (column, width)) in INTERFACE_COUNTERS.iter().enumerate() {
        rates[slot] = advance(state, slot, row[*column].as_ref(), *width, reading, reset);
    }
    let bps = |octets: Option<f64>| octets.map(|r| r * 8.0);
    let (in_bps, out_bps) = (bps(rates[0]), bps(rates[1]));
    let util = |bits: Option<f64>| Some(bits? / speed_bps? * 100.0);
    vec![in_bps, out_bps, rates[2], rates[3], rates[4], rates[5], rates[6], rates[7], util(in_bps), util(out_bps)]
}

/// RAM's used_pct, used_bytes, total_bytes; `None` for storage that is not RAM.
fn memory_values(row: &[Option<SnmpValue>]) -> Option<Vec<Option<f64>>> {
    match &row[0] {
        Some(SnmpValue::Oid(kind)) if kind.as_slice() == HR_STORAGE_RAM => {}
        _ => return None,
    }
    let number = |c: usize| row[c].as_ref().and_then(SnmpValue::as_f64);
    let unit = number(1)?;
    let total = number(2).map(|s| s * unit);
    let used = number(3).map(|u| u * unit);
    let pct = match (used, total) {
        (Some(u), Some(t)) if t > 0.0 => Some(u / t * 100.0),
        _ => None,
    };
    Some(vec![pct, used, total])
}

fn custom_values(
    plan: &Plan,
    exprs: &[Option<Expr>],
    row: &[Option<SnmpValue>],
    reading: &Reading,
    state: &mut ItemState,
) -> Vec<Option<f64>> {
    let mut column = 0;
    plan.family
        .metrics
        .iter()
        .enumerate()
        .map(|(i, metric)| {
            metric.oid.as_deref().and_then(walk::parse_oid)?;
            let value = row.get(column).and_then(Option::as_ref);
            column += 1;
            let raw = match metric.kind {
                MetricKind::Gauge => value.and_then(SnmpValue::as_f64),
                MetricKind::Counter32 => advance(state, i, value, Width::Bits32, reading, false),
                MetricKind::Counter64 => advance(state, i, value, Width::Bits64, reading, false),
            }?;
            match &exprs[i] {
                Some(expr) => expr.eval(raw),
                None => Some(raw),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snmp::Binding;
    use pollux_model::Catalog;

    fn interface_row(octets: u64, errors: u32, discontinuity: u32) -> Vec<Option<SnmpValue>> {
        let mut row = vec![None; 12];
        row[0] = Some(SnmpValue::Text(b"eth0".to_vec()));
        row[2] = Some(SnmpValue::Counter32(errors));
        row[6] = Some(SnmpValue::Counter64(octets));
        row[8] = Some(SnmpValue::Counter64(octets / 2));
        row[10] = Some(SnmpValue::Gauge32(1000));
        row[11] = Some(SnmpValue::TimeTicks(discontinuity));
        row
    }

    fn at(at: f64) -> Reading {
        Reading { at, max_gap: 35.0 }
    }

    #[test]
    fn interface_rates_wraps_and_discontinuities() {
        let mut state = ItemState::default();
        // First poll: no rate.
        let first = interface_values(&interface_row(1_000_000, u32::MAX - 4, 0), &at(100.0), &mut state);
        assert_eq!(first[0], None);
        // 10 s later: 1.25 MB more in, so 1 Mb/s, 0.1 % of 1 Gb/s; errors wrapped by 10.
        let second = interface_values(&interface_row(2_250_000, 5, 0), &at(110.0), &mut state);
        assert_eq!(second[0], Some(1_000_000.0));
        assert_eq!(second[8], Some(0.1));
        assert_eq!(second[4], Some(1.0));
        // The interface's counters were reset: no rate, not a spike.
        let third = interface_values(&interface_row(10, 0, 777), &at(120.0), &mut state);
        assert_eq!((third[0], third[4]), (None, None));
        let fourth = interface_values(&interface_row(1_250_010, 1, 777), &at(130.0), &mut state);
        assert_eq!(fourth[0], Some(1_000_000.0));
        // (A device restart is `poll_device`'s business: see the test below.)
        // A poll long after the last one (the collector was down) gives no rate either.
        let sixth = interface_values(&interface_row(6_000_000, 3, 777), &at(141.0), &mut state);
        assert!(sixth[0].is_some());
        let late = interface_values(&interface_row(7_000_000, 4, 777), &at(241.0), &mut state);
        assert_eq!(late[0], None);
    }

    #[test]
    fn item_names_are_cleaned_bounded_and_unique() {
        assert_eq!(clean_name("eth0\0"), "eth0");
        assert_eq!(clean_name(" Gi0/1\r\n"), "Gi0/1");
        assert_eq!(clean_name(&"é".repeat(200)).len(), 254);
        let mut taken = HashSet::new();
        assert_eq!(unique_name("ge-0/0/1".into(), "5", &mut taken), "ge-0/0/1");
        assert_eq!(unique_name("ge-0/0/1".into(), "6", &mut taken), "ge-0/0/1#6");
        // A device that really has an interface named like the renamed one.
        assert_eq!(unique_name("ge-0/0/1#6".into(), "7", &mut taken), "ge-0/0/1#6#7");
        assert_eq!(unique_name("ge-0/0/1".into(), "6", &mut taken), "ge-0/0/1#6.1");
        let long = "x".repeat(255);
        assert_eq!(unique_name(long.clone(), "1", &mut taken), long);
        let renamed = unique_name(long.clone(), "12", &mut taken);
        assert!(renamed.len() <= 255 && renamed.ends_with("#12"));
        let huge_index = "1.".repeat(200) + "1";
        let renamed = unique_name(long, &huge_index, &mut taken);
        assert!(renamed.len() <= 255, "{}", renamed.len());
    }

    #[test]
    fn memory_reads_only_ram() {
        let mut row = vec![
            Some(SnmpValue::Oid(HR_STORAGE_RAM.to_vec())),
            Some(SnmpValue::Integer(1024)),
            Some(SnmpValue::Integer(1000)),
            Some(SnmpValue::Integer(250)),
        ];
        assert_eq!(memory_values(&row), Some(vec![Some(25.0), Some(256_000.0), Some(1_024_000.0)]));
        row[0] = Some(SnmpValue::Oid(vec![1, 3, 6, 1, 2, 1, 25, 2, 1, 4]));
        assert_eq!(memory_values(&row), None);
    }

    #[test]
    fn custom_family_counters_and_expressions() {
        let family = MetricFamily::from_toml(
            r#"
            name = "Fan"
            table = "1.3.6.1.4.1.99.1"
            [[metric]]
            name = "rpm"
            oid = "1.3.6.1.4.1.99.1.1.2"
            expr = "value * 60"
            [[metric]]
            name = "spins"
            type = "counter32"
            oid = "1.3.6.1.4.1.99.1.1.3"
            "#,
        )
        .unwrap();
        let plan = Plan::new(Arc::new(family)).unwrap();
        let row = |rps: i64, spins: u32| vec![Some(SnmpValue::Integer(rps)), Some(SnmpValue::Counter32(spins))];
        let rows = Rows::from([(vec![7], row(50, 100))]);
        let (records, items) = build(&plan, "d", &rows, &at(10.0), HashMap::new());
        assert_eq!(records, vec![("7".to_owned(), 10.0, vec![Some(3000.0), None])]);
        let rows = Rows::from([(vec![7], row(51, 300))]);
        let (records, _) = build(&plan, "d", &rows, &at(20.0), items);
        assert_eq!(records[0].2, vec![Some(3060.0), Some(20.0)]);
        assert!(Plan::new(Catalog::builtin().get("Availability").unwrap().clone()).is_none());
    }

    /// An agent with one interface whose octet counter and sysUpTime the test sets.
    #[derive(Default)]
    struct FakeAgent {
        uptime: std::sync::Mutex<u32>,
        octets: std::sync::Mutex<u64>,
        refuse_walks: std::sync::atomic::AtomicBool,
    }

    impl SnmpSession for FakeAgent {
        fn get<'a>(&'a self, _oids: &'a [Vec<u32>]) -> crate::snmp::SnmpFuture<'a> {
            let ticks = *self.uptime.lock().unwrap();
            Box::pin(async move { Ok(vec![Binding { oid: SYS_UPTIME.to_vec(), value: SnmpValue::TimeTicks(ticks) }]) })
        }

        fn get_bulk<'a>(&'a self, asked: &'a [Vec<u32>], _: u32, _: u32) -> crate::snmp::SnmpFuture<'a> {
            let refuse = self.refuse_walks.load(std::sync::atomic::Ordering::Relaxed);
            let octets = *self.octets.lock().unwrap();
            Box::pin(async move {
                if refuse {
                    return Err(SnmpError::Timeout);
                }
                let columns = oids(&INTERFACE_COLUMNS);
                // One repetition: row 1 for a column asked from its start, the end after it.
                Ok(asked
                    .iter()
                    .map(|asked| match columns.iter().position(|c| c == asked) {
                        Some(c) => Binding {
                            oid: [asked.as_slice(), &[1]].concat(),
                            value: match c {
                                5 => SnmpValue::Text(b"eth0".to_vec()),
                                6 | 8 => SnmpValue::Counter64(octets),
                                10 => SnmpValue::Gauge32(1000),
                                11 => SnmpValue::TimeTicks(0),
                                _ => SnmpValue::Counter32(0),
                            },
                        },
                        None => Binding { oid: asked.clone(), value: SnmpValue::Missing },
                    })
                    .collect())
            })
        }
    }

    #[test]
    fn a_device_restart_forgets_every_counter_even_of_a_family_that_failed() {
        let agent = FakeAgent::default();
        let plans: Plans =
            Catalog::builtin().iter().filter_map(|f| Some((f.name.clone(), Arc::new(Plan::new(f.clone())?)))).collect();
        let families = vec!["Interface".to_owned()];
        let mut state = DeviceState::default();
        let mut poll = |uptime: u32, octets: u64, refuse: bool| {
            *agent.uptime.lock().unwrap() = uptime;
            *agent.octets.lock().unwrap() = octets;
            agent.refuse_walks.store(refuse, std::sync::atomic::Ordering::Relaxed);
            let polled = block_on(poll_device(&agent, 300.0, "d", &families, &plans, &mut state));
            polled.families.iter().find(|(f, _)| f == "Interface").map(|(_, r)| r.first().and_then(|r| r.2[0]))
        };
        assert_eq!(poll(1_000, 1_000, false), Some(None), "first poll: no rate");
        assert!(matches!(poll(1_100, 2_000, false), Some(Some(bps)) if bps > 0.0));
        // sysUpTime went back, and the Interface walk failed in that same poll.
        assert_eq!(poll(50, 5, true), None);
        // The counter is above the one from before the restart, but that one is forgotten.
        assert_eq!(poll(150, 3_000, false), Some(None), "first poll after the restart: no rate");
        assert!(matches!(poll(250, 4_000, false), Some(Some(bps)) if bps > 0.0));
    }

    /// Runs a future on a fresh current-thread runtime (the test polls in a closure).
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }
}
