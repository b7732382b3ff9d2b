//! `/health` and `/health/active`: what this node says of itself, on every node whatever its
//! role. The proxy routes on `/health/active`; the cluster harness waits on `/health`.

use crate::node::Node;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollux_model::wire::Health;
use std::sync::Arc;

pub async fn health(State(node): State<Arc<Node>>) -> Json<Health> {
    Json(node.health())
}

/// 200 only on the ready active that may acknowledge now: the proxy routes on this.
pub async fn health_active(State(node): State<Arc<Node>>) -> Response {
    let status = if node.active_epoch().is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(node.health())).into_response()
}
