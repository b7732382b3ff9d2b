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
//! Exactly once follows from the registry: a crash before the commit leaves the files and no
//! trace in the repository; a crash after it leaves files whose ids are registered, and the next
//! load finds them `already_loaded` and only removes them. A `Fenced` answer means a newer epoch
//! owns the repository: the loader stops at once and the node fences itself.

use crate::metrics::Metrics;
use crate::App;
use pollux_model::Dto;
use pollux_repository::{Epoch, RepoError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many files one listing of the store picks up.
const LIST_LIMIT: usize = 512;
/// Wait after a failed load before trying again (the files stay; nothing is lost).
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest sleep with nothing to do: new files normally wake the loader at once.
const IDLE_WAIT: Duration = Duration::from_millis(500);

pub fn run(app: Arc<App>, epoch: Epoch, stop: CancellationToken) {
    let mut ensured: HashSet<String> = HashSet::new();
    while !stop.is_cancelled() {
        match load_once(&app, epoch, &mut ensured) {
            Ok(0) => app.loader_wake.wait(IDLE_WAIT),
            Ok(_) => {}
            Err(RepoError::Fenced { ours, current }) => {
                app.node.fence(format!("repository is at epoch {current}, this node holds {ours}"));
                return;
            }
            Err(e) => {
                Metrics::add(&app.metrics.load_errors, 1);
                tracing::warn!(error = %e, "load failed; the DTO files stay and are retried");
                app.loader_wake.wait(RETRY_DELAY);
            }
        }
    }
}

/// Loads one batch; returns how many DTO files it consumed.
fn load_once(app: &App, epoch: Epoch, ensured: &mut HashSet<String>) -> Result<usize, RepoError> {
    let ids = app.store.list(LIST_LIMIT).map_err(|e| RepoError::Db(format!("listing the DTO store: {e}")))?;
    let mut batch: Vec<Dto> = Vec::new();
    let mut values = 0;
    for id in ids {
        if values >= app.config.load_batch_values {
            break;
        }
        let dto = match app.store.read(&id) {
            Ok(Some(stored)) => stored.dto,
            Ok(None) => continue,
            Err(crate::store::ReadError::Damaged(why)) => {
                Metrics::add(&app.metrics.dtos_quarantined, 1);
                match app.store.quarantine(&id) {
                    Ok(path) => tracing::error!(%id, %why, path = %path.display(), "damaged DTO file quarantined"),
                    Err(e) => tracing::error!(%id, %why, error = %e, "damaged DTO file could not be quarantined"),
                }
                continue;
            }
            Err(e) => return Err(RepoError::Db(format!("reading DTO {id}: {e}"))),
        };
        if !ensured.contains(&dto.family) {
            let family = app.catalog().get(&dto.family).cloned();
            match family {
                Some(family) => {
                    app.repo.ensure_family(&family)?;
                    ensured.insert(dto.family.clone());
                }
                None => {
                    tracing::error!(id = %dto.id, family = %dto.family, "stored DTO of a family no longer defined; kept until it is");
                    continue;
                }
            }
        }
        values += dto.value_count();
        batch.push(dto);
    }
    if batch.is_empty() {
        return Ok(0);
    }
    let report = app.repo.load(epoch, &batch)?;
    if pollux_failpoint::hit("loader.after_commit") {
        return Err(RepoError::Injected("loader.after_commit"));
    }
    for dto in &batch {
        if let Err(e) = app.store.remove(&dto.id) {
            tracing::warn!(id = %dto.id, error = %e, "loaded DTO file not removed; the next pass will");
        }
    }
    Metrics::add(&app.metrics.dtos_loaded, report.loaded as u64);
    Metrics::add(&app.metrics.dtos_already_loaded, report.already_loaded as u64);
    Metrics::add(&app.metrics.values_loaded, report.values as u64);
    app.maintenance_wake.notify();
    Ok(batch.len())
}
