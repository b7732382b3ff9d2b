//! The ingest and query contract, against the real binary: every bad input gets its 4xx naming
//! the problem and stores nothing; good DTOs are stored once, loaded once, and queryable.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn cycle_now() -> i64 {
    unix_now() / 300 * 300 - 300
}

#[test]
fn every_bad_dto_is_refused_with_its_reason_and_nothing_is_stored() {
    let shared = tempdir();
    std::fs::write(shared.path().join("agg.toml"), "max_records = 50\nmax_body_bytes = 200000\n").unwrap();
    let config = shared.path().join("agg.toml");
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    let cycle = cycle_now();
    let good = interface_dto("bad-test", cycle, 1, 2);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    let url = format!("{}/api/v1/dto/bad-test", da.url);
    let cases: Vec<(&str, u16, Vec<u8>, &str)> = vec![
        ("malformed JSON", 400, b"{\"id\": \"bad-test\", ".to_vec(), "EOF"),
        ("not an object", 400, b"[1,2]".to_vec(), "expected"),
        ("id differs from path", 400, with(&|d| d["id"] = json!("other")).to_string().into_bytes(), "differs"),
        ("unknown family", 400, with(&|d| d["family"] = json!("Toaster")).to_string().into_bytes(), "family"),
        (
            "unknown metric",
            400,
            with(&|d| d["records"][0]["values"]["warp"] = json!(9)).to_string().into_bytes(),
            "no metric \\\"warp\\\"",
        ),
        (
            "non-numeric value",
            400,
            with(&|d| d["records"][1]["values"]["in_bps"] = json!("fast")).to_string().into_bytes(),
            "records[1].values.in_bps",
        ),
        (
            "number out of range",
            400,
            with(&|d| d["records"][0]["values"]["in_bps"] = json!(1))
                .to_string()
                .replace("\"in_bps\":1,", "\"in_bps\":1e999,")
                .into_bytes(),
            "records[0].values.in_bps",
        ),
        (
            "timestamp before the cycle",
            400,
            with(&|d| d["records"][0]["ts"] = json!(cycle - 1)).to_string().into_bytes(),
            "records[0].ts",
        ),
        (
            "timestamp past the window",
            400,
            with(&|d| d["records"][0]["ts"] = json!(cycle + 601)).to_string().into_bytes(),
            "outside the cycle's window",
        ),
        ("cycle in the future", 400, with(&|d| d["cycle"] = json!(cycle + 86_400)).to_string().into_bytes(), "cycle"),
        ("zero interval", 400, with(&|d| d["interval"] = json!(0)).to_string().into_bytes(), "interval"),
        (
            "missing records",
            400,
            with(&|d| d.as_object_mut().unwrap().remove("records").map(drop).unwrap()).to_string().into_bytes(),
            "records",
        ),
        (
            "duplicate item",
            400,
            with(&|d| d["records"][1]["item"] = d["records"][0]["item"].clone()).to_string().into_bytes(),
            "appears twice",
        ),
        ("too many records", 400, interface_dto("bad-test", cycle, 3, 20).to_string().into_bytes(), "limit of 50"),
        ("over the size limit", 413, vec![b' '; 300_000], "limit"),
    ];
    for (what, status, body, needle) in &cases {
        let (got, answer) = put(&url, "application/json", body);
        assert_eq!(got, *status, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field in {answer}"));
        assert!(error.contains(needle) || answer.to_string().contains(needle), "{what}: {error:?} lacks {needle:?}");
    }
    let (got, _) = put(&format!("{}/api/v1/dto/bad$id", da.url), "application/json", good.to_string().as_bytes());
    assert_eq!(got, 400, "bad characters in the id");
    let (got, _) = put(&url, "text/csv", good.to_string().as_bytes());
    assert_eq!(got, 415);
    assert!(dto_files(shared.path()).is_empty(), "a refused DTO left files: {:?}", dto_files(shared.path()));
    assert_eq!(get(&url).0, 404);
    let metrics = get_text(&format!("{}/metrics", da.url));
    assert!(metrics.contains(&format!("pollux_dtos_rejected_total {}", cases.len() + 2)), "{metrics}");

    // And the good one is taken.
    assert_eq!(put_json(&da.url, &good).0, 201);
}

#[test]
fn a_dto_is_stored_once_loaded_once_and_queryable() {
    let shared = tempdir();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let first = cycle_now() - 3600;
    for c in 0..6 {
        let dto = interface_dto(&format!("dc1.Interface.{c}"), first + c * 300, 2, 3);
        assert_eq!(put_json(&da.url, &dto).0, 201, "cycle {c}");
        assert_eq!(put_json(&da.url, &dto).0, 200, "repeat of cycle {c}");
    }
    let url = |p: &str| format!("{}{p}", da.url);
    wait_until(Duration::from_secs(20), "all six DTOs loaded", || {
        (0..6).all(|c| get(&url(&format!("/api/v1/dto/dc1.Interface.{c}"))).1["state"] == "loaded").then_some(())
    });
    // Loaded: a repeat is still 200, and stores nothing.
    assert_eq!(put_json(&da.url, &interface_dto("dc1.Interface.0", first, 2, 3)).0, 200);
    assert!(dto_files(shared.path()).is_empty());
    let (_, state) = get(&url("/api/v1/dto/dc1.Interface.3"));
    assert_eq!((state["records"].as_u64(), state["epoch"].as_u64()), (Some(6), Some(1)));

    let (status, series) = get(&url(&format!(
        "/api/v1/series?family=Interface&device=rtr-1&item=ge-0/0/2&metric=in_bps&from={first}&to={}",
        first + 1800
    )));
    assert_eq!(status, 200, "{series}");
    assert_eq!(series["resolution"], "raw");
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 6);
    let expected_first = (((first / 300) % 1000) as f64 + 5.0) * 1000.0;
    assert_eq!(points[0], json!([first + 3, expected_first]));

    let (_, devices) = get(&url("/api/v1/devices"));
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    let (_, items) = get(&url("/api/v1/items?device=rtr-0&family=Interface"));
    assert_eq!(items["items"].as_array().unwrap().len(), 3);
    let (_, families) = get(&url("/api/v1/families"));
    let names: Vec<&str> =
        families["families"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Availability", "CPU", "Interface", "Memory"]);
    let (status, top) =
        get(&url(&format!("/api/v1/top?family=Interface&metric=in_bps&from={first}&to={}&n=2", first + 1800)));
    assert_eq!(status, 200, "{top}");
    let top = top["items"].as_array().unwrap();
    assert_eq!((top.len(), top[0]["device"].as_str(), top[0]["item"].as_str()), (2, Some("rtr-1"), Some("ge-0/0/2")));

    for (query, needle) in [
        ("/api/v1/series?family=Interface&device=rtr-1&item=ge-0/0/2", "metric: required"),
        ("/api/v1/series?family=Interface&device=rtr-1&item=x&metric=warp", "no metric"),
        ("/api/v1/series?family=Nope&device=rtr-1&item=x&metric=in_bps", "unknown family"),
        ("/api/v1/series?family=Interface&device=r&item=x&metric=in_bps&from=abc", "from"),
        ("/api/v1/series?family=Interface&device=r&item=x&metric=in_bps&from=10&to=5", "before"),
        ("/api/v1/series?family=Interface&device=r&item=x&metric=in_bps&resolution=hour&from=0&to=9223372036854775807", "to:"),
        ("/api/v1/series?family=Interface&device=r&item=x&metric=in_bps&to=-9223372036854775808", "to:"),
        ("/api/v1/series?family=Interface&device=r&item=x&metric=in_bps&resolution=minute", "resolution"),
        ("/api/v1/top?family=Interface&metric=in_bps&n=0", "n:"),
        ("/api/v1/items?limit=0", "limit"),
    ] {
        let (status, body) = get(&url(query));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{query}: {body}");
    }
    let metrics = get_text(&url("/metrics"));
    for needle in [
        "pollux_dtos_stored_total 6",
        "pollux_dtos_duplicate_total 7",
        "pollux_dtos_loaded_total 6",
        "pollux_role{role=\"active\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[test]
fn a_bad_configuration_or_shared_dir_exits_64_naming_it() {
    let dir = tempdir();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--failwait".into(), "5 minutes".into()], "failwait"),
        (vec!["--shared-dir".into(), dir.path().join("absent").display().to_string()], "cannot be read"),
        (vec!["--config".into(), dir.path().join("none.toml").display().to_string()], "none.toml"),
    ];
    std::fs::write(dir.path().join("bad.toml"), "[retention]\nraw = \"3x\"\n").unwrap();
    let mut cases = cases;
    cases.push((vec!["--config".into(), dir.path().join("bad.toml").display().to_string()], "retention.raw"));
    // A bad metric family file is no longer among them: it is skipped and shown in the status
    // (tests/hardening.rs), so that it cannot keep a node from starting or taking over.
    for (args, needle) in cases {
        let out = std::process::Command::new(BIN)
            .arg("aggregator")
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr:?} lacks {needle:?}");
    }
}

#[test]
fn bearer_token_and_custom_families() {
    let shared = tempdir();
    std::fs::create_dir_all(shared.path().join("metric-families")).unwrap();
    std::fs::write(
        shared.path().join("metric-families/temperature.toml"),
        "name = \"Temperature\"\n[[metric]]\nname = \"celsius\"\nunit = \"C\"\n",
    )
    .unwrap();
    let token = shared.path().join("ingest.token");
    std::fs::write(&token, "s3cret").unwrap();
    std::fs::write(shared.path().join("agg.toml"), format!("ingest_token_file = {token:?}\n")).unwrap();
    let config = shared.path().join("agg.toml");
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    let cycle = cycle_now();
    let dto = json!({"id": "t.1", "collector": "dc1", "family": "Temperature", "cycle": cycle, "interval": 60,
                     "records": [{"device": "r1", "item": "chassis", "ts": cycle + 5, "values": {"celsius": 41.5}}]});
    assert_eq!(put_json(&da.url, &dto).0, 401);
    let response = ureq::put(&format!("{}/api/v1/dto/t.1", da.url))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .send(dto.to_string().as_bytes())
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    wait_until(Duration::from_secs(20), "the Temperature DTO loaded", || {
        (get(&format!("{}/api/v1/dto/t.1", da.url)).1["state"] == "loaded").then_some(())
    });
    let (_, series) = get(&format!(
        "{}/api/v1/series?family=Temperature&device=r1&item=chassis&metric=celsius&from={cycle}&to={}",
        da.url,
        cycle + 60
    ));
    assert_eq!(series["points"], json!([[cycle + 5, 41.5]]));
}

#[test]
fn a_stored_dto_of_an_undefined_family_waits_without_blocking_the_others() {
    use pollux_aggregator::ingest::store::DtoStore;
    use pollux_model::{Dto, Record};
    let shared = tempdir();
    // What a predecessor left: four whole DTOs, one of a family that is not defined here (its
    // definition was removed). The oldest first, so it heads every listing of the store.
    let store = DtoStore::open(shared.path().join("dto")).unwrap();
    let cycle = cycle_now();
    let dto = |id: &str, family: &str, metric: &str| Dto {
        id: id.into(),
        collector: "dc1".into(),
        family: family.into(),
        cycle,
        interval: 300,
        metrics: vec![metric.into()],
        records: vec![Record { device: "r1".into(), item: "x".into(), ts: cycle + 1, values: vec![Some(1.0)] }],
    };
    store.store(&dto("gone.1", "Gone", "level"), 1).unwrap();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(20)); // distinct mtimes: listing order
        store.store(&dto(&format!("cpu.{i}"), "CPU", "util"), 1).unwrap();
    }
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    wait_until(Duration::from_secs(20), "the CPU DTOs loaded past the undefined one", || {
        (0..3).all(|i| get(&format!("{}/api/v1/dto/cpu.{i}", da.url)).1["state"] == "loaded").then_some(())
    });
    assert_eq!(get(&format!("{}/api/v1/dto/gone.1", da.url)).1["state"], "stored", "kept, not dropped");
    // Defining the family again lets it load (the definitions are reread every 10 s).
    std::fs::write(shared.path().join("metric-families/gone.toml"), "name = \"Gone\"\n[[metric]]\nname = \"level\"\n")
        .unwrap();
    wait_until(Duration::from_secs(30), "the waiting DTO loaded once its family is back", || {
        (get(&format!("{}/api/v1/dto/gone.1", da.url)).1["state"] == "loaded").then_some(())
    });
    assert!(dto_files(shared.path()).is_empty());
}
