//! The device inventory: which devices to poll, how to reach them, and which families.
//!
//! ```toml
//! [[device]]
//! name = "core-rtr-1"          # unique; the device name everywhere
//! address = "192.0.2.1"        # host name or IP
//! port = 161                   # default 161
//! version = "2c"               # "2c" (default) or "3"
//! community = "public"         # v2c; default "public"
//! families = ["Interface", "CPU", "Memory", "Availability"]  # default: all built-in
//! interval = "5m"              # default: the collector's interval
//! timeout = "2s"               # per request; default: the collector's
//! retries = 1                  # per request; default: the collector's
//!
//! [[device]]
//! name = "edge-sw-7"
//! address = "192.0.2.7"
//! version = "3"
//! user = "poller"
//! auth_protocol = "sha"        # md5, sha, sha224, sha256, sha384, sha512
//! auth_password = "..."        # at least 8 characters
//! priv_protocol = "aes"        # des, aes (128), aes192, aes256
//! priv_password = "..."
//! ```
//!
//! Every problem stops the collector with the file, the line of the offending `[[device]]` (or
//! key) and what is wrong, before anything is polled.

use pollux_model::config::ConfigError;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// How the collector authenticates to a device.
#[derive(Clone, Debug, PartialEq)]
pub enum Credentials {
    V2c {
        community: String,
    },
    /// SNMPv3 USM. Protocol names are the SNMP library's (`SHA`, `AES`...).
    V3 {
        user: String,
        auth: Option<(String, String)>,
        privacy: Option<(String, String)>,
    },
}

impl Credentials {
    /// The community the refusal probe carries: the device's own for v2c, none for v3 (whose
    /// agents ignore it; the probe only needs a refusal or any answer).
    pub fn probe_community(&self) -> &str {
        match self {
            Credentials::V2c { community } => community,
            Credentials::V3 { .. } => "",
        }
    }
}

/// One device to poll.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSpec {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub credentials: Credentials,
    pub families: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    device: Vec<RawDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: String,
    address: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_version")]
    version: String,
    community: Option<String>,
    user: Option<String>,
    auth_protocol: Option<String>,
    auth_password: Option<String>,
    priv_protocol: Option<String>,
    priv_password: Option<String>,
    families: Option<Vec<String>>,
    #[serde(default, with = "pollux_model::duration::serde_str::option")]
    interval: Option<Duration>,
    #[serde(default, with = "pollux_model::duration::serde_str::option")]
    timeout: Option<Duration>,
    retries: Option<u32>,
}

fn default_port() -> u16 {
    161
}

fn default_version() -> String {
    "2c".into()
}

/// The built-in families, polled when a device names none.
pub const DEFAULT_FAMILIES: [&str; 4] = ["Interface", "CPU", "Memory", "Availability"];
/// Most retries per request: beyond that a dead device holds up its whole cycle.
const MAX_RETRIES: u32 = 10;

/// Reads and checks an inventory file.
pub fn load(path: &Path) -> Result<Vec<DeviceSpec>, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(&name, "-", e.to_string()))?;
    parse(&name, &text)
}

/// Parses an inventory; `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Result<Vec<DeviceSpec>, ConfigError> {
    let file: File =
        pollux_model::config::from_toml(text).map_err(|(key, problem)| ConfigError::new(source, key, problem))?;
    let device_lines = device_lines(text);
    let mut names = HashSet::new();
    let mut devices = Vec::with_capacity(file.device.len());
    for (i, raw) in file.device.into_iter().enumerate() {
        let line = device_lines.get(i).copied().unwrap_or(0);
        let at = |key: &str| format!("line {line} device[{i}].{key}");
        let refuse = |key: &str, problem: String| ConfigError::new(source, at(key), problem);
        let device = check(raw).map_err(|(key, problem)| refuse(key, problem))?;
        if !names.insert(device.name.clone()) {
            return Err(refuse("name", format!("{:?} is used by an earlier device", device.name)));
        }
        devices.push(device);
    }
    if devices.is_empty() {
        return Err(ConfigError::new(source, "device", "no [[device]] in the inventory"));
    }
    Ok(devices)
}

/// The line number of each `[[device]]` header, in order.
fn device_lines(text: &str) -> Vec<usize> {
    text.lines().enumerate().filter(|(_, l)| l.trim_start().starts_with("[[device]]")).map(|(n, _)| n + 1).collect()
}

fn check(raw: RawDevice) -> Result<DeviceSpec, (&'static str, String)> {
    if raw.name.is_empty()
        || raw.name.len() > pollux_model::dto::MAX_NAME_LEN
        || raw.name.chars().any(|c| c.is_control())
    {
        return Err(("name", format!("{:?} must be 1 to 255 printable characters", raw.name)));
    }
    if raw.address.trim().is_empty() {
        return Err(("address", "must not be empty".into()));
    }
    if raw.port == 0 {
        return Err(("port", "must be 1 to 65535".into()));
    }
    let v3_keys = [&raw.user, &raw.auth_protocol, &raw.auth_password, &raw.priv_protocol, &raw.priv_password];
    let credentials = match raw.version.as_str() {
        "2c" => {
            if v3_keys.iter().any(|k| k.is_some()) {
                return Err(("version", "user, auth_* and priv_* need version = \"3\"".into()));
            }
            Credentials::V2c { community: raw.community.unwrap_or_else(|| "public".into()) }
        }
        "3" => {
            if raw.community.is_some() {
                return Err(("community", "a community is for version = \"2c\"".into()));
            }
            let user = raw.user.filter(|u| !u.is_empty()).ok_or(("user", "version 3 needs a user".to_owned()))?;
            let auth = pair("auth", raw.auth_protocol, raw.auth_password, auth_protocol)?;
            let privacy = pair("priv", raw.priv_protocol, raw.priv_password, priv_protocol)?;
            if privacy.is_some() && auth.is_none() {
                return Err(("priv_protocol", "privacy needs authentication (auth_protocol)".into()));
            }
            Credentials::V3 { user, auth, privacy }
        }
        other => return Err(("version", format!("{other:?} is not \"2c\" or \"3\""))),
    };
    let families = raw.families.unwrap_or_else(|| DEFAULT_FAMILIES.iter().map(|f| f.to_string()).collect());
    if families.is_empty() {
        return Err(("families", "name at least one family, or leave the key out for all built-in".into()));
    }
    for (i, family) in families.iter().enumerate() {
        if family.is_empty() || !family.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(("families", format!("{family:?} is not a family name")));
        }
        if families[..i].contains(family) {
            return Err(("families", format!("{family:?} appears twice")));
        }
    }
    if raw.interval.is_some_and(|d| d.as_secs() == 0 || d.subsec_nanos() != 0 || d.as_secs() > 86_400) {
        return Err(("interval", "must be whole seconds, from 1s to 1d".into()));
    }
    if raw.timeout.is_some_and(|d| d.is_zero()) {
        return Err(("timeout", "must be more than zero".into()));
    }
    if raw.retries.is_some_and(|r| r > MAX_RETRIES) {
        return Err(("retries", format!("at most {MAX_RETRIES}")));
    }
    Ok(DeviceSpec {
        name: raw.name,
        address: raw.address,
        port: raw.port,
        credentials,
        families,
        interval: raw.interval,
        timeout: raw.timeout,
        retries: raw.retries,
    })
}

/// Checks an `<kind>_protocol` / `<kind>_password` pair: both or neither.
fn pair(
    kind: &'static str,
    protocol: Option<String>,
    password: Option<String>,
    name: fn(&str) -> Option<&'static str>,
) -> Result<Option<(String, String)>, (&'static str, String)> {
    let (protocol_key, password_key) =
        if kind == "auth" { ("auth_protocol", "auth_password") } else { ("priv_protocol", "priv_password") };
    match (protocol, password) {
        (None, None) => Ok(None),
        (Some(_), None) => Err((password_key, format!("{protocol_key} needs {password_key}"))),
        (None, Some(_)) => Err((protocol_key, format!("{password_key} needs {protocol_key}"))),
        (Some(protocol), Some(password)) => {
            let canonical = name(&protocol).ok_or((protocol_key, format!("{protocol:?} is not a known protocol")))?;
            if password.len() < 8 {
                return Err((password_key, "must be at least 8 characters (RFC 3414)".into()));
            }
            Ok(Some((canonical.to_owned(), password)))
        }
    }
}

fn auth_protocol(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "md5" => "MD5",
        "sha" | "sha1" => "SHA",
        "sha224" => "SHA224",
        "sha256" => "SHA256",
        "sha384" => "SHA384",
        "sha512" => "SHA512",
        _ => return None,
    })
}

fn priv_protocol(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "des" => "DES",
        "aes" | "aes128" => "AES",
        // Net-SNMP and most agents extend AES-192/256 keys the Blumenthal way.
        "aes192" => "AES192-BLUMENTHAL",
        "aes256" => "AES256-BLUMENTHAL",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[device]]
name = "core-rtr-1"
address = "192.0.2.1"
community = "c0mm"
interval = "1m"

[[device]]
name = "edge-sw-7"
address = "192.0.2.7"
port = 1161
version = "3"
user = "poller"
auth_protocol = "sha256"
auth_password = "authpass1"
priv_protocol = "aes"
priv_password = "privpass1"
families = ["Interface"]
"#;

    #[test]
    fn parses_both_versions_with_defaults() {
        let devices = parse("inv.toml", GOOD).unwrap();
        assert_eq!(devices[0].port, 161);
        assert_eq!(devices[0].credentials, Credentials::V2c { community: "c0mm".into() });
        assert_eq!(devices[0].families.len(), 4);
        assert_eq!(devices[0].interval, Some(Duration::from_secs(60)));
        match &devices[1].credentials {
            Credentials::V3 { user, auth, privacy } => {
                assert_eq!(user, "poller");
                assert_eq!(auth.as_ref().unwrap().0, "SHA256");
                assert_eq!(privacy.as_ref().unwrap().0, "AES");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let cases = [
            (GOOD.replace("version = \"3\"", "version = \"4\""), "line 8 device[1].version"),
            (GOOD.replace("name = \"edge-sw-7\"", "name = \"core-rtr-1\""), "line 8 device[1].name"),
            (GOOD.replace("auth_password = \"authpass1\"\n", ""), "line 8 device[1].auth_password"),
            (GOOD.replace("\"sha256\"", "\"sha3\""), "line 8 device[1].auth_protocol"),
            (GOOD.replace("privpass1", "short"), "line 8 device[1].priv_password"),
            (GOOD.replace("interval = \"1m\"", "interval = \"1.5s\""), "line 6 device.interval"),
            (GOOD.replace("community = \"c0mm\"", "comunity = \"c0mm\""), "line 5 device.comunity"),
            (GOOD.replace("port = 1161", "port = 70000"), "line 11 device.port"),
            (GOOD.replace("[\"Interface\"]", "[\"If ace\"]"), "line 8 device[1].families"),
            (GOOD.replace("[\"Interface\"]", "[\"CPU\", \"CPU\"]"), "line 8 device[1].families"),
            ("# nothing\n".to_owned(), "device"),
        ];
        for (text, key) in cases {
            let e = parse("inv.toml", &text).unwrap_err();
            assert_eq!(e.source_name, "inv.toml");
            assert_eq!(e.key, key, "{e}");
        }
    }
}
