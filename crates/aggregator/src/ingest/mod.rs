//! Ingest: what a `PUT /api/v1/dto/{id}` needs, and where an accepted DTO goes.
//!
//! ```text
//!   PUT ─▶ api::ingest (decode, validate, registry check) ─▶ store: tmp, fsync, link, fsync dir
//!                                                              ├─▶ 201 (only now)
//!                                                              └─▶ handoff ─▶ loader (in memory)
//! ```
//!
//! - [`store`]: the DTO files in `<shared>/dto/`, whole or absent: the durable queue.
//! - [`handoff`]: the DTOs just stored, passed to the loader without reading them back.

pub mod handoff;
pub mod store;

use crate::metrics::Metrics;
use crate::node::Node;
use crate::shared_dir::families::Families;
use crate::shared_dir::SharedDir;
use crate::wake::Wake;
use handoff::Handoff;
use pollux_model::Limits;
use pollux_repository::Repository;
use std::sync::Arc;
use store::DtoStore;
use tokio::sync::Semaphore;

/// The parts the ingest routes use (DTOs and collector reports), and nothing else.
pub struct Ingest {
    /// Only the ready active acknowledges.
    pub node: Arc<Node>,
    /// Collector reports are kept there.
    pub shared: SharedDir,
    pub store: Arc<DtoStore>,
    pub handoff: Arc<Handoff>,
    /// Asked whether an id is already loaded (200, or 409 for other content).
    pub repo: Arc<dyn Repository>,
    pub families: Arc<Families>,
    pub limits: Limits,
    pub max_body_bytes: usize,
    /// Bytes of request bodies held in memory, over all connections (`max_body_bytes_in_flight`).
    pub body_budget: Arc<Semaphore>,
    /// DTO bodies decoded at once: decoding is CPU work, and each decode holds a body and its
    /// DTO in memory, so more at once than cores only costs memory.
    pub decoders: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// The loader, woken by every DTO stored.
    pub loader: Arc<Wake>,
}
