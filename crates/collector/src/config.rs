//! The collector's configuration: a TOML file, overridden by command-line flags, checked once.
//! Every key and its default is listed in docs/reference.md; defaults live here as named constants.

pub use pollux_model::config::ConfigError;
use pollux_model::duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_AGGREGATOR: &str = "http://127.0.0.1:8581";
pub const DEFAULT_INVENTORY: &str = "/etc/pollux/inventory.toml";
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/pollux/spool";
/// The original product's usual poll cycle.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A loaded agent answers within tens of milliseconds; two seconds is patient without letting
/// one dead device stretch its cycle.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RETRIES: u32 = 1;
/// Devices polled at once. Each costs one request in flight; the bound keeps a cycle over
/// thousands of devices from bursting them all onto the network in the same millisecond.
pub const DEFAULT_MAX_CONCURRENT_POLLS: usize = 256;
/// Records per DTO before a cycle is split into parts: a 10,000-record DTO is ~1 MB in the
/// binary codec, far below the aggregator's limits, and loads in one transaction.
pub const DEFAULT_MAX_RECORDS_PER_DTO: usize = 10_000;
/// About a day of 100,000 interfaces every 5 minutes in the binary codec.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:8582";
/// A DTO of 10,000 records takes well under a second to store; 30 s covers a slow NFS fsync.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often customized families are fetched from the active aggregator.
pub const DEFAULT_FAMILIES_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    pub id: String,
    pub aggregators: Vec<String>,
    pub inventory: PathBuf,
    pub spool_dir: PathBuf,
    #[serde(with = "duration::serde_str")]
    pub interval: Duration,
    #[serde(with = "duration::serde_str")]
    pub timeout: Duration,
    pub retries: u32,
    pub max_concurrent_polls: usize,
    pub max_records_per_dto: usize,
    pub spool_max_bytes: u64,
    pub metrics_listen: SocketAddr,
    /// Replaced by `ingest_token_file`; kept only to say so.
    pub ingest_token: Option<serde::de::IgnoredAny>,
    /// The ingest token, sent with every DTO and report (and the family listing).
    pub ingest_token_file: Option<PathBuf>,
    /// CA certificates trusted for https:// aggregator URLs; the system's roots without it.
    pub ca_file: Option<PathBuf>,
    /// When set, `/metrics` needs this token (a Prometheus scrape's bearer token).
    pub read_token_file: Option<PathBuf>,
    /// Certificate and key of the metrics listener; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(with = "duration::serde_str")]
    pub send_timeout: Duration,
    #[serde(with = "duration::serde_str")]
    pub families_refresh: Duration,
    /// When set, the id of every acknowledged DTO is appended to this file (an audit trail; what
    /// `pollux demo --chaos` checks against the repository).
    pub ack_log: Option<PathBuf>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            id: default_id(),
            aggregators: vec![DEFAULT_AGGREGATOR.to_owned()],
            inventory: DEFAULT_INVENTORY.into(),
            spool_dir: DEFAULT_SPOOL_DIR.into(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            max_concurrent_polls: DEFAULT_MAX_CONCURRENT_POLLS,
            max_records_per_dto: DEFAULT_MAX_RECORDS_PER_DTO,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            metrics_listen: DEFAULT_METRICS_LISTEN.parse().expect("default address"),
            ingest_token: None,
            ingest_token_file: None,
            ca_file: None,
            read_token_file: None,
            tls_cert: None,
            tls_key: None,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            families_refresh: DEFAULT_FAMILIES_REFRESH,
            ack_log: None,
        }
    }
}

fn default_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collector".to_owned())
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub id: Option<String>,
    pub aggregators: Vec<String>,
    pub inventory: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub interval: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
}

impl CollectorConfig {
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<CollectorConfig, ConfigError> {
        let (mut config, source) = match file {
            Some(path) => (pollux_model::config::read_file(path)?, path.display().to_string()),
            None => (CollectorConfig::default(), "command line".to_owned()),
        };
        let o = overrides;
        config.id = o.id.unwrap_or(config.id);
        if !o.aggregators.is_empty() {
            config.aggregators = o.aggregators;
        }
        config.inventory = o.inventory.unwrap_or(config.inventory);
        config.spool_dir = o.spool_dir.unwrap_or(config.spool_dir);
        config.interval = o.interval.unwrap_or(config.interval);
        config.metrics_listen = o.metrics_listen.unwrap_or(config.metrics_listen);
        // `http://da1:8581/` and `http://da1:8581` are the same aggregator.
        for url in &mut config.aggregators {
            while url.ends_with('/') {
                url.pop();
            }
        }
        config.validate().map_err(|(key, problem)| ConfigError::new(source, key, problem))?;
        Ok(config)
    }

    /// Cross-field and range checks, before any port is bound or file touched.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: String| Err((key.to_owned(), problem));
        if pollux_model::DtoId::parse(&self.id).is_err() || self.id.len() > 64 {
            return err("id", format!("{:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ : -", self.id));
        }
        if self.aggregators.is_empty() {
            return err("aggregators", "name at least one aggregator (or the proxy) URL".into());
        }
        if self.ingest_token.is_some() {
            return err(
                "ingest_token",
                "tokens are read from files now: write it to a file (mode 600) and set ingest_token_file".into(),
            );
        }
        for url in &self.aggregators {
            let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or_default();
            if host.is_empty() || url.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return err("aggregators", format!("{url:?} is not an http:// or https:// URL"));
            }
        }
        let secs = self.interval.as_secs();
        if secs == 0 || self.interval.subsec_nanos() != 0 || secs > u64::from(pollux_model::dto::MAX_INTERVAL) {
            return err("interval", "must be whole seconds, from 1s to 1d".into());
        }
        if self.timeout.is_zero() {
            return err("timeout", "must be more than zero".into());
        }
        if self.retries > 10 {
            return err("retries", "at most 10".into());
        }
        if self.max_concurrent_polls == 0 {
            return err("max_concurrent_polls", "must be at least 1".into());
        }
        if self.max_records_per_dto == 0 || self.max_records_per_dto > 100_000 {
            return err("max_records_per_dto", "must be 1 to 100000 (the aggregator's default limit)".into());
        }
        if self.spool_max_bytes < 64 << 10 {
            return err("spool_max_bytes", "must be at least 65536 (64 KiB)".into());
        }
        if self.send_timeout.is_zero() {
            return err("send_timeout", "must be more than zero".into());
        }
        Ok(())
    }
}

/// The configuration's token and TLS files, read.
#[derive(Debug, Clone)]
pub struct Security {
    pub token: pollux_transport::auth::ClientToken,
    /// What `/metrics` requires, if anything (read again on SIGHUP).
    pub metrics_token: std::sync::Arc<pollux_transport::auth::TokenFiles>,
    pub client: pollux_transport::ClientTls,
    pub listener: Option<pollux_transport::ServerTls>,
}

impl CollectorConfig {
    /// Reads `ingest_token_file`, if set; the error is `(key, problem)`.
    pub fn ingest_token(&self) -> Result<Option<pollux_transport::auth::Secret>, (String, String)> {
        self.ingest_token_file
            .as_deref()
            .map(|path| pollux_transport::auth::read_token_file("ingest_token_file", path))
            .transpose()
    }

    /// Reads the token and TLS files; the error is `(key, problem)`.
    pub fn security(&self) -> Result<Security, (String, String)> {
        let token = pollux_transport::auth::ClientToken::new(self.ingest_token()?);
        let metrics_token =
            std::sync::Arc::new(pollux_transport::auth::TokenFiles::load(None, None, self.read_token_file.as_deref())?);
        let client = pollux_transport::ClientTls::load(self.ca_file.as_deref()).map_err(|e| e.into_key_problem())?;
        let listener = pollux_transport::tls::listener_tls(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        Ok(Security { token, metrics_token, client, listener })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.toml");
        std::fs::write(&path, "id = \"dc1\"\ninterval = \"1m\"\nretries = 2\n").unwrap();
        let overrides = Overrides { interval: Some(Duration::from_secs(10)), ..Default::default() };
        let config = CollectorConfig::load(Some(&path), overrides).unwrap();
        assert_eq!((config.id.as_str(), config.interval, config.retries), ("dc1", Duration::from_secs(10), 2));
        std::fs::write(&path, "id = \"dc1\"\nretries = \"two\"\n").unwrap();
        let e = CollectorConfig::load(Some(&path), Overrides::default()).unwrap_err();
        assert_eq!(e.key, "line 2 retries");
        std::fs::write(&path, "id = \"dc 1\"\n").unwrap();
        assert_eq!(CollectorConfig::load(Some(&path), Overrides::default()).unwrap_err().key, "id");
        for url in ["ftp://x", "https://", "http://", "http://da 1"] {
            let bad = Overrides { aggregators: vec![url.into()], ..Default::default() };
            assert_eq!(CollectorConfig::load(None, bad).unwrap_err().key, "aggregators", "{url}");
        }
        let slash = Overrides { aggregators: vec!["http://da1:8581/".into()], ..Default::default() };
        assert_eq!(CollectorConfig::load(None, slash).unwrap().aggregators, ["http://da1:8581"]);
        let https = Overrides { aggregators: vec!["https://da1:8581".into()], ..Default::default() };
        assert_eq!(CollectorConfig::load(None, https).unwrap().aggregators, ["https://da1:8581"]);
    }
}
