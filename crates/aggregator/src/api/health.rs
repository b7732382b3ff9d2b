//! `/health`, `/health/active`, `/api/v1/status`, `/api/v1/failover` and `/metrics`.
//!
//! These answer on every node whatever its role: they are how the proxy, operators and the other
//! aggregator learn who is active.

use super::{blocking, ApiError};
use crate::election::Command;
use crate::metrics::Gauges;
use crate::status::SystemStatus;
use crate::App;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn health_body(app: &App) -> Value {
    let s = app.node.state();
    json!({
        "node": app.node.id, "role": s.role.name(), "epoch": s.epoch, "ready": s.ready,
        "advertise": app.node.advertise, "version": VERSION,
        "role_seconds": s.since.elapsed().as_secs_f64(), "uptime_seconds": app.node.uptime().as_secs(),
        "reason": s.reason,
    })
}

pub async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    Json(health_body(&app))
}

/// 200 only on the ready active that may acknowledge now: the proxy routes on this.
pub async fn health_active(State(app): State<Arc<App>>) -> Response {
    let status = if app.node.active_epoch().is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health_body(&app))).into_response()
}

/// The System Status view (see [`crate::status::SystemStatus`]).
pub async fn status(State(app): State<Arc<App>>) -> Result<Json<SystemStatus>, ApiError> {
    // statvfs and directory listings of the shared directory can stall on NFS: off the workers.
    Ok(Json(blocking(move || SystemStatus::gather(&app)).await?))
}

/// A planned switchover: the active stops, releases the lease, and the standby takes it at
/// its next read. Refused (409) on a node that is not the active.
pub async fn failover(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let (reply, answer) = std::sync::mpsc::channel();
    app.commands
        .lock()
        .expect("commands")
        .send(Command::Release { reply })
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the election runtime is not running"))?;
    let result = blocking(move || answer.recv_timeout(Duration::from_secs(10))).await?;
    match result {
        Ok(Ok(epoch)) => Ok(Json(json!({"released": true, "node": app.node.id, "epoch": epoch}))),
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
/// active hands over first) or takes it out. Answers on every node. Refused (409) for the
/// active when no healthy standby would take over, unless `force`.
pub async fn maintenance(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    super::require_json(&headers)?;
    let request: MaintenanceRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let named = request.node.is_some();
    let node = request.node.unwrap_or_else(|| app.node.id.clone());
    if !crate::config::valid_node_id(&node) {
        return Err(ApiError::bad_request(format!("node: {node:?} is not a node id")));
    }
    let failwait_ms = app.config.failwait.as_millis() as i64;
    let app2 = app.clone();
    let answer = blocking(move || -> Result<Value, ApiError> {
        let app = app2;
        let statuses = app.shared.read_node_statuses();
        let now_ms = crate::unix_now_ms();
        let fresh = |s: &Value| s["updated_at_ms"].as_i64().is_some_and(|t| now_ms - t < failwait_ms);
        if node != app.node.id && !statuses.iter().any(|(id, _)| *id == node) && request.on {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no aggregator named {node:?} has reported")));
        }
        // "off" for "whichever node answered" is a mistake through the proxy: the node in
        // maintenance is not the one answering. Name the node then.
        if !request.on && !named && !app.shared.in_maintenance(&node).unwrap_or(false) {
            let waiting = app.shared.nodes_in_maintenance();
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
        let was_active = holds(&app.node.state().lease);
        if request.on && was_active && !request.force {
            let standby =
                statuses.iter().any(|(id, s)| *id != node && s["role"] == "standby" && fresh(s));
            if !standby {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{node} is the active and no healthy standby would take over: nothing would be acknowledged; use --force to go ahead"),
                ));
            }
        }
        app.shared
            .set_maintenance(&node, request.on)
            .map_err(|e| ApiError::internal("maintenance flag", e))?;
        tracing::warn!(%node, on = request.on, force = request.force, "maintenance set");
        let mut handed_over = false;
        if request.on && was_active {
            let deadline = std::time::Instant::now() + HANDOVER_WAIT;
            while holds(&app.node.state().lease) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            handed_over = !holds(&app.node.state().lease);
        }
        Ok(json!({"node": node, "maintenance": request.on, "was_active": was_active, "handed_over": handed_over}))
    })
    .await??;
    Ok(Json(answer))
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let app2 = app.clone();
    let (backlog, stats) = blocking(move || (app2.store.backlog().unwrap_or((0, 0.0)), app2.repo.stats())).await?;
    let stats = stats.unwrap_or_default();
    let state = app.node.state();
    let gauges = Gauges {
        epoch: state.epoch,
        role: state.role.name(),
        ready: state.ready,
        dto_backlog: backlog.0,
        load_lag_seconds: backlog.1,
        repository_bytes: stats.bytes,
        pending_rollups: stats.pending_rollups,
        replaced_records: stats.replaced_records,
        outbox_oldest_age_seconds: stats.outbox_oldest.map_or(0, |t| (crate::unix_now() - t).max(0)),
        open_events: stats.open_events,
        outbox_depth: stats.outbox_depth,
        outbox_dropped: stats.outbox_dropped,
    };
    let text = app.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
