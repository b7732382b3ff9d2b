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
