//! The HTTP API: ingest, queries, alerting, health, status, metrics and operations, one file per
//! route class, each handler taking only the narrow part it needs (axum's `FromRef`).
//!
//! ```text
//!   ingest.rs      PUT/GET /api/v1/dto/{id}, PUT/DELETE /api/v1/collectors/{id}   Ingest
//!   query.rs       families, devices, items, series, top, percentile                Queries
//!   alerts.rs      thresholds, events, acknowledgements                              Queries
//!   health.rs      /health, /health/active                                           Node
//!   status.rs      /api/v1/status, /metrics                                          StatusSources
//!   operations.rs  /api/v1/failover, /api/v1/maintenance                             Operations
//!   auth.rs        the token of each route class, before any handler                 TokenFiles
//! ```
//!
//! Handlers validate at the edge and run file and repository work on the blocking pool. Every
//! refusal is JSON `{"error": "..."}` with the contract's status code; on a node that is not the
//! ready active, ingest and queries answer 503 with `Retry-After` and the node's role.

mod alerts;
pub mod auth;
mod health;
mod ingest;
mod operations;
mod query;
mod status;

pub use alerts::MAX_PATTERN_BYTES;
pub use operations::Operations;
pub use query::Queries;

use crate::ingest::Ingest;
use crate::node::Node;
use crate::status::StatusSources;
use axum::extract::FromRef;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pollux_repository::{Epoch, RepoError};
use serde_json::json;
use std::sync::Arc;

/// The parts the routes use; each handler takes one of them.
#[derive(Clone)]
pub struct ApiState {
    pub node: Arc<Node>,
    pub ingest: Arc<Ingest>,
    pub queries: Arc<Queries>,
    pub status: Arc<StatusSources>,
    pub operations: Arc<Operations>,
}

macro_rules! part {
    ($field:ident: $ty:ty) => {
        impl FromRef<ApiState> for Arc<$ty> {
            fn from_ref(state: &ApiState) -> Arc<$ty> {
                state.$field.clone()
            }
        }
    };
}
part!(node: Node);
part!(ingest: Ingest);
part!(queries: Queries);
part!(status: StatusSources);
part!(operations: Operations);

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/dto/{id}", put(ingest::put_dto).get(ingest::get_dto))
        .route("/api/v1/collectors/{id}", put(ingest::put_collector).delete(ingest::delete_collector))
        .route("/api/v1/families", get(query::families))
        .route("/api/v1/devices", get(query::devices))
        .route("/api/v1/items", get(query::items))
        .route("/api/v1/series", get(query::series))
        .route("/api/v1/top", get(query::top))
        .route("/api/v1/percentile", get(query::percentile))
        .route("/api/v1/thresholds", get(alerts::list_rules).post(alerts::create_rule))
        .route("/api/v1/thresholds/{id}", get(alerts::get_rule).put(alerts::put_rule).delete(alerts::delete_rule))
        .route("/api/v1/events", get(alerts::events))
        .route("/api/v1/events/{id}/ack", post(alerts::ack))
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/failover", post(operations::failover))
        .route("/api/v1/maintenance", post(operations::maintenance))
        .route("/health", get(health::health))
        .route("/health/active", get(health::health_active))
        .route("/metrics", get(status::metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// The OpenAPI 3 document of every route above, embedded in the binary. A test below keeps it
/// complete; `.ci/run` runs a property-based tester (schemathesis) against it on a live node.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A refusal: status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    retry_after: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, body: json!({ "error": message.into() }), retry_after: false }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 503 from a node that is not the ready active.
    fn unavailable(node: &Node) -> ApiError {
        let state = node.state();
        let body = json!({
            "error": format!("this node is {}, not the ready active aggregator", state.role.name()),
            "role": state.role.name(),
            "active": node.active_url(),
        });
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, body, retry_after: true }
    }

    /// 503 with Retry-After for a passing shortage (memory for bodies).
    pub fn unavailable_for(message: &str) -> ApiError {
        let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message);
        err.retry_after = true;
        err
    }

    fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "{what}");
        let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: {e}"));
        err.retry_after = true;
        err
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> ApiError {
        match e {
            RepoError::UnknownFamily(_)
            | RepoError::UnknownMetric { .. }
            | RepoError::BadQuery(_)
            | RepoError::Rejected(_) => ApiError::bad_request(e.to_string()),
            other => ApiError::internal("repository", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Refuses a state-changing request whose body is not declared JSON (415). A browser sends
/// `application/json` only from a script of the same origin (anything else needs a CORS
/// preflight the API never grants), so a page elsewhere cannot post a form that happens to be
/// valid JSON and create a rule or acknowledge an event (cross-site request forgery).
pub(crate) fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = media.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("content type {media:?}: send application/json")))
    }
}

/// The epoch of this node if it is the ready active, else the 503 answer.
fn require_active(node: &Node) -> Result<Epoch, ApiError> {
    node.active_epoch().ok_or_else(|| ApiError::unavailable(node))
}

/// Runs blocking work (files, SQLite) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal("worker", e))
}

#[cfg(test)]
mod tests {
    /// Every route of [`super::router`] (read from this file's source) is described in the
    /// OpenAPI document with its methods, and the document describes no route that is not.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let source = include_str!("mod.rs");
        let router = &source[source.find("pub fn router").unwrap()..source.find(".fallback(").unwrap()];
        let mut routes = std::collections::BTreeSet::new();
        for call in router.split(".route(\"").skip(1) {
            let (path, rest) = call.split_once('"').unwrap();
            let handlers = rest.split(')').collect::<Vec<_>>().join(")");
            let handlers = &handlers[..handlers.find("\n").unwrap_or(handlers.len())];
            for method in ["get", "put", "post", "delete"] {
                if handlers.contains(&format!("{method}(")) {
                    routes.insert((path.to_owned(), method.to_owned()));
                }
            }
        }
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut described = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete"] {
                if item.get(method).is_some() {
                    described.insert((path.clone(), method.to_owned()));
                }
            }
        }
        assert!(routes.len() >= 12, "{routes:?}");
        assert_eq!(routes, described);
    }
}
