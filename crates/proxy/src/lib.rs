//! The proxy: one address for collectors, users and the portal, whichever aggregator is active.
//!
//! ```text
//!   clients ──▶ proxy ──▶ the ready active with the highest epoch   (bodies streamed both ways)
//!                 │
//!                 └─ health checker: GET /health/active on every aggregator each check_interval
//! ```
//!
//! While no aggregator is the ready active the proxy answers 503 with `Retry-After`, so
//! collectors keep their DTOs and try again. It adds one loopback hop and no buffering. Its own
//! view of the backends is at `/proxy/status`; every other path is forwarded.
#![forbid(unsafe_code)]

pub mod config;
mod forward;
mod health;

pub use config::{ConfigError, ProxyConfig};

use health::Backends;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    config: ProxyConfig,
    listener: std::net::TcpListener,
    tls: Option<pollux_transport::ServerTls>,
    client: pollux_transport::ClientTls,
}

impl Proxy {
    /// Reads the TLS files; the caller binds the listener (tests use port 0). The error is
    /// `(key, problem)`.
    pub fn build(config: ProxyConfig, listener: std::net::TcpListener) -> Result<Proxy, (String, String)> {
        let (tls, client) = config.tls()?;
        Ok(Proxy { config, listener, tls, client })
    }

    /// Serves until `shutdown` fires; returns when the checker and the server have stopped.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        tracing::info!("listening on {}", listener.local_addr()?);
        let backends = Arc::new(Backends::new(&self.config));
        let checker =
            tokio::spawn(health::run(backends.clone(), self.config.clone(), self.client.clone(), shutdown.clone()));
        let open_files = pollux_transport::raise_open_file_limit();
        // Each client connection may hold a connection to the active as well: two handles.
        let limits = self.config.server_limits().fitted(open_files / 2);
        tracing::info!(open_files, max_connections = limits.max_connections, "connection limits");
        forward::serve(listener, self.tls, &self.client, backends, limits, shutdown).await;
        let _ = checker.await;
        Ok(())
    }
}
