//! The election runtime: the I/O around the pure [`Elector`].
//!
//! One thread reads the lease every `poll_interval`, feeds the elector, and performs what it
//! decides: lease writes (compare-and-swap under the lease lock), starting and stopping the
//! active services, publishing the node's state for the HTTP handlers, and writing this node's
//! status file for the System Status view. Commands from elsewhere (a term's ready or fenced,
//! a planned switchover) arrive on a channel and wake it at once.

use crate::active::{ActiveParts, ActiveServices, TermEvent};
use crate::ingest::handoff::Handoff;
use crate::node::{Node, NodeState};
use crate::progress::Tracker;
use crate::shared_dir::SharedDir;
use crate::status::StatusSources;
use pollux_election::{Action, Elector, LeaseStore, Role, Timing};
use pollux_repository::Epoch;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a clean stop waits for the active services to finish their current step.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What other parts of the aggregator tell the election runtime.
pub enum Command {
    /// News from the services of a term.
    Term(TermEvent),
    /// A planned switchover: answer with the released epoch once the lease is released.
    Release { reply: Sender<Result<Epoch, String>> },
}

/// What the election runtime works with.
pub struct ElectionParts {
    pub node: Arc<Node>,
    pub shared: SharedDir,
    pub lease: Arc<dyn LeaseStore>,
    pub timing: Timing,
    /// How often the lease is read.
    pub poll_interval: Duration,
    pub active: Arc<ActiveParts>,
    /// This node's line of the status, written to its status file every heartbeat.
    pub status: Arc<StatusSources>,
    /// Emptied when the services stop: what it held is in the store for the next active.
    pub handoff: Arc<Handoff>,
    pub progress: Arc<Tracker>,
}

pub fn run(parts: ElectionParts, commands: Sender<Command>, inbox: Receiver<Command>, stop: CancellationToken) {
    let mut runtime = Runtime {
        elector: Elector::new(parts.node.id.clone(), parts.node.advertise.clone(), parts.timing, Instant::now()),
        services: None,
        retiring: Vec::new(),
        parts,
        commands,
        last_status_write: None,
    };
    while !stop.is_cancelled() {
        runtime.reap();
        // The fence file bounds the next epoch from below; unreadable, it makes the lease
        // unusable too (a holder keeps renewing, a standby waits).
        let (read, floor) = match runtime.parts.shared.read_fence() {
            Ok(floor) => (runtime.parts.lease.read().map_err(|e| e.to_string()), floor),
            Err(e) => (Err(format!("fence file: {e}")), 0),
        };
        if let Err(e) = &read {
            tracing::warn!(error = %e, "lease not readable");
        }
        // An operator (or the other node's API) puts this node into maintenance with a file.
        let maintenance = match runtime.parts.shared.in_maintenance(&runtime.parts.node.id) {
            Ok(on) => on,
            Err(e) => {
                tracing::warn!(error = %e, "maintenance flag unreadable; keeping the state");
                runtime.elector.in_maintenance()
            }
        };
        if maintenance != runtime.elector.in_maintenance() {
            tracing::warn!(
                maintenance,
                "maintenance {}",
                if maintenance { "on: this node never takes the lease" } else { "off" }
            );
            let actions = runtime.elector.set_maintenance(maintenance, Instant::now());
            runtime.perform(actions);
        }
        // Taken after the read: a standby's silence is measured from no earlier than what it saw.
        let now = Instant::now();
        let actions = runtime.elector.on_lease(now, read, floor);
        runtime.perform(actions);
        if runtime.elector.wants_promotion() {
            let actions = runtime.elector.on_ready(Instant::now());
            runtime.perform(actions);
        }
        runtime.publish();
        let deadline = Instant::now() + runtime.parts.poll_interval;
        loop {
            match inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(command) => {
                    runtime.handle(command);
                    runtime.publish();
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
            if stop.is_cancelled() {
                break;
            }
        }
    }
    runtime.shut_down();
}

struct Runtime {
    parts: ElectionParts,
    elector: Elector,
    services: Option<ActiveServices>,
    /// Services of terms that were stopped and have not ended yet (a step in I/O): waited for
    /// at shutdown, dropped as soon as they end.
    retiring: Vec<ActiveServices>,
    commands: Sender<Command>,
    last_status_write: Option<Instant>,
}

impl Runtime {
    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Write { expected, new } => {
                    // A renewal counts from before the write: the holder's window must never
                    // outlast what a standby could have observed.
                    let started = Instant::now();
                    let result = self.parts.lease.swap(expected.as_ref(), &new);
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, epoch = new.epoch, state = ?new.state, "lease write failed");
                    }
                    let more = self.elector.on_write(started, result);
                    self.perform(more);
                }
                Action::Start { epoch } => {
                    tracing::info!(epoch, "took the lease; starting the active services");
                    self.retire();
                    let commands = self.commands.clone();
                    let report = Arc::new(move |event| {
                        let _ = commands.send(Command::Term(event));
                    });
                    self.services = Some(self.parts.active.start(epoch, report));
                }
                Action::Stop { reason } => {
                    tracing::warn!(%reason, "stopping the active services");
                    self.retire();
                    self.parts.handoff.clear();
                    self.parts.progress.clear();
                    // The workers' health is the term's: a standby shows none.
                    self.parts.active.board.clear();
                }
            }
        }
    }

    /// Stops the current services, if any, and keeps them until they have ended.
    fn retire(&mut self) {
        if let Some(services) = self.services.take() {
            services.stop();
            self.retiring.push(services);
        }
    }

    /// Drops the retired services that have ended.
    fn reap(&mut self) {
        self.retiring.retain(|s| !s.ended());
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Term(TermEvent::Ready { epoch }) if epoch == self.elector.epoch() => {
                let actions = self.elector.on_ready(now);
                self.perform(actions);
            }
            Command::Term(TermEvent::Fenced { epoch, reason }) if epoch == self.elector.epoch() => {
                let actions = self.elector.on_fenced(now, reason);
                self.perform(actions);
            }
            Command::Release { reply } => {
                let result = match self.elector.on_release(now) {
                    Ok(actions) => {
                        let epoch = self.elector.epoch();
                        self.perform(actions);
                        Ok(epoch)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            _ => {} // news about an epoch this node no longer holds
        }
    }

    /// Publishes the state for the handlers, and every heartbeat this node's status file.
    fn publish(&mut self) {
        let now = Instant::now();
        let role = self.elector.role();
        let ack = self.elector.acknowledge_until();
        let state = NodeState {
            role,
            epoch: self.elector.epoch(),
            ready: role == Role::Active,
            since: now,
            reason: self.elector.fenced_reason().map(str::to_owned),
            ack_until: ack.map(|(_, until)| until),
            lease: self.elector.lease(),
            lease_age: self.elector.lease_age(now),
        };
        self.parts.node.publish(state);
        let heartbeat = self.elector.timing().heartbeat;
        if self.last_status_write.is_none_or(|t| now.duration_since(t) >= heartbeat) {
            self.last_status_write = Some(now);
            self.write_status_file();
        }
    }

    fn write_status_file(&self) {
        let body = serde_json::to_vec(&self.parts.status.node_status()).expect("a node status serializes");
        if let Err(e) = self.parts.shared.write_node_status(&self.parts.node.id, &body) {
            tracing::debug!(error = %e, "node status file not written");
        }
    }

    /// On a clean stop the active finishes its current load, then hands the lease over, so the
    /// standby need not wait failwait.
    fn shut_down(&mut self) {
        self.retire();
        let deadline = Instant::now() + STOP_WAIT;
        for services in self.retiring.drain(..) {
            services.wait(deadline.saturating_duration_since(Instant::now()));
        }
        if matches!(self.elector.role(), Role::Active | Role::Starting) {
            if let Ok(actions) = self.elector.on_release(Instant::now()) {
                self.perform(actions);
            }
        }
        self.publish();
    }
}
