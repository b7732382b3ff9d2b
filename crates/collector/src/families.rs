//! Customized metric families, fetched from the active aggregator (`GET /api/v1/families`).
//!
//! The built-in families are compiled in; operators define others as files in the shared
//! directory, and the active aggregator serves them. The collector fetches them every
//! `families_refresh` and applies them from the next cycle. The last list fetched is cached in
//! the spool directory, so a collector restarted during an aggregator outage still polls them.

use pollux_model::{Catalog, MetricFamily};
use pollux_transport::auth::ClientToken;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub struct FamilyCache {
    catalog: RwLock<Arc<Catalog>>,
    cache_file: PathBuf,
}

#[derive(Deserialize)]
struct Listing {
    families: Vec<serde_json::Value>,
}

impl FamilyCache {
    /// The built-in families plus whatever the cache file holds.
    pub fn open(cache_file: PathBuf) -> FamilyCache {
        let catalog = match std::fs::read(&cache_file) {
            Ok(bytes) => catalog_from(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: {e}; using the built-in families until the aggregator answers",
                    cache_file.display()
                );
                Catalog::builtin()
            }),
            Err(_) => Catalog::builtin(),
        };
        FamilyCache { catalog: RwLock::new(Arc::new(catalog)), cache_file }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("family cache").clone()
    }

    /// Fetches the families from the first aggregator URL (from `start` on) that answers 200.
    pub fn refresh(&self, agent: &ureq::Agent, token: &ClientToken, urls: &[String], start: usize) {
        for k in 0..urls.len() {
            let url = format!("{}/api/v1/families", urls[(start + k) % urls.len()]);
            let mut request = agent.get(&url);
            if let Some(authorization) = token.header() {
                // Any token reads; a collector has the ingest one.
                request = request.header("Authorization", authorization);
            }
            let Ok(mut response) = request.call() else { continue };
            if response.status().as_u16() != 200 {
                continue;
            }
            let Ok(body) = response.body_mut().read_to_vec() else { continue };
            match catalog_from(&body) {
                Ok(catalog) => {
                    let names: Vec<String> = catalog.iter().filter(|f| !f.builtin).map(|f| f.name.clone()).collect();
                    let mut current = self.catalog.write().expect("family cache");
                    let before: Vec<String> = current.iter().filter(|f| !f.builtin).map(|f| f.name.clone()).collect();
                    if before != names {
                        tracing::info!("customized families from {url}: {names:?} (applied from the next cycle)");
                    }
                    *current = Arc::new(catalog);
                    drop(current);
                    let temp = self.cache_file.with_extension("json.tmp");
                    if let Err(e) = std::fs::write(&temp, &body).and_then(|()| std::fs::rename(&temp, &self.cache_file))
                    {
                        tracing::warn!("{}: {e}", self.cache_file.display());
                    }
                }
                Err(e) => tracing::warn!("{url}: {e}"),
            }
            return;
        }
    }
}

/// The built-in families plus the customized ones of a `/api/v1/families` answer. A family
/// that does not validate is skipped with a warning; the others still apply.
fn catalog_from(body: &[u8]) -> Result<Catalog, String> {
    let listing: Listing = serde_json::from_slice(body).map_err(|e| format!("not a family listing: {e}"))?;
    let mut catalog = Catalog::builtin();
    for value in listing.families {
        if value.get("builtin").and_then(|b| b.as_bool()) == Some(true) {
            continue;
        }
        let family: MetricFamily = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("customized family skipped: {e}");
                continue;
            }
        };
        let name = family.name.clone();
        if let Err(e) = catalog.add_custom(family) {
            tracing::warn!("customized family {name} skipped: {e}");
        }
    }
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &[u8] = br#"{"families": [
            {"name": "Fan", "builtin": false, "table": "1.3.6.1.4.1.99.1",
             "metrics": [{"name": "rpm", "type": "gauge", "oid": "1.3.6.1.4.1.99.1.1.2", "expr": null}]}
        ]}"#;

    #[test]
    fn the_last_listing_survives_a_restart_and_a_damaged_cache_falls_back_to_the_built_ins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("families.json");
        assert!(FamilyCache::open(file.clone()).catalog().get("Fan").is_none());
        std::fs::write(&file, LISTING).unwrap();
        assert!(FamilyCache::open(file.clone()).catalog().get("Fan").is_some());
        std::fs::write(&file, b"{not json").unwrap();
        let catalog = FamilyCache::open(file).catalog();
        assert!(catalog.get("Fan").is_none() && catalog.get("Interface").is_some());
    }

    #[test]
    fn listing_adds_custom_families_and_skips_bad_ones() {
        let body = br#"{"families": [
            {"name": "CPU", "builtin": true, "metrics": [{"name": "util"}]},
            {"name": "Fan", "builtin": false, "description": "", "item_key": "", "table": "1.3.6.1.4.1.99.1",
             "metrics": [{"name": "rpm", "unit": "", "type": "gauge", "oid": "1.3.6.1.4.1.99.1.1.2", "expr": null, "description": ""}]},
            {"name": "Bad", "builtin": false, "metrics": [{"name": "x", "expr": "value *"}]}
        ]}"#;
        let catalog = catalog_from(body).unwrap();
        assert!(catalog.get("Fan").is_some());
        assert!(catalog.get("Bad").is_none());
        assert!(catalog.get("CPU").unwrap().builtin);
    }
}
