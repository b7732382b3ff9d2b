//! A webhook receiver for the notification tests: a plain HTTP/1.1 server on loopback that
//! answers 200 to every POST and keeps each JSON body.

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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let (sink, refuse) = (bodies.clone(), refusing.clone());
        // The thread ends with the test process; it holds no child process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (sink, refuse) = (sink.clone(), refuse.clone());
                std::thread::spawn(move || serve(stream, &sink, &refuse));
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

fn serve(stream: std::net::TcpStream, sink: &Mutex<Vec<Value>>, refusing: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
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
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if refusing.load(Ordering::SeqCst) {
            "503 Service Unavailable"
        } else {
            sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            "200 OK"
        };
        if write!(out, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}
