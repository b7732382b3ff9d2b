//! Leader election for the Data Aggregators.
//!
//! ```text
//!           ┌────────────── runtime (aggregator crate): I/O at the edge ───────────────┐
//!  every    │  read lease ──▶ Elector::on_lease(now, view) ──▶ actions                 │
//!  poll     │  write lease ◀── Action::Write { expected, new }                          │
//!  interval │  result ──────▶ Elector::on_write(now, outcome) ──▶ actions               │
//!           │  start/stop the active services ◀── Action::Start / Action::Stop          │
//!           └───────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - [`lease`]: the lease record and the [`LeaseStore`] trait, with its shared-directory backend
//!   (a file changed only under an advisory lock). A quorum-store backend implements the same
//!   trait.
//! - [`elector`]: the decisions of election, failover and fencing as a pure state machine. It takes
//!   events with the time they happened (a monotonic [`std::time::Instant`], injected) and
//!   returns actions; it does no I/O and never reads a clock, so its tests run in microseconds.
#![forbid(unsafe_code)]

pub mod elector;
pub mod lease;

pub use elector::{Action, Elector, Role, Timing};
pub use lease::{FileLeaseStore, Lease, LeaseState, LeaseStore, StoreError};
