//! The shared directory: the one place both aggregators meet.
//!
//! ```text
//! <shared>/
//!   election/lock       lock file for read-modify-write of the lease (and the start check)
//!   fence               the current epoch, written by a new leader before it touches anything
//!   dto/                whole DTO files only (see `store`)
//!   metric-families/    customized metric family definitions, *.toml
//!   repository.sqlite   the embedded Data Repository
//! ```
//!
//! [`SharedDir::check`] is the start-up inspection: the directory exists, this user can write
//! it, advisory locks work on it, and it has free space. It also tells whether the directory is
//! on NFS, where SQLite must not use WAL.
//!
//! - this module: the layout, the start-up check, the fence, maintenance flags and the nodes'
//!   status files;
//! - [`collectors`]: the collectors' last reports;
//! - [`families`]: the customized metric family files.

pub mod collectors;
pub mod families;

use nix::fcntl::{Flock, FlockArg};
use pollux_repository::Epoch;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the start-up check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedDirReport {
    pub path: PathBuf,
    pub free_bytes: u64,
    pub nfs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SharedDirError {
    #[error("shared dir {path}: {problem}")]
    Unusable { path: PathBuf, problem: String },
    #[error(
        "node id {node} is in use by {holder} (it holds {}): each aggregator needs a node id of its own",
        lock.display()
    )]
    NodeInUse { node: String, holder: String, lock: PathBuf },
}

#[derive(Debug, Clone)]
pub struct SharedDir {
    root: PathBuf,
}

impl SharedDir {
    pub fn new(root: impl Into<PathBuf>) -> SharedDir {
        SharedDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dto_dir(&self) -> PathBuf {
        self.root.join("dto")
    }
    pub fn families_dir(&self) -> PathBuf {
        self.root.join("metric-families")
    }
    pub fn election_dir(&self) -> PathBuf {
        self.root.join("election")
    }
    fn fence_path(&self) -> PathBuf {
        self.root.join("fence")
    }

    /// Inspects the directory and creates its layout; refuses with the first problem found.
    pub fn check(&self, min_free_bytes: u64) -> Result<SharedDirReport, SharedDirError> {
        let unusable = |problem: String| SharedDirError::Unusable { path: self.root.clone(), problem };
        let meta = fs::metadata(&self.root).map_err(|e| unusable(format!("cannot be read: {e}")))?;
        if !meta.is_dir() {
            return Err(unusable("is not a directory".into()));
        }
        for dir in [self.dto_dir(), self.families_dir(), self.election_dir()] {
            fs::create_dir_all(&dir).map_err(|e| unusable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let probe = self.root.join(format!(".probe.{}", std::process::id()));
        let written = File::create(&probe).and_then(|mut f| f.write_all(b"pollux").and_then(|_| f.sync_all()));
        let _ = fs::remove_file(&probe);
        written.map_err(|e| unusable(format!("is not writable by this user: {e}")))?;

        let lock_path = self.election_dir().join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unusable(format!("cannot open {}: {e}", lock_path.display())))?;
        let locked = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| unusable(format!("advisory locks do not work here ({e}); on NFS use v4 or later")))?;
        drop(locked);

        let free_bytes = free_bytes(&self.root).map_err(|e| unusable(format!("statvfs failed: {e}")))?;
        if free_bytes < min_free_bytes {
            return Err(unusable(format!(
                "only {} MiB free, less than min_free_bytes ({} MiB)",
                free_bytes >> 20,
                min_free_bytes >> 20
            )));
        }
        let nfs = nix::sys::statfs::statfs(&self.root)
            .map(|s| s.filesystem_type() == nix::sys::statfs::NFS_SUPER_MAGIC)
            .unwrap_or(false);
        Ok(SharedDirReport { path: self.root.clone(), free_bytes, nfs })
    }

    /// Free bytes now, for health reporting.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.root).ok()
    }

    /// The epoch in the fence file (0 when there is none yet).
    pub fn read_fence(&self) -> std::io::Result<Epoch> {
        match fs::read_to_string(self.fence_path()) {
            Ok(text) => text.trim().parse().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("fence file holds {text:?}"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Durably replaces the fence file with `epoch`; refuses to lower it (a slow starter of an
    /// older epoch must not undo a newer leader's fence).
    pub fn write_fence(&self, epoch: Epoch) -> std::io::Result<()> {
        if pollux_failpoint::hit("shared.write") {
            return Err(std::io::Error::other("injected fault shared.write"));
        }
        let current = self.read_fence()?;
        if current > epoch {
            return Err(std::io::Error::other(format!("the fence is already at epoch {current}, above {epoch}")));
        }
        crate::ingest::store::write_durably(&self.root, &self.fence_path(), format!("{epoch}\n").as_bytes())
    }

    /// Holds this node id for the life of the process: an exclusive lock on
    /// `election/nodes/<node>.lock`, which names the holder. A second process with the same
    /// node id (a copied service unit, a cloned machine) would otherwise take turns with the
    /// first at the lease and churn epochs: it is refused at start, the holder named. The kernel
    /// releases the lock when the holder dies, however it dies (on NFSv4, when its lease ends).
    pub fn hold_node(&self, node: &str) -> Result<File, SharedDirError> {
        let unusable = |problem: String| SharedDirError::Unusable { path: self.root.clone(), problem };
        let dir = self.nodes_dir();
        fs::create_dir_all(&dir).map_err(|e| unusable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{node}.lock"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| unusable(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(SharedDirError::NodeInUse {
                    node: node.to_owned(),
                    holder: if holder.is_empty() { "another process".to_owned() } else { holder.to_owned() },
                    lock: path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(unusable(format!("cannot lock {}: {e}", path.display())));
            }
        }
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        let holder = format!("pid {} on host {host}\n", std::process::id());
        let _ = file.set_len(0).and_then(|()| file.write_all(holder.as_bytes()));
        Ok(file)
    }

    fn nodes_dir(&self) -> PathBuf {
        self.election_dir().join("nodes")
    }

    /// Replaces this node's status file (`election/nodes/<node>.json`), read by every node's
    /// System Status view. Not fsync'd: it is a report, rewritten every heartbeat.
    pub fn write_node_status(&self, node: &str, body: &[u8]) -> std::io::Result<()> {
        let dir = self.nodes_dir();
        fs::create_dir_all(&dir)?;
        let temp = dir.join(format!(".{node}.json.tmp"));
        fs::write(&temp, body)?;
        fs::rename(temp, dir.join(format!("{node}.json")))
    }

    /// Whether `node` is in maintenance: a file `election/maintenance/<node>` says so, so the
    /// state survives restarts and either node can set it for the other.
    /// An error (an NFS server away) is an error, not "no": the caller keeps what it knew.
    pub fn in_maintenance(&self, node: &str) -> std::io::Result<bool> {
        self.election_dir().join("maintenance").join(node).try_exists()
    }

    /// The nodes whose maintenance file exists.
    pub fn nodes_in_maintenance(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.election_dir().join("maintenance")) else { return Vec::new() };
        let mut nodes: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        nodes.sort();
        nodes
    }

    /// Decides and sets `node`'s maintenance flag as one step: under an exclusive lock on
    /// `election/maintenance.lock`, which every such change takes on every node, `decide` sees
    /// the nodes in maintenance now, and the flag is written only if it agrees. Returns its
    /// verdict; an I/O error is the outer error.
    pub fn change_maintenance<E>(
        &self,
        node: &str,
        on: bool,
        decide: impl FnOnce(&[String]) -> Result<(), E>,
    ) -> std::io::Result<Result<(), E>> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.election_dir().join("maintenance.lock"))?;
        let _held = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))?;
        if let Err(refused) = decide(&self.nodes_in_maintenance()) {
            return Ok(Err(refused));
        }
        self.set_maintenance(node, on)?;
        Ok(Ok(()))
    }

    /// Puts `node` into maintenance or takes it out (durably: the directory is synced).
    pub fn set_maintenance(&self, node: &str, on: bool) -> std::io::Result<()> {
        let dir = self.election_dir().join("maintenance");
        fs::create_dir_all(&dir)?;
        let path = dir.join(node);
        if on {
            let file = fs::File::create(&path)?;
            file.sync_all()?;
        } else if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        fs::File::open(&dir)?.sync_all()
    }

    /// Every node's last status report, by node id.
    pub fn read_node_statuses(&self) -> Vec<(String, serde_json::Value)> {
        let Ok(entries) = fs::read_dir(self.nodes_dir()) else { return Vec::new() };
        let mut nodes: Vec<(String, serde_json::Value)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let node = name.strip_suffix(".json")?.to_owned();
                let body = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                (!node.starts_with('.')).then_some((node, body))
            })
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes
    }
}

fn free_bytes(path: &Path) -> nix::Result<u64> {
    let vfs = nix::sys::statvfs::statvfs(path)?;
    // The field widths differ between platforms; on Linux x86_64 both are already u64.
    #[allow(clippy::unnecessary_cast)]
    Ok(vfs.blocks_available() as u64 * vfs.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_creates_the_layout_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::new(dir.path());
        let report = shared.check(0).unwrap();
        assert!(report.free_bytes > 0);
        assert!(shared.dto_dir().is_dir() && shared.families_dir().is_dir());
        assert_eq!(shared.read_fence().unwrap(), 0);
        shared.write_fence(7).unwrap();
        assert_eq!(shared.read_fence().unwrap(), 7);
    }

    #[test]
    fn check_refuses_what_cannot_work() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SharedDir::new(dir.path().join("absent"));
        assert!(missing.check(0).unwrap_err().to_string().contains("cannot be read"));
        let full = SharedDir::new(dir.path());
        assert!(full.check(u64::MAX).unwrap_err().to_string().contains("free"));
    }
}
