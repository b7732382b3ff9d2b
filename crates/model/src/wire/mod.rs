//! Wire types: the JSON bodies that cross a process boundary other than a DTO, typed once here
//! and used by every side that writes or reads them.
//!
//! ```text
//!   aggregator ── GET /health ──────────────▶ proxy, cluster harness, CLI      (Health)
//!   aggregator ── GET /api/v1/status ───────▶ pollux status, portal, demo      (SystemStatus)
//!   collector  ── PUT /api/v1/collectors/id ▶ aggregator, System Status        (CollectorReport)
//!   aggregator ── election/nodes/<id>.json ─▶ the other aggregator's status    (NodeStatus)
//! ```
//!
//! Every field has a default (`#[serde(default)]`), so a newer reader takes an older writer's
//! body; only [`CollectorReport`] refuses unknown fields, as it arrives from outside.

mod health;
mod status;

pub use health::{Health, Role};
pub use status::*;

/// The version every role reports (`/health`, the status, collector reports).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
