//! The loader: moves every stored DTO into the repository exactly once.
//!
//! ```text
//!   dto/<id>.dto ─read─▶ batch (up to load_batch_values) ─▶ repo.load(epoch, batch)
//!                                                              │ one transaction: epoch check,
//!                                                              │ data, registry, pending rollups
//!                                                              ▼ commit
//!                                                         remove the files
//! ```
//!
//! A DTO the ingest path has just stored is also handed over in memory ([`Handoff`]), so the
//! common path never reads a file back; the store is listed when the handoff is empty, which is
//! how a new active finds what its predecessor left, and how a full handoff overflows to disk.
//! Either way the file stays until the data is committed.
//!
//! Exactly once follows from the registry: a crash before the commit leaves the files and no
//! trace in the repository; a crash after it leaves files whose ids are registered, and the next
//! load finds them `already_loaded` and only removes them. A `Fenced` answer means a newer epoch
//! owns the repository: the loader stops at once and the node fences itself.

use super::term::{Term, Wake};
use super::worker::{Worker, WorkerState};
use crate::ingest::handoff::Handoff;
use crate::ingest::store::{DtoStore, ReadError};
use crate::metrics::Metrics;
use crate::progress::Tracker;
use crate::shared_dir::families::Families;
use pollux_model::wire::LoaderState;
use pollux_model::Dto;
use pollux_repository::{Action, Epoch, RepoError, Repository};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most files one listing of the store looks at (oldest first).
const LIST_LIMIT: usize = 100_000;
/// The progress task of loading the backlog a takeover found.
const RECOVERY: &str = "recovery";
/// Longest sleep with nothing to do: new files normally wake the loader at once.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// What the System Status says of the loader: its last success and its last failure, so that
/// loads failing (a repository on a broken disk) show, and `pollux status` exits 1.
#[derive(Debug, Default)]
pub struct LoadHealth {
    inner: Mutex<LoaderState>,
}

impl LoadHealth {
    fn ok(&self) {
        self.inner.lock().expect("load health").last_ok_ms = Some(crate::unix_now_ms());
    }

    /// Data was loaded now, polled every `interval` seconds.
    fn loaded(&self, interval: u32) {
        let mut state = self.inner.lock().expect("load health");
        state.last_loaded_ms = Some(crate::unix_now_ms());
        state.last_loaded_interval_s = Some(interval);
    }

    fn failed(&self, e: &RepoError) {
        let mut state = self.inner.lock().expect("load health");
        state.last_error_ms = Some(crate::unix_now_ms());
        state.last_error = Some(e.to_string());
    }

    /// Records the families holding DTOs back, logging only what changed (the store is read
    /// twice a second while idle: a line per DTO per pass would flood the log).
    fn waiting(&self, waiting: BTreeMap<String, usize>) {
        let mut state = self.inner.lock().expect("load health");
        for (family, dtos) in &waiting {
            if !state.waiting.contains_key(family) {
                tracing::error!(%family, dtos, "stored DTOs wait: their family is not defined or is refused (see the status)");
            }
        }
        for family in state.waiting.keys().filter(|f| !waiting.contains_key(*f)) {
            tracing::info!(%family, "stored DTOs of the family no longer wait");
        }
        state.waiting = waiting;
    }

    pub fn state(&self) -> LoaderState {
        self.inner.lock().expect("load health").clone()
    }
}

/// What the loader works with: built once by the aggregator, shared by every term's loader.
#[derive(Clone)]
pub struct LoaderParts {
    pub store: Arc<DtoStore>,
    pub handoff: Arc<Handoff>,
    pub repo: Arc<dyn Repository>,
    pub families: Arc<Families>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<LoadHealth>,
    pub progress: Arc<Tracker>,
    /// Woken by ingest.
    pub wake: Arc<Wake>,
    /// Woken after each commit: housekeeping (new pending rollups) and, when events opened or
    /// cleared, the notifier.
    pub housekeeping: Arc<Wake>,
    pub notifiers: Vec<Arc<Wake>>,
    /// Values per load transaction (`load_batch_values`).
    pub batch_values: usize,
}

/// The loader of one term. The repository is claimed for the term's epoch before it runs.
pub struct Loader {
    parts: LoaderParts,
    /// Families whose tables this term has made sure of.
    ensured: HashSet<String>,
    /// A batch the repository could not take now (Retry): loaded first next time, so newer
    /// DTOs never overtake it (their polls would make its own count as late for the rules).
    carried: Carried,
    recovery_begun: bool,
}

impl Loader {
    pub fn new(parts: LoaderParts) -> Loader {
        Loader { parts, ensured: HashSet::new(), carried: Carried::default(), recovery_begun: false }
    }
}

impl Worker for Loader {
    fn name(&self) -> &'static str {
        "loader"
    }

    fn work(&mut self, term: &Term) -> Result<WorkerState, RepoError> {
        let p = &self.parts;
        if !self.recovery_begun {
            self.recovery_begun = true;
            // What a predecessor left (or what piled up while no node was active) is the
            // recovery.
            if let Ok((backlog, _)) = p.store.backlog() {
                if backlog > 0 {
                    p.progress.begin(RECOVERY, "DTOs", Some(backlog as u64));
                }
            }
        }
        match self.load_once(term.epoch) {
            Ok(0) => {
                self.parts.progress.end(RECOVERY);
                Ok(WorkerState::Idle)
            }
            Ok(n) => {
                self.parts.progress.advance(RECOVERY, n as u64);
                Ok(WorkerState::Busy)
            }
            Err(e) if e.action() == Action::Fenced => {
                tracing::warn!(epoch = term.epoch, error = %e, "load refused by the repository; the DTOs stay for the new active");
                Err(e)
            }
            Err(e) => {
                self.parts.health.failed(&e);
                Metrics::add(&self.parts.metrics.load_errors, 1);
                tracing::warn!(error = %e, "load failed; the DTO files stay and are retried");
                Err(e)
            }
        }
    }

    fn idle_wait(&self) -> Duration {
        IDLE_WAIT
    }

    fn wake(&self) -> Arc<Wake> {
        self.parts.wake.clone()
    }
}

/// The batch kept for the next pass after a Retry, and how many passes it has failed.
#[derive(Default)]
struct Carried {
    dtos: Vec<Dto>,
    failures: u32,
}

/// After this many retries of the same batch, it is loaded one DTO at a time: an error that
/// depends on the batch's size (a WAL that needs room for all of it) must not stop loading.
const SPLIT_AFTER_RETRIES: u32 = 3;

impl Loader {
    /// Loads one batch; returns how many DTOs it consumed.
    fn load_once(&mut self, epoch: Epoch) -> Result<usize, RepoError> {
        if !self.carried.dtos.is_empty() {
            let batch = std::mem::take(&mut self.carried.dtos);
            if self.carried.failures >= SPLIT_AFTER_RETRIES && batch.len() > 1 {
                tracing::warn!(
                    dtos = batch.len(),
                    "a batch failed {} times; loading it one by one",
                    self.carried.failures
                );
                return self.load_one_by_one(epoch, batch);
            }
            return self.load_batch(epoch, batch);
        }
        let mut batch = self.parts.handoff.take(self.parts.batch_values);
        if batch.is_empty() || self.parts.handoff.take_overflow() {
            // The store holds what did not fit in the handoff and what a predecessor left. A
            // DTO in both is loaded once: the second copy finds its id registered.
            batch.extend(self.read_from_store(epoch)?);
        }
        let mut ready = Vec::with_capacity(batch.len());
        for dto in batch {
            if self.ensure_family(epoch, &dto)? {
                ready.push(dto);
            }
        }
        if ready.is_empty() {
            self.parts.health.ok();
            return Ok(0);
        }
        self.load_batch(epoch, ready)
    }

    /// Loads `ready` in one transaction; on a Retry error keeps it for the next pass.
    fn load_batch(&mut self, epoch: Epoch, ready: Vec<Dto>) -> Result<usize, RepoError> {
        // A test parks the loader here, batch in hand, and freezes the process (SIGSTOP), so
        // that the load it then attempts belongs to a deposed epoch.
        pollux_failpoint::hit("loader.before_load");
        let report = match self.parts.repo.load(epoch, &ready) {
            Ok(report) => report,
            // Fenced, or the repository cannot serve now (locked by a frozen deposed writer,
            // out of space, an I/O error): the whole batch waits and is retried; one DTO at a
            // time would only fail as many times more slowly.
            Err(e) if e.action() == Action::Fenced => return Err(e),
            Err(e) if e.action() == Action::Retry => {
                self.carried.failures += 1;
                self.carried.dtos = ready;
                return Err(e);
            }
            Err(e) if ready.len() > 1 => {
                // One bad DTO must not hold the others back: load them one at a time.
                tracing::warn!(error = %e, dtos = ready.len(), "batch load failed; loading one by one");
                return self.load_one_by_one(epoch, ready);
            }
            Err(e) => return Err(e),
        };
        self.carried.failures = 0;
        self.finish(&ready, &report)?;
        Ok(ready.len())
    }

    /// Loads each DTO in its own transaction, leaving the ones that fail in the store. On a
    /// Retry error the DTO and those after it are carried to the next pass, still ahead of
    /// newer ones.
    fn load_one_by_one(&mut self, epoch: Epoch, dtos: Vec<Dto>) -> Result<usize, RepoError> {
        let mut loaded = 0;
        let mut dtos = dtos.into_iter();
        while let Some(dto) = dtos.next() {
            match self.parts.repo.load(epoch, std::slice::from_ref(&dto)) {
                Ok(report) => {
                    self.finish(std::slice::from_ref(&dto), &report)?;
                    loaded += 1;
                    self.carried.failures = 0;
                }
                Err(e) if e.action() == Action::Fenced => return Err(e),
                Err(e) if e.action() == Action::Retry => {
                    self.carried.failures += 1;
                    self.carried.dtos = std::iter::once(dto).chain(dtos).collect();
                    return Err(e);
                }
                Err(e) => {
                    self.parts.health.failed(&e);
                    Metrics::add(&self.parts.metrics.load_errors, 1);
                    tracing::error!(id = %dto.id, error = %e, "DTO not loaded; it stays in the store and is retried");
                }
            }
        }
        Ok(loaded)
    }

    /// After a commit: removes the loaded files and counts.
    fn finish(&self, loaded: &[Dto], report: &pollux_repository::LoadReport) -> Result<(), RepoError> {
        let p = &self.parts;
        if pollux_failpoint::hit("loader.after_commit") {
            return Err(RepoError::Injected("loader.after_commit"));
        }
        for dto in loaded {
            let other_content =
                if report.already_loaded > 0 { self.loaded_with_other_content(dto) } else { Some(false) };
            let Some(other_content) = other_content else {
                // The registry could not be read (a connection that went stale in an outage):
                // the file stays, and the next pass finds it registered and looks again. Removed
                // now, a resend with other content would be dropped unseen.
                tracing::warn!(id = %dto.id, "registry not readable after the load; the DTO file stays for the next pass");
                continue;
            };
            if other_content {
                // Acknowledged while the repository was away (its registry could not be
                // asked): another content under an id already loaded. Kept for the operator,
                // not deleted.
                Metrics::add(&p.metrics.dtos_quarantined, 1);
                match p.store.quarantine(&dto.id) {
                    Ok(path) => tracing::error!(
                        id = %dto.id, path = %path.display(),
                        "DTO id already loaded with other content (acknowledged while the repository was unavailable): quarantined"
                    ),
                    Err(e) => {
                        tracing::error!(id = %dto.id, error = %e, "DTO with other content could not be quarantined")
                    }
                }
                continue;
            }
            if let Err(e) = p.store.remove(&dto.id) {
                tracing::warn!(id = %dto.id, error = %e, "loaded DTO file not removed; the next pass will");
            }
        }
        p.health.ok();
        if report.loaded > 0 {
            p.health.loaded(loaded.iter().map(|d| d.interval).max().unwrap_or(0));
        }
        Metrics::add(&p.metrics.dtos_loaded, report.loaded as u64);
        Metrics::add(&p.metrics.dtos_already_loaded, report.already_loaded as u64);
        Metrics::add(&p.metrics.values_loaded, report.values as u64);
        if report.transitions > 0 {
            Metrics::add(&p.metrics.events_opened, report.transitions as u64);
            for wake in &p.notifiers {
                wake.notify();
            }
        }
        if report.late > 0 {
            tracing::info!(
                dtos = report.late,
                "late DTOs loaded without threshold evaluation (their collector had sent newer cycles)"
            );
        }
        p.housekeeping.notify();
        Ok(())
    }

    /// Whether the registry holds `dto`'s id with another content's fingerprint; `None` when
    /// the registry cannot be read now.
    fn loaded_with_other_content(&self, dto: &Dto) -> Option<bool> {
        match self.parts.repo.loaded_dto(&dto.id) {
            Ok(Some(entry)) => Some(entry.digest.is_some_and(|digest| digest != dto.digest())),
            Ok(None) => Some(false),
            Err(_) => None,
        }
    }

    /// Makes sure the repository has the tables of the DTO's family; false when the family is
    /// not defined (any more): the DTO stays in the store until it is.
    fn ensure_family(&mut self, epoch: Epoch, dto: &Dto) -> Result<bool, RepoError> {
        if self.ensured.contains(&dto.family) {
            return Ok(true);
        }
        let Some(family) = self.parts.families.catalog().get(&dto.family).cloned() else {
            tracing::debug!(id = %dto.id, family = %dto.family, "stored DTO of a family not defined; kept until it is");
            return Ok(false);
        };
        match self.parts.repo.ensure_family(epoch, &family) {
            Ok(()) => {}
            Err(RepoError::Rejected(why)) => {
                tracing::debug!(id = %dto.id, family = %dto.family, %why, "stored DTO of a refused family; kept until it is fixed");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        self.ensured.insert(dto.family.clone());
        Ok(true)
    }

    /// Reads a batch of stored DTOs back from the store, oldest first, quarantining damaged
    /// files and passing over DTOs of families that are not defined (they wait; they do not
    /// block).
    fn read_from_store(&mut self, epoch: Epoch) -> Result<Vec<Dto>, RepoError> {
        let store = self.parts.store.clone();
        let ids = store.list(LIST_LIMIT).map_err(|e| RepoError::Db(format!("listing the DTO store: {e}")))?;
        let mut batch = Vec::new();
        let mut values = 0;
        let mut waiting = BTreeMap::new();
        for id in ids {
            if values >= self.parts.batch_values {
                break;
            }
            match store.read(&id) {
                Ok(Some(stored)) => {
                    if self.ensure_family(epoch, &stored.dto)? {
                        values += stored.dto.value_count();
                        batch.push(stored.dto);
                    } else {
                        *waiting.entry(stored.dto.family).or_insert(0) += 1;
                    }
                }
                Ok(None) => {}
                Err(ReadError::Damaged(why)) => {
                    Metrics::add(&self.parts.metrics.dtos_quarantined, 1);
                    match store.quarantine(&id) {
                        Ok(path) => tracing::error!(%id, %why, path = %path.display(), "damaged DTO file quarantined"),
                        Err(e) => tracing::error!(%id, %why, error = %e, "damaged DTO file could not be quarantined"),
                    }
                }
                Err(e) => return Err(RepoError::Db(format!("reading DTO {id}: {e}"))),
            }
        }
        if values < self.parts.batch_values {
            // The whole store was seen: this is every family that holds DTOs back.
            self.parts.health.waiting(waiting);
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_dir::SharedDir;
    use pollux_model::Record;
    use pollux_repository::{open, Location, OpenOptions};

    fn dto(id: &str, cycle: i64) -> Dto {
        Dto {
            id: id.into(),
            collector: "dc1".into(),
            family: "CPU".into(),
            cycle,
            interval: 300,
            metrics: vec!["util".into()],
            records: vec![Record { device: "r1".into(), item: "1".into(), ts: cycle + 1, values: vec![Some(5.0)] }],
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        parts: LoaderParts,
        term: Term,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::new(dir.path());
        shared.check(0).unwrap();
        let repo: Arc<dyn Repository> =
            Arc::from(open(&Location::Sqlite(dir.path().join("repository.sqlite")), &OpenOptions::default()).unwrap());
        repo.claim_epoch(1, "da1").unwrap();
        let parts = LoaderParts {
            store: Arc::new(DtoStore::open(shared.dto_dir()).unwrap()),
            handoff: Arc::new(Handoff::default()),
            repo,
            families: Arc::new(Families::read(shared)),
            metrics: Arc::default(),
            health: Arc::default(),
            progress: Arc::default(),
            wake: Arc::default(),
            housekeeping: Arc::default(),
            notifiers: Vec::new(),
            batch_values: 1000,
        };
        let term = Term::new(1, Arc::new(|_| {}), Vec::new());
        term.set_claimed();
        Fixture { _dir: dir, parts, term }
    }

    #[test]
    fn what_a_predecessor_left_is_loaded_once_and_its_files_removed() {
        let f = fixture();
        let cycle = 1_763_830_800;
        for n in 0..3 {
            f.parts.store.store(&dto(&format!("dc1.CPU.{n}"), cycle + n * 300), 1).unwrap();
        }
        // The same DTO handed over in memory too: loaded once, the second copy found registered.
        f.parts.handoff.offer(dto("dc1.CPU.0", cycle));
        let mut loader = Loader::new(f.parts.clone());
        let mut steps = 0;
        while loader.work(&f.term).unwrap() == WorkerState::Busy {
            steps += 1;
            assert!(steps < 10, "the loader keeps finding work");
        }
        assert_eq!(f.parts.store.backlog().unwrap().0, 0, "every loaded file removed");
        for n in 0..3 {
            assert!(f.parts.repo.loaded_dto(&format!("dc1.CPU.{n}")).unwrap().is_some());
        }
        assert_eq!(f.parts.repo.stats().unwrap().loaded_dtos, 3);
        assert!(!f.parts.health.state().failing());
    }

    #[test]
    fn a_newer_epoch_fences_the_loader_and_the_dto_stays() {
        let f = fixture();
        f.parts.repo.claim_epoch(2, "da2").unwrap();
        f.parts.store.store(&dto("dc1.CPU.9", 1_763_830_800), 1).unwrap();
        let mut loader = Loader::new(f.parts.clone());
        let error = loader.work(&f.term).unwrap_err();
        assert_eq!(error.action(), Action::Fenced, "{error}");
        assert_eq!(f.parts.store.backlog().unwrap().0, 1, "the file stays for the new active");
    }

    #[test]
    fn dtos_of_a_family_not_defined_wait_and_are_named() {
        let f = fixture();
        let mut other = dto("dc1.Temp.1", 1_763_830_800);
        other.family = "Temp".into();
        f.parts.store.store(&other, 1).unwrap();
        let mut loader = Loader::new(f.parts.clone());
        assert_eq!(loader.work(&f.term).unwrap(), WorkerState::Idle);
        assert_eq!(f.parts.health.state().waiting.get("Temp"), Some(&1));
        assert_eq!(f.parts.store.backlog().unwrap().0, 1);
    }
}
