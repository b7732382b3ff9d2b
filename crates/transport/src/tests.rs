//! The server against clients that stall, drip, flood and never read, on loopback with short
//! limits. Each test waits for a condition with a deadline.

use super::*;
use http_body_util::{BodyExt, Full};
use std::io::{Read, Write};
use std::net::TcpStream;

type Reply = Response<Full<bytes::Bytes>>;

/// Starts a server whose handler reads the whole body and answers its length (or 408).
async fn start(limits: ServerLimits) -> (std::net::SocketAddr, Arc<ServerStats>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ServerStats::default());
    let stop = CancellationToken::new();
    let service = hyper::service::service_fn(|req: Request<TimedBody>| async move {
        if req.uri().path() == "/early" {
            // Answers without reading the body (a 415, a 401, a 404 do).
            let mut r = Response::new(Full::from("refused"));
            *r.status_mut() = hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Ok::<_, std::convert::Infallible>(r);
        }
        if req.uri().path() == "/big" {
            // More than the socket buffers of both ends hold: a client that does not read
            // leaves the server's writes stuck.
            return Ok::<_, std::convert::Infallible>(Response::new(Full::from(vec![b'x'; 64 << 20])));
        }
        let reply: Reply = match req.into_body().collect().await {
            Ok(body) => Response::new(Full::from(body.to_bytes().len().to_string())),
            Err(e) => {
                let mut r = Response::new(Full::from(e.to_string()));
                *r.status_mut() = hyper::StatusCode::REQUEST_TIMEOUT;
                r
            }
        };
        Ok::<_, std::convert::Infallible>(reply)
    });
    tokio::spawn(serve(listener, None, service, limits, stats.clone(), stop.clone()));
    (addr, stats, stop)
}

fn short() -> ServerLimits {
    ServerLimits {
        max_connections: 8,
        idle_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(600),
    }
}

/// Reads until the server closes; returns what it said and how long that took.
fn read_to_close(mut s: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_half_sent_heads_are_closed() {
    let (addr, stats, _stop) = start(short()).await;
    let (said, took) = blocking(move || read_to_close(TcpStream::connect(addr).unwrap())).await;
    assert!(said.is_empty() && took < Duration::from_secs(2), "idle: {said:?} after {took:?}");
    let (_, took) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-").unwrap();
        read_to_close(s)
    })
    .await;
    assert!(took < Duration::from_secs(2), "half a head held the connection for {took:?}");
    // A kept-alive connection that answered once is closed after idle_timeout too.
    let (said, took) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        read_to_close(s)
    })
    .await;
    assert!(said.starts_with("HTTP/1.1 200") && took < Duration::from_secs(2), "{said:?} {took:?}");
    // The client sees the close a moment before the server's task has counted it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats.open.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "connections still counted open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answer_is_closed() {
    let (addr, stats, _stop) = start(short()).await;
    let client = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        s // held open, never read
    })
    .await;
    // Accepted is counted before the connection's task counts it open: wait for the timeout
    // itself, then for the connection to be gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.timed_out.load(Ordering::Relaxed) == 0 || stats.open.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "the connection of a client that never reads stayed open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_dripping_body_is_cut_at_body_timeout() {
    let (addr, _stats, _stop) = start(short()).await;
    let (said, took) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc").unwrap();
        // Drip a byte every 100 ms: never idle, never done.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(b"x").is_err() {
                break;
            }
        }
        read_to_close(s)
    })
    .await;
    assert!(said.starts_with("HTTP/1.1 408") && said.contains("body_timeout"), "{said:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_the_cap_frees() {
    let limits = ServerLimits { max_connections: 3, idle_timeout: Duration::from_secs(30), ..short() };
    let (addr, stats, _stop) = start(limits).await;
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.open.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "three connections never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (said, took) = blocking(move || read_to_close(TcpStream::connect(addr).unwrap())).await;
    assert!(said.is_empty() && took < Duration::from_secs(1), "a fourth was served: {said:?} {took:?}");
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    drop(held);
    let said = blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
            let (said, _) = read_to_close(s);
            if said.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
                return said;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_with_idle_connections_open() {
    let limits = ServerLimits { idle_timeout: Duration::from_secs(60), ..short() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let service = hyper::service::service_fn(|_: Request<TimedBody>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::<bytes::Bytes>::from("ok")))
    });
    let server = tokio::spawn(serve(listener, None, service, limits, Arc::default(), stop.clone()));
    let _idle = TcpStream::connect(addr).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), server).await.unwrap().unwrap();
}

#[test]
fn the_cap_fits_the_open_file_limit() {
    let limits = ServerLimits::default().fitted(1024);
    assert_eq!(limits.max_connections as u64, 1024 - RESERVED_FILES);
    assert_eq!(ServerLimits::default().fitted(1 << 20).max_connections, DEFAULT_MAX_CONNECTIONS);
    assert!(raise_open_file_limit() >= 1024);
}

/// Reads one answer (head and a Content-Length body) from `s`, skipping `100 Continue`; what was
/// read (with "<EOF>" appended if the connection closed first).
fn read_answer(s: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        let start = if text.starts_with("HTTP/1.1 100") { text.find("\r\n\r\n").map_or(0, |e| e + 4) } else { 0 };
        if let Some(end) = text[start..].find("\r\n\r\n").map(|e| start + e) {
            let length: usize = text[start..end]
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                .map_or(0, |(_, v)| v.trim().parse().unwrap());
            if data.len() >= end + 4 + length {
                return text;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return text + "<EOF>",
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer: {e} (read so far: {text:?})"),
        }
    }
}

/// A handler that answers before reading the body must not have its answer destroyed by the
/// reset of a connection closed with bytes unread: a client that sends its whole body first
/// reads the answer, and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_a_client_that_sends_its_whole_body_first() {
    let limits =
        ServerLimits { body_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(10), ..short() };
    let (addr, _stats, _stop) = start(limits).await;
    let said = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = vec![b'x'; 8 << 20];
        let mut said = Vec::new();
        for _ in 0..2 {
            s.write_all(format!("PUT /early HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes())
                .unwrap();
            s.write_all(&body).unwrap();
            said.push(read_answer(&mut s));
        }
        s.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        said.push(read_answer(&mut s));
        said
    })
    .await;
    assert!(said[0].starts_with("HTTP/1.1 415") && said[0].ends_with("refused"), "{said:?}");
    assert!(said[1].starts_with("HTTP/1.1 415") && said[1].ends_with("refused"), "{said:?}");
    assert!(said[2].starts_with("HTTP/1.1 200") && said[2].ends_with("\r\n\r\n3"), "{said:?}");
}

/// A client that waits for `100 Continue` and gets the final answer instead has not sent its
/// body and may never send it: the body is not waited for (the connection closes after the
/// answer, as the client must then do too), and no `100 Continue` is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_expect_continue_is_final() {
    let limits =
        ServerLimits { body_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(10), ..short() };
    let (addr, _stats, _stop) = start(limits).await;
    let (said, took) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"PUT /early HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n").unwrap();
        read_to_close(s)
    })
    .await;
    assert!(said.starts_with("HTTP/1.1 415") && !said.contains("100 Continue"), "{said:?}");
    assert!(took < Duration::from_secs(3), "the connection waited {took:?} for a body never sent");
}

/// The rest of a body left unread is drained within body_timeout at most: a client that stalls
/// after the answer is closed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_body_that_stalls_is_cut_at_body_timeout() {
    let limits = ServerLimits { idle_timeout: Duration::from_secs(30), ..short() };
    let (addr, stats, _stop) = start(limits).await;
    let (said, took) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"PUT /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc").unwrap();
        read_to_close(s)
    })
    .await;
    assert!(said.starts_with("HTTP/1.1 415") && took < Duration::from_secs(3), "{said:?} after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats.open.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "the connection is still counted open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// axum's own plain-text refusals are JSON from [`serve_router`], the 413 naming the limit; a
/// handler's own text answer is left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_refusals_are_json() {
    use axum::routing::{get, put};
    let router = axum::Router::new()
        .route("/bytes", put(|body: bytes::Bytes| async move { body.len().to_string() }))
        .route("/n/{n}", get(|axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() }))
        .route("/text", get(|| async { (hyper::StatusCode::UNAUTHORIZED, "send a token\n") }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve_router(listener, None, router, short(), Arc::default(), stop.clone()));
    let ask = move |head: String, body: Vec<u8>| {
        blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
            read_answer(&mut s)
        })
    };
    let big = vec![b'x'; ROUTER_BODY_LIMIT + 1];
    let said = ask(format!("PUT /bytes HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", big.len()), big).await;
    assert!(said.starts_with("HTTP/1.1 413") && said.contains("content-type: application/json"), "{said}");
    let body: serde_json::Value = serde_json::from_str(said.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains(&ROUTER_BODY_LIMIT.to_string()), "{said}");
    let said = ask("PUT /bytes HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".into(), Vec::new()).await;
    assert!(said.starts_with("HTTP/1.1 200") && said.ends_with("\r\n\r\n3"), "{said}");
    let said = ask("GET /n/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), Vec::new()).await;
    assert!(said.starts_with("HTTP/1.1 400") && said.contains("content-type: application/json"), "{said}");
    assert!(said.contains("{\"error\":\""), "{said}");
    let said = ask("GET /text HTTP/1.1\r\nHost: a\r\n\r\n".into(), Vec::new()).await;
    assert!(
        said.starts_with("HTTP/1.1 401") && said.contains("text/plain") && said.ends_with("send a token\n"),
        "{said}"
    );
    stop.cancel();
}
