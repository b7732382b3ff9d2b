//! The proxy against the real binary: what the active answers reaches the client unchanged,
//! however large the body it refused, and the proxy keeps connections as its clients ask.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Bigger than axum's buffer for `Bytes` bodies (2 MiB), than the aggregator's `max_body_bytes`
/// in [`with_proxy`], and than what the socket buffers of both ends hold: a server that answers
/// without reading it has unread bytes when it closes.
const BIG: usize = 3 << 20;
const TOKEN: &str = "s3cret";

/// An aggregator (`max_body_bytes` 1 MiB, an ingest token) and a proxy in front of it, both
/// ready; the shared directory must outlive them.
fn with_proxy() -> (tempfile::TempDir, Aggregator, Aggregator) {
    let shared = tempdir();
    let token = shared.path().join("ingest.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = shared.path().join("agg.toml");
    std::fs::write(&config, format!("ingest_token_file = {token:?}\nmax_body_bytes = {}\n", 1 << 20)).unwrap();
    let da = Aggregator::start(shared.path(), &["--config", config.to_str().unwrap()], &[]);
    da.wait_active();
    let proxy = start_proxy(&da.url);
    wait_until(Duration::from_secs(30), "the proxy to route to the active", || {
        (get(&format!("{}/health/active", proxy.url)).0 == 200).then_some(())
    });
    (shared, da, proxy)
}

fn start_proxy(aggregator: &str) -> Aggregator {
    Aggregator::spawn(&["proxy", "--listen", "127.0.0.1:0", "--aggregator", aggregator].map(String::from), &[])
}

/// One answer as a client sees it; status 0 (and the error as `body`) when the connection
/// failed instead.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends the whole body, then reads the answer (as a collector does).
fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build(),
    );
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match agent.run(request.body(body.to_vec()).unwrap()) {
        Ok(mut r) => Answer {
            status: r.status().as_u16(),
            content_type: r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned(),
            body: r.body_mut().read_to_string().unwrap_or_default(),
        },
        Err(e) => Answer { status: 0, content_type: String::new(), body: e.to_string() },
    }
}

/// Everything the active refuses with a 4xx reaches the client through the proxy as the active
/// said it (status, content type, JSON body), small or large body alike: a collector must see
/// the verdict on its DTO, not a 503 that makes it retry forever. The active answers most of
/// these before it has read the body (401, 404, 415, a buffer limit).
#[test]
fn the_actives_4xx_reach_the_client_through_the_proxy_unchanged() {
    let (_shared, da, proxy) = with_proxy();
    let bearer = format!("Bearer {TOKEN}");
    let json_ct = ("content-type", "application/json");
    let auth = ("authorization", bearer.as_str());
    let big = vec![b'x'; BIG];
    let cycle = unix_now() / 300 * 300 - 300;
    let first = interface_dto("dup", cycle, 1, 1);
    assert_eq!(
        send("PUT", &format!("{}/api/v1/dto/dup", da.url), &[json_ct, auth], first.to_string().as_bytes()).status,
        201
    );
    let other = interface_dto("dup", cycle, 1, 2).to_string();
    // (what, method, path, headers, body, status, a part of the error)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        ("a malformed DTO", "PUT", "/api/v1/dto/bad", vec![json_ct, auth], b"{\"id\": \"bad\", ", 400, ""),
        ("a body over max_body_bytes", "PUT", "/api/v1/dto/big", vec![json_ct, auth], &big, 413, "max_body_bytes"),
        (
            "a wrong content type",
            "PUT",
            "/api/v1/dto/t",
            vec![("content-type", "text/plain"), auth],
            &big,
            415,
            "content type",
        ),
        ("a wrong token", "PUT", "/api/v1/dto/w", vec![json_ct, ("authorization", "Bearer wrong")], &big, 401, ""),
        ("no such endpoint", "PUT", "/api/v1/nothing", vec![json_ct], &big, 404, "no such endpoint"),
        ("a body over axum's buffer", "POST", "/api/v1/thresholds", vec![json_ct], &big, 413, "2097152"),
        ("a reused id, other content", "PUT", "/api/v1/dto/dup", vec![json_ct, auth], other.as_bytes(), 409, "dup"),
    ];
    let mut wrong = Vec::new();
    for (what, method, path, headers, body, status, says) in &cases {
        // Each several times: an early answer and the reset of a connection closed with the
        // body unread race each other.
        for attempt in 0..4 {
            let direct = send(method, &format!("{}{path}", da.url), headers, body);
            let proxied = send(method, &format!("{}{path}", proxy.url), headers, body);
            for (via, answer) in [("direct", &direct), ("through the proxy", &proxied)] {
                let error = answer.json()["error"].as_str().unwrap_or_default().to_owned();
                if answer.status != *status || answer.content_type != "application/json" || !error.contains(says) {
                    wrong.push(format!("{what} (attempt {attempt}) {via}: {answer:?}"));
                }
            }
            if direct.status == *status && proxied != direct {
                wrong.push(format!("{what} (attempt {attempt}): the proxy changed {direct:?} into {proxied:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "expected as the active answered:\n{}\nproxy log:\n{}", wrong.join("\n"), proxy.log());
}

/// A body over what axum buffers for an endpoint (2 MiB) is refused with a JSON 413 naming the
/// limit, like every other refusal, not axum's plain text.
#[test]
fn a_body_over_the_buffer_limit_is_a_json_413() {
    let shared = tempdir();
    let da = Aggregator::start(shared.path(), &[], &[]);
    da.wait_active();
    let body = vec![b' '; (2 << 20) + 1];
    let mut wrong = Vec::new();
    for (method, path) in [("PUT", "/api/v1/collectors/c1"), ("POST", "/api/v1/thresholds")] {
        let answer = send(method, &format!("{}{path}", da.url), &[("content-type", "application/json")], &body);
        let error = answer.json()["error"].as_str().unwrap_or_default().to_owned();
        if answer.status != 413 || answer.content_type != "application/json" || !error.contains("2097152") {
            wrong.push(format!("{method} {path}: {answer:?}"));
        }
    }
    assert!(wrong.is_empty(), "expected a JSON 413 naming the limit:\n{}", wrong.join("\n"));
}

/// The proxy's own answer given before a body is read (no active aggregator: 503 with
/// Retry-After) reaches a client that sends its whole body first, rather than a reset.
#[test]
fn the_proxys_own_early_answer_is_not_lost_to_a_reset() {
    let proxy = start_proxy("http://127.0.0.1:9");
    let big = vec![b'x'; BIG];
    for attempt in 0..4 {
        let answer = send("PUT", &format!("{}/api/v1/dto/x", proxy.url), &[("content-type", "application/json")], &big);
        assert_eq!(answer.status, 503, "attempt {attempt}: {answer:?}");
        assert_eq!(answer.content_type, "application/json", "{answer:?}");
        assert!(answer.json()["error"].as_str().is_some_and(|e| e.contains("retry")), "{answer:?}");
    }
}

/// Reads one HTTP answer (head and a Content-Length body) from `s`; `None` when the connection
/// closed first. The read timeout set on `s` is the deadline.
fn read_answer(s: &mut TcpStream) -> Option<(String, String)> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .map(|(_, v)| v.trim().parse().unwrap())
                .expect("a Content-Length");
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Some((head, body));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer: {e} (read so far: {:?})", String::from_utf8_lossy(&data)),
        }
    }
}

/// An HTTP/1.0 client asking for keep-alive (`ab -k`) keeps its connection through the proxy
/// for forwarded requests as for the proxy's own; one that does not ask is closed after its
/// answer.
#[test]
fn http_1_0_keep_alive_is_honoured_through_the_proxy() {
    let (_shared, _da, proxy) = with_proxy();
    let addr = proxy.url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    for (i, path) in ["/health", "/health", "/proxy/status", "/health"].iter().enumerate() {
        s.write_all(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes()).unwrap();
        let answer = read_answer(&mut s);
        let Some((head, body)) = answer else {
            panic!("request {i} ({path}): the proxy closed the kept-alive connection after {:?}", started.elapsed())
        };
        assert!(head.starts_with("HTTP/1.0 200"), "request {i} ({path}): {head}");
        assert!(head.to_ascii_lowercase().contains("connection: keep-alive"), "request {i} ({path}): {head}");
        assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
    }
    // Without keep-alive, HTTP/1.0 closes after the answer.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let (head, _) = read_answer(&mut s).expect("an answer");
    assert!(head.starts_with("HTTP/1.0 200") && !head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "{:?}", String::from_utf8_lossy(&rest));
}
