//! HTTPS and tokens, as an outsider meets them: every route of the API and the portal against
//! every kind of credential; clients that must refuse (wrong CA, expired certificate); old TLS
//! versions and plain HTTP refused by the server (checked with `openssl s_client`, not our own
//! client); certificates rotated under load with no failed request; tokens absent from every
//! log, even at trace level.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An aggregator over HTTPS with all three tokens, on 127.0.0.1.
fn secured_aggregator(shared: &Path, extra_toml: &str) -> Aggregator {
    let s = secure();
    let config = shared.join("aggregator.toml");
    std::fs::write(&config, format!("{}{extra_toml}", s.aggregator_toml())).unwrap();
    let da = Aggregator::start(shared, &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    da
}

/// A proxy over HTTPS in front of `aggregator`, on 127.0.0.1.
fn secured_proxy(shared: &Path, aggregator: &str, env: &[(&str, &str)]) -> Aggregator {
    let config = shared.join("proxy.toml");
    std::fs::write(&config, secure().proxy_toml()).unwrap();
    let args = ["proxy", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0", "--aggregator", aggregator];
    Aggregator::spawn(&args.map(String::from), env)
}

fn token(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// A client that trusts the harness's CA and sends no token of its own.
fn trusting_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(pollux_transport::ClientTls::load(Some(&secure().ca)).unwrap().ureq())
            .http_status_as_error(false)
            .build(),
    )
}

/// A request with an optional Authorization header; the status (0: no answer).
fn call(method: &str, url: &str, authorization: Option<&str>) -> u16 {
    let agent = trusting_agent();
    let with = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match authorization {
        Some(a) => r.header("authorization", a),
        None => r,
    };
    let body = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        let r = r.header("content-type", "application/json");
        match authorization {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    };
    let answer = match method {
        "get" => with(agent.get(url)).call(),
        "delete" => with(agent.delete(url)).call(),
        "post" => body(agent.post(url)).send("{}"),
        "put" => body(agent.put(url)).send("{}"),
        other => panic!("method {other}"),
    };
    answer.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// The class the reference (docs/reference.md) gives each route: what this test holds the server to.
fn expected_class(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("get", "/health" | "/health/active" | "/api/v1/openapi.json") => "open",
        ("put", "/api/v1/dto/{id}" | "/api/v1/collectors/{id}") => "ingest",
        ("get", _) => "read",
        _ => "admin",
    }
}

#[test]
fn every_route_refuses_a_missing_or_wrong_class_token() {
    let s = secure();
    let shared = tempdir();
    let da = secured_aggregator(shared.path(), "");
    let (ingest, admin, read) = (token(&s.ingest), token(&s.admin), token(&s.read));
    let (_, document) = get(&format!("{}/api/v1/openapi.json", da.url));
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, ops) in document["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            routes.push((method.clone(), path.clone()));
        }
    }
    for page in ["/", "/portal/status", "/devices", "/devices/{id}", "/top", "/events", "/rules", "/reports/percentile"]
    {
        routes.push(("get".into(), page.into()));
    }
    routes.push(("get".into(), "/no/such/route".into()));
    routes.push(("delete".into(), "/no/such/route".into()));
    assert!(routes.len() >= 30, "{routes:?}");
    let credentials: [(&str, Option<String>); 7] = [
        ("none", None),
        ("unknown", Some("Bearer not-a-token-of-this-cluster".into())),
        ("ingest", Some(format!("Bearer {ingest}"))),
        ("admin", Some(format!("bearer {admin}"))),
        ("read", Some(format!("BEARER {read}"))),
        ("read as Basic", Some(format!("Basic {}", base64(&format!("portal:{read}"))))),
        ("ingest in another scheme", Some(format!("Token {ingest}"))),
    ];
    let mut checked = 0;
    for (method, path) in &routes {
        let class = expected_class(method, path);
        let url = format!("{}{}", da.url, path.replace("{id}", "x1"));
        for (name, credential) in &credentials {
            let holder = match *name {
                "read as Basic" => "read",
                "ingest" | "admin" | "read" => name,
                _ => "nobody",
            };
            // The lone node must keep its lease: a failover or maintenance that passes the check
            // is not sent (the chaos suite's switchover sends one with the admin token).
            let would_run = class == "open" || holder == class || (class == "read" && holder != "nobody");
            if would_run && matches!(path.as_str(), "/api/v1/failover" | "/api/v1/maintenance") {
                continue;
            }
            let status = call(method, &url, credential.as_deref());
            let verdict = match (class, holder) {
                ("open", _) => !matches!(status, 401 | 403),
                (_, "nobody") => status == 401,
                ("read", _) => !matches!(status, 401 | 403),
                (c, h) if c == h => !matches!(status, 401 | 403 | 0),
                _ => status == 403,
            };
            assert!(verdict, "{method} {path} ({class}) with {name}: {status}");
            checked += 1;
        }
    }
    assert!(checked >= 200, "{checked} requests checked");

    // A collector that reported (ingest token) is forgotten with the admin token.
    let report = serde_json::json!({"id": "gone", "devices": 3});
    let agent = trusting_agent();
    let reported = agent
        .put(&format!("{}/api/v1/collectors/gone", da.url))
        .header("authorization", s.bearer(&s.ingest))
        .header("content-type", "application/json")
        .send(report.to_string())
        .unwrap();
    assert_eq!(reported.status(), 204);
    let forget = || {
        agent
            .delete(&format!("{}/api/v1/collectors/gone", da.url))
            .header("authorization", s.bearer(&s.admin))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((forget(), forget()), (204, 404));
    assert_eq!(get(&format!("{}/api/v1/status", da.url)).1["collectors"], serde_json::json!([]));

    // A 401 tells a browser to ask for the portal's password, and an API client to send a token.
    let answer = raw_https(&da.url, "GET /devices HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 401") && answer.to_lowercase().contains("www-authenticate: basic"),
        "{answer}"
    );

    // The proxy checks nothing itself and passes credentials through.
    let proxy = secured_proxy(shared.path(), &da.url, &[]);
    wait_until(Duration::from_secs(10), "the proxy to route to the active", || {
        (get(&format!("{}/health/active", proxy.url)).0 == 200).then_some(())
    });
    assert_eq!(call("get", &format!("{}/api/v1/status", proxy.url), None), 401);
    assert_eq!(call("post", &format!("{}/api/v1/thresholds", proxy.url), Some(&format!("Bearer {read}"))), 403);
    assert_eq!(call("get", &format!("{}/api/v1/status", proxy.url), Some(&format!("Bearer {read}"))), 200);
    assert_eq!(call("get", &format!("{}/proxy/status", proxy.url), None), 200);
    assert_eq!(call("post", &format!("{}/proxy/status", proxy.url), None), 405);
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request over TLS written by hand; the whole answer.
fn raw_https(url: &str, request: &str) -> String {
    let s = secure();
    let addr = url.trim_start_matches("https://");
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", addr, "-CAfile", s.ca.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = child.wait();
    out
}

/// `openssl s_client` with extra arguments: (success, everything it printed).
fn s_client(addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile", secure().ca.to_str().unwrap(), "-verify_return_error"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn pollux(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "trace").output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn clients_refuse_what_they_must_and_the_server_refuses_old_tls_and_plain_http() {
    let s = secure();
    let shared = tempdir();
    let da = secured_aggregator(shared.path(), "");
    let addr = da.url.trim_start_matches("https://").to_owned();
    let read = s.read.to_str().unwrap();

    // TLS 1.2 and 1.3 are spoken; 1.0 and 1.1 are refused by the server (the client is told to
    // allow them: security level 0).
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(&addr, &[flag]);
        assert!(ok && out.contains(&format!("New, {protocol}, Cipher is")), "{flag}: {out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    for flag in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client(&addr, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok && !out.contains("Cipher is ECDHE"), "{flag} was accepted: {out}");
        assert!(out.contains("alert") || out.contains("no protocols available"), "{flag}: {out}");
    }

    // Plain HTTP to the HTTPS port: a clear refusal, and no data.
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A PUT with a body the server never reads as HTTP: the answer still arrives (no reset).
    let body = vec![b'{'; 200_000];
    tcp.write_all(
        format!("PUT /api/v1/dto/x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    )
    .unwrap();
    tcp.write_all(&body).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 421") && answer.contains("https://"), "{answer}");
    let (_, metrics) = (0, get_text(&format!("{}/metrics", da.url)));
    let failures = metrics.lines().find(|l| l.starts_with("pollux_http_tls_failures_total ")).unwrap();
    assert_ne!(failures, "pollux_http_tls_failures_total 0", "{failures}");

    // The command line trusts its --ca-file, the system's roots otherwise, and nothing else.
    let (code, out) = pollux(&["status", "--url", &da.url, "--ca-file", s.ca.to_str().unwrap(), "--token-file", read]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("HTTPS, certificate valid until"), "{out}");
    let (code, out) = pollux(&["status", "--url", &da.url, "--token-file", read]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("UnknownIssuer"), "{out}");
    let other = tempdir();
    let (code, _) = pollux(&["certs", "--dir", other.path().to_str().unwrap(), "127.0.0.1"]);
    assert_eq!(code, Some(0));
    let other_ca = other.path().join("ca.pem");
    let (code, out) =
        pollux(&["status", "--url", &da.url, "--ca-file", other_ca.to_str().unwrap(), "--token-file", read]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("UnknownIssuer"), "{out}");
    // A token of the wrong class from the command line: the answer names the class.
    let (code, out) = pollux(&[
        "maintenance",
        "on",
        "--force",
        "--url",
        &da.url,
        "--ca-file",
        s.ca.to_str().unwrap(),
        "--token-file",
        s.ingest.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("403") && out.contains("admin token"), "{out}");

    // An expired certificate: the server starts and says so in its log and status; clients
    // refuse it.
    let tls = s.ca.parent().unwrap();
    let (code, out) = pollux(&["certs", "--dir", tls.to_str().unwrap(), "--expired", "expired.test", "127.0.0.1"]);
    assert_eq!(code, Some(0), "{out}");
    let shared2 = tempdir();
    let config = shared2.path().join("expired.toml");
    std::fs::write(
        &config,
        format!("tls_cert = {:?}\ntls_key = {:?}\n", tls.join("expired.test.pem"), tls.join("expired.test.key")),
    )
    .unwrap();
    let expired = Aggregator::start(shared2.path(), &["--config", config.to_str().unwrap()], &[]);
    assert!(expired.log().contains("certificate expired at"), "{}", expired.log());
    let (code, out) = pollux(&["status", "--url", &expired.url, "--ca-file", s.ca.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.to_lowercase().contains("expired"), "{out}");
    let blind = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(ureq::tls::TlsConfig::builder().disable_verification(true).build())
            .http_status_as_error(false)
            .build(),
    );
    let status: Value =
        blind.get(&format!("{}/api/v1/status", expired.url)).call().unwrap().body_mut().read_json().unwrap();
    assert!(status["security"]["cert_error"].as_str().unwrap_or("").contains("expired"), "{status}");
    assert!(status["problems"].to_string().contains("certificate has expired"), "{status}");

    // Files that cannot serve stop the start with the key named (exit 64).
    // A FIFO where a file should be is refused without waiting for a writer.
    let fifo = shared2.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let garbage = shared2.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (toml, key) in [
        (format!("tls_cert = {garbage:?}\ntls_key = {:?}\n", tls.join("expired.test.key")), "tls_cert"),
        (
            format!("tls_cert = {:?}\ntls_key = {:?}\n", tls.join("127.0.0.1.pem"), tls.join("expired.test.key")),
            "tls_key",
        ),
        (format!("tls_cert = {:?}\n", tls.join("127.0.0.1.pem")), "tls_key"),
        (format!("ca_file = {garbage:?}\n"), "ca_file"),
        (format!("read_token_file = {:?}\n", shared2.path()), "read_token_file"),
        (format!("tls_cert = {fifo:?}\ntls_key = {:?}\n", tls.join("expired.test.key")), "tls_cert"),
        (format!("ingest_token_file = {fifo:?}\n"), "ingest_token_file"),
    ] {
        std::fs::write(&config, &toml).unwrap();
        let (code, out) = pollux(&[
            "aggregator",
            "--config",
            config.to_str().unwrap(),
            "--shared-dir",
            shared2.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, Some(64), "{toml}: {out}");
        assert!(out.contains(key), "{toml}: {out}");
    }
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    let s = secure();
    let shared = tempdir();
    // This test's own certificate for 127.0.0.1 (named rotate.test), from the harness's CA.
    let tls = s.ca.parent().unwrap();
    let make = || {
        let (code, out) = pollux(&["certs", "--dir", tls.to_str().unwrap(), "rotate.test", "127.0.0.1"]);
        assert_eq!(code, Some(0), "{out}");
    };
    make();
    let config = format!(
        "tls_cert = {:?}\ntls_key = {:?}\ningest_token_file = {:?}\nread_token_file = {:?}\n",
        tls.join("rotate.test.pem"),
        tls.join("rotate.test.key"),
        s.ingest,
        s.read
    );
    let config_file = shared.path().join("aggregator.toml");
    std::fs::write(&config_file, config).unwrap();
    let da = Aggregator::start(shared.path(), &["--config", config_file.to_str().unwrap()], &[]);
    da.wait_active();

    // Senders PUT DTOs over new and kept-alive connections; every answer must be 201.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(Vec::<String>::new())));
    let senders: Vec<_> = (0..3)
        .map(|t| {
            let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), da.url.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let dto = interface_dto(&format!("rot{t}.Interface.{n}"), week_base() + n * 300, 1, 2);
                    let (status, body) = put_json(&url, &dto);
                    if status != 201 {
                        failed.lock().unwrap().push(format!("{status} {body}"));
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    let served = || {
        let (_, out) = s_client(da.url.trim_start_matches("https://"), &[]);
        let start = out.find("-----BEGIN CERTIFICATE-----").expect("a certificate");
        let end = out.find("-----END CERTIFICATE-----").expect("a certificate end");
        out[start..end].to_owned()
    };
    let reloads = || da.log().matches("certificate reloaded").count();
    for round in 1..=4 {
        let before = sent.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(20), "requests flowing", || {
            (sent.load(Ordering::Relaxed) > before + 20).then_some(())
        });
        make(); // a new key and certificate, noticed by the file watch
        if round % 2 == 0 {
            da.signal("HUP"); // or reloaded at once on SIGHUP
        }
        wait_until(Duration::from_secs(20), "the new certificate served", || {
            let file = std::fs::read_to_string(tls.join("rotate.test.pem")).unwrap();
            (reloads() >= round && file.starts_with(&served())).then_some(())
        });
    }
    let before = sent.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(20), "requests flowing", || {
        (sent.load(Ordering::Relaxed) > before + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "{} of {} PUTs failed: {:?}", failed.len(), sent.load(Ordering::Relaxed), &failed[..]);
    assert!(sent.load(Ordering::Relaxed) > 100, "{} PUTs", sent.load(Ordering::Relaxed));
    let (_, status) = get(&format!("{}/api/v1/status", da.url));
    assert!(status["security"]["cert_reloads"].as_u64() >= Some(4), "{}", status["security"]);
    assert!(status["security"]["cert_error"].is_null(), "{}", status["security"]);

    // A bad file keeps the previous certificate serving, with the error in the status.
    let good = served();
    std::fs::write(tls.join("rotate.test.pem"), "garbage").unwrap();
    da.signal("HUP");
    wait_until(Duration::from_secs(20), "the bad certificate reported", || {
        let (_, status) = get(&format!("{}/api/v1/status", da.url));
        status["security"]["cert_error"].as_str().filter(|e| e.contains("keeps serving")).map(str::to_owned)
    });
    assert_eq!(served(), good);
    assert_eq!(put_json(&da.url, &interface_dto("after-bad", week_base(), 1, 1)).0, 201);
}

#[test]
fn tokens_never_appear_in_any_log_even_at_trace_level() {
    let s = secure();
    let shared = tempdir();
    let config = shared.path().join("aggregator.toml");
    std::fs::write(&config, s.aggregator_toml()).unwrap();
    let trace = [("RUST_LOG", "trace")];
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &trace);
    da.wait_active();
    let proxy = secured_proxy(shared.path(), &da.url, &trace);
    // A collector with one device (that never answers) still reports itself with its token.
    let inventory = shared.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        "[[device]]\nname = \"quiet\"\naddress = \"127.0.0.1\"\nport = 9\ncommunity = \"public\"\n",
    )
    .unwrap();
    let collector_config = shared.path().join("collector.toml");
    std::fs::write(
        &collector_config,
        format!(
            "id = \"dc1\"\naggregators = [{:?}]\ninventory = {inventory:?}\nspool_dir = {:?}\n\
             metrics_listen = \"127.0.0.1:0\"\ningest_token_file = {:?}\nca_file = {:?}\n",
            proxy.url,
            shared.path().join("spool"),
            s.ingest,
            s.ca
        ),
    )
    .unwrap();
    let collector =
        Aggregator::spawn(&["collector".into(), "--config".into(), collector_config.display().to_string()], &trace);
    wait_until(Duration::from_secs(30), "the collector's report", || {
        let (_, status) = get(&format!("{}/api/v1/status", proxy.url));
        (status["collectors"][0]["id"] == "dc1").then_some(())
    });
    assert_eq!(put_json(&proxy.url, &interface_dto("traced", week_base(), 1, 1)).0, 201);
    let (code, cli) = pollux(&[
        "maintenance",
        "off",
        "--url",
        &proxy.url,
        "--ca-file",
        s.ca.to_str().unwrap(),
        "--token-file",
        s.admin.to_str().unwrap(),
    ]);
    assert!(code.is_some(), "{cli}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !collector.log().contains("TRACE") {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (who, log) in [("aggregator", da.log()), ("proxy", proxy.log()), ("collector", collector.log()), ("cli", cli)] {
        assert!(log.contains("TRACE") || who == "cli", "{who} logged at trace level");
        // The HTTP client's byte dump would split a token over lines of 16 bytes.
        assert!(!log.contains("ureq_proto"), "the {who} logged the HTTP client's wire dump");
        for (class, path) in [("ingest", &s.ingest), ("admin", &s.admin), ("read", &s.read)] {
            assert!(!log.contains(&token(path)), "the {class} token is in the {who}'s log");
        }
    }
}

#[test]
fn notifications_go_over_https_to_receivers_the_ca_file_trusts_and_no_other() {
    let s = secure();
    let trusted = common::receiver::Receiver::start_tls(&s.cert, &s.key);
    // A receiver whose certificate comes from another CA: the notifier must refuse it.
    let other = tempdir();
    let (code, out) = pollux(&["certs", "--dir", other.path().to_str().unwrap(), "127.0.0.1"]);
    assert_eq!(code, Some(0), "{out}");
    let stranger =
        common::receiver::Receiver::start_tls(&other.path().join("127.0.0.1.pem"), &other.path().join("127.0.0.1.key"));
    let shared = tempdir();
    let notify = format!(
        "ca_file = {:?}\n[[notify.webhook]]\nurl = \"{}\"\n[[notify.webhook]]\nurl = \"{}\"\n",
        s.ca, trusted.url, stranger.url
    );
    let da = secured_aggregator(shared.path(), &notify);
    let rule = serde_json::json!({"name": "hot", "family": "Interface", "metric": "in_util", "op": ">", "value": 90,
                                  "for_polls": 1});
    let agent = trusting_agent();
    let created = agent
        .post(&format!("{}/api/v1/thresholds", da.url))
        .header("authorization", s.bearer(&s.admin))
        .header("content-type", "application/json")
        .send(rule.to_string())
        .unwrap();
    assert_eq!(created.status(), 201);
    let cycle = (unix_now() / 300 - 2) * 300;
    let dto = serde_json::json!({"id": "hot.1", "collector": "dc1", "family": "Interface", "cycle": cycle,
        "interval": 300, "records": [{"device": "r1", "item": "ge-0/0/0", "ts": cycle + 3, "values": {"in_util": 95.0}}]});
    assert_eq!(put_json(&da.url, &dto).0, 201);
    wait_until(Duration::from_secs(30), "the opening at the trusted receiver", || {
        trusted.notifications().iter().any(|(_, t)| t == "open").then_some(())
    });
    let error = wait_until(Duration::from_secs(30), "the untrusted receiver's error in the status", || {
        let (_, status) = get(&format!("{}/api/v1/status", da.url));
        let receivers = status["alerting"]["receivers"].as_array().cloned().unwrap_or_default();
        let failing = receivers.into_iter().find(|r| r["url"] == stranger.url.as_str())?;
        failing["last_error"].as_str().map(str::to_owned)
    });
    assert!(error.contains("UnknownIssuer") || error.contains("certificate"), "{error}");
    assert!(stranger.notifications().is_empty(), "nothing sent to a receiver the CA does not vouch for");
}

#[test]
fn tokens_are_replaced_on_sighup_without_a_restart() {
    let s = secure();
    let shared = tempdir();
    // This test's own token files: the harness's are shared with the other tests.
    let (admin, ingest) = (shared.path().join("admin.token"), shared.path().join("ingest.token"));
    std::fs::write(&admin, "admin-before-0123456789\n").unwrap();
    std::fs::write(&ingest, "ingest-before-0123456789\n").unwrap();
    let config = shared.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\nadmin_token_file = {admin:?}\ningest_token_file = {ingest:?}\n",
            s.cert, s.key
        ),
    )
    .unwrap();
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    let rules = format!("{}/api/v1/thresholds", da.url);
    let as_admin = |token: &str| call("post", &rules, Some(&format!("Bearer {token}")));
    assert_eq!(as_admin("admin-before-0123456789"), 400, "the old token passes (the empty rule is refused)");
    std::fs::write(&admin, "admin-after-0123456789\n").unwrap();
    da.signal("HUP");
    wait_until(Duration::from_secs(10), "the new admin token in force", || {
        (as_admin("admin-after-0123456789") == 400 && as_admin("admin-before-0123456789") == 401).then_some(())
    });
    // A file that does not load keeps the tokens in force.
    std::fs::write(&admin, "ingest-before-0123456789\n").unwrap();
    da.signal("HUP");
    wait_until(Duration::from_secs(10), "the refused reload logged", || {
        da.log().contains("the tokens in force stay").then_some(())
    });
    assert_eq!(as_admin("admin-after-0123456789"), 400);
    assert!(da.log().contains("holds the same token as ingest_token_file"), "{}", da.log());
    assert!(!da.log().contains("ingest-before-0123456789"), "a token in the log");
}

/// The operator guide's rotation of the ingest token, with a real collector polling simulated devices:
/// the aggregator takes the new token first (the collector's DTOs are refused and wait in its
/// spool), then the collector; every cycle polled in between is delivered, nothing is lost.
#[test]
fn an_ingest_token_rotation_loses_no_cycle() {
    let s = secure();
    let dir = tempdir();
    let (da_token, dc_token) = (dir.path().join("da-ingest.token"), dir.path().join("dc-ingest.token"));
    for f in [&da_token, &dc_token] {
        std::fs::write(f, "ingest-old-0123456789\n").unwrap();
    }
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let config = shared.join("aggregator.toml");
    std::fs::write(
        &config,
        format!("tls_cert = {:?}\ntls_key = {:?}\ningest_token_file = {da_token:?}\n", s.cert, s.key),
    )
    .unwrap();
    let da = Aggregator::start(&shared, &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    let inventory = dir.path().join("simulated.toml");
    let snmp_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _sim = common::snmp::simulator(snmp_port, 2, 2, 0, &[], &inventory);
    wait_until(Duration::from_secs(20), "the simulator's inventory", || inventory.exists().then_some(()));
    let ack_log = dir.path().join("acked.log");
    let collector_config = format!(
        "ca_file = {:?}\ningest_token_file = {dc_token:?}\ntls_cert = {:?}\ntls_key = {:?}\nack_log = {ack_log:?}\n\
         read_token_file = {:?}\n",
        s.ca, s.cert, s.key, s.read
    );
    let dc = common::snmp::collector(&dir.path().join("dc1"), &da.url, &inventory, "2s", &collector_config);
    // The collector's own listener: HTTPS, /metrics behind the read token, /health open.
    assert_eq!(call("get", &format!("{}/metrics", dc.url), None), 401);
    assert_eq!(call("get", &format!("{}/health", dc.url), None), 200);
    let acked = || std::fs::read_to_string(&ack_log).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>();
    wait_until(Duration::from_secs(30), "DTOs acknowledged with the old token", || (acked().len() >= 4).then_some(()));

    // The aggregator first: the collector's DTOs are refused and pile up in its spool.
    std::fs::write(&da_token, "ingest-new-0123456789\n").unwrap();
    da.signal("HUP");
    wait_until(Duration::from_secs(30), "DTOs waiting in the spool", || {
        (common::snmp::metric(&dc, "pollux_collector_spool_dtos") >= 8.0).then_some(())
    });
    let before = acked().len();
    // What waits in the spool now was refused: each must arrive once the collector has the token.
    let waiting: Vec<String> = std::fs::read_dir(dir.path().join("dc1/spool/outbox"))
        .unwrap()
        .filter_map(|batch| std::fs::read_dir(batch.ok()?.path()).ok())
        .flatten()
        .filter_map(|f| f.ok()?.file_name().to_str()?.strip_suffix(".pxd").map(str::to_owned))
        .collect();
    assert!(waiting.len() >= 8, "{waiting:?}");
    // Then the collector: the spool empties.
    std::fs::write(&dc_token, "ingest-new-0123456789\n").unwrap();
    dc.signal("HUP");
    wait_until(Duration::from_secs(60), "the spool to empty", || {
        (acked().len() > before + 4 && common::snmp::metric(&dc, "pollux_collector_spool_dtos") == 0.0).then_some(())
    });
    assert_eq!(common::snmp::metric(&dc, "pollux_collector_dtos_rejected_total"), 0.0, "no DTO set aside");
    // Every acknowledged DTO is loaded, the refused ones among them, and the cycles of each
    // family follow one another (unless the loaded machine made the collector skip one).
    let ids = acked();
    let missing: Vec<&String> = waiting.iter().filter(|w| !ids.contains(w)).collect();
    assert!(missing.is_empty(), "refused DTOs never acknowledged: {missing:?}");
    let skipped = common::snmp::metric(&dc, "pollux_collector_cycles_skipped_total");
    wait_until(Duration::from_secs(30), "every acknowledged DTO loaded", || {
        ids.iter().all(|id| get(&format!("{}/api/v1/dto/{id}", da.url)).1["state"] == "loaded").then_some(())
    });
    let mut cycles: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for id in &ids {
        let parts: Vec<&str> = id.split('.').collect();
        cycles.entry(parts[1].to_owned()).or_default().push(parts[2].parse().unwrap());
    }
    for (family, mut list) in cycles {
        list.sort();
        list.dedup();
        let contiguous = list.windows(2).all(|w| w[1] - w[0] == 2);
        assert!(contiguous || skipped > 0.0, "{family}: a cycle is missing in {list:?} and none was skipped");
    }
}
