//! `pollux init`, black-box: the installer's prompts driven through stdin with good and bad
//! answers, flags only, `--upgrade`, and the second aggregator's answers checked against the
//! first's. What it writes must start a working aggregator and proxy.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn init(args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(BIN)
        .arg("init")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn prompts_retry_bad_answers_and_write_a_configuration_that_runs() {
    let dir = tempdir();
    let (etc, shared) = (dir.path().join("etc"), dir.path().join("shared"));
    std::fs::create_dir(&shared).unwrap();
    let port = free_port("127.0.0.5");
    // Each bad answer is followed by a good one.
    let answers = [
        "3",
        "2",
        "../da1",
        "da1",
        "",
        "127.0.0.1",
        "70000",
        &port.to_string(),
        "10.255.255.1",
        "127.0.0.5",
        "relative/dir",
        "/nonexistent/shared",
        &path(&shared),
        "1ms",
        "2s",
        "1s",
        "6s",
        "3",
        "",
    ]
    .join("\n")
        + "\n";
    let (code, out) = init(&["--role", "aggregator", "--config-dir", &path(&etc)], &answers);
    assert_eq!(code, 0, "{out}");
    for reason in [
        "\"3\" is not 1 or 2",
        "not starting with '.'",
        "\"\" is not a host name",
        "\"70000\" is not a port",
        "10.255.255.1 is not an address of this host",
        "is not an absolute path",
        "cannot be read",
        "below the safe minimum of 1s",
        "shorter than failwait",
        "Enable HTTPS with tokens",
    ] {
        assert!(out.contains(reason), "the reason {reason:?} is shown:\n{out}");
    }
    assert!(out.contains(&format!("TCP {port} inbound")), "the ports to open:\n{out}");
    let unit = std::fs::read_to_string(etc.join("pollux-aggregator.service")).unwrap();
    assert!(unit.contains("aggregator --config") && unit.contains("[Install]"), "{unit}");
    // The configuration starts a working aggregator with the answers given.
    let da = Aggregator::spawn(&["aggregator".into(), "--config".into(), path(&etc.join("aggregator.toml"))], &[]);
    assert_eq!(da.url, format!("http://127.0.0.5:{port}"));
    da.wait_active();
    let (_, health) = get(&format!("{}/health", da.url));
    assert_eq!(health["node"], "da1");
    let (_, status) = get(&format!("{}/api/v1/status", da.url));
    assert_eq!((status["failwait"].as_str(), status["startwait"].as_str()), (Some("2s"), Some("6s")));
}

#[test]
fn upgrade_asks_only_what_the_saved_answers_lack() {
    let dir = tempdir();
    let (etc, shared) = (dir.path().join("etc"), dir.path().join("shared"));
    std::fs::create_dir(&shared).unwrap();
    let flags = [
        "--role",
        "aggregator",
        "--config-dir",
        &path(&etc),
        "--fault-tolerance",
        "2",
        "--node-id",
        "da1",
        "--proxy-host",
        "127.0.0.1",
        "--bind-address",
        "127.0.0.1",
        "--shared-dir",
        &path(&shared),
        "--yes",
    ];
    let (code, out) = init(&flags, "");
    assert_eq!(code, 0, "{out}");
    let config = std::fs::read_to_string(etc.join("aggregator.toml")).unwrap();
    assert!(config.contains("failwait = \"5m\"") && config.contains("listen = \"127.0.0.1:8581\""), "{config}");
    // Nothing on stdin and no flags: an upgrade asks nothing and writes the same configuration.
    let upgrade = ["--role", "aggregator", "--config-dir", &path(&etc), "--upgrade"];
    let (code, out) = init(&upgrade, "");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("failwait:") && !out.contains("[8581]"), "no question asked:\n{out}");
    assert_eq!(std::fs::read_to_string(etc.join("aggregator.toml")).unwrap(), config);
    // A question the saved answers lack (one a newer release added) is the only one asked.
    let saved = std::fs::read_to_string(etc.join("init-answers.toml")).unwrap();
    let without: String = saved.lines().filter(|l| !l.starts_with("startwait")).map(|l| format!("{l}\n")).collect();
    std::fs::write(etc.join("init-answers.toml"), without).unwrap();
    let (code, out) = init(&upgrade, "50m\n");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("]: ").count(), 1, "one question:\n{out}");
    assert!(out.contains("startwait:"), "{out}");
    assert!(std::fs::read_to_string(etc.join("aggregator.toml")).unwrap().contains("startwait = \"50m\""));
    // An upgrade with no saved answers says what to do.
    let (code, out) = init(&["--role", "proxy", "--config-dir", &path(&dir.path().join("none")), "--upgrade"], "");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("run init without --upgrade first"), "{out}");
}

#[test]
fn the_second_aggregator_must_match_the_first() {
    let dir = tempdir();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let (a, b, shared) = (path(&dir.path().join("a")), path(&dir.path().join("b")), path(&shared));
    let node = |config_dir: &str, id: &str| -> Vec<String> {
        [
            "--role",
            "aggregator",
            "--fault-tolerance",
            "2",
            "--proxy-host",
            "proxy.example.net",
            "--yes",
            "--config-dir",
            config_dir,
            "--node-id",
            id,
            "--shared-dir",
            &shared,
            "--bind-address",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let first = node(&a, "da1");
    assert_eq!(init(&first.iter().map(String::as_str).collect::<Vec<_>>(), "").0, 0);
    let second = node(&b, "da2");
    let mut mismatched: Vec<&str> = second.iter().map(String::as_str).collect();
    mismatched.extend(["--failwait", "2m", "--port", "9000"]);
    let (code, out) = init(&mismatched, "");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("failwait: 2m here, 5m on da1") && out.contains("port: 9000 here, 8581 on da1"), "{out}");
    assert!(!dir.path().join("b/aggregator.toml").exists(), "nothing written on a refusal");
    let (code, out) = init(&second.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert_eq!(code, 0, "matching answers are accepted: {out}");
}

#[test]
fn flags_alone_configure_a_collector_and_a_proxy() {
    let dir = tempdir();
    let etc = path(&dir.path().join("etc"));
    let collector = [
        "--role",
        "collector",
        "--config-dir",
        &etc,
        "--node-id",
        "dc1",
        "--fault-tolerance",
        "2",
        "--proxy-host",
        "127.0.0.1",
        "--failover-aggregator",
        "http://127.0.0.3:8581",
        "--yes",
    ];
    let (code, out) = init(&collector, "");
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(dir.path().join("etc/collector.toml")).unwrap();
    assert!(text.contains(r#"aggregators = ["http://127.0.0.1:8581", "http://127.0.0.3:8581"]"#), "{text}");
    let (code, out) = init(&["--role", "collector", "--config-dir", &etc, "--aggregator", "ftp://x", "--yes"], "");
    assert_eq!(code, 64);
    assert!(out.contains("--aggregator") && out.contains("not an http://"), "{out}");
    let port = free_port("127.0.0.1");
    let proxy = [
        "--role",
        "proxy",
        "--config-dir",
        &etc,
        "--port",
        &port.to_string(),
        "--bind-address",
        "127.0.0.1",
        "--aggregator",
        "http://127.0.0.2:8581",
        "--failover-aggregator",
        "http://127.0.0.3:8581",
        "--yes",
    ];
    let (code, out) = init(&proxy, "");
    assert_eq!(code, 0, "{out}");
    let running = Aggregator::spawn(&["proxy".into(), "--config".into(), format!("{etc}/proxy.toml")], &[]);
    assert_eq!(running.url, format!("http://127.0.0.1:{port}"));
    let (_, status) = get(&format!("{}/proxy/status", running.url));
    assert_eq!(status["aggregators"].as_array().map(Vec::len), Some(2), "{status}");
}

#[test]
fn https_makes_certificates_and_tokens_that_serve() {
    let dir = tempdir();
    let (etc, shared) = (dir.path().join("etc"), dir.path().join("shared"));
    std::fs::create_dir(&shared).unwrap();
    let port = free_port("127.0.0.5");
    // An HTTPS aggregator on 127.0.0.5, configured in `dir`, answering with flags alone.
    let https_aggregator = |dir: &Path, node: &str| -> Vec<String> {
        let flags =
            ["--role", "aggregator", "--config-dir", &path(dir), "--node-id", node, "--bind-address", "127.0.0.5"];
        let more = ["--port", &port.to_string(), "--shared-dir", &path(&shared), "--https", "2", "--yes"];
        flags.iter().chain(more.iter()).map(|s| s.to_string()).collect()
    };
    let flags = https_aggregator(&etc, "da1");
    let (code, out) = init(&flags.iter().map(String::as_str).collect::<Vec<_>>(), "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("made a new CA") && out.contains("ingest.token"), "{out}");
    let config = std::fs::read_to_string(etc.join("aggregator.toml")).unwrap();
    for key in ["tls_cert", "tls_key", "ingest_token_file", "admin_token_file"] {
        assert!(config.contains(key), "{key} in\n{config}");
    }
    let da = Aggregator::spawn(&["aggregator".into(), "--config".into(), path(&etc.join("aggregator.toml"))], &[]);
    // The harness is not secured in this process: it names the URL as plain.
    assert_eq!(da.url, format!("http://127.0.0.5:{port}"));
    let url = format!("https://127.0.0.5:{port}");
    let ca = etc.join("tls/ca.pem");
    let status = Command::new(BIN)
        .args(["status", "--url", &url, "--ca-file", &path(&ca), "--token-file", &path(&etc.join("admin.token"))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("HTTPS, certificate valid until") && text.contains("open to anyone (no token): read"),
        "{text}"
    );

    // A collector host needs the CA and the ingest token copied from here, and says so.
    let collector_etc = dir.path().join("collector");
    let collector = [
        "--role",
        "collector",
        "--config-dir",
        &path(&collector_etc),
        "--node-id",
        "dc1",
        "--aggregator",
        &url,
        "--https",
        "2",
        "--yes",
    ];
    let (code, out) = init(&collector, "");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("copy ca.pem"), "{out}");
    std::fs::create_dir_all(collector_etc.join("tls")).unwrap();
    std::fs::copy(&ca, collector_etc.join("tls/ca.pem")).unwrap();
    std::fs::copy(etc.join("ingest.token"), collector_etc.join("ingest.token")).unwrap();
    let (code, out) = init(&collector, "");
    assert_eq!(code, 0, "{out}");
    let config = std::fs::read_to_string(collector_etc.join("collector.toml")).unwrap();
    assert!(config.contains("ca_file") && config.contains("ingest_token_file"), "{config}");
    // The second aggregator must be given the first one's CA and tokens before its init.
    let second = dir.path().join("da2");
    let da2 = https_aggregator(&second, "da2");
    let da2: Vec<&str> = da2.iter().map(String::as_str).collect();
    let (code, out) = init(&da2, "");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("tls_ca: not copied here yet") && out.contains("tokens: not copied here yet"), "{out}");
    std::fs::create_dir_all(second.join("tls")).unwrap();
    for f in ["tls/ca.pem", "tls/ca.key", "ingest.token", "admin.token"] {
        std::fs::copy(etc.join(f), second.join(f)).unwrap();
    }
    let (code, out) = init(&da2, "");
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("made a new CA"), "{out}");
    // A second host with the CA's certificate but not its key cannot make its certificate.
    let (code, out) = init(
        &[
            "--role",
            "proxy",
            "--config-dir",
            &path(&collector_etc),
            "--aggregator",
            &url,
            "--failover-aggregator",
            &url,
            "--bind-address",
            "127.0.0.1",
            "--https",
            "2",
            "--yes",
        ],
        "",
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("without its key"), "{out}");
}

/// `init --role collector --yes` asks nothing and works: the aggregator on this host by
/// default, an inventory template written and named; the collector then refuses to start on
/// the empty template, naming it (not a missing file in another directory). The unit names the
/// user who ran init and a binary path a service can run.
#[test]
fn a_collector_with_yes_alone_gets_an_inventory_template() {
    let dir = tempdir();
    let etc = dir.path().join("etc");
    let (code, out) = init(&["--role", "collector", "--yes", "--config-dir", &path(&etc)], "");
    assert_eq!(code, 0, "{out}");
    let inventory = etc.join("inventory.toml");
    assert!(out.contains(&format!("wrote {} (a template", inventory.display())), "{out}");
    let config = std::fs::read_to_string(etc.join("collector.toml")).unwrap();
    assert!(config.contains("aggregators = [\"http://127.0.0.1:8581\"]"), "{config}");
    assert!(config.contains(&format!("inventory = {:?}", inventory.display().to_string())), "{config}");
    let unit = std::fs::read_to_string(etc.join("pollux-collector.service")).unwrap();
    assert!(unit.contains("\nUser=") && unit.contains("ExecStart=\"/usr/local/bin/pollux\" collector"), "{unit}");
    let started =
        Command::new(BIN).args(["collector", "--config", &path(&etc.join("collector.toml"))]).output().unwrap();
    let err = String::from_utf8_lossy(&started.stderr);
    assert_eq!(started.status.code(), Some(64), "{err}");
    assert!(err.contains(&path(&inventory)) && err.contains("no [[device]]"), "{err}");
}

/// Answers cannot write lines of their own into the files init writes: a control character in
/// any answer, or a configuration directory a unit cannot name, is refused (64) and nothing is
/// written.
#[test]
fn answers_cannot_inject_lines() {
    let dir = tempdir();
    let evil = format!("{}/etc\"\nExecStartPre=/bin/touch {}/pwned", dir.path().display(), dir.path().display());
    let (code, out) = init(&["--role", "collector", "--yes", "--config-dir", &evil], "");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("--config-dir"), "{out}");
    let etc = dir.path().join("etc");
    let shared = format!("{}/shared\n[evil]", dir.path().display());
    let args = ["--role", "aggregator", "--yes", "--config-dir", &path(&etc), "--shared-dir", &shared];
    let (code, out) = init(&args, "");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("--shared-dir") && out.contains("control character"), "{out}");
    let (code, out) =
        init(&["--role", "collector", "--yes", "--config-dir", &path(&etc), "--aggregator", "http://a\r"], "");
    assert_eq!(code, 64, "{out}");
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written.len(), 0, "nothing written: {written:?}");
}

fn certs(dir: &Path, names: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["certs", "--dir", &path(dir)]).args(names).output().unwrap()
}

fn verifies(ca: &Path, cert: &Path) -> bool {
    let out = Command::new("openssl").args(["verify", "-CAfile", &path(ca), &path(cert)]).output().unwrap();
    out.status.success()
}

/// `pollux certs` run twice at once on one directory makes one CA, and every certificate
/// verifies against it (two CAs made at once left 2-3 of 4 unverifiable); a ca.key that is not
/// ca.pem's is refused instead of signing certificates that verify against nothing.
#[test]
fn certs_make_one_ca_and_refuse_a_foreign_key() {
    let dir = tempdir();
    let tls = dir.path().join("tls");
    let runs: Vec<_> = ["a.test", "b.test", "c.test", "d.test"]
        .into_iter()
        .map(|name| {
            let tls = tls.clone();
            std::thread::spawn(move || certs(&tls, &[name]))
        })
        .collect();
    for run in runs {
        let out = run.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for name in ["a.test", "b.test", "c.test", "d.test"] {
        assert!(verifies(&tls.join("ca.pem"), &tls.join(format!("{name}.pem"))), "{name} does not verify");
    }
    let other = dir.path().join("other");
    assert!(certs(&other, &["x.test"]).status.success());
    std::fs::copy(other.join("ca.key"), tls.join("ca.key")).unwrap();
    let out = certs(&tls, &["e.test"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "signed with a foreign key: {err}");
    assert!(err.contains("is not the key of"), "{err}");
    assert!(!tls.join("e.test.pem").exists());
}
