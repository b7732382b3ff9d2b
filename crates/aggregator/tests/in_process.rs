//! The aggregator built and run inside the test process, on 127.0.0.1:0, with the intervals
//! that decisions depend on shortened: what the black-box suite proves with real processes, here
//! in seconds, with the composition root itself under test (`Aggregator::build_with` and `run`).

use pollux_aggregator::config::AggregatorConfig;
use pollux_aggregator::{Aggregator, Intervals};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One aggregator running on a runtime of its own; stopped (and every task awaited) on drop.
struct Running {
    url: String,
    stop: CancellationToken,
    ended: Option<std::sync::mpsc::Receiver<()>>,
}

fn config(shared: &Path, node: &str, failwait: Duration) -> AggregatorConfig {
    AggregatorConfig {
        node_id: node.into(),
        shared_dir: shared.into(),
        failwait,
        startwait: failwait * 4,
        min_free_bytes: 0,
        ..AggregatorConfig::default()
    }
}

impl Running {
    fn start(config: AggregatorConfig, intervals: Intervals) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let aggregator = Aggregator::build_with(config, listener, intervals).expect("builds");
        let stop = CancellationToken::new();
        let (done, ended) = std::sync::mpsc::channel();
        let token = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(aggregator.run(token)).expect("runs");
            let _ = done.send(());
        });
        Running { url, stop, ended: Some(ended) }
    }

    /// Stops it; true when `run` returned (every task ended) within `limit`.
    fn stop_within(&mut self, limit: Duration) -> bool {
        self.stop.cancel();
        self.ended.take().is_none_or(|ended| ended.recv_timeout(limit).is_ok())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(url: &str) -> (u16, Value) {
    match agent().get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

fn put(url: &str, body: &Value) -> u16 {
    agent().put(url).header("content-type", "application/json").send_json(body).map_or(0, |r| r.status().as_u16())
}

fn wait<T>(limit: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    pollux_cluster::wait_for(limit, what, check).unwrap_or_else(|e| panic!("{e}"))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn cpu_dto(id: &str, family: &str, metric: &str) -> Value {
    let cycle = (now() / 300 - 1) * 300;
    json!({"id": id, "collector": "dc1", "family": family, "cycle": cycle, "interval": 300,
           "records": [{"device": "r1", "item": "1", "ts": cycle + 1, "values": {metric: 42.5}}]})
}

fn wait_active(url: &str) -> u64 {
    wait(Duration::from_secs(20), "the ready active", || {
        let (status, health) = get(&format!("{url}/health/active"));
        (status == 200).then(|| health["epoch"].as_u64().unwrap())
    })
}

fn wait_loaded(url: &str, id: &str) {
    wait(Duration::from_secs(20), &format!("{id} loaded"), || {
        (get(&format!("{url}/api/v1/dto/{id}")).1["state"] == "loaded").then_some(())
    });
}

#[test]
fn acknowledges_loads_and_returns_from_run_once_every_task_ended() {
    let shared = tempfile::tempdir().unwrap();
    let mut da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    assert_eq!(wait_active(&da.url), 1);
    let dto = cpu_dto("dc1.CPU.1", "CPU", "util");
    assert_eq!(put(&format!("{}/api/v1/dto/dc1.CPU.1", da.url), &dto), 201);
    assert_eq!(put(&format!("{}/api/v1/dto/dc1.CPU.1", da.url), &dto), 200, "stored once, answered 200 after");
    wait_loaded(&da.url, "dc1.CPU.1");
    let (_, status) = get(&format!("{}/api/v1/status", da.url));
    assert_eq!(status["nodes"][0]["workers"]["loader"]["failures_in_a_row"], 0, "{status}");
    assert!(status["nodes"][0]["workers"].get("housekeeping").is_some(), "{status}");
    assert!(da.stop_within(Duration::from_secs(10)), "run returned after the shutdown");
    assert_eq!(get(&format!("{}/health", da.url)).0, 0, "nothing listens any more");
    // The lease was handed over on the way out: a new node takes it without waiting failwait.
    let lease: Value = serde_json::from_slice(&std::fs::read(shared.path().join("election/lease")).unwrap()).unwrap();
    assert_eq!(lease["state"], "released", "{lease}");
}

#[test]
fn a_clean_stop_hands_the_lease_to_the_standby_long_before_failwait() {
    let shared = tempfile::tempdir().unwrap();
    let failwait = Duration::from_secs(60);
    let mut first = Running::start(config(shared.path(), "da1", failwait), Intervals::default());
    let epoch = wait_active(&first.url);
    let second = Running::start(config(shared.path(), "da2", failwait), Intervals::default());
    wait(Duration::from_secs(10), "da2 standing by", || {
        (get(&format!("{}/health", second.url)).1["role"] == "standby").then_some(())
    });
    let stopped = Instant::now();
    assert!(first.stop_within(Duration::from_secs(10)));
    assert!(wait_active(&second.url) > epoch);
    assert!(stopped.elapsed() < failwait / 4, "took over in {:?}", stopped.elapsed());
    let dto = cpu_dto("dc1.CPU.2", "CPU", "util");
    assert_eq!(put(&format!("{}/api/v1/dto/dc1.CPU.2", second.url), &dto), 201);
    wait_loaded(&second.url, "dc1.CPU.2");
}

#[test]
fn housekeeping_rereads_family_files_at_its_interval() {
    let shared = tempfile::tempdir().unwrap();
    let intervals = Intervals { reread_families: Duration::from_millis(200), ..Intervals::default() };
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), intervals);
    wait_active(&da.url);
    let dto = cpu_dto("dc1.Temp.1", "Temp", "celsius");
    assert_eq!(put(&format!("{}/api/v1/dto/dc1.Temp.1", da.url), &dto), 400, "not defined yet");
    std::fs::write(
        shared.path().join("metric-families/temp.toml"),
        "name = \"Temp\"\n[[metric]]\nname = \"celsius\"\n",
    )
    .unwrap();
    wait(Duration::from_secs(10), "the new family defined", || {
        get(&format!("{}/api/v1/families", da.url)).1.to_string().contains("\"Temp\"").then_some(())
    });
    assert_eq!(put(&format!("{}/api/v1/dto/dc1.Temp.1", da.url), &dto), 201);
    wait_loaded(&da.url, "dc1.Temp.1");
}

/// Every page of the portal and every read of the API answers on an aggregator that has loaded
/// nothing yet (a new installation's first minute), and no page can be framed by another site.
#[test]
fn an_empty_repository_answers_every_page_and_read() {
    let shared = tempfile::tempdir().unwrap();
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    wait_active(&da.url);
    let now = now();
    let month = now - 30 * 86_400;
    for path in [
        "/".to_owned(),
        "/devices".into(),
        "/devices/nothing-here".into(),
        "/top".into(),
        "/events".into(),
        "/rules".into(),
        "/reports/percentile".into(),
        "/reports/percentile?format=csv".into(),
        "/api/v1/devices".into(),
        "/api/v1/items".into(),
        format!("/api/v1/top?family=Interface&metric=in_bps&from={month}&to={now}"),
        format!("/api/v1/series?family=Interface&device=x&item=y&metric=in_bps&from={month}&to={now}"),
        format!("/api/v1/percentile?family=Interface&device=x&item=y&metric=in_bps&from={month}&to={now}"),
        "/api/v1/events".into(),
        "/api/v1/thresholds".into(),
        "/api/v1/status".into(),
    ] {
        let response = agent().get(format!("{}{path}", da.url)).call().unwrap();
        let status = response.status().as_u16();
        let expected = if path == "/devices/nothing-here" { 404 } else { 200 };
        assert_eq!(status, expected, "{path}");
        if !path.starts_with("/api/") {
            let headers = response.headers();
            assert_eq!(headers.get("x-frame-options").map(|v| v.to_str().unwrap()), Some("DENY"), "{path}");
            let csp = headers.get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());
            assert!(csp.as_deref().is_some_and(|c| c.contains("frame-ancestors 'none'")), "{path}: {csp:?}");
        }
    }
}

/// A NUL (or any control character) in a name is a 400 naming the parameter, on every backend
/// (PostgreSQL refuses NUL in text: it was a 503, the repository "unavailable").
#[test]
fn control_characters_in_names_are_refused() {
    let shared = tempfile::tempdir().unwrap();
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    wait_active(&da.url);
    let now = now();
    for (path, name) in [
        (
            format!("/api/v1/series?family=Interface&device=a%00b&item=y&metric=in_bps&from={}&to={now}", now - 3600),
            "device",
        ),
        (
            format!("/api/v1/percentile?family=Interface&device=x&item=%01&metric=in_bps&from={}&to={now}", now - 3600),
            "item",
        ),
        ("/api/v1/items?device=a%00".to_owned(), "device"),
        ("/api/v1/items?family=a%0a".to_owned(), "family"),
        ("/api/v1/events?device=%00".to_owned(), "device"),
    ] {
        let (status, body) = get(&format!("{}{path}", da.url));
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap_or("").starts_with(name), "{path}: {body}");
    }
}

/// "Data is flowing" turns amber, with the age, once the newest data is older than two of its
/// poll intervals (a collector behind or gone), and green again when data comes.
#[test]
fn late_data_is_a_warning_with_its_age() {
    let shared = tempfile::tempdir().unwrap();
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    wait_active(&da.url);
    let mut dto = cpu_dto("dc1.CPU.late", "CPU", "util");
    dto["interval"] = json!(1);
    dto["cycle"] = json!(now() - 1);
    dto["records"][0]["ts"] = json!(now() - 1);
    assert_eq!(put(&format!("{}/api/v1/dto/dc1.CPU.late", da.url), &dto), 201);
    wait_loaded(&da.url, "dc1.CPU.late");
    let status = wait(Duration::from_secs(15), "the late-data warning", || {
        let (_, status) = get(&format!("{}/api/v1/status", da.url));
        (!status["warnings"].as_array()?.is_empty()).then_some(status)
    });
    assert_eq!(status["flowing"], true, "late is a warning, not a stop: {status}");
    let warning = status["warnings"][0].as_str().unwrap();
    assert!(warning.contains("the newest data was loaded") && warning.contains("(1 s)"), "{warning}");
    assert!(status["newest_load_age_seconds"].as_f64().unwrap() > 2.0, "{status}");
    let page = agent().get(format!("{}/", da.url)).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(page.contains("class=\"late\"") && page.contains("Data is flowing, but late"), "the portal is amber");
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    match agent().post(url).header("content-type", "application/json").send_json(body) {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_json().unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// The rules' device and item patterns together are bounded (every new item is matched against
/// them all): long glob patterns are taken up to the limit, then refused with a 409 that says
/// what to do; replacing a rule counts its own pattern once.
#[test]
fn the_rules_patterns_are_bounded() {
    let shared = tempfile::tempdir().unwrap();
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    wait_active(&da.url);
    let rule = |n: usize| {
        json!({"family": "Interface", "metric": "in_util", "op": ">", "value": 90,
               "device": format!("*{}*{n:0>8}", "a".repeat(238)), "item": "*"})
    };
    let per_rule = 238 + 2 + 8 + 1;
    let fits = pollux_aggregator::api::MAX_PATTERN_BYTES / per_rule;
    let mut first = None;
    for n in 0..fits {
        let (status, body) = post(&format!("{}/api/v1/thresholds", da.url), &rule(n));
        assert_eq!(status, 201, "rule {n}: {body}");
        first.get_or_insert(body["id"].as_i64().unwrap());
    }
    let (status, body) = post(&format!("{}/api/v1/thresholds", da.url), &rule(fits));
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("over the limit"), "{body}");
    let replaced = agent()
        .put(format!("{}/api/v1/thresholds/{}", da.url, first.unwrap()))
        .header("content-type", "application/json")
        .send_json(rule(fits))
        .unwrap();
    assert_eq!(replaced.status().as_u16(), 200, "a rule replaced counts once");
}

/// A device's page shows every CPU, a DOWN banner while its last poll got no answer, and says
/// so when `?item=` names no interface of it instead of silently showing another.
#[test]
fn a_device_page_shows_every_cpu_and_that_it_is_down() {
    let shared = tempfile::tempdir().unwrap();
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    wait_active(&da.url);
    let cycle = now() / 60 * 60 - 60;
    let dto = |id: &str, family: &str, records: Value| json!({"id": id, "collector": "dc1", "family": family, "cycle": cycle, "interval": 60, "records": records});
    let cpus = json!([
        {"device": "r1", "item": "196608", "ts": cycle + 1, "values": {"util": 10.0}},
        {"device": "r1", "item": "196609", "ts": cycle + 1, "values": {"util": 80.0}}]);
    let down = json!([{"device": "r1", "item": "r1", "ts": cycle + 2, "values": {"reachable": 0.0}}]);
    let port = json!([{"device": "r1", "item": "ge-0/0/1", "ts": cycle + 1, "values": {"in_bps": 5.0}}]);
    for (id, family, records) in [("c.1", "CPU", cpus), ("a.1", "Availability", down), ("i.1", "Interface", port)] {
        assert_eq!(put(&format!("{}/api/v1/dto/{id}", da.url), &dto(id, family, records)), 201);
        wait_loaded(&da.url, id);
    }
    let page = |query: &str| {
        agent().get(format!("{}/devices/r1{query}", da.url)).call().unwrap().body_mut().read_to_string().unwrap()
    };
    let html = page("");
    assert!(
        html.contains("CPU (2 processors)") && html.contains("CPU 196608") && html.contains("CPU 196609"),
        "{html}"
    );
    assert!(html.contains("id=\"down\"") && html.contains("DOWN"), "{html}");
    let html = page("?item=ge-9/9/9");
    assert!(html.contains("has no interface ge-9/9/9; showing ge-0/0/1"), "{html}");
}

/// The top page's last hour is the raw data up to now (it showed hours that ended at least a
/// quarter of an hour ago), and the 95th-percentile page defaults to this month so far and
/// states the data's own poll interval.
#[test]
fn the_last_hour_and_this_month_show_what_just_arrived() {
    let shared = tempfile::tempdir().unwrap();
    let da = Running::start(config(shared.path(), "da1", Duration::from_secs(2)), Intervals::default());
    wait_active(&da.url);
    for k in 0..3 {
        let cycle = now() / 60 * 60 - 60 * (2 - k);
        let id = format!("i.{k}");
        let records = json!([{"device": "r1", "item": "ge-0/0/7", "ts": cycle + 1,
                              "values": {"in_bps": 1e6, "out_bps": 2e6, "in_util": 55.0}}]);
        let dto = json!({"id": id, "collector": "dc1", "family": "Interface", "cycle": cycle, "interval": 60,
                         "records": records});
        assert_eq!(put(&format!("{}/api/v1/dto/{id}", da.url), &dto), 201);
        wait_loaded(&da.url, &id);
    }
    let page =
        |path: &str| agent().get(format!("{}{path}", da.url)).call().unwrap().body_mut().read_to_string().unwrap();
    let top = page("/top");
    assert!(top.contains("ge-0/0/7"), "the last hour's top shows the interface: {top}");
    let report = page("/reports/percentile");
    assert!(report.contains("so far") && report.contains("60 s poll interval"), "{report}");
    assert!(report.contains("ge-0/0/7"), "{report}");
}
