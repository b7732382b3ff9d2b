//! The spool: every DTO is fsync'd here before it is sent, and removed only once an aggregator
//! answered 201 or 200 for it. A collector killed at any moment finds, on restart, exactly the
//! DTOs that were not acknowledged, and sends them again (an aggregator answers 200 to an id it
//! already has, so a resend is harmless).
//!
//! ```text
//! <spool_dir>/outbox/<cycle>.<interval>s/<id>.pxd  one cycle's DTOs (binary codec, checksummed),
//!                                                  sent in name order
//! <spool_dir>/tmp/                                 a cycle being written; deleted at start
//! <spool_dir>/rejected/                            DTOs an aggregator refused (400/413/415/422)
//! <spool_dir>/state-<interval>s.json               previous counters (see crate::state)
//! <spool_dir>/.lock                                flock'd by the one process using the spool;
//!                                                  holds its pid and host name
//! ```
//!
//! One spool, one process: two collectors sharing a directory (a copied service unit) would
//! delete each other's cycles being written, send and remove each other's DTOs, and rewrite
//! each other's counters. [`Spool::open`] takes an exclusive `flock` on `.lock` without waiting
//! and keeps it for the life of the spool (the kernel drops it when the process dies, even by
//! kill -9); a second process is refused, told who holds it.
//!
//! A cycle's DTOs are written into a directory under `tmp/`, each fsync'd, and the directory is
//! renamed into `outbox/` in one step: a cycle is in the spool whole or not at all. So a
//! collector restarted in the middle of a cycle either finds it (and does not poll it again,
//! which could move items between parts already sent and parts not) or polls it afresh.
//!
//! The spool is bounded (`spool_max_bytes`): when a new batch would pass the bound, the oldest
//! DTOs are deleted, each one logged as an error and counted in `pollux_collector_dropped_total`.
//! An outage long enough for that is the one case where a collector loses data, and it says so.

use pollux_model::UnixSeconds;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

const SUFFIX: &str = ".pxd";
const LOCK_FILE: &str = ".lock";

/// Why a spool cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the spool's lock.
    #[error(
        "spool directory {} is in use by {holder} (it holds {}): each collector needs a spool directory of its own",
        dir.display(),
        dir.join(LOCK_FILE).display()
    )]
    InUse { dir: PathBuf, holder: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One DTO waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `<batch directory>/<id>.pxd`, relative to the outbox: the sending order.
    pub path: String,
    pub id: String,
    pub cycle: UnixSeconds,
    pub bytes: u64,
}

/// The outbox's contents, in sending order, and their total size.
#[derive(Default)]
struct Index {
    entries: BTreeMap<String, Entry>,
    bytes: u64,
}

pub struct Spool {
    /// Locked (flock) while the spool is open; closing it releases the lock.
    _lock: File,
    outbox: PathBuf,
    tmp: PathBuf,
    rejected: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Signalled when DTOs are added, so the sender wakes at once.
    added: Condvar,
}

/// A DTO dropped to keep the spool within its bound.
#[derive(Debug, PartialEq)]
pub struct Dropped {
    pub id: String,
    pub cycle: UnixSeconds,
}

fn batch_name(cycle: UnixSeconds, interval: u32) -> String {
    format!("{cycle:012}.{interval}s")
}

fn parse_batch(name: &str) -> Option<UnixSeconds> {
    name.split_once('.')?.0.parse().ok()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn ignore_missing(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `pid <pid> on host <name>`: who holds a spool's lock, as written in it.
fn holder_line() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "an unknown host".to_owned() } else { format!("host {host}") };
    format!("pid {} on {host}", std::process::id())
}

/// Takes the spool's lock without waiting, and writes this process into it.
fn lock(dir: &Path) -> Result<File, OpenError> {
    use std::io::{Read, Seek};
    let path = dir.join(LOCK_FILE);
    // Not truncated on open: the holder's line is read back when the lock is taken.
    let mut file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            // The holder writes its line just after locking: give it a moment if it is empty.
            let mut holder = String::new();
            for _ in 0..10 {
                holder.clear();
                file.rewind()?;
                (&file).take(256).read_to_string(&mut holder)?;
                if !holder.trim().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let holder = holder.lines().next().unwrap_or_default().trim();
            let holder = if holder.is_empty() { "another process".to_owned() } else { holder.to_owned() };
            return Err(OpenError::InUse { dir: dir.to_owned(), holder });
        }
        Err(fs::TryLockError::Error(e)) => return Err(OpenError::Io(e)),
    }
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(format!("{}\n", holder_line()).as_bytes())?;
    Ok(file)
}

impl Spool {
    /// Locks (see the module's doc) and opens (creating) the spool, deletes what was being
    /// written and indexes the outbox.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, OpenError> {
        fs::create_dir_all(dir)?;
        // Before anything else: tmp/ may hold the cycle another process is writing.
        let lock = lock(dir)?;
        let spool = Spool {
            _lock: lock,
            outbox: dir.join("outbox"),
            tmp: dir.join("tmp"),
            rejected: dir.join("rejected"),
            max_bytes,
            index: Mutex::new(Index::default()),
            added: Condvar::new(),
        };
        if spool.tmp.exists() {
            fs::remove_dir_all(&spool.tmp)?;
        }
        for d in [&spool.outbox, &spool.tmp, &spool.rejected] {
            fs::create_dir_all(d)?;
        }
        let mut index = spool.index.lock().expect("spool index");
        for batch in fs::read_dir(&spool.outbox)? {
            let batch = batch?;
            let batch_name = batch.file_name().to_string_lossy().into_owned();
            let Some(cycle) = parse_batch(&batch_name).filter(|_| batch.path().is_dir()) else {
                tracing::warn!("{}: not a spooled cycle; left alone", batch.path().display());
                continue;
            };
            for file in fs::read_dir(batch.path())? {
                let file = file?;
                let name = file.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(SUFFIX) else { continue };
                let bytes = file.metadata()?.len();
                let path = format!("{batch_name}/{name}");
                index.bytes += bytes;
                index.entries.insert(path.clone(), Entry { path, id: id.to_owned(), cycle, bytes });
            }
            // A cycle whose DTOs were all sent before the crash leaves an empty directory.
            let _ = fs::remove_dir(batch.path());
        }
        drop(index);
        Ok(spool)
    }

    /// Whether a cycle's DTOs are waiting in the outbox.
    pub fn has_cycle(&self, cycle: UnixSeconds, interval: u32) -> bool {
        self.outbox.join(batch_name(cycle, interval)).is_dir()
    }

    /// Writes a cycle's DTOs (`(id, encoded body)`), fsyncs them, and moves them into the
    /// outbox in one rename. Returns the DTOs dropped to stay within the bound.
    pub fn add(&self, cycle: UnixSeconds, interval: u32, dtos: &[(String, Vec<u8>)]) -> std::io::Result<Vec<Dropped>> {
        let batch = batch_name(cycle, interval);
        let temp = self.tmp.join(&batch);
        if temp.exists() {
            fs::remove_dir_all(&temp)?;
        }
        fs::create_dir(&temp)?;
        let mut added = Vec::with_capacity(dtos.len());
        for (id, body) in dtos {
            let name = format!("{id}{SUFFIX}");
            let mut file = File::create(temp.join(&name))?;
            file.write_all(body)?;
            file.sync_all()?;
            let path = format!("{batch}/{name}");
            added.push(Entry { path, id: id.clone(), cycle, bytes: body.len() as u64 });
        }
        sync_dir(&temp)?;
        let target = self.outbox.join(&batch);
        if target.exists() {
            // The same cycle spooled twice in one run is a bug elsewhere; keep both polls'
            // DTOs rather than lose one (same ids: the newer file wins).
            tracing::error!("cycle {batch} is already in the spool; merging");
            for entry in &added {
                let name = entry.path.rsplit('/').next().unwrap_or_default();
                fs::rename(temp.join(name), target.join(name))?;
            }
            sync_dir(&target)?;
            fs::remove_dir(&temp)?;
        } else {
            fs::rename(&temp, &target)?;
        }
        sync_dir(&self.outbox)?;
        let mut index = self.index.lock().expect("spool index");
        for entry in added {
            index.bytes += entry.bytes;
            if let Some(old) = index.entries.insert(entry.path.clone(), entry) {
                index.bytes -= old.bytes;
            }
        }
        let mut dropped = Vec::new();
        while index.bytes > self.max_bytes {
            let Some((path, entry)) = index.entries.pop_first() else { break };
            index.bytes -= entry.bytes;
            ignore_missing(fs::remove_file(self.outbox.join(&path)))?;
            self.remove_batch_if_empty(&path);
            dropped.push(Dropped { id: entry.id, cycle: entry.cycle });
        }
        drop(index);
        self.added.notify_all();
        Ok(dropped)
    }

    /// The oldest waiting DTO, waiting up to `wait` for one.
    pub fn oldest(&self, wait: Duration) -> Option<Entry> {
        let index = self.index.lock().expect("spool index");
        let (index, _) = self.added.wait_timeout_while(index, wait, |i| i.entries.is_empty()).expect("spool index");
        index.entries.values().next().cloned()
    }

    pub fn read(&self, entry: &Entry) -> std::io::Result<Vec<u8>> {
        fs::read(self.outbox.join(&entry.path))
    }

    /// Where an entry's file is.
    pub fn file(&self, entry: &Entry) -> PathBuf {
        self.outbox.join(&entry.path)
    }

    /// Forgets a DTO whose file is gone. True if the spool still held it; false if the spool
    /// itself dropped it in the meantime (to stay within its bound: counted there).
    pub fn vanished(&self, entry: &Entry) -> bool {
        let held = self.forget(entry);
        self.remove_batch_if_empty(&entry.path);
        held
    }

    /// Forgets an acknowledged DTO. Its file is unlinked without a directory fsync: if a crash
    /// undoes the unlink, the DTO is sent again and answered 200.
    pub fn remove(&self, entry: &Entry) -> std::io::Result<()> {
        self.forget(entry);
        ignore_missing(fs::remove_file(self.outbox.join(&entry.path)))?;
        self.remove_batch_if_empty(&entry.path);
        Ok(())
    }

    /// Moves a DTO an aggregator refused out of the outbox, keeping it for the operator.
    pub fn reject(&self, entry: &Entry) -> std::io::Result<()> {
        self.forget(entry);
        let kept = entry.path.replace('/', ".");
        fs::rename(self.outbox.join(&entry.path), self.rejected.join(kept))?;
        self.remove_batch_if_empty(&entry.path);
        Ok(())
    }

    fn remove_batch_if_empty(&self, path: &str) {
        if let Some((batch, _)) = path.split_once('/') {
            // Fails while the cycle still has DTOs waiting, which is what we want.
            let _ = fs::remove_dir(self.outbox.join(batch));
        }
    }

    /// Removes an entry from the index; false if it was not there.
    fn forget(&self, entry: &Entry) -> bool {
        let mut index = self.index.lock().expect("spool index");
        match index.entries.remove(&entry.path) {
            Some(held) => {
                index.bytes -= held.bytes;
                true
            }
            None => false,
        }
    }

    /// (DTOs waiting, their bytes, the oldest one's cycle).
    pub fn depth(&self) -> (usize, u64, Option<UnixSeconds>) {
        let index = self.index.lock().expect("spool index");
        (index.entries.len(), index.bytes, index.entries.values().next().map(|e| e.cycle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening_in_cycle_order_and_drops_the_oldest_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2_500).unwrap();
        let body = vec![7u8; 1_000];
        spool.add(200, 100, &[("c.Interface.200.0".into(), body.clone())]).unwrap();
        spool.add(100, 100, &[("c.CPU.100.0".into(), body.clone())]).unwrap();
        // A cycle half-written when the collector died.
        std::fs::create_dir_all(dir.path().join("tmp/000000000300.100s")).unwrap();
        std::fs::write(dir.path().join("tmp/000000000300.100s/c.CPU.300.0.pxd"), b"x").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 2_500).unwrap();
        assert!(std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
        assert!(spool.has_cycle(100, 100) && spool.has_cycle(200, 100) && !spool.has_cycle(300, 100));
        let oldest = spool.oldest(Duration::ZERO).unwrap();
        assert_eq!((oldest.cycle, oldest.id.as_str()), (100, "c.CPU.100.0"));
        let dropped = spool.add(300, 100, &[("c.CPU.300.0".into(), body.clone())]).unwrap();
        assert_eq!(dropped, vec![Dropped { id: "c.CPU.100.0".into(), cycle: 100 }]);
        assert!(!spool.has_cycle(100, 100), "a cycle whose DTOs are all gone leaves no directory");
        assert_eq!(spool.depth(), (2, 2_000, Some(200)));
        let oldest = spool.oldest(Duration::ZERO).unwrap();
        spool.remove(&oldest).unwrap();
        let next = spool.oldest(Duration::ZERO).unwrap();
        spool.reject(&next).unwrap();
        assert_eq!(spool.depth(), (0, 0, None));
        assert!(dir.path().join("rejected").join(next.path.replace('/', ".")).exists());
        assert!(spool.oldest(Duration::from_millis(1)).is_none());
    }

    #[test]
    fn one_process_at_a_time_and_the_refusal_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        // flock belongs to the open file, so a second open in this process is refused too.
        let refused = Spool::open(dir.path(), 1 << 20).err().expect("a second open is refused");
        let message = refused.to_string();
        assert!(matches!(refused, OpenError::InUse { .. }), "{message}");
        let pid = format!("pid {} on ", std::process::id());
        assert!(message.contains(&dir.path().display().to_string()) && message.contains(&pid), "{message}");
        drop(spool);
        let _again = Spool::open(dir.path(), 1 << 20).unwrap();
        let lock = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(lock.starts_with(&pid) && lock.lines().count() == 1, "{lock:?}");
    }

    #[test]
    fn a_vanished_file_is_forgotten_unless_the_bound_dropped_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64 << 10).unwrap();
        spool.add(100, 100, &[("c.CPU.100.0".into(), vec![1u8; 40_000])]).unwrap();
        let first = spool.oldest(Duration::ZERO).unwrap();
        std::fs::remove_file(spool.file(&first)).unwrap();
        assert!(spool.vanished(&first));
        assert_eq!(spool.depth(), (0, 0, None));
        assert!(!spool.has_cycle(100, 100), "an emptied cycle leaves no directory");
        // Taken up by the sender, then dropped by the bound before it was read.
        spool.add(200, 100, &[("c.CPU.200.0".into(), vec![2u8; 40_000])]).unwrap();
        let taken = spool.oldest(Duration::ZERO).unwrap();
        let dropped = spool.add(300, 100, &[("c.CPU.300.0".into(), vec![3u8; 40_000])]).unwrap();
        assert_eq!(dropped, vec![Dropped { id: "c.CPU.200.0".into(), cycle: 200 }]);
        assert!(!spool.vanished(&taken), "already counted as dropped");
        assert_eq!(spool.depth(), (1, 40_000, Some(300)));
    }
}
