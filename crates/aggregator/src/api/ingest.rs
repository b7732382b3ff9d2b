//! `PUT /api/v1/dto/{id}` and `GET /api/v1/dto/{id}`.
//!
//! A PUT is answered 201 only once the DTO is durable in the shared directory, and only by the
//! ready active; 200 when the id is already stored or loaded (nothing is stored twice); 4xx with
//! the field at fault for anything malformed, before anything is written.

use super::{blocking, require_active, ApiError};
use crate::metrics::Metrics;
use crate::store::StoreOutcome;
use crate::App;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollux_model::codec::{binary, json, BINARY_CONTENT_TYPE};
use pollux_model::{Dto, DtoId};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub async fn put_dto(State(app): State<Arc<App>>, Path(id): Path<String>, headers: HeaderMap, body: Body) -> Response {
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
            e.into_response()
        }
    }
}

async fn ingest(app: &Arc<App>, id: String, headers: &HeaderMap, body: Body) -> Result<(StatusCode, String), ApiError> {
    require_active(app)?;
    if let Some(token) = &app.config.ingest_token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
        }
    }
    let bytes = read_body(body, app.config.max_body_bytes).await?;
    let path_id = DtoId::parse(&id).map_err(|e| ApiError::bad_request(format!("path {e}")))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_owned();
    let app2 = app.clone();
    // Decoding and validating a large DTO takes milliseconds: keep it off the async workers.
    let (status, outcome) = blocking(move || -> Result<(StatusCode, String), ApiError> {
        let dto: Dto = match media.as_str() {
            "application/json" | "" => json::decode(&bytes),
            BINARY_CONTENT_TYPE => binary::decode(&bytes),
            other => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("content type {other:?}: send application/json or {BINARY_CONTENT_TYPE}"),
                ))
            }
        }
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if dto.id != path_id.as_str() {
            return Err(ApiError::bad_request(format!(
                "id: {:?} in the body differs from {:?} in the path",
                dto.id,
                path_id.as_str()
            )));
        }
        dto.validate(&app2.catalog(), &app2.limits, crate::unix_now())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if app2.repo.loaded_dto(&dto.id)?.is_some() {
            return Ok((StatusCode::OK, dto.id));
        }
        // The epoch may have changed while we decoded: store under the one we hold now.
        let epoch = require_active(&app2)?;
        match app2.store.store(&dto, epoch) {
            Ok(StoreOutcome::Stored) => {
                let id = dto.id.clone();
                app2.handoff.offer(dto);
                Ok((StatusCode::CREATED, id))
            }
            Ok(StoreOutcome::AlreadyStored) => Ok((StatusCode::OK, dto.id)),
            Err(e) => Err(ApiError::internal("storing the DTO in the shared dir", e)),
        }
    })
    .await??;
    match status {
        StatusCode::CREATED => {
            Metrics::add(&app.metrics.dtos_stored, 1);
            app.loader_wake.notify();
        }
        _ => Metrics::add(&app.metrics.dtos_duplicate, 1),
    }
    // Deposed while writing: the file is whole and the next active loads it, but only a ready
    // active acknowledges. The sender resends and gets 200.
    require_active(app)?;
    Ok((status, outcome))
}

/// Past the limit the rest of the body is still read (and dropped) up to this many bytes, so
/// that a client which sends its whole body before reading the answer sees the 413 rather than
/// a connection reset.
const DRAIN_LIMIT: usize = 256 << 20;

/// Reads the body up to `limit` bytes; a larger one is a 413.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok(buf.freeze())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over the limit of {limit} bytes (max_body_bytes)"))
}

pub async fn get_dto(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    require_active(&app)?;
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
