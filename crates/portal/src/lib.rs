//! The portal: HTML pages served by the active aggregator, so through the proxy they follow
//! every failover.
//!
//! ```text
//!   /                      System Status (refreshes itself from /portal/status every 2 s)
//!   /devices?q=            devices, searchable, with availability, response time, worst utilization
//!   /devices/{name}        a device's items, charts of a chosen interface, CPU, memory, availability
//!   /top                   interfaces by utilization or bps over a range
//!   /events, /rules        threshold events (acknowledge) and rules (create, delete)
//!   /reports/percentile    the monthly 95th percentile of every interface, as a page or CSV
//! ```
//!
//! Pages are rendered on the server from the same types the JSON API serves ([`SystemStatus`],
//! the repository's series and events); charts are SVG drawn here ([`chart`]). The portal knows
//! nothing of the aggregator: it reads through the narrow [`Source`] the aggregator hands it. The little
//! JavaScript there is (`/portal/app.js`) refreshes the status, and posts acknowledgements and
//! rule changes to the JSON API. Every asset is in the binary.
#![forbid(unsafe_code)]

pub mod chart;
pub mod html;
mod pages;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pollux_model::Catalog;
use pollux_repository::Repository;
use std::sync::Arc;

pub use pollux_model::wire::SystemStatus;

/// What the portal reads, and nothing more.
pub trait Source: Send + Sync + 'static {
    /// The System Status. Blocking (it reads the shared directory): called off the async
    /// workers.
    fn status(&self) -> SystemStatus;
    /// `Ok` on the ready active; else why not, in words an operator can act on (the role, the
    /// active's URL).
    fn active(&self) -> Result<(), String>;
    /// The repository, to read (series, top-N, events, rules).
    fn repository(&self) -> Arc<dyn Repository>;
    /// The metric families in force.
    fn catalog(&self) -> Arc<Catalog>;
}

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// The portal's routes, to merge into the aggregator's router.
pub fn router(source: Arc<dyn Source>) -> Router {
    Router::new()
        .route("/", get(pages::status_page))
        .route("/portal/status", get(pages::status_fragment))
        .route("/devices", get(pages::devices))
        .route("/devices/{name}", get(pages::device))
        .route("/top", get(pages::top))
        .route("/events", get(pages::events))
        .route("/rules", get(pages::rules))
        .route("/reports/percentile", get(pages::percentile))
        .route("/portal/app.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/portal/app.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .with_state(source)
        .layer(axum::middleware::map_response(not_framed))
}

/// No page of the portal may be shown inside another site's frame: a page that lays an
/// invisible portal over its own buttons could make an operator acknowledge or delete what it
/// wants (clickjacking).
async fn not_framed(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// A page that could not be served, as a page.
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError { status, message: message.into() }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = format!("<p class=\"error\">{}</p>", html::esc(&self.message));
        (self.status, Html(html::page(title, "", &body))).into_response()
    }
}

impl From<pollux_repository::RepoError> for PageError {
    fn from(e: pollux_repository::RepoError) -> PageError {
        PageError::new(StatusCode::SERVICE_UNAVAILABLE, format!("repository: {e}"))
    }
}

/// Runs repository and file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, PageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Pages other than the status need the ready active (the repository is its to read).
fn require_active(source: &dyn Source) -> Result<(), PageError> {
    source.active().map_err(|why| {
        PageError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{why} Open the portal through the proxy."))
    })
}
