//! The Data Repository on PostgreSQL (or Citus), for large installations.
//!
//! # Layout
//!
//! ```text
//!   load ──▶ f<N>_raw            PARTITION BY RANGE (cycle), one partition per UTC day
//!              │                 PRIMARY KEY (item_id, cycle): a 24 h series is one index range
//!              │                 BRIN (cycle): an hour's rollup or a top-N reads one day's pages
//!   roll_up(): f<N>_hour ◀─ raw;  f<N>_day ◀─ hour;  f<N>_week ◀─ day     (computed in SQL)
//!              each PRIMARY KEY (item_id, period) and an index on (period)
//!   expire():  DROP TABLE of whole days past retention; rows are deleted only in the day
//!              that straddles the cutoff
//! ```
//!
//! A load writes each DTO's records with a binary `COPY` straight into the day's partition,
//! under a savepoint. Should the primary key refuse a row (a record for an item and cycle sent
//! again under another DTO id), the savepoint is rolled back, the stored records are looked up,
//! the others copied, and the stored ones replaced and counted, as in SQLite.
//!
//! # Fencing
//!
//! Every write transaction starts with `SELECT ... FROM meta WHERE key = 'epoch' FOR UPDATE`:
//! writers queue on that one row, and a deposed writer that gets it after a newer epoch's claim
//! reads the new epoch and fails with [`RepoError::Fenced`]. A writer frozen inside its
//! transaction cannot hold the row for long: the session's `idle_in_transaction_session_timeout`
//! and the load's `statement_timeout` make the server abort it.
//!
//! # Connections
//!
//! One writer connection behind a mutex and a small pool of readers, each reopened on its next
//! use after the server went away. A lost connection is [`RepoError::Unavailable`]: the loader
//! keeps its batch (the DTOs stay in the shared directory) and retries.

mod alerts;
mod floats;
mod load;
mod query;
mod rollup;
#[cfg(any(test, feature = "scratch"))]
pub mod scratch;

use crate::alerting::Alerting;
use crate::{Epoch, OpenOptions, RepoError, RepoStats, Result};
use pollux_model::{MetricFamily, Resolution};
use postgres::{Client, NoTls, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The schema this release writes. A repository at a higher version was written by a newer
/// release and is refused.
const SCHEMA_VERSION: i64 = 1;

/// Read connections kept open between queries.
const MAX_IDLE_READERS: usize = 8;

/// Data sent and not acknowledged by the server for this long breaks the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed connection attempt, the next waits this long.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// A transaction of the server's that waits on a frozen client is aborted after this.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A load's statements (a COPY whose client froze is one) are aborted after this.
const LOAD_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO meta (key, value) VALUES ('epoch', 0), ('families', 0), ('rules_version', 0),
    ('replaced_records', 0), ('outbox_dropped', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS epochs (
    epoch bigint PRIMARY KEY, node text NOT NULL, claimed_at bigint NOT NULL, after_seq bigint, instance text);
CREATE TABLE IF NOT EXISTS family_state (
    family text PRIMARY KEY, number bigint NOT NULL UNIQUE, columns text NOT NULL,
    max_interval bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY, family text NOT NULL, device text NOT NULL, item text NOT NULL,
    first_seen bigint NOT NULL, UNIQUE (family, device, item));
CREATE INDEX IF NOT EXISTS items_by_device ON items (device);
CREATE TABLE IF NOT EXISTS loaded_dtos (
    seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE, epoch bigint NOT NULL, family text NOT NULL,
    collector text NOT NULL, cycle bigint NOT NULL, records bigint NOT NULL, loaded_at bigint NOT NULL,
    digest bytea);
CREATE INDEX IF NOT EXISTS loaded_dtos_by_cycle ON loaded_dtos (cycle);
CREATE TABLE IF NOT EXISTS rollup_pending (
    resolution text NOT NULL, family text NOT NULL, period bigint NOT NULL,
    marked_at bigint NOT NULL, touched_at bigint NOT NULL,
    failures bigint NOT NULL DEFAULT 0, retry_at bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (resolution, period, family));
-- Added since: a rollup period that failed is counted and retried after a backoff. Altered
-- only when missing: ALTER TABLE would wait for the other node's loads, and make them wait.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'rollup_pending'::regclass AND attname = 'retry_at' AND NOT attisdropped) THEN
        ALTER TABLE rollup_pending ADD COLUMN IF NOT EXISTS failures bigint NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS retry_at bigint NOT NULL DEFAULT 0;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS rules (
    id bigserial PRIMARY KEY, family text NOT NULL, spec text NOT NULL,
    created_at bigint NOT NULL, updated_at bigint NOT NULL);
CREATE TABLE IF NOT EXISTS rule_state (
    rule_id bigint NOT NULL, item_id bigint NOT NULL, last_cycle bigint NOT NULL, history bigint NOT NULL,
    event_id bigint, peak double precision, clear_run bigint NOT NULL, PRIMARY KEY (rule_id, item_id));
CREATE TABLE IF NOT EXISTS eval_watermark (
    family text NOT NULL, collector text NOT NULL, interval bigint NOT NULL, cycle bigint NOT NULL,
    PRIMARY KEY (family, collector, interval));
CREATE TABLE IF NOT EXISTS events (
    id bigserial PRIMARY KEY, rule_id bigint NOT NULL, rule_name text NOT NULL, severity text NOT NULL,
    family text NOT NULL, metric text NOT NULL, device text NOT NULL, item text NOT NULL, state text NOT NULL,
    opened_at bigint NOT NULL, opened_cycle bigint NOT NULL, value double precision NOT NULL, op text NOT NULL,
    threshold double precision NOT NULL, peak double precision NOT NULL, cleared_at bigint,
    clear_value double precision, cleared_by text, acked_by text, acked_at bigint, epoch bigint NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, severity);
CREATE INDEX IF NOT EXISTS events_by_rule ON events (rule_id, state);
CREATE TABLE IF NOT EXISTS outbox (
    seq bigserial PRIMARY KEY, event_id bigint NOT NULL, transition text NOT NULL, created_at bigint NOT NULL);
CREATE TABLE IF NOT EXISTS notify_cursors (receiver text PRIMARY KEY, seq bigint NOT NULL);
";

/// The tables of one family. Names never contain the family's name: a family gets a number
/// when its tables are created (`f7_raw`, `f7_hour`, ...).
#[derive(Debug)]
pub(crate) struct FamilyTables {
    pub name: String,
    pub number: i64,
    /// Metric columns, in table order. Only ever grows.
    pub columns: Vec<String>,
}

impl FamilyTables {
    pub fn raw(&self) -> String {
        format!("f{}_raw", self.number)
    }
    /// The partition of the raw table holding cycles of UTC day `day` (days since 1970).
    pub fn raw_day(&self, day: i64) -> String {
        format!("f{}_raw_d{day}", self.number)
    }
    pub fn rollup(&self, resolution: Resolution) -> String {
        format!("f{}_{}", self.number, resolution.name())
    }
    pub fn column(&self, metric: &str) -> Result<&str> {
        self.columns
            .iter()
            .find(|c| *c == metric)
            .map(String::as_str)
            .ok_or_else(|| RepoError::UnknownMetric { family: self.name.clone(), metric: metric.to_owned() })
    }
}

/// Item ids already committed, by family, device and item.
pub(crate) type ItemCache = HashMap<String, HashMap<String, HashMap<String, i64>>>;

pub(crate) struct Writer {
    client: Option<Client>,
    pub items: ItemCache,
    pub alerting: Alerting,
    /// Raw partitions known to exist: (family number, day).
    pub partitions: HashSet<(i64, i64)>,
    /// Statements prepared on the writer's connection, by their text.
    statements: HashMap<String, postgres::Statement>,
}

pub struct PostgresRepository {
    config: postgres::Config,
    options: OpenOptions,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Client>>,
    families: RwLock<HashMap<String, Arc<FamilyTables>>>,
    /// When a connection attempt last failed, and why.
    connect_failed: Mutex<Option<(std::time::Instant, String)>>,
    /// The requests waiting on the server, to tell a stalled server from a slow query.
    activity: Activity,
    /// This process's own mark in the claims it makes, so that a claim retried after a lost
    /// answer is known as its own (a node id alone may be shared by two cloned machines).
    instance: String,
}

/// Checks that `url` is a connection string this backend can use; the error says why not.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    let config: postgres::Config = url.parse().map_err(|e| format!("not a usable postgresql:// URL: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("the postgresql:// URL names no host".into());
    }
    Ok(())
}

impl From<postgres::Error> for RepoError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        let retry = e.is_closed()
            || match e.code() {
                // No SQLSTATE: the connection failed or broke.
                None => std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) || e.is_closed(),
                Some(code) => {
                    let class = &code.code()[..2];
                    // 08 connection, 53 resources, 57 operator intervention (shutdown, statement
                    // timeout), 58 system error; serialization failures and lock timeouts.
                    matches!(class, "08" | "53" | "57" | "58")
                        || [
                            SqlState::T_R_SERIALIZATION_FAILURE,
                            SqlState::T_R_DEADLOCK_DETECTED,
                            SqlState::LOCK_NOT_AVAILABLE,
                            // The server ended a transaction idle too long (this process froze).
                            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                            // A server that became a standby (its cluster failed over).
                            SqlState::READ_ONLY_SQL_TRANSACTION,
                        ]
                        .contains(code)
                }
            };
        if retry {
            RepoError::Unavailable(text)
        } else {
            RepoError::Db(text)
        }
    }
}

impl PostgresRepository {
    /// Connects to the server at `url`, creating or migrating the schema. A database that a
    /// `pollux repository copy` has not finished filling is refused: its data is partial.
    pub fn open(url: &str, options: &OpenOptions) -> Result<PostgresRepository> {
        let repo = PostgresRepository::open_for_copy(url, options)?;
        let unfinished = repo.read(|c| {
            let copied = c.query_one("SELECT to_regclass('copy_progress') IS NOT NULL", &[])?.get::<_, bool>(0);
            Ok(copied && c.query_opt("SELECT 1 FROM copy_progress WHERE step = 'finished'", &[])?.is_none())
        })?;
        if unfinished {
            return Err(RepoError::Rejected(
                "a `pollux repository copy` into this database has not finished: run it again to the end".into(),
            ));
        }
        Ok(repo)
    }

    /// As [`Self::open`], for the copy itself, which fills such a database.
    pub(crate) fn open_for_copy(url: &str, options: &OpenOptions) -> Result<PostgresRepository> {
        let config = client_config(url, options)?;
        let mut client = config.connect(NoTls)?;
        create_schema(&mut client)?;
        let repo = PostgresRepository {
            config,
            options: options.clone(),
            writer: Mutex::new(Writer {
                client: Some(client),
                items: HashMap::new(),
                alerting: Alerting::default(),
                partitions: HashSet::new(),
                statements: HashMap::new(),
            }),
            readers: Mutex::new(Vec::new()),
            families: RwLock::new(HashMap::new()),
            connect_failed: Mutex::new(None),
            activity: Activity::default(),
            instance: instance_mark(),
        };
        repo.reload_families()?;
        Ok(repo)
    }

    /// Opens a connection; within [`RECONNECT_PAUSE`] of a failed attempt, fails at once
    /// rather than make every caller (an ingest's registry check) wait for the server.
    fn connect(&self) -> Result<Client> {
        let recent = |failed: &Option<(std::time::Instant, String)>| {
            failed.as_ref().filter(|(at, _)| at.elapsed() < RECONNECT_PAUSE).map(|(at, why)| {
                RepoError::Unavailable(format!("{why} ({:.1}s ago; tried again soon)", at.elapsed().as_secs_f64()))
            })
        };
        if let Some(e) = recent(&self.connect_failed.lock().unwrap_or_else(|p| p.into_inner())) {
            return Err(e);
        }
        match self.config.connect(NoTls) {
            Ok(client) => {
                *self.connect_failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(client)
            }
            // Whatever the reason (refused, a restart, a failover to a standby that refuses
            // logins), the server cannot be used now: retry, never a verdict on a DTO.
            Err(e) => {
                let why = RepoError::from(e).to_string();
                *self.connect_failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((std::time::Instant::now(), why.clone()));
                Err(RepoError::Unavailable(why))
            }
        }
    }

    pub(crate) fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in a write transaction that holds the epoch row and checks it is `epoch`. The
    /// writer connection is reopened first if the server went away since its last use.
    pub(crate) fn write<T>(
        &self,
        epoch: Epoch,
        f: impl FnOnce(&mut Transaction<'_>, &mut WriterState<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_then(epoch, f, |_, value| value)
    }

    /// As [`Self::write`], then `committed` with the writer's caches while the writer is still
    /// held, so what a committed transaction learnt joins them before any other write runs.
    /// When the outcome is unknown (the connection broke, maybe after the commit), the
    /// threshold and partition caches are emptied: they are read again from the database.
    pub(crate) fn write_then<T, U>(
        &self,
        epoch: Epoch,
        f: impl FnOnce(&mut Transaction<'_>, &mut WriterState<'_>) -> Result<T>,
        committed: impl FnOnce(&mut WriterState<'_>, T) -> U,
    ) -> Result<U> {
        let mut guard = self.writer();
        let _busy = self.activity.begin();
        let writer = &mut *guard;
        let client = writer_client(&mut writer.client, &mut writer.statements, self)?;
        let mut state = WriterState {
            items: &mut writer.items,
            alerting: &mut writer.alerting,
            partitions: &mut writer.partitions,
            statements: &mut writer.statements,
        };
        let result = client.transaction().map_err(RepoError::from).and_then(|mut tx| {
            check_epoch(&mut tx, epoch)?;
            let value = f(&mut tx, &mut state)?;
            tx.commit()?;
            Ok(value)
        });
        match result {
            Ok(value) => Ok(committed(&mut state, value)),
            Err(e) => {
                if e.action() == crate::Action::Retry {
                    *state.alerting = Alerting::default();
                    state.partitions.clear();
                    // And a fresh connection next time: this one may be to a server that
                    // became a standby (25006 on every write) or half broken.
                    state.statements.clear();
                    writer.client = None;
                }
                Err(e)
            }
        }
    }

    /// Runs `f` on a pooled read connection.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let _busy = self.activity.begin();
        let pooled = self.readers.lock().expect("reader pool").pop();
        let mut client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self.connect()?,
        };
        let result = f(&mut client);
        // A connection that failed as something to retry is not kept (it may be to a standby
        // or half broken).
        let suspect = result.as_ref().err().is_some_and(|e| e.action() == crate::Action::Retry);
        if !client.is_closed() && !suspect {
            let mut pool = self.readers.lock().expect("reader pool");
            if pool.len() < MAX_IDLE_READERS {
                pool.push(client);
            }
        }
        result
    }

    fn reload_families(&self) -> Result<()> {
        let rows = self.read(|c| Ok(c.query("SELECT family, number, columns FROM family_state", &[])?))?;
        let mut families = self.families.write().expect("families lock");
        for row in rows {
            let name: String = row.get(0);
            let tables = FamilyTables { name: name.clone(), number: row.get(1), columns: split_columns(row.get(2)) };
            families.insert(name, Arc::new(tables));
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

    fn claim(&self, epoch: Epoch, node: &str, now: i64) -> Result<()> {
        let mut guard = self.writer();
        let writer = &mut *guard;
        // Another node may have written while we were not the leader: forget what we cached,
        // whatever becomes of the claim.
        writer.items.clear();
        writer.alerting = Alerting::default();
        writer.partitions.clear();
        let mut tx = writer_client(&mut writer.client, &mut writer.statements, self)?.transaction()?;
        let current = lock_epoch(&mut tx)?;
        if current == epoch {
            // This node's own claim, committed although its answer was lost: claiming again
            // is a success, not a deposition.
            let claimed_by: Option<(String, Option<String>)> = tx
                .query_opt("SELECT node, instance FROM epochs WHERE epoch = $1", &[&(epoch as i64)])?
                .map(|r| (r.get(0), r.get(1)));
            if claimed_by == Some((node.to_owned(), Some(self.instance.clone()))) {
                drop(tx);
                drop(guard);
                return self.reload_families();
            }
        }
        if current >= epoch {
            return Err(RepoError::Fenced { ours: epoch, current });
        }
        tx.execute("UPDATE meta SET value = $1 WHERE key = 'epoch'", &[&(epoch as i64)])?;
        // after_seq: the last registry entry when this epoch took over (see the checkers).
        tx.execute(
            "INSERT INTO epochs (epoch, node, claimed_at, after_seq, instance)
             VALUES ($1, $2, $3, (SELECT coalesce(max(seq), 0) FROM loaded_dtos), $4)
             ON CONFLICT (epoch) DO UPDATE SET node = excluded.node, claimed_at = excluded.claimed_at,
                after_seq = excluded.after_seq, instance = excluded.instance",
            &[&(epoch as i64), &node, &now, &self.instance],
        )?;
        tx.commit()?;
        drop(guard);
        self.reload_families()
    }

    fn ensure(&self, epoch: Epoch, family: &MetricFamily) -> Result<()> {
        let metrics: Vec<String> = family.metrics.iter().map(|m| m.name.clone()).collect();
        let tables = self.write(epoch, |tx, _| ensure_tables(tx, &family.name, &metrics))?;
        self.families.write().expect("families lock").insert(family.name.clone(), Arc::new(tables));
        Ok(())
    }

    fn stats_now(&self) -> Result<RepoStats> {
        if let Some(waited) = self.activity.stalled_for() {
            // Asking would wait as long: say so instead.
            return Err(RepoError::Unavailable(format!(
                "the server has not answered for {:.0} s",
                waited.as_secs_f64()
            )));
        }
        self.read(|c| {
            let meta = |c: &mut Client, key: &str| -> Result<u64> {
                Ok(c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?
                    .map_or(0, |r| r.get::<_, i64>(0) as u64))
            };
            let count =
                |c: &mut Client, sql: &str| -> Result<u64> { Ok(c.query_one(sql, &[])?.get::<_, i64>(0) as u64) };
            Ok(RepoStats {
                epoch: meta(c, "epoch")?,
                bytes: count(c, "SELECT pg_database_size(current_database())")?,
                loaded_dtos: count(c, "SELECT count(*) FROM loaded_dtos")?,
                pending_rollups: count(c, "SELECT count(*) FROM rollup_pending")?,
                failing_rollups: count(c, "SELECT count(*) FROM rollup_pending WHERE failures > 0")?,
                items: count(c, "SELECT count(*) FROM items")?,
                replaced_records: meta(c, "replaced_records")?,
                open_events: alerts::open_by_severity(c)?,
                outbox_depth: count(c, "SELECT count(*) FROM outbox")?,
                outbox_oldest: c.query_one("SELECT min(created_at) FROM outbox", &[])?.get(0),
                outbox_dropped: meta(c, "outbox_dropped")?,
            })
        })
    }
}

/// How every connection of this backend is made: bounded connect, keepalives, server-side
/// timeouts for a client that freezes, no NOTICE chatter in the logs.
pub(crate) fn client_config(url: &str, options: &OpenOptions) -> Result<postgres::Config> {
    let mut config: postgres::Config = url.parse().map_err(|e| RepoError::Rejected(format!("{e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A server that vanished (a partition, a power cut) is noticed within seconds, not at the
    // kernel's TCP give-up some 15 minutes later.
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    config.tcp_user_timeout(TCP_USER_TIMEOUT);
    config.application_name("pollux");
    config.options(&format!(
        "-c lock_timeout={} -c idle_in_transaction_session_timeout={} -c client_min_messages=warning",
        options.lock_timeout.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    ));
    Ok(config)
}

/// A request waiting this long, with none finished meanwhile, means the server is not answering.
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// When each request in progress began, and when one last finished.
#[derive(Default)]
struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Default)]
struct ActivityState {
    next: u64,
    running: HashMap<u64, std::time::Instant>,
    last_done: Option<std::time::Instant>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a request begun until the returned guard drops.
    fn begin(&self) -> Busy<'_> {
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.running.insert(id, std::time::Instant::now());
        Busy { activity: self, id }
    }

    /// How long the oldest request has waited, when it is over [`STALLED_AFTER`] and nothing
    /// finished for as long: one slow query among answered ones is not a stall.
    fn stalled_for(&self) -> Option<Duration> {
        let state = self.lock();
        let oldest = state.running.values().min()?.elapsed();
        let quiet = state.last_done.map_or(oldest, |t| t.elapsed());
        (oldest > STALLED_AFTER && quiet > STALLED_AFTER).then_some(oldest)
    }
}

struct Busy<'a> {
    activity: &'a Activity,
    id: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.activity.lock();
        state.running.remove(&self.id);
        state.last_done = Some(std::time::Instant::now());
    }
}

/// A mark unique to this process among those that may claim the repository.
fn instance_mark() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    format!("{host}/{}/{nanos}", std::process::id())
}

/// The writer's connection, reopened if the server went away since its last use.
fn writer_client<'w>(
    client: &'w mut Option<Client>,
    statements: &mut HashMap<String, postgres::Statement>,
    repo: &PostgresRepository,
) -> Result<&'w mut Client> {
    if client.as_ref().is_none_or(Client::is_closed) {
        // Prepared statements belong to the connection that prepared them.
        statements.clear();
        *client = None;
        *client = Some(repo.connect()?);
    }
    Ok(client.as_mut().expect("connected above"))
}

/// The mutable state a write transaction may use; it must only keep what a committed
/// transaction wrote (see `load`).
pub(crate) struct WriterState<'a> {
    pub items: &'a mut ItemCache,
    pub alerting: &'a mut Alerting,
    pub partitions: &'a mut HashSet<(i64, i64)>,
    pub statements: &'a mut HashMap<String, postgres::Statement>,
}

impl WriterState<'_> {
    /// `sql` prepared once per connection: a load runs the same few statements for every DTO,
    /// and preparing each time costs a round trip.
    pub(crate) fn prepared(&mut self, tx: &mut Transaction<'_>, sql: &str) -> Result<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// Creates the schema, or checks it is one this release knows. Two aggregators starting at once
/// take turns on an advisory lock.
fn create_schema(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7766001)", &[])?;
    tx.batch_execute(SCHEMA)?;
    tx.execute("INSERT INTO meta (key, value) VALUES ('schema', $1) ON CONFLICT DO NOTHING", &[&SCHEMA_VERSION])?;
    let version: i64 = tx.query_one("SELECT value FROM meta WHERE key = 'schema'", &[])?.get(0);
    if version > SCHEMA_VERSION {
        return Err(RepoError::Rejected(format!(
            "the repository's schema is version {version}, written by a newer release; this one knows {SCHEMA_VERSION}"
        )));
    }
    tx.commit()?;
    Ok(())
}

/// Creates or widens the tables of family `name` for `metrics` (in order).
pub(crate) fn ensure_tables(tx: &mut Transaction<'_>, name: &str, metrics: &[String]) -> Result<FamilyTables> {
    let known = tx.query_opt("SELECT number, columns FROM family_state WHERE family = $1", &[&name])?;
    if known.is_none() {
        // Family names are case-sensitive, but two that differ only by case are a mistake.
        let twin =
            tx.query_opt("SELECT family FROM family_state WHERE lower(family) = lower($1) AND family <> $1", &[&name])?;
        if let Some(twin) = twin {
            return Err(RepoError::Rejected(format!(
                "family {:?} differs from the existing family {:?} only by letter case",
                name,
                twin.get::<_, String>(0)
            )));
        }
    }
    let mut columns = known.as_ref().map(|k| split_columns(k.get(1))).unwrap_or_default();
    let added: Vec<String> = metrics.iter().filter(|m| !columns.contains(m)).cloned().collect();
    let number: i64 = match &known {
        Some(row) => row.get(0),
        None => tx.query_one("UPDATE meta SET value = value + 1 WHERE key = 'families' RETURNING value", &[])?.get(0),
    };
    let mut tables = FamilyTables { name: name.to_owned(), number, columns: columns.clone() };
    if known.is_some() && added.is_empty() {
        return Ok(tables);
    }
    if known.is_none() {
        let rollup_key = "item_id bigint NOT NULL, period bigint NOT NULL, PRIMARY KEY (item_id, period)";
        tx.batch_execute(&format!(
            "CREATE TABLE {raw} (item_id bigint NOT NULL, cycle bigint NOT NULL, ts bigint NOT NULL,
                PRIMARY KEY (item_id, cycle)) PARTITION BY RANGE (cycle);
             CREATE INDEX {raw}_by_cycle ON {raw} USING brin (cycle);
             CREATE TABLE {hour} ({rollup_key}); CREATE INDEX {hour}_by_period ON {hour} (period);
             CREATE TABLE {day} ({rollup_key}); CREATE INDEX {day}_by_period ON {day} (period);
             CREATE TABLE {week} ({rollup_key}); CREATE INDEX {week}_by_period ON {week} (period);",
            raw = tables.raw(),
            hour = tables.rollup(Resolution::Hour),
            day = tables.rollup(Resolution::Day),
            week = tables.rollup(Resolution::Week),
        ))?;
    }
    for m in &added {
        let mut sql = format!("ALTER TABLE {} ADD COLUMN \"{m}\" double precision;", tables.raw());
        for r in Resolution::ROLLUPS {
            sql.push_str(&format!(
                "ALTER TABLE {t} ADD COLUMN \"{m}_min\" double precision, ADD COLUMN \"{m}_max\" double precision,
                    ADD COLUMN \"{m}_sum\" double precision, ADD COLUMN \"{m}_count\" bigint,
                    ADD COLUMN \"{m}_sq\" double precision;",
                t = tables.rollup(r)
            ));
        }
        tx.batch_execute(&sql)?;
    }
    columns.extend(added);
    tx.execute(
        "INSERT INTO family_state (family, number, columns) VALUES ($1, $2, $3)
         ON CONFLICT (family) DO UPDATE SET columns = excluded.columns",
        &[&name, &number, &columns.join(",")],
    )?;
    tables.columns = columns;
    Ok(tables)
}

/// Seconds in a UTC day: the raw partitions' width.
pub(crate) const DAY: i64 = 86_400;

/// Creates the raw partition of `family` for UTC day `day` unless it exists.
pub(crate) fn create_partition(
    client: &mut impl postgres::GenericClient,
    family: &FamilyTables,
    day: i64,
) -> Result<()> {
    client.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})",
        family.raw_day(day),
        family.raw(),
        day * DAY,
        (day + 1) * DAY
    ))?;
    Ok(())
}

fn split_columns(columns: &str) -> Vec<String> {
    columns.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

/// Takes the epoch row for the rest of the transaction; returns its value.
fn lock_epoch(tx: &mut Transaction<'_>) -> Result<Epoch> {
    Ok(tx.query_one("SELECT value FROM meta WHERE key = 'epoch' FOR UPDATE", &[])?.get::<_, i64>(0) as Epoch)
}

/// The fencing check every write transaction starts with.
fn check_epoch(tx: &mut Transaction<'_>, ours: Epoch) -> Result<()> {
    let current = lock_epoch(tx)?;
    if current != ours {
        return Err(RepoError::Fenced { ours, current });
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl crate::Repository for PostgresRepository {
    fn epoch(&self) -> Result<Epoch> {
        self.read(|c| Ok(c.query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])?.get::<_, i64>(0) as Epoch))
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
    fn compact(&self, epoch: Epoch, _before: i64, _budget: usize) -> Result<crate::Progress> {
        // One raw table, clustered by item within each day's partition: nothing to move. What
        // the maintenance pass does instead: make today's and tomorrow's partitions ahead of
        // the loads, so the first load after midnight does not wait for the parent table's
        // lock behind a long query.
        let families: Vec<Arc<FamilyTables>> = self.families.read().expect("families lock").values().cloned().collect();
        let today = unix_now().div_euclid(DAY);
        self.write_then(
            epoch,
            |tx, state| {
                let mut made = Vec::new();
                for family in &families {
                    for day in [today, today + 1] {
                        if !state.partitions.contains(&(family.number, day)) {
                            create_partition(tx, family, day)?;
                            made.push((family.number, day));
                        }
                    }
                }
                Ok(made)
            },
            |state, made| {
                state.partitions.extend(made);
                crate::Progress::default()
            },
        )
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
        self.read(alerts::read_rules)
    }
    fn rule(&self, id: i64) -> Result<Option<crate::Rule>> {
        self.read(|c| alerts::get_rule(c, id))
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
        self.read(|c| alerts::list_events(c, filter))
    }
    fn event(&self, id: i64) -> Result<Option<crate::Event>> {
        self.read(|c| alerts::get_event(c, id))
    }
    fn ack_event(&self, epoch: Epoch, id: i64, by: &str) -> Result<Option<crate::Event>> {
        self.write(epoch, |tx, _| {
            tx.execute(
                "UPDATE events SET acked_by = $2, acked_at = $3 WHERE id = $1 AND acked_by IS NULL",
                &[&id, &by, &unix_now()],
            )?;
            Ok(())
        })?;
        self.event(id)
    }
    fn outbox(&self, receiver: &str, limit: usize) -> Result<Vec<crate::OutboxEntry>> {
        self.read(|c| alerts::pending_for(c, receiver, limit))
    }
    fn delivered(&self, epoch: Epoch, receiver: Option<(&str, i64)>, receivers: &[String]) -> Result<()> {
        self.write(epoch, |tx, _| alerts::mark_delivered(tx, receiver, receivers))
    }
    fn stalled(&self) -> bool {
        self.activity.stalled_for().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::scratch::ScratchServer;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// One server for the test binary, a fresh database per test; `None` without binaries.
    fn fresh() -> Option<Box<PostgresRepository>> {
        static SERVER: OnceLock<Option<ScratchServer>> = OnceLock::new();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = SERVER.get_or_init(|| match ScratchServer::start() {
            Ok(server) => Some(server),
            Err(e) if scratch::binaries().is_none() && !scratch::required() => {
                eprintln!("SKIPPING the PostgreSQL conformance suite: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        });
        let url = server.as_ref()?.database(&format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))).unwrap();
        Some(Box::new(PostgresRepository::open(&url, &OpenOptions::default()).unwrap()))
    }

    crate::conformance_tests!(optional fresh);

    /// A pending period of a family that does not exist fails for good: the others go on.
    #[test]
    fn a_failing_period_does_not_block_the_others() {
        let Some(repo) = fresh() else { return };
        crate::conformance::a_failing_period_does_not_block_the_others(&*repo, &|period| {
            let sql = "INSERT INTO rollup_pending (resolution, family, period, marked_at, touched_at)
                       VALUES ('hour', 'Ghost', $1, 0, 0)";
            repo.write(1, |tx, _| Ok(tx.execute(sql, &[&period])?)).unwrap();
        });
    }

    /// PostgreSQL keeps the sign of a zero, bit for bit (SQLite's REAL columns cannot; the
    /// conformance suite's `extreme_values_roll_up_and_rank` accepts either).
    #[test]
    fn a_negative_zero_keeps_its_sign() {
        use crate::conformance::{dto, T0};
        use crate::Repository;
        let Some(repo) = fresh() else { return };
        repo.claim_epoch(1, "t").unwrap();
        repo.ensure_family(1, pollux_model::Catalog::builtin().get("Interface").unwrap()).unwrap();
        repo.load(1, &[dto("z", T0, &[("r1", "ge-0", -0.0)])]).unwrap();
        let mut values = Vec::new();
        repo.raw_records("Interface", &mut |r| values.extend(r.values.into_iter().flatten())).unwrap();
        assert_eq!(values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), [(-0.0f64).to_bits(); 2]);
    }

    /// The maintenance pass makes today's and tomorrow's raw partitions, so the first load after
    /// midnight does not create one (and wait for the parent table's lock behind readers).
    #[test]
    fn maintenance_makes_the_days_partitions_ahead() {
        use crate::Repository;
        let Some(repo) = fresh() else { return };
        repo.claim_epoch(1, "t").unwrap();
        repo.ensure_family(1, pollux_model::Catalog::builtin().get("Interface").unwrap()).unwrap();
        let family = repo.family("Interface").unwrap();
        let today = unix_now().div_euclid(DAY);
        let exists = |day: i64| {
            repo.read(|c| {
                let sql = "SELECT to_regclass($1) IS NOT NULL";
                Ok(c.query_one(sql, &[&family.raw_day(day)])?.get::<_, bool>(0))
            })
            .unwrap()
        };
        assert!(!exists(today) && !exists(today + 1));
        repo.compact(1, unix_now(), 10).unwrap();
        assert!(exists(today) && exists(today + 1));
        assert!(matches!(repo.compact(0, unix_now(), 10), Err(RepoError::Fenced { .. })));
    }

    /// A batch of more DTOs than one transaction takes commits in parts, every DTO once, and a
    /// record sent again under another id in a later part is replaced and counted.
    #[test]
    fn a_large_batch_loads_in_parts() {
        use crate::conformance::{dto, T0};
        use crate::Repository;
        let Some(repo) = fresh() else { return };
        repo.claim_epoch(1, "t").unwrap();
        repo.ensure_family(1, pollux_model::Catalog::builtin().get("Interface").unwrap()).unwrap();
        let mut batch: Vec<_> = (0..70).map(|i| dto(&format!("d{i}"), T0 + i * 300, &[("r1", "ge-0", 1.0)])).collect();
        batch.push(dto("again", T0, &[("r1", "ge-0", 2.0)]));
        let report = repo.load(1, &batch).unwrap();
        assert_eq!((report.loaded, report.replaced), (71, 1));
        assert_eq!(repo.registry(0, 1000).unwrap().len(), 71);
        assert_eq!(repo.load(1, &batch).unwrap().already_loaded, 71);
    }
}
