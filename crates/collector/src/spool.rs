//! The spool: every DTO is fsync'd here before it is sent, and removed only once an aggregator
//! answered 201 or 200 for it. A collector killed at any moment finds, on restart, exactly the
//! DTOs that were not acknowledged, and sends them again (an aggregator answers 200 to an id it
//! already has, so a resend is harmless).
//!
//! ```text
//! <spool_dir>/outbox/<cycle>.<id>.pxd   DTOs waiting, binary codec (checksummed), sent in name order
//! <spool_dir>/tmp/                      files being written; leftovers are deleted at start
//! <spool_dir>/rejected/                 DTOs an aggregator refused (400/413/415): kept, never sent again
//! <spool_dir>/state-<interval>s.json    previous counters (see crate::state)
//! ```
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

/// One DTO waiting in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub file_name: String,
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

fn file_name(cycle: UnixSeconds, id: &str) -> String {
    format!("{cycle:012}.{id}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<(UnixSeconds, String)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (cycle, id) = stem.split_once('.')?;
    Some((cycle.parse().ok()?, id.to_owned()))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating) the spool, deletes temp leftovers and indexes the outbox.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        let spool = Spool {
            outbox: dir.join("outbox"),
            tmp: dir.join("tmp"),
            rejected: dir.join("rejected"),
            max_bytes,
            index: Mutex::new(Index::default()),
            added: Condvar::new(),
        };
        for d in [&spool.outbox, &spool.tmp, &spool.rejected] {
            fs::create_dir_all(d)?;
        }
        for entry in fs::read_dir(&spool.tmp)? {
            fs::remove_file(entry?.path())?;
        }
        let mut index = spool.index.lock().expect("spool index");
        for entry in fs::read_dir(&spool.outbox)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match parse_name(&name) {
                Some((cycle, id)) => {
                    let bytes = entry.metadata()?.len();
                    index.bytes += bytes;
                    index.entries.insert(name.clone(), Entry { file_name: name, id, cycle, bytes });
                }
                None => tracing::warn!("{}: not a spooled DTO; left alone", entry.path().display()),
            }
        }
        drop(index);
        Ok(spool)
    }

    /// Writes a cycle's DTOs (`(cycle, id, encoded body)`), fsyncs them and the outbox, then
    /// makes them visible to the sender. Returns the DTOs dropped to stay within the bound.
    pub fn add(&self, dtos: &[(UnixSeconds, String, Vec<u8>)]) -> std::io::Result<Vec<Dropped>> {
        let mut added = Vec::with_capacity(dtos.len());
        for (cycle, id, body) in dtos {
            let name = file_name(*cycle, id);
            let temp = self.tmp.join(&name);
            let mut file = File::create(&temp)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&temp, self.outbox.join(&name))?;
            added.push(Entry { file_name: name, id: id.clone(), cycle: *cycle, bytes: body.len() as u64 });
        }
        sync_dir(&self.outbox)?;
        let mut index = self.index.lock().expect("spool index");
        for entry in added {
            index.bytes += entry.bytes;
            if let Some(old) = index.entries.insert(entry.file_name.clone(), entry) {
                index.bytes -= old.bytes;
            }
        }
        let mut dropped = Vec::new();
        while index.bytes > self.max_bytes {
            let Some((name, entry)) = index.entries.pop_first() else { break };
            index.bytes -= entry.bytes;
            match fs::remove_file(self.outbox.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
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
        fs::read(self.outbox.join(&entry.file_name))
    }

    /// Forgets an acknowledged DTO. Its file is unlinked without a directory fsync: if a crash
    /// undoes the unlink, the DTO is sent again and answered 200.
    pub fn remove(&self, entry: &Entry) -> std::io::Result<()> {
        self.forget(entry);
        match fs::remove_file(self.outbox.join(&entry.file_name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves a DTO an aggregator refused out of the outbox, keeping it for the operator.
    pub fn reject(&self, entry: &Entry) -> std::io::Result<()> {
        self.forget(entry);
        fs::rename(self.outbox.join(&entry.file_name), self.rejected.join(&entry.file_name))
    }

    fn forget(&self, entry: &Entry) {
        let mut index = self.index.lock().expect("spool index");
        // The index may hold a newer file of the same name (a cycle polled again after a
        // restart): subtract what the index held, not what the caller saw.
        if let Some(held) = index.entries.remove(&entry.file_name) {
            index.bytes -= held.bytes;
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
        spool
            .add(&[(200, "c.Interface.200.0".into(), body.clone()), (100, "c.CPU.100.0".into(), body.clone())])
            .unwrap();
        std::fs::write(dir.path().join("tmp/leftover.pxd"), b"x").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 2_500).unwrap();
        assert!(std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
        let oldest = spool.oldest(Duration::ZERO).unwrap();
        assert_eq!((oldest.cycle, oldest.id.as_str()), (100, "c.CPU.100.0"));
        let dropped = spool.add(&[(300, "c.CPU.300.0".into(), body.clone())]).unwrap();
        assert_eq!(dropped, vec![Dropped { id: "c.CPU.100.0".into(), cycle: 100 }]);
        assert_eq!(spool.depth(), (2, 2_000, Some(200)));
        let oldest = spool.oldest(Duration::ZERO).unwrap();
        spool.remove(&oldest).unwrap();
        let next = spool.oldest(Duration::ZERO).unwrap();
        spool.reject(&next).unwrap();
        assert_eq!(spool.depth(), (0, 0, None));
        assert!(dir.path().join("rejected").join(&next.file_name).exists());
        assert!(spool.oldest(Duration::from_millis(1)).is_none());
    }
}
