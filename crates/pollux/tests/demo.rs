//! `pollux demo`, black-box: started from an empty directory, it shows data through the proxy,
//! one active and one standby; SIGINT stops every process it started; a second start reuses
//! the data; `--chaos` for a bounded time loses nothing, also over HTTPS with tokens (`--tls`);
//! a port already taken is named.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEVICES: u16 = 10;

/// A port free on 127.0.0.1, .2 and .3 with the next one free on 127.0.0.1, and a block of UDP
/// ports for the simulated devices.
fn free_ports() -> (u16, u16) {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let snmp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tcp_free = ["127.0.0.2", "127.0.0.3"].iter().all(|h| TcpListener::bind((*h, port)).is_ok())
            && port < u16::MAX
            && TcpListener::bind(("127.0.0.1", port + 1)).is_ok();
        let udp_free = snmp.checked_add(DEVICES).is_some()
            && (0..DEVICES).all(|k| UdpSocket::bind(("127.0.0.1", snmp + k)).is_ok());
        if tcp_free && udp_free {
            return (port, snmp);
        }
    }
}

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: Vec<String>,
}

impl Demo {
    fn start(dir: &std::path::Path, port: u16, snmp: u16, extra: &[&str]) -> Demo {
        let mut child = harnessed(BIN)
            .args(["demo", "--dir", &dir.display().to_string(), "--port", &port.to_string()])
            .args(["--snmp-port", &snmp.to_string(), "--devices", &DEVICES.to_string(), "--interval", "2s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Demo { child, lines, out: Vec::new() }
    }

    /// Reads output until a line contains `text`; returns that line.
    fn until(&mut self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no {text:?} within {limit:?}; the demo printed:\n{}", self.out.join("\n")),
            }
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.out
            .iter()
            .flat_map(|l| l.split("pid ").skip(1).map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next().unwrap()))
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        self.wait(Duration::from_secs(15))
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let status = wait_until(limit, "the demo to exit", || self.child.try_wait().unwrap());
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.out.push(line);
        }
        status
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is gone for our purpose; /proc/<pid>/stat says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn devices(proxy: &str) -> usize {
    get(&format!("{proxy}/api/v1/devices")).1["devices"].as_array().map_or(0, Vec::len)
}

#[test]
fn the_demo_shows_data_stops_every_process_and_reuses_its_data() {
    let dir = tempdir();
    let (port, snmp) = free_ports();
    let proxy = format!("http://127.0.0.1:{port}");
    let mut demo = Demo::start(dir.path(), port, snmp, &[]);
    let started = Instant::now();
    demo.until("Ctrl-C stops every process", Duration::from_secs(90));
    let pids = demo.pids();
    assert_eq!(pids.len(), 4, "da1, da2, collector and simulator pids on the screen: {:?}", demo.out);
    wait_until(Duration::from_secs(60), "data through the proxy", || {
        (devices(&proxy) == DEVICES as usize).then_some(())
    });
    eprintln!("data through the proxy {:.1} s after the start", started.elapsed().as_secs_f64());
    let status = std::process::Command::new(BIN).args(["status", "--url", &proxy]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("da1 ") || l.starts_with("da2 ")).count(), 2, "{text}");
    assert!(text.contains(" active ") && text.contains(" standby "), "one active, one standby:\n{text}");

    let stopping = Instant::now();
    assert!(demo.interrupt().success(), "{:?}", demo.out);
    eprintln!("stopped {:.1} s after SIGINT", stopping.elapsed().as_secs_f64());
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} outlived the demo");
    }
    for host in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert!(TcpListener::bind((host, port)).is_ok(), "{host}:{port} still taken");
    }

    // Again on the same directory: the devices are there before a single new poll is loaded.
    let mut again = Demo::start(dir.path(), port, snmp, &[]);
    again.until("Ctrl-C stops every process", Duration::from_secs(90));
    assert_eq!(devices(&proxy), DEVICES as usize, "the repository of the first run is reused");
    assert!(again.interrupt().success());

    // A demo killed -9 has no chance to stop its children: they die with it all the same.
    let mut killed = Demo::start(dir.path(), port, snmp, &[]);
    killed.until("Ctrl-C stops every process", Duration::from_secs(90));
    let children = killed.pids();
    assert_eq!(children.len(), 4);
    let _ = killed.child.kill();
    let _ = killed.child.wait();
    wait_until(Duration::from_secs(10), "the children to die with the demo", || {
        children.iter().all(|pid| !alive(*pid)).then_some(())
    });
}

#[test]
fn chaos_for_a_bounded_time_loses_nothing() {
    let dir = tempdir();
    let (port, snmp) = free_ports();
    let mut demo = Demo::start(dir.path(), port, snmp, &["--chaos", "--chaos-interval", "6s", "--duration", "35s"]);
    demo.until("fault 1:", Duration::from_secs(90));
    let status = demo.wait(Duration::from_secs(150));
    let out = demo.out.join("\n");
    assert!(status.success(), "{out}");
    assert!(out.contains("is the active (epoch"), "a takeover was seen:\n{out}");
    let last = demo.out.iter().rev().find(|l| l.contains("DTOs acknowledged")).expect("a final account");
    let acked: usize = last.split("acknowledged ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(acked > 0, "{last}");
    assert!(last.contains("waiting to load 0, lost 0, duplicated records 0"), "{out}");
}

#[test]
fn the_demo_over_https_with_tokens_under_chaos_loses_nothing() {
    let dir = tempdir();
    let (port, snmp) = free_ports();
    let mut demo =
        Demo::start(dir.path(), port, snmp, &["--tls", "--chaos", "--chaos-interval", "6s", "--duration", "30s"]);
    demo.until("Ctrl-C stops every process", Duration::from_secs(90));
    let screen = demo.out.join("\n");
    assert!(screen.contains(&format!("https://127.0.0.1:{port}")), "{screen}");
    let ca = dir.path().join("tls/ca.pem");
    let status = |ca: &std::path::Path| {
        let out = std::process::Command::new(BIN)
            .args(["status", "--url", &format!("https://127.0.0.1:{port}"), "--ca-file", ca.to_str().unwrap()])
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let text = wait_until(Duration::from_secs(30), "a flowing status over HTTPS", || {
        let (code, text) = status(&ca);
        (code == Some(0)).then_some(text)
    });
    assert!(
        text.contains("HTTPS, certificate valid until") && text.contains("open to anyone (no token): read"),
        "{text}"
    );
    assert!(!status(&dir.path().join("tls/demo.pem")).1.contains("data is flowing"), "a wrong CA is refused");
    let (plain, _) = get(&format!("http://127.0.0.1:{port}/api/v1/devices"));
    assert_eq!(plain, 421, "plain HTTP to the HTTPS proxy");
    demo.until("fault 1:", Duration::from_secs(60));
    let exit = demo.wait(Duration::from_secs(150));
    let out = demo.out.join("\n");
    assert!(exit.success(), "{out}");
    let last = demo.out.iter().rev().find(|l| l.contains("DTOs acknowledged")).expect("a final account");
    assert!(last.contains("waiting to load 0, lost 0, duplicated records 0"), "{out}");
    let acked: usize = last.split("acknowledged ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(acked > 0, "{last}");
}

#[test]
fn a_port_already_taken_is_named() {
    let dir = tempdir();
    let (port, snmp) = free_ports();
    let _held = TcpListener::bind(("127.0.0.2", port)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["demo", "--dir", &dir.path().display().to_string(), "--port", &port.to_string()])
        .args(["--snmp-port", &snmp.to_string(), "--devices", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.2:{port}")), "{stderr}");
}
