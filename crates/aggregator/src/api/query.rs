//! The query API: families, devices, items, series and top-N.
//!
//! Ranges are half-open, `from <= ts < to`, in Unix seconds; `to` defaults to now and `from` to
//! one hour before `to`. Every bad parameter is a 400 naming it.

use super::{blocking, require_active, ApiError};
use crate::node::Node;
use crate::shared_dir::families::Families;
use axum::extract::{Query, State};
use axum::Json;
use pollux_model::Resolution;
use pollux_repository::{ItemFilter, Repository, Series, SeriesQuery, TopQuery};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Params = Query<HashMap<String, String>>;

/// The parts the query and alerting routes use.
pub struct Queries {
    /// Only the ready active answers (the repository is its to read and write).
    pub node: Arc<Node>,
    pub repo: Arc<dyn Repository>,
    /// Names families and metrics before the repository is asked.
    pub families: Arc<Families>,
}

/// Largest page of `/api/v1/items`.
const MAX_ITEMS_PAGE: usize = 100_000;
const MAX_TOP_N: usize = 1000;

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    match text(params, name)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::bad_request(format!("{name}: required"))),
    }
}

/// A text parameter, if given. Control characters (a NUL above all, which PostgreSQL refuses
/// in text) are no name's: a 400 here, never a repository error.
pub(super) fn text<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match params.get(name) {
        Some(v) if v.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!("{name}: control characters are not allowed")))
        }
        v => Ok(v.map(String::as_str)),
    }
}

pub(super) fn number<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
    default: T,
) -> Result<T, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError::bad_request(format!("{name}: {v:?} is not a whole number"))),
    }
}

/// The latest timestamp a query may name: 9999-12-31T23:59:59Z.
pub(super) const MAX_TS: i64 = 253_402_300_799;

fn range(params: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let to = number(params, "to", crate::unix_now())?;
    if !(0..=MAX_TS).contains(&to) {
        return Err(ApiError::bad_request(format!("to: {to} is not Unix seconds between 0 and {MAX_TS}")));
    }
    let from = number(params, "from", (to - 3600).max(0))?;
    if !(0..=MAX_TS).contains(&from) {
        return Err(ApiError::bad_request(format!("from: {from} is not Unix seconds between 0 and {MAX_TS}")));
    }
    if from >= to {
        return Err(ApiError::bad_request(format!("from: {from} must be before to ({to})")));
    }
    Ok((from, to))
}

pub async fn families(State(app): State<Arc<Queries>>) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let catalog = app.families.catalog();
    let families: Vec<Value> = catalog
        .iter()
        .map(|f| {
            let metrics: Vec<Value> = f
                .metrics
                .iter()
                .map(|m| {
                    json!({"name": m.name, "unit": m.unit, "type": m.kind, "oid": m.oid, "expr": m.expr,
                                "description": m.description})
                })
                .collect();
            json!({"name": f.name, "builtin": f.builtin, "description": f.description, "item_key": f.item_key,
                   "table": f.table, "metrics": metrics})
        })
        .collect();
    Ok(Json(json!({ "families": families })))
}

pub async fn devices(State(app): State<Arc<Queries>>) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let repo = app.repo.clone();
    let devices = blocking(move || repo.devices()).await??;
    let devices: Vec<Value> =
        devices.into_iter().map(|d| json!({"name": d.name, "items": d.items, "families": d.families})).collect();
    Ok(Json(json!({ "devices": devices })))
}

pub async fn items(State(app): State<Arc<Queries>>, Query(params): Params) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let limit = number(&params, "limit", 1000usize)?;
    if limit == 0 || limit > MAX_ITEMS_PAGE {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {MAX_ITEMS_PAGE}")));
    }
    let offset = number(&params, "offset", 0usize)?;
    // SQL takes a signed 64-bit offset: a larger one would wrap around to a negative.
    if offset > i64::MAX as usize - limit {
        return Err(ApiError::bad_request(format!("offset: must be at most {}", i64::MAX as usize - limit)));
    }
    let filter = ItemFilter {
        device: text(&params, "device")?.map(str::to_owned),
        family: text(&params, "family")?.map(str::to_owned),
        limit,
        offset,
    };
    let repo = app.repo.clone();
    let items = blocking(move || repo.items(&filter)).await??;
    let next = (items.len() == limit).then_some(offset + limit);
    let items: Vec<Value> = items
        .into_iter()
        .map(|i| json!({"item": i.item, "device": i.device, "family": i.family, "first_seen": i.first_seen}))
        .collect();
    Ok(Json(json!({ "items": items, "next_offset": next })))
}

/// The item, metric and range of a series request (`series`, `percentile`), checked; the
/// resolution is `resolution`'s (default `auto`).
fn series_query(app: &Queries, params: &HashMap<String, String>) -> Result<SeriesQuery, ApiError> {
    let family = required(params, "family")?.to_owned();
    let device = required(params, "device")?.to_owned();
    let item = required(params, "item")?.to_owned();
    let metric = required(params, "metric")?.to_owned();
    let (from, to) = range(params)?;
    let resolution = match params.get("resolution").map(String::as_str).unwrap_or("auto") {
        "auto" => Resolution::auto(to - from),
        other => Resolution::parse(other).ok_or_else(|| {
            ApiError::bad_request(format!("resolution: {other:?} is not auto, raw, hour, day or week"))
        })?,
    };
    check_family_metric(app, &family, &metric)?;
    Ok(SeriesQuery { family, device, item, metric, from, to, resolution })
}

pub async fn series(State(app): State<Arc<Queries>>, Query(params): Params) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let query = series_query(&app, &params)?;
    let (from, to, resolution) = (query.from, query.to, query.resolution);
    let repo = app.repo.clone();
    let (query, series) =
        blocking(move || pollux_repository::none_yet(repo.series(&query)).map(|s| (query, s))).await??;
    let points: Vec<Value> = match series {
        Series::Raw(points) => points.into_iter().map(|(ts, v)| json!([ts, v])).collect(),
        Series::Rollup(points) => points.into_iter().map(|p| json!([p.period, p.min, p.max, p.avg, p.count])).collect(),
    };
    Ok(Json(json!({
        "family": query.family, "device": query.device, "item": query.item, "metric": query.metric,
        "from": from, "to": to, "resolution": resolution.name(), "points": points,
    })))
}

pub async fn top(State(app): State<Arc<Queries>>, Query(params): Params) -> Result<Json<Value>, ApiError> {
    require_active(&app.node)?;
    let family = required(&params, "family")?.to_owned();
    let metric = required(&params, "metric")?.to_owned();
    let (from, to) = range(&params)?;
    let n = number(&params, "n", 10usize)?;
    if n == 0 || n > MAX_TOP_N {
        return Err(ApiError::bad_request(format!("n: must be 1 to {MAX_TOP_N}")));
    }
    check_family_metric(&app, &family, &metric)?;
    let query = TopQuery { family: family.clone(), metric: metric.clone(), from, to, n };
    let repo = app.repo.clone();
    let entries = blocking(move || pollux_repository::none_yet(repo.top(&query))).await??;
    let items: Vec<Value> = entries
        .into_iter()
        .map(
            |e| json!({"device": e.device, "item": e.item, "avg": e.avg, "min": e.min, "max": e.max, "count": e.count}),
        )
        .collect();
    Ok(Json(json!({"family": family, "metric": metric, "from": from, "to": to, "items": items})))
}

/// Names an unknown family or metric before the repository is asked.
fn check_family_metric(app: &Queries, family: &str, metric: &str) -> Result<(), ApiError> {
    let catalog = app.families.catalog();
    let f = catalog.get(family).ok_or_else(|| ApiError::bad_request(format!("family: unknown family {family:?}")))?;
    if f.metric(metric).is_none() {
        let known: Vec<&str> = f.metrics.iter().map(|m| m.name.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "metric: family {family} has no metric {metric:?} (it has {})",
            known.join(", ")
        )));
    }
    Ok(())
}

/// `GET /api/v1/percentile?family=&device=&item=&metric=&from=&to=&p=95[&format=csv]`: the
/// nearest-rank percentile of the raw samples in the range (the monthly traffic report).
pub async fn percentile(
    State(app): State<Arc<Queries>>,
    Query(params): Params,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    require_active(&app.node)?;
    // Exact: every raw sample, whatever the range.
    let query = SeriesQuery { resolution: Resolution::Raw, ..series_query(&app, &params)? };
    let p: f64 =
        match params.get("p") {
            None => 95.0,
            Some(v) => v.parse().ok().filter(|p: &f64| *p > 0.0 && *p <= 100.0).ok_or_else(|| {
                ApiError::bad_request(format!("p: {v:?} is not a percentile above 0 and at most 100"))
            })?,
        };
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::bad_request(format!("format: {other:?} is not json or csv"))),
    };
    let repo = app.repo.clone();
    let (query, series) =
        blocking(move || pollux_repository::none_yet(repo.series(&query)).map(|s| (query, s))).await??;
    let SeriesQuery { family, device, item, metric, from, to, .. } = query;
    let mut values: Vec<f64> = match series {
        Series::Raw(points) => points.into_iter().map(|(_, v)| v).collect(),
        Series::Rollup(_) => Vec::new(),
    };
    let samples = values.len();
    let value = pollux_model::percentile::nearest_rank(&mut values, p);
    if csv {
        let value = value.map_or(String::new(), |v| v.to_string());
        let text = format!(
            "family,device,item,metric,from,to,p,samples,value\n{},{},{},{},{from},{to},{p},{samples},{value}\n",
            pollux_model::csv::field(&family),
            pollux_model::csv::field(&device),
            pollux_model::csv::field(&item),
            pollux_model::csv::field(&metric)
        );
        return Ok(([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response());
    }
    Ok(Json(json!({
        "family": family, "device": device, "item": item, "metric": metric, "from": from, "to": to,
        "p": p, "value": value, "samples": samples, "rule": "nearest-rank",
    }))
    .into_response())
}
