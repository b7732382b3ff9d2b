//! TLS for every listener and every client: rustls with the ring provider, TLS 1.2 and 1.3 only.
//!
//! ```text
//!   ServerTls  tls_cert + tls_key ──load──▶ rustls ServerConfig (behind a lock)
//!                 ▲  every second: the files changed?  on SIGHUP: reload now
//!                 └─ a pair that does not load keeps the previous one serving; the error is
//!                    logged and shown in the status until a good pair replaces it
//!   ClientTls  ca_file (or the system's roots) ──▶ rustls ClientConfig, ureq TlsConfig
//! ```
//!
//! A handshake takes the configuration current when the connection arrives, so a rotation
//! under load fails no request: connections already open keep the certificate they started
//! with. There is no fallback to plain HTTP anywhere: a listener with a certificate speaks only
//! TLS, and answers plain HTTP with a refusal that says so.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Certificate and key files larger than this are refused (a chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;
/// How often a listener looks at its certificate files for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A TLS file that cannot be used: the configuration key, the file and the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
        TlsError { key, path: path.to_owned(), problem: problem.into() }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.key, self.path.display(), self.problem)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // AES-128-GCM first (as Go and nginx order them): as strong as needed, and a third
            // cheaper than AES-256 on the bulk of the traffic, DTO bodies.
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites.sort_by_key(|s| match s.suite() {
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
                _ => 1,
            });
            Arc::new(provider)
        })
        .clone()
}

/// TLS 1.3 and 1.2; rustls has nothing older, so 1.0 and 1.1 clients fail the handshake.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads a small regular file. A FIFO or device where a file should be is refused without
/// blocking (opened non-blocking, checked with fstat before any read).
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| TlsError::new(key, path, e.to_string()))?;
    let meta = file.metadata().map_err(|e| TlsError::new(key, path, e.to_string()))?;
    if !meta.is_file() {
        return Err(TlsError::new(key, path, "is not a regular file"));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsError::new(key, path, format!("is {} bytes, more than a PEM file can be", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PEM_BYTES).read_to_end(&mut bytes).map_err(|e| TlsError::new(key, path, e.to_string()))?;
    Ok(bytes)
}

fn parse_certs(key: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// What a listener's certificate files looked like when last loaded: a change to either
/// (rewritten, renamed over, touched) triggers a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cert: (u64, u64, i64, i64),
    key: (u64, u64, i64, i64),
}

fn stamp_of(path: &Path) -> Option<(u64, u64, i64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl Stamp {
    fn read(cert: &Path, key: &Path) -> Option<Stamp> {
        Some(Stamp { cert: stamp_of(cert)?, key: stamp_of(key)? })
    }
}

/// A listener's certificate as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsStatus {
    pub cert: PathBuf,
    /// Unix seconds after which clients refuse the certificate.
    pub not_after: Option<i64>,
    /// Why the files on disk are not the ones serving, or why the one serving is no good.
    pub error: Option<String>,
    /// Successful reloads since start.
    pub reloads: u64,
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    stamp: Option<Stamp>,
    not_after: Option<i64>,
    /// The stamp of files that failed to load (None inside: a file was missing): not retried
    /// (nor logged again) until they change.
    failed: Option<Option<Stamp>>,
    error: Option<String>,
    reloads: u64,
}

/// A listener's certificate and key, reloaded when the files change or on SIGHUP.
#[derive(Clone)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    state: Arc<RwLock<Loaded>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

/// Builds a server configuration from the two files; checks that the key is the certificate's.
fn server_config(cert: &Path, key: &Path) -> Result<(rustls::ServerConfig, Option<i64>), TlsError> {
    let certs = parse_certs("tls_cert", cert, &read_pem("tls_cert", cert)?)?;
    let leaf = certs[0].clone();
    let key_pem = read_pem("tls_key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::new("tls_key", key, format!("not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| TlsError::new("tls_key", key, format!("does not go with tls_cert {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Read once rustls has accepted the certificate with its key.
    Ok((config, not_after(&leaf)))
}

fn expiry_problem(not_after: Option<i64>, now: i64) -> Option<String> {
    let t = not_after?;
    (t <= now).then(|| format!("certificate expired at {} UTC: clients refuse it", utc(t)))
}

impl ServerTls {
    /// Loads the pair; an error names the key and file. An expired certificate loads (clients
    /// will refuse it) but is logged as an error and shown in the status.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let stamp = Stamp::read(cert, key);
        let (config, not_after) = server_config(cert, key)?;
        let error = expiry_problem(not_after, unix_now());
        if let Some(e) = &error {
            tracing::error!(cert = %cert.display(), "{e}");
        }
        let state = Loaded { config: Arc::new(config), stamp, not_after, failed: None, error, reloads: 0 };
        Ok(ServerTls { cert: cert.to_owned(), key: key.to_owned(), state: Arc::new(RwLock::new(state)) })
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.state.read().expect("tls state").config.clone())
    }

    pub fn status(&self) -> TlsStatus {
        let s = self.state.read().expect("tls state");
        TlsStatus { cert: self.cert.clone(), not_after: s.not_after, error: s.error.clone(), reloads: s.reloads }
    }

    /// Reloads when the files differ from the ones loaded (`force`: SIGHUP, reload anyway).
    /// Files that fail to load are not tried again until they change, so a half-finished
    /// rotation (certificate written, key not yet) is one error, then a success.
    pub fn check(&self, force: bool) {
        let stamp = Stamp::read(&self.cert, &self.key);
        {
            let s = self.state.read().expect("tls state");
            if stamp == s.stamp && s.failed.is_some() && !force {
                // The files serving are back (a backup moved into place): nothing is wrong now.
                drop(s);
                let mut s = self.state.write().expect("tls state");
                s.failed = None;
                s.error = expiry_problem(s.not_after, unix_now());
                tracing::info!(cert = %self.cert.display(), "certificate files back as loaded");
                return;
            }
            let unchanged = stamp == s.stamp || Some(stamp) == s.failed;
            if unchanged && !force {
                return;
            }
        }
        match server_config(&self.cert, &self.key) {
            Ok((config, not_after)) => {
                let error = expiry_problem(not_after, unix_now());
                let mut s = self.state.write().expect("tls state");
                s.config = Arc::new(config);
                s.stamp = stamp;
                s.failed = None;
                s.not_after = not_after;
                s.reloads += 1;
                match &error {
                    Some(e) => tracing::error!(cert = %self.cert.display(), "certificate reloaded, but {e}"),
                    None => tracing::info!(
                        cert = %self.cert.display(),
                        not_after = not_after.map(utc).unwrap_or_default(),
                        "certificate reloaded"
                    ),
                }
                s.error = error;
            }
            Err(e) => {
                tracing::error!("{e}; the previous certificate keeps serving");
                let mut s = self.state.write().expect("tls state");
                s.failed = Some(stamp);
                s.error = Some(format!("{e}; the previous certificate keeps serving"));
            }
        }
    }

    /// Watches the files (every [`RELOAD_CHECK`]) and SIGHUP until `shutdown`. The file reads
    /// run on the blocking pool.
    pub async fn watch(self, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP ({e}); certificates reload when their files change");
                None
            }
        };
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.check(force)).await;
        }
    }
}

/// A role's `tls_cert` and `tls_key` keys, loaded: None without them. The error is
/// `(key, problem)` like every configuration error.
pub fn listener_tls(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ServerTls>, (String, String)> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => ServerTls::load(cert, key).map(Some).map_err(TlsError::into_key_problem),
        (Some(_), None) => Err(("tls_key".into(), "is needed too: HTTPS takes both tls_cert and tls_key".into())),
        (None, Some(_)) => Err(("tls_cert".into(), "is needed too: HTTPS takes both tls_cert and tls_key".into())),
    }
}

impl TlsError {
    /// As a configuration error: `(key, "<file>: <problem>")`.
    pub fn into_key_problem(self) -> (String, String) {
        (self.key.to_owned(), format!("{}: {}", self.path.display(), self.problem))
    }
}

/// The hyper connector of [`ClientTls::connector`].
pub type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// What a client trusts: the `ca_file`'s certificates, or the system's roots without one.
#[derive(Clone)]
pub struct ClientTls {
    roots: Arc<Vec<CertificateDer<'static>>>,
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("roots", &self.roots.len()).finish()
    }
}

fn system_roots() -> Arc<Vec<CertificateDer<'static>>> {
    static ROOTS: OnceLock<Arc<Vec<CertificateDer<'static>>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                tracing::warn!("no system root certificates found: https URLs need ca_file");
            }
            Arc::new(found.certs)
        })
        .clone()
}

impl ClientTls {
    /// Trusts the certificates in `ca_file`, or the system's roots when there is none.
    pub fn load(ca_file: Option<&Path>) -> Result<ClientTls, TlsError> {
        let roots = match ca_file {
            Some(path) => Arc::new(parse_certs("ca_file", path, &read_pem("ca_file", path)?)?),
            None => system_roots(),
        };
        let mut store = rustls::RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(roots.iter().cloned());
        if let (Some(path), 0) = (ca_file, added) {
            return Err(TlsError::new("ca_file", path, "holds no usable CA certificate"));
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(ClientTls { roots, config: Arc::new(config) })
    }

    /// For hyper clients (the proxy).
    pub fn rustls(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// A connector for hyper clients (the proxy): `https://` URLs with these roots, `http://`
    /// URLs plain, TCP_NODELAY either way.
    pub fn connector(&self) -> Connector {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http)
    }

    /// For ureq agents (collector, notifier, command line).
    pub fn ureq(&self) -> ureq::tls::TlsConfig {
        let roots: Vec<ureq::tls::Certificate<'static>> =
            self.roots.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .unversioned_rustls_crypto_provider(provider())
            .build()
    }
}

/// The end of a certificate's validity, read from its DER (RFC 5280 section 4.1): the
/// `notAfter` of `tbsCertificate.validity`. None when the encoding is not understood.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_tlv(cert)?;
    let (_, tbs, _) = der_tlv(cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = der_tlv(rest)?.2; // [0] version
    }
    for _ in 0..3 {
        rest = der_tlv(rest)?.2; // serialNumber, signature, issuer
    }
    let (_, validity, _) = der_tlv(rest)?;
    let (_, _, after) = der_tlv(validity)?; // notBefore
    let (tag, time, _) = der_tlv(after)?;
    der_time(tag, time)
}

/// One DER element: (tag, contents, what follows).
fn der_tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950..2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    // Slicing below is by byte: anything but ASCII digits is no time this reads.
    if !text.is_ascii() {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2).and_then(|s| s.parse::<i64>().ok());
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(pollux_model::period::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// `YYYY-MM-DD HH:MM:SS` of Unix seconds, for messages.
pub fn utc(t: i64) -> String {
    pollux_model::period::format_utc(t)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_read_both_encodings() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"20261202031500Z"), Some(1_796_181_300));
        assert_eq!(der_time(0x18, b"20261302031500Z"), None);
        assert_eq!(der_time(0x17, b"7001010000Z"), None);
        assert_eq!(der_time(0x18, "20é61202031500Z".as_bytes()), None);
        assert_eq!(der_time(0x17, "é0101000000Z".as_bytes()), None);
        assert_eq!(utc(1_796_181_300), "2026-12-02 03:15:00");
    }

    #[test]
    fn truncated_der_is_not_read() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
    }
}
