//! `/api/v1/failover` and `/api/v1/maintenance`: an operator's planned changes, answered on
//! every node whatever its role.

use super::{blocking, ApiError};
use crate::election::Command;
use crate::node::Node;
use crate::shared_dir::SharedDir;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The parts the operations use.
pub struct Operations {
    pub node: Arc<Node>,
    pub shared: SharedDir,
    /// The election runtime's inbox (planned switchover requests).
    pub commands: Mutex<Sender<Command>>,
    pub failwait: Duration,
}

/// A planned switchover: the active stops, releases the lease, and the standby takes it at
/// its next read. Refused (409) on a node that is not the active.
pub async fn failover(State(ops): State<Arc<Operations>>) -> Result<Json<Value>, ApiError> {
    let (reply, answer) = std::sync::mpsc::channel();
    ops.commands
        .lock()
        .expect("commands")
        .send(Command::Release { reply })
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the election runtime is not running"))?;
    let result = blocking(move || answer.recv_timeout(Duration::from_secs(10))).await?;
    match result {
        Ok(Ok(epoch)) => Ok(Json(json!({"released": true, "node": ops.node.id, "epoch": epoch}))),
        Ok(Err(why)) => Err(ApiError::new(StatusCode::CONFLICT, why)),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the election runtime did not answer")),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// The node to change; this one when absent.
    node: Option<String>,
    on: bool,
    /// Put the active into maintenance even with no healthy standby to hand over to.
    #[serde(default)]
    force: bool,
}

/// How long a request waits for an active put into maintenance to hand over.
const HANDOVER_WAIT: Duration = Duration::from_secs(15);

/// `POST /api/v1/maintenance`: puts a node into maintenance (it never takes the lease; an
/// active hands over first) or takes it out. Answers on every node. Refused (409), unless
/// `force`, for the active when no healthy standby would take over, and for any node when no
/// healthy aggregator would be left out of maintenance.
pub async fn maintenance(
    State(ops): State<Arc<Operations>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    super::require_json(&headers)?;
    let request: MaintenanceRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let named = request.node.is_some();
    let node = request.node.unwrap_or_else(|| ops.node.id.clone());
    if !crate::config::valid_node_id(&node) {
        return Err(ApiError::bad_request(format!("node: {node:?} is not a node id")));
    }
    let failwait_ms = ops.failwait.as_millis() as i64;
    let answer = blocking(move || -> Result<Value, ApiError> {
        let statuses = ops.shared.read_node_statuses();
        let now_ms = crate::unix_now_ms();
        let fresh = |s: &Value| s["updated_at_ms"].as_i64().is_some_and(|t| now_ms - t < failwait_ms);
        if node != ops.node.id && !statuses.iter().any(|(id, _)| *id == node) && request.on {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no aggregator named {node:?} has reported")));
        }
        // "off" for "whichever node answered" is a mistake through the proxy: the node in
        // maintenance is not the one answering. Name the node then.
        if !request.on && !named && !ops.shared.in_maintenance(&node).unwrap_or(false) {
            let waiting = ops.shared.nodes_in_maintenance();
            if !waiting.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{node} is not in maintenance; {} is: name it (--node)", waiting.join(", ")),
                ));
            }
        }
        let holds = |lease: &Option<pollux_election::Lease>| {
            lease.as_ref().is_some_and(|l| l.holder == node && l.state != pollux_election::LeaseState::Released)
        };
        let was_active = holds(&ops.node.state().lease);
        // The check and the flag are one step for every node at once (a lock in the shared
        // directory): two nodes put into maintenance together must see each other's flag, or
        // both go and nothing is active.
        let decided = ops
            .shared
            .change_maintenance(&node, request.on, |in_maintenance| {
                if !request.on || request.force {
                    return Ok(());
                }
                let remaining = |role: &str| {
                    statuses.iter().any(|(id, s)| {
                        *id != node && !in_maintenance.contains(id) && s["role"] == role && fresh(s)
                    })
                };
                if was_active && !remaining("standby") {
                    return Err(format!(
                        "{node} is the active and no healthy standby would take over: nothing would be acknowledged; use --force to go ahead"
                    ));
                }
                // A node starting is the active of a moment later (a status file lags its role by
                // up to a heartbeat).
                if !was_active && !remaining("active") && !remaining("starting") && !remaining("standby") {
                    let seen: Vec<String> = statuses
                        .iter()
                        .map(|(id, s)| {
                            let age = s["updated_at_ms"].as_i64().map_or(-1.0, |t| (now_ms - t) as f64 / 1000.0);
                            let flag = if in_maintenance.contains(id) { ", in maintenance" } else { "" };
                            format!("{id} {} {age:.1} s ago{flag}", s["role"].as_str().unwrap_or("?"))
                        })
                        .collect();
                    return Err(format!(
                        "no healthy aggregator would be left out of maintenance besides {node} (seen: {}): nothing would be acknowledged; use --force to go ahead",
                        seen.join("; ")
                    ));
                }
                Ok(())
            })
            .map_err(|e| ApiError::internal("maintenance flag", e))?;
        decided.map_err(|why| ApiError::new(StatusCode::CONFLICT, why))?;
        tracing::warn!(%node, on = request.on, force = request.force, "maintenance set");
        let mut handed_over = false;
        if request.on && was_active {
            let deadline = std::time::Instant::now() + HANDOVER_WAIT;
            while holds(&ops.node.state().lease) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            handed_over = !holds(&ops.node.state().lease);
        }
        Ok(json!({"node": node, "maintenance": request.on, "was_active": was_active, "handed_over": handed_over}))
    })
    .await??;
    Ok(Json(answer))
}
