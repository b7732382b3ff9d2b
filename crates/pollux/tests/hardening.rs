//! Hostile and careless input against the real binary: each test is one finding of the
//! hardening issue, and fails on the release before it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn cycle_now() -> i64 {
    unix_now() / 300 * 300 - 300
}

fn state_of(da: &Aggregator, id: &str) -> Option<String> {
    let (status, body) = get(&format!("{}/api/v1/dto/{id}", da.url));
    (status == 200).then(|| body["state"].as_str().unwrap_or("").to_owned())
}

fn wait_loaded(da: &Aggregator, id: &str) {
    wait_until(Duration::from_secs(30), &format!("{id} to be loaded"), || {
        (state_of(da, id).as_deref() == Some("loaded")).then_some(())
    });
}

fn status(url: &str) -> (i32, String) {
    let out = Command::new(BIN).args(["status", "--url", url]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Finding 1: a customized family named like a built-in in another case, or like one of the
/// repository's own tables, can no longer share tables with anything: the case variant is
/// skipped (and shown), the internal-looking name loads like any family, and Interface data is
/// loaded and kept.
#[test]
fn family_names_that_collide_lose_nothing() {
    let shared = tempdir();
    let families = shared.path().join("metric-families");
    std::fs::create_dir_all(&families).unwrap();
    std::fs::write(families.join("a.toml"), "name = \"interface\"\n[[metric]]\nname = \"in_bps\"").unwrap();
    std::fs::write(families.join("b.toml"), "name = \"cycles\"\n[[metric]]\nname = \"v\"").unwrap();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let cycle = cycle_now();
    assert_eq!(put_json(&da.url, &interface_dto("if-1", cycle, 1, 2)).0, 201);
    let custom = json!({"id": "cy-1", "collector": "dc1", "family": "cycles", "cycle": cycle, "interval": 300,
                        "records": [{"device": "rtr-0", "item": "x", "ts": cycle + 1, "values": {"v": 3.5}}]});
    assert_eq!(put_json(&da.url, &custom).0, 201);
    let variant = json!({"id": "lc-1", "collector": "dc1", "family": "interface", "cycle": cycle, "interval": 300,
                         "records": [{"device": "rtr-0", "item": "x", "ts": cycle + 1, "values": {"in_bps": 1}}]});
    // Its family file is skipped for a problem: 503, so the sender keeps the DTO until the file
    // is fixed, rather than throwing it away on a 400.
    let (code, body) = put_json(&da.url, &variant);
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("retry once they are fixed"), "{body}");
    wait_loaded(&da, "if-1");
    wait_loaded(&da, "cy-1");
    let (_, series) = get(&format!(
        "{}/api/v1/series?family=cycles&device=rtr-0&item=x&metric=v&from={cycle}&to={}",
        da.url,
        cycle + 600
    ));
    assert_eq!(series["points"], json!([[cycle + 1, 3.5]]));
    let (_, series) = get(&format!(
        "{}/api/v1/series?family=Interface&device=rtr-0&item=ge-0/0/1&metric=in_bps&from={cycle}&to={}",
        da.url,
        cycle + 600
    ));
    assert_eq!(series["points"].as_array().map(Vec::len), Some(1), "{series}");
    let (_, st) = get(&format!("{}/api/v1/status", da.url));
    assert!(st["family_files"].to_string().contains("letter case"), "{st}");
}

/// Finding 5: a FIFO, a link to /etc/passwd and a 100 MB file in metric-families/ neither hang
/// nor stop the aggregator; each is skipped, named in the status, and nothing of the linked
/// file reaches the log. A good family beside them works.
#[test]
fn bad_family_files_neither_hang_nor_stop_a_node() {
    let shared = tempdir();
    let families = shared.path().join("metric-families");
    std::fs::create_dir_all(&families).unwrap();
    nix::unistd::mkfifo(&families.join("fifo.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", families.join("passwd.toml")).unwrap();
    std::fs::File::create(families.join("huge.toml")).unwrap().set_len(100 << 20).unwrap();
    std::fs::write(families.join("temp.toml"), "name = \"Temp\"\n[[metric]]\nname = \"c\"").unwrap();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let unknown = json!({"id": "u-1", "collector": "dc1", "family": "Huge", "cycle": cycle_now(), "interval": 300,
                         "records": [{"device": "r", "item": "s", "ts": cycle_now() + 1, "values": {"c": 1}}]});
    assert_eq!(put_json(&da.url, &unknown).0, 503, "an unknown family while family files are skipped");
    let (_, families_listed) = get(&format!("{}/api/v1/families", da.url));
    assert!(families_listed.to_string().contains("\"Temp\""));
    let (code, out) = status(&da.url);
    assert_eq!(code, 1, "bad family files are problems to act on:\n{out}");
    for file in ["fifo.toml", "passwd.toml", "huge.toml"] {
        assert!(out.contains(file), "{file} not named:\n{out}");
    }
    // Housekeeping rereads the directory every 10 s: a FIFO added now is named once it has,
    // and the node is still alive after that reread.
    nix::unistd::mkfifo(&families.join("fifo2.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    wait_until(Duration::from_secs(30), "a reread of metric-families/", || {
        status(&da.url).1.contains("fifo2.toml").then_some(())
    });
    assert_eq!(put_json(&da.url, &interface_dto("after-reread", cycle_now(), 1, 1)).0, 201);
    wait_loaded(&da, "after-reread");
    assert!(!da.log().contains("root:"), "the linked file's content reached the log");
}

/// Finding 2: a 1.2 MB body whose records each name another metric, and one record with
/// 60,000 keys, are refused at once, without the aggregator's memory growing.
#[test]
fn json_bodies_cost_what_they_weigh() {
    let shared = tempdir();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let cycle = cycle_now();
    let before = rss_kib(da.pid());
    let mut body =
        format!(r#"{{"id":"amp","collector":"c","family":"Interface","cycle":{cycle},"interval":300,"records":["#);
    let mut i = 0;
    while body.len() < 1_200_000 {
        body.push_str(&format!(r#"{{"device":"d","item":"{i}","ts":{},"values":{{"m{i}":1}}}},"#, cycle + 1));
        i += 1;
    }
    body.push_str("{}]}");
    let started = Instant::now();
    let (code, answer) = put(&format!("{}/api/v1/dto/amp", da.url), "application/json", body.as_bytes());
    assert_eq!(code, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("records[0].values.m0"), "{answer}");
    let keys: String = (0..60_000).map(|i| format!(r#""k{i}":1,"#)).collect();
    let wide = format!(
        r#"{{"id":"wide","collector":"c","family":"Interface","cycle":{cycle},"interval":300,
            "records":[{{"device":"d","item":"i","ts":{},"values":{{{keys}"in_bps":1}}}}]}}"#,
        cycle + 1
    );
    assert_eq!(put(&format!("{}/api/v1/dto/wide", da.url), "application/json", wide.as_bytes()).0, 400);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let grown = rss_kib(da.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "the aggregator grew by {grown} KiB");
}

/// Finding 6: an id sent again with other content is 409, never a silent 200, whether the
/// first copy is still stored or already loaded; an identical repeat is 200.
#[test]
fn a_reused_id_with_other_content_is_a_conflict() {
    let shared = tempdir();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let cycle = cycle_now();
    let first = interface_dto("reuse", cycle, 1, 2);
    let mut other = first.clone();
    other["records"][0]["values"]["in_bps"] = json!(1.5);
    assert_eq!(put_json(&da.url, &first).0, 201);
    let (code, body) = put_json(&da.url, &other);
    assert!(code == 409 && body["error"].as_str().unwrap().contains("other content"), "{code} {body}");
    // The same content in the binary codec's column order is the same DTO.
    assert_eq!(put_json(&da.url, &first).0, 200);
    wait_loaded(&da, "reuse");
    assert_eq!(put_json(&da.url, &other).0, 409);
    assert_eq!(put_json(&da.url, &first).0, 200);
    let metrics = get_text(&format!("{}/metrics", da.url));
    assert!(metrics.contains("pollux_dtos_conflict_total 2"), "{metrics}");
}

/// Finding 3: at a 1,024 open-file limit, 1,100 idle connections neither starve the election
/// (the active keeps its lease through several failwaits) nor stay open past idle_timeout.
#[test]
fn idle_connections_cannot_starve_the_election() {
    let shared = tempdir();
    let config = shared.path().join("agg.toml");
    std::fs::write(&config, "idle_timeout = \"8s\"\n").unwrap();
    let args: Vec<String> = [
        "--nofile=1024:1024",
        BIN,
        "aggregator",
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        "da-test",
        "--failwait",
        "1s",
        "--startwait",
        "5s",
        "--config",
        config.to_str().unwrap(),
        "--shared-dir",
        shared.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let da = Aggregator::spawn_program("prlimit", &args, &[]);
    da.wait_active();
    let addr = da.url.trim_start_matches("http://").to_owned();
    let held: Vec<TcpStream> = (0..1100).filter_map(|_| TcpStream::connect(&addr).ok()).collect();
    assert!(held.len() >= 1000, "only {} connections opened", held.len());
    // Three failwaits with every client slot taken: the lease is renewed all along.
    let lease = shared.path().join("election/lease");
    let counter = || -> u64 {
        let v: Value = serde_json::from_slice(&std::fs::read(&lease).unwrap()).unwrap();
        v["counter"].as_u64().unwrap()
    };
    let start = counter();
    std::thread::sleep(Duration::from_secs(3));
    assert!(counter() > start + 5, "the lease was not renewed while clients held every connection");
    assert!(!da.log().contains("fenced"), "{}", da.log());
    // The idle ones are closed after idle_timeout and the node answers again.
    wait_until(Duration::from_secs(40), "the active to answer again", || {
        (get(&format!("{}/health/active", da.url)).0 == 200).then_some(())
    });
    let metrics = get_text(&format!("{}/metrics", da.url));
    let refused = metrics.lines().find(|l| l.starts_with("pollux_http_connections_refused_total ")).unwrap();
    assert!(!refused.ends_with(" 0"), "{refused}\n{}", da.log());
    drop(held);
}

/// Finding 4: the proxy frees what each connection took: 20,000 connections leave its memory
/// where 1,000 left it.
#[test]
fn the_proxy_does_not_grow_per_connection() {
    let proxy = Aggregator::spawn(
        &["proxy", "--listen", "127.0.0.1:0", "--aggregator", "http://127.0.0.1:9"].map(String::from),
        &[],
    );
    let addr = proxy.url.trim_start_matches("http://").to_owned();
    let one = |n: usize| {
        for _ in 0..n {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /proxy/status HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n").unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut sink);
        }
    };
    one(1000);
    let before = rss_kib(proxy.pid());
    one(20_000);
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    assert!(grown < 4 * 1024, "the proxy grew by {grown} KiB over 20,000 connections");
}

#[cfg(feature = "failpoints")]
/// Finding 7 (needs the crash points: `--features failpoints`): loads failing, a DTO stuck for want of its family, and no active each make
/// `pollux status` say so and exit 1.
#[test]
fn status_exits_1_whenever_data_is_not_flowing() {
    let shared = tempdir();
    let switch = shared.path().join("fail-loads");
    let fault = format!("repository.load.before_commit=error-while:{}", switch.display());
    let families = shared.path().join("metric-families");
    std::fs::create_dir_all(&families).unwrap();
    std::fs::write(families.join("temp.toml"), "name = \"Temp\"\n[[metric]]\nname = \"c\"").unwrap();
    let mut da = Aggregator::start(shared.path(), &[], &[("POLLUX_FAILPOINTS", &fault)]);
    da.wait_active();
    let (code, out) = status(&da.url);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("data is flowing"), "{out}");

    std::fs::write(&switch, b"").unwrap();
    let cycle = cycle_now();
    assert_eq!(put_json(&da.url, &interface_dto("fails", cycle, 1, 1)).0, 201);
    let temp = json!({"id": "t-1", "collector": "dc1", "family": "Temp", "cycle": cycle, "interval": 300,
                      "records": [{"device": "r", "item": "s", "ts": cycle + 1, "values": {"c": 1}}]});
    assert_eq!(put_json(&da.url, &temp).0, 201);
    let out = wait_until(Duration::from_secs(20), "status to report failing loads", || {
        let (code, out) = status(&da.url);
        (code == 1 && out.contains("loads are failing")).then_some(out)
    });
    assert!(out.contains("injected"), "{out}");

    // The family of a stored DTO goes away before it is loaded (removed while the node was
    // down): the DTO waits, and the status says for which family.
    da.stop();
    std::fs::remove_file(families.join("temp.toml")).unwrap();
    // (Another node id: a node that released the lease leaves it to the others for failwait.)
    let dir = shared.path().to_str().unwrap();
    let args = ["aggregator", "--listen", "127.0.0.1:0", "--node-id", "da-2", "--shared-dir", dir];
    let mut da = Aggregator::spawn(&args.map(String::from), &[]);
    da.wait_active();
    wait_loaded(&da, "fails");
    let out = wait_until(Duration::from_secs(20), "status to name the waiting family", || {
        let (code, out) = status(&da.url);
        (code == 1 && out.contains("family \"Temp\"")).then_some(out)
    });
    assert!(!out.contains("loads are failing"), "{out}");
    assert_eq!(state_of(&da, "t-1").as_deref(), Some("stored"), "{out}");

    da.stop();
    let (code, out) = status(&da.url);
    assert_eq!(code, 1, "no aggregator answers: {out}");
}

/// Finding 8: the small ones, each as an attacker would send it.
#[test]
fn small_ones() {
    let shared = tempdir();
    let config = shared.path().join("agg.toml");
    let token = shared.path().join("ingest.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::write(&config, format!("ingest_token_file = {token:?}\nbody_timeout = \"1s\"\n")).unwrap();
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    // An offset past i64 is refused, not wrapped.
    let (code, body) = get(&format!("{}/api/v1/items?offset=9223372036854775808", da.url));
    assert_eq!(code, 400, "{body}");
    let (code, _) = get(&format!("{}/api/v1/items?offset=9223372036854775000", da.url));
    assert_eq!(code, 400);
    // Media types and the Bearer scheme are case-insensitive.
    let dto = interface_dto("case", cycle_now(), 1, 1);
    let send = |ct: &str, auth: &str| {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        agent
            .put(&format!("{}/api/v1/dto/case", da.url))
            .header("content-type", ct)
            .header("authorization", auth)
            .send(dto.to_string().as_bytes())
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(send("Application/JSON; charset=UTF-8", "bearer s3cret"), 201);
    assert_eq!(send("APPLICATION/JSON", "BEARER s3cret"), 200);
    assert_eq!(send("application/json", "Bearer wrong"), 401);
    assert_eq!(send("application/json", "Basic s3cret"), 401);

    // A body that stops arriving is a 408 after body_timeout, naming it.
    let addr = da.url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(
        b"PUT /api/v1/dto/slow HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"), "{answer}");

    // --node-id with a path, and an empty token, exit 64 naming the key.
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let dir = shared.path().to_str().unwrap();
    for id in ["../escape", "a/b"] {
        let (code, err) = run(&["aggregator", "--shared-dir", dir, "--listen", "127.0.0.1:0", "--node-id", id]);
        assert_eq!(code, Some(64), "{id}: {err}");
        assert!(err.contains("node_id"), "{err}");
    }
    assert!(!shared.path().parent().unwrap().join("escape.json").exists());
    std::fs::write(&token, " \n").unwrap();
    let (code, err) = run(&["aggregator", "--config", config.to_str().unwrap(), "--shared-dir", dir]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("ingest_token_file") && err.contains("is empty"), "{err}");
    // A token on the command line or in the configuration file itself is refused.
    std::fs::write(&config, "ingest_token = \"s3cret\"\n").unwrap();
    let (code, err) = run(&["aggregator", "--config", config.to_str().unwrap(), "--shared-dir", dir]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("ingest_token_file"), "{err}");
}

/// A crash point that does not exist would make a fault test test nothing: refused at start.
#[test]
fn an_unknown_crash_point_is_refused() {
    let out = Command::new(BIN)
        .args(["status", "--url", "http://127.0.0.1:9"])
        .env("POLLUX_FAILPOINTS", "store.mid_wirte=abort")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store.mid_wirte") || err.contains("no crash points"), "{err}");
}

/// Collector reports are kept per id, so invented ids must not grow the shared directory and
/// every status read without end: past 1,000 collectors a new id is refused, a known one is not.
#[test]
fn collector_reports_are_bounded() {
    let dir = tempdir();
    let da = Aggregator::start(dir.path(), &[], &[]);
    da.wait_active();
    let report = |id: &str| {
        let body = serde_json::json!({"id": id, "devices": 1});
        common::put(&format!("{}/api/v1/collectors/{id}", da.url), "application/json", body.to_string().as_bytes()).0
    };
    for i in 0..1000 {
        assert_eq!(report(&format!("c{i}")), 204, "collector {i}");
    }
    assert_eq!(report("one-too-many"), 409);
    assert_eq!(report("c7"), 204, "a collector already known still reports");
    let (_, status) = get(&format!("{}/api/v1/status", da.url));
    assert_eq!(status["collectors"].as_array().map(Vec::len), Some(1000));
    assert_eq!(report("bad%20id"), 400, "an id is a plain name");
    assert_eq!(report(".hidden"), 400, "an id that would never be shown");
}

/// New collectors reporting at once cannot push the count past the bound: the count and the
/// write of a new id are one step.
#[test]
fn collector_reports_racing_past_the_bound_are_refused() {
    let dir = tempdir();
    let da = Aggregator::start(dir.path(), &[], &[]);
    da.wait_active();
    let report = |url: &str, id: &str| {
        let body = serde_json::json!({"id": id, "devices": 1});
        common::put(&format!("{url}/api/v1/collectors/{id}"), "application/json", body.to_string().as_bytes()).0
    };
    for i in 0..990 {
        assert_eq!(report(&da.url, &format!("c{i}")), 204, "collector {i}");
    }
    let racers: Vec<_> = (0..40)
        .map(|t| {
            let url = da.url.clone();
            std::thread::spawn(move || report(&url, &format!("racer{t}")))
        })
        .collect();
    let kept = racers.into_iter().map(|r| r.join().unwrap()).filter(|s| *s == 204).count();
    assert_eq!(kept, 10, "exactly the room left under the bound");
    let (_, status) = get(&format!("{}/api/v1/status", da.url));
    assert_eq!(status["collectors"].as_array().map(Vec::len), Some(1000));
}

/// Two aggregators with the same node id on one shared directory (a copied service unit)
/// would take turns at the lease, both ready-active at times: the second is refused at start,
/// exit 64 naming the holder; once the first is gone (kill -9) the id is free again.
#[test]
fn a_second_aggregator_with_the_same_node_id_is_refused() {
    let shared = tempdir();
    let mut first = Aggregator::start(shared.path(), &[], &[]);
    first.wait_active();
    let dir = shared.path().to_str().unwrap();
    let mut second = harnessed(BIN)
        .args(["aggregator", "--shared-dir", dir, "--listen", "127.0.0.1:0", "--node-id", "da-test"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), "the second aggregator to be refused", || {
        let exited = second.try_wait().unwrap();
        if exited.is_none() && first.log().contains("fenced") {
            let _ = second.kill();
        }
        exited
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(exited.code(), Some(64), "{err}");
    assert!(err.contains("node id da-test is in use") && err.contains(&format!("pid {}", first.pid())), "{err}");
    first.kill9();
    let again = Aggregator::start(shared.path(), &[], &[]);
    again.wait_active();
}

/// The command line's `--url`: a malformed one is a usage error (64) naming it; an address that
/// answers a change with a redirect (a front end that moved, a login page) did not do it, and
/// the command says so instead of reporting it done.
#[test]
fn the_command_line_checks_its_url_and_follows_no_redirect() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for url in ["localhost:8581", "http://", "ftp://da1:8581", "http://a b", "nothing"] {
        for command in ["status", "failover", "maintenance"] {
            let mut args = vec![command];
            if command == "maintenance" {
                args.push("on");
            }
            args.extend(["--url", url]);
            let (code, _, err) = run(&args);
            assert_eq!(code, Some(64), "{command} --url {url:?}: {err}");
            assert!(err.contains("--url"), "{command} --url {url:?}: {err}");
        }
    }
    let done = json!({"node": "da1", "maintenance": true, "was_active": false, "handed_over": false});
    let target = common::receiver::Receiver::start_answering(done);
    let front = common::receiver::redirecting_to(&target.url);
    for command in [&["maintenance", "on", "--url", &front][..], &["failover", "--url", &front]] {
        let (code, out, err) = run(command);
        assert_eq!(code, Some(1), "{command:?}: {out}{err}");
        assert!(err.contains("302") && err.contains("not followed"), "{command:?}: {err}");
        assert!(!out.contains("maintenance:") && !out.contains("switched over"), "{command:?}: {out}");
    }
}

/// Every shell example of the docs that changes state through the API is run as written (the
/// address made the test aggregator's): none is refused for its form (a missing
/// `content-type: application/json` made them 415s).
#[test]
fn the_docs_state_changing_examples_run_as_written() {
    let shared = tempdir();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let addr = da.url.trim_start_matches("http://").to_owned();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut ran = 0;
    for page in std::fs::read_dir(&docs).unwrap().map(|e| e.unwrap().path()) {
        if page.extension().is_none_or(|x| x != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&page).unwrap();
        for block in text.split("```sh\n").skip(1).filter_map(|b| b.split("```").next()) {
            let changes = block.contains("curl") && (block.contains("-X PUT") || block.contains("-XPOST"));
            if !changes || block.contains("example.net") {
                continue;
            }
            let script = block
                .replace("http://127.0.0.1:8581", &da.url)
                .replace("localhost:8581", &addr)
                .replace("cargo run --release --", BIN);
            let out = Command::new("bash").args(["-c", &script]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(!stdout.contains("content type"), "{}:\n{block}\nanswered:\n{stdout}", page.display());
            // The answers, one JSON value after another until the first text (pollux status).
            let answers: Vec<serde_json::Value> =
                serde_json::Deserializer::from_str(&stdout).into_iter().map_while(Result::ok).collect();
            assert!(answers.len() >= 2, "{}: {block}\nanswered:\n{stdout}", page.display());
            for answer in &answers {
                let error = answer["error"].as_str().unwrap_or("");
                assert!(error.is_empty() || error.starts_with("no event"), "{}: {answer}", page.display());
            }
            ran += 1;
        }
    }
    assert!(ran >= 2, "the examples were found: {ran}");
}
