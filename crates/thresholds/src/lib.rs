//! Threshold rules and their evaluator.
//!
//! ```text
//!   rule + state(rule, item) + poll ──evaluate()──▶ state' + transition (open / peak / clear)
//! ```
//!
//! Everything here is pure: no clock, no storage. The repository runs [`evaluate`] for each
//! record in the transaction that loads it and stores the new state, the event and its outbox
//! entry in that same transaction, so a takeover finds thresholding exactly where the data is.
//!
//! - [`rule`]: what an operator writes, validated whole, and the `*` globs that scope it.
//! - [`eval`]: the state of a (rule, item) pair and the step from one poll to the next.
//! - [`baseline`]: the mean and deviation of the same hour of the week over the last weeks.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod eval;
pub mod rule;

pub use baseline::HourStats;
pub use eval::{evaluate, violates, Baseline, OpenEvent, Sample, State, Step, Transition};
pub use rule::{glob_match, Op, Rule, RuleError, RuleSpec, Severity};
