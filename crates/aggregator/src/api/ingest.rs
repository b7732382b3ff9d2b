//! `PUT /api/v1/dto/{id}` and `GET /api/v1/dto/{id}`.
//!
//! A PUT is answered 201 only once the DTO is durable in the shared directory, and only by the
//! ready active; 200 when the id is already stored or loaded (nothing is stored twice); 4xx with
//! the field at fault for anything malformed, before anything is written.

use super::{blocking, require_active, ApiError};
use crate::ingest::store::StoreOutcome;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::shared_dir::collectors::MAX_COLLECTORS;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollux_model::codec::{binary, json, BINARY_CONTENT_TYPE, JSON_CONTENT_TYPE};
use pollux_model::wire::CollectorReport;
use pollux_model::{Digest, Dto, DtoError, DtoId};
use pollux_repository::RepoError;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub async fn put_dto(
    State(app): State<Arc<Ingest>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    Metrics::add(&app.metrics.dtos_received, 1);
    let result = ingest(&app, id, &headers, body).await;
    Metrics::add(&app.metrics.ingest_micros, started.elapsed().as_micros() as u64);
    match result {
        Ok((status, id)) => (status, Json(json!({ "id": id, "stored": true }))).into_response(),
        Err(e) => {
            if e.status.is_client_error() {
                Metrics::add(&app.metrics.dtos_rejected, 1);
            }
            if e.status == StatusCode::CONFLICT {
                Metrics::add(&app.metrics.dtos_conflict, 1);
            }
            e.into_response()
        }
    }
}

async fn ingest(
    app: &Arc<Ingest>,
    id: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, String), ApiError> {
    require_active(&app.node)?;
    let path_id = DtoId::parse(&id).map_err(|e| ApiError::bad_request(format!("path {e}")))?;
    // Media types are case-insensitive (RFC 9110 section 8.3.1).
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !matches!(media.as_str(), JSON_CONTENT_TYPE | BINARY_CONTENT_TYPE | "") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {media:?}: send {JSON_CONTENT_TYPE} or {BINARY_CONTENT_TYPE}"),
        ));
    }
    let (bytes, held) = read_body(body, app.max_body_bytes, &app.body_budget).await?;
    // Decoding is CPU work that holds the body and the DTO in memory: a few at a time.
    let decoding = app.decoders.clone().acquire_owned().await.map_err(|e| ApiError::internal("decoders", e))?;
    let app2 = app.clone();
    // Decoding and validating a large DTO takes milliseconds: keep it off the async workers.
    let (status, outcome) = blocking(move || -> Result<(StatusCode, String), ApiError> {
        let catalog = app2.families.catalog();
        let refused = |e: DtoError| refusal(&app2, e);
        let dto: Dto = match media.as_str() {
            BINARY_CONTENT_TYPE => binary::decode(&bytes, app2.limits.max_records),
            _ => json::decode(&bytes, &catalog, &app2.limits),
        }
        .map_err(refused)?;
        drop((bytes, held));
        if dto.id != path_id.as_str() {
            return Err(ApiError::bad_request(format!(
                "id: {:?} in the body differs from {:?} in the path",
                dto.id,
                path_id.as_str()
            )));
        }
        dto.validate(&catalog, &app2.limits, crate::unix_now()).map_err(refused)?;
        drop(decoding);
        // The repository is away or not answering (its server restarting or frozen):
        // acknowledge from the shared directory alone. Should the id be loaded already, the
        // loader finds it registered and drops this copy, or quarantines it if the content
        // differs; only a resend with other content misses its 409.
        // A copy already in the store may be loaded (and its file removed) between the
        // registry check and the store below: then this one is a resend, not new.
        let stored_before = app2.store.contains(&dto.id);
        match registry_entry(&app2, &dto.id) {
            Ok(Some(loaded)) => return repeat(loaded.digest, &dto),
            Ok(None) => {}
            Err(e) if e.action() == pollux_repository::Action::Retry => {
                tracing::debug!(id = %dto.id, error = %e, "registry not checked: the repository is unavailable");
            }
            Err(e) => return Err(e.into()),
        }
        // A test holds a resend here while its first copy is loaded.
        pollux_failpoint::hit("ingest.after_registry_check");
        // The epoch may have changed while we decoded: store under the one we hold now.
        let epoch = require_active(&app2.node)?;
        match app2.store.store(&dto, epoch) {
            Ok(StoreOutcome::Stored) => {
                if stored_before {
                    // Its first copy was loaded meanwhile: the loader finds this one
                    // registered and drops it; the answer is the resend's 200.
                    if let Ok(Some(loaded)) = registry_entry(&app2, &dto.id) {
                        return repeat(loaded.digest, &dto);
                    }
                }
                let id = dto.id.clone();
                app2.handoff.offer(dto);
                Ok((StatusCode::CREATED, id))
            }
            Ok(StoreOutcome::AlreadyStored) => repeat(existing_digest(&app2, &dto.id)?, &dto),
            Err(e) => Err(ApiError::internal("storing the DTO in the shared dir", e)),
        }
    })
    .await??;
    match status {
        StatusCode::CREATED => {
            Metrics::add(&app.metrics.dtos_stored, 1);
            app.loader.notify();
        }
        _ => Metrics::add(&app.metrics.dtos_duplicate, 1),
    }
    // Deposed while writing: the file is whole and the next active loads it, but only a ready
    // active acknowledges. The sender resends and gets 200.
    require_active(&app.node)?;
    Ok((status, outcome))
}

/// A DTO refused: 400, except for an unknown family while some family file is skipped for a
/// problem. That file may be the family's, half-written by an editor or broken by a typo:
/// answer 503 so that the collector keeps the DTO and sends it again once the file is fixed,
/// rather than move it to `rejected/` for good.
fn refusal(app: &Ingest, e: DtoError) -> ApiError {
    if e.field == "family" && !app.families.problems().is_empty() {
        return ApiError::unavailable_for(&format!(
            "{e}; some metric family files are skipped for problems (see /api/v1/status): retry once they are fixed"
        ));
    }
    ApiError::bad_request(e.to_string())
}

/// Largest collector report: a few hundred bytes in practice.
const MAX_REPORT_BYTES: usize = 16 << 10;

/// `PUT /api/v1/collectors/{id}`: a collector's report, kept in the shared directory (so a new
/// active shows it at once) and shown in the System Status. The ingest token applies (see `api::auth`).
pub async fn put_collector(
    State(app): State<Arc<Ingest>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    require_active(&app.node)?;
    if body.len() > MAX_REPORT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a report is at most {MAX_REPORT_BYTES} bytes"),
        ));
    }
    // The id names a file: the DTO id's characters only, and not a hidden file's name (the
    // status lists only visible ones: such a collector would report and never be shown).
    DtoId::parse(&id).map_err(|e| ApiError::bad_request(format!("path {e}")))?;
    if id.starts_with('.') {
        return Err(ApiError::bad_request(format!("path id: {id:?} must not start with '.'")));
    }
    let report: CollectorReport =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if report.id != id {
        return Err(ApiError::bad_request(format!("id: {:?} in the body, {id:?} in the path", report.id)));
    }
    if report.version.len() > 64 || report.version.chars().any(char::is_control) {
        return Err(ApiError::bad_request("version: at most 64 printable characters"));
    }
    let bad_age = |a: Option<f64>| a.is_some_and(|a| !a.is_finite() || a < 0.0);
    if bad_age(report.spool_oldest_age_s) || bad_age(report.last_cycle_s) {
        return Err(ApiError::bad_request("spool_oldest_age_s, last_cycle_s: non-negative seconds"));
    }
    let kept = blocking(move || app.shared.write_collector_report(&report, crate::unix_now_ms()))
        .await?
        .map_err(|e| ApiError::internal("collector report", e))?;
    if !kept {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} collectors report already: remove the file of one that is gone from <shared>/collectors/",
                MAX_COLLECTORS
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/collectors/{id}` (admin): forgets a collector that is gone for good, so the
/// status stops showing it as not connected. A collector still running reports again within 10 s.
pub async fn delete_collector(State(app): State<Arc<Ingest>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    require_active(&app.node)?;
    DtoId::parse(&id).map_err(|e| ApiError::bad_request(format!("path {e}")))?;
    let shown = id.clone();
    let removed = blocking(move || app.shared.remove_collector_report(&id))
        .await?
        .map_err(|e| ApiError::internal("collector report", e))?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, format!("no collector {shown:?} has reported")))
    }
}

/// The answer to an id that is already stored or loaded: 200 for the same content, 409 for
/// other content (two collectors sharing an id, or a bug): its data would otherwise be dropped
/// unseen. A DTO loaded before digests were kept (`None`) is taken as the same.
fn repeat(existing: Option<Digest>, dto: &Dto) -> Result<(StatusCode, String), ApiError> {
    match existing {
        Some(digest) if digest != dto.digest() => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "id: {:?} was already acknowledged with other content; a DTO id names one content \
                 (do two collectors share an id?): this one is not stored",
                dto.id
            ),
        )),
        _ => Ok((StatusCode::OK, dto.id.clone())),
    }
}

/// How long an acknowledgement waits for the registry before going on without it.
const REGISTRY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The registry entry of `id`, asked on a thread of its own and waited for at most
/// [`REGISTRY_WAIT`]: a repository that stops answering (a frozen server, a path that
/// acknowledges and never replies) must not stop acknowledgements. Once it is seen stalled it is
/// not asked at all, so the threads left waiting on it are those of the first second or two.
fn registry_entry(app: &Arc<Ingest>, id: &str) -> Result<Option<pollux_repository::LoadedDto>, RepoError> {
    let unanswered = || RepoError::Unavailable("the repository is not answering".into());
    if app.repo.stalled() {
        return Err(unanswered());
    }
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    let (repo, id) = (app.repo.clone(), id.to_owned());
    std::thread::Builder::new()
        .name("registry-check".into())
        .spawn(move || {
            let _ = answer.send(repo.loaded_dto(&id));
        })
        .map_err(|e| RepoError::Unavailable(format!("no thread for the registry check: {e}")))?;
    answered.recv_timeout(REGISTRY_WAIT).unwrap_or_else(|_| Err(unanswered()))
}

/// The digest of the DTO already held under `id`: in the store, or (loaded meanwhile) in the
/// repository.
fn existing_digest(app: &Ingest, id: &str) -> Result<Option<Digest>, ApiError> {
    match app.store.read(id) {
        Ok(Some(stored)) => Ok(Some(stored.dto.digest())),
        Ok(None) => Ok(app.repo.loaded_dto(id)?.and_then(|loaded| loaded.digest)),
        Err(e) => Err(ApiError::internal("reading the stored DTO", e)),
    }
}

/// Past the limit the rest of the body is still read (and dropped) up to this many bytes, so
/// that a client which sends its whole body before reading the answer sees the 413 rather than
/// a connection reset.
const DRAIN_LIMIT: usize = 256 << 20;

/// Reads the body up to `limit` bytes; a larger one is a 413. The bytes held count against
/// `budget` (shared by every request) until the returned permit drops; when it is spent the
/// answer is 503 with Retry-After, before the body is read on.
async fn read_body(
    body: Body,
    limit: usize,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<(bytes::Bytes, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&e))?;
        let Ok(chunk) = frame.into_data() else { continue };
        seen += chunk.len();
        if seen <= limit {
            let permit = u32::try_from(chunk.len())
                .ok()
                .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
                .ok_or_else(|| {
                    ApiError::unavailable_for(
                        "too many request bodies in memory (max_body_bytes_in_flight); retry shortly",
                    )
                })?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok((buf.freeze(), held))
}

/// A body that failed to arrive: timed out (408) or cut off.
fn body_error(e: &axum::Error) -> ApiError {
    if pollux_transport::is_body_timeout(e) {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("body: {e}"))
    } else {
        ApiError::bad_request(format!("body: {e}"))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over the limit of {limit} bytes (max_body_bytes)"))
}

pub async fn get_dto(State(app): State<Arc<Ingest>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require_active(&app.node)?;
    let id = DtoId::parse(&id).map_err(|e| ApiError::bad_request(format!("path {e}")))?;
    let app2 = app.clone();
    blocking(move || {
        if let Some(loaded) = app2.repo.loaded_dto(id.as_str())? {
            let body = json!({"id": loaded.id, "state": "loaded", "records": loaded.records, "epoch": loaded.epoch,
                              "family": loaded.family, "collector": loaded.collector, "cycle": loaded.cycle,
                              "loaded_at": loaded.loaded_at});
            return Ok(Json(body).into_response());
        }
        match app2.store.read(id.as_str()) {
            Ok(Some(stored)) => {
                let d = &stored.dto;
                let body = json!({"id": d.id, "state": "stored", "records": d.records.len(), "epoch": stored.epoch,
                                  "family": d.family, "collector": d.collector, "cycle": d.cycle});
                Ok(Json(body).into_response())
            }
            Ok(None) => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no DTO {id}"))),
            Err(e) => Err(ApiError::internal("reading the DTO", e)),
        }
    })
    .await?
}
