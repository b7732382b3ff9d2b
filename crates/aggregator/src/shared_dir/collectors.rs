//! The collectors' last reports (`<shared>/collectors/<id>.json`), kept in the shared directory
//! so a new active shows them at once.

use super::SharedDir;
use pollux_model::wire::CollectorReport;
use std::fs;
use std::path::PathBuf;

/// Collectors whose reports are kept: a new id past this is refused (every status read lists
/// them all, and anyone with the ingest token could otherwise invent ids without end).
pub const MAX_COLLECTORS: usize = 1000;

impl SharedDir {
    fn collectors_dir(&self) -> PathBuf {
        self.root.join("collectors")
    }

    /// Keeps a collector's last report, with when it arrived, so a new active shows it at once.
    /// `Ok(false)`: a new collector past [`MAX_COLLECTORS`], not kept.
    pub fn write_collector_report(&self, report: &CollectorReport, received_at_ms: i64) -> std::io::Result<bool> {
        // New ids are counted and written one at a time: two reports of new collectors racing
        // past a count of 999 would both be kept otherwise.
        static NEW_IDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let dir = self.collectors_dir();
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", report.id));
        let _counting = if path.try_exists()? {
            None
        } else {
            let guard = NEW_IDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let kept = fs::read_dir(&dir)?.filter_map(|e| e.ok()).filter(|e| is_report(&e.file_name())).count();
            if kept >= MAX_COLLECTORS {
                return Ok(false);
            }
            Some(guard)
        };
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
    pub fn read_collector_reports(&self) -> Vec<(CollectorReport, i64)> {
        let Ok(entries) = fs::read_dir(self.collectors_dir()) else { return Vec::new() };
        let mut reports: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter(|e| is_report(&e.file_name()))
            .filter_map(|e| {
                let body: serde_json::Value = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((serde_json::from_value(body["report"].clone()).ok()?, body["received_at_ms"].as_i64()?))
            })
            .collect();
        reports.sort_by(|a: &(CollectorReport, i64), b| a.0.id.cmp(&b.0.id));
        reports
    }
}

/// A collector's report file (not a temp file, which starts with a dot).
fn is_report(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
}
