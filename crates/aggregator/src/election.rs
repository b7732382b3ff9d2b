//! The election runtime: the I/O around the pure [`Elector`].
//!
//! One thread reads the lease every `poll_interval`, feeds the elector, and performs what it
//! decides: lease writes (compare-and-swap under the lease lock), starting and stopping the
//! active services, publishing the node's state for the HTTP handlers, and writing this node's
//! status file for the System Status view. Commands from elsewhere (ready, fenced, planned
//! switchover) arrive on a channel and wake it at once.

use crate::node::NodeState;
use crate::services::ActiveServices;
use crate::App;
use pollux_election::{Action, Elector, LeaseStore, Role};
use pollux_repository::Epoch;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What other parts of the aggregator tell the election runtime.
pub enum Command {
    /// The services started for `epoch` can ingest and answer queries.
    Ready { epoch: Epoch },
    /// The services of `epoch` found a newer epoch in the repository.
    Fenced { epoch: Epoch, reason: String },
    /// A planned switchover: answer with the released epoch once the lease is released.
    Release { reply: Sender<Result<Epoch, String>> },
}

pub fn run(
    app: Arc<App>,
    store: Arc<dyn LeaseStore>,
    commands: Sender<Command>,
    inbox: Receiver<Command>,
    stop: CancellationToken,
) {
    let timing = app.timing();
    let mut runtime = Runtime {
        elector: Elector::new(app.node.id.clone(), app.node.advertise.clone(), timing, Instant::now()),
        services: None,
        app,
        store,
        commands,
        last_status_write: None,
    };
    while !stop.is_cancelled() {
        // The fence file bounds the next epoch from below; unreadable, it makes the lease
        // unusable too (a holder keeps renewing, a standby waits).
        let (read, floor) = match runtime.app.shared.read_fence() {
            Ok(floor) => (runtime.store.read().map_err(|e| e.to_string()), floor),
            Err(e) => (Err(format!("fence file: {e}")), 0),
        };
        if let Err(e) = &read {
            tracing::warn!(error = %e, "lease not readable");
        }
        // An operator (or the other node's API) puts this node into maintenance with a file.
        let maintenance = match runtime.app.shared.in_maintenance(&runtime.app.node.id) {
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
        let deadline = Instant::now() + runtime.app.config.poll_interval();
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
    app: Arc<App>,
    elector: Elector,
    store: Arc<dyn LeaseStore>,
    services: Option<ActiveServices>,
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
                    let result = self.store.swap(expected.as_ref(), &new);
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, epoch = new.epoch, state = ?new.state, "lease write failed");
                    }
                    let more = self.elector.on_write(started, result);
                    self.perform(more);
                }
                Action::Start { epoch } => {
                    tracing::info!(epoch, "took the lease; starting the active services");
                    if let Some(old) = self.services.take() {
                        old.stop();
                    }
                    self.services = Some(ActiveServices::start(self.app.clone(), epoch, self.commands.clone()));
                }
                Action::Stop { reason } => {
                    tracing::warn!(%reason, "stopping the active services");
                    if let Some(services) = self.services.take() {
                        services.stop();
                    }
                    self.app.handoff.clear();
                    self.app.progress.clear();
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Ready { epoch } if epoch == self.elector.epoch() => {
                let actions = self.elector.on_ready(now);
                self.perform(actions);
            }
            Command::Fenced { epoch, reason } if epoch == self.elector.epoch() => {
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
        self.app.node.publish(state);
        let heartbeat = self.elector.timing().heartbeat;
        if self.last_status_write.is_none_or(|t| now.duration_since(t) >= heartbeat) {
            self.last_status_write = Some(now);
            self.write_status_file();
        }
    }

    fn write_status_file(&self) {
        let body = serde_json::to_vec(&self.app.node_status()).expect("a node status serializes");
        if let Err(e) = self.app.shared.write_node_status(&self.app.node.id, &body) {
            tracing::debug!(error = %e, "node status file not written");
        }
    }

    /// On a clean stop the active finishes its current load, then hands the lease over, so the
    /// standby need not wait failwait.
    fn shut_down(&mut self) {
        if let Some(services) = self.services.take() {
            services.stop_and_wait(Duration::from_secs(5));
        }
        if matches!(self.elector.role(), Role::Active | Role::Starting) {
            if let Ok(actions) = self.elector.on_release(Instant::now()) {
                self.perform(actions);
            }
        }
        self.publish();
    }
}
