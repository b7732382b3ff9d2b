//! `/api/v1/status` (the System Status) and `/metrics` (Prometheus text), on every node.

use super::{blocking, ApiError};
use crate::metrics::Gauges;
use crate::status::StatusSources;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollux_model::wire::SystemStatus;
use std::sync::Arc;

/// The System Status view (see [`SystemStatus`]).
pub async fn status(State(sources): State<Arc<StatusSources>>) -> Result<Json<SystemStatus>, ApiError> {
    // statvfs and directory listings of the shared directory can stall on NFS: off the workers.
    Ok(Json(blocking(move || sources.gather()).await?))
}

pub async fn metrics(State(sources): State<Arc<StatusSources>>) -> Result<Response, ApiError> {
    let s = sources.clone();
    let (backlog, stats) = blocking(move || (s.store.backlog().unwrap_or((0, 0.0)), s.repo.stats())).await?;
    let stats = stats.unwrap_or_default();
    let state = sources.node.state();
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
    let text = sources.metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
