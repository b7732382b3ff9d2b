//! The aggregator's configuration: a TOML file, overridden by command-line flags, checked once.
//!
//! Every key, its default and why it has that default are listed in docs/reference.md; the defaults
//! live here as named constants. [`AggregatorConfig::validate`] checks cross-field rules before
//! any port is bound or file touched, and every error names the file and key at fault.

pub use pollux_model::config::ConfigError;
use pollux_model::duration;
use pollux_repository::Retention;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The DA and proxy HTTP port of the contract.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8581";
pub const DEFAULT_SHARED_DIR: &str = "/var/lib/pollux/shared";
/// The embedded repository, `<shared>/repository.sqlite`.
pub const DEFAULT_REPOSITORY: &str = "sqlite";
/// The original product's default: how long the active may miss heartbeats before a takeover.
pub const DEFAULT_FAILWAIT: Duration = Duration::from_secs(5 * 60);
/// The original product's default: how long a new leader may take to become ready.
pub const DEFAULT_STARTWAIT: Duration = Duration::from_secs(45 * 60);
/// Large enough for a 100,000-record DTO in JSON (about 15 MB) with room to spare.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// A collector splits larger cycles into parts.
pub const DEFAULT_MAX_RECORDS: usize = 100_000;
/// Data for a period may still be in flight (spooled at a collector, in a slow poll) this long
/// after the period ends; a rollup computed earlier would just be recomputed, so this only
/// saves work.
pub const DEFAULT_ROLLUP_GRACE: Duration = Duration::from_secs(10 * 60);
/// Raw data stays in the time-ordered recent table this long before it is compacted into the
/// item-ordered history; long enough that on-time hourly rollups read only the recent table.
pub const DEFAULT_RECENT_WINDOW: Duration = Duration::from_secs(2 * 3600);
/// Values per load transaction: large enough to amortize the commit's fsync, small enough that
/// rollups and compaction get the writer often.
pub const DEFAULT_LOAD_BATCH_VALUES: usize = 400_000;
/// How often every node reads the lease. A standby sees a released lease (planned switchover)
/// within this, so it bounds the time without an active.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Refuse to start with less free space than this in the shared directory.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;
/// Request bodies held in memory at once, over every connection: a thousand slow uploads of
/// 64 MiB must not exhaust memory. Past it a PUT is answered 503 with Retry-After.
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: usize = 256 << 20;

/// Where SQLite's journal goes (see docs/architecture.md: WAL does not work across hosts on NFS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalChoice {
    /// WAL on a local filesystem, TRUNCATE on NFS (detected with statfs).
    Auto,
    Wal,
    Truncate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    #[serde(with = "duration::serde_str")]
    pub raw: Duration,
    #[serde(with = "duration::serde_str")]
    pub hour: Duration,
    #[serde(with = "duration::serde_str")]
    pub day: Duration,
    #[serde(with = "duration::serde_str")]
    pub week: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let r = Retention::default();
        RetentionConfig { raw: r.raw, hour: r.hour, day: r.day, week: r.week }
    }
}

impl From<&RetentionConfig> for Retention {
    fn from(c: &RetentionConfig) -> Retention {
        Retention { raw: c.raw, hour: c.hour, day: c.day, week: c.week }
    }
}

/// Where events are sent (`[[notify.alertmanager]]`, `[[notify.webhook]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub alertmanager: Vec<ReceiverConfig>,
    pub webhook: Vec<ReceiverConfig>,
    /// How often open events are sent to Alertmanager again, so it never resolves them itself.
    #[serde(with = "duration::serde_str")]
    pub resend_interval: Duration,
    /// How long one delivery may take before it counts as failed and is retried.
    #[serde(with = "duration::serde_str")]
    pub timeout: Duration,
    /// Notifications kept for receivers that are down; past it the oldest are dropped, counted.
    pub outbox_max: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            alertmanager: Vec::new(),
            webhook: Vec::new(),
            resend_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            outbox_max: pollux_repository::DEFAULT_OUTBOX_MAX,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub url: String,
}

/// The aggregator's settings after file and flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// This node's name in the lease, the status view and the repository's epoch log.
    pub node_id: String,
    pub listen: SocketAddr,
    /// The URL other parts use to reach this node; defaults to `http://<listen>`.
    pub advertise: Option<String>,
    pub shared_dir: PathBuf,
    /// `sqlite` (the file in the shared directory), `sqlite:PATH`, or a `postgresql://` URL.
    pub repository: String,
    #[serde(with = "duration::serde_str")]
    pub failwait: Duration,
    #[serde(with = "duration::serde_str")]
    pub startwait: Duration,
    /// How often the lease is read; default the smaller of `DEFAULT_POLL_INTERVAL` and the
    /// heartbeat (failwait / 10).
    #[serde(with = "duration::serde_str::option")]
    pub poll_interval: Option<Duration>,
    /// Replaced by `ingest_token_file`; kept only to say so.
    #[serde(skip_serializing)]
    pub ingest_token: Option<serde::de::IgnoredAny>,
    /// Certificate chain and key (PEM) of the HTTPS listener; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA certificates the notifiers trust for https receivers; the system's roots without it.
    pub ca_file: Option<PathBuf>,
    /// Token files per route class (see `pollux_transport::auth`); a class without one is open.
    pub ingest_token_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    pub read_token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_body_bytes_in_flight: usize,
    pub max_connections: usize,
    #[serde(with = "duration::serde_str")]
    pub idle_timeout: Duration,
    #[serde(with = "duration::serde_str")]
    pub body_timeout: Duration,
    pub max_records: usize,
    /// How far ahead of this node's clock a DTO's cycle may start.
    #[serde(with = "duration::serde_str")]
    pub max_clock_skew: Duration,
    pub journal_mode: JournalChoice,
    #[serde(with = "duration::serde_str")]
    pub rollup_grace: Duration,
    #[serde(with = "duration::serde_str")]
    pub recent_window: Duration,
    pub load_batch_values: usize,
    pub min_free_bytes: u64,
    pub retention: RetentionConfig,
    pub notify: NotifyConfig,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            node_id: default_node_id(),
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            advertise: None,
            shared_dir: PathBuf::from(DEFAULT_SHARED_DIR),
            repository: DEFAULT_REPOSITORY.to_owned(),
            failwait: DEFAULT_FAILWAIT,
            startwait: DEFAULT_STARTWAIT,
            poll_interval: None,
            ingest_token: None,
            tls_cert: None,
            tls_key: None,
            ca_file: None,
            ingest_token_file: None,
            admin_token_file: None,
            read_token_file: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_body_bytes_in_flight: DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            max_connections: pollux_transport::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: pollux_transport::DEFAULT_IDLE_TIMEOUT,
            body_timeout: pollux_transport::DEFAULT_BODY_TIMEOUT,
            max_records: DEFAULT_MAX_RECORDS,
            max_clock_skew: Duration::from_secs(3600),
            journal_mode: JournalChoice::Auto,
            rollup_grace: DEFAULT_ROLLUP_GRACE,
            recent_window: DEFAULT_RECENT_WINDOW,
            load_batch_values: DEFAULT_LOAD_BATCH_VALUES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            retention: RetentionConfig::default(),
            notify: NotifyConfig::default(),
        }
    }
}

/// A node id names files in the shared directory (`election/nodes/<id>.json`): only a plain
/// file name will do, never a path.
pub fn valid_node_id(id: &str) -> bool {
    let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    !id.is_empty() && id.len() <= 64 && id.chars().all(id_ok) && !id.starts_with('.')
}

fn default_node_id() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pollux-da".to_owned())
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub shared_dir: Option<PathBuf>,
    pub repository: Option<String>,
    pub failwait: Option<Duration>,
    pub startwait: Option<Duration>,
}

impl AggregatorConfig {
    /// Reads `file` (if any), applies `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<AggregatorConfig, ConfigError> {
        let mut config = match file {
            Some(path) => pollux_model::config::read_file(path)?,
            None => AggregatorConfig::default(),
        };
        let o = overrides;
        config.node_id = o.node_id.unwrap_or(config.node_id);
        config.listen = o.listen.unwrap_or(config.listen);
        config.advertise = o.advertise.or(config.advertise);
        config.shared_dir = o.shared_dir.unwrap_or(config.shared_dir);
        config.repository = o.repository.unwrap_or(config.repository);
        config.failwait = o.failwait.unwrap_or(config.failwait);
        config.startwait = o.startwait.unwrap_or(config.startwait);
        let name = file.map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
        config.validate().map_err(|(key, problem)| ConfigError::new(name, key, problem))?;
        Ok(config)
    }

    /// Parses the TOML text; an error is `(key, problem)`.
    pub fn from_toml(text: &str) -> Result<AggregatorConfig, (String, String)> {
        pollux_model::config::from_toml(text)
    }

    /// Where the repository is (the `repository` key, relative to the shared directory).
    pub fn repository_location(&self) -> Result<pollux_repository::Location, String> {
        pollux_repository::Location::parse(&self.repository, &self.shared_dir)
    }

    /// Cross-field rules, checked before anything starts.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: String| Err((key.to_owned(), problem));
        // The node id names files in the shared directory (election/nodes/<id>.json): only a
        // plain file name will do, never a path.
        if !valid_node_id(&self.node_id) {
            return err(
                "node_id",
                format!("{:?} must be 1 to 64 of A-Z a-z 0-9 . _ - and not start with '.'", self.node_id),
            );
        }
        if self.ingest_token.is_some() {
            return err(
                "ingest_token",
                "tokens are read from files now: write it to a file (mode 600) and set ingest_token_file".into(),
            );
        }
        self.repository_location().map_err(|problem| ("repository".to_owned(), problem))?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let missing = if self.tls_cert.is_some() { "tls_key" } else { "tls_cert" };
            return err(missing, "is needed too: HTTPS takes both tls_cert and tls_key".into());
        }
        self.server_limits().validate()?;
        if self.max_body_bytes_in_flight < self.max_body_bytes {
            return err("max_body_bytes_in_flight", "must be at least max_body_bytes".into());
        }
        if self.failwait < Duration::from_secs(1) {
            return err("failwait", "must be at least 1s: heartbeats and I/O need time to succeed".into());
        }
        if self.startwait < self.failwait {
            return err("startwait", "must not be shorter than failwait".into());
        }
        // The holder renews every failwait / 10 and stops acknowledging at 3/4 of failwait: a
        // lease read slower than the heartbeat would make a healthy active look dead.
        let heartbeat = pollux_election::Timing::new(self.failwait, self.startwait).heartbeat;
        if self.poll_interval.is_some_and(|p| p.is_zero() || p > heartbeat) {
            return err(
                "poll_interval",
                format!("must be more than 0 and at most the heartbeat (failwait / 10 = {heartbeat:?})"),
            );
        }
        if let Some(url) = &self.advertise {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return err("advertise", format!("{url:?} must be an http:// or https:// URL"));
            }
        }
        if self.max_body_bytes < 1024 {
            return err("max_body_bytes", "must be at least 1024".into());
        }
        if self.max_records == 0 {
            return err("max_records", "must be at least 1".into());
        }
        if self.load_batch_values == 0 {
            return err("load_batch_values", "must be at least 1".into());
        }
        if self.recent_window < Duration::from_secs(3600) + self.rollup_grace {
            return err(
                "recent_window",
                "must be at least 1h plus rollup_grace, so hourly rollups read the recent table".into(),
            );
        }
        let r = &self.retention;
        if !(r.raw <= r.hour && r.hour <= r.day && r.day <= r.week) {
            return err("retention", "must grow with the resolution: raw <= hour <= day <= week".into());
        }
        if r.raw < Duration::from_secs(86_400) {
            return err("retention.raw", "must be at least 1d".into());
        }
        let n = &self.notify;
        for (kind, receivers) in [("alertmanager", &n.alertmanager), ("webhook", &n.webhook)] {
            for (i, r) in receivers.iter().enumerate() {
                let key = format!("notify.{kind}[{i}].url");
                let rest = r.url.strip_prefix("http://").or_else(|| r.url.strip_prefix("https://")).unwrap_or_default();
                if rest.is_empty()
                    || rest.starts_with('/')
                    || r.url.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return err(&key, format!("{:?} must be an http:// or https:// URL with a host", r.url));
                }
            }
        }
        if n.resend_interval < Duration::from_secs(1) {
            return err("notify.resend_interval", "must be at least 1s".into());
        }
        if n.timeout.is_zero() {
            return err("notify.timeout", "must be more than 0".into());
        }
        if n.outbox_max == 0 {
            return err("notify.outbox_max", "must be at least 1".into());
        }
        Ok(())
    }

    /// How often the lease is read.
    /// What the HTTP listener allows its clients.
    pub fn server_limits(&self) -> pollux_transport::ServerLimits {
        pollux_transport::ServerLimits {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
        }
    }

    pub fn poll_interval(&self) -> Duration {
        let heartbeat = pollux_election::Timing::new(self.failwait, self.startwait).heartbeat;
        self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL.min(heartbeat))
    }

    /// The URL this node is reached at.
    pub fn advertise_url(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| format!("{}://{}", self.scheme(), self.listen))
    }

    /// `https` once the listener has a certificate.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_product() {
        let c = AggregatorConfig::default();
        c.validate().unwrap();
        assert_eq!(c.failwait, Duration::from_secs(300));
        assert_eq!(c.startwait, Duration::from_secs(2700));
        assert_eq!(c.listen.port(), 8581);
    }

    #[test]
    fn file_values_and_flag_overrides() {
        let c =
            AggregatorConfig::from_toml("failwait = \"2s\"\nstartwait = \"10s\"\n[retention]\nraw = \"2d\"").unwrap();
        assert_eq!(c.failwait, Duration::from_secs(2));
        assert_eq!(c.retention.raw, Duration::from_secs(2 * 86_400));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "failwait = \"2s\"\nstartwait = \"10s\"").unwrap();
        let o = Overrides { failwait: Some(Duration::from_secs(3)), ..Overrides::default() };
        assert_eq!(AggregatorConfig::load(Some(&path), o).unwrap().failwait, Duration::from_secs(3));
    }

    #[test]
    fn errors_name_the_key() {
        let (key, problem) = AggregatorConfig::from_toml("failwait = \"5m\"\nfialwait = \"1m\"").unwrap_err();
        assert!(key.contains("line 2") && key.contains("fialwait"), "{key}: {problem}");
        let (key, _) = AggregatorConfig::from_toml("failwait = \"5 minutes\"").unwrap_err();
        assert_eq!(key, "line 1 failwait");
        let (key, _) = AggregatorConfig::from_toml("[retention]\nraw = 5").unwrap_err();
        assert_eq!(key, "line 2 retention.raw");
        let c = AggregatorConfig { startwait: Duration::from_secs(1), ..AggregatorConfig::default() };
        assert_eq!(c.validate().unwrap_err().0, "startwait");
        let c = AggregatorConfig::from_toml("[retention]\nraw = \"500d\"").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "retention");
        for id in ["../x", "a/b", ".hidden", "", "a b"] {
            let c = AggregatorConfig { node_id: id.into(), ..AggregatorConfig::default() };
            assert_eq!(c.validate().unwrap_err().0, "node_id", "{id:?}");
        }
        let c = AggregatorConfig::from_toml("ingest_token = \"s3cret\"").unwrap();
        assert!(c.validate().unwrap_err().1.contains("ingest_token_file"));
        let c = AggregatorConfig::from_toml("tls_cert = \"/etc/pollux/da.pem\"").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "tls_key");
        let c = AggregatorConfig::from_toml("max_connections = 0").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "max_connections");
        let c = AggregatorConfig::from_toml("[[notify.webhook]]\nurl = \"http://\"").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "notify.webhook[0].url");
        let (key, _) =
            AggregatorConfig::from_toml("[[notify.alertmanager]]\nurl = \"http://a\"\nsecret = 1").unwrap_err();
        assert!(key.contains("line 3"), "{key}");
        let c = AggregatorConfig::from_toml("[notify]\nresend_interval = \"0s\"").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "notify.resend_interval");
    }
}
