//! The page handlers.

use crate::chart::{self, Line};
use crate::html::{esc, human, page, url_part};
use crate::{blocking, require_active, PageError, Source, SystemStatus};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use pollux_model::period::days_from_civil;
use pollux_model::Resolution;
use pollux_repository::{EventFilter, EventState, ItemFilter, ItemInfo, Series, SeriesQuery, TopQuery};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

type Params = Query<HashMap<String, String>>;

/// Unix seconds as people read them (UTC).
fn time(ts: i64) -> String {
    format!("{} UTC", pollux_model::period::format_utc(ts))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The ranges a chart offers, and their length.
const RANGES: [(&str, i64); 7] = [
    ("15m", 900),
    ("1h", 3600),
    ("6h", 6 * 3600),
    ("24h", 86_400),
    ("7d", 7 * 86_400),
    ("30d", 30 * 86_400),
    ("1y", 365 * 86_400),
];

fn range_of(params: &HashMap<String, String>, default: &'static str) -> (&'static str, i64) {
    let wanted = params.get("range").map(String::as_str).unwrap_or(default);
    RANGES.iter().find(|(name, _)| *name == wanted).copied().unwrap_or(("24h", 86_400))
}

// ---------------------------------------------------------------------------- System Status

pub async fn status_page(State(app): State<Arc<dyn Source>>) -> Result<Html<String>, PageError> {
    let status = blocking(move || app.status()).await?;
    let body = format!("<div id=\"status\" data-refresh=\"/portal/status\">{}</div>", status_html(&status));
    Ok(Html(page("System Status", "/", &body)))
}

/// The status without the frame: what the page fetches every 2 s.
pub async fn status_fragment(State(app): State<Arc<dyn Source>>) -> Result<Response, PageError> {
    let status = blocking(move || app.status()).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(status_html(&status))).into_response())
}

fn status_html(s: &SystemStatus) -> String {
    let mut out = String::new();
    let verdict = if s.flowing && s.warnings.is_empty() {
        "<p class=\"ok\" id=\"verdict\">Data is flowing.</p>".to_owned()
    } else if s.flowing {
        let items: String = s.warnings.iter().map(|w| format!("<li>{}</li>", esc(w))).collect();
        format!("<div class=\"late\" id=\"verdict\"><p>Data is flowing, but late:</p><ul>{items}</ul></div>")
    } else {
        let items: String = s.problems.iter().map(|p| format!("<li>{}</li>", esc(p))).collect();
        format!("<div class=\"bad\" id=\"verdict\"><p>Data is not flowing:</p><ul>{items}</ul></div>")
    };
    out.push_str(&verdict);
    out.push_str(
        "<h2>Data Aggregators</h2><table><tr><th>Node</th><th>State</th><th>Epoch</th><th>Heartbeat</th>\
         <th>failwait / startwait</th><th>Version</th><th>URL</th><th>Note</th></tr>",
    );
    for n in &s.nodes {
        let _ = write!(
            out,
            "<tr data-node=\"{node}\" data-state=\"{state}\"><td>{node}{me}</td><td><span class=\"state {state}\">{state}</span></td>\
             <td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            n.epoch,
            n.heartbeat_age_seconds.map_or("-".into(), |a| format!("{a:.1} s ago")),
            esc(&n.failwait),
            esc(&n.startwait),
            esc(&n.version),
            esc(&n.advertise),
            esc(n.reason.as_deref().unwrap_or("")),
            node = esc(&n.node),
            state = esc(n.state()),
            me = if n.this_node { " <small>(answering)</small>" } else { "" },
        );
    }
    out.push_str("</table>");
    let _ = write!(
        out,
        "<p>Active: <b id=\"active\">{}</b>. DTO backlog {} (oldest {:.1} s). Shared directory {} ({}{}, {:.1} GiB free). \
         Repository {} ({:.1} MiB, {} DTOs loaded, {} items, {} rollups pending).</p>",
        esc(s.active.as_deref().unwrap_or("none")),
        s.dto_backlog,
        s.loader_lag_seconds,
        esc(&s.shared_dir.path),
        if s.shared_dir.ok { "ok" } else { "FAILING" },
        if s.shared_dir.nfs { ", NFS" } else { "" },
        s.shared_dir.free_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64,
        if s.repository.ok { "ok" } else { "FAILING" },
        s.repository.bytes as f64 / (1u64 << 20) as f64,
        s.repository.loaded_dtos,
        s.repository.items,
        s.repository.pending_rollups,
    );
    for (task, p) in &s.progress {
        let _ = write!(
            out,
            "<p class=\"progress\">{} in progress: {}{} {}, {:.0}/s{}</p>",
            esc(task),
            p.done,
            p.total.map_or(String::new(), |t| format!(" of {t}")),
            esc(&p.unit),
            p.rate_per_second,
            p.seconds_left.map_or(String::new(), |l| format!(", about {l:.0} s left")),
        );
    }
    out.push_str(
        "<h2>Data Collectors</h2><table><tr><th>Collector</th><th>State</th><th>Last report</th><th>Last DTO</th>\
         <th>Last cycle</th><th>Spool</th><th>Devices</th><th>Unreachable</th><th>Dropped</th></tr>",
    );
    let now_ms = now() * 1000;
    for c in &s.collectors {
        let r = &c.report;
        let _ = write!(
            out,
            "<tr data-collector=\"{id}\"><td>{id}</td><td><span class=\"state {cls}\">{state}</span></td><td>{:.0} s ago</td>\
             <td>{}</td><td>{}</td><td>{} DTOs{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.age_seconds,
            r.last_ack_ms.map_or("-".into(), |t| format!("{:.0} s ago", (now_ms - t).max(0) as f64 / 1000.0)),
            r.last_cycle_s.map_or("-".into(), |s| format!("{s:.1} s")),
            r.spool_dtos,
            r.spool_oldest_age_s.map_or(String::new(), |a| format!(", oldest {a:.0} s")),
            r.devices,
            r.unreachable,
            r.dropped_total,
            id = esc(&r.id),
            cls = if c.connected { "active" } else { "down" },
            state = if c.connected { "connected" } else { "not connected" },
        );
    }
    if s.collectors.is_empty() {
        out.push_str("<tr><td colspan=\"9\">No collector has reported.</td></tr>");
    }
    out.push_str("</table>");
    if let Some(a) = &s.alerting {
        let open: Vec<String> = a.open_events.iter().map(|(sev, n)| format!("{n} {}", esc(sev))).collect();
        let _ = write!(
            out,
            "<p>Open events: <a href=\"/events?state=open\">{}</a>. Notification outbox: {} waiting{}.</p>",
            if open.is_empty() { "none".into() } else { open.join(", ") },
            a.outbox.depth,
            if a.outbox.dropped > 0 { format!(", {} dropped", a.outbox.dropped) } else { String::new() }
        );
    }
    let _ = write!(out, "<p class=\"updated\" id=\"updated\" data-at=\"{}\">Updated {}</p>", now(), time(now()));
    out
}

// -------------------------------------------------------------------------------- Devices

pub async fn devices(State(app): State<Arc<dyn Source>>, Query(params): Params) -> Result<Html<String>, PageError> {
    require_active(app.as_ref())?;
    let q = params.get("q").cloned().unwrap_or_default();
    let needle = q.to_lowercase();
    let (devices, summary) = blocking(move || {
        let repo = app.repository();
        let devices = repo.devices()?;
        Ok::<_, pollux_repository::RepoError>((devices, device_summary(app.as_ref())))
    })
    .await??;
    let DeviceSummary { availability: avail, response, utilization: util, .. } = &*summary;
    let shown: Vec<_> =
        devices.iter().filter(|d| needle.is_empty() || d.name.to_lowercase().contains(&needle)).collect();
    let mut body = format!(
        "<form method=\"get\" class=\"search\"><input name=\"q\" value=\"{}\" placeholder=\"device name\"> \
         <button>Search</button> {} of {} devices</form>",
        esc(&q),
        shown.len().min(1000),
        devices.len()
    );
    body.push_str(
        "<table id=\"devices\"><tr><th>Device</th><th>Availability</th><th>Response</th>\
         <th>Worst in utilization</th><th>Items</th><th>Families</th></tr>",
    );
    for d in shown.iter().take(1000) {
        let cell = |v: Option<&f64>, fmt: fn(f64) -> String| v.map_or("-".to_owned(), |v| fmt(*v));
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url_part(&d.name),
            esc(&d.name),
            cell(avail.get(&d.name), |v| format!("{:.0} %", v * 100.0)),
            cell(response.get(&d.name), |v| format!("{v:.1} ms")),
            cell(util.get(&d.name), |v| format!("{v:.1} %")),
            d.items,
            esc(&d.families.join(", ")),
        );
    }
    body.push_str("</table>");
    Ok(Html(page("Devices", "/devices", &body)))
}

/// What the devices page shows of each device "now": the last 15 minutes' averages, computed
/// over every item at once (three top-N scans of raw data, a few hundred milliseconds on
/// 100,000 interfaces) and kept for [`SUMMARY_TTL`], so paging and searching cost nothing.
struct DeviceSummary {
    at: std::time::Instant,
    availability: BTreeMap<String, f64>,
    response: BTreeMap<String, f64>,
    utilization: BTreeMap<String, f64>,
}

/// Interfaces in one CSV response of the percentile report.
const CSV_PAGE: usize = 2_000;

const SUMMARY_TTL: std::time::Duration = std::time::Duration::from_secs(30);

fn device_summary(app: &dyn Source) -> Arc<DeviceSummary> {
    // Held while the summary is computed: requests that find it stale meanwhile wait for that
    // one computation instead of each starting their own (seconds of scans apiece).
    static CACHE: std::sync::Mutex<Option<Arc<DeviceSummary>>> = std::sync::Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(s) = cache.as_ref().filter(|s| s.at.elapsed() < SUMMARY_TTL) {
        return s.clone();
    }
    let repo = app.repository();
    let to = now();
    let from = to - 15 * 60;
    let per_device = |family: &str, metric: &str, worst: fn(f64, f64) -> f64| -> BTreeMap<String, f64> {
        let query = TopQuery { family: family.into(), metric: metric.into(), from, to, n: 1_000_000 };
        let mut out = BTreeMap::new();
        for e in repo.top(&query).unwrap_or_default() {
            out.entry(e.device).and_modify(|v: &mut f64| *v = worst(*v, e.avg)).or_insert(e.avg);
        }
        out
    };
    let summary = Arc::new(DeviceSummary {
        at: std::time::Instant::now(),
        availability: per_device("Availability", "reachable", f64::min),
        response: per_device("Availability", "response_ms", f64::max),
        utilization: per_device("Interface", "in_util", f64::max),
    });
    *cache = Some(summary.clone());
    summary
}

pub async fn device(
    State(app): State<Arc<dyn Source>>,
    Path(name): Path<String>,
    Query(params): Params,
) -> Result<Html<String>, PageError> {
    require_active(app.as_ref())?;
    let (range, length) = range_of(&params, "24h");
    let to = now();
    let from = to - length;
    let chosen = params.get("item").cloned();
    let device = name.clone();
    let data = blocking(move || -> Result<Option<DeviceData>, pollux_repository::RepoError> {
        let repo = app.repository();
        let items =
            repo.items(&ItemFilter { device: Some(device.clone()), family: None, limit: 100_000, offset: 0 })?;
        if items.is_empty() {
            return Ok(None);
        }
        let resolution = Resolution::auto(length);
        let series = |family: &str, item: &str, metric: &str, from: i64, resolution: Resolution| {
            repo.series(&SeriesQuery {
                family: family.into(),
                device: device.clone(),
                item: item.into(),
                metric: metric.into(),
                from,
                to,
                resolution,
            })
        };
        let interfaces: Vec<String> =
            items.iter().filter(|i| i.family == "Interface").map(|i| i.item.clone()).collect();
        // Each interface now: its last raw values of the last 15 minutes.
        let mut now_rows = Vec::new();
        for item in &interfaces {
            let last = |metric: &str| match series("Interface", item, metric, to - 900, Resolution::Raw) {
                Ok(Series::Raw(p)) => p.last().map(|x| x.1),
                _ => None,
            };
            let errors = last("in_errors").unwrap_or(0.0) + last("out_errors").unwrap_or(0.0);
            now_rows.push((item.clone(), last("in_bps"), last("out_bps"), last("in_util"), last("out_util"), errors));
        }
        let unknown = chosen.clone().filter(|c| !interfaces.contains(c));
        let interface = chosen.filter(|c| interfaces.contains(c)).or_else(|| interfaces.first().cloned());
        let mut charts = Vec::new();
        if let Some(item) = &interface {
            let (a, b) = (
                series("Interface", item, "in_bps", from, resolution)?,
                series("Interface", item, "out_bps", from, resolution)?,
            );
            charts.push((format!("{item}: in and out"), "bit/s", vec![("in_bps".into(), a), ("out_bps".into(), b)]));
            let (a, b) = (
                series("Interface", item, "in_util", from, resolution)?,
                series("Interface", item, "out_util", from, resolution)?,
            );
            charts.push((format!("{item}: utilization"), "%", vec![("in_util".into(), a), ("out_util".into(), b)]));
        }
        // Every CPU on one chart, a line each; the first memory and the device's availability.
        let cpus: Vec<&ItemInfo> = items.iter().filter(|i| i.family == "CPU").collect();
        if !cpus.is_empty() {
            let mut lines = Vec::new();
            for cpu in &cpus {
                lines.push((format!("CPU {}", cpu.item), series("CPU", &cpu.item, "util", from, resolution)?));
            }
            charts.push((format!("CPU ({} processors)", cpus.len()), "%", lines));
        }
        for (family, metric, unit, label) in [
            ("Memory", "used_pct", "%", "memory used"),
            ("Availability", "response_ms", "ms", "response time"),
            ("Availability", "reachable", "", "availability"),
        ] {
            if let Some(first) = items.iter().find(|i| i.family == family) {
                let s = series(family, &first.item, metric, from, resolution)?;
                charts.push((format!("{label} ({})", first.item), unit, vec![(metric.to_owned(), s)]));
            }
        }
        // Down now: the last poll of the last 15 minutes got no answer.
        let down_since = items.iter().find(|i| i.family == "Availability").and_then(|a| {
            match series("Availability", &a.item, "reachable", to - 900, Resolution::Raw) {
                Ok(Series::Raw(p)) => p.last().filter(|(_, v)| *v == 0.0).map(|(ts, _)| *ts),
                _ => None,
            }
        });
        let open = repo.events(&EventFilter {
            state: Some(EventState::Open),
            device: Some(device.clone()),
            limit: 100,
            ..EventFilter::default()
        })?;
        let families: BTreeMap<String, usize> = items.iter().fold(BTreeMap::new(), |mut m, i| {
            *m.entry(i.family.clone()).or_default() += 1;
            m
        });
        Ok(Some(DeviceData { now_rows, interface, unknown, charts, families, resolution, down_since, open }))
    })
    .await??;
    let Some(data) = data else {
        return Err(PageError::new(StatusCode::NOT_FOUND, format!("No device named {name:?} has any data.")));
    };
    let link = |item: &str, range: &str| format!("/devices/{}?item={}&range={range}", url_part(&name), url_part(item));
    let mut body = String::new();
    if let Some(at) = data.down_since {
        let _ = write!(body, "<p class=\"down\" id=\"down\">DOWN: the poll at {} got no answer.</p>", time(at));
    }
    if !data.open.is_empty() {
        body.push_str("<h2>Open events</h2><ul id=\"device-events\">");
        for e in &data.open {
            let _ = write!(
                body,
                "<li><span class=\"sev {sev}\">{sev}</span> {} on {} since {} (<a href=\"/events?device={}\">events</a>)</li>",
                esc(&e.rule_name),
                esc(&e.item),
                time(e.opened_at),
                url_part(&name),
                sev = e.severity.name(),
            );
        }
        body.push_str("</ul>");
    }
    if let Some(unknown) = &data.unknown {
        let _ = write!(
            body,
            "<p class=\"error\">{} has no interface {}; showing {}.</p>",
            esc(&name),
            esc(unknown),
            esc(data.interface.as_deref().unwrap_or("none"))
        );
    }
    let fams: Vec<String> = data.families.iter().map(|(f, n)| format!("{} {}", n, esc(f))).collect();
    let _ =
        write!(body, "<p>Items: {}. Resolution: {}.</p><p class=\"ranges\">", fams.join(", "), data.resolution.name());
    let item = data.interface.clone().unwrap_or_default();
    for (r, _) in RANGES {
        let mark = if r == range { " class=\"current\"" } else { "" };
        let _ = write!(body, "<a href=\"{}\"{mark}>{r}</a> ", esc(&link(&item, r)));
    }
    body.push_str("</p><div class=\"charts\">");
    for (title, unit, lines) in &data.charts {
        let lines: Vec<Line<'_>> = lines.iter().map(|(label, series)| Line { label: label.as_str(), series }).collect();
        body.push_str(&chart::render(title, unit, from, to, &lines));
    }
    body.push_str("</div><h2>Interfaces</h2><table><tr><th>Interface</th><th>In</th><th>Out</th><th>In util.</th><th>Out util.</th><th>Errors/s</th></tr>");
    for (item, inb, outb, inu, outu, errors) in &data.now_rows {
        let v = |x: &Option<f64>, unit: &str| x.map_or("-".to_owned(), |x| format!("{}{unit}", human(x)));
        let mark = if Some(item) == data.interface.as_ref() { " class=\"current\"" } else { "" };
        let _ = write!(
            body,
            "<tr{mark}><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{errors:.2}</td></tr>",
            esc(&link(item, range)),
            esc(item),
            v(inb, "bit/s"),
            v(outb, "bit/s"),
            v(inu, " %"),
            v(outu, " %"),
        );
    }
    body.push_str("</table>");
    Ok(Html(page(&format!("Device {name}"), "/devices", &body)))
}

/// An interface's latest values: item, in and out bit/s, in and out utilization, errors/s.
type InterfaceNow = (String, Option<f64>, Option<f64>, Option<f64>, Option<f64>, f64);
/// A chart: title, unit, and its lines (label, series).
type Chart = (String, &'static str, Vec<(String, Series)>);
/// A line of the percentile report: device, item, samples, in and out 95th percentiles.
type PercentileRow = (String, String, usize, Option<f64>, Option<f64>);

struct DeviceData {
    now_rows: Vec<InterfaceNow>,
    interface: Option<String>,
    /// An `?item=` that is no interface of the device (the page says so, and shows another).
    unknown: Option<String>,
    charts: Vec<Chart>,
    families: BTreeMap<String, usize>,
    resolution: Resolution,
    /// When the last poll that got no answer was, if the device is down now.
    down_since: Option<i64>,
    open: Vec<pollux_repository::Event>,
}

// ---------------------------------------------------------------------------------- Top-N

pub async fn top(State(app): State<Arc<dyn Source>>, Query(params): Params) -> Result<Html<String>, PageError> {
    require_active(app.as_ref())?;
    let metric = params.get("metric").cloned().unwrap_or_else(|| "in_util".into());
    let allowed = ["in_util", "out_util", "in_bps", "out_bps"];
    if !allowed.contains(&metric.as_str()) {
        return Err(PageError::new(StatusCode::BAD_REQUEST, format!("metric: one of {}", allowed.join(", "))));
    }
    let (range, length) = range_of(&params, "1h");
    let n: usize = params.get("n").and_then(|n| n.parse().ok()).filter(|n| (1..=1000).contains(n)).unwrap_or(20);
    // Up to an hour: the raw data up to now, what an operator means by "the last hour". Longer:
    // whole hours up to one whose rollup is surely done (it is computed some minutes after the
    // hour ends), so the hourly rollups answer, not a scan of raw data.
    let to = if length <= 3600 { now() } else { (now() - 15 * 60) / 3600 * 3600 };
    let query = TopQuery { family: "Interface".into(), metric: metric.clone(), from: to - length, to, n };
    let entries = blocking(move || pollux_repository::none_yet(app.repository().top(&query))).await??;
    let mut body = String::from("<form method=\"get\" class=\"search\"><select name=\"metric\">");
    for m in allowed {
        let sel = if m == metric { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{m}</option>");
    }
    body.push_str("</select> <select name=\"range\">");
    for (r, _) in RANGES {
        let sel = if r == range { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{r}</option>");
    }
    let _ = write!(body, "</select> <input name=\"n\" value=\"{n}\" size=\"4\"> <button>Show</button></form>");
    body.push_str("<table id=\"top\"><tr><th>#</th><th>Device</th><th>Interface</th><th>Average</th><th>Min</th><th>Max</th><th>Samples</th></tr>");
    for (i, e) in entries.iter().enumerate() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td><a href=\"/devices/{}\">{}</a></td><td><a href=\"/devices/{}?item={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            url_part(&e.device),
            esc(&e.device),
            url_part(&e.device),
            url_part(&e.item),
            esc(&e.item),
            human(e.avg),
            human(e.min),
            human(e.max),
            e.count
        );
    }
    if entries.is_empty() {
        body.push_str("<tr><td colspan=\"7\">No data in this range (whole hours up to the last one).</td></tr>");
    }
    body.push_str("</table>");
    Ok(Html(page("Top-N interfaces", "/top", &body)))
}

// ------------------------------------------------------------------------- Events and rules

pub async fn events(State(app): State<Arc<dyn Source>>, Query(params): Params) -> Result<Html<String>, PageError> {
    require_active(app.as_ref())?;
    let state = match params.get("state").map(String::as_str) {
        Some("open") => Some(EventState::Open),
        Some("cleared") => Some(EventState::Cleared),
        _ => None,
    };
    let severity = params.get("severity").and_then(|s| pollux_repository::Severity::parse(s));
    let device = params.get("device").filter(|d| !d.is_empty()).cloned();
    let filter = EventFilter { state, severity, device: device.clone(), limit: 500, ..EventFilter::default() };
    let events = blocking(move || app.repository().events(&filter)).await??;
    let mut body = format!(
        "<form method=\"get\" class=\"search\"><select name=\"state\"><option value=\"\">any state</option>{}{}</select> \
         <input name=\"device\" value=\"{}\" placeholder=\"device\"> <button>Filter</button> \
         <label>Acknowledge as <input id=\"ack-by\" value=\"operator\" size=\"12\"></label></form>",
        opt("open", state == Some(EventState::Open)),
        opt("cleared", state == Some(EventState::Cleared)),
        esc(device.as_deref().unwrap_or("")),
    );
    body.push_str(
        "<table id=\"events\"><tr><th>Id</th><th>State</th><th>Severity</th><th>Rule</th><th>Device</th><th>Item</th>\
         <th>Opened</th><th>Value / peak</th><th>Cleared</th><th>Acknowledged</th></tr>",
    );
    for e in &events {
        let state = if e.state == EventState::Open { "open" } else { "cleared" };
        let ack = match &e.acked_by {
            Some(by) => esc(by),
            None => format!("<button data-ack=\"{}\">Acknowledge</button>", e.id),
        };
        let _ = write!(
            body,
            "<tr data-event=\"{}\"><td>{}</td><td><span class=\"state {state}\">{state}</span></td><td><span class=\"sev {sev}\">{sev}</span></td><td>{}</td>\
             <td><a href=\"/devices/{}\">{}</a></td><td>{}</td><td class=\"ts\" data-ts=\"{}\">{}</td><td>{} {} {} (peak {})</td>\
             <td>{}</td><td>{ack}</td></tr>",
            e.id,
            e.id,
            esc(&e.rule_name),
            url_part(&e.device),
            esc(&e.device),
            esc(&e.item),
            e.opened_at,
            time(e.opened_at),
            human(e.value),
            esc(&e.op),
            human(e.threshold),
            human(e.peak),
            e.cleared_at.map_or("-".into(), |t| format!("{} ({})", time(t), esc(e.cleared_by.as_deref().unwrap_or("")))),
            sev = e.severity.name(),
        );
    }
    if events.is_empty() {
        body.push_str("<tr><td colspan=\"10\">No events.</td></tr>");
    }
    body.push_str("</table>");
    Ok(Html(page("Events", "/events", &body)))
}

fn opt(value: &str, selected: bool) -> String {
    format!("<option{}>{value}</option>", if selected { " selected" } else { "" })
}

pub async fn rules(State(app): State<Arc<dyn Source>>) -> Result<Html<String>, PageError> {
    require_active(app.as_ref())?;
    let catalog = app.catalog();
    let rules = blocking(move || app.repository().rules()).await??;
    let mut body = String::from(
        "<table id=\"rules\"><tr><th>Id</th><th>Name</th><th>Condition</th><th>Polls</th><th>Clear</th><th>Severity</th>\
         <th>Scope</th><th></th></tr>",
    );
    for r in &rules {
        let s = &r.spec;
        let _ = write!(
            body,
            "<tr data-rule=\"{}\"><td>{}</td><td>{}</td><td>{} {} {} {}</td><td>{}{}</td><td>{} x {}</td><td>{}</td><td>{} / {}</td>\
             <td><button data-delete-rule=\"{}\">Delete</button></td></tr>",
            r.id,
            r.id,
            esc(&s.display_name()),
            esc(&s.family),
            esc(&s.metric),
            esc(s.op.symbol()),
            s.value,
            s.for_polls,
            s.window_polls.map_or(String::new(), |w| format!(" of {w}")),
            s.clear_value(),
            s.clear_polls,
            s.severity.name(),
            esc(s.device.as_deref().unwrap_or("*")),
            esc(s.item.as_deref().unwrap_or("*")),
            r.id
        );
    }
    if rules.is_empty() {
        body.push_str("<tr><td colspan=\"8\">No rules yet.</td></tr>");
    }
    body.push_str("</table><h2>New rule</h2><form id=\"new-rule\" class=\"rule\"><select name=\"family\">");
    for f in catalog.iter() {
        let selected = if f.name == "Interface" { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{}</option>", esc(&f.name));
    }
    body.push_str(
        "</select> <input name=\"metric\" placeholder=\"metric, e.g. in_util\" required> \
         <select name=\"op\"><option>&gt;</option><option>&gt;=</option><option>&lt;</option><option>&lt;=</option>\
         <option>above_baseline</option><option>below_baseline</option></select> \
         <input name=\"value\" placeholder=\"value\" required size=\"8\"> for <input name=\"for_polls\" value=\"1\" size=\"3\"> polls, \
         severity <select name=\"severity\"><option>critical</option><option>major</option><option>minor</option>\
         <option selected>warning</option><option>info</option></select> \
         <input name=\"name\" placeholder=\"name (optional)\"> <input name=\"device\" placeholder=\"device glob\"> \
         <input name=\"item\" placeholder=\"item glob\"> <button>Create</button> <span id=\"rule-error\" class=\"error\"></span></form>",
    );
    Ok(Html(page("Threshold rules", "/rules", &body)))
}

// ---------------------------------------------------------------- 95th-percentile report

/// The month `YYYY-MM` as `[from, to)` Unix seconds (UTC).
pub fn month_range(month: &str) -> Option<(i64, i64)> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let start = days_from_civil(y, m, 1) * 86_400;
    let end = if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) } * 86_400;
    Some((start, end))
}

pub async fn percentile(State(app): State<Arc<dyn Source>>, Query(params): Params) -> Result<Response, PageError> {
    require_active(app.as_ref())?;
    // This month so far by default: the month a new installation has data for.
    let this_month = {
        let (y, m) = current_month();
        format!("{y}-{m:02}")
    };
    let month = params.get("month").cloned().unwrap_or(this_month);
    let Some((from, month_end)) = month_range(&month) else {
        return Err(PageError::new(StatusCode::BAD_REQUEST, format!("month: {month:?} is not YYYY-MM")));
    };
    let to = month_end.min(now()).max(from + 1);
    let offset: usize = params.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0).min(1 << 40);
    let csv = params.get("format").is_some_and(|f| f == "csv");
    // Two month-long raw series per interface, ~10 ms: a request is bounded to seconds of a
    // blocking thread, and the rest is paged (`offset`; the CSV says where next in a header).
    let limit = if csv { CSV_PAGE } else { 200 };
    let device = params.get("device").filter(|d| !d.is_empty()).cloned();
    let filter_device = device.clone();
    let (rows, interval) =
        blocking(move || -> Result<(Vec<PercentileRow>, Option<i64>), pollux_repository::RepoError> {
            let repo = app.repository();
            let items =
                repo.items(&ItemFilter { device: filter_device, family: Some("Interface".into()), limit, offset })?;
            let mut rows = Vec::new();
            // The poll interval, as the data has it: the median gap between samples.
            let mut interval = None;
            for i in items {
                let mut p95 = |metric: &str| -> Result<(usize, Option<f64>), pollux_repository::RepoError> {
                    let q = SeriesQuery {
                        family: "Interface".into(),
                        device: i.device.clone(),
                        item: i.item.clone(),
                        metric: metric.into(),
                        from,
                        to,
                        resolution: Resolution::Raw,
                    };
                    let points = match repo.series(&q)? {
                        Series::Raw(p) => p,
                        Series::Rollup(_) => Vec::new(),
                    };
                    if interval.is_none() && points.len() > 1 {
                        let mut gaps: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
                        gaps.sort_unstable();
                        interval = Some(gaps[gaps.len() / 2]).filter(|g| *g > 0);
                    }
                    let mut values: Vec<f64> = points.into_iter().map(|x| x.1).collect();
                    let n = values.len();
                    Ok((n, pollux_model::percentile::nearest_rank(&mut values, 95.0)))
                };
                let (n, inb) = p95("in_bps")?;
                let (_, outb) = p95("out_bps")?;
                rows.push((i.device, i.item, n, inb, outb));
            }
            Ok((rows, interval))
        })
        .await??;
    if csv {
        let mut text = String::from("device,item,month,samples,in_bps_p95,out_bps_p95\n");
        for (d, i, n, inb, outb) in &rows {
            let v = |x: &Option<f64>| x.map_or(String::new(), |x| x.to_string());
            let field = pollux_model::csv::field;
            let _ = writeln!(text, "{},{},{month},{n},{},{}", field(d), field(i), v(inb), v(outb));
        }
        let disposition = format!("attachment; filename=\"pollux-p95-{month}.csv\"");
        let mut response = (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
            text,
        )
            .into_response();
        if rows.len() == limit {
            response.headers_mut().insert("x-next-offset", (offset + limit).into());
        }
        return Ok(response);
    }
    let days = (to - from) as f64 / 86_400.0;
    let expected = match interval {
        Some(i) => {
            format!("{} samples per interface at the data's {i} s poll interval when none is missing", (to - from) / i)
        }
        None => "no samples yet".to_owned(),
    };
    let mut body = format!(
        "<form method=\"get\" class=\"search\"><input name=\"month\" value=\"{}\" size=\"8\"> \
         <input name=\"device\" value=\"{}\" placeholder=\"device\"> <button>Show</button> \
         <a href=\"/reports/percentile?month={}&amp;device={}&amp;format=csv\">CSV</a></form>\
         <p>{days:.1} days{}: {expected}; the 95th percentile is the sample at rank ceil(0.95 x n) in ascending \
         order (nearest rank).</p>",
        esc(&month),
        esc(device.as_deref().unwrap_or("")),
        url_part(&month),
        url_part(device.as_deref().unwrap_or("")),
        if to < month_end { " so far" } else { "" },
    );
    body.push_str("<table id=\"percentile\"><tr><th>Device</th><th>Interface</th><th>Samples</th><th>In, 95th</th><th>Out, 95th</th></tr>");
    for (d, i, n, inb, outb) in &rows {
        let v = |x: &Option<f64>| x.map_or("-".to_owned(), |x| format!("{}bit/s", human(x)));
        let _ = write!(
            body,
            "<tr><td><a href=\"/devices/{}\">{}</a></td><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>",
            url_part(d),
            esc(d),
            esc(i),
            v(inb),
            v(outb)
        );
    }
    body.push_str("</table>");
    if rows.len() == limit {
        let _ = write!(
            body,
            "<p><a href=\"/reports/percentile?month={}&amp;device={}&amp;offset={}\">next {limit}</a></p>",
            url_part(&month),
            url_part(device.as_deref().unwrap_or("")),
            offset + limit
        );
    }
    Ok(Html(page("95th percentile", "/reports/percentile", &body)).into_response())
}

fn current_month() -> (i64, i64) {
    let (year, month, _, _) = pollux_model::period::civil(now());
    (year, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        assert_eq!(month_range("2026-11"), Some((1_793_491_200, 1_796_083_200)));
        assert_eq!(month_range("2024-02").map(|(a, b)| (b - a) / 86_400), Some(29));
        assert_eq!(month_range("2025-02").map(|(a, b)| (b - a) / 86_400), Some(28));
        assert_eq!(month_range("2025-12").map(|(a, b)| (b - a) / 86_400), Some(31));
        assert_eq!(month_range("2025-13"), None);
        assert_eq!(month_range("x"), None);
    }
}
