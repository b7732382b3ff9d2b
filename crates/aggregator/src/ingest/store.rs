//! The DTO store: `<shared>/dto/`, the durable queue between ingest and the loader.
//!
//! A DTO file is either whole or absent. It is written as a temp file, fsync'd, published under
//! its final name with `link(2)` (which, unlike `rename`, fails if the name exists, so two
//! concurrent PUTs of one id cannot both win, and works the same on NFS), and the directory is
//! fsync'd before the PUT is answered. A temp file left by a crash is discarded by the next
//! active aggregator; its sender never got a 201 for it and still holds it in its spool.
//!
//! ```text
//!   tmp/<id>.<pid>.<n>  ── fsync, link ──▶  <id>.dto  ── loaded, committed ──▶ removed
//!                                              └── undecodable ──▶ quarantine/<id>.dto
//! ```
//!
//! Temp files live in their own subdirectory, so no DTO id can ever look like one.
//!
//! File format: `"PXF1"`, the storing epoch (u64 LE), a CRC32 of those 12 bytes, then the DTO
//! in the binary codec (which carries its own checksum).

use pollux_model::codec::binary;
use pollux_model::{Dto, DtoError};
use pollux_repository::Epoch;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

const MAGIC: &[u8; 4] = b"PXF1";
const HEADER_LEN: usize = 16;
const SUFFIX: &str = ".dto";
const TEMP_DIR: &str = "tmp";

/// What [`DtoStore::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The DTO is now durable in the store.
    Stored,
    /// A DTO with this id was already in the store: nothing was written.
    AlreadyStored,
}

/// A DTO read back from the store, with the epoch of the aggregator that acknowledged it.
#[derive(Debug)]
pub struct StoredDto {
    pub dto: Dto,
    pub epoch: Epoch,
}

/// A file in the store that cannot be read back as a DTO.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("damaged DTO file: {0}")]
    Damaged(String),
}

#[derive(Debug)]
pub struct DtoStore {
    dir: PathBuf,
    temp_counter: AtomicU64,
}

impl DtoStore {
    /// The store in `dir`, creating its temp subdirectory.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<DtoStore> {
        let dir = dir.into();
        fs::create_dir_all(dir.join(TEMP_DIR))?;
        Ok(DtoStore { dir, temp_counter: AtomicU64::new(0) })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    /// Makes `dto` durable unless its id is already stored. Returns only after the file and the
    /// directory entry are on disk.
    pub fn store(&self, dto: &Dto, epoch: Epoch) -> io::Result<StoreOutcome> {
        let final_path = self.path(&dto.id);
        if final_path.exists() {
            // The first PUT may have failed before its directory fsync: make the entry durable
            // before this one is acknowledged.
            sync_dir(&self.dir)?;
            return Ok(StoreOutcome::AlreadyStored);
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + 64 + dto.records.len() * 64);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&epoch.to_le_bytes());
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&binary::encode(dto));

        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(TEMP_DIR).join(format!("{epoch}.{}.{}.{n}", dto.id, std::process::id()));
        let result = self.publish(&temp, &final_path, &bytes);
        let _ = fs::remove_file(&temp);
        result
    }

    fn publish(&self, temp: &Path, final_path: &Path, bytes: &[u8]) -> io::Result<StoreOutcome> {
        if pollux_failpoint::hit("shared.write") {
            return Err(io::Error::other("injected fault shared.write"));
        }
        let mut file = File::create(temp)?;
        if pollux_failpoint::ENABLED {
            let half = bytes.len() / 2;
            file.write_all(&bytes[..half])?;
            file.flush()?;
            if pollux_failpoint::hit("store.mid_write") {
                return Err(io::Error::other("injected fault store.mid_write"));
            }
            file.write_all(&bytes[half..])?;
        } else {
            file.write_all(bytes)?;
        }
        file.sync_all()?;
        drop(file);
        if pollux_failpoint::hit("store.before_link") {
            return Err(io::Error::other("injected fault store.before_link"));
        }
        match fs::hard_link(temp, final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                sync_dir(&self.dir)?;
                return Ok(StoreOutcome::AlreadyStored);
            }
            Err(e) => return Err(e),
        }
        sync_dir(&self.dir)?;
        if pollux_failpoint::hit("store.after_link") {
            return Err(io::Error::other("injected fault store.after_link"));
        }
        Ok(StoreOutcome::Stored)
    }

    /// Whether a DTO of this id is in the store now.
    pub fn contains(&self, id: &str) -> bool {
        self.path(id).exists()
    }

    /// Reads a stored DTO; `Ok(None)` when it is not (or no longer) in the store.
    pub fn read(&self, id: &str) -> Result<Option<StoredDto>, ReadError> {
        let bytes = match fs::read(self.path(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        decode_file(&bytes).map(Some)
    }

    /// Up to `limit` stored ids, oldest file first.
    pub fn list(&self, limit: usize) -> io::Result<Vec<String>> {
        let mut found: Vec<(SystemTime, String)> = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((modified, id.to_owned()));
        }
        found.sort_unstable();
        Ok(found.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    /// Number of stored DTOs and the age of the oldest, for health and `/metrics`.
    pub fn backlog(&self) -> io::Result<(usize, f64)> {
        let mut count = 0;
        let mut oldest = SystemTime::now();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(SUFFIX)) {
                count += 1;
                if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                    oldest = oldest.min(modified);
                }
            }
        }
        let age = SystemTime::now().duration_since(oldest).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Ok((count, age))
    }

    /// Removes a loaded DTO. Its id is in the repository's registry, so losing this removal in
    /// a crash only means the next loader finds the id loaded and removes the file then.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves an undecodable file aside, where an operator can inspect it; nothing is deleted.
    pub fn quarantine(&self, id: &str) -> io::Result<PathBuf> {
        let dir = self.dir.join("quarantine");
        fs::create_dir_all(&dir)?;
        let target = dir.join(format!("{id}{SUFFIX}"));
        fs::rename(self.path(id), &target)?;
        sync_dir(&self.dir)?;
        Ok(target)
    }

    /// Deletes the temp files of epochs up to `epoch`, left by a crash inside a write (their
    /// senders got no 201 for them) or being written by a deposed active (whose link then
    /// fails, so it answers no 201 either). A newer epoch's files are never touched, so a start
    /// that lost its epoch while it ran cannot break the new active's writes. Temp names start
    /// with the writer's epoch; a name without one is a leftover of an older release.
    pub fn discard_temp(&self, epoch: Epoch) -> io::Result<usize> {
        let temp_dir = self.dir.join(TEMP_DIR);
        let mut discarded = 0;
        for entry in fs::read_dir(&temp_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let writer: Option<Epoch> = name.to_str().and_then(|n| n.split('.').next()).and_then(|e| e.parse().ok());
            if writer.is_some_and(|w| w > epoch) {
                continue;
            }
            fs::remove_file(entry.path())?;
            discarded += 1;
        }
        if discarded > 0 {
            sync_dir(&temp_dir)?;
        }
        Ok(discarded)
    }
}

fn decode_file(bytes: &[u8]) -> Result<StoredDto, ReadError> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(ReadError::Damaged("bad header".into()));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if crc32(&bytes[..12]) != crc {
        return Err(ReadError::Damaged("header checksum mismatch".into()));
    }
    let epoch = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let dto =
        binary::decode(&bytes[HEADER_LEN..], usize::MAX).map_err(|e: DtoError| ReadError::Damaged(e.to_string()))?;
    Ok(StoredDto { dto, epoch })
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

/// Makes a directory's entries (a new link, a rename) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` (in `dir`) with `bytes`: temp file, fsync, rename, fsync the directory.
pub fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollux_model::Record;

    fn dto(id: &str) -> Dto {
        Dto {
            id: id.into(),
            collector: "dc1".into(),
            family: "CPU".into(),
            cycle: 1_763_830_800,
            interval: 300,
            metrics: vec!["util".into()],
            records: vec![Record { device: "r1".into(), item: "1".into(), ts: 1_763_830_801, values: vec![Some(5.0)] }],
        }
    }

    #[test]
    fn stores_once_reads_back_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = DtoStore::open(dir.path()).unwrap();
        assert_eq!(store.store(&dto("a"), 3).unwrap(), StoreOutcome::Stored);
        assert_eq!(store.store(&dto("a"), 4).unwrap(), StoreOutcome::AlreadyStored);
        let back = store.read("a").unwrap().unwrap();
        assert_eq!((back.dto, back.epoch), (dto("a"), 3));
        assert_eq!(store.list(10).unwrap(), ["a"]);
        assert_eq!(store.backlog().unwrap().0, 1);
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        assert!(store.read("a").unwrap().is_none());
        assert_eq!(fs::read_dir(dir.path().join(TEMP_DIR)).unwrap().count(), 0, "no temp file left behind");
    }

    #[test]
    fn temp_leftovers_are_discarded_and_damage_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = DtoStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("tmp/x.99.0"), b"half a DTO").unwrap();
        fs::write(dir.path().join("tmp/2.y.99.0"), b"half a DTO of epoch 2").unwrap();
        fs::write(dir.path().join("tmp/4.y.99.0"), b"a newer epoch's write in progress").unwrap();
        fs::write(dir.path().join("bad.dto"), b"PXF1 not really").unwrap();
        // An id that looks like a temp name is a DTO like any other.
        store.store(&dto("a.dto.tmp.1.0"), 1).unwrap();
        assert_eq!(store.discard_temp(3).unwrap(), 2);
        assert!(dir.path().join("tmp/4.y.99.0").exists(), "a newer epoch's temp file is left alone");
        assert_eq!(store.list(10).unwrap().len(), 2);
        store.remove("a.dto.tmp.1.0").unwrap();
        assert_eq!(store.list(10).unwrap(), ["bad"]);
        assert!(matches!(store.read("bad"), Err(ReadError::Damaged(_))));
        store.quarantine("bad").unwrap();
        assert!(store.list(10).unwrap().is_empty());
        assert!(dir.path().join("quarantine/bad.dto").exists());
    }
}
