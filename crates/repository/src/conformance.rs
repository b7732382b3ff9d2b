//! The conformance suite every repository backend must pass.
//!
//! Each check takes a fresh, empty repository and panics on a violation. A backend runs the
//! whole suite with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! pollux_repository::conformance_tests!(|| open_a_fresh_repository());
//! ```
//!
//! [`rollups_match_raw`] is also what the black-box tests use to check a repository that real
//! aggregators wrote while being killed.

use crate::{
    EventFilter, EventState, ItemFilter, RepoError, Repository, Retention, RollupPolicy, RuleSpec, Series, SeriesQuery,
    TopQuery,
};
use pollux_model::Resolution;
use pollux_model::{Catalog, Dto, MetricFamily, Record};
use std::collections::BTreeMap;
use std::time::Duration;

/// Monday 2025-11-17 00:00 UTC: data in the suite starts here, long enough ago to be "closed".
pub const T0: i64 = 1_763_337_600;
const NOW: i64 = T0 + 30 * 86_400;
const INTERVAL: i64 = 300;

/// Expands to one `#[test]` per conformance check, each on a repository made by `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@list each $make);
    };
    // A backend whose server may be missing: `$make` returns an `Option`, and `None` skips
    // the check, saying so.
    (optional $make:expr) => {
        $crate::conformance_tests!(@list optional $make);
    };
    (@list $mode:ident $make:expr) => {
        $crate::conformance_tests!(@run $mode $make;
            epoch_fences_older_writers, dto_loads_exactly_once, failed_batch_writes_nothing,
            series_reads_recent_and_compacted_alike, rollups_equal_recomputation,
            top_ranks_by_average, items_and_devices, family_widening, retention_expires,
            late_data_settles_before_it_is_rolled, family_names_never_share_tables,
            digests_are_kept, records_under_two_ids_are_counted, an_event_commits_with_its_data,
            a_fenced_load_writes_no_event, rule_changes_clear_open_events, late_polls_are_not_evaluated,
            baselines_come_from_past_weeks, the_outbox_delivers_in_order_and_is_bounded,
            a_failed_batch_leaves_no_rule_match_behind, extreme_values_roll_up_and_rank,
            saturated_hours_make_no_baseline);
    };
    (@run each $make:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                let repo = ($make)();
                $crate::conformance::$check(&*repo);
            }
        )*
    };
    (@run optional $make:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                match ($make)() {
                    Some(repo) => $crate::conformance::$check(&*repo),
                    None => eprintln!("SKIPPED {}: no PostgreSQL binaries", stringify!($check)),
                }
            }
        )*
    };
}

fn prepare(repo: &dyn Repository, epoch: u64) {
    repo.claim_epoch(epoch, "suite").unwrap();
    for family in Catalog::builtin().iter() {
        repo.ensure_family(epoch, family).unwrap();
    }
}

/// A DTO of the Interface family for `cycle` with the given `(device, item, in_bps)` records.
pub fn dto(id: &str, cycle: i64, records: &[(&str, &str, f64)]) -> Dto {
    Dto {
        id: id.to_owned(),
        collector: "dc1".into(),
        family: "Interface".into(),
        cycle,
        interval: INTERVAL as u32,
        metrics: vec!["in_bps".into(), "out_bps".into()],
        records: records
            .iter()
            .enumerate()
            .map(|(i, (device, item, v))| Record {
                device: (*device).into(),
                item: (*item).into(),
                ts: cycle + 10 + i as i64,
                values: vec![Some(*v), Some(v / 2.0)],
            })
            .collect(),
    }
}

fn raw(repo: &dyn Repository, device: &str, item: &str, from: i64, to: i64) -> Vec<(i64, f64)> {
    match repo
        .series(&SeriesQuery {
            family: "Interface".into(),
            device: device.into(),
            item: item.into(),
            metric: "in_bps".into(),
            from,
            to,
            resolution: Resolution::Raw,
        })
        .unwrap()
    {
        Series::Raw(points) => points,
        other => panic!("raw series came back as {other:?}"),
    }
}

pub fn epoch_fences_older_writers(repo: &dyn Repository) {
    prepare(repo, 1);
    assert_eq!(repo.epoch().unwrap(), 1);
    assert!(matches!(repo.claim_epoch(1, "again"), Err(RepoError::Fenced { current: 1, .. })));
    repo.load(1, &[dto("a", T0, &[("r1", "ge-0", 1.0)])]).unwrap();
    repo.claim_epoch(2, "newer").unwrap();
    let stale = repo.load(1, &[dto("b", T0 + INTERVAL, &[("r1", "ge-0", 2.0)])]);
    assert!(matches!(stale, Err(RepoError::Fenced { ours: 1, current: 2 })), "{stale:?}");
    assert!(matches!(
        repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 10),
        Err(RepoError::Fenced { .. })
    ));
    assert!(matches!(repo.compact(1, NOW, 10), Err(RepoError::Fenced { .. })));
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW).len(), 1, "the stale load wrote nothing");
    assert!(repo.loaded_dto("b").unwrap().is_none());
    assert_eq!(repo.loaded_dto("a").unwrap().unwrap().epoch, 1);
}

pub fn dto_loads_exactly_once(repo: &dyn Repository) {
    prepare(repo, 1);
    let first = dto("x", T0, &[("r1", "ge-0", 10.0), ("r1", "ge-1", 20.0)]);
    let report = repo.load(1, std::slice::from_ref(&first)).unwrap();
    assert_eq!((report.loaded, report.already_loaded, report.values), (1, 0, 4));
    let again = repo.load(1, &[first.clone(), first.clone()]).unwrap();
    assert_eq!((again.loaded, again.already_loaded), (0, 2));
    // The same id twice in one batch: the second sees the first's registry entry.
    let pair = dto("y", T0 + INTERVAL, &[("r1", "ge-0", 11.0)]);
    let report = repo.load(1, &[pair.clone(), pair]).unwrap();
    assert_eq!((report.loaded, report.already_loaded), (1, 1));
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW), [(T0 + 10, 10.0), (T0 + INTERVAL + 10, 11.0)]);
    let entry = repo.loaded_dto("x").unwrap().unwrap();
    assert_eq!((entry.records, entry.cycle, entry.family.as_str()), (2, T0, "Interface"));
}

pub fn failed_batch_writes_nothing(repo: &dyn Repository) {
    prepare(repo, 1);
    let good = dto("good", T0, &[("r1", "ge-0", 1.0)]);
    let mut bad = dto("bad", T0, &[("r2", "ge-0", 1.0)]);
    bad.metrics[1] = "no_such_metric".into();
    assert!(repo.load(1, &[good, bad]).is_err());
    assert!(repo.loaded_dto("good").unwrap().is_none());
    assert!(raw(repo, "r1", "ge-0", T0, NOW).is_empty());
    // The item ids created inside the failed transaction are gone too, and the next load works.
    repo.load(1, &[dto("good", T0, &[("r1", "ge-0", 1.0)])]).unwrap();
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW).len(), 1);
}

pub fn series_reads_recent_and_compacted_alike(repo: &dyn Repository) {
    prepare(repo, 1);
    for c in 0..6 {
        let cycle = T0 + c * INTERVAL;
        repo.load(1, &[dto(&format!("c{c}"), cycle, &[("r1", "ge-0", c as f64), ("r1", "ge-1", 100.0)])]).unwrap();
    }
    // Another DTO with the same item in the same cycle replaces its record, in either table.
    repo.load(1, &[dto("again", T0, &[("r1", "ge-0", 42.0)])]).unwrap();
    let before = raw(repo, "r1", "ge-0", T0, NOW);
    assert_eq!(before.len(), 6);
    assert_eq!(before[0], (T0 + 10, 42.0));
    let progress = repo.compact(1, T0 + 3 * INTERVAL, 100).unwrap();
    // Three cycles moved, or none by a backend with a single raw layout (PostgreSQL).
    assert!(matches!(progress.done, 0 | 3), "{progress:?}");
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW), before, "half compacted");
    repo.compact(1, NOW, 100).unwrap();
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW), before, "all compacted");
    repo.load(1, &[dto("again.2", T0, &[("r1", "ge-0", 7.5)])]).unwrap();
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW)[..2], [(T0 + 10, 7.5), before[1]], "replaced in history too");
    // Late data for a compacted cycle goes to history and is read back the same way.
    repo.load(1, &[dto("late", T0 + INTERVAL, &[("r1", "ge-2", 7.0)])]).unwrap();
    assert_eq!(raw(repo, "r1", "ge-2", T0, NOW), [(T0 + INTERVAL + 10, 7.0)]);
    // Half-open ranges.
    assert_eq!(raw(repo, "r1", "ge-0", T0 + 10, T0 + INTERVAL + 10), [(T0 + 10, 7.5)]);
}

/// Checks every hourly, daily and weekly rollup of one item's metric against a recomputation
/// from its raw series over `[from, to)`. Returns the periods compared per resolution (hour,
/// day, week), so a checker can insist that each resolution was compared at all.
pub fn rollups_match_raw_by_resolution(
    repo: &dyn Repository,
    family: &str,
    metric: &str,
    device: &str,
    item: &str,
    from: i64,
    to: i64,
) -> Result<[usize; 3], String> {
    let query = |resolution| SeriesQuery {
        family: family.into(),
        device: device.into(),
        item: item.into(),
        metric: metric.into(),
        from,
        to,
        resolution,
    };
    let Series::Raw(points) = repo.series(&query(Resolution::Raw)).map_err(|e| e.to_string())? else {
        return Err("raw series is not raw".into());
    };
    let mut compared = [0; 3];
    for (r, resolution) in Resolution::ROLLUPS.into_iter().enumerate() {
        let mut expected: BTreeMap<i64, (f64, f64, f64, u64)> = BTreeMap::new();
        for &(ts, v) in &points {
            let e = expected.entry(resolution.period_start(ts)).or_insert((f64::MAX, f64::MIN, 0.0, 0));
            *e = (e.0.min(v), e.1.max(v), e.2 + v, e.3 + 1);
        }
        let Series::Rollup(actual) = repo.series(&query(resolution)).map_err(|e| e.to_string())? else {
            return Err("rollup series is not a rollup".into());
        };
        // Periods only partly inside [from, to) hold data from outside it: compare whole ones.
        let whole = |p: i64| p >= from && p + resolution.length().unwrap() <= to;
        let actual: BTreeMap<i64, _> = actual.into_iter().filter(|p| whole(p.period)).map(|p| (p.period, p)).collect();
        expected.retain(|p, _| whole(*p));
        if actual.len() != expected.len() {
            return Err(format!(
                "{device}/{item} {}: {} rollup periods, raw data has {}",
                resolution.name(),
                actual.len(),
                expected.len()
            ));
        }
        for (period, (min, max, sum, count)) in expected {
            let got = actual[&period];
            let avg = sum / count as f64;
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            if got.count != count || !close(got.min, min) || !close(got.max, max) || !close(got.avg, avg) {
                return Err(format!(
                    "{device}/{item} {} {period}: rollup {got:?}, raw gives min {min} max {max} avg {avg} count {count}",
                    resolution.name()
                ));
            }
            compared[r] += 1;
        }
    }
    Ok(compared)
}

pub fn rollups_equal_recomputation(repo: &dyn Repository) {
    prepare(repo, 1);
    let items = [("r1", "ge-0"), ("r1", "ge-1"), ("r2", "ge-0")];
    let cycles: Vec<i64> = (0..(9 * 288)).map(|c| T0 + c * INTERVAL).collect(); // 9 days
    let value = |c: i64, i: usize| ((c / INTERVAL) % 97) as f64 * (i + 1) as f64 + 0.5;
    let make = |c: i64, tag: &str| {
        let records: Vec<(&str, &str, f64)> =
            items.iter().enumerate().map(|(i, (d, it))| (*d, *it, value(c, i))).collect();
        dto(&format!("{tag}.{c}"), c, &records)
    };
    // Out of order: odd cycles first, newest first; every 7th cycle held back as late data.
    let mut order: Vec<i64> = cycles.iter().copied().filter(|c| (c / INTERVAL) % 7 != 0).collect();
    order.sort_by_key(|c| (c / INTERVAL % 2 == 0, -c));
    for chunk in order.chunks(50) {
        let batch: Vec<Dto> = chunk.iter().map(|&c| make(c, "on-time")).collect();
        repo.load(1, &batch).unwrap();
    }
    while repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::from_secs(600)), 1000).unwrap().more {}
    repo.compact(1, T0 + 4 * 86_400, 10_000).unwrap();
    // Late deliveries, and duplicates of what was already loaded.
    let late: Vec<Dto> = cycles.iter().copied().filter(|c| (c / INTERVAL) % 7 == 0).map(|c| make(c, "late")).collect();
    for chunk in late.chunks(40) {
        repo.load(1, chunk).unwrap();
    }
    let dups: Vec<Dto> = order.iter().take(100).map(|&c| make(c, "on-time")).collect();
    assert_eq!(repo.load(1, &dups).unwrap().already_loaded, 100);
    while repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::from_secs(600)), 1000).unwrap().more {}
    assert_eq!(repo.stats().unwrap().pending_rollups, 0);
    let (from, to) = (T0, T0 + 9 * 86_400);
    for (device, item) in items {
        assert_eq!(raw(repo, device, item, from, to).len(), cycles.len(), "{device}/{item} raw");
        let compared = rollups_match_raw_by_resolution(repo, "Interface", "in_bps", device, item, from, to).unwrap();
        assert_eq!(compared, [9 * 24, 9, 1], "hours, days and the one whole week");
    }
}

pub fn top_ranks_by_average(repo: &dyn Repository) {
    prepare(repo, 1);
    let records: Vec<(String, f64)> = (0..30).map(|i| (format!("ge-{i}"), (i * 7 % 30) as f64)).collect();
    for c in 0..12 {
        let cycle = T0 + c * INTERVAL;
        let recs: Vec<(&str, &str, f64)> = records.iter().map(|(it, v)| ("r1", it.as_str(), *v + c as f64)).collect();
        repo.load(1, &[dto(&format!("t{c}"), cycle, &recs)]).unwrap();
    }
    let query = TopQuery { family: "Interface".into(), metric: "in_bps".into(), from: T0, to: T0 + 3600, n: 3 };
    let from_raw = repo.top(&query).unwrap();
    let names: Vec<&str> = from_raw.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(from_raw[0].avg, 29.0 + 5.5);
    assert!(from_raw.windows(2).all(|w| w[0].avg >= w[1].avg));
    // A range not on hour boundaries is read from raw data: the same before and after its
    // cycles are compacted into the item-ordered history.
    let unaligned = TopQuery { from: T0 + 60, to: T0 + 3660, ..query.clone() };
    let recent = repo.top(&unaligned).unwrap();
    while repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 100).unwrap().more {}
    let from_rollups = repo.top(&query).unwrap();
    assert_eq!(from_rollups, from_raw, "hourly rollups rank exactly as raw data");
    while repo.compact(1, NOW, 100).unwrap().more {}
    assert_eq!(repo.top(&unaligned).unwrap(), recent, "compacted data ranks as it did");
    assert_eq!(recent.len(), 3);
}

pub fn items_and_devices(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.load(1, &[dto("i", T0, &[("r1", "ge-0", 1.0), ("r1", "ge-1", 1.0), ("r2", "ge-0", 1.0)])]).unwrap();
    let devices = repo.devices().unwrap();
    assert_eq!(devices.iter().map(|d| (d.name.as_str(), d.items)).collect::<Vec<_>>(), [("r1", 2), ("r2", 1)]);
    assert_eq!(devices[0].families, ["Interface"]);
    let filter = ItemFilter { device: Some("r1".into()), family: None, limit: 10, offset: 0 };
    let items = repo.items(&filter).unwrap();
    assert_eq!(items.iter().map(|i| i.item.as_str()).collect::<Vec<_>>(), ["ge-0", "ge-1"]);
    let page = repo.items(&ItemFilter { device: None, family: Some("Interface".into()), limit: 1, offset: 2 }).unwrap();
    assert_eq!((page.len(), page[0].device.as_str()), (1, "r2"));
}

pub fn family_widening(repo: &dyn Repository) {
    prepare(repo, 1);
    let mut family = MetricFamily::from_toml("name = \"Temp\"\n[[metric]]\nname = \"celsius\"").unwrap();
    repo.ensure_family(1, &family).unwrap();
    family.metrics.push(pollux_model::Metric { name: "fan_rpm".into(), ..family.metrics[0].clone() });
    repo.ensure_family(1, &family).unwrap();
    assert!(
        matches!(repo.ensure_family(0, &family), Err(RepoError::Fenced { .. })),
        "a stale writer changes no schema"
    );
    let d = Dto {
        id: "temp".into(),
        collector: "dc1".into(),
        family: "Temp".into(),
        cycle: T0,
        interval: 60,
        metrics: vec!["fan_rpm".into()],
        records: vec![Record { device: "r1".into(), item: "s1".into(), ts: T0 + 1, values: vec![Some(1200.0)] }],
    };
    repo.load(1, &[d]).unwrap();
    let q = SeriesQuery {
        family: "Temp".into(),
        device: "r1".into(),
        item: "s1".into(),
        metric: "fan_rpm".into(),
        from: T0,
        to: T0 + 60,
        resolution: Resolution::Raw,
    };
    assert_eq!(repo.series(&q).unwrap(), Series::Raw(vec![(T0 + 1, 1200.0)]));
    let unknown = SeriesQuery { metric: "volts".into(), ..q };
    assert!(matches!(repo.series(&unknown), Err(RepoError::UnknownMetric { .. })));
}

/// No family name, however it is spelt or cased, lands on another family's tables or on the
/// repository's own: a family named like an internal table loads and reads like any other, and
/// one that differs from an existing family only by letter case is refused (finding 1 of the
/// hardening issue: such families shared the built-ins' tables and lost acknowledged data).
pub fn family_names_never_share_tables(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.load(1, &[dto("base", T0, &[("r1", "ge-0", 5.0)])]).unwrap();
    let family = |name: &str| MetricFamily {
        name: name.to_owned(),
        description: String::new(),
        item_key: String::new(),
        table: None,
        builtin: false,
        metrics: MetricFamily::from_toml("name = \"X\"\n[[metric]]\nname = \"v\"").unwrap().metrics,
    };
    let internal = [
        "cycles",
        "dtos",
        "meta",
        "epochs",
        "items",
        "family_state",
        "recent_cycles",
        "loaded_dtos",
        "rollup_pending",
        "pending",
        "state",
        "f1",
        "f1_recent",
        "recent_Interface",
        "Interface_raw",
        "sqlite_master",
    ];
    for (i, name) in internal.iter().enumerate() {
        repo.ensure_family(1, &family(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let d = Dto {
            id: format!("internal-{i}"),
            collector: "dc1".into(),
            family: (*name).into(),
            cycle: T0,
            interval: INTERVAL as u32,
            metrics: vec!["v".into()],
            records: vec![Record {
                device: "r1".into(),
                item: "ge-0".into(),
                ts: T0 + 1,
                values: vec![Some(i as f64)],
            }],
        };
        repo.load(1, &[d]).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (i, name) in internal.iter().enumerate() {
        let q = SeriesQuery {
            family: (*name).into(),
            device: "r1".into(),
            item: "ge-0".into(),
            metric: "v".into(),
            from: T0,
            to: NOW,
            resolution: Resolution::Raw,
        };
        assert_eq!(repo.series(&q).unwrap(), Series::Raw(vec![(T0 + 1, i as f64)]), "{name}");
    }
    for variant in ["interface", "INTERFACE", "cpu", "Cpu", "aVAILABILITY", "memory", "CYCLES", "Items"] {
        let refused = repo.ensure_family(1, &family(variant));
        assert!(matches!(refused, Err(RepoError::Rejected(_))), "{variant}: {refused:?}");
    }
    // The built-in's data went through all of it untouched, and maintenance still works.
    repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 1000).unwrap();
    repo.compact(1, NOW, 1000).unwrap();
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW), [(T0 + 10, 5.0)]);
    assert_eq!(repo.stats().unwrap().loaded_dtos, 1 + internal.len() as u64);
}

/// The same item and cycle under two DTO ids is counted, never replaced unseen.
pub fn records_under_two_ids_are_counted(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.load(1, &[dto("first", T0, &[("r1", "ge-0", 1.0), ("r1", "ge-1", 2.0)])]).unwrap();
    assert_eq!(repo.stats().unwrap().replaced_records, 0);
    let report = repo.load(1, &[dto("second", T0, &[("r1", "ge-0", 3.0), ("r1", "ge-2", 4.0)])]).unwrap();
    assert_eq!((report.loaded, report.replaced), (1, 1));
    assert_eq!(repo.stats().unwrap().replaced_records, 1);
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW), [(T0 + 10, 3.0)], "the later record is kept");
}

/// The registry keeps each loaded DTO's digest, so a repeat with other content can be told.
pub fn digests_are_kept(repo: &dyn Repository) {
    prepare(repo, 1);
    let d = dto("d", T0, &[("r1", "ge-0", 5.0)]);
    repo.load(1, std::slice::from_ref(&d)).unwrap();
    assert_eq!(repo.loaded_dto("d").unwrap().unwrap().digest, Some(d.digest()));
}

pub fn retention_expires(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.load(1, &[dto("old", T0, &[("r1", "ge-0", 1.0)])]).unwrap();
    repo.load(1, &[dto("new", T0 + 20 * 86_400, &[("r1", "ge-0", 2.0)])]).unwrap();
    while repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 100).unwrap().more {}
    let day = Duration::from_secs(86_400);
    let retention = Retention { raw: 15 * day, hour: 15 * day, ..Retention::default() };
    assert!(repo.expire(1, NOW, &retention).unwrap().done > 0);
    assert_eq!(raw(repo, "r1", "ge-0", 0, NOW), [(T0 + 20 * 86_400 + 10, 2.0)]);
    assert!(repo.loaded_dto("old").unwrap().is_none());
    assert!(repo.loaded_dto("new").unwrap().is_some());
}

pub fn late_data_settles_before_it_is_rolled(repo: &dyn Repository) {
    prepare(repo, 1);
    // Loads stamp pending periods with the wall clock; this check reads it too.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let policy = RollupPolicy {
        grace: Duration::ZERO,
        settle: Duration::from_secs(5),
        max_delay: Duration::from_secs(300),
        retention: None,
    };
    repo.load(1, &[dto("late.1", T0, &[("r1", "ge-0", 1.0)])]).unwrap();
    assert_eq!(repo.roll_up(1, now, &policy, 100).unwrap().done, 0, "still being touched");
    let overdue = RollupPolicy { max_delay: Duration::ZERO, ..policy.clone() };
    assert_eq!(repo.roll_up(1, now + 1, &overdue, 100).unwrap().done, 3, "overdue: the hour, its day, its week");
    repo.load(1, &[dto("late.2", T0 + INTERVAL, &[("r1", "ge-0", 3.0)])]).unwrap();
    assert_eq!(repo.roll_up(1, now + 2, &policy, 100).unwrap().done, 0);
    // Settled: the hour, then its day (touched by the hour's roll, so it settles in turn).
    assert_eq!(repo.roll_up(1, now + 10, &policy, 100).unwrap().done, 1);
    while repo.roll_up(1, now + 100, &policy, 100).unwrap().more {}
    let compared = rollups_match_raw_by_resolution(repo, "Interface", "in_bps", "r1", "ge-0", T0, T0 + 3600).unwrap();
    assert_eq!(compared.iter().sum::<usize>(), 1);
}

/// A rule on Interface `in_bps` of every item, `op value`, opening after `for_polls`.
pub fn rule(op: &str, value: f64, for_polls: u32) -> RuleSpec {
    serde_json::from_value(serde_json::json!({
        "family": "Interface", "metric": "in_bps", "op": op, "value": value, "for_polls": for_polls,
        "severity": "major"
    }))
    .expect("a valid rule")
}

fn all_events(repo: &dyn Repository) -> Vec<crate::Event> {
    repo.events(&EventFilter { limit: 1000, ..Default::default() }).unwrap()
}

/// Loads one DTO per value, for item r1/ge-0, cycles from `first`.
fn polls(repo: &dyn Repository, epoch: u64, tag: &str, first: i64, values: &[f64]) {
    for (i, v) in values.iter().enumerate() {
        let cycle = first + i as i64 * INTERVAL;
        repo.load(epoch, &[dto(&format!("{tag}{i}"), cycle, &[("r1", "ge-0", *v)])]).unwrap();
    }
}

pub fn an_event_commits_with_its_data(repo: &dyn Repository) {
    prepare(repo, 1);
    let id = repo.create_rule(1, &rule(">", 100.0, 2)).unwrap().id;
    polls(repo, 1, "a", T0, &[150.0]);
    // The second violating poll fails with its batch: no event, no outbox entry, no state.
    let violating = dto("b", T0 + INTERVAL, &[("r1", "ge-0", 170.0)]);
    let mut bad = dto("bad", T0 + INTERVAL, &[("r2", "ge-0", 1.0)]);
    bad.metrics[1] = "no_such_metric".into();
    assert!(repo.load(1, &[violating.clone(), bad]).is_err());
    assert!(all_events(repo).is_empty());
    assert!(repo.outbox("r", 10).unwrap().is_empty());
    // The same poll loaded alone opens the event, at that poll, once.
    let report = repo.load(1, std::slice::from_ref(&violating)).unwrap();
    assert_eq!(report.transitions, 1);
    let events = all_events(repo);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.rule, e.state, e.opened_cycle, e.value, e.peak), (id, EventState::Open, T0 + INTERVAL, 170.0, 170.0));
    assert_eq!((e.device.as_str(), e.item.as_str(), e.threshold, e.op.as_str()), ("r1", "ge-0", 100.0, ">"));
    // Reloading the DTO (a resend) evaluates nothing twice.
    assert_eq!(repo.load(1, &[violating]).unwrap().transitions, 0);
    polls(repo, 1, "c", T0 + 2 * INTERVAL, &[200.0, 50.0, 50.0]);
    let events = all_events(repo);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.state, e.peak, e.cleared_at, e.clear_value),
        (EventState::Cleared, 200.0, Some(T0 + 3 * INTERVAL + 10), Some(50.0))
    );
    assert_eq!(e.cleared_by.as_deref(), Some("value"));
    let outbox: Vec<_> = repo.outbox("r", 10).unwrap().iter().map(|o| (o.event.id, o.transition)).collect();
    assert_eq!(outbox, [(e.id, EventState::Open), (e.id, EventState::Cleared)]);
    let stats = repo.stats().unwrap();
    assert_eq!((stats.outbox_depth, stats.open_events.len()), (2, 0));
}

pub fn a_fenced_load_writes_no_event(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.create_rule(1, &rule(">", 100.0, 1)).unwrap();
    repo.claim_epoch(2, "newer").unwrap();
    let stale = repo.load(1, &[dto("a", T0, &[("r1", "ge-0", 500.0)])]);
    assert!(matches!(stale, Err(RepoError::Fenced { .. })), "{stale:?}");
    assert!(all_events(repo).is_empty());
    assert!(repo.outbox("r", 10).unwrap().is_empty());
    assert!(matches!(repo.create_rule(1, &rule(">", 1.0, 1)), Err(RepoError::Fenced { .. })));
    // The newer epoch evaluates the same poll from scratch.
    assert_eq!(repo.load(2, &[dto("a", T0, &[("r1", "ge-0", 500.0)])]).unwrap().transitions, 1);
    assert_eq!(all_events(repo).len(), 1);
}

pub fn rule_changes_clear_open_events(repo: &dyn Repository) {
    prepare(repo, 1);
    let id = repo.create_rule(1, &rule(">", 100.0, 1)).unwrap().id;
    polls(repo, 1, "a", T0, &[150.0]);
    assert_eq!(
        repo.events(&EventFilter { state: Some(EventState::Open), limit: 10, ..Default::default() }).unwrap().len(),
        1
    );
    let mut changed = rule(">", 120.0, 1);
    changed.name = Some("in_bps high".into());
    assert_eq!(repo.update_rule(1, id, &changed).unwrap().unwrap().spec, changed);
    let events = all_events(repo);
    assert_eq!((events[0].state, events[0].cleared_by.as_deref()), (EventState::Cleared, Some("rule changed")));
    // The pair starts afresh under the changed rule: the next violation opens a new event.
    polls(repo, 1, "b", T0 + INTERVAL, &[150.0]);
    let events = all_events(repo);
    assert_eq!((events.len(), events[0].rule_name.as_str(), events[0].threshold), (2, "in_bps high", 120.0));
    assert!(repo.delete_rule(1, id).unwrap());
    assert!(!repo.delete_rule(1, id).unwrap());
    assert!(repo.update_rule(1, id, &changed).unwrap().is_none());
    assert!(repo.rule(id).unwrap().is_none());
    let events = all_events(repo);
    assert_eq!(events[0].cleared_by.as_deref(), Some("rule deleted"));
    assert_eq!(repo.stats().unwrap().open_events.values().sum::<u64>(), 0);
    // An acknowledgement is kept, and the first one stands.
    let acked = repo.ack_event(1, events[0].id, "noc-alice").unwrap().unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("noc-alice"));
    assert_eq!(repo.ack_event(1, events[0].id, "noc-bob").unwrap().unwrap().acked_by.as_deref(), Some("noc-alice"));
    assert!(repo.ack_event(1, 999_999, "x").unwrap().is_none());
}

pub fn late_polls_are_not_evaluated(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.create_rule(1, &rule(">", 100.0, 2)).unwrap();
    polls(repo, 1, "a", T0 + 10 * INTERVAL, &[150.0]);
    // A spooled poll of an older cycle arrives: stored, not evaluated.
    let report = repo.load(1, &[dto("late", T0 + 5 * INTERVAL, &[("r1", "ge-0", 999.0)])]).unwrap();
    assert_eq!((report.loaded, report.late, report.transitions), (1, 1, 0));
    assert_eq!(raw(repo, "r1", "ge-0", T0, NOW).len(), 2, "the late poll is stored");
    assert!(all_events(repo).is_empty());
    // The next poll in order completes the run of two.
    polls(repo, 1, "b", T0 + 11 * INTERVAL, &[150.0]);
    assert_eq!(all_events(repo)[0].opened_cycle, T0 + 11 * INTERVAL);
}

pub fn baselines_come_from_past_weeks(repo: &dyn Repository) {
    prepare(repo, 1);
    const WEEK: i64 = 7 * 86_400;
    let hour = T0 + 3 * WEEK + 9 * 3600;
    let mut spec = rule("above_baseline", 3.0, 1);
    spec.device = Some("r*".into());
    repo.create_rule(1, &spec).unwrap();
    let week_of = |weeks_back: i64, values: &[f64]| {
        for (i, v) in values.iter().enumerate() {
            let cycle = hour - weeks_back * WEEK + i as i64 * INTERVAL;
            repo.load(1, &[dto(&format!("w{weeks_back}-{i}"), cycle, &[("r1", "ge-0", *v)])]).unwrap();
        }
    };
    week_of(3, &[90.0, 110.0, 100.0]);
    repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 1000).unwrap();
    // One week is no baseline: nothing violates, however far off.
    repo.load(1, &[dto("x1", hour, &[("r1", "ge-0", 1e6)])]).unwrap();
    assert!(all_events(repo).is_empty());
    week_of(2, &[95.0, 105.0, 100.0]);
    repo.roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 1000).unwrap();
    // Two weeks: mean 100, population deviation sqrt(250/6) ≈ 6.45; 3 deviations ≈ 119.4.
    let next = hour + WEEK;
    repo.load(1, &[dto("y1", next - WEEK + INTERVAL, &[("r1", "ge-0", 119.0)])]).unwrap();
    assert!(all_events(repo).is_empty(), "119 is within 3 deviations");
    repo.load(1, &[dto("y2", next - WEEK + 2 * INTERVAL, &[("r1", "ge-0", 120.0)])]).unwrap();
    let events = all_events(repo);
    assert_eq!((events.len(), events[0].value, events[0].op.as_str()), (1, 120.0, "above_baseline"));
}

/// An hour whose sum saturated (two of the largest doubles: `+inf`) is not a baseline: without
/// that, its mean would be `+inf` with no spread, and every poll below it. The other weeks
/// still make one.
pub fn saturated_hours_make_no_baseline(repo: &dyn Repository) {
    prepare(repo, 1);
    const WEEK: i64 = 7 * 86_400;
    let hour = T0 + 4 * WEEK + 9 * 3600;
    repo.create_rule(1, &rule("below_baseline", 3.0, 1)).unwrap();
    let week_of = |weeks_back: i64, values: &[f64]| {
        for (i, v) in values.iter().enumerate() {
            let cycle = hour - weeks_back * WEEK + i as i64 * INTERVAL;
            repo.load(1, &[dto(&format!("w{weeks_back}-{i}"), cycle, &[("r1", "ge-0", *v)])]).unwrap();
        }
    };
    week_of(3, &[f64::MAX, f64::MAX]);
    week_of(2, &[f64::MAX, f64::MAX]);
    while repo.roll_up(1, NOW + 5 * WEEK, &RollupPolicy::immediate(Duration::ZERO), 1000).unwrap().more {}
    repo.load(1, &[dto("now-1", hour, &[("r1", "ge-0", 100.0)])]).unwrap();
    assert!(all_events(repo).is_empty(), "saturated hours are no baseline: {:?}", all_events(repo));
    week_of(1, &[90.0, 110.0, 100.0]);
    week_of(4, &[95.0, 105.0, 100.0]);
    while repo.roll_up(1, NOW + 5 * WEEK, &RollupPolicy::immediate(Duration::ZERO), 1000).unwrap().more {}
    // Mean 100, deviation sqrt(250/6) ≈ 6.45: 3 deviations below is 80.6.
    repo.load(1, &[dto("now-2", hour + INTERVAL, &[("r1", "ge-0", 81.0)])]).unwrap();
    assert!(all_events(repo).is_empty(), "81 is within 3 deviations");
    repo.load(1, &[dto("now-3", hour + 2 * INTERVAL, &[("r1", "ge-0", 80.0)])]).unwrap();
    let events = all_events(repo);
    assert_eq!((events.len(), events[0].value, events[0].op.as_str()), (1, 80.0, "below_baseline"));
}

pub fn the_outbox_delivers_in_order_and_is_bounded(repo: &dyn Repository) {
    prepare(repo, 1);
    repo.create_rule(1, &rule(">", 100.0, 1)).unwrap();
    // Six events opened and cleared: twelve notifications.
    polls(repo, 1, "a", T0, &[200.0, 0.0, 200.0, 0.0, 200.0, 0.0, 200.0, 0.0, 200.0, 0.0, 200.0, 0.0]);
    let receivers = ["am".to_owned(), "hook".to_owned()];
    let first = repo.outbox("am", 5).unwrap();
    assert_eq!(first.len(), 5);
    assert!(first.windows(2).all(|w| w[0].seq < w[1].seq));
    repo.delivered(1, Some(("am", first[4].seq)), &receivers).unwrap();
    assert_eq!(repo.outbox("am", 100).unwrap().len(), 7);
    assert_eq!(repo.outbox("hook", 100).unwrap().len(), 12, "each receiver has its own place");
    assert_eq!(repo.stats().unwrap().outbox_depth, 12, "kept until every receiver has had it");
    let all = repo.outbox("hook", 100).unwrap();
    repo.delivered(1, Some(("hook", all[11].seq)), &receivers).unwrap();
    assert_eq!(repo.stats().unwrap().outbox_depth, 7);
    assert!(matches!(repo.delivered(9, Some(("am", 1)), &receivers), Err(RepoError::Fenced { .. })));
    // A node configured with no receivers keeps what the other node's receivers have not had.
    repo.delivered(1, None, &[]).unwrap();
    assert_eq!(repo.stats().unwrap().outbox_depth, 7, "kept for the receivers with a place");
    repo.delivered(1, Some(("am", all[11].seq)), &[]).unwrap();
    assert_eq!(repo.stats().unwrap().outbox_depth, 0, "every receiver has had everything");
}

/// Item ids of a batch that failed are handed out again: what the failed batch learnt about
/// them (which rules apply) must not stick to the next items that get them.
pub fn a_failed_batch_leaves_no_rule_match_behind(repo: &dyn Repository) {
    prepare(repo, 1);
    let mut spec = rule(">", 100.0, 1);
    spec.device = Some("xa".into());
    repo.create_rule(1, &spec).unwrap();
    let mut bad = dto("bad", T0, &[("r2", "ge-0", 1.0)]);
    bad.metrics[1] = "no_such_metric".into();
    assert!(repo.load(1, &[dto("x", T0, &[("xa", "ge-0", 500.0)]), bad]).is_err());
    // Another device takes the ids the failed batch used: the rule is not for it.
    assert_eq!(repo.load(1, &[dto("y", T0, &[("yb", "ge-0", 500.0)])]).unwrap().transitions, 0);
    assert!(all_events(repo).is_empty());
    assert_eq!(repo.load(1, &[dto("x", T0 + INTERVAL, &[("xa", "ge-0", 500.0)])]).unwrap().transitions, 1);
    assert_eq!(all_events(repo)[0].device, "xa");
}

/// A series of one metric of Interface item r1/`item` at `resolution` over `[from, to)`.
fn series_of(repo: &dyn Repository, item: &str, metric: &str, resolution: Resolution, from: i64, to: i64) -> Series {
    let query = SeriesQuery {
        family: "Interface".into(),
        device: "r1".into(),
        item: item.into(),
        metric: metric.into(),
        from,
        to,
        resolution,
    };
    repo.series(&query).unwrap_or_else(|e| panic!("{item} {metric} {}: {e}", resolution.name()))
}

fn rollup_points(repo: &dyn Repository, item: &str, metric: &str, resolution: Resolution) -> Vec<crate::RollupPoint> {
    match series_of(repo, item, metric, resolution, T0, T0 + 7 * 86_400) {
        Series::Rollup(points) => points,
        other => panic!("{item} {}: {other:?}", resolution.name()),
    }
}

/// The same bits, but for the sign of a zero: SQLite's REAL columns store every whole-numbered
/// double as an integer, so `-0.0` comes back `0.0` there (PostgreSQL keeps the sign).
fn same_value(got: f64, want: f64) -> bool {
    got.to_bits() == want.to_bits() || (want == 0.0 && got == 0.0)
}

/// Top-N answers are ranked by average, highest first; an average that is not a number
/// (`+inf` and `-inf` met in one sum) comes last.
fn assert_ranked(entries: &[crate::TopEntry], what: &str) {
    let ranked = entries.windows(2).all(|w| w[1].avg.is_nan() || w[0].avg >= w[1].avg);
    assert!(ranked, "{what}: not ranked by average: {entries:?}");
}

/// Values at the edges of what a double holds (beyond the square root of the largest, the
/// largest of both signs, the smallest subnormal, a negative zero) loaded into one hour among
/// ordinary values: they load and read back bit for bit, every period rolls up (the hour
/// after, its day, its week: one bad value never stops rollups), minimum and maximum are exact,
/// a sum beyond the range saturates to an infinity, and top-N ranks without an error.
pub fn extreme_values_roll_up_and_rank(repo: &dyn Repository) {
    prepare(repo, 1);
    let hour = T0;
    let edge = [3.0, 1e200, 7.0, -1.7e308, 1.7e308, 5e-324, -0.0, 11.0, 1e-200, -5e-324, 2.5, 1.0];
    // (item, value in cycle c of the hour): out_bps is the negation, so both signs are seen.
    let first_hour = |c: usize| -> Vec<(&'static str, f64)> {
        vec![
            ("ge-0", 10.0 + c as f64),
            ("edge", edge[c]),
            ("max", f64::MAX),
            ("tiny", if c == 0 { 5e-324 } else { -0.0 }),
        ]
    };
    let make = |id: String, cycle: i64, values: &[(&str, f64)]| Dto {
        id,
        collector: "dc1".into(),
        family: "Interface".into(),
        cycle,
        interval: INTERVAL as u32,
        metrics: vec!["in_bps".into(), "out_bps".into()],
        records: values
            .iter()
            .enumerate()
            .map(|(i, (item, v))| Record {
                device: "r1".into(),
                item: (*item).into(),
                ts: cycle + 10 + i as i64,
                values: vec![Some(*v), Some(-*v)],
            })
            .collect(),
    };
    let mut loaded: Vec<Dto> =
        (0..12).map(|c| make(format!("x{c}"), hour + c as i64 * INTERVAL, &first_hour(c))).collect();
    // The following hour: ordinary values, and the largest negative double for "max" (its day
    // then sums +inf and -inf).
    for c in 0..2 {
        let values = [("ge-0", 100.0 + 2.0 * c as f64), ("edge", 5.0), ("max", f64::MIN), ("tiny", 5e-324)];
        loaded.push(make(format!("y{c}"), hour + 3600 + c * INTERVAL, &values));
    }
    // And an ordinary value the next day.
    loaded.push(make("z".into(), hour + 86_400 + 3600, &[("ge-0", 50.0)]));
    for d in &loaded {
        repo.load(1, std::slice::from_ref(d)).unwrap_or_else(|e| panic!("loading {}: {e}", d.id));
    }
    let top = |from: i64, to: i64, what: &str| {
        let query = TopQuery { family: "Interface".into(), metric: "in_bps".into(), from, to, n: 10 };
        let entries = repo.top(&query).unwrap_or_else(|e| panic!("top-N {what}: {e}"));
        assert_eq!(entries.len(), 4, "{what}: {entries:?}");
        assert_ranked(&entries, what);
        entries
    };
    let names = |entries: &[crate::TopEntry]| entries.iter().map(|e| e.item.clone()).collect::<Vec<_>>();
    // Before the rollup, from raw data.
    let raw_top = top(hour, hour + 3600, "the pending hour, from raw data");
    assert_eq!(names(&raw_top), ["max", "edge", "ge-0", "tiny"]);
    assert_eq!(raw_top[0].avg, f64::INFINITY, "a sum beyond the range saturates: {raw_top:?}");
    assert_eq!(raw_top[2].avg, 15.5);

    for round in 0.. {
        assert!(round < 100, "rollups never finish");
        let progress = repo
            .roll_up(1, NOW, &RollupPolicy::immediate(Duration::ZERO), 100)
            .unwrap_or_else(|e| panic!("roll_up: {e}"));
        if !progress.more {
            break;
        }
    }
    assert_eq!(repo.stats().unwrap().pending_rollups, 0, "every period is rolled up");
    repo.compact(1, NOW, 1000).unwrap();
    repo.expire(1, NOW, &Retention::default()).unwrap();

    // Raw values read back as they were sent.
    let mut sent: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    for d in &loaded {
        for r in &d.records {
            sent.insert((r.item.clone(), r.ts), r.values.iter().map(|v| v.unwrap()).collect());
        }
    }
    let mut stored = 0;
    repo.raw_records("Interface", &mut |r| {
        let want = &sent[&(r.item.clone(), r.ts)];
        let columns = repo.family_columns("Interface").unwrap();
        for (metric, want) in ["in_bps", "out_bps"].iter().zip(want) {
            let got = r.values[columns.iter().position(|c| c == metric).unwrap()].unwrap();
            assert!(same_value(got, *want), "{} {metric} at {}: stored {got:e}, sent {want:e}", r.item, r.ts);
        }
        stored += 1;
    })
    .unwrap();
    assert_eq!(stored, sent.len());
    for item in ["ge-0", "edge", "max", "tiny"] {
        let Series::Raw(points) = series_of(repo, item, "in_bps", Resolution::Raw, T0, NOW) else { panic!() };
        let want: Vec<(i64, f64)> =
            sent.iter().filter(|((i, _), _)| i == item).map(|((_, ts), v)| (*ts, v[0])).collect();
        assert_eq!(points.len(), want.len(), "{item}");
        for (got, want) in points.iter().zip(&want) {
            assert!(got.0 == want.0 && same_value(got.1, want.1), "{item}: read {got:?}, sent {want:?}");
        }
    }

    // Minimum and maximum are exact at every resolution; sums beyond the range saturate.
    for metric in ["in_bps", "out_bps"] {
        for resolution in Resolution::ROLLUPS {
            let points = rollup_points(repo, "edge", metric, resolution);
            let first = points.first().unwrap_or_else(|| panic!("edge {metric} {}: no rollup", resolution.name()));
            assert_eq!((first.min.to_bits(), first.max.to_bits()), ((-1.7e308f64).to_bits(), 1.7e308f64.to_bits()));
            assert_eq!(first.count, if resolution == Resolution::Hour { 12 } else { 14 });
        }
    }
    let edge_hour = rollup_points(repo, "edge", "in_bps", Resolution::Hour);
    assert_eq!(edge_hour.len(), 2, "{edge_hour:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    assert!(close(edge_hour[0].avg, 1e200 / 12.0), "the largest values cancel: {edge_hour:?}");
    let max_hours = rollup_points(repo, "max", "in_bps", Resolution::Hour);
    assert_eq!(max_hours.len(), 2);
    assert_eq!((max_hours[0].min, max_hours[0].max, max_hours[0].avg), (f64::MAX, f64::MAX, f64::INFINITY));
    assert_eq!((max_hours[1].min, max_hours[1].max, max_hours[1].avg), (f64::MIN, f64::MIN, f64::NEG_INFINITY));
    for resolution in [Resolution::Day, Resolution::Week] {
        let p = rollup_points(repo, "max", "out_bps", resolution);
        assert_eq!((p.len(), p[0].min, p[0].max, p[0].count), (1, f64::MIN, f64::MAX, 14), "{p:?}");
        assert!(p[0].avg.is_nan(), "+inf and -inf in one sum: {p:?}");
    }
    let tiny = rollup_points(repo, "tiny", "in_bps", Resolution::Hour);
    assert_eq!(tiny[0].max.to_bits(), 5e-324f64.to_bits(), "{tiny:?}");
    assert!(same_value(tiny[0].min, -0.0) && tiny[0].count == 12, "{tiny:?}");

    // An ordinary item beside them rolls up as it would alone.
    let compared = rollups_match_raw_by_resolution(repo, "Interface", "in_bps", "r1", "ge-0", T0, T0 + 7 * 86_400);
    assert_eq!(compared.unwrap(), [3, 2, 1], "hours, days and the week of ge-0");
    let ordinary = rollup_points(repo, "ge-0", "in_bps", Resolution::Hour);
    assert_eq!((ordinary[0].min, ordinary[0].max, ordinary[0].avg, ordinary[0].count), (10.0, 21.0, 15.5, 12));

    // Top-N: one rolled-up hour, two hours, and a range read from raw data.
    let one = top(hour, hour + 3600, "one rolled-up hour");
    assert_eq!(names(&one), ["max", "edge", "ge-0", "tiny"]);
    assert_eq!((one[0].avg, one[0].min, one[0].max), (f64::INFINITY, f64::MAX, f64::MAX));
    assert!(close(one[1].avg, 1e200 / 12.0), "{one:?}");
    assert_eq!((one[2].avg, one[2].min, one[2].max, one[2].count), (15.5, 10.0, 21.0, 12));
    assert_eq!((one[3].max.to_bits(), one[3].avg), (5e-324f64.to_bits(), 0.0), "{one:?}");
    let two = top(hour, hour + 7200, "two rolled-up hours");
    assert_eq!(names(&two), ["edge", "ge-0", "tiny", "max"]);
    assert!(two[3].avg.is_nan() && two[3].count == 14, "+inf and -inf: {two:?}");
    assert_eq!(two[1].avg, (186.0 + 202.0) / 14.0);
    let unaligned = top(hour + 60, hour + 3660, "a range not on hour boundaries");
    assert_eq!(names(&unaligned), ["max", "edge", "ge-0", "tiny"]);
    assert_eq!(unaligned[0].avg, f64::INFINITY);
}

/// A pending period that fails for good (made so by `break_period`, given the period's start,
/// which is before any data) does not hold up the others, nor compaction and retention: it is
/// counted, stays pending, and is tried again after a backoff, failing quietly meanwhile.
/// Not in [`conformance_tests!`]: each backend breaks a period its own way.
pub fn a_failing_period_does_not_block_the_others(repo: &dyn Repository, break_period: &dyn Fn(i64)) {
    prepare(repo, 1);
    for c in 0..24 {
        let cycle = T0 + c * INTERVAL;
        repo.load(1, &[dto(&format!("f{c}"), cycle, &[("r1", "ge-0", c as f64)])]).unwrap();
    }
    break_period(T0 - 3600);
    let policy = RollupPolicy::immediate(Duration::ZERO);
    let mut rounds = 0;
    while repo.roll_up(1, NOW, &policy, 2).unwrap_or_else(|e| panic!("roll_up: {e}")).more {
        rounds += 1;
        assert!(rounds < 100, "rollups never finish");
    }
    let stats = repo.stats().unwrap();
    assert_eq!((stats.pending_rollups, stats.failing_rollups), (1, 1), "only the broken period is left");
    let compared = rollups_match_raw_by_resolution(repo, "Interface", "in_bps", "r1", "ge-0", T0, T0 + 7 * 86_400);
    assert_eq!(compared.unwrap(), [2, 1, 1], "the hours after it, their day and week");
    repo.compact(1, NOW, 100).unwrap();
    repo.expire(1, NOW, &Retention::default()).unwrap();
    // Within its backoff it is not tried; after it, it is, and fails again without an error.
    assert_eq!(repo.roll_up(1, NOW + 59, &policy, 100).unwrap(), crate::Progress { done: 0, more: false });
    assert_eq!(repo.roll_up(1, NOW + 3600, &policy, 100).unwrap(), crate::Progress { done: 0, more: false });
    assert_eq!(repo.stats().unwrap().failing_rollups, 1);
    // New data still rolls up.
    repo.load(1, &[dto("later", T0 + 2 * 3600, &[("r1", "ge-0", 9.0)])]).unwrap();
    repo.roll_up(1, NOW + 3600, &policy, 100).unwrap();
    assert_eq!(repo.stats().unwrap().pending_rollups, 1);
    let compared = rollups_match_raw_by_resolution(repo, "Interface", "in_bps", "r1", "ge-0", T0, T0 + 7 * 86_400);
    assert_eq!(compared.unwrap(), [3, 1, 1]);
    // An outage is not a failure of the period: a fenced writer still stops.
    assert!(matches!(repo.roll_up(0, NOW + 7200, &policy, 100), Err(RepoError::Fenced { .. })));
}
