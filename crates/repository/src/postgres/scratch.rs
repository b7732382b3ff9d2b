//! A throwaway PostgreSQL server on loopback, for tests and benchmarks: `initdb` into a fresh
//! directory, `postgres` on a free port, stopped and removed on drop.
//!
//! The binaries are found through `POLLUX_PG_BIN`, then the newest `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package), then `PATH`. PostgreSQL refuses to run as root: as root the
//! server runs as the `postgres` user (or `nobody`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ScratchServer {
    bin: PathBuf,
    /// Holds `data/` and `socket/`; removed on drop.
    root: tempfile::TempDir,
    port: u16,
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

/// Whether a missing PostgreSQL must fail the tests rather than skip them (`.ci/run` sets
/// `POLLUX_REQUIRE_POSTGRES=1`, so CI never passes by skipping).
pub fn required() -> bool {
    std::env::var_os("POLLUX_REQUIRE_POSTGRES").is_some_and(|v| v != "0")
}

/// The directory holding `initdb` and `postgres`, if any.
pub fn binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("POLLUX_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
}

impl ScratchServer {
    /// Makes and starts a server; `Err` says why it could not (no binaries, initdb failed).
    pub fn start() -> Result<ScratchServer, String> {
        let bin = binaries().ok_or("no PostgreSQL binaries (initdb, postgres): install the postgresql package")?;
        let root =
            tempfile::Builder::new().prefix("pollux-pg-").tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let user = if nix::unistd::geteuid().is_root() { Some(unprivileged_user()?) } else { None };
        if let Some((uid, gid)) = user {
            nix::unistd::chown(root.path(), Some(uid.into()), Some(gid.into())).map_err(|e| format!("chown: {e}"))?;
        }
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        let mut server = ScratchServer { bin, root, port: free_port()?, user, server: None };
        let socket = server.root.path().join("socket");
        std::fs::create_dir(&socket).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            nix::unistd::chown(&socket, Some(uid.into()), Some(gid.into())).map_err(|e| e.to_string())?;
        }
        let out = server
            .command("initdb")
            .args([
                "-D",
                &server.data().display().to_string(),
                "-U",
                "pollux",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        server.restart()?;
        Ok(server)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.env_remove("PGDATA").current_dir(self.root.path());
        command
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// A URL for database `name`, created if it does not exist.
    pub fn database(&self, name: &str) -> Result<String, String> {
        let mut client =
            postgres::Client::connect(&self.url("postgres"), postgres::NoTls).map_err(|e| e.to_string())?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .map_err(|e| e.to_string())?
            .is_some();
        if !exists {
            client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).map_err(|e| e.to_string())?;
        }
        Ok(self.url(name))
    }

    /// Runs `sql` as the superuser on the `postgres` database; returns the first column of
    /// each row (tests use it to watch and cut connections).
    pub fn admin_query(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let mut client =
            postgres::Client::connect(&self.url("postgres"), postgres::NoTls).map_err(|e| e.to_string())?;
        let messages = client.simple_query(sql).map_err(|e| e.to_string())?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect())
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgresql://pollux@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server (again, on the same port and data) and waits until it accepts.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let log = std::fs::File::create(self.root.path().join("server.log")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.user {
            let _ = nix::unistd::chown(&self.root.path().join("server.log"), Some(uid.into()), Some(gid.into()));
        }
        let child = self
            .command("postgres")
            .args(["-D", &self.data().display().to_string(), "-p", &self.port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", self.root.path().join("socket").display()),
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "fsync=on"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        // Should this process die without dropping the server (a test killed, a panic in a
        // static), a watchdog stops it and removes its files.
        let _ = Command::new("sh")
            .args([
                "-c",
                "while kill -0 $0 2>/dev/null; do sleep 1; done
                 if [ -e $2/data/postmaster.pid ]; then
                     kill -INT $1 2>/dev/null
                     n=0; while kill -0 $1 2>/dev/null && [ $n -lt 50 ]; do sleep 0.2; n=$((n+1)); done
                     kill -KILL $1 2>/dev/null
                 fi
                 # The server's children may outlive it a moment, still writing: until it is gone.
                 n=0; while [ -e $2 ] && [ $n -lt 30 ]; do rm -rf $2 2>/dev/null; sleep 1; n=$((n+1)); done",
            ])
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                return Err(format!("postgres exited ({status}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("postgres did not accept connections within 30 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the server with `signal` and waits for it (SIGKILL: a crash; SIGINT: a fast
    /// shutdown that aborts open transactions).
    pub fn kill(&mut self, signal: nix::sys::signal::Signal) {
        // A frozen server would not see the signal.
        self.signal_all(nix::sys::signal::Signal::SIGCONT);
        if let Some(mut child) = self.server.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
            // After a SIGKILL the backends may outlive the postmaster for a moment; they hold
            // the port and shared memory until they notice.
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.data().join("postmaster.pid").exists() && Instant::now() < deadline {
                if signal == nix::sys::signal::Signal::SIGKILL {
                    let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Sends `signal` to the server and every process it started (SIGSTOP freezes the whole
    /// server: connections stay open, the kernel still acknowledges, nothing answers).
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        let Some(postmaster) = self.pid() else { return };
        let mut pids = vec![postmaster as i32];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // The parent pid is the second field after the command's closing parenthesis.
            let parent =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    pub fn stop(&mut self) {
        self.kill(nix::sys::signal::Signal::SIGINT);
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unprivileged_user() -> Result<(u32, u32), String> {
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            return Ok((user.uid.as_raw(), user.gid.as_raw()));
        }
    }
    Err("running as root, and there is no postgres or nobody user to run PostgreSQL as".into())
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
