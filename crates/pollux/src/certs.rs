//! `pollux certs`: a private CA and certificates for a lab or a first install.
//!
//! ```text
//!   pollux certs --dir /etc/pollux/tls da1.example.net 10.0.0.2
//!     ca.pem, ca.key             made on the first run (ca.key 0600), reused by later ones
//!     da1.example.net.pem, .key  for every name and address given (ECDSA P-256)
//! ```
//!
//! Give every client `ca_file = ".../ca.pem"`; keep `ca.key` off the servers once their
//! certificates are made. A certificate written over an existing one is picked up by the
//! running process within a second (or at once on SIGHUP).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use time::{Duration, OffsetDateTime};

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Host names and IP addresses the certificate is for; the first names the files.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Where the CA and the certificates are kept.
    #[arg(long, default_value = "./pollux-tls")]
    dir: PathBuf,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = 397, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Make a certificate that expired yesterday (for testing that clients refuse it).
    #[arg(long, hide = true)]
    expired: bool,
}

const CA_DAYS: i64 = 3650;

pub fn run(args: CertsArgs) -> ExitCode {
    match issue(&args.dir, &args.names, args.days, args.expired) {
        Ok(Issued { ca, cert, key, made_ca }) => {
            if made_ca {
                println!(
                    "made a new CA: {} (its key {} stays private)",
                    ca.display(),
                    ca.with_extension("key").display()
                );
            }
            println!("certificate {} and key {} for {}", cert.display(), key.display(), args.names.join(", "));
            println!("clients trust it with ca_file = \"{}\"", ca.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollux certs: {e}");
            ExitCode::from(crate::EXIT_USAGE)
        }
    }
}

/// The CA's name carries a digest of its key, so two installations' CAs never share a name
/// (a client would take one for the other's issuer), and a later run rebuilds the same issuer
/// from the key alone.
fn ca_params(key: &KeyPair) -> CertificateParams {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.public_key_pem().as_bytes());
    let id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("Pollux private CA {id}"));
    params.distinguished_name.push(DnType::OrganizationName, "Pollux");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// What [`issue`] wrote.
pub struct Issued {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub made_ca: bool,
}

/// Makes the CA in `dir` if there is none, and a certificate for `names` (the first names the
/// files) valid `days` (or expired yesterday).
pub fn issue(dir: &Path, names: &[String], days: u32, expired: bool) -> Result<Issued, String> {
    if names.is_empty() {
        return Err("name at least one host name or address".into());
    }
    for name in names {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'))
            && !name.starts_with('.');
        if !ok {
            return Err(format!("{name:?} is not a host name or an IP address"));
        }
    }
    let stem = names[0].replace([':', '*'], "_");
    if stem == "ca" {
        return Err("the first name names the files, and ca.pem and ca.key are the CA's: put another name first".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One run at a time per directory: two runs that both found no CA would each make one, and
    // the certificates of the one overwritten would verify against nothing.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".certs.lock"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let _one_at_a_time = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{}: cannot lock: {e}", dir.display()))?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let now = OffsetDateTime::now_utc();
    let made_ca = !ca_key.exists();
    if made_ca && ca_pem.exists() {
        return Err(format!(
            "{} is there without its key {}: copy ca.key here to make certificates of this CA, \
             or make them on the host that has it",
            ca_pem.display(),
            ca_key.display()
        ));
    }
    let issuer = if made_ca {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = ca_params(&key);
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        write_private(&ca_key, &key.serialize_pem())?;
        write_public(&ca_pem, &cert.pem())?;
        Issuer::new(ca_params(&key), key)
    } else {
        // The issuer is the CA's name, key usages and key: the same as when it was made.
        let pem = std::fs::read_to_string(&ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key.display()))?;
        let cert = std::fs::read_to_string(&ca_pem).map_err(|e| format!("{}: {e}", ca_pem.display()))?;
        if !key_matches(&key, &cert) {
            return Err(format!(
                "{} is not the key of {}: certificates it signed would verify against nothing; \
                 copy the CA's own ca.key here, or make certificates on the host that has it",
                ca_key.display(),
                ca_pem.display()
            ));
        }
        Issuer::new(ca_params(&key), key)
    };
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::CommonName, names[0].as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        params.not_before = now - Duration::days(30);
        params.not_after = now - Duration::days(1);
    } else {
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(i64::from(days));
    }
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    // The key first: a running server that sees the new certificate before its key would
    // fail that reload (and succeed at the next change), but never serve a mismatched pair.
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    Ok(Issued { ca: ca_pem, cert: cert_path, key: key_path, made_ca })
}

/// Whether `key` is the key of the certificate `cert_pem`: its public key (the DER of its
/// SubjectPublicKeyInfo) stands in the certificate as it is.
fn key_matches(key: &KeyPair, cert_pem: &str) -> bool {
    let Ok(cert) = pem::parse(cert_pem) else { return false };
    let public = rcgen::PublicKeyData::subject_public_key_info(key);
    !public.is_empty() && cert.contents().windows(public.len()).any(|w| w == public.as_slice())
}

/// Writes a file whole: a new temporary file (never one left behind, never through a link,
/// with `mode` from its creation) renamed over the old one, so a server reloading it never
/// reads half a PEM and a key is never readable by others, even for a moment.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&temp)
        .map_err(fail)?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(fail)
}

/// Writes a new random token (24 bytes from the kernel, hex) to `path` unless a file is there;
/// true when it made one.
pub(crate) fn make_token(path: &Path) -> Result<bool, String> {
    use std::io::Read;
    if path.exists() {
        return Ok(false);
    }
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &format!("{token}\n"))?;
    Ok(true)
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    write_file(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<(), String> {
    write_file(path, text, 0o644)
}
