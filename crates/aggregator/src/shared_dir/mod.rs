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
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    fn collectors_dir(&self) -> PathBuf {
        self.root.join("collectors")
    }

    /// Keeps a collector's last report, with when it arrived, so a new active shows it at once.
    /// `Ok(false)`: a new collector past [`crate::status::MAX_COLLECTORS`], not kept.
    pub fn write_collector_report(
        &self,
        report: &crate::status::CollectorReport,
        received_at_ms: i64,
    ) -> std::io::Result<bool> {
        let dir = self.collectors_dir();
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", report.id));
        if !path.try_exists()? && fs::read_dir(&dir)?.count() >= crate::status::MAX_COLLECTORS {
            return Ok(false);
        }
        let body = serde_json::json!({"report": report, "received_at_ms": received_at_ms});
        let temp = dir.join(format!(".{}.json.tmp", report.id));
        fs::write(&temp, body.to_string())?;
        fs::rename(temp, path)?;
        Ok(true)
    }

    /// Forgets a collector that is gone for good; false when there was no report of that id.
    pub fn remove_collector_report(&self, id: &str) -> std::io::Result<bool> {
        match fs::remove_file(self.collectors_dir().join(format!("{id}.json"))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every collector's last report and when it arrived, by id.
    pub fn read_collector_reports(&self) -> Vec<(crate::status::CollectorReport, i64)> {
        let Ok(entries) = fs::read_dir(self.collectors_dir()) else { return Vec::new() };
        let mut reports: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
            .filter_map(|e| {
                let body: serde_json::Value = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((serde_json::from_value(body["report"].clone()).ok()?, body["received_at_ms"].as_i64()?))
            })
            .collect();
        reports.sort_by(|a: &(crate::status::CollectorReport, i64), b| a.0.id.cmp(&b.0.id));
        reports
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
    ///
    /// Never fails and never blocks: a file that cannot be used (not a regular file, a link out
    /// of the directory, too large, unreadable, invalid, or a name another family has) is
    /// skipped and reported in [`FamilyFiles::problems`], so one bad file can neither stop a
    /// node from starting nor from taking over. A file that was good in `previous` and is bad
    /// now keeps its previous definition: an operator's typo must not undefine a family whose
    /// DTOs are arriving.
    pub fn load_families(&self, previous: Option<&FamilyFiles>) -> FamilyFiles {
        let dir = self.families_dir();
        let mut files = FamilyFiles::default();
        let mut catalog = Catalog::builtin();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return files,
            Err(e) => {
                files.problems.push(FamilyProblem { path: dir, problem: format!("cannot be listed: {e}") });
                // Nothing can be read: keep what was defined.
                if let Some(previous) = previous {
                    files.catalog = previous.catalog.clone();
                    files.by_path = previous.by_path.clone();
                }
                return files;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
            .collect();
        // Files that defined a family at the last reading go first, so a new file that names
        // a family already in use is the one refused, never the file in use.
        paths.sort_by_key(|p| (!previous.is_some_and(|prev| prev.by_path.contains_key(p)), p.clone()));
        for path in paths {
            let read = read_family_file(&dir, &path);
            let family = match (read, previous.and_then(|p| p.by_path.get(&path))) {
                (Ok(family), _) => family,
                (Err(problem), Some(kept)) => {
                    let problem = format!("{problem}; keeping the definition of {} read before", kept.name);
                    files.problems.push(FamilyProblem { path: path.clone(), problem });
                    kept.as_ref().clone()
                }
                (Err(problem), None) => {
                    files.problems.push(FamilyProblem { path, problem });
                    continue;
                }
            };
            let name = family.name.clone();
            match catalog.add_custom(family) {
                Ok(()) => {
                    let family = catalog.get(&name).expect("just added").clone();
                    files.by_path.insert(path, family);
                }
                Err(e) => files.problems.push(FamilyProblem { path, problem: e.to_string() }),
            }
        }
        files.catalog = Arc::new(catalog);
        files
    }
}

/// Largest metric family file read: a family of 64 metrics with long descriptions is a few KiB.
pub const MAX_FAMILY_FILE_BYTES: u64 = 64 * 1024;

/// The customized families read from `metric-families/`, and what was wrong with the rest.
#[derive(Debug, Clone, Default)]
pub struct FamilyFiles {
    pub catalog: Arc<Catalog>,
    pub problems: Vec<FamilyProblem>,
    /// The family each good file defined, for keeping it when the file goes bad.
    by_path: BTreeMap<PathBuf, Arc<MetricFamily>>,
}

/// A family file that was skipped, and why (shown in the System Status).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FamilyProblem {
    pub path: PathBuf,
    pub problem: String,
}

/// Reads one family file without ever blocking or leaving the directory: a symbolic link is
/// followed only to a file inside `dir`, the file is opened non-blocking and without following
/// a link (a FIFO opens at once and is refused as not regular), and at most
/// [`MAX_FAMILY_FILE_BYTES`] are read. Problems never quote the file's content beyond what the
/// TOML parser says of a line of the family file itself.
fn read_family_file(dir: &Path, path: &Path) -> Result<MetricFamily, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let link = fs::symlink_metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    let target = if link.file_type().is_symlink() {
        let inside = fs::canonicalize(dir).map_err(|e| format!("cannot resolve the directory: {e}"))?;
        let target = fs::canonicalize(path).map_err(|e| format!("a symbolic link that cannot be resolved: {e}"))?;
        if target.parent() != Some(inside.as_path()) {
            return Err("a symbolic link out of metric-families/ is not followed".into());
        }
        target
    } else {
        path.to_owned()
    };
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(&target)
        .map_err(|e| format!("cannot be opened: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_FAMILY_FILE_BYTES {
        return Err(format!("{} bytes, over the limit of {MAX_FAMILY_FILE_BYTES}", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FAMILY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_FAMILY_FILE_BYTES {
        return Err(format!("over the limit of {MAX_FAMILY_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_owned())?;
    MetricFamily::from_toml(&text).map_err(|e| e.to_string())
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
    fn bad_family_files_are_skipped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::new(dir.path());
        shared.check(0).unwrap();
        let families = shared.families_dir();
        let family = |name: &str| format!("name = \"{name}\"\n[[metric]]\nname = \"c\"");
        fs::write(families.join("temp.toml"), family("Temp")).unwrap();
        fs::write(families.join("bad.toml"), "name = \"Bad\"\n[[metric]]\nname = \"X\"").unwrap();
        fs::write(families.join("big.toml"), " ".repeat(MAX_FAMILY_FILE_BYTES as usize + 1)).unwrap();
        fs::write(families.join("twin.toml"), family("TEMP")).unwrap();
        fs::write(families.join("zcpu.toml"), family("cpu")).unwrap();
        nix::unistd::mkfifo(&families.join("fifo.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", families.join("passwd.toml")).unwrap();
        std::os::unix::fs::symlink("temp.toml", families.join("zalias.toml")).unwrap();

        let files = shared.load_families(None);
        assert!(files.catalog.get("Temp").is_some() && files.catalog.get("CPU").unwrap().builtin);
        let problem = |file: &str| {
            files.problems.iter().find(|p| p.path.ends_with(file)).map(|p| p.problem.clone()).unwrap_or_default()
        };
        assert!(problem("bad.toml").contains("metric[0].name"), "{:?}", files.problems);
        assert!(problem("big.toml").contains("over the limit"));
        assert!(problem("twin.toml").contains("letter case"));
        assert!(problem("zcpu.toml").contains("built-in"));
        assert!(problem("fifo.toml").contains("not a regular file"));
        assert!(problem("passwd.toml").contains("symbolic link"));
        assert!(!files.problems.iter().any(|p| p.problem.contains("root:")), "no content of a linked file");
        // A link inside the directory is the same family again: refused as a duplicate name.
        assert!(problem("zalias.toml").contains("already"));
        assert_eq!(files.problems.len(), 7);

        // The good file goes bad: its family stays defined, and the problem says so.
        fs::write(families.join("temp.toml"), "name = \"Temp\"\n[[metric]]\nname = ").unwrap();
        let again = shared.load_families(Some(&files));
        assert!(again.catalog.get("Temp").is_some());
        assert!(again.problems.iter().any(|p| p.path.ends_with("temp.toml") && p.problem.contains("keeping")));
        // Without a previous reading (a restart) it is skipped.
        assert!(shared.load_families(None).catalog.get("Temp").is_none());

        // A new file naming a family in use is the one refused, whatever its name sorts as.
        fs::write(families.join("temp.toml"), family("Temp")).unwrap();
        let before = shared.load_families(None);
        fs::write(families.join("a-copy.toml"), "name = \"Temp\"\n[[metric]]\nname = \"other\"").unwrap();
        let after = shared.load_families(Some(&before));
        assert!(after.catalog.get("Temp").unwrap().metric("c").is_some());
        assert!(after.problems.iter().any(|p| p.path.ends_with("a-copy.toml") && p.problem.contains("already")));
    }
}
