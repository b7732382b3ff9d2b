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
//! [`SharedDir::check`] is the start-up inspection of DESIGN.md section 4: the directory exists,
//! this user can write it, advisory locks work on it, and it has free space. It also tells
//! whether the directory is on NFS, where SQLite must not use WAL.

use nix::fcntl::{Flock, FlockArg};
use pollux_model::{Catalog, MetricFamily};
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
    #[error("metric family {path}: {problem}")]
    BadFamily { path: PathBuf, problem: String },
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
    pub fn repository_path(&self) -> PathBuf {
        self.root.join("repository.sqlite")
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
        crate::store::write_durably(&self.root, &self.fence_path(), format!("{epoch}\n").as_bytes())
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

    /// The built-in families and every `*.toml` in `metric-families/`.
    pub fn load_catalog(&self) -> Result<Catalog, SharedDirError> {
        let mut catalog = Catalog::builtin();
        let dir = self.families_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(catalog),
            Err(e) => return Err(SharedDirError::BadFamily { path: dir, problem: e.to_string() }),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let bad = |problem: String| SharedDirError::BadFamily { path: path.clone(), problem };
            let text = fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let family = MetricFamily::from_toml(&text).map_err(|e| bad(e.to_string()))?;
            catalog.add_custom(family).map_err(|e| bad(e.to_string()))?;
        }
        Ok(catalog)
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

    #[test]
    fn a_bad_family_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::new(dir.path());
        shared.check(0).unwrap();
        fs::write(shared.families_dir().join("temp.toml"), "name = \"Temp\"\n[[metric]]\nname = \"c\"").unwrap();
        assert!(shared.load_catalog().unwrap().get("Temp").is_some());
        fs::write(shared.families_dir().join("bad.toml"), "name = \"Bad\"\n[[metric]]\nname = \"X\"").unwrap();
        let err = shared.load_catalog().unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("metric[0].name"), "{err}");
    }
}
