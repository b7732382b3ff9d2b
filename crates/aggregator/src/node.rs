//! This node's role, epoch and readiness, as every part of the aggregator sees them.
//!
//! States follow DESIGN.md section 5: `standby -> starting -> active`, and `fenced` once the node
//! has lost the repository to a newer epoch. Only a ready active ingests, loads and answers
//! queries; everything else answers 503 with the role and, when known, the active's URL.

use pollux_repository::Epoch;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Standby,
    Starting,
    Active,
    Fenced,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Starting => "starting",
            Role::Active => "active",
            Role::Fenced => "fenced",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeState {
    pub role: Role,
    pub epoch: Epoch,
    pub ready: bool,
    pub since: Instant,
    /// Why the node is fenced, for the operator.
    pub reason: Option<String>,
}

#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub advertise: String,
    state: RwLock<NodeState>,
    started: Instant,
}

impl Node {
    pub fn new(id: String, advertise: String) -> Node {
        let state = NodeState { role: Role::Standby, epoch: 0, ready: false, since: Instant::now(), reason: None };
        Node { id, advertise, state: RwLock::new(state), started: Instant::now() }
    }

    pub fn state(&self) -> NodeState {
        self.state.read().expect("node state").clone()
    }

    /// The epoch when this node is the ready active, else `None`.
    pub fn active_epoch(&self) -> Option<Epoch> {
        let s = self.state.read().expect("node state");
        (s.role == Role::Active && s.ready).then_some(s.epoch)
    }

    pub fn set(&self, role: Role, epoch: Epoch, ready: bool) {
        let mut s = self.state.write().expect("node state");
        if s.role != role {
            tracing::info!(node = %self.id, from = s.role.name(), to = role.name(), epoch, "role change");
            s.since = Instant::now();
        }
        *s = NodeState { role, epoch, ready, since: s.since, reason: None };
    }

    /// Stops acknowledging and loading at once: a newer epoch owns the repository.
    pub fn fence(&self, reason: String) {
        let mut s = self.state.write().expect("node state");
        if s.role != Role::Fenced {
            tracing::error!(node = %self.id, epoch = s.epoch, %reason, "fenced: no more acknowledgements or loads");
            s.since = Instant::now();
        }
        s.role = Role::Fenced;
        s.ready = false;
        s.reason = Some(reason);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A wake-up call for a blocking worker thread: `notify` from anywhere, `wait` with a timeout.
#[derive(Debug, Default)]
pub struct Wake {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.pending.lock().expect("wake") = true;
        self.cond.notify_all();
    }

    /// Returns at the next `notify` (or at once if one came since the last wait), or after
    /// `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let pending = self.pending.lock().expect("wake");
        let (mut pending, _) = self.cond.wait_timeout_while(pending, timeout, |p| !*p).expect("wake");
        *pending = false;
    }
}
