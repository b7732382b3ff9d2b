//! The customized metric family files in `<shared>/metric-families/`, and the catalog the
//! aggregator holds in memory: the built-in families plus every good file.
//!
//! Reading never fails and never blocks (a FIFO, a link out of the directory, a file too large
//! are skipped and named); a file that was good and goes bad keeps its previous definition.

use super::SharedDir;
use pollux_model::wire::FamilyProblem;
use pollux_model::{Catalog, MetricFamily};
use pollux_repository::{Epoch, RepoError, Repository};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The catalog in force, read again on a schedule and at every takeover.
#[derive(Debug)]
pub struct Families {
    shared: SharedDir,
    files: RwLock<Arc<FamilyFiles>>,
}

impl Families {
    /// Reads the files once, logging every one skipped.
    pub fn read(shared: SharedDir) -> Families {
        let files = shared.load_families(None);
        for problem in &files.problems {
            tracing::error!(path = %problem.path.display(), problem = %problem.problem, "metric family file skipped");
        }
        Families { shared, files: RwLock::new(Arc::new(files)) }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.files.read().expect("families").catalog.clone()
    }

    /// The family files skipped at the last reading, and why.
    pub fn problems(&self) -> Vec<FamilyProblem> {
        self.files.read().expect("families").problems.clone()
    }

    /// Rereads `metric-families/` into memory. Returns the families that are new or changed.
    pub fn reread(&self) -> Vec<Arc<MetricFamily>> {
        let before = self.files.read().expect("families").clone();
        let files = self.shared.load_families(Some(&before));
        for problem in files.problems.iter().filter(|p| !before.problems.contains(p)) {
            tracing::error!(path = %problem.path.display(), problem = %problem.problem, "metric family file skipped");
        }
        let changed = files
            .catalog
            .iter()
            .filter(|f| before.catalog.get(&f.name).map(|b| b.as_ref()) != Some(f.as_ref()))
            .cloned()
            .collect();
        *self.files.write().expect("families") = Arc::new(files);
        changed
    }

    /// Rereads the files and widens the repository for new or changed families. A family the
    /// repository refuses (its name collides with one it holds) is logged; its DTOs wait in
    /// the store.
    pub fn define_changed(&self, repo: &dyn Repository, epoch: Epoch) -> Result<(), RepoError> {
        for family in self.reread() {
            match repo.ensure_family(epoch, &family) {
                Ok(()) => tracing::info!(family = %family.name, "metric family defined"),
                Err(RepoError::Rejected(why)) => tracing::error!(family = %family.name, %why, "metric family refused"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl SharedDir {
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

#[cfg(test)]
mod tests {
    use super::*;

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
