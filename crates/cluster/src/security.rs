//! HTTPS and tokens for a local cluster: a private CA and one certificate for every loopback
//! host (made by `pollux certs`), a token file per route class, the configuration keys of each
//! role that use them, and a client that trusts the CA and sends the right token.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Security {
    pub ca: PathBuf,
    /// One certificate (and key) for 127.0.0.1, .2, .3 and localhost.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ingest: PathBuf,
    pub admin: PathBuf,
    /// Reads stay open without one (as an operator may leave them).
    pub read: Option<PathBuf>,
}

/// The names every certificate of a local cluster covers.
pub const HOSTS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost"];

impl Security {
    /// Makes (or, when `dir` already holds them, reuses) a CA and a certificate for [`HOSTS`]
    /// with `<bin> certs`, and the token files, in `dir`. With `read_token` the read class
    /// needs a token too.
    pub fn make(bin: &Path, dir: &Path, read_token: bool) -> Result<Security, String> {
        let tls = dir.join("tls");
        let cert = tls.join(format!("{}.pem", HOSTS[0]));
        if !cert.exists() {
            let out = std::process::Command::new(bin)
                .args(["certs", "--dir"])
                .arg(&tls)
                .args(HOSTS)
                .output()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            if !out.status.success() {
                return Err(format!("pollux certs: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
        let token = |class: &str| -> Result<PathBuf, String> {
            let path = tokens.join(format!("{class}.token"));
            if !path.exists() {
                write_token(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(path)
        };
        Ok(Security {
            ca: tls.join("ca.pem"),
            key: tls.join(format!("{}.key", HOSTS[0])),
            cert,
            ingest: token("ingest")?,
            admin: token("admin")?,
            read: if read_token { Some(token("read")?) } else { None },
        })
    }

    /// The TLS and token keys of an aggregator's configuration.
    pub fn aggregator_toml(&self) -> String {
        let mut toml = format!(
            "tls_cert = {:?}\ntls_key = {:?}\ningest_token_file = {:?}\nadmin_token_file = {:?}\n",
            self.cert, self.key, self.ingest, self.admin
        );
        if let Some(read) = &self.read {
            toml.push_str(&format!("read_token_file = {read:?}\n"));
        }
        toml
    }

    /// The TLS keys of the proxy's configuration.
    pub fn proxy_toml(&self) -> String {
        format!("tls_cert = {:?}\ntls_key = {:?}\nca_file = {:?}\n", self.cert, self.key, self.ca)
    }

    /// The TLS and token keys of a collector's configuration.
    pub fn collector_toml(&self) -> String {
        format!("ca_file = {:?}\ningest_token_file = {:?}\n", self.ca, self.ingest)
    }

    /// `--ca-file` and `--token-file` for a command-line client.
    pub fn cli_args(&self, token: &Path) -> Vec<String> {
        ["--ca-file".to_owned(), self.ca.display().to_string(), "--token-file".to_owned(), token.display().to_string()]
            .into()
    }

    /// `Bearer <the token of the file>`.
    pub fn bearer(token: &Path) -> String {
        format!("Bearer {}", std::fs::read_to_string(token).unwrap_or_default().trim())
    }
}

/// A client for a local cluster: it trusts the cluster's CA and sends the ingest token with
/// PUTs, the admin token with other changes and the read token (if any) with GETs; plain HTTP
/// without `security`. Answers of every status are returned, never errors.
pub fn client(security: Option<&Security>, timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false);
    let Some(s) = security else { return ureq::Agent::new_with_config(config.build()) };
    let tls = pollux_transport::ClientTls::load(Some(&s.ca)).expect("the cluster's CA");
    let (ingest, admin) = (Security::bearer(&s.ingest), Security::bearer(&s.admin));
    let read = s.read.as_deref().map(Security::bearer);
    let with_token = move |mut request: ureq::http::Request<ureq::SendBody>, next: ureq::middleware::MiddlewareNext| {
        let token = match *request.method() {
            ureq::http::Method::PUT => Some(&ingest),
            ureq::http::Method::GET | ureq::http::Method::HEAD => read.as_ref(),
            _ => Some(&admin),
        };
        if let Some(token) = token {
            if !request.headers().contains_key("authorization") {
                request.headers_mut().insert("authorization", token.parse().expect("a header value"));
            }
        }
        next.handle(request)
    };
    ureq::Agent::new_with_config(config.tls_config(tls.ureq()).middleware(with_token).build())
}

/// A token of 32 random bytes in hex, in a new file readable by its owner only.
fn write_token(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{hex}")
}
