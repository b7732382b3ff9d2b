//! Progress of long work on the active: recovering the DTO backlog after a takeover, rolling up
//! pending periods, compacting, expiring. Each task reports done (and, when known, total) units;
//! the status view shows them with the rate and the time left, and the log says where they are
//! at most every [`LOG_EVERY`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Task {
    unit: &'static str,
    done: u64,
    total: Option<u64>,
    started: Instant,
    logged: Instant,
}

pub use pollux_model::wire::TaskProgress as Report;

/// The rate so far and, with a total, the time left at that rate.
pub fn estimate(done: u64, total: Option<u64>, elapsed: Duration) -> (f64, Option<f64>) {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
    let left = total.and_then(|t| (rate > 0.0).then(|| t.saturating_sub(done) as f64 / rate));
    (rate, left)
}

#[derive(Debug, Default)]
pub struct Tracker {
    tasks: Mutex<BTreeMap<&'static str, Task>>,
}

impl Tracker {
    /// Starts `name`, unless it is already running.
    pub fn begin(&self, name: &'static str, unit: &'static str, total: Option<u64>) {
        let mut tasks = self.tasks.lock().expect("progress");
        if tasks.contains_key(name) {
            return;
        }
        let now = Instant::now();
        tracing::info!(
            task = name,
            total,
            "{name}: started ({})",
            total.map_or(String::new(), |t| format!("{t} {unit}"))
        );
        tasks.insert(name, Task { unit, done: 0, total, started: now, logged: now });
    }

    pub fn running(&self, name: &str) -> bool {
        self.tasks.lock().expect("progress").contains_key(name)
    }

    /// `done` more units. A total that turns out too small (more arrived meanwhile) grows.
    pub fn advance(&self, name: &'static str, done: u64) {
        let mut tasks = self.tasks.lock().expect("progress");
        let Some(task) = tasks.get_mut(name) else { return };
        task.done += done;
        if let Some(total) = &mut task.total {
            *total = (*total).max(task.done);
        }
        if task.logged.elapsed() >= LOG_EVERY {
            task.logged = Instant::now();
            let (rate, left) = estimate(task.done, task.total, task.started.elapsed());
            let of = task.total.map_or(String::new(), |t| format!(" of {t}"));
            let eta = left.map_or(String::new(), |l| format!(", about {l:.0} s left"));
            tracing::info!(task = name, done = task.done, "{name}: {}{of} {} ({rate:.0}/s{eta})", task.done, task.unit);
        }
    }

    pub fn end(&self, name: &'static str) {
        let Some(task) = self.tasks.lock().expect("progress").remove(name) else { return };
        let elapsed = task.started.elapsed();
        let (rate, _) = estimate(task.done, task.total, elapsed);
        tracing::info!(
            task = name,
            done = task.done,
            "{name}: done, {} {} in {:.1} s ({rate:.0}/s)",
            task.done,
            task.unit,
            elapsed.as_secs_f64()
        );
    }

    pub fn reports(&self) -> BTreeMap<&'static str, Report> {
        let tasks = self.tasks.lock().expect("progress");
        tasks
            .iter()
            .map(|(name, t)| {
                let elapsed = t.started.elapsed();
                let (rate, left) = estimate(t.done, t.total, elapsed);
                let report = Report {
                    unit: t.unit.to_owned(),
                    done: t.done,
                    total: t.total,
                    elapsed_seconds: elapsed.as_secs_f64(),
                    rate_per_second: rate,
                    seconds_left: left,
                };
                (*name, report)
            })
            .collect()
    }

    pub fn clear(&self) {
        self.tasks.lock().expect("progress").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left() {
        assert_eq!(estimate(500, Some(2000), Duration::from_secs(10)), (50.0, Some(30.0)));
        assert_eq!(estimate(0, Some(10), Duration::from_secs(1)), (0.0, None), "no rate yet, no guess");
        assert_eq!(estimate(10, None, Duration::ZERO), (0.0, None));
        assert_eq!(estimate(30, Some(20), Duration::from_secs(1)).1, Some(0.0), "past the total: nothing left");
    }

    #[test]
    fn totals_grow_with_what_arrives_meanwhile() {
        let t = Tracker::default();
        t.begin("recovery", "DTOs", Some(10));
        t.advance("recovery", 8);
        t.advance("recovery", 7);
        let r = &t.reports()["recovery"];
        assert_eq!((r.done, r.total), (15, Some(15)));
        t.begin("recovery", "DTOs", Some(1));
        assert_eq!(t.reports()["recovery"].done, 15, "a running task is not restarted");
        t.end("recovery");
        assert!(t.reports().is_empty());
    }
}
