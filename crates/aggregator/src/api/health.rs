//! `/health`, `/health/active`, `/api/v1/status` and `/metrics`.
//!
//! These answer on every node whatever its role: they are how the proxy, operators and the other
//! aggregator learn who is active.

use super::{blocking, ApiError};
use crate::metrics::Gauges;
use crate::App;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollux_model::duration;
use serde_json::{json, Value};
use std::sync::Arc;

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

pub async fn health_active(State(app): State<Arc<App>>) -> Response {
    let status = if app.node.active_epoch().is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(health_body(&app))).into_response()
}

/// The System Status view of this node. (Both DAs appear once the election layer exists.)
pub async fn status(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let app2 = app.clone();
    let (backlog, repo) = blocking(move || (app2.store.backlog(), app2.repo.stats())).await?;
    let (dto_backlog, load_lag) = backlog.as_ref().map(|b| (b.0, b.1)).unwrap_or((0, 0.0));
    let mut node = health_body(&app);
    let extra = json!({
        "failwait": duration::format(app.config.failwait),
        "startwait": duration::format(app.config.startwait),
        "heartbeat_age_seconds": Value::Null,
        "dto_backlog": dto_backlog,
        "loader_lag_seconds": load_lag,
        "shared_dir": {
            "path": app.shared.root(), "ok": backlog.is_ok(), "nfs": app.shared_report.nfs,
            "free_bytes": app.shared.free_bytes(), "error": backlog.as_ref().err().map(|e| e.to_string()),
        },
        "repository": match &repo {
            Ok(s) => json!({"ok": true, "epoch": s.epoch, "bytes": s.bytes, "loaded_dtos": s.loaded_dtos,
                            "pending_rollups": s.pending_rollups, "items": s.items}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
    });
    if let (Value::Object(node), Value::Object(extra)) = (&mut node, extra) {
        node.extend(extra);
    }
    Ok(Json(json!({ "nodes": [node] })))
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
    };
    let text = app.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
