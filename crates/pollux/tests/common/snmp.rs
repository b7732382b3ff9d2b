//! Harness for the collector tests: the simulator and a collector as `pollux` processes, a real
//! net-snmp `snmpd` with its own configuration, and `snmpget`/`snmpwalk` to read what it says.

use super::{get_text, wait_until, Aggregator, BIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Any `pollux` process that logs "listening on" (the simulator, a collector's metrics port).
pub type Process = Aggregator;

/// `pollux simulate` with `devices` devices from `port`, writing its inventory to `inventory`.
pub fn simulator(port: u16, devices: u32, interfaces: u32, v3: u32, extra: &[&str], inventory: &Path) -> Process {
    let mut args: Vec<String> = vec![
        "simulate".into(),
        "--devices".into(),
        devices.to_string(),
        "--interfaces".into(),
        interfaces.to_string(),
        "--v3-devices".into(),
        v3.to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--inventory-out".into(),
        inventory.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Process::spawn(&args, &[])
}

/// `pollux collector` named dc1 with a configuration file holding `config` (TOML lines).
pub fn collector(dir: &Path, aggregator: &str, inventory: &Path, interval: &str, config: &str) -> Process {
    collector_as("dc1", dir, &[aggregator], inventory, interval, config)
}

/// `pollux collector --id <id>` sending to `aggregators` in order, its spool in `dir/spool`.
pub fn collector_as(
    id: &str,
    dir: &Path,
    aggregators: &[&str],
    inventory: &Path,
    interval: &str,
    config: &str,
) -> Process {
    std::fs::create_dir_all(dir).unwrap();
    let config_path = dir.join("collector.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut args: Vec<String> = vec!["collector".into(), "--config".into(), config_path.display().to_string()];
    args.extend(["--id".into(), id.into()]);
    for url in aggregators {
        args.extend(["--aggregator".into(), url.to_string()]);
    }
    args.extend([
        "--inventory".into(),
        inventory.display().to_string(),
        "--spool-dir".into(),
        dir.join("spool").display().to_string(),
        "--interval".into(),
        interval.into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    Process::spawn(&args, &[])
}

/// One figure from a collector's `/metrics`.
pub fn metric(collector: &Process, name: &str) -> f64 {
    let text = get_text(&format!("{}/metrics", collector.url));
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// A net-snmp `snmpd` on 127.0.0.1:`port` and [::1]:`port`, answering v2c (community `public`) and v3 (user
/// `pollux`, authPriv SHA/AES), with its own configuration and persistent directory.
pub struct Snmpd {
    child: Child,
    pub port: u16,
    _dir: PathBuf,
}

pub const V3_USER: &str = "pollux";
pub const V3_AUTH: &str = "pollux-auth-secret";
pub const V3_PRIV: &str = "pollux-priv-secret";

impl Snmpd {
    pub fn start(dir: &Path, port: u16) -> Snmpd {
        let persist = dir.join("persist");
        std::fs::create_dir_all(&persist).unwrap();
        let conf = dir.join("snmpd.conf");
        std::fs::write(
            &conf,
            format!(
                "rocommunity public 127.0.0.1\nrocommunity6 public ::1\n\
                 createUser {V3_USER} SHA \"{V3_AUTH}\" AES \"{V3_PRIV}\"\nrouser {V3_USER} priv\n"
            ),
        )
        .unwrap();
        let child = super::harnessed("snmpd")
            .args(["-f", "-Lo", "-C", "-c"])
            .arg(&conf)
            .arg(if ipv6_loopback() {
                format!("udp:127.0.0.1:{port},udp6:[::1]:{port}")
            } else {
                format!("udp:127.0.0.1:{port}")
            })
            .env("SNMP_PERSISTENT_DIR", &persist)
            .env("MIBS", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start snmpd (Debian package snmpd; .ci/run installs it)");
        let snmpd = Snmpd { child, port, _dir: dir.to_owned() };
        wait_until(Duration::from_secs(20), "snmpd to answer", || snmpd.get("1.3.6.1.2.1.1.3.0").map(|_| ()));
        snmpd
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `snmpget -v2c`: the value alone, or `None` if there is no answer.
    pub fn get(&self, oid: &str) -> Option<String> {
        let out = Command::new("snmpget")
            .args(["-v2c", "-c", "public", "-On", "-Oqv", "-Oe", "-t", "1", "-r", "1", &self.target(), oid])
            .env("MIBS", "")
            .output()
            .expect("snmpget (Debian package snmp)");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty() && !text.contains("No Such")).then_some(text)
    }

    /// `snmpwalk -v2c` of a column: (index, value) pairs.
    pub fn walk(&self, column: &str) -> Vec<(String, String)> {
        let out = Command::new("snmpwalk")
            .args(["-v2c", "-c", "public", "-On", "-Oq", "-Oe", &self.target(), column])
            .env("MIBS", "")
            .output()
            .expect("snmpwalk (Debian package snmp)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (oid, value) = l.split_once(' ')?;
                let index = oid.strip_prefix(&format!(".{column}."))?;
                Some((index.to_owned(), value.trim().trim_matches('"').to_owned()))
            })
            .collect()
    }
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `snmpget -v2c -c public` of one object on 127.0.0.1:`port`: its value as text (quotes
/// removed), empty when there is no answer.
pub fn snmpget(port: u16, oid: &str) -> String {
    let out = Command::new("snmpget")
        .args(["-v2c", "-c", "public", "-On", "-Oqv", "-t", "2", &format!("127.0.0.1:{port}"), oid])
        .env("MIBS", "")
        .output()
        .expect("snmpget (Debian package snmp)");
    String::from_utf8_lossy(&out.stdout).trim().trim_matches('"').to_owned()
}

/// A test's directory and the shared directory inside it.
pub fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = super::tempdir();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("metric-families")).unwrap();
    (dir, shared)
}

/// Whether this host has an IPv6 loopback (a container may not).
pub fn ipv6_loopback() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

/// The path of the `pollux` binary, for tests that run it to completion.
pub fn pollux() -> Command {
    Command::new(BIN)
}
