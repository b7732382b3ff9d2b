//! The Data Repository: where loaded DTOs, their rollups and the fencing epoch live.
//!
//! ```text
//!   loader ──load(epoch, dtos)──▶ ┌──────────────────────────────────┐ ◀──series/top/items── query API
//!   roller ──roll_up(epoch)─────▶ │ Repository (trait)               │
//!   compactor ─compact(epoch)───▶ │  SQLite (embedded, this crate)   │
//!   election ─claim_epoch(e)────▶ │  PostgreSQL (large installs)     │
//!                                 └──────────────────────────────────┘
//! ```
//!
//! The aggregator opens a repository by value with [`open`] and a [`Location`] (`sqlite`, or a
//! `postgresql://` URL): it never names a backend type. Each backend is a module behind a cargo
//! feature of the same name, both on by default.
//!
//! Every write runs in one transaction that first checks the repository's epoch row against the
//! writer's epoch and fails with [`RepoError::Fenced`] on a mismatch: a deposed aggregator can
//! never write after a newer one has claimed the repository. A DTO's data, its entry in the
//! registry of loaded DTO ids, and its pending rollups commit together, so a DTO is loaded exactly
//! once whatever happens around the commit.
//!
//! The trait knows SQL semantics, not HTTP; the aggregator composes it. [`conformance`] is the
//! suite every backend must pass.
#![forbid(unsafe_code)]

mod alerting;
pub mod conformance;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub mod copy;
#[cfg(feature = "postgres")]
pub mod postgres;
mod schedule;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use pollux_model::{Dto, MetricFamily, Resolution, UnixSeconds};
pub use pollux_thresholds::{Rule, RuleSpec, Severity};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(feature = "postgres")]
pub use postgres::PostgresRepository;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteRepository};

/// Notifications kept for receivers that are down: at one alert a second, more than a day.
pub const DEFAULT_OUTBOX_MAX: u64 = 100_000;

/// Where the repository lives: the configuration key `repository`.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL (`postgresql://user:password@host:port/db`).
    Postgres(String),
}

impl Location {
    /// `sqlite` (the file `repository.sqlite` in `shared`), `sqlite:PATH`, or a `postgresql://`
    /// (or `postgres://`) URL. The error says what is accepted.
    pub fn parse(value: &str, shared: &Path) -> Result<Location, String> {
        let value = value.trim();
        if value == "sqlite" {
            return Ok(Location::Sqlite(shared.join("repository.sqlite")));
        }
        if let Some(path) = value.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a path (sqlite:/var/lib/pollux/repository.sqlite)".into());
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgresql://") || value.starts_with("postgres://") {
            #[cfg(feature = "postgres")]
            postgres::check_url(value)?;
            return Ok(Location::Postgres(value.to_owned()));
        }
        Err(format!("{:?} is neither \"sqlite\", sqlite:PATH nor a postgresql:// URL", Location::redact(value)))
    }

    /// A URL with its password (in the user part or as a `password=` parameter) replaced by
    /// `***`, for logs and the status page.
    fn redact(url: &str) -> String {
        let mut out = url.to_owned();
        if let Some((scheme, rest)) = url.split_once("://") {
            // The user part ends at the last '@' before any query: a password may hold '/'
            // (the client accepts it unencoded), so '/' does not end it.
            let query = rest.find('?').unwrap_or(rest.len());
            if let Some(at) = rest[..query].rfind('@') {
                let (user, host) = (&rest[..at], &rest[at + 1..]);
                let user = user.split_once(':').map_or_else(|| user.to_owned(), |(name, _)| format!("{name}:***"));
                out = format!("{scheme}://{user}@{host}");
            }
        }
        if let Some(start) = out.find("password=") {
            let from = start + "password=".len();
            let to = out[from..].find('&').map_or(out.len(), |i| from + i);
            out.replace_range(from..to, "***");
        }
        out
    }

    /// `sqlite` or `postgresql`.
    pub fn backend(&self) -> &'static str {
        match self {
            Location::Sqlite(_) => "sqlite",
            Location::Postgres(_) => "postgresql",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Location;

    #[test]
    fn a_password_never_shows() {
        let shared = std::path::Path::new("/s");
        for (url, shown) in [
            ("postgresql://pollux:s3cr3t@db:5432/pollux", "postgresql://pollux:***@db:5432/pollux"),
            ("postgresql://pollux:s3/cr3t@db/pollux", "postgresql://pollux:***@db/pollux"),
            ("postgres://db/pollux?user=p&password=s3cr3t&x=1", "postgres://db/pollux?user=p&password=***&x=1"),
            ("postgresql://pollux@db/pollux", "postgresql://pollux@db/pollux"),
        ] {
            match Location::parse(url, shared) {
                Ok(location) => {
                    assert_eq!(location.to_string(), shown);
                    assert_eq!(format!("{location:?}"), shown);
                }
                // Refused URLs are not repeated in the error.
                Err(e) => assert!(!e.contains("cr3t"), "{e}"),
            }
        }
        assert_eq!(Location::parse("sqlite", shared).unwrap(), Location::Sqlite(shared.join("repository.sqlite")));
        let refused = Location::parse("mysql://u:s3cr3t@db/x", shared).unwrap_err();
        assert!(!refused.contains("cr3t"), "{refused}");
        assert!(Location::parse("sqlite:", shared).is_err());
    }

    /// A directory or FIFO named as the SQLite file is a mistake to fix (exit 64), not an
    /// outage to wait out.
    #[cfg(feature = "sqlite")]
    #[test]
    fn a_sqlite_path_that_is_not_a_file_is_rejected() {
        let dir = std::env::temp_dir().join(format!("pollux-location-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = mkfifo(&fifo);
        for path in [dir.clone(), fifo] {
            let err = match super::open(&Location::Sqlite(path.clone()), &super::OpenOptions::default()) {
                Err(e) => e,
                Ok(_) => panic!("{} opened", path.display()),
            };
            assert_eq!(err.action(), super::Action::Rejected, "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO made with the system's mkfifo.
    #[cfg(feature = "sqlite")]
    fn mkfifo(path: &std::path::Path) -> std::io::Result<()> {
        let status = std::process::Command::new("mkfifo").arg(path).status()?;
        assert!(status.success(), "mkfifo");
        Ok(())
    }
}

/// Shows where the repository is, never a password.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&Location::redact(url)),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// SQLite's journal, chosen by where the repository file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// Write-ahead log: readers never block the writer. Needs shared memory between the
    /// processes using the file, so only on a local filesystem.
    Wal,
    /// Rollback journal, truncated after each transaction: works on NFSv4.
    Truncate,
}

/// Settings every backend takes (each ignores what does not apply to it).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// SQLite only.
    pub journal: JournalMode,
    /// How long a write waits for a lock another node holds (during a takeover) before it
    /// fails as something to retry.
    pub lock_timeout: Duration,
    /// Most notifications the outbox keeps for receivers that are down; past it the oldest are
    /// dropped and counted.
    pub outbox_max: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { journal: JournalMode::Wal, lock_timeout: Duration::from_secs(5), outbox_max: DEFAULT_OUTBOX_MAX }
    }
}

/// Opens (creating or migrating its schema if needed) the repository at `location`.
pub fn open(location: &Location, options: &OpenOptions) -> Result<Box<dyn Repository>> {
    match location {
        #[cfg(feature = "sqlite")]
        Location::Sqlite(path) => {
            // A directory, FIFO or device where the file should be is a mistake to name, not a
            // repository that is unavailable for now.
            if let Ok(meta) = std::fs::metadata(path) {
                if !meta.is_file() {
                    return Err(RepoError::Rejected(format!("{} is not a regular file", path.display())));
                }
            }
            let options = SqliteOptions {
                journal: options.journal,
                busy_timeout: options.lock_timeout,
                outbox_max: options.outbox_max,
                ..SqliteOptions::default()
            };
            Ok(Box::new(SqliteRepository::open(path, options)?))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(url) => Ok(Box::new(PostgresRepository::open(url, options)?)),
        #[allow(unreachable_patterns)]
        other => Err(RepoError::Rejected(format!("this build has no {} backend", other.backend()))),
    }
}

/// A leadership term. Strictly increasing; the active aggregator's epoch is the repository's.
pub type Epoch = u64;

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The repository belongs to another epoch: this writer has been deposed (or never claimed).
    #[error("fenced: the repository is at epoch {current}, this writer holds epoch {ours}")]
    Fenced { ours: Epoch, current: Epoch },
    #[error("unknown family {0:?}")]
    UnknownFamily(String),
    #[error("family {family} has no metric {metric:?}")]
    UnknownMetric { family: String, metric: String },
    #[error("bad query: {0}")]
    BadQuery(String),
    /// The repository refuses this request as it stands (a family whose name collides with
    /// another's): retrying will not help until the definition changes.
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("injected fault at {0}")]
    Injected(&'static str),
    /// The repository cannot serve now (locked by another writer, out of space, an I/O error,
    /// a lost connection): the same request may succeed later, unchanged.
    #[error("repository unavailable: {0}")]
    Unavailable(String),
    #[error("repository: {0}")]
    Db(String),
}

/// What a caller must do about a [`RepoError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop writing: another epoch owns the repository.
    Fenced,
    /// Try the same request again later.
    Retry,
    /// This request (a DTO, a query, a definition) will not succeed as it is: set it aside.
    Rejected,
    /// Unexpected: log it; retrying may or may not help.
    Bug,
}

impl RepoError {
    pub fn action(&self) -> Action {
        match self {
            RepoError::Fenced { .. } => Action::Fenced,
            RepoError::Unavailable(_) | RepoError::Injected(_) => Action::Retry,
            RepoError::UnknownFamily(_)
            | RepoError::UnknownMetric { .. }
            | RepoError::BadQuery(_)
            | RepoError::Rejected(_) => Action::Rejected,
            RepoError::Db(_) => Action::Bug,
        }
    }
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for RepoError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    DatabaseBusy
                        | DatabaseLocked
                        | SystemIoFailure
                        | DiskFull
                        | CannotOpen
                        | OutOfMemory
                        | FileLockingProtocolFailed
                ) =>
            {
                RepoError::Unavailable(e.to_string())
            }
            _ => RepoError::Db(e.to_string()),
        }
    }
}

/// What became of a batch of DTOs handed to [`Repository::load`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// DTOs whose data was inserted by this call.
    pub loaded: usize,
    /// Events opened or cleared by the polls loaded (each with an outbox entry).
    pub transitions: usize,
    /// DTOs not evaluated against the rules: older than one their collector already had
    /// evaluated for the family (see [`Repository::load`]).
    pub late: usize,
    /// DTOs whose id was already in the registry: nothing inserted.
    pub already_loaded: usize,
    /// Values (non-empty cells) inserted.
    pub values: usize,
    /// Records that replaced one already stored for the same item and cycle (sent under another
    /// DTO id): the later one is kept, and the repository counts them.
    pub replaced: usize,
}

/// The registry entry of a loaded DTO.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDto {
    pub id: String,
    pub epoch: Epoch,
    pub family: String,
    pub collector: String,
    pub cycle: UnixSeconds,
    pub records: u64,
    pub loaded_at: UnixSeconds,
    /// The content's fingerprint; `None` for DTOs loaded by a release that kept none.
    pub digest: Option<pollux_model::Digest>,
}

/// A claim of the repository by a new epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub epoch: Epoch,
    pub node: String,
    pub claimed_at: UnixSeconds,
    /// The last registry entry when this epoch took over: a load of an older epoch registered
    /// after it would be a deposed writer that got through.
    pub after_seq: Option<i64>,
}

/// One stored raw record (see [`Repository::raw_records`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub device: String,
    pub item: String,
    pub cycle: UnixSeconds,
    pub ts: UnixSeconds,
    pub values: Vec<Option<f64>>,
}

/// What the roller, compactor or retention pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    /// Periods rolled up, cycles compacted, or rows expired.
    pub done: usize,
    /// True when work that is due remains (the caller should come back soon).
    pub more: bool,
}

/// When a pending rollup period is recomputed.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupPolicy {
    /// A period is due once it ended this long ago: data for it may still be on its way.
    pub grace: Duration,
    /// ...and once no load has touched it for this long, so a burst of late data (a collector
    /// emptying its spool) re-rolls a period once, after the burst, not after every batch.
    /// Zero disables the wait.
    pub settle: Duration,
    /// ...or once it has been pending this long, however often it is touched.
    pub max_delay: Duration,
    /// When set, a pending period whose finer data is past its retention is dropped, not
    /// recomputed: its rollup would be rebuilt from the little that is left.
    pub retention: Option<Retention>,
}

impl RollupPolicy {
    /// Due as soon as the period ended `grace` ago, touched or not.
    pub fn immediate(grace: Duration) -> RollupPolicy {
        RollupPolicy { grace, settle: Duration::ZERO, max_delay: Duration::ZERO, retention: None }
    }
}

/// How long each resolution is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub raw: Duration,
    pub hour: Duration,
    pub day: Duration,
    pub week: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Retention {
            raw: Duration::from_secs(35 * DAY),
            hour: Duration::from_secs(400 * DAY),
            day: Duration::from_secs(5 * 366 * DAY),
            week: Duration::from_secs(10 * 366 * DAY),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    pub items: u64,
    pub families: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemInfo {
    pub device: String,
    pub family: String,
    pub item: String,
    pub first_seen: UnixSeconds,
}

#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub device: Option<String>,
    pub family: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// One series request. Ranges are half-open: `from <= ts < to`.
#[derive(Debug, Clone)]
pub struct SeriesQuery {
    pub family: String,
    pub device: String,
    pub item: String,
    pub metric: String,
    pub from: UnixSeconds,
    pub to: UnixSeconds,
    pub resolution: Resolution,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    /// `(ts, value)` pairs.
    Raw(Vec<(UnixSeconds, f64)>),
    /// Rollup periods: start and statistics.
    Rollup(Vec<RollupPoint>),
}

impl Default for Series {
    fn default() -> Series {
        Series::Raw(Vec::new())
    }
}

/// A read of a family the repository holds nothing of yet (no DTO of it loaded, so no tables):
/// empty, not an error. For callers that checked the family against the catalog first: a new
/// installation's first minute, or a customized family defined and not polled yet.
pub fn none_yet<T: Default>(read: Result<T>) -> Result<T> {
    match read {
        Err(RepoError::UnknownFamily(_)) => Ok(T::default()),
        other => other,
    }
}

/// One period's statistics of one metric. `min` and `max` are exact. `avg` is the period's sum
/// over its count: a sum beyond the range of a double is `+inf` or `-inf` (so is then the
/// average), and one that meets both (in a day or week of such hours) is NaN. Both backends
/// agree on this; neither fails on any finite value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupPoint {
    pub period: UnixSeconds,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub count: u64,
}

#[derive(Debug, Clone)]
pub struct TopQuery {
    pub family: String,
    pub metric: String,
    pub from: UnixSeconds,
    pub to: UnixSeconds,
    pub n: usize,
}

/// One item of a top-N answer; `avg` as in [`RollupPoint`]. Entries come highest average
/// first, and an average that is NaN last.
#[derive(Debug, Clone, PartialEq)]
pub struct TopEntry {
    pub device: String,
    pub item: String,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

/// Figures for health and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoStats {
    pub epoch: Epoch,
    pub bytes: u64,
    pub loaded_dtos: u64,
    pub pending_rollups: u64,
    /// Pending rollup periods whose last attempt failed (logged), waiting to be tried again
    /// (see [`Repository::roll_up`]); included in `pending_rollups`.
    pub failing_rollups: u64,
    pub items: u64,
    /// Records ever replaced by another DTO's record for the same item and cycle (see
    /// [`LoadReport::replaced`]); 0 unless two DTO ids carried the same data.
    pub replaced_records: u64,
    /// Open events by severity name.
    pub open_events: std::collections::BTreeMap<String, u64>,
    /// Notifications not yet delivered to every receiver, and the age of the oldest.
    pub outbox_depth: u64,
    pub outbox_oldest: Option<UnixSeconds>,
    /// Notifications dropped because the outbox was full (see [`OpenOptions::outbox_max`]).
    pub outbox_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    Open,
    Cleared,
}

/// A threshold event: opened by a rule on an item, cleared by the value, or by a change to
/// the rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub id: i64,
    pub rule: i64,
    pub rule_name: String,
    pub severity: Severity,
    pub family: String,
    pub metric: String,
    pub device: String,
    pub item: String,
    pub state: EventState,
    /// The timestamp and cycle of the poll that opened it, and its value.
    pub opened_at: UnixSeconds,
    pub opened_cycle: UnixSeconds,
    pub value: f64,
    /// The rule's condition when it opened: operator and value (standard deviations for a
    /// baseline rule).
    pub op: String,
    pub threshold: f64,
    pub peak: f64,
    pub cleared_at: Option<UnixSeconds>,
    pub clear_value: Option<f64>,
    /// `value` (the data cleared it), `rule changed` or `rule deleted`.
    pub cleared_by: Option<String>,
    pub acked_by: Option<String>,
    pub acked_at: Option<UnixSeconds>,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Events open at some time in `[from, to)`.
    pub from: Option<UnixSeconds>,
    pub to: Option<UnixSeconds>,
    pub state: Option<EventState>,
    pub device: Option<String>,
    pub severity: Option<Severity>,
    pub rule: Option<i64>,
    pub limit: usize,
    pub offset: usize,
}

/// One notification waiting in the outbox: an event's opening or clearing.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub transition: EventState,
    pub created_at: UnixSeconds,
    /// The event as it is now.
    pub event: Event,
}

/// The Data Repository. Every write takes the writer's epoch and fails with
/// [`RepoError::Fenced`] unless it is the repository's current epoch.
pub trait Repository: Send + Sync {
    /// The current epoch row.
    fn epoch(&self) -> Result<Epoch>;
    /// Raises the epoch row to `epoch`, before the new leader writes anything. Fails with
    /// `Fenced` when the row is already at or past `epoch` (someone newer got there first).
    fn claim_epoch(&self, epoch: Epoch, node: &str) -> Result<()>;
    /// Creates or widens the tables of a family (new metrics become new columns), as a write
    /// of `epoch` like any other.
    fn ensure_family(&self, epoch: Epoch, family: &MetricFamily) -> Result<()>;

    /// Loads a batch of DTOs in one transaction: the epoch check, each DTO's data unless its id
    /// is already registered, its registry entry, its pending rollups, and its evaluation
    /// against the threshold rules (rule state, events and outbox entries). PostgreSQL commits
    /// a batch of more than 32 DTOs in parts of 32, in order, each part one transaction.
    ///
    /// Late data: a DTO older than the newest cycle its collector has had evaluated for the
    /// family is stored and rolled up but not evaluated (counted in [`LoadReport::late`]), and
    /// a (rule, item) pair never evaluates a poll older than its last one. Thresholds follow
    /// the polls as they happened, never as a spool replays them.
    fn load(&self, epoch: Epoch, dtos: &[Dto]) -> Result<LoadReport>;
    /// The registry entry of a loaded DTO.
    fn loaded_dto(&self, id: &str) -> Result<Option<LoadedDto>>;
    /// Registry entries in load order, after sequence number `after`, at most `limit`, each
    /// with its sequence number (for audits and copies).
    fn registry(&self, after: i64, limit: usize) -> Result<Vec<(i64, LoadedDto)>>;
    /// Every claim of the repository, oldest first.
    fn claims(&self) -> Result<Vec<Claim>>;
    /// Every stored raw record of a family, in no particular order, with values in the order
    /// of [`Repository::family_columns`]. Reads the whole family: for audits and copies.
    fn raw_records(&self, family: &str, each: &mut dyn FnMut(RawRecord)) -> Result<()>;
    /// The metric columns the repository holds for a family, in its order.
    fn family_columns(&self, family: &str) -> Result<Vec<String>>;

    /// Recomputes the pending rollup periods that `policy` says are due at `now`, finest
    /// resolution first, at most `budget` periods per call.
    ///
    /// No value makes a period fail: sums that would overflow saturate to an infinity (see
    /// [`RollupPoint`]). A period that fails nonetheless, with an error that is not an outage,
    /// does not hold up the others: it is logged with the error, stays pending, and is tried
    /// again after a backoff (one minute, doubling up to an hour), while this call goes on with
    /// the other due periods ([`RepoStats::failing_rollups`] counts such periods). An outage
    /// ([`Action::Retry`]) or a fenced writer ends the call with its error, as any write does.
    fn roll_up(&self, epoch: Epoch, now: UnixSeconds, policy: &RollupPolicy, budget: usize) -> Result<Progress>;
    /// Moves raw data of cycles that started before `before` from the time-ordered recent
    /// tables into the item-ordered history tables, at most `budget` cycles per call.
    fn compact(&self, epoch: Epoch, before: UnixSeconds, budget: usize) -> Result<Progress>;
    /// Deletes what is older than its resolution's retention.
    fn expire(&self, epoch: Epoch, now: UnixSeconds, retention: &Retention) -> Result<Progress>;

    fn devices(&self) -> Result<Vec<DeviceInfo>>;
    fn items(&self, filter: &ItemFilter) -> Result<Vec<ItemInfo>>;
    fn series(&self, query: &SeriesQuery) -> Result<Series>;
    fn top(&self, query: &TopQuery) -> Result<Vec<TopEntry>>;
    fn stats(&self) -> Result<RepoStats>;

    // Threshold rules, events and notifications. Writes take the epoch like every other.

    fn rules(&self) -> Result<Vec<Rule>>;
    fn rule(&self, id: i64) -> Result<Option<Rule>>;
    fn create_rule(&self, epoch: Epoch, spec: &RuleSpec) -> Result<Rule>;
    /// Replaces a rule; its open events clear (`rule changed`) and its pairs start afresh.
    /// `None` when there is no such rule.
    fn update_rule(&self, epoch: Epoch, id: i64, spec: &RuleSpec) -> Result<Option<Rule>>;
    /// Deletes a rule; its open events clear (`rule deleted`). False when there was none.
    fn delete_rule(&self, epoch: Epoch, id: i64) -> Result<bool>;
    /// Newest first.
    fn events(&self, filter: &EventFilter) -> Result<Vec<Event>>;
    fn event(&self, id: i64) -> Result<Option<Event>>;
    /// Records who acknowledged an event and when (the first acknowledgement stands).
    fn ack_event(&self, epoch: Epoch, id: i64, by: &str) -> Result<Option<Event>>;
    /// Up to `limit` outbox entries `receiver` has not had yet, oldest first.
    fn outbox(&self, receiver: &str, limit: usize) -> Result<Vec<OutboxEntry>>;
    /// Records that `receiver` has had every entry up to `seq`, and drops the entries every
    /// one of `receivers` has had (all of them when `receivers` is empty).
    fn delivered(&self, epoch: Epoch, receiver: Option<(&str, i64)>, receivers: &[String]) -> Result<()>;

    /// True while the repository has stopped answering: a request has waited longer than a
    /// couple of seconds and none has finished meanwhile (a server frozen, or a network path
    /// that still acknowledges and never replies). Callers that need not wait for it (ingest's
    /// registry check) then go on without it.
    fn stalled(&self) -> bool {
        false
    }
}
