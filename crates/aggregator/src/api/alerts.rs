//! Threshold rules (`/api/v1/thresholds`) and events (`/api/v1/events`).
//!
//! A rule is validated whole before it is stored: its shape (a 400 naming the JSON field), its
//! own consistency (counts, the clear value's side) and its family and metric against the
//! catalog. Rules live in the repository, so a new active has them.

use super::{blocking, require_active, require_json, ApiError, Queries};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollux_repository::{EventFilter, EventState, Rule, RuleSpec, Severity};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Largest page of `/api/v1/events`.
const MAX_EVENTS_PAGE: usize = 10_000;
/// Longest `by` of an acknowledgement.
const MAX_ACK_BY: usize = 200;

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("id: {text:?} is not a positive whole number")))
}

/// What a change of a rule or an event checks first: this node is the ready active (its
/// epoch), the body is declared JSON, the id is one.
fn change(app: &Queries, headers: &HeaderMap, id: &str) -> Result<(pollux_repository::Epoch, i64), ApiError> {
    let epoch = require_active(&app.node)?;
    require_json(headers)?;
    Ok((epoch, parse_id(id)?))
}

fn not_found(what: &str, id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no {what} with id {id}"))
}

/// Reads a rule from a request body: JSON shape, rule consistency, catalog.
fn rule_spec(app: &Queries, body: &[u8]) -> Result<RuleSpec, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let spec: RuleSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::bad_request(format!("{field}: {}", e.inner()))
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    spec.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let catalog = app.families.catalog();
    let family = catalog
        .get(&spec.family)
        .ok_or_else(|| ApiError::bad_request(format!("family: unknown family {:?}", spec.family)))?;
    if family.metric(&spec.metric).is_none() {
        let known: Vec<&str> = family.metrics.iter().map(|m| m.name.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "metric: family {} has no metric {:?} (it has {})",
            spec.family,
            spec.metric,
            known.join(", ")
        )));
    }
    Ok(spec)
}

/// The device and item patterns of all rules together, in bytes: every new item is matched
/// against them once (then cached), so their total bounds what a load of new items can cost.
pub const MAX_PATTERN_BYTES: usize = 64 << 10;

fn pattern_bytes(spec: &RuleSpec) -> usize {
    spec.device.as_deref().map_or(0, str::len) + spec.item.as_deref().map_or(0, str::len)
}

/// Refuses (409) a rule that would take the rules' patterns past [`MAX_PATTERN_BYTES`];
/// `replacing` is the rule a change replaces.
fn within_pattern_budget(
    repo: &dyn pollux_repository::Repository,
    replacing: Option<i64>,
    spec: &RuleSpec,
) -> Result<(), ApiError> {
    let others: usize = repo.rules()?.iter().filter(|r| Some(r.id) != replacing).map(|r| pattern_bytes(&r.spec)).sum();
    let total = others + pattern_bytes(spec);
    if total > MAX_PATTERN_BYTES {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "device and item: the rules' patterns would total {total} bytes, over the limit of {MAX_PATTERN_BYTES}: \
                 use fewer or shorter patterns (one rule with a * covers many items)"
            ),
        ));
    }
    Ok(())
}

fn rule_json(rule: &Rule) -> Value {
    let mut v = serde_json::to_value(rule).expect("a rule serializes");
    v["display_name"] = json!(rule.spec.display_name());
    v
}

pub async fn list_rules(State(app): State<Arc<Queries>>) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let repo = app.repo.clone();
    let rules = blocking(move || repo.rules()).await??;
    Ok(Json(json!({ "thresholds": rules.iter().map(rule_json).collect::<Vec<_>>() })))
}

pub async fn create_rule(
    State(app): State<Arc<Queries>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let epoch = require_active(&app.node)?;
    require_json(&headers)?;
    let spec = rule_spec(&app, &body)?;
    let repo = app.repo.clone();
    let rule = blocking(move || {
        within_pattern_budget(repo.as_ref(), None, &spec)?;
        Ok::<_, ApiError>(repo.create_rule(epoch, &spec)?)
    })
    .await??;
    tracing::info!(rule = rule.id, name = %rule.spec.display_name(), "threshold rule created");
    Ok((StatusCode::CREATED, Json(rule_json(&rule))).into_response())
}

pub async fn get_rule(State(app): State<Arc<Queries>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let id = parse_id(&id)?;
    let repo = app.repo.clone();
    let rule = blocking(move || repo.rule(id)).await??.ok_or_else(|| not_found("threshold rule", id))?;
    Ok(Json(rule_json(&rule)))
}

/// Replaces a rule whole. Its open events clear (`rule changed`).
pub async fn put_rule(
    State(app): State<Arc<Queries>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (epoch, id) = change(&app, &headers, &id)?;
    let spec = rule_spec(&app, &body)?;
    let repo = app.repo.clone();
    let rule = blocking(move || {
        within_pattern_budget(repo.as_ref(), Some(id), &spec)?;
        Ok::<_, ApiError>(repo.update_rule(epoch, id, &spec)?)
    })
    .await??
    .ok_or_else(|| not_found("threshold rule", id))?;
    tracing::info!(rule = id, name = %rule.spec.display_name(), "threshold rule changed; its open events cleared");
    Ok(Json(rule_json(&rule)))
}

pub async fn delete_rule(State(app): State<Arc<Queries>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let epoch = require_active(&app.node)?;
    let id = parse_id(&id)?;
    let repo = app.repo.clone();
    if !blocking(move || repo.delete_rule(epoch, id)).await?? {
        return Err(not_found("threshold rule", id));
    }
    tracing::info!(rule = id, "threshold rule deleted; its open events cleared");
    Ok(StatusCode::NO_CONTENT)
}

fn time_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|t| (0..=super::query::MAX_TS).contains(t))
                .ok_or_else(|| ApiError::bad_request(format!("{name}: {v:?} is not Unix seconds")))
        })
        .transpose()
}

/// `GET /api/v1/events?from=&to=&state=&device=&severity=&rule=&limit=&offset=`, newest first.
pub async fn events(
    State(app): State<Arc<Queries>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let known = ["from", "to", "state", "device", "severity", "rule", "limit", "offset"];
    if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("{unknown}: unknown parameter (known: {})", known.join(", "))));
    }
    let (from, to) = (time_param(&params, "from")?, time_param(&params, "to")?);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(ApiError::bad_request(format!("from: {f} must be before to ({t})")));
        }
    }
    let state = match params.get("state").map(String::as_str) {
        None => None,
        Some("open") => Some(EventState::Open),
        Some("cleared") => Some(EventState::Cleared),
        Some(other) => return Err(ApiError::bad_request(format!("state: {other:?} is not open or cleared"))),
    };
    let severity = params
        .get("severity")
        .map(|s| {
            Severity::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("severity: {s:?} is not critical, major, minor, warning or info"))
            })
        })
        .transpose()?;
    let rule = params
        .get("rule")
        .map(|r| parse_id(r).map_err(|_| ApiError::bad_request(format!("rule: {r:?} is not a rule id"))))
        .transpose()?;
    let limit = super::query::number(&params, "limit", 100usize)?;
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {MAX_EVENTS_PAGE}")));
    }
    let offset = super::query::number(&params, "offset", 0usize)?;
    if offset > i64::MAX as usize - limit {
        return Err(ApiError::bad_request(format!("offset: must be at most {}", i64::MAX as usize - limit)));
    }
    let device = super::query::text(&params, "device")?.map(str::to_owned);
    let filter = EventFilter { from, to, state, device, severity, rule, limit, offset };
    let repo = app.repo.clone();
    let events = blocking(move || repo.events(&filter)).await??;
    let next = (events.len() == limit).then_some(offset + limit);
    Ok(Json(json!({ "events": events, "next_offset": next })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    by: String,
}

/// `POST /api/v1/events/{id}/ack` with `{"by": "..."}`: the first acknowledgement stands.
pub async fn ack(
    State(app): State<Arc<Queries>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (epoch, id) = change(&app, &headers, &id)?;
    let ack: Ack = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let by = ack.by.trim().to_owned();
    if by.is_empty() || by.len() > MAX_ACK_BY || by.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("by: must be 1 to {MAX_ACK_BY} printable characters")));
    }
    let repo = app.repo.clone();
    let event = blocking(move || repo.ack_event(epoch, id, &by)).await??.ok_or_else(|| not_found("event", id))?;
    Ok(Json(serde_json::to_value(event).expect("an event serializes")))
}
