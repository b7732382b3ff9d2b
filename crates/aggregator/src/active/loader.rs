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

use crate::metrics::Metrics;
use crate::services::Term;
use crate::App;
use pollux_model::Dto;
use pollux_repository::{Action, Epoch, RepoError};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most files one listing of the store looks at (oldest first).
const LIST_LIMIT: usize = 100_000;
/// The progress task of loading the backlog a takeover found.
const RECOVERY: &str = "recovery";
/// Wait after a failed load before trying again (the files stay; nothing is lost).
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest sleep with nothing to do: new files normally wake the loader at once.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Value cells (records x metric columns, 16 bytes each) the handoff holds at most: about
/// 128 MiB of decoded values whatever the DTOs look like. Past it the loader reads the store.
const HANDOFF_CELLS: usize = 8 << 20;

fn cells(dto: &Dto) -> usize {
    dto.records.len() * dto.metrics.len()
}

/// Decoded DTOs handed from ingest to the loader. Bounded: past `capacity` the loader finds the
/// overflow in the store instead.
#[derive(Debug)]
pub struct Handoff {
    queue: Mutex<VecDeque<Dto>>,
    capacity: usize,
    /// Set when a DTO did not fit: the loader must then read the store too.
    overflowed: std::sync::atomic::AtomicBool,
}

impl Handoff {
    pub fn new(capacity: usize) -> Handoff {
        Handoff { queue: Mutex::new(VecDeque::new()), capacity, overflowed: Default::default() }
    }

    /// Offers a DTO that is already durable in the store.
    pub fn offer(&self, dto: Dto) {
        let mut queue = self.queue.lock().expect("handoff");
        let cells: usize = queue.iter().map(cells).sum();
        if queue.len() < self.capacity && cells + self::cells(&dto) <= HANDOFF_CELLS {
            queue.push_back(dto);
        } else {
            self.overflowed.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Takes DTOs up to about `max_values` values.
    fn take(&self, max_values: usize) -> Vec<Dto> {
        let mut queue = self.queue.lock().expect("handoff");
        let mut taken = Vec::new();
        let mut values = 0;
        while values < max_values {
            let Some(dto) = queue.pop_front() else { break };
            values += dto.value_count();
            taken.push(dto);
        }
        taken
    }

    /// Whether a DTO overflowed since the last call.
    fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    pub fn clear(&self) {
        self.queue.lock().expect("handoff").clear();
    }
}

/// What the System Status says of the loader: its last success and its last failure, so that
/// loads failing (a repository on a broken disk) show, and `pollux status` exits 1.
#[derive(Debug, Default)]
pub struct LoadHealth {
    inner: Mutex<LoadHealthState>,
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadHealthState {
    /// Unix milliseconds of the last load that committed (or found nothing to do).
    pub last_ok_ms: Option<i64>,
    /// Unix milliseconds and text of the last failed load.
    pub last_error_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Families whose stored DTOs the last pass over the store had to leave there (not
    /// defined, or refused by the repository), with how many DTOs each.
    #[serde(default)]
    pub waiting: std::collections::BTreeMap<String, usize>,
}

impl LoadHealth {
    fn ok(&self) {
        self.inner.lock().expect("load health").last_ok_ms = Some(crate::unix_now_ms());
    }

    fn failed(&self, e: &RepoError) {
        let mut state = self.inner.lock().expect("load health");
        state.last_error_ms = Some(crate::unix_now_ms());
        state.last_error = Some(e.to_string());
    }

    /// Records the families holding DTOs back, logging only what changed (the store is read
    /// twice a second while idle: a line per DTO per pass would flood the log).
    fn waiting(&self, waiting: std::collections::BTreeMap<String, usize>) {
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

    pub fn state(&self) -> LoadHealthState {
        self.inner.lock().expect("load health").clone()
    }
}

impl LoadHealthState {
    /// True when the last attempt failed: no load has succeeded since the last error.
    pub fn failing(&self) -> bool {
        self.last_error_ms.is_some_and(|e| self.last_ok_ms.is_none_or(|ok| ok < e))
    }
}

/// Loads until the term is stopped or fenced. The repository is already claimed for its epoch.
pub fn run(app: &Arc<App>, term: &Term) {
    let mut ensured: HashSet<String> = HashSet::new();
    // What a predecessor left (or what piled up while no node was active) is the recovery.
    if let Ok((backlog, _)) = app.store.backlog() {
        if backlog > 0 {
            app.progress.begin(RECOVERY, "DTOs", Some(backlog as u64));
        }
    }
    // A batch the repository could not take now (Retry): loaded first next time, so newer
    // DTOs never overtake it (their polls would make its own count as late for the rules).
    let mut carried = Carried::default();
    while !term.stop.is_cancelled() {
        match load_once(app, term.epoch, &mut ensured, &mut carried) {
            Ok(0) => {
                app.progress.end(RECOVERY);
                app.loader_wake.wait(IDLE_WAIT)
            }
            Ok(n) => app.progress.advance(RECOVERY, n as u64),
            Err(e @ RepoError::Fenced { .. }) => {
                tracing::warn!(epoch = term.epoch, error = %e, "load refused by the repository; the DTOs stay for the new active");
                term.fenced(&e);
                return;
            }
            Err(e) => {
                app.load_health.failed(&e);
                Metrics::add(&app.metrics.load_errors, 1);
                tracing::warn!(error = %e, "load failed; the DTO files stay and are retried");
                // A full second, whatever arrives meanwhile: a failing disk is not asked again
                // at the rate of ingest.
                let until = std::time::Instant::now() + RETRY_DELAY;
                while !term.stop.is_cancelled() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
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

/// Loads one batch; returns how many DTOs it consumed.
fn load_once(
    app: &App,
    epoch: Epoch,
    ensured: &mut HashSet<String>,
    carried: &mut Carried,
) -> Result<usize, RepoError> {
    if !carried.dtos.is_empty() {
        let batch = std::mem::take(&mut carried.dtos);
        if carried.failures >= SPLIT_AFTER_RETRIES && batch.len() > 1 {
            tracing::warn!(dtos = batch.len(), "a batch failed {} times; loading it one by one", carried.failures);
            return load_one_by_one(app, epoch, batch, carried);
        }
        return load_batch(app, epoch, batch, carried);
    }
    let mut batch = app.handoff.take(app.config.load_batch_values);
    if batch.is_empty() || app.handoff.take_overflow() {
        // The store holds what did not fit in the handoff and what a predecessor left. A DTO
        // in both is loaded once: the second copy finds its id registered.
        batch.extend(read_from_store(app, epoch, ensured)?);
    }
    let mut ready = Vec::with_capacity(batch.len());
    for dto in batch {
        if ensure_family(app, epoch, &dto, ensured)? {
            ready.push(dto);
        }
    }
    if ready.is_empty() {
        app.load_health.ok();
        return Ok(0);
    }
    load_batch(app, epoch, ready, carried)
}

/// Loads `ready` in one transaction; on a Retry error keeps it in `carried`.
fn load_batch(app: &App, epoch: Epoch, ready: Vec<Dto>, carried: &mut Carried) -> Result<usize, RepoError> {
    // A test parks the loader here, batch in hand, and freezes the process (SIGSTOP), so that
    // the load it then attempts belongs to a deposed epoch.
    pollux_failpoint::hit("loader.before_load");
    let report = match app.repo.load(epoch, &ready) {
        Ok(report) => report,
        // Fenced, or the repository cannot serve now (locked by a frozen deposed writer, out of
        // space, an I/O error): the whole batch waits and is retried; one DTO at a time would
        // only fail as many times more slowly.
        Err(e) if e.action() == Action::Fenced => return Err(e),
        Err(e) if e.action() == Action::Retry => {
            carried.failures += 1;
            carried.dtos = ready;
            return Err(e);
        }
        Err(e) if ready.len() > 1 => {
            // One bad DTO must not hold the others back: load them one at a time.
            tracing::warn!(error = %e, dtos = ready.len(), "batch load failed; loading one by one");
            return load_one_by_one(app, epoch, ready, carried);
        }
        Err(e) => return Err(e),
    };
    carried.failures = 0;
    finish(app, &ready, &report)?;
    Ok(ready.len())
}

/// Loads each DTO in its own transaction, leaving the ones that fail in the store. On a Retry
/// error the DTO and those after it are carried to the next pass, still ahead of newer ones.
fn load_one_by_one(app: &App, epoch: Epoch, dtos: Vec<Dto>, carried: &mut Carried) -> Result<usize, RepoError> {
    let mut loaded = 0;
    let mut dtos = dtos.into_iter();
    while let Some(dto) = dtos.next() {
        match app.repo.load(epoch, std::slice::from_ref(&dto)) {
            Ok(report) => {
                finish(app, std::slice::from_ref(&dto), &report)?;
                loaded += 1;
                carried.failures = 0;
            }
            Err(e) if e.action() == Action::Fenced => return Err(e),
            Err(e) if e.action() == Action::Retry => {
                carried.failures += 1;
                carried.dtos = std::iter::once(dto).chain(dtos).collect();
                return Err(e);
            }
            Err(e) => {
                app.load_health.failed(&e);
                Metrics::add(&app.metrics.load_errors, 1);
                tracing::error!(id = %dto.id, error = %e, "DTO not loaded; it stays in the store and is retried");
            }
        }
    }
    Ok(loaded)
}

/// After a commit: removes the loaded files and counts.
fn finish(app: &App, loaded: &[Dto], report: &pollux_repository::LoadReport) -> Result<(), RepoError> {
    if pollux_failpoint::hit("loader.after_commit") {
        return Err(RepoError::Injected("loader.after_commit"));
    }
    for dto in loaded {
        if report.already_loaded > 0 && loaded_with_other_content(app, dto) {
            // Acknowledged while the repository was away (its registry could not be asked):
            // another content under an id already loaded. Kept for the operator, not deleted.
            Metrics::add(&app.metrics.dtos_quarantined, 1);
            match app.store.quarantine(&dto.id) {
                Ok(path) => tracing::error!(
                    id = %dto.id, path = %path.display(),
                    "DTO id already loaded with other content (acknowledged while the repository was unavailable): quarantined"
                ),
                Err(e) => tracing::error!(id = %dto.id, error = %e, "DTO with other content could not be quarantined"),
            }
            continue;
        }
        if let Err(e) = app.store.remove(&dto.id) {
            tracing::warn!(id = %dto.id, error = %e, "loaded DTO file not removed; the next pass will");
        }
    }
    app.load_health.ok();
    Metrics::add(&app.metrics.dtos_loaded, report.loaded as u64);
    Metrics::add(&app.metrics.dtos_already_loaded, report.already_loaded as u64);
    Metrics::add(&app.metrics.values_loaded, report.values as u64);
    if report.transitions > 0 {
        Metrics::add(&app.metrics.events_opened, report.transitions as u64);
        app.notify_wake.notify();
    }
    if report.late > 0 {
        tracing::info!(
            dtos = report.late,
            "late DTOs loaded without threshold evaluation (their collector had sent newer cycles)"
        );
    }
    app.maintenance_wake.notify();
    Ok(())
}

/// Whether the registry holds `dto`'s id with another content's fingerprint. A failed lookup
/// says no: the file is then removed as before, as the registry holds that id either way.
fn loaded_with_other_content(app: &App, dto: &Dto) -> bool {
    match app.repo.loaded_dto(&dto.id) {
        Ok(Some(entry)) => entry.digest.is_some_and(|digest| digest != dto.digest()),
        _ => false,
    }
}

/// Makes sure the repository has the tables of the DTO's family; false when the family is not
/// defined (any more): the DTO stays in the store until it is.
fn ensure_family(app: &App, epoch: Epoch, dto: &Dto, ensured: &mut HashSet<String>) -> Result<bool, RepoError> {
    if ensured.contains(&dto.family) {
        return Ok(true);
    }
    let Some(family) = app.catalog().get(&dto.family).cloned() else {
        tracing::debug!(id = %dto.id, family = %dto.family, "stored DTO of a family not defined; kept until it is");
        return Ok(false);
    };
    match app.repo.ensure_family(epoch, &family) {
        Ok(()) => {}
        Err(RepoError::Rejected(why)) => {
            tracing::debug!(id = %dto.id, family = %dto.family, %why, "stored DTO of a refused family; kept until it is fixed");
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    ensured.insert(dto.family.clone());
    Ok(true)
}

/// Reads a batch of stored DTOs back from the store, oldest first, quarantining damaged files
/// and passing over DTOs of families that are not defined (they wait; they do not block).
fn read_from_store(app: &App, epoch: Epoch, ensured: &mut HashSet<String>) -> Result<Vec<Dto>, RepoError> {
    let ids = app.store.list(LIST_LIMIT).map_err(|e| RepoError::Db(format!("listing the DTO store: {e}")))?;
    let mut batch = Vec::new();
    let mut values = 0;
    let mut waiting = std::collections::BTreeMap::new();
    for id in ids {
        if values >= app.config.load_batch_values {
            break;
        }
        match app.store.read(&id) {
            Ok(Some(stored)) => {
                if ensure_family(app, epoch, &stored.dto, ensured)? {
                    values += stored.dto.value_count();
                    batch.push(stored.dto);
                } else {
                    *waiting.entry(stored.dto.family).or_insert(0) += 1;
                }
            }
            Ok(None) => {}
            Err(crate::store::ReadError::Damaged(why)) => {
                Metrics::add(&app.metrics.dtos_quarantined, 1);
                match app.store.quarantine(&id) {
                    Ok(path) => tracing::error!(%id, %why, path = %path.display(), "damaged DTO file quarantined"),
                    Err(e) => tracing::error!(%id, %why, error = %e, "damaged DTO file could not be quarantined"),
                }
            }
            Err(e) => return Err(RepoError::Db(format!("reading DTO {id}: {e}"))),
        }
    }
    if values < app.config.load_batch_values {
        // The whole store was seen: this is every family that holds DTOs back.
        app.load_health.waiting(waiting);
    }
    Ok(batch)
}
