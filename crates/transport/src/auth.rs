//! Bearer tokens by route class, read from files.
//!
//! ```text
//!   class    routes                                       accepted tokens
//!   open     /health, /health/active, the API document    none needed
//!   read     queries, status, metrics, the portal         read, ingest or admin (any token)
//!   ingest   DTOs, collector reports                      ingest
//!   admin    failover, maintenance, rules, acks           admin
//! ```
//!
//! A class whose token is not configured is open. A request to a closed class without a
//! credential, or with one that is no configured token, gets 401; with a valid token of another
//! class, 403. Read accepts every token because each holder may see the data it sends or
//! manages; the two writing classes accept only their own, so a collector's token (on every
//! collector host) cannot force a failover, and the admin's cannot forge data.
//!
//! A credential is `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 section
//! 11.1), or Basic with the token as password, which is what a browser can send for the portal.
//! Tokens are compared in constant time and never logged or shown.

use base64::Engine as _;
use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use subtle::ConstantTimeEq;

/// A token file larger than this is not a token file.
const MAX_TOKEN_BYTES: u64 = 4096;
/// Shorter tokens are accepted with a warning: they can be guessed.
const WEAK_TOKEN_CHARS: usize = 16;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Open,
    Read,
    Ingest,
    Admin,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Open => "open",
            Class::Read => "read",
            Class::Ingest => "ingest",
            Class::Admin => "admin",
        }
    }
}

/// A token; its Debug and Display hide it.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    fn matches(&self, presented: &[u8]) -> bool {
        // Lengths are not secret; contents are compared without an early exit.
        self.0.len() == presented.len() && bool::from(self.0.as_ref().ct_eq(presented))
    }

    /// The header a client sends.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Reads a token file: one line of visible ASCII (surrounding white space is ignored). The
/// error is `(key, problem)` with the key given; the token never appears in it.
pub fn read_token_file(key: &str, path: &Path) -> Result<Secret, (String, String)> {
    use std::io::Read;
    let fail = |problem: String| Err((key.to_owned(), format!("{}: {problem}", path.display())));
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return fail(e.to_string()),
    };
    if !meta.is_file() {
        return fail("is not a regular file".into());
    }
    if meta.len() > MAX_TOKEN_BYTES {
        return fail(format!("is larger than {MAX_TOKEN_BYTES} bytes: not a token"));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_TOKEN_BYTES).read_to_end(&mut bytes) {
        return fail(e.to_string());
    }
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return fail("is empty: write a token in it, or remove the key to leave the class open".into());
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return fail("must hold one token of visible ASCII characters, without spaces".into());
    }
    if token.len() < WEAK_TOKEN_CHARS {
        tracing::warn!(key, file = %path.display(), "token shorter than {WEAK_TOKEN_CHARS} characters: easy to guess");
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(key, file = %path.display(), "token file is readable by group or others: chmod 600");
    }
    Ok(Secret(token.into()))
}

/// A client's token, replaced when its file is read again (SIGHUP): each request takes the
/// one in force.
#[derive(Debug, Clone, Default)]
pub struct ClientToken(std::sync::Arc<(std::sync::RwLock<Option<Secret>>, std::sync::atomic::AtomicU64)>);

impl ClientToken {
    pub fn new(token: Option<Secret>) -> ClientToken {
        ClientToken(std::sync::Arc::new((std::sync::RwLock::new(token), std::sync::atomic::AtomicU64::new(0))))
    }

    /// The `Authorization` header value to send, if there is a token.
    pub fn header(&self) -> Option<String> {
        self.0 .0.read().expect("token").as_ref().map(Secret::bearer)
    }

    pub fn replace(&self, token: Option<Secret>) {
        *self.0 .0.write().expect("token") = token;
        self.0 .1.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Grows at each [`replace`](Self::replace): a sender backing off after refusals of the
    /// old token tries again at once with the new one.
    pub fn version(&self) -> u64 {
        self.0 .1.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credential, or one that is no configured token: 401.
    Unauthenticated,
    /// A valid token of a class this route does not accept: 403.
    WrongClass,
}

/// The configured tokens of a server.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub ingest: Option<Secret>,
    pub admin: Option<Secret>,
    pub read: Option<Secret>,
}

impl Tokens {
    /// Reads the three files given (each optional). The error is `(key, problem)`.
    pub fn load(ingest: Option<&Path>, admin: Option<&Path>, read: Option<&Path>) -> Result<Tokens, (String, String)> {
        let one = |key, path: Option<&Path>| path.map(|p| read_token_file(key, p)).transpose();
        let tokens = Tokens {
            ingest: one("ingest_token_file", ingest)?,
            admin: one("admin_token_file", admin)?,
            read: one("read_token_file", read)?,
        };
        let all = [
            ("ingest_token_file", &tokens.ingest),
            ("admin_token_file", &tokens.admin),
            ("read_token_file", &tokens.read),
        ];
        for (i, (a, x)) in all.iter().enumerate() {
            for (b, y) in &all[i + 1..] {
                if let (Some(x), Some(y)) = (x, y) {
                    if x.matches(&y.0) {
                        return Err((b.to_string(), format!("holds the same token as {a}: each class needs its own")));
                    }
                }
            }
        }
        Ok(tokens)
    }
}

/// The configured tokens with the files they came from, read again on demand (SIGHUP), so a
/// leaked token is replaced without a restart. A set of files that does not load leaves the
/// tokens in force unchanged.
#[derive(Debug)]
pub struct TokenFiles {
    files: [Option<std::path::PathBuf>; 3],
    current: std::sync::RwLock<std::sync::Arc<Tokens>>,
}

impl TokenFiles {
    /// Reads the files (ingest, admin, read; each optional). The error is `(key, problem)`.
    pub fn load(
        ingest: Option<&Path>,
        admin: Option<&Path>,
        read: Option<&Path>,
    ) -> Result<TokenFiles, (String, String)> {
        let tokens = Tokens::load(ingest, admin, read)?;
        let files = [ingest, admin, read].map(|p| p.map(Path::to_path_buf));
        Ok(TokenFiles { files, current: std::sync::RwLock::new(std::sync::Arc::new(tokens)) })
    }

    /// The tokens in force.
    pub fn current(&self) -> std::sync::Arc<Tokens> {
        self.current.read().expect("tokens").clone()
    }

    /// Reads the files again; on an error the tokens in force stay.
    pub fn reload(&self) -> Result<(), (String, String)> {
        let [ingest, admin, read] = &self.files;
        let tokens = Tokens::load(ingest.as_deref(), admin.as_deref(), read.as_deref())?;
        *self.current.write().expect("tokens") = std::sync::Arc::new(tokens);
        Ok(())
    }
}

impl Tokens {
    /// The token a class needs, if the class is closed.
    fn required(&self, class: Class) -> Option<&Secret> {
        match class {
            Class::Open => None,
            Class::Read => self.read.as_ref(),
            Class::Ingest => self.ingest.as_ref(),
            Class::Admin => self.admin.as_ref(),
        }
    }

    /// Classes that are open because their token is not configured (for a warning at start).
    pub fn open_classes(&self) -> Vec<&'static str> {
        [Class::Read, Class::Ingest, Class::Admin]
            .into_iter()
            .filter(|c| self.required(*c).is_none())
            .map(Class::name)
            .collect()
    }

    /// Lets a request with `authorization` (the header's value, if any) into `class`, or says why not.
    pub fn check(&self, class: Class, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let Some(required) = self.required(class) else { return Ok(()) };
        let Some(presented) = authorization.and_then(credential) else { return Err(Denied::Unauthenticated) };
        if required.matches(&presented) {
            return Ok(());
        }
        let others = [&self.ingest, &self.admin, &self.read];
        let holds_other = others.iter().filter_map(|t| t.as_ref()).any(|t| t.matches(&presented));
        match (class, holds_other) {
            // Any valid token reads.
            (Class::Read, true) => Ok(()),
            (_, true) => Err(Denied::WrongClass),
            (_, false) => Err(Denied::Unauthenticated),
        }
    }
}

/// The token in an Authorization header: `Bearer <token>`, or Basic with the token as password.
fn credential(header: &[u8]) -> Option<Vec<u8>> {
    let header = header.trim_ascii();
    let space = header.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = (&header[..space], header[space..].trim_ascii());
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Some(rest.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let s = |t: &str| Some(Secret(t.as_bytes().into()));
        Tokens {
            ingest: s("ingest-0123456789abcdef"),
            admin: s("admin-0123456789abcdef"),
            read: s("read-0123456789abcdef"),
        }
    }

    #[test]
    fn each_class_takes_its_token_and_read_takes_any() {
        let t = tokens();
        let table = [
            (Class::Read, "Bearer read-0123456789abcdef", Ok(())),
            (Class::Read, "bearer ingest-0123456789abcdef", Ok(())),
            (Class::Read, "BEARER admin-0123456789abcdef", Ok(())),
            (Class::Ingest, "Bearer ingest-0123456789abcdef", Ok(())),
            (Class::Ingest, "Bearer admin-0123456789abcdef", Err(Denied::WrongClass)),
            (Class::Ingest, "Bearer read-0123456789abcdef", Err(Denied::WrongClass)),
            (Class::Admin, "Bearer admin-0123456789abcdef", Ok(())),
            (Class::Admin, "Bearer ingest-0123456789abcdef", Err(Denied::WrongClass)),
            (Class::Admin, "Bearer read-0123456789abcdef", Err(Denied::WrongClass)),
            (Class::Admin, "Bearer admin-0123456789abcdeF", Err(Denied::Unauthenticated)),
            (Class::Admin, "Bearer admin-0123456789abcde", Err(Denied::Unauthenticated)),
            (Class::Admin, "Token admin-0123456789abcdef", Err(Denied::Unauthenticated)),
            (Class::Admin, "Bearer", Err(Denied::Unauthenticated)),
            // "x:admin-0123456789abcdef" in Basic.
            (Class::Admin, "Basic eDphZG1pbi0wMTIzNDU2Nzg5YWJjZGVm", Ok(())),
            (Class::Admin, "Basic !!!", Err(Denied::Unauthenticated)),
            (Class::Open, "", Ok(())),
        ];
        for (class, header, expected) in table {
            assert_eq!(t.check(class, Some(header.as_bytes())), expected, "{class:?} {header}");
        }
        assert_eq!(t.check(Class::Read, None), Err(Denied::Unauthenticated));
        assert_eq!(t.check(Class::Open, None), Ok(()));
    }

    #[test]
    fn a_class_without_a_token_is_open() {
        let t = Tokens { admin: None, read: None, ..tokens() };
        assert_eq!(t.check(Class::Admin, None), Ok(()));
        assert_eq!(t.check(Class::Read, Some(b"Bearer nonsense")), Ok(()));
        assert_eq!(t.check(Class::Ingest, None), Err(Denied::Unauthenticated));
        assert_eq!(t.open_classes(), vec!["read", "admin"]);
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let good = file("good", "  s3cret-token-of-length-24\n");
        assert!(read_token_file("k", &good).unwrap().matches(b"s3cret-token-of-length-24"));
        for (name, text, problem) in [
            ("empty", "\n \n", "is empty"),
            ("spaces", "two words", "visible ASCII"),
            ("big", &"x".repeat(5000), "larger than"),
        ] {
            let (key, why) = read_token_file("admin_token_file", &file(name, text)).unwrap_err();
            assert_eq!(key, "admin_token_file");
            assert!(why.contains(problem), "{why}");
            assert!(!why.contains("two words"), "the token leaked: {why}");
        }
        let (_, why) = read_token_file("k", dir.path()).unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (_, why) = read_token_file("k", &fifo).unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
        let same = Tokens::load(Some(&good), Some(&good), None).unwrap_err();
        assert_eq!(same.0, "admin_token_file");
        assert!(format!("{:?}", Tokens::load(Some(&good), None, None).unwrap()).contains("Secret(..)"));
    }
}
