//! Pollux's domain model, shared by every role and free of I/O.
//!
//! - [`family`]: metric families (the built-in Interface, CPU, Memory and Availability, and
//!   operators' customized families parsed from TOML) and the [`Catalog`] that names them.
//! - [`dto`]: the DTO, the unit of transfer, durability and loading (one metric family over one
//!   poll cycle from one collector), and its validation against the catalog.
//! - [`codec`]: the JSON form of the external contract and a compact binary form, used on the
//!   wire under its own content type and for the DTO files in the shared directory.
//! - [`config`]: TOML configuration parsing with errors that name the line and key.
//! - [`duration`]: the `"5m"`-style durations of the configuration (`failwait`, `startwait`).
//! - [`expr`]: the arithmetic that turns a customized metric's raw value into the stored one.
//! - [`period`]: the UTC hour, day and week periods that rollups are computed over.
//! - [`wire`]: the JSON bodies other than DTOs that cross a process boundary (health, the
//!   System Status, collector reports), typed once for writers and readers alike.
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod csv;
pub mod dto;
pub mod duration;
pub mod expr;
pub mod family;
pub mod percentile;
pub mod period;
pub mod wire;

pub use dto::{Digest, Dto, DtoError, DtoId, Limits, Record};
pub use family::{Catalog, FamilyError, Metric, MetricFamily, MetricKind};
pub use period::Resolution;

/// Unix time in whole seconds, the unit of every timestamp in the contract.
pub type UnixSeconds = i64;
