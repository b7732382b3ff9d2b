//! A real browser for the portal tests and benchmark: headless Chromium (Debian's `chromium`),
//! driven over the DevTools protocol on a WebSocket. It records every JavaScript exception and
//! console error, so a test can assert there were none. Self-contained (the benchmark includes
//! this file too).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium in a process group of its own, killed if the thread that started it dies.
fn chromium() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--", CHROMIUM]);
    cmd.process_group(0);
    cmd
}

fn get_json(url: &str) -> Option<Value> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build(),
    );
    agent.get(url).call().ok()?.body_mut().read_json().ok()
}

pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    next_id: u64,
    /// JavaScript exceptions and console errors seen so far.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, three tries: it has been seen to exit at start once in a while here.
    pub fn start() -> Browser {
        let mut last = String::new();
        for _ in 0..3 {
            match Browser::try_start() {
                Ok(browser) => return browser,
                Err(e) => last = e,
            }
        }
        panic!("{last}")
    }

    /// Starts Chromium; an error says why it did not come up.
    pub fn try_start() -> Result<Browser, String> {
        if !std::path::Path::new(CHROMIUM).exists() {
            return Err(format!("{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut child = chromium()
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--remote-debugging-port=0", "--window-size=1280,1000"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let Ok(browser_url) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            return Err(format!("chromium exited or gave no DevTools address: {:?}", child.wait()));
        };
        let port = browser_url.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_owned();
        // The page target's own socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        let page_url = loop {
            let found = get_json(&format!("http://127.0.0.1:{port}/json/list")).and_then(|list| {
                list.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            match found {
                Some(url) => break url,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                None => panic!("chromium shows no page target"),
            }
        };
        let address = page_url.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
        let stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (socket, _) = tungstenite::client(page_url.as_str(), stream).expect("DevTools WebSocket");
        let mut browser = Browser { child, socket, next_id: 0, errors: Vec::new(), _profile: profile };
        browser.call("Runtime.enable", json!({}));
        browser.call("Page.enable", json!({}));
        Ok(browser)
    }

    /// Sends a command and returns its result, noting the events that arrive meanwhile.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).unwrap();
        loop {
            let message = self.socket.read().expect("DevTools message");
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value["error"].is_null(), "{method}: {}", value["error"]);
                return value["result"].clone();
            }
            self.note(&value);
        }
    }

    fn note(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                self.errors.push(event["params"]["exceptionDetails"].to_string());
            }
            Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => {
                self.errors.push(event["params"]["args"].to_string());
            }
            _ => {}
        }
    }

    /// Opens `url` and waits until the page has loaded.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval("document.readyState") != "complete" {
            assert!(Instant::now() < deadline, "{url} did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Evaluates a JavaScript expression in the page; its value as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PNG of `url` as the browser draws it, written to `path` (Chromium's own screenshot mode).
pub fn screenshot(url: &str, path: &std::path::Path) {
    let profile = tempfile::tempdir().unwrap();
    let status = chromium()
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(["--window-size=1280,900", "--virtual-time-budget=3000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("chromium --screenshot");
    assert!(status.success() && path.exists(), "no screenshot of {url}");
}
