//! The embedded SQLite Data Repository, `<shared>/repository.sqlite`.
//!
//! # Layout
//!
//! Raw data is written far more often than it is read by item, and read far more often by item
//! than by time. One table clustered by `(item, ts)` serves the reads but makes every poll cycle
//! a scattered write (measured: 0.8-1.1 M values/s, 9-10 bytes/value); one clustered by time
//! serves the writes (5.3 M values/s, 5.7 bytes/value) but scatters every per-item read. So each
//! family keeps raw data twice over its lifetime, never twice at once:
//!
//! ```text
//!   load ──▶ recent_<F>  PRIMARY KEY (cycle, item_id)   appends: a cycle is one sorted run
//!               │  compact(): one whole cycle per transaction, once it is older than the
//!               ▼  recent window (default 2 h), in item order
//!            raw_<F>     PRIMARY KEY (item_id, cycle)   a 24 h series is one range scan
//!
//!   roll_up(): hour_<F> ◀─ recent_<F> ∪ raw_<F>;  day_<F> ◀─ hour_<F>;  week_<F> ◀─ day_<F>
//!              each PRIMARY KEY (period, item_id): a top-N over a period is one range scan
//! ```
//!
//! Per-item reads of the recent table go through `recent_cycles`, the short list of cycles it
//! holds, turning "item X in the last hour" into a dozen primary-key lookups. Data that arrives
//! for a cycle already compacted (below the family's `watermark`) goes straight to `raw_<F>`.
//!
//! Every table is `WITHOUT ROWID`: the primary key is the clustering, and no second copy of the
//! key lives in an index. Both raw tables identify a record the same way, by item and cycle (one
//! poll of an item per cycle; a repeat replaces it), so moving a cycle changes no result.
//!
//! # Values
//!
//! Every finite double is stored and read back as it was sent, with one exception: a column
//! of REAL affinity stores a double with no fractional part as an integer, so `-0.0` comes back
//! `0.0` (equal to it in every comparison; PostgreSQL keeps the sign). Rollups never fail on a
//! value: a sum beyond the range of a double is `+inf` or `-inf`, and a sum that meets both is
//! NaN, which SQLite stores as NULL and the queries read back as NaN.
//!
//! # Concurrency
//!
//! One writer connection behind a mutex (SQLite has one writer at a time anyway) and a small pool
//! of read connections. In WAL mode readers never block the writer; on NFS, where WAL's shared
//! memory does not work across hosts, the rollback journal (`TRUNCATE`) is used instead.

mod alerts;
mod load;
mod query;
mod rollup;

use crate::{Epoch, RepoError, RepoStats, Result};
use pollux_model::{MetricFamily, Resolution};
use rusqlite::{Connection, OptionalExtension, Transaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use crate::{JournalMode, DEFAULT_OUTBOX_MAX};

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub journal: JournalMode,
    /// How long a statement waits for another process's lock (the other aggregator, during a
    /// takeover) before it fails.
    pub busy_timeout: Duration,
    /// Page cache of the writer connection.
    pub cache_mib: u32,
    /// Most notifications the outbox keeps for receivers that are down; past it the oldest
    /// are dropped and counted.
    pub outbox_max: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            journal: JournalMode::Wal,
            busy_timeout: Duration::from_secs(5),
            cache_mib: 256,
            outbox_max: DEFAULT_OUTBOX_MAX,
        }
    }
}

/// The tables of one family, as the repository knows them.
///
/// Table names never contain the family's name: a family gets a number when its tables are
/// created (`f7_recent`, `f7_raw`, `f7_hour`, ...), so no family name, however it is spelt or
/// cased, can land on another family's tables or on the repository's own (`recent_cycles`,
/// `items`, ...). SQL identifiers ignore case; family names do not.
#[derive(Debug)]
pub(crate) struct FamilyTables {
    pub name: String,
    /// The family's number in table names; `None` for a family created before numbering, whose
    /// tables keep their old names (`recent_<Family>`).
    pub number: Option<i64>,
    /// Metric columns, in table order. Only ever grows.
    pub columns: Vec<String>,
}

impl FamilyTables {
    fn table(&self, kind: &str) -> String {
        match self.number {
            Some(n) => format!("\"f{n}_{kind}\""),
            None => format!("\"{kind}_{}\"", self.name),
        }
    }
    pub fn recent(&self) -> String {
        self.table("recent")
    }
    pub fn raw(&self) -> String {
        self.table("raw")
    }
    pub fn rollup(&self, resolution: Resolution) -> String {
        self.table(resolution.name())
    }
    pub fn column(&self, metric: &str) -> Result<&str> {
        self.columns
            .iter()
            .find(|c| *c == metric)
            .map(String::as_str)
            .ok_or_else(|| RepoError::UnknownMetric { family: self.name.clone(), metric: metric.to_owned() })
    }
}

/// Read connections kept open between queries; a burst opens more, then they are closed.
const MAX_IDLE_READERS: usize = 8;

/// Item ids already committed, by family, device and item (nested so lookups borrow `&str`).
type ItemCache = HashMap<String, HashMap<String, HashMap<String, i64>>>;

pub(crate) struct Writer {
    pub conn: Connection,
    pub items: ItemCache,
    pub alerting: crate::alerting::Alerting,
}

pub struct SqliteRepository {
    path: PathBuf,
    options: SqliteOptions,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    families: RwLock<HashMap<String, Arc<FamilyTables>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', 0), ('schema', 1);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, node TEXT NOT NULL, claimed_at INTEGER NOT NULL, after_seq INTEGER);
CREATE TABLE IF NOT EXISTS family_state (
    family TEXT PRIMARY KEY, columns TEXT NOT NULL,
    watermark INTEGER NOT NULL DEFAULT 0, max_interval INTEGER NOT NULL DEFAULT 0,
    number INTEGER UNIQUE) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, family TEXT NOT NULL, device TEXT NOT NULL, item TEXT NOT NULL,
    first_seen INTEGER NOT NULL, UNIQUE (family, device, item));
CREATE INDEX IF NOT EXISTS items_by_device ON items (device);
CREATE TABLE IF NOT EXISTS loaded_dtos (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, epoch INTEGER NOT NULL,
    family TEXT NOT NULL, collector TEXT NOT NULL, cycle INTEGER NOT NULL,
    records INTEGER NOT NULL, loaded_at INTEGER NOT NULL, digest BLOB);
CREATE TABLE IF NOT EXISTS recent_cycles (
    family TEXT NOT NULL, cycle INTEGER NOT NULL, PRIMARY KEY (family, cycle)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_pending (
    resolution TEXT NOT NULL, family TEXT NOT NULL, period INTEGER NOT NULL,
    marked_at INTEGER NOT NULL, touched_at INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0, retry_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (resolution, period, family)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT, family TEXT NOT NULL, spec TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rule_state (
    rule_id INTEGER NOT NULL, item_id INTEGER NOT NULL, last_cycle INTEGER NOT NULL,
    history INTEGER NOT NULL, event_id INTEGER, peak REAL, clear_run INTEGER NOT NULL,
    PRIMARY KEY (rule_id, item_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eval_watermark (
    family TEXT NOT NULL, collector TEXT NOT NULL, interval INTEGER NOT NULL, cycle INTEGER NOT NULL,
    PRIMARY KEY (family, collector, interval)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule_id INTEGER NOT NULL, rule_name TEXT NOT NULL,
    severity TEXT NOT NULL, family TEXT NOT NULL, metric TEXT NOT NULL, device TEXT NOT NULL,
    item TEXT NOT NULL, state TEXT NOT NULL, opened_at INTEGER NOT NULL,
    opened_cycle INTEGER NOT NULL, value REAL NOT NULL, op TEXT NOT NULL, threshold REAL NOT NULL,
    peak REAL NOT NULL, cleared_at INTEGER, clear_value REAL, cleared_by TEXT, acked_by TEXT,
    acked_at INTEGER, epoch INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, severity);
CREATE INDEX IF NOT EXISTS events_by_rule ON events (rule_id, state);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id INTEGER NOT NULL, transition TEXT NOT NULL,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notify_cursors (receiver TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
";

impl SqliteRepository {
    /// Opens (creating if needed) the repository at `path`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteRepository> {
        let conn = Connection::open(path)?;
        configure(&conn, &options, false)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let repo = SqliteRepository {
            path: path.to_owned(),
            options,
            writer: Mutex::new(Writer { conn, items: HashMap::new(), alerting: Default::default() }),
            readers: Mutex::new(Vec::new()),
            families: RwLock::new(HashMap::new()),
        };
        repo.reload_families()?;
        Ok(repo)
    }

    /// Rereads the family tables another process may have created or widened.
    fn reload_families(&self) -> Result<()> {
        let writer = self.writer();
        let mut stmt = writer.conn.prepare("SELECT family, number, columns FROM family_state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, String>(2)?)))?;
        let mut families = self.families.write().expect("families lock");
        for row in rows {
            let (name, number, columns) = row?;
            families.insert(name.clone(), Arc::new(FamilyTables { name, number, columns: split_columns(&columns) }));
        }
        Ok(())
    }

    pub(crate) fn family(&self, name: &str) -> Result<Arc<FamilyTables>> {
        if let Some(f) = self.families.read().expect("families lock").get(name) {
            return Ok(f.clone());
        }
        self.reload_families()?;
        self.families
            .read()
            .expect("families lock")
            .get(name)
            .cloned()
            .ok_or_else(|| RepoError::UnknownFamily(name.to_owned()))
    }

    pub(crate) fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding the writer leaves at worst an open transaction, which SQLite
        // rolls back when the statement is dropped; the data is consistent, so go on.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a read-only connection from the pool.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.readers.lock().expect("reader pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path)?;
                configure(&c, &self.options, true)?;
                c
            }
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool");
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    /// Claims the repository for `epoch` (see [`crate::Repository::claim_epoch`]).
    pub(crate) fn claim(&self, epoch: Epoch, node: &str, now: i64) -> Result<()> {
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current = current_epoch(&tx)?;
        if current >= epoch {
            return Err(RepoError::Fenced { ours: epoch, current });
        }
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'epoch'", [epoch as i64])?;
        // after_seq: the last registry entry when this epoch took over. A load of an older
        // epoch registered after it would be a stale writer that got through (the checkers
        // look for exactly that).
        tx.execute(
            "INSERT OR REPLACE INTO epochs (epoch, node, claimed_at, after_seq)
             VALUES (?1, ?2, ?3, (SELECT coalesce(max(seq), 0) FROM loaded_dtos))",
            rusqlite::params![epoch as i64, node, now],
        )?;
        tx.commit()?;
        // Another node may have written while we were not the leader: forget what we cached.
        writer.items.clear();
        writer.alerting = Default::default();
        drop(writer);
        self.reload_families()
    }

    pub(crate) fn ensure(&self, epoch: Epoch, family: &MetricFamily) -> Result<()> {
        let mut writer = self.writer();
        let tx = writer.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        check_epoch(&tx, epoch)?;
        let known: Option<(Option<i64>, String)> = tx
            .query_row("SELECT number, columns FROM family_state WHERE family = ?1", [&family.name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // Family names are case-sensitive, but an operator who defines "interface" next to
        // "Interface" has made a mistake, and one that no query could tell apart by eye.
        let twin: Option<String> = if known.is_some() {
            // A family the repository already holds keeps its tables, even beside a twin that
            // an older release let in.
            None
        } else {
            tx.query_row(
                "SELECT family FROM family_state WHERE family = ?1 COLLATE NOCASE AND family <> ?1",
                [&family.name],
                |r| r.get(0),
            )
            .optional()?
        };
        if let Some(twin) = twin {
            return Err(RepoError::Rejected(format!(
                "family {:?} differs from the existing family {twin:?} only by letter case",
                family.name
            )));
        }
        let mut columns = known.as_ref().map(|k| split_columns(&k.1)).unwrap_or_default();
        let added: Vec<String> =
            family.metrics.iter().map(|m| m.name.clone()).filter(|m| !columns.contains(m)).collect();
        let number = match &known {
            Some((number, _)) => *number,
            None => Some(next_family_number(&tx)?),
        };
        if known.is_some() && added.is_empty() {
            // Another node may have widened the tables: take its column list as ours.
            let tables = FamilyTables { name: family.name.clone(), number, columns };
            self.families.write().expect("families lock").insert(family.name.clone(), Arc::new(tables));
            return Ok(());
        }
        let mut tables = FamilyTables { name: family.name.clone(), number, columns: columns.clone() };
        if known.is_none() {
            let cols: String = family.metrics.iter().map(|m| format!(", \"{}\" REAL", m.name)).collect();
            let stats: String = family
                .metrics
                .iter()
                .map(|m| {
                    let n = &m.name;
                    format!(
                        ", \"{n}_min\" REAL, \"{n}_max\" REAL, \"{n}_sum\" REAL, \"{n}_count\" INTEGER, \"{n}_sq\" REAL"
                    )
                })
                .collect();
            tx.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {recent} (cycle INTEGER NOT NULL, item_id INTEGER NOT NULL,
                    ts INTEGER NOT NULL{cols}, PRIMARY KEY (cycle, item_id)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS {raw} (item_id INTEGER NOT NULL, cycle INTEGER NOT NULL,
                    ts INTEGER NOT NULL{cols}, PRIMARY KEY (item_id, cycle)) WITHOUT ROWID;",
                recent = tables.recent(),
                raw = tables.raw(),
            ))?;
            for r in Resolution::ROLLUPS {
                tx.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {t} (period INTEGER NOT NULL, item_id INTEGER NOT NULL{stats},
                        PRIMARY KEY (period, item_id)) WITHOUT ROWID;",
                    t = tables.rollup(r)
                ))?;
            }
        } else {
            for m in &added {
                tx.execute_batch(&format!(
                    "ALTER TABLE {recent} ADD COLUMN \"{m}\" REAL; ALTER TABLE {raw} ADD COLUMN \"{m}\" REAL;",
                    recent = tables.recent(),
                    raw = tables.raw()
                ))?;
                for r in Resolution::ROLLUPS {
                    tx.execute_batch(&format!(
                        "ALTER TABLE {t} ADD COLUMN \"{m}_min\" REAL; ALTER TABLE {t} ADD COLUMN \"{m}_max\" REAL;
                         ALTER TABLE {t} ADD COLUMN \"{m}_sum\" REAL; ALTER TABLE {t} ADD COLUMN \"{m}_count\" INTEGER;
                         ALTER TABLE {t} ADD COLUMN \"{m}_sq\" REAL;",
                        t = tables.rollup(r)
                    ))?;
                }
            }
        }
        columns.extend(added);
        tx.execute(
            "INSERT INTO family_state (family, columns, number) VALUES (?1, ?2, ?3)
             ON CONFLICT (family) DO UPDATE SET columns = excluded.columns",
            rusqlite::params![&family.name, &columns.join(","), number],
        )?;
        tx.commit()?;
        tables.columns = columns;
        self.families.write().expect("families lock").insert(family.name.clone(), Arc::new(tables));
        Ok(())
    }

    pub(crate) fn stats_now(&self) -> Result<RepoStats> {
        let file_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        let bytes = file_len(&self.path) + file_len(&wal);
        self.read(|c| {
            let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64);
            Ok(RepoStats {
                epoch: current_epoch(c)?,
                bytes,
                loaded_dtos: count("SELECT count(*) FROM loaded_dtos")?,
                pending_rollups: count("SELECT count(*) FROM rollup_pending")?,
                failing_rollups: count("SELECT count(*) FROM rollup_pending WHERE failures > 0")?,
                items: count("SELECT count(*) FROM items")?,
                replaced_records: count("SELECT coalesce((SELECT value FROM meta WHERE key = 'replaced_records'), 0)")?,
                open_events: alerts::open_by_severity(c)?,
                outbox_depth: count("SELECT count(*) FROM outbox")?,
                outbox_oldest: c.query_row("SELECT min(created_at) FROM outbox", [], |r| r.get(0))?,
                outbox_dropped: count("SELECT coalesce((SELECT value FROM meta WHERE key = 'outbox_dropped'), 0)")?,
            })
        })
    }
}

fn split_columns(columns: &str) -> Vec<String> {
    columns.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

/// The number of a new family's tables: never reused, so a family's tables are its own.
fn next_family_number(tx: &Transaction<'_>) -> Result<i64> {
    tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('families', 0)", [])?;
    Ok(tx.query_row("UPDATE meta SET value = value + 1 WHERE key = 'families' RETURNING value", [], |r| r.get(0))?)
}

/// Brings a repository written by an older release up to this one's schema. Idempotent; safe
/// when both aggregators open the file at once (the loser finds the column there).
fn migrate(conn: &Connection) -> Result<()> {
    // Families created before table numbering keep their tables (number NULL); DTOs loaded
    // before digests were kept have none (a repeat of one is answered 200 whatever it holds).
    // A rollup period that failed is counted and retried after a backoff (see `schedule`).
    for (table, column, kind) in [
        ("family_state", "number", "INTEGER"),
        ("loaded_dtos", "digest", "BLOB"),
        ("epochs", "after_seq", "INTEGER"),
        ("rollup_pending", "failures", "INTEGER NOT NULL DEFAULT 0"),
        ("rollup_pending", "retry_at", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        add_column(conn, table, column, kind)?;
    }
    // Baselines need each hour's sum of squares: rollups written before have none (NULL),
    // and those periods simply do not count towards a baseline.
    let mut stmt = conn.prepare("SELECT family, number, columns FROM family_state")?;
    let families: Vec<FamilyTables> = stmt
        .query_map([], |r| {
            Ok(FamilyTables { name: r.get(0)?, number: r.get(1)?, columns: split_columns(&r.get::<_, String>(2)?) })
        })?
        .collect::<Result<_, _>>()?;
    for family in families {
        for r in Resolution::ROLLUPS {
            for m in &family.columns {
                add_column(conn, family.rollup(r).trim_matches('"'), &format!("{m}_sq"), "REAL")?;
            }
        }
    }
    Ok(())
}

/// Adds the column `name` of `kind` to `table` (unquoted names) unless it is there; the other
/// aggregator may add it at the same moment.
fn add_column(conn: &Connection, table: &str, name: &str, kind: &str) -> Result<()> {
    // Not `SELECT "name" FROM table`: SQLite reads an unknown double-quoted name as a string.
    let missing = || -> Result<bool> {
        Ok(conn
            .query_row("SELECT count(*) = 0 FROM pragma_table_info(?1) WHERE name = ?2", [table, name], |r| r.get(0))?)
    };
    if missing()? {
        if let Err(e) = conn.execute_batch(&format!("ALTER TABLE \"{table}\" ADD COLUMN \"{name}\" {kind}")) {
            if missing()? {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

fn configure(conn: &Connection, options: &SqliteOptions, reader: bool) -> Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    let journal = match options.journal {
        JournalMode::Wal => "WAL",
        JournalMode::Truncate => "TRUNCATE",
    };
    if !reader {
        conn.query_row(&format!("PRAGMA journal_mode = {journal}"), [], |_| Ok(()))?;
    }
    // FULL: a commit is on disk before load() returns, because the caller then deletes the DTO
    // file, the only other copy of the data.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{};{}",
        u64::from(options.cache_mib) * 1024 / if reader { 4 } else { 1 },
        if reader { " PRAGMA query_only = 1;" } else { "" }
    ))?;
    Ok(())
}

pub(crate) fn current_epoch(conn: &Connection) -> Result<Epoch> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| r.get::<_, i64>(0))? as Epoch)
}

/// The fencing check every write transaction starts with.
pub(crate) fn check_epoch(tx: &Transaction<'_>, ours: Epoch) -> Result<()> {
    let current = current_epoch(tx)?;
    if current != ours {
        return Err(RepoError::Fenced { ours, current });
    }
    Ok(())
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl crate::Repository for SqliteRepository {
    fn epoch(&self) -> Result<Epoch> {
        self.read(current_epoch)
    }
    fn claim_epoch(&self, epoch: Epoch, node: &str) -> Result<()> {
        self.claim(epoch, node, unix_now())
    }
    fn ensure_family(&self, epoch: Epoch, family: &MetricFamily) -> Result<()> {
        self.ensure(epoch, family)
    }
    fn load(&self, epoch: Epoch, dtos: &[pollux_model::Dto]) -> Result<crate::LoadReport> {
        self.load_batch(epoch, dtos, unix_now())
    }
    fn loaded_dto(&self, id: &str) -> Result<Option<crate::LoadedDto>> {
        self.read(|c| query::loaded_dto(c, id))
    }
    fn registry(&self, after: i64, limit: usize) -> Result<Vec<(i64, crate::LoadedDto)>> {
        self.read(|c| query::registry(c, after, limit))
    }
    fn claims(&self) -> Result<Vec<crate::Claim>> {
        self.read(query::claims)
    }
    fn raw_records(&self, family: &str, each: &mut dyn FnMut(crate::RawRecord)) -> Result<()> {
        let family = self.family(family)?;
        self.read(|c| query::raw_records(c, &family, each))
    }
    fn family_columns(&self, family: &str) -> Result<Vec<String>> {
        Ok(self.family(family)?.columns.clone())
    }
    fn roll_up(&self, epoch: Epoch, now: i64, policy: &crate::RollupPolicy, budget: usize) -> Result<crate::Progress> {
        crate::schedule::roll_up(self, epoch, now, policy, budget)
    }
    fn compact(&self, epoch: Epoch, before: i64, budget: usize) -> Result<crate::Progress> {
        self.compact_before(epoch, before, budget)
    }
    fn expire(&self, epoch: Epoch, now: i64, retention: &crate::Retention) -> Result<crate::Progress> {
        self.expire_old(epoch, now, retention)
    }
    fn devices(&self) -> Result<Vec<crate::DeviceInfo>> {
        self.read(query::devices)
    }
    fn items(&self, filter: &crate::ItemFilter) -> Result<Vec<crate::ItemInfo>> {
        self.read(|c| query::items(c, filter))
    }
    fn series(&self, q: &crate::SeriesQuery) -> Result<crate::Series> {
        let family = self.family(&q.family)?;
        self.read(|c| query::series(c, &family, q))
    }
    fn top(&self, q: &crate::TopQuery) -> Result<Vec<crate::TopEntry>> {
        let family = self.family(&q.family)?;
        self.read(|c| query::top(c, &family, q))
    }
    fn stats(&self) -> Result<RepoStats> {
        self.stats_now()
    }
    fn rules(&self) -> Result<Vec<crate::Rule>> {
        self.list_rules()
    }
    fn rule(&self, id: i64) -> Result<Option<crate::Rule>> {
        self.get_rule(id)
    }
    fn create_rule(&self, epoch: Epoch, spec: &crate::RuleSpec) -> Result<crate::Rule> {
        self.insert_rule(epoch, spec)
    }
    fn update_rule(&self, epoch: Epoch, id: i64, spec: &crate::RuleSpec) -> Result<Option<crate::Rule>> {
        Ok(self.change_rule(epoch, id, Some(spec))?.then(|| crate::Rule { id, spec: spec.clone() }))
    }
    fn delete_rule(&self, epoch: Epoch, id: i64) -> Result<bool> {
        self.change_rule(epoch, id, None)
    }
    fn events(&self, filter: &crate::EventFilter) -> Result<Vec<crate::Event>> {
        self.list_events(filter)
    }
    fn event(&self, id: i64) -> Result<Option<crate::Event>> {
        self.get_event(id)
    }
    fn ack_event(&self, epoch: Epoch, id: i64, by: &str) -> Result<Option<crate::Event>> {
        self.acknowledge(epoch, id, by)
    }
    fn outbox(&self, receiver: &str, limit: usize) -> Result<Vec<crate::OutboxEntry>> {
        self.pending_for(receiver, limit)
    }
    fn delivered(&self, epoch: Epoch, receiver: Option<(&str, i64)>, receivers: &[String]) -> Result<()> {
        self.mark_delivered(epoch, receiver, receivers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Box<SqliteRepository> {
        let dir = tempfile::tempdir().unwrap().keep();
        Box::new(SqliteRepository::open(&dir.join("repository.sqlite"), SqliteOptions::default()).unwrap())
    }

    crate::conformance_tests!(fresh);

    /// A pending period of a family that does not exist fails for good: the others go on.
    #[test]
    fn a_failing_period_does_not_block_the_others() {
        let repo = fresh();
        crate::conformance::a_failing_period_does_not_block_the_others(&*repo, &|period| {
            let sql = "INSERT INTO rollup_pending (resolution, family, period, marked_at, touched_at)
                       VALUES ('hour', 'Ghost', ?1, 0, 0)";
            repo.writer().conn.execute(sql, [period]).unwrap();
        });
    }

    /// A writer that holds the lock (a deposed active frozen inside its transaction) makes a
    /// load fail as something to retry, not as a bad DTO to set aside.
    #[test]
    fn a_locked_repository_is_unavailable_not_a_bad_dto() {
        use crate::conformance::{dto, T0};
        use crate::{Action, Repository};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repository.sqlite");
        let options = SqliteOptions { busy_timeout: Duration::from_millis(50), ..SqliteOptions::default() };
        let repo = SqliteRepository::open(&path, options).unwrap();
        repo.claim_epoch(1, "t").unwrap();
        repo.ensure_family(1, pollux_model::Catalog::builtin().get("Interface").unwrap()).unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = repo.load(1, &[dto("a", T0, &[("r1", "ge-0/0/0", 1.0)])]).unwrap_err();
        assert_eq!(err.action(), Action::Retry, "{err}");
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(repo.load(1, &[dto("a", T0, &[("r1", "ge-0/0/0", 1.0)])]).unwrap().loaded, 1);
    }

    /// Past `outbox_max`, the oldest notifications are dropped and counted, never the newest.
    #[test]
    fn a_full_outbox_drops_its_oldest_and_counts_them() {
        use crate::conformance::{dto, rule, T0};
        use crate::Repository;
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions { outbox_max: 3, ..SqliteOptions::default() };
        let repo = SqliteRepository::open(&dir.path().join("repository.sqlite"), options).unwrap();
        repo.claim_epoch(1, "t").unwrap();
        repo.ensure_family(1, pollux_model::Catalog::builtin().get("Interface").unwrap()).unwrap();
        repo.create_rule(1, &rule(">", 100.0, 1)).unwrap();
        // Four events opened and cleared: eight notifications for a place of three.
        for k in 0..8i64 {
            let value = if k % 2 == 0 { 500.0 } else { 0.0 };
            repo.load(1, &[dto(&format!("d{k}"), T0 + k * 300, &[("r1", "ge-0", value)])]).unwrap();
        }
        let stats = repo.stats().unwrap();
        assert_eq!((stats.outbox_depth, stats.outbox_dropped), (3, 5));
        let kept: Vec<i64> = repo.outbox("r", 10).unwrap().iter().map(|o| o.seq).collect();
        assert_eq!(kept, [6, 7, 8], "the newest are kept");
    }

    /// A repository written by the release before thresholds (no sums of squares, no rule
    /// tables) opens, keeps its data, and its new rollups feed baselines.
    #[test]
    fn a_repository_of_the_previous_release_is_migrated_in_place() {
        use crate::conformance::{dto, T0};
        use crate::Repository;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repository.sqlite");
        {
            let repo = SqliteRepository::open(&path, SqliteOptions::default()).unwrap();
            repo.claim_epoch(1, "old").unwrap();
            for family in pollux_model::Catalog::builtin().iter() {
                repo.ensure_family(1, family).unwrap();
            }
            repo.load(1, &[dto("a", T0, &[("r1", "ge-0", 5.0)])]).unwrap();
            repo.roll_up(1, T0 + 86_400 * 30, &crate::RollupPolicy::immediate(Duration::ZERO), 100).unwrap();
            let conn = repo.writer();
            let tables: Vec<String> = conn
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'f*_[hdw]*'")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(tables.len(), 12, "{tables:?}");
            for table in tables {
                let columns: Vec<String> = conn
                    .conn
                    .prepare(&format!(
                        "SELECT name FROM pragma_table_info('{table}') WHERE name LIKE '%\\_sq' ESCAPE '\\'"
                    ))
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for column in columns {
                    conn.conn.execute_batch(&format!("ALTER TABLE \"{table}\" DROP COLUMN \"{column}\"")).unwrap();
                }
            }
            conn.conn
                .execute_batch("DROP TABLE rules; DROP TABLE rule_state; DROP TABLE events; DROP TABLE outbox;")
                .unwrap();
        }
        let repo = SqliteRepository::open(&path, SqliteOptions::default()).unwrap();
        assert_eq!(repo.stats().unwrap().loaded_dtos, 1);
        let hour = repo
            .series(&crate::SeriesQuery {
                family: "Interface".into(),
                device: "r1".into(),
                item: "ge-0".into(),
                metric: "in_bps".into(),
                from: T0,
                to: T0 + 3600,
                resolution: pollux_model::Resolution::Hour,
            })
            .unwrap();
        assert!(matches!(hour, crate::Series::Rollup(p) if p.len() == 1 && p[0].avg == 5.0));
        repo.claim_epoch(2, "new").unwrap();
        repo.create_rule(2, &crate::conformance::rule(">", 1.0, 1)).unwrap();
        assert_eq!(repo.load(2, &[dto("b", T0 + 300, &[("r1", "ge-0", 5.0)])]).unwrap().transitions, 1);
        repo.roll_up(2, T0 + 86_400 * 30, &crate::RollupPolicy::immediate(Duration::ZERO), 100).unwrap();
    }
}
