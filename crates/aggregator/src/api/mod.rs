//! The HTTP API of DESIGN.md section 3: ingest, queries, health and metrics.
//!
//! Handlers validate at the edge and run file and repository work on the blocking pool. Every
//! refusal is JSON `{"error": "..."}` with the contract's status code; on a node that is not the
//! ready active, ingest and queries answer 503 with `Retry-After` and the node's role.

mod alerts;
pub mod auth;
mod health;
mod ingest;
mod query;

pub use health::VERSION;
pub use query::csv_field;

use crate::App;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pollux_repository::{Epoch, RepoError};
use serde_json::json;
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
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
        .route("/api/v1/status", get(health::status))
        .route("/api/v1/failover", post(health::failover))
        .route("/api/v1/maintenance", post(health::maintenance))
        .route("/health", get(health::health))
        .route("/health/active", get(health::health_active))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
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
    fn unavailable(app: &App) -> ApiError {
        let state = app.node.state();
        let body = json!({
            "error": format!("this node is {}, not the ready active aggregator", state.role.name()),
            "role": state.role.name(),
            "active": app.node.active_url(),
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
fn require_active(app: &App) -> Result<Epoch, ApiError> {
    app.node.active_epoch().ok_or_else(|| ApiError::unavailable(app))
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
