//! The device simulator: many SNMP agents in one process, for the demo, tests and benchmarks.
//!
//! Device `k` (0-based) of a simulator listening on `ADDR:PORT` answers on `ADDR:PORT+k`, so
//! 10,000 devices take ports 16100 to 26099 with the default address. Each device has
//! `interfaces` interfaces (IF-MIB ifTable and ifXTable), two processors (hrProcessorLoad) and
//! RAM, swap and a disk (hrStorageTable); see [`mib`] for how the values move. The first
//! `v3_devices` devices speak SNMPv3 (authPriv, SHA and AES-128), the others SNMPv2c.
//! [`Simulator::inventory`] writes the collector inventory that polls them all.
//!
//! ```text
//!   collector ──UDP──> :16100 device 0 ─┐
//!             ──UDP──> :16101 device 1 ─┼─> mib::Shape (shared, sorted OIDs) + mib::Device (values from time)
//!             ──UDP──> ...              ─┘
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod ber;
pub mod mib;

use agent::{AgentStats, Impairments, V3Credentials};
use mib::{Device, Shape};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default first port: devices take consecutive ports from here.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:16100";
/// The community every v2c device answers to.
pub const COMMUNITY: &str = "public";

#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    pub devices: u32,
    pub interfaces: u32,
    /// Address and first port.
    pub listen: SocketAddr,
    /// How many of the devices (the first ones) speak SNMPv3.
    pub v3_devices: u32,
    pub v3: V3Credentials,
    pub impairments: Impairments,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            devices: 10,
            interfaces: 10,
            listen: DEFAULT_LISTEN.parse().expect("default address"),
            v3_devices: 0,
            v3: V3Credentials {
                user: "pollux".into(),
                auth_password: "pollux-auth-secret".into(),
                priv_password: "pollux-priv-secret".into(),
            },
            impairments: Impairments::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("--devices: {0}")]
    Devices(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("SNMPv3 agent on {addr}: {problem}")]
    V3 { addr: SocketAddr, problem: String },
}

/// A running simulator: every socket is bound by [`Simulator::start`].
pub struct Simulator {
    config: SimulatorConfig,
    devices: Vec<Device>,
    stats: Arc<AgentStats>,
    tasks: tokio::task::JoinSet<()>,
}

impl Simulator {
    /// Binds every device's socket; an error names the address that could not be bound.
    pub async fn start(config: SimulatorConfig, shutdown: CancellationToken) -> Result<Simulator, SimulatorError> {
        let last_port = u32::from(config.listen.port()) + config.devices.saturating_sub(1);
        if config.devices == 0 || last_port > u32::from(u16::MAX) {
            return Err(SimulatorError::Devices(format!(
                "{} devices from port {} do not fit below port 65536",
                config.devices,
                config.listen.port()
            )));
        }
        let shape = Arc::new(Shape::new(config.interfaces));
        let start = agent::now();
        let width = config.devices.to_string().len().max(3);
        let devices: Vec<Device> = (0..config.devices)
            .map(|k| {
                // Devices booted up to 30 days ago, each at its own moment.
                let age = 60.0 + f64::from(k.wrapping_mul(2_654_435_761) % 2_592_000);
                Device::new(k, format!("sim-{k:0width$}"), start - age, start)
            })
            .collect();
        let stats = Arc::new(AgentStats::default());
        let community = Arc::new(COMMUNITY.as_bytes().to_vec());
        let impairments = Arc::new(config.impairments.clone());
        let keys = if config.v3_devices > 0 {
            Some(
                agent::master_keys(&config.v3)
                    .map_err(|e| SimulatorError::V3 { addr: config.listen, problem: e.to_string() })?,
            )
        } else {
            None
        };
        let mut tasks = tokio::task::JoinSet::new();
        for device in &devices {
            let addr = SocketAddr::new(config.listen.ip(), config.listen.port() + device.number as u16);
            if let (true, Some(keys)) = (device.number < config.v3_devices, &keys) {
                let agent = agent::start_v3(addr, shape.clone(), device.clone(), &config.v3, keys, shutdown.clone())
                    .await
                    .map_err(|problem| SimulatorError::V3 { addr, problem })?;
                // The agent stops on `shutdown`, which it was built with.
                tasks.spawn(async move {
                    if let Err(e) = agent.run().await {
                        tracing::warn!("SNMPv3 agent on {addr}: {e}");
                    }
                });
                continue;
            }
            let socket =
                tokio::net::UdpSocket::bind(addr).await.map_err(|source| SimulatorError::Bind { addr, source })?;
            tasks.spawn(agent::serve_v2c(
                socket,
                shape.clone(),
                device.clone(),
                community.clone(),
                impairments.clone(),
                stats.clone(),
                shutdown.clone(),
            ));
        }
        Ok(Simulator { config, devices, stats, tasks })
    }

    /// The collector inventory for every device of this simulator, as TOML.
    pub fn inventory(&self) -> String {
        let mut out = format!(
            "# Written by `pollux simulate`: {} devices with {} interfaces each.\n",
            self.config.devices, self.config.interfaces
        );
        for device in &self.devices {
            let port = u32::from(self.config.listen.port()) + device.number;
            let _ = write!(
                out,
                "\n[[device]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\n",
                device.name,
                self.config.listen.ip(),
                port
            );
            if device.number < self.config.v3_devices {
                let v3 = &self.config.v3;
                let _ = write!(
                    out,
                    "version = \"3\"\nuser = \"{}\"\nauth_protocol = \"sha\"\nauth_password = \"{}\"\n\
                     priv_protocol = \"aes\"\npriv_password = \"{}\"\n",
                    v3.user, v3.auth_password, v3.priv_password
                );
            } else {
                let _ = write!(out, "version = \"2c\"\ncommunity = \"{COMMUNITY}\"\n");
            }
        }
        out
    }

    /// Serves until `shutdown`, logging request counts once a minute.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut report = tokio::time::interval(Duration::from_secs(60));
        report.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = report.tick() => {
                    tracing::info!(
                        requests = self.stats.requests.load(Ordering::Relaxed),
                        dropped = self.stats.dropped.load(Ordering::Relaxed),
                        malformed_sent = self.stats.malformed_sent.load(Ordering::Relaxed),
                        undecodable = self.stats.undecodable.load(Ordering::Relaxed),
                        "v2c agents"
                    );
                }
            }
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
