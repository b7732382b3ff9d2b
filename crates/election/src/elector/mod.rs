//! The election's decisions, as a pure state machine.
//!
//! ```text
//!            take (lease free, released by the other, stale for failwait,
//!                  or starting for longer than startwait)
//!   standby ───────────────────────────────────────────────▶ starting ──ready──▶ active
//!      ▲                                                         │                 │
//!      │  fenced: a newer epoch holds the lease, or no renewal    │ not ready        │ planned
//!      └──────── for failwait - margin (self-fencing) ◀──────────┴─ within startwait ┘ switchover
//!                                                                   (yield: released)
//!
//!   maintenance: a standby that never takes the lease; an active put into maintenance
//!   releases it first (a planned switchover).
//! ```
//!
//! Every input carries the moment it happened on the node's monotonic clock; the machine keeps
//! no clock of its own. Its outputs are [`Action`]s the runtime performs: lease writes (each a
//! compare-and-swap whose outcome comes back through [`Elector::on_write`]) and starting or
//! stopping the active services.
//!
//! Safety does not rest on timing alone: the repository rejects every write of an older epoch
//! (fencing tokens). Timing gives liveness, and the rule that a holder stops acknowledging
//! `margin` before a standby could possibly take over.

use crate::lease::{Lease, LeaseState, StoreError};
use std::time::{Duration, Instant};

/// The failover settings and what is derived from them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// A standby takes over when the lease has not changed for this long.
    pub failwait: Duration,
    /// A new leader must be ready within this long, or it yields.
    pub startwait: Duration,
    /// How often the holder renews the lease.
    pub heartbeat: Duration,
    /// The holder stops acknowledging once `failwait - margin` has passed since its last
    /// successful renewal, so it is silent before any standby can take over.
    pub margin: Duration,
}

impl Timing {
    /// Heartbeat every tenth of failwait (at least 50 ms), margin a quarter of failwait: a holder
    /// can miss several heartbeats (a slow disk, a loaded NFS server) before it fences itself.
    pub fn new(failwait: Duration, startwait: Duration) -> Timing {
        let heartbeat = (failwait / 10).clamp(Duration::from_millis(50), Duration::from_secs(15));
        Timing { failwait, startwait, heartbeat, margin: failwait / 4 }
    }

    /// How long after a successful renewal the holder may still acknowledge.
    pub fn ack_window(&self) -> Duration {
        self.failwait.saturating_sub(self.margin)
    }
}

/// A node's role, as health and status report it (one type with the wire's).
pub use pollux_model::wire::Role;

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Replace the lease `expected` with `new`, then report the outcome with `on_write`.
    Write { expected: Option<Lease>, new: Lease },
    /// Start the active services for `epoch`; report `on_ready` once they can ingest and
    /// answer queries.
    Start { epoch: u64 },
    /// Stop the active services at once.
    Stop { reason: String },
}

/// Why the last write was asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Purpose {
    Take,
    Renew,
    Promote,
    Release,
}

/// What a standby knows of the lease it watches.
#[derive(Debug, Clone)]
struct Watch {
    seen: Option<Option<Lease>>,
    /// When `seen` last changed.
    changed_at: Instant,
    /// When the current epoch was first seen starting.
    starting_since: Option<(u64, Instant)>,
}

#[derive(Debug, Clone)]
enum State {
    Standby { watch: Watch, fenced: Option<String> },
    Holding { lease: Lease, took_at: Instant, renewed_at: Instant, ready: bool },
}

#[derive(Debug)]
pub struct Elector {
    me: String,
    advertise: String,
    timing: Timing,
    state: State,
    pending: Option<(Purpose, Lease)>,
    maintenance: bool,
}

impl Elector {
    /// A node joins as standby, always: it never disturbs a live active.
    pub fn new(me: impl Into<String>, advertise: impl Into<String>, timing: Timing, now: Instant) -> Elector {
        let watch = Watch { seen: None, changed_at: now, starting_since: None };
        Elector {
            me: me.into(),
            advertise: advertise.into(),
            timing,
            state: State::Standby { watch, fenced: None },
            pending: None,
            maintenance: false,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn role(&self) -> Role {
        match &self.state {
            State::Standby { fenced: Some(_), .. } => Role::Fenced,
            State::Standby { .. } if self.maintenance => Role::Maintenance,
            State::Standby { .. } => Role::Standby,
            State::Holding { lease, .. } if lease.state == LeaseState::Active => Role::Active,
            State::Holding { .. } => Role::Starting,
        }
    }

    /// The epoch this node holds, or the newest it has seen.
    pub fn epoch(&self) -> u64 {
        match &self.state {
            State::Holding { lease, .. } => lease.epoch,
            State::Standby { watch, .. } => watch.seen.clone().flatten().map_or(0, |l| l.epoch),
        }
    }

    /// The lease as last seen or held.
    pub fn lease(&self) -> Option<Lease> {
        match &self.state {
            State::Holding { lease, .. } => Some(lease.clone()),
            State::Standby { watch, .. } => watch.seen.clone().flatten(),
        }
    }

    /// Why the node last fenced itself, until it is a plain standby again.
    pub fn fenced_reason(&self) -> Option<&str> {
        match &self.state {
            State::Standby { fenced, .. } => fenced.as_deref(),
            State::Holding { .. } => None,
        }
    }

    /// How long the watched lease has gone unchanged (standby), or since the last renewal.
    pub fn lease_age(&self, now: Instant) -> Duration {
        match &self.state {
            State::Standby { watch, .. } => now.saturating_duration_since(watch.changed_at),
            State::Holding { renewed_at, .. } => now.saturating_duration_since(*renewed_at),
        }
    }

    /// Until when this node may acknowledge: `Some` only on the ready active, and only while its
    /// last successful renewal is younger than failwait - margin.
    pub fn acknowledge_until(&self) -> Option<(u64, Instant)> {
        match &self.state {
            State::Holding { lease, renewed_at, .. } if lease.state == LeaseState::Active => {
                Some((lease.epoch, *renewed_at + self.timing.ack_window()))
            }
            _ => None,
        }
    }

    /// The lease as read at `now` (an error when it could not be read), with `fence_floor` the
    /// epoch in the fence file: a new epoch is above both.
    pub fn on_lease(&mut self, now: Instant, read: Result<Option<Lease>, String>, fence_floor: u64) -> Vec<Action> {
        if let Some(stop) = self.check_renewal_age(now) {
            return stop;
        }
        let Ok(current) = read else {
            // Unreadable: a holder keeps trying (and fences itself in time); a standby waits.
            return Vec::new();
        };
        match &mut self.state {
            State::Standby { watch, fenced } => {
                if watch.seen.as_ref() != Some(&current) {
                    watch.seen = Some(current.clone());
                    watch.changed_at = now;
                }
                match &current {
                    Some(l) if l.state == LeaseState::Starting => {
                        if watch.starting_since.is_none_or(|(e, _)| e != l.epoch) {
                            watch.starting_since = Some((l.epoch, now));
                        }
                    }
                    _ => watch.starting_since = None,
                }
                *fenced = None;
                if self.pending.is_some() || !self.should_take(now, current.as_ref()) {
                    return Vec::new();
                }
                let epoch = current.as_ref().map_or(0, |l| l.epoch).max(fence_floor) + 1;
                let new = Lease {
                    holder: self.me.clone(),
                    advertise: self.advertise.clone(),
                    epoch,
                    counter: 0,
                    state: LeaseState::Starting,
                };
                self.pending = Some((Purpose::Take, new.clone()));
                vec![Action::Write { expected: current, new }]
            }
            State::Holding { lease, took_at, renewed_at, ready } => {
                if current.as_ref() != Some(lease) {
                    let reason = match &current {
                        Some(l) => format!("the lease is held by {} in epoch {}", l.holder, l.epoch),
                        None => "the lease disappeared".to_owned(),
                    };
                    return self.fence(now, reason);
                }
                if lease.state == LeaseState::Starting
                    && !*ready
                    && now.duration_since(*took_at) >= self.timing.startwait
                {
                    // Not ready within startwait: give the other node its turn.
                    let released = Lease { state: LeaseState::Released, ..lease.clone() };
                    let expected = Some(lease.clone());
                    let reason = format!("not ready within startwait ({:?}); yielding", self.timing.startwait);
                    let mut actions = self.fence(now, reason.clone());
                    self.pending = Some((Purpose::Release, released.clone()));
                    actions.push(Action::Write { expected, new: released });
                    return actions;
                }
                if self.pending.is_none() && now.duration_since(*renewed_at) >= self.timing.heartbeat {
                    let renewed = Lease { counter: lease.counter + 1, ..lease.clone() };
                    self.pending = Some((Purpose::Renew, renewed.clone()));
                    return vec![Action::Write { expected: Some(lease.clone()), new: renewed }];
                }
                Vec::new()
            }
        }
    }

    /// Whether a standby takes the lease it just read.
    fn should_take(&self, now: Instant, current: Option<&Lease>) -> bool {
        let State::Standby { watch, .. } = &self.state else { return false };
        if self.maintenance {
            return false;
        }
        let Some(lease) = current else { return true };
        let unchanged = now.saturating_duration_since(watch.changed_at);
        match lease.state {
            // Released by the other node: our turn at once. Released by us (a planned
            // switchover or a yield): the other node's turn, unless it has not come for failwait.
            LeaseState::Released if lease.holder != self.me => true,
            LeaseState::Released => unchanged >= self.timing.failwait,
            // Ours from before a restart: that process is gone (node ids are unique).
            _ if lease.holder == self.me => true,
            LeaseState::Starting
                if watch
                    .starting_since
                    .is_some_and(|(_, t)| now.saturating_duration_since(t) >= self.timing.startwait) =>
            {
                true
            }
            _ => unchanged >= self.timing.failwait,
        }
    }

    /// The outcome of the last `Write`.
    pub fn on_write(&mut self, now: Instant, result: Result<(), StoreError>) -> Vec<Action> {
        let Some((purpose, new)) = self.pending.take() else { return Vec::new() };
        match (purpose, result) {
            (Purpose::Take, Ok(())) => {
                let epoch = new.epoch;
                self.state = State::Holding { lease: new, took_at: now, renewed_at: now, ready: false };
                vec![Action::Start { epoch }]
            }
            (Purpose::Renew | Purpose::Promote, Ok(())) => {
                if let State::Holding { lease, renewed_at, .. } = &mut self.state {
                    *lease = new;
                    *renewed_at = now;
                }
                Vec::new()
            }
            (Purpose::Renew | Purpose::Promote, Err(StoreError::Conflict)) => {
                self.fence(now, "the lease changed under this node".to_owned())
            }
            // I/O errors: try again on the next read; the renewal age decides when to give up.
            (_, Err(_)) | (Purpose::Release, Ok(())) => Vec::new(),
        }
    }

    /// The active services can ingest and answer queries.
    pub fn on_ready(&mut self, _now: Instant) -> Vec<Action> {
        let State::Holding { lease, ready, .. } = &mut self.state else { return Vec::new() };
        *ready = true;
        if lease.state != LeaseState::Starting || self.pending.is_some() {
            return Vec::new();
        }
        let active = Lease { state: LeaseState::Active, ..lease.clone() };
        self.pending = Some((Purpose::Promote, active.clone()));
        vec![Action::Write { expected: Some(lease.clone()), new: active }]
    }

    /// A promotion that failed on I/O is retried here, on the next read after it.
    pub fn wants_promotion(&self) -> bool {
        matches!(&self.state, State::Holding { lease, ready: true, .. } if lease.state == LeaseState::Starting)
            && self.pending.is_none()
    }

    /// A planned switchover: stop, then release the lease to the other node.
    pub fn on_release(&mut self, now: Instant) -> Result<Vec<Action>, String> {
        let State::Holding { lease, .. } = &self.state else {
            return Err(format!("this node is {}, not the active", self.role().name()));
        };
        let expected = Some(lease.clone());
        let released = Lease { state: LeaseState::Released, ..lease.clone() };
        let mut actions = self.fence(now, "planned switchover".to_owned());
        if let State::Standby { fenced, .. } = &mut self.state {
            *fenced = None;
        }
        self.pending = Some((Purpose::Release, released.clone()));
        actions.push(Action::Write { expected, new: released });
        Ok(actions)
    }

    /// Puts the node into maintenance or takes it out. An active (or starting) node hands the
    /// lease over first, as in a planned switchover.
    pub fn set_maintenance(&mut self, on: bool, now: Instant) -> Vec<Action> {
        if self.maintenance == on {
            return Vec::new();
        }
        self.maintenance = on;
        match (&self.state, on) {
            (State::Holding { .. }, true) => {
                let mut actions = self.on_release(now).unwrap_or_default();
                for action in &mut actions {
                    if let Action::Stop { reason } = action {
                        *reason = "maintenance: handing over".to_owned();
                    }
                }
                actions
            }
            _ => Vec::new(),
        }
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance
    }

    /// The active services found a newer epoch in the repository.
    pub fn on_fenced(&mut self, now: Instant, reason: String) -> Vec<Action> {
        match self.state {
            State::Holding { .. } => self.fence(now, reason),
            State::Standby { .. } => Vec::new(),
        }
    }

    /// A holder whose last renewal is older than failwait - margin fences itself.
    fn check_renewal_age(&mut self, now: Instant) -> Option<Vec<Action>> {
        let State::Holding { renewed_at, .. } = &self.state else { return None };
        let age = now.saturating_duration_since(*renewed_at);
        (age >= self.timing.ack_window()).then(|| self.fence(now, format!("no successful lease renewal for {age:?}")))
    }

    fn fence(&mut self, now: Instant, reason: String) -> Vec<Action> {
        let seen = self.lease();
        self.pending = None;
        let watch = Watch { seen: Some(seen), changed_at: now, starting_since: None };
        self.state = State::Standby { watch, fenced: Some(reason.clone()) };
        vec![Action::Stop { reason }]
    }
}

#[cfg(test)]
mod tests;
