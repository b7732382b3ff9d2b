//! `pollux repository copy` from a SQLite repository made by the query bench's generator into a
//! real PostgreSQL: interrupted by kill -9 in the middle of the raw data and run again, it
//! resumes, and afterwards every series, rollup, registry entry, claim, rule and event reads
//! the same through the repository API on both. The copy then takes new loads.

mod common;

use common::*;
use pollux_model::{Catalog, Dto, Record, Resolution};
use pollux_repository::{
    EventFilter, ItemFilter, OpenOptions, Repository, RollupPolicy, Series, SeriesQuery, SqliteOptions,
    SqliteRepository,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEVICES: usize = 10;
const INTERFACES: usize = 20;
const METRICS: [&str; 8] =
    ["in_bps", "out_bps", "in_pps", "out_pps", "in_errors", "out_errors", "in_discards", "out_discards"];

/// The query bench's DTO: `rtr-<d>` x `ge-0/0/<i>`, eight counter rates, records spread over
/// the cycle's first four minutes.
fn bench_dto(id: &str, cycle: i64, seed: &mut u64) -> Dto {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % 1_000_000_000) as f64
    };
    let records = (0..DEVICES * INTERFACES)
        .map(|n| Record {
            device: format!("rtr-{:05}", n / INTERFACES),
            item: format!("ge-0/0/{}", n % INTERFACES),
            ts: cycle + (n % 240) as i64,
            values: (0..METRICS.len()).map(|m| Some((next() / (m + 1) as f64).round())).collect(),
        })
        .collect();
    Dto {
        id: id.into(),
        collector: "bench".into(),
        family: "Interface".into(),
        cycle,
        interval: 300,
        metrics: METRICS.iter().map(|m| m.to_string()).collect(),
        records,
    }
}

/// Two days of cycles, half compacted into history, every rollup computed, a rule with events.
fn source(path: &std::path::Path) -> (i64, i64) {
    let repo = SqliteRepository::open(path, SqliteOptions::default()).unwrap();
    repo.claim_epoch(1, "old-da1").unwrap();
    repo.claim_epoch(3, "old-da2").unwrap();
    for family in Catalog::builtin().iter() {
        repo.ensure_family(3, family).unwrap();
    }
    let mut rule = pollux_repository::conformance::rule(">", 999_000_000.0, 1);
    rule.metric = "in_bps".into();
    repo.create_rule(3, &rule).unwrap();
    let end = week_base() + 9 * 86_400;
    let start = end - 2 * 86_400;
    let mut seed = 88172645463325252u64;
    for (c, cycle) in (start..end).step_by(300).enumerate() {
        repo.load(3, &[bench_dto(&format!("q.{c}"), cycle, &mut seed)]).unwrap();
    }
    while repo.compact(3, end - 86_400, 1000).unwrap().more {}
    let policy = RollupPolicy::immediate(Duration::ZERO);
    while repo.roll_up(3, unix_now(), &policy, 10_000).unwrap().more {}
    // Every notification delivered: the outbox is empty, the receiver's place far from 0.
    let sent = repo.outbox("am", 100_000).unwrap();
    assert!(!sent.is_empty());
    repo.delivered(3, Some(("am", sent.last().unwrap().seq)), &["am".to_owned()]).unwrap();
    assert_eq!(repo.stats().unwrap().outbox_depth, 0);
    (start, end)
}

fn copy(from: &std::path::Path, to: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["repository", "copy", "--from", &format!("sqlite:{}", from.display()), "--to", to]);
    cmd
}

#[test]
fn a_copy_interrupted_and_resumed_reads_the_same_as_its_source() {
    let dir = tempdir();
    let path = dir.path().join("repository.sqlite");
    let Some(server) = use_postgres(dir.path()) else { return };
    let (start, end) = source(&path);
    let url = server.database("copy").unwrap();

    // kill -9 once the raw data is partly copied.
    let mut child = copy(&path, &url).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let interrupted = lines.by_ref().map_while(Result::ok).find(|l| {
        seen.push(l.clone());
        l.starts_with("Interface recent: ") && !l.ends_with("100%")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(interrupted.is_some(), "the copy reports its progress per step: {seen:?}");
    // An aggregator will not start on a copy that has not finished: its data is partial.
    let partial = pollux_repository::open(&pollux_repository::Location::Postgres(url.clone()), &OpenOptions::default());
    assert!(matches!(&partial, Err(e) if e.to_string().contains("has not finished")), "{:?}", partial.err());
    let out = copy(&path, &url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("copied and verified") && stdout.contains("Interface raw"), "{stdout}");

    let from = SqliteRepository::open(&path, SqliteOptions::default()).unwrap();
    let to =
        pollux_repository::open(&pollux_repository::Location::Postgres(url.clone()), &OpenOptions::default()).unwrap();
    assert_eq!(to.registry(0, 1_000_000).unwrap(), from.registry(0, 1_000_000).unwrap());
    assert_eq!(to.claims().unwrap(), from.claims().unwrap());
    assert_eq!(to.rules().unwrap(), from.rules().unwrap());
    let all = EventFilter { limit: 100_000, ..Default::default() };
    let events = from.events(&all).unwrap();
    assert!(!events.is_empty(), "the source has events to copy");
    assert_eq!(to.events(&all).unwrap(), events);
    assert_eq!(to.outbox("am", 100_000).unwrap(), from.outbox("am", 100_000).unwrap());
    assert_eq!(to.devices().unwrap(), from.devices().unwrap());
    let items = from.items(&ItemFilter { limit: 100_000, ..Default::default() }).unwrap();
    assert_eq!(to.items(&ItemFilter { limit: 100_000, ..Default::default() }).unwrap(), items);
    let (mut series, mut points) = (0, 0);
    for item in &items {
        for metric in METRICS {
            for resolution in [Resolution::Raw, Resolution::Hour, Resolution::Day, Resolution::Week] {
                let q = SeriesQuery {
                    family: item.family.clone(),
                    device: item.device.clone(),
                    item: item.item.clone(),
                    metric: metric.into(),
                    from: start - 7 * 86_400,
                    to: end + 7 * 86_400,
                    resolution,
                };
                let source = from.series(&q).unwrap();
                points += match &source {
                    Series::Raw(p) => p.len(),
                    Series::Rollup(p) => p.len(),
                };
                assert_eq!(to.series(&q).unwrap(), source, "{q:?}");
                series += 1;
            }
        }
    }
    assert_eq!(series, DEVICES * INTERFACES * 8 * 4);
    assert!(points > DEVICES * INTERFACES * 8 * 576, "every raw point and rollup compared: {points}");

    drop(from);
    // Run again, a finished copy is left alone (it may be in service by then).
    let out = copy(&path, &url).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("finished copy"));

    // The copy is a working repository: a newer epoch claims it and loads new items.
    to.claim_epoch(4, "new-da1").unwrap();
    let mut seed = 7;
    let mut dto = bench_dto("after-the-copy", end, &mut seed);
    dto.records[0].device = "new-router".into();
    dto.records[1].device = "another-new-router".into();
    dto.records[1].values[0] = Some(999_999_999.0);
    let report = to.load(4, &[dto]).unwrap();
    assert_eq!((report.loaded, report.transitions > 0), (1, true));
    // Numbered past what the receiver had before the copy, so it is sent.
    assert_eq!(to.outbox("am", 100).unwrap().len(), 1, "a notification made after the copy reaches the receiver");
    let new = ItemFilter { device: Some("new-router".into()), limit: 10, ..Default::default() };
    assert_eq!(to.items(&new).unwrap().len(), 1);

    // A copy into a database that holds another repository is refused.
    let other = server.database("other").unwrap();
    let repo = pollux_repository::open(&pollux_repository::Location::Postgres(other.clone()), &OpenOptions::default())
        .unwrap();
    repo.claim_epoch(1, "x").unwrap();
    repo.ensure_family(1, Catalog::builtin().get("Interface").unwrap()).unwrap();
    repo.load(1, &[bench_dto("x", start, &mut seed)]).unwrap();
    let out = copy(&path, &other).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a repository"));
}
