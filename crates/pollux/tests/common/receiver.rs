//! A webhook receiver for the notification tests: an HTTP/1.1 server on loopback (plain, or
//! HTTPS with a given certificate) that answers 200 to every POST and keeps each JSON body.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Receiver {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    /// While set, every POST is answered 503 and its body not kept.
    pub refusing: Arc<AtomicBool>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_with(None, String::new())
    }

    /// One that answers every request 200 with `answer` as its JSON body.
    pub fn start_answering(answer: Value) -> Receiver {
        Receiver::start_with(None, answer.to_string())
    }

    /// Over HTTPS with the PEM certificate and key given.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Receiver::start_with(Some(Arc::new(config)), String::new())
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>, answer: String) -> Receiver {
        let answer = Arc::new(answer);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let (sink, refuse) = (bodies.clone(), refusing.clone());
        // The thread ends with the test process; it holds no child process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (sink, refuse, tls, answer) = (sink.clone(), refuse.clone(), tls.clone(), answer.clone());
                std::thread::spawn(move || match tls {
                    None => serve(stream, &sink, &refuse, &answer),
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(config).unwrap();
                        serve(rustls::StreamOwned::new(connection, stream), &sink, &refuse, &answer)
                    }
                });
            }
        });
        Receiver { url, bodies, refusing }
    }

    /// Every notification received: `(event_id, transition)`.
    pub fn notifications(&self) -> Vec<(i64, String)> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| b["notifications"].as_array().cloned().unwrap_or_default())
            .map(|n| (n["event_id"].as_i64().unwrap_or(-1), n["transition"].as_str().unwrap_or("").to_owned()))
            .collect()
    }
}

/// A server on loopback that answers every request (read whole first) with `302 Found` to
/// `to`; returns its base URL. It runs until the test process ends.
pub fn redirecting_to(to: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            if read_request(&mut reader).is_some() {
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        }
    });
    url
}

/// One HTTP/1.1 request from `reader`: its request line and its body (by Content-Length);
/// `None` once the client has gone.
pub fn read_request(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((line.trim_end().to_owned(), body))
}

fn serve(stream: impl Read + Write, sink: &Mutex<Vec<Value>>, refusing: &AtomicBool, answer: &str) {
    let mut reader = BufReader::new(stream);
    loop {
        let Some((_, body)) = read_request(&mut reader) else { return };
        let status = if refusing.load(Ordering::SeqCst) {
            "503 Service Unavailable"
        } else {
            sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            "200 OK"
        };
        let out = reader.get_mut();
        let head =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", answer.len());
        if out
            .write_all(head.as_bytes())
            .and_then(|()| out.write_all(answer.as_bytes()))
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}
