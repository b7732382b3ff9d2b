//! The lease: who leads, in which epoch, and a heartbeat counter the leader bumps.
//!
//! The shared-directory backend keeps it in `<shared>/election/lease`, a small JSON file
//! replaced atomically (temp file, fsync, rename, fsync the directory) and only while holding an
//! exclusive `flock` on `<shared>/election/lock`, so every change is a compare-and-swap: the
//! writer states the lease it saw, and the write fails if another node changed it since. The
//! storage is the arbiter, as with the original product's shared-file lock; NFSv4 supports
//! these locks.

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a leadership term is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// The holder took the lease and is starting; it must be ready within startwait.
    Starting,
    /// The holder is the ready active.
    Active,
    /// The holder gave the lease up (planned switchover, or a start that took too long): the
    /// other node may take it at once.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node id of the holder.
    pub holder: String,
    /// The holder's URL, so a standby can tell clients where the active is.
    pub advertise: String,
    pub epoch: u64,
    /// Bumped by every renewal; a standby watches it change.
    pub counter: u64,
    pub state: LeaseState,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease changed since the writer read it: someone else acted first.
    #[error("the lease changed since it was read")]
    Conflict,
    #[error("lease store: {0}")]
    Io(String),
}

/// Storage for the lease with compare-and-swap writes.
pub trait LeaseStore: Send + Sync {
    /// The current lease, `None` before any node took it.
    fn read(&self) -> Result<Option<Lease>, StoreError>;
    /// Replaces the lease with `new` if it is still `expected`.
    fn swap(&self, expected: Option<&Lease>, new: &Lease) -> Result<(), StoreError>;
}

/// The lease in the shared directory.
#[derive(Debug, Clone)]
pub struct FileLeaseStore {
    dir: PathBuf,
}

impl FileLeaseStore {
    /// `dir` is `<shared>/election`; it must exist.
    pub fn new(dir: impl Into<PathBuf>) -> FileLeaseStore {
        FileLeaseStore { dir: dir.into() }
    }

    fn lease_path(&self) -> PathBuf {
        self.dir.join("lease")
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(|e| StoreError::Io(format!("opening the lock file: {e}")))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io(format!("locking: {e}")))
    }

    fn read_unlocked(&self) -> Result<Option<Lease>, StoreError> {
        match fs::read(self.lease_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Io(format!("lease file is damaged: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(format!("reading the lease: {e}"))),
        }
    }
}

impl LeaseStore for FileLeaseStore {
    fn read(&self) -> Result<Option<Lease>, StoreError> {
        // The file is replaced by rename, so a reader sees a whole old or a whole new lease
        // without taking the lock.
        self.read_unlocked()
    }

    fn swap(&self, expected: Option<&Lease>, new: &Lease) -> Result<(), StoreError> {
        if pollux_failpoint::hit("shared.write") {
            return Err(StoreError::Io("injected fault shared.write".into()));
        }
        let _lock = self.lock()?;
        if self.read_unlocked()?.as_ref() != expected {
            return Err(StoreError::Conflict);
        }
        let bytes = serde_json::to_vec(new).expect("a lease serializes");
        write_atomically(&self.dir, &self.lease_path(), &bytes)
            .map_err(|e| StoreError::Io(format!("writing the lease: {e}")))
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!("lease.tmp.{}", std::process::id()));
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, epoch: u64, counter: u64) -> Lease {
        Lease { holder: holder.into(), advertise: String::new(), epoch, counter, state: LeaseState::Active }
    }

    #[test]
    fn swaps_only_from_the_expected_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLeaseStore::new(dir.path());
        assert_eq!(store.read().unwrap(), None);
        store.swap(None, &lease("a", 1, 0)).unwrap();
        assert!(matches!(store.swap(None, &lease("b", 1, 0)), Err(StoreError::Conflict)));
        store.swap(Some(&lease("a", 1, 0)), &lease("a", 1, 1)).unwrap();
        assert!(matches!(store.swap(Some(&lease("a", 1, 0)), &lease("b", 2, 0)), Err(StoreError::Conflict)));
        assert_eq!(store.read().unwrap(), Some(lease("a", 1, 1)));
    }

    #[test]
    fn concurrent_takeovers_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileLeaseStore::new(dir.path()));
        store.swap(None, &lease("old", 1, 7)).unwrap();
        let winners: usize = (0..8)
            .map(|n| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.swap(Some(&lease("old", 1, 7)), &lease(&format!("n{n}"), 2, 0)).is_ok() as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(winners, 1);
    }
}
