//! This node's role, epoch and readiness, as every part of the aggregator sees them.
//! A leaf: the election runtime writes it, everything else reads it.
//!
//! The election runtime publishes a [`NodeState`] after every step; HTTP handlers and worker
//! threads read it. Only a ready active whose acknowledgement window is open ingests and answers
//! queries; everything else answers 503 with the role and, when known, the active's URL.

use pollux_election::{Lease, LeaseState, Role};
use pollux_model::wire::{Health, VERSION};
use pollux_repository::Epoch;
use std::sync::RwLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct NodeState {
    pub role: Role,
    pub epoch: Epoch,
    /// The active services can ingest and answer queries.
    pub ready: bool,
    /// When the role last changed.
    pub since: Instant,
    /// Why the node fenced itself, while it is fenced.
    pub reason: Option<String>,
    /// The active may acknowledge until then: its last renewal plus failwait - margin.
    pub ack_until: Option<Instant>,
    /// The lease as last seen or held.
    pub lease: Option<Lease>,
    /// How long the lease has gone unchanged (standby) or unrenewed (holder).
    pub lease_age: Duration,
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
        let state = NodeState {
            role: Role::Standby,
            epoch: 0,
            ready: false,
            since: Instant::now(),
            reason: None,
            ack_until: None,
            lease: None,
            lease_age: Duration::ZERO,
        };
        Node { id, advertise, state: RwLock::new(state), started: Instant::now() }
    }

    pub fn state(&self) -> NodeState {
        self.state.read().expect("node state").clone()
    }

    /// The epoch when this node is the ready active and may acknowledge now, else `None`.
    pub fn active_epoch(&self) -> Option<Epoch> {
        let s = self.state.read().expect("node state");
        let open = s.ack_until.is_some_and(|until| Instant::now() < until);
        (s.role == Role::Active && s.ready && open).then_some(s.epoch)
    }

    /// The active's URL as the lease tells it, when another node is the active.
    pub fn active_url(&self) -> Option<String> {
        let s = self.state.read().expect("node state");
        s.lease.as_ref().filter(|l| l.state == LeaseState::Active && l.holder != self.id).map(|l| l.advertise.clone())
    }

    /// Replaces the published state, logging role changes.
    pub fn publish(&self, mut next: NodeState) {
        let mut s = self.state.write().expect("node state");
        if s.role != next.role {
            match next.role {
                Role::Fenced => tracing::error!(
                    node = %self.id, epoch = next.epoch, reason = next.reason.as_deref().unwrap_or(""),
                    "fenced: no more acknowledgements or loads"
                ),
                role => {
                    tracing::info!(node = %self.id, from = s.role.name(), to = role.name(), epoch = next.epoch, "role change")
                }
            }
            next.since = Instant::now();
        } else {
            next.since = s.since;
        }
        *s = next;
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// What `/health` says of this node.
    pub fn health(&self) -> Health {
        let s = self.state();
        Health {
            node: self.id.clone(),
            role: s.role,
            epoch: s.epoch,
            ready: s.ready,
            advertise: self.advertise.clone(),
            version: VERSION.to_owned(),
            role_seconds: s.since.elapsed().as_secs_f64(),
            uptime_seconds: self.uptime().as_secs(),
            reason: s.reason,
        }
    }
}
