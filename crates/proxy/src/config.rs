//! The proxy's configuration: a TOML file overridden by flags, checked once at start.

pub use pollux_model::config::ConfigError;
use pollux_model::duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8581";
/// Sub-second, so a takeover is noticed within a fraction of a second of the new active's
/// readiness.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// A health check slower than this counts as a failure (a frozen aggregator never answers).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Base URLs of the aggregators, e.g. `http://127.0.0.2:8581`.
    pub aggregators: Vec<String>,
    #[serde(with = "duration::serde_str")]
    pub check_interval: Duration,
    #[serde(with = "duration::serde_str")]
    pub check_timeout: Duration,
    pub max_connections: usize,
    #[serde(with = "duration::serde_str")]
    pub idle_timeout: Duration,
    #[serde(with = "duration::serde_str")]
    pub body_timeout: Duration,
    /// Certificate and key of the HTTPS listener; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA certificates trusted for https:// aggregator URLs; the system's roots without it.
    pub ca_file: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            aggregators: Vec::new(),
            check_interval: DEFAULT_CHECK_INTERVAL,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            max_connections: pollux_transport::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: pollux_transport::DEFAULT_IDLE_TIMEOUT,
            body_timeout: pollux_transport::DEFAULT_BODY_TIMEOUT,
            tls_cert: None,
            tls_key: None,
            ca_file: None,
        }
    }
}

impl ProxyConfig {
    /// Reads `file` (if any), then applies the flags: `listen` and, when any are given, the
    /// aggregator URLs (which replace the file's list).
    pub fn load(
        file: Option<&Path>,
        listen: Option<SocketAddr>,
        aggregators: Vec<String>,
    ) -> Result<ProxyConfig, ConfigError> {
        let name = file.map_or_else(|| "command line".to_owned(), |p| p.display().to_string());
        let err = |key: &str, problem: String| ConfigError::new(&name, key, problem);
        let mut config = match file {
            Some(path) => pollux_model::config::read_file(path)?,
            None => ProxyConfig::default(),
        };
        config.listen = listen.unwrap_or(config.listen);
        if !aggregators.is_empty() {
            config.aggregators = aggregators;
        }
        if config.aggregators.is_empty() {
            return Err(err("aggregators", "name at least one aggregator URL (--aggregator)".into()));
        }
        for url in &config.aggregators {
            let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or_default();
            if host.trim_end_matches('/').is_empty() || url.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(err("aggregators", format!("{url:?} must be an http:// or https:// URL")));
            }
        }
        config.aggregators = config.aggregators.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        if config.check_interval.is_zero() || config.check_timeout.is_zero() {
            return Err(err("check_interval", "check_interval and check_timeout must be more than 0".into()));
        }
        config.server_limits().validate().map_err(|(key, problem)| err(&key, problem))?;
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            let missing = if config.tls_cert.is_some() { "tls_key" } else { "tls_cert" };
            return Err(err(missing, "is needed too: HTTPS takes both tls_cert and tls_key".into()));
        }
        Ok(config)
    }

    /// Reads the TLS files: the listener's certificate and what the forwarding trusts.
    pub fn tls(&self) -> Result<(Option<pollux_transport::ServerTls>, pollux_transport::ClientTls), (String, String)> {
        let listener = pollux_transport::tls::listener_tls(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        let client = pollux_transport::ClientTls::load(self.ca_file.as_deref()).map_err(|e| e.into_key_problem())?;
        Ok((listener, client))
    }

    /// What the listener allows its clients.
    pub fn server_limits(&self) -> pollux_transport::ServerLimits {
        pollux_transport::ServerLimits {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
        }
    }
}
