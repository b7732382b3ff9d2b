//! `pollux repository copy`: moves an existing SQLite repository into PostgreSQL.
//!
//! ```text
//!   SQLite (read through its own connection)          PostgreSQL (schema made by PostgresRepository)
//!   family_state ───────────────────────────────────▶ f<N>_* tables, one partition per day
//!   items, loaded_dtos (ids and seqs kept) ─── COPY ─▶ items, loaded_dtos; sequences moved past
//!   recent_<F> by cycle, raw_<F> by item ───── COPY ─▶ f<N>_raw
//!   hour/day/week by period ────────────────── COPY ─▶ f<N>_hour/_day/_week
//!   epochs, rollup_pending, rules, rule_state, eval_watermark, events, outbox, cursors, meta
//! ```
//!
//! Every step copies key ranges, each in one destination transaction together with the step's
//! place in `copy_progress`: a copy that is stopped (Ctrl-C, kill -9, a lost connection) resumes
//! where it stopped when run again. The counts of every table are compared at the end.
//!
//! Both aggregators must be stopped: the copy reads a repository nobody writes.

use crate::postgres::{client_config, create_partition, ensure_tables, PostgresRepository};
use crate::sqlite::{FamilyTables as SqliteTables, SqliteOptions, SqliteRepository};
use crate::{OpenOptions, RepoError, Result};
use pollux_model::Resolution;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};
use rusqlite::types::Value;
use std::path::Path;

/// One table's rows in the source and in the destination after the copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    pub table: String,
    pub source: u64,
    pub copied: u64,
}

/// Where the copy is: a step's name, units done and units in all (items, cycles, periods).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Copies the SQLite repository at `from` into the (empty, or partly copied by an earlier run)
/// PostgreSQL database at `to`; returns the counts compared, or an error naming the first that
/// differs.
pub fn sqlite_to_postgres(from: &Path, to: &str, progress: Progress<'_>) -> Result<Vec<Count>> {
    if !from.is_file() {
        return Err(RepoError::Rejected(format!("{}: no SQLite repository there", from.display())));
    }
    // Makes the schema; then the copy writes with its own connection.
    drop(PostgresRepository::open_for_copy(to, &OpenOptions::default())?);
    let mut pg = client_config(to, &OpenOptions::default())?.connect(NoTls)?;
    pg.batch_execute(
        "CREATE TABLE IF NOT EXISTS copy_progress (step text PRIMARY KEY, position bigint NOT NULL, done boolean NOT NULL)",
    )?;
    let finished = pg.query_opt("SELECT 1 FROM copy_progress WHERE step = 'finished'", &[])?.is_some();
    if finished {
        // It may have been put in service since: copying again would undo what it took.
        return Err(RepoError::Rejected("the destination holds a finished copy already; nothing done".into()));
    }
    let resuming = pg.query_one("SELECT count(*) FROM copy_progress", &[])?.get::<_, i64>(0) > 0;
    let holds: i64 = pg
        .query_one(
            "SELECT (SELECT count(*) FROM loaded_dtos) + (SELECT count(*) FROM items) + (SELECT count(*) FROM epochs)
                  + (SELECT count(*) FROM family_state) + (SELECT count(*) FROM rules)",
            &[],
        )?
        .get(0);
    if !resuming && holds > 0 {
        return Err(RepoError::Rejected(
            "the destination already holds a repository; copy into an empty database".into(),
        ));
    }
    // The rollback journal: safe wherever the file lives (WAL is not, on NFS); the aggregator
    // sets its own journal when it opens the file again.
    let options = SqliteOptions { journal: crate::JournalMode::Truncate, ..SqliteOptions::default() };
    let source = SqliteRepository::open(from, options)?;
    let families: Vec<(String, Vec<String>)> = source.read(|c| {
        let mut stmt = c.prepare("SELECT family, columns FROM family_state ORDER BY family")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows
            .map(|r| r.map(|(f, c)| (f, c.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect())))
            .collect::<rusqlite::Result<_>>()?)
    })?;
    let mut copy = Copy { source: &source, pg: &mut pg, progress };
    copy.small_tables()?;
    for (name, columns) in &families {
        let src = source.family(name)?;
        let dst = {
            let mut tx = copy.pg.transaction()?;
            let tables = ensure_tables(&mut tx, name, columns)?;
            tx.commit()?;
            tables
        };
        copy.raw(&src, &dst)?;
        for resolution in Resolution::ROLLUPS {
            copy.rollup(&src, &dst, resolution)?;
        }
    }
    copy.finish()?;
    let counts = copy.verify(&families)?;
    copy.mark_done("finished")?;
    Ok(counts)
}

struct Copy<'a, 'p> {
    source: &'a SqliteRepository,
    pg: &'a mut Client,
    progress: Progress<'p>,
}

/// A column's type in the destination (and how to read it from SQLite).
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

impl Kind {
    fn pg(self) -> Type {
        match self {
            Kind::Int => Type::INT8,
            Kind::Real => Type::FLOAT8,
            Kind::Text => Type::TEXT,
            Kind::Blob => Type::BYTEA,
        }
    }
}

/// A SQLite value as the destination column wants it.
enum Cell {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl Cell {
    fn of(value: Value, kind: Kind) -> Cell {
        match (kind, value) {
            (Kind::Int, Value::Integer(n)) => Cell::Int(Some(n)),
            (Kind::Int, Value::Real(x)) => Cell::Int(Some(x as i64)),
            (Kind::Int, _) => Cell::Int(None),
            (Kind::Real, Value::Real(x)) => Cell::Real(Some(x)),
            (Kind::Real, Value::Integer(n)) => Cell::Real(Some(n as f64)),
            (Kind::Real, _) => Cell::Real(None),
            (Kind::Text, Value::Text(t)) => Cell::Text(Some(t)),
            (Kind::Text, _) => Cell::Text(None),
            (Kind::Blob, Value::Blob(b)) => Cell::Blob(Some(b)),
            (Kind::Blob, _) => Cell::Blob(None),
        }
    }
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Real(v) => v,
            Cell::Text(v) => v,
            Cell::Blob(v) => v,
        }
    }
}

/// One step: rows of `select` (taking `?1 < key <= ?2`) copied into `target (columns)`, by key
/// ranges of `width`.
struct Step<'s> {
    name: String,
    select: String,
    target: String,
    kinds: &'s [Kind],
    /// The key's smallest and largest values in the source.
    range: Option<(i64, i64)>,
    width: i64,
}

impl Copy<'_, '_> {
    fn position(&mut self, step: &str) -> Result<Option<(i64, bool)>> {
        Ok(self
            .pg
            .query_opt("SELECT position, done FROM copy_progress WHERE step = $1", &[&step])?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn run(&mut self, step: Step<'_>) -> Result<()> {
        let Some((low, high)) = step.range else { return self.mark_done(&step.name) };
        let mut at = match self.position(&step.name)? {
            Some((_, true)) => return Ok(()),
            Some((position, false)) => position,
            None => low - 1,
        };
        let total = (high - low + 1) as u64;
        let types: Vec<Type> = step.kinds.iter().map(|k| k.pg()).collect();
        while at < high {
            let until = at.saturating_add(step.width).min(high);
            let rows: Vec<Vec<Cell>> = self.source.read(|c| {
                let mut stmt = c.prepare_cached(&step.select)?;
                let mut rows = stmt.query(rusqlite::params![at, until])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let row = (0..step.kinds.len())
                        .map(|i| Ok(Cell::of(r.get::<_, Value>(i)?, step.kinds[i])))
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.push(row);
                }
                Ok(out)
            })?;
            let mut tx = self.pg.transaction()?;
            let mut writer =
                BinaryCopyInWriter::new(tx.copy_in(&format!("COPY {} FROM STDIN BINARY", step.target))?, &types);
            for row in &rows {
                let fields: Vec<&(dyn ToSql + Sync)> = row.iter().map(Cell::sql).collect();
                writer.write(&fields)?;
            }
            writer.finish()?;
            let done = until >= high;
            tx.execute(
                "INSERT INTO copy_progress (step, position, done) VALUES ($1, $2, $3)
                 ON CONFLICT (step) DO UPDATE SET position = excluded.position, done = excluded.done",
                &[&step.name, &until, &done],
            )?;
            tx.commit()?;
            at = until;
            (self.progress)(&step.name, (until - low + 1) as u64, total);
        }
        Ok(())
    }

    fn mark_done(&mut self, step: &str) -> Result<()> {
        self.pg.execute(
            "INSERT INTO copy_progress (step, position, done) VALUES ($1, 0, true)
             ON CONFLICT (step) DO UPDATE SET done = true",
            &[&step],
        )?;
        Ok(())
    }

    fn range(&self, sql: &str) -> Result<Option<(i64, i64)>> {
        self.source.read(|c| {
            let (low, high): (Option<i64>, Option<i64>) = c.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(low.zip(high))
        })
    }

    /// Items, the registry, claims, pending rollups, rules and their state, events, the outbox.
    fn small_tables(&mut self) -> Result<()> {
        use Kind::*;
        let tables: [(&str, &str, &str, &[Kind], i64); 10] = [
            ("items", "id", "id, family, device, item, first_seen", &[Int, Text, Text, Text, Int], 20_000),
            (
                "loaded_dtos",
                "seq",
                "seq, id, epoch, family, collector, cycle, records, loaded_at, digest",
                &[Int, Text, Int, Text, Text, Int, Int, Int, Blob],
                20_000,
            ),
            ("epochs", "epoch", "epoch, node, claimed_at, after_seq", &[Int, Text, Int, Int], 1 << 40),
            (
                "rollup_pending",
                "period",
                "resolution, family, period, marked_at, touched_at",
                &[Text, Text, Int, Int, Int],
                1 << 40,
            ),
            ("rules", "id", "id, family, spec, created_at, updated_at", &[Int, Text, Text, Int, Int], 1 << 40),
            (
                "rule_state",
                "rule_id",
                "rule_id, item_id, last_cycle, history, event_id, peak, clear_run",
                &[Int, Int, Int, Int, Int, Real, Int],
                1,
            ),
            ("eval_watermark", "cycle", "family, collector, interval, cycle", &[Text, Text, Int, Int], 1 << 40),
            (
                "events",
                "id",
                "id, rule_id, rule_name, severity, family, metric, device, item, state, opened_at, opened_cycle, \
                 value, op, threshold, peak, cleared_at, clear_value, cleared_by, acked_by, acked_at, epoch",
                &[
                    Int, Int, Text, Text, Text, Text, Text, Text, Text, Int, Int, Real, Text, Real, Real, Int, Real,
                    Text, Text, Int, Int,
                ],
                20_000,
            ),
            ("outbox", "seq", "seq, event_id, transition, created_at", &[Int, Int, Text, Int], 20_000),
            ("notify_cursors", "seq", "receiver, seq", &[Text, Int], 1 << 40),
        ];
        for (table, key, columns, kinds, width) in tables {
            let range = self.range(&format!("SELECT min({key}), max({key}) FROM {table}"))?;
            self.run(Step {
                name: table.to_owned(),
                select: format!("SELECT {columns} FROM {table} WHERE {key} > ?1 AND {key} <= ?2"),
                target: format!("{table} ({columns})"),
                kinds,
                range,
                width,
            })?;
        }
        Ok(())
    }

    fn raw(&mut self, src: &SqliteTables, dst: &crate::postgres::FamilyTables) -> Result<()> {
        let cols: String = src.columns.iter().map(|c| format!(", \"{c}\"")).collect();
        let kinds: Vec<Kind> = [Kind::Int; 3].into_iter().chain(src.columns.iter().map(|_| Kind::Real)).collect();
        // Every day the source holds data for gets its partition first.
        let days = self.range(&format!(
            "SELECT min(c) / 86400, max(c) / 86400 FROM (
                SELECT min(cycle) AS c FROM {recent} UNION ALL SELECT max(cycle) FROM {recent}
                UNION ALL SELECT min(cycle) FROM {raw} UNION ALL SELECT max(cycle) FROM {raw})",
            recent = src.recent(),
            raw = src.raw()
        ))?;
        if let Some((first, last)) = days {
            for day in first..=last {
                create_partition(self.pg, dst, day)?;
            }
        }
        let target = format!("{} (item_id, cycle, ts{cols})", dst.raw());
        // The recent table is clustered by cycle, the history by item: each read in its order.
        let recent_range = self.range(&format!("SELECT min(cycle), max(cycle) FROM {}", src.recent()))?;
        self.run(Step {
            name: format!("{} recent", src.name),
            select: format!("SELECT item_id, cycle, ts{cols} FROM {} WHERE cycle > ?1 AND cycle <= ?2", src.recent()),
            target: target.clone(),
            kinds: &kinds,
            range: recent_range,
            // One 5-minute cycle per transaction: a million rows at the largest installations.
            width: 300,
        })?;
        let raw_range = self.range(&format!("SELECT min(item_id), max(item_id) FROM {}", src.raw()))?;
        self.run(Step {
            name: format!("{} history", src.name),
            select: format!("SELECT item_id, cycle, ts{cols} FROM {} WHERE item_id > ?1 AND item_id <= ?2", src.raw()),
            target,
            kinds: &kinds,
            range: raw_range,
            // 50 items: 35 days at a 5-minute cycle is half a million rows.
            width: 50,
        })?;
        Ok(())
    }

    fn rollup(
        &mut self,
        src: &SqliteTables,
        dst: &crate::postgres::FamilyTables,
        resolution: Resolution,
    ) -> Result<()> {
        let stats: String = src
            .columns
            .iter()
            .map(|c| format!(", \"{c}_min\", \"{c}_max\", \"{c}_sum\", \"{c}_count\", \"{c}_sq\""))
            .collect();
        let kinds: Vec<Kind> = [Kind::Int; 2]
            .into_iter()
            .chain(src.columns.iter().flat_map(|_| [Kind::Real, Kind::Real, Kind::Real, Kind::Int, Kind::Real]))
            .collect();
        let table = src.rollup(resolution);
        let range = self.range(&format!("SELECT min(period), max(period) FROM {table}"))?;
        let length = resolution.length().expect("rollups have periods");
        self.run(Step {
            name: format!("{} {}", src.name, resolution.name()),
            select: format!("SELECT period, item_id{stats} FROM {table} WHERE period > ?1 AND period <= ?2"),
            target: format!("{} (period, item_id{stats})", dst.rollup(resolution)),
            kinds: &kinds,
            range,
            // One period: a million rows of hourly rollups at the largest installations.
            width: length,
        })
    }

    /// The repository-wide values, and sequences moved past the ids copied.
    fn finish(&mut self) -> Result<()> {
        let meta: Vec<(String, i64)> = self.source.read(|c| {
            let mut stmt = c.prepare(
                "SELECT key, value FROM meta WHERE key IN ('epoch', 'replaced_records', 'outbox_dropped', 'rules_version')",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })?;
        let intervals: Vec<(String, i64)> = self.source.read(|c| {
            let mut stmt = c.prepare("SELECT family, max_interval FROM family_state")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })?;
        let mut tx = self.pg.transaction()?;
        for (key, value) in meta {
            // Never lower: the epoch only ever rises.
            tx.execute("UPDATE meta SET value = greatest(value, $2) WHERE key = $1", &[&key, &value])?;
        }
        for (family, interval) in intervals {
            tx.execute("UPDATE family_state SET max_interval = $2 WHERE family = $1", &[&family, &interval])?;
        }
        // Past every number ever handed out, not only those still held: SQLite's AUTOINCREMENT
        // high-water marks, and the receivers' places in the outbox (an emptied outbox would
        // otherwise number new notifications below what the receivers have had, and they
        // would never be sent).
        let high = |table: &str| -> Result<i64> {
            self.source.read(|c| {
                let sql = "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = ?1";
                Ok(c.query_row(sql, [table], |r| r.get(0))?)
            })
        };
        let cursors: i64 = self
            .source
            .read(|c| Ok(c.query_row("SELECT coalesce(max(seq), 0) FROM notify_cursors", [], |r| r.get(0))?))?;
        for (table, column, floor) in [
            ("items", "id", 0),
            ("loaded_dtos", "seq", 0),
            ("rules", "id", high("rules")?),
            ("events", "id", high("events")?),
            ("outbox", "seq", high("outbox")?.max(cursors)),
        ] {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                                   greatest(1, $1::bigint, (SELECT max({column}) FROM {table})))"
                ),
                &[&floor],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every table's rows in source and destination; an error names the first that differs.
    fn verify(&mut self, families: &[(String, Vec<String>)]) -> Result<Vec<Count>> {
        // (table, count in the source, count in the destination)
        let mut checks: Vec<(String, String, String)> = Vec::new();
        for table in [
            "items",
            "loaded_dtos",
            "epochs",
            "rollup_pending",
            "rules",
            "rule_state",
            "eval_watermark",
            "events",
            "outbox",
        ] {
            let sql = format!("SELECT count(*) FROM {table}");
            checks.push((table.to_owned(), sql.clone(), sql));
        }
        for (name, _) in families {
            let src = self.source.family(name)?;
            let number: i64 = self.pg.query_one("SELECT number FROM family_state WHERE family = $1", &[name])?.get(0);
            checks.push((
                format!("{name} raw"),
                format!("SELECT (SELECT count(*) FROM {}) + (SELECT count(*) FROM {})", src.recent(), src.raw()),
                format!("SELECT count(*) FROM f{number}_raw"),
            ));
            for r in Resolution::ROLLUPS {
                checks.push((
                    format!("{name} {}", r.name()),
                    format!("SELECT count(*) FROM {}", src.rollup(r)),
                    format!("SELECT count(*) FROM f{number}_{}", r.name()),
                ));
            }
        }
        let mut counts = Vec::new();
        for (table, source_sql, dest_sql) in checks {
            let source = self.source.read(|c| Ok(c.query_row(&source_sql, [], |r| r.get::<_, i64>(0))? as u64))?;
            let copied = self.pg.query_one(&dest_sql, &[])?.get::<_, i64>(0) as u64;
            counts.push(Count { table, source, copied });
        }
        if let Some(c) = counts.iter().find(|c| c.source != c.copied) {
            return Err(RepoError::Db(format!("{}: {} rows in the source, {} copied", c.table, c.source, c.copied)));
        }
        Ok(counts)
    }
}
