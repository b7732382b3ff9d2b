//! A local Pollux cluster, one implementation for `pollux demo`, the black-box tests and the
//! benchmarks: the real `pollux` binary started as separate processes, on the loopback
//! addresses that stand in for hosts.
//!
//! ```text
//!   proxy  127.0.0.1:P0 ──▶ da1 127.0.0.2:P1 ─┬─ <shared>/ (one shared directory)
//!                      ──▶ da2 127.0.0.3:P2 ─┘
//! ```
//!
//! - [`process`]: a child process: its log (in memory or in a file), signals, kill -9, a clean
//!   stop, and death with its parent.
//! - [`security`]: a private CA, one certificate for every loopback host, a token per route
//!   class, and the configuration keys and client that use them.
//! - [`health`]: readiness by `GET /health` (the typed [`Health`]), never by log lines.
//! - [`Cluster`]: the proxy and two aggregators, started, killed, frozen and restarted.
#![forbid(unsafe_code)]

mod cluster;
pub mod health;
pub mod process;
pub mod security;

pub use cluster::{Cluster, ClusterSpec};
pub use health::{health, wait_for};
pub use pollux_model::wire::{Health, Role};
pub use process::{Launch, LogTo, Process};
pub use security::Security;

/// The loopback addresses of the proxy and the two aggregators.
pub const PROXY_HOST: &str = "127.0.0.1";
pub const NODE_HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
/// The aggregators' node ids.
pub const NODE_NAMES: [&str; 2] = ["da1", "da2"];

/// A TCP port free on `host` right now (bound and released: another process could take it in
/// between, which on a test machine's loopback does not happen in practice).
pub fn free_port(host: &str) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}
