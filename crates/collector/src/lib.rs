//! The Data Collector: polls devices over SNMP, turns counters into rates, writes one DTO per
//! metric family per poll cycle into a durable spool, and sends the spool to the active
//! aggregator with failover.
//!
//! ```text
//!  inventory ──> one task per poll interval (group) ──at each cycle boundary──> poll every device
//!                  (bounded concurrency; crate::poll)      │
//!                                                          v
//!               DTOs per family (split above max_records_per_dto) ──fsync──> spool (crate::spool)
//!                                                          │                      │
//!                        state-<interval>s.json <── counters, done cycle          v
//!                                                                  sender thread (crate::sender)
//!                                                                  PUT /api/v1/dto/{id}, failover
//! ```
//!
//! Nothing a cycle polled is lost short of the spool's size bound: its DTOs are fsync'd before
//! any is sent, and a DTO leaves the spool only once an aggregator acknowledged it. A collector
//! restarted within a cycle it had not finished (its DTOs not all spooled) polls that cycle at
//! once; one restarted after a finished cycle waits for the next boundary.
#![forbid(unsafe_code)]

pub mod config;
pub mod families;
pub mod inventory;
pub mod metrics;
pub mod poll;
pub mod probe;
pub mod rates;
pub mod report;
pub mod sender;
pub mod snmp;
pub mod spool;
pub mod state;
pub mod walk;

use config::CollectorConfig;
use families::FamilyCache;
use inventory::DeviceSpec;
use metrics::Metrics;
use poll::{DevicePoll, Plan, Plans};
use pollux_model::{Catalog, Dto, Record, UnixSeconds};
use snmp::{AsyncSnmp, RequestPolicy, SnmpSession};
use spool::Spool;
use state::{DeviceState, GroupState};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("SNMP socket: {0}")]
    Snmp(String),
    #[error("metrics listener: {0}")]
    Listener(std::io::Error),
    #[error("ack_log {path}: {source}")]
    AckLog { path: String, source: std::io::Error },
}

/// A collector ready to run: configuration and inventory checked, metrics port bound, its
/// spool locked (one process per spool directory).
pub struct Collector {
    config: CollectorConfig,
    security: config::Security,
    devices: Vec<Arc<DeviceSpec>>,
    metrics_listener: std::net::TcpListener,
    spool: Spool,
}

/// The first second of the cycle holding `now`.
pub fn cycle_of(now: UnixSeconds, interval: u32) -> UnixSeconds {
    now - now.rem_euclid(i64::from(interval))
}

/// The cycle to poll after `cycle` finished at `now`, and how many cycles were skipped because
/// it overran: the next one if its time has not passed yet or is still running (it is polled
/// late but whole), otherwise the one running now.
pub fn next_cycle(cycle: UnixSeconds, interval: u32, now: UnixSeconds) -> (UnixSeconds, i64) {
    let next = cycle + i64::from(interval);
    let current = cycle_of(now, interval);
    if current > next {
        (current, (current - next) / i64::from(interval))
    } else {
        (next, 0)
    }
}

/// The first cycle to poll at start: the running one, unless it is already done.
pub fn first_cycle(done: Option<UnixSeconds>, interval: u32, now: UnixSeconds) -> UnixSeconds {
    let current = cycle_of(now, interval);
    if done.is_some_and(|d| d >= current) {
        current + i64::from(interval)
    } else {
        current
    }
}

/// The DTO id for one part of one family's cycle. A group polled at the collector's own
/// interval gets the short form of the contract (`dc1.Interface.1763830800.0`); other groups
/// name their interval so two groups' cycles never share an id.
pub fn dto_id(
    collector: &str,
    family: &str,
    interval: u32,
    default_interval: u32,
    cycle: UnixSeconds,
    part: usize,
) -> String {
    if interval == default_interval {
        format!("{collector}.{family}.{cycle}.{part}")
    } else {
        format!("{collector}.{family}.{interval}s.{cycle}.{part}")
    }
}

impl Collector {
    /// Takes the spool (its lock first: nothing of it is touched before the lock is held). A
    /// spool another process holds is refused here, before anything starts, with the holder
    /// named ([`spool::OpenError::InUse`]).
    pub fn build(
        config: CollectorConfig,
        security: config::Security,
        devices: Vec<DeviceSpec>,
        metrics_listener: std::net::TcpListener,
    ) -> Result<Collector, spool::OpenError> {
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes)?;
        Ok(Collector {
            config,
            security,
            devices: devices.into_iter().map(Arc::new).collect(),
            metrics_listener,
            spool,
        })
    }

    /// Polls, spools and sends until `shutdown`; returns once every task has stopped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CollectorError> {
        let config = Arc::new(self.config);
        let spool = Arc::new(self.spool);
        let families = Arc::new(FamilyCache::open(config.spool_dir.join("families.json")));
        let metrics = Arc::new(Metrics::default());
        let snmp = Arc::new(
            AsyncSnmp::bind(config.max_concurrent_polls).await.map_err(|e| CollectorError::Snmp(e.to_string()))?,
        );

        let stop_sender = Arc::new(AtomicBool::new(false));
        let sender = sender::Sender {
            spool: spool.clone(),
            urls: config.aggregators.clone(),
            token: self.security.token.clone(),
            tls: self.security.client.clone(),
            timeout: config.send_timeout,
            metrics: metrics.clone(),
            families: families.clone(),
            families_refresh: config.families_refresh,
            stop: stop_sender.clone(),
            ack_log: match &config.ack_log {
                Some(path) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| CollectorError::AckLog { path: path.display().to_string(), source })?,
                ),
                None => None,
            },
        };
        // The sender says when it has ended; it is never joined from the runtime (see below).
        let (sender_ended, sender_done) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sender".into())
            .spawn(move || {
                sender.run();
                let _ = sender_ended.send(());
            })
            .expect("thread");
        let reporter = report::Reporter {
            id: config.id.clone(),
            urls: config.aggregators.clone(),
            token: self.security.token.clone(),
            tls: self.security.client.clone(),
            devices: self.devices.len(),
            metrics: metrics.clone(),
            spool: spool.clone(),
            stop: stop_sender.clone(),
        };
        std::thread::Builder::new().name("reporter".into()).spawn(move || reporter.run()).expect("thread");

        self.metrics_listener.set_nonblocking(true).map_err(CollectorError::Listener)?;
        if let Ok(addr) = self.metrics_listener.local_addr() {
            tracing::info!("metrics listening on {addr}");
        }
        let listener = tokio::net::TcpListener::from_std(self.metrics_listener).map_err(CollectorError::Listener)?;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(metrics::serve(
            listener,
            self.security.listener.clone(),
            self.security.metrics_token.clone(),
            metrics.clone(),
            spool.clone(),
            shutdown.clone(),
        ));

        // SIGHUP reads ingest_token_file again: a token is replaced without a restart.
        let (reload_config, token) = (config.clone(), self.security.token.clone());
        let metrics_token = self.security.metrics_token.clone();
        tasks.spawn(pollux_transport::on_hangup(shutdown.clone(), move || {
            match reload_config.ingest_token() {
                Ok(new) => {
                    token.replace(new);
                    tracing::info!("ingest_token_file read again on SIGHUP");
                }
                Err((key, problem)) => tracing::error!("{key}: {problem}; the token in force stays"),
            }
            if let Err((key, problem)) = metrics_token.reload() {
                tracing::error!("{key}: {problem}; the token in force stays");
            }
        }));

        let mut groups: BTreeMap<u32, Vec<Arc<DeviceSpec>>> = BTreeMap::new();
        for device in &self.devices {
            let interval = device.interval.unwrap_or(config.interval).as_secs() as u32;
            groups.entry(interval).or_default().push(device.clone());
        }
        tracing::info!(
            devices = self.devices.len(),
            groups = groups.len(),
            aggregators = ?config.aggregators,
            "collector {} polling every {}",
            config.id,
            pollux_model::duration::format(config.interval)
        );
        let polls = Arc::new(Semaphore::new(config.max_concurrent_polls));
        for (interval, devices) in groups {
            let group = Group {
                interval,
                devices,
                config: config.clone(),
                spool: spool.clone(),
                families: families.clone(),
                metrics: metrics.clone(),
                snmp: snmp.clone(),
                polls: polls.clone(),
            };
            tasks.spawn(group.run(shutdown.clone()));
        }
        shutdown.cancelled().await;
        while tasks.join_next().await.is_some() {}
        stop_sender.store(true, Ordering::Relaxed);
        // The sender stops between two sends; one in flight to a frozen aggregator could take
        // send_timeout. Not worth waiting for: an unacknowledged DTO stays in the spool.
        // (Not joined on a blocking task: the runtime would wait for it when it shuts down.)
        if tokio::time::timeout(Duration::from_secs(5), sender_done).await.is_err() {
            tracing::warn!("the sender is still waiting for an answer; its DTO stays in the spool");
        }
        Ok(())
    }
}

/// The devices polled at one interval, and what polling them needs.
struct Group {
    interval: u32,
    devices: Vec<Arc<DeviceSpec>>,
    config: Arc<CollectorConfig>,
    spool: Arc<Spool>,
    families: Arc<FamilyCache>,
    metrics: Arc<Metrics>,
    snmp: Arc<AsyncSnmp>,
    polls: Arc<Semaphore>,
}

/// Sleeps until Unix time `at`, or returns false on shutdown.
async fn sleep_until_unix(at: UnixSeconds, shutdown: &CancellationToken) -> bool {
    loop {
        let wait = at as f64 - poll::unix_now();
        if wait <= 0.0 {
            return true;
        }
        // Re-read the clock at least every few seconds: it may be stepped.
        let nap = Duration::from_secs_f64(wait.min(5.0));
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(nap) => {}
        }
    }
}

impl Group {
    async fn run(self, shutdown: CancellationToken) {
        let state_path = state::path(&self.config.spool_dir, self.interval);
        let mut state = GroupState::load(&state_path);
        let mut sessions: Vec<Option<Arc<dyn SnmpSession>>> = vec![None; self.devices.len()];
        let mut plans: (Option<Arc<Catalog>>, Arc<Plans>) = (None, Arc::default());
        let mut warned = HashSet::new();
        // A cycle is done once its DTOs are in the spool (they arrive there whole) and the state
        // file says so; the spool is asked too, since the state file is written after it.
        let mut cycle = first_cycle(state.done, self.interval, poll::unix_now() as i64);
        if self.spool.has_cycle(cycle, self.interval) {
            cycle += i64::from(self.interval);
        }
        loop {
            if !sleep_until_unix(cycle, &shutdown).await {
                return;
            }
            let catalog = self.families.catalog();
            if !plans.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, &catalog)) {
                let built = catalog.iter().filter_map(|f| Plan::new(f.clone()).map(|p| (f.name.clone(), Arc::new(p))));
                plans = (Some(catalog.clone()), Arc::new(built.collect()));
            }
            for device in &self.devices {
                for family in &device.families {
                    if catalog.get(family).is_none() && warned.insert(family.clone()) {
                        tracing::warn!("family {family} (device {}) is not known yet; not polled", device.name);
                    }
                }
            }
            let started = Instant::now();
            let results = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.poll_all(&mut sessions, &mut state, &plans.1) => r,
            };
            let unreachable = results.iter().filter(|(_, poll)| !poll.reachable).count() as u64;
            self.metrics.unreachable.lock().expect("metrics").insert(self.interval, unreachable);
            let dtos = self.dtos(cycle, &catalog, results);
            Metrics::add(&self.metrics.cycles, 1);
            self.metrics.last_cycle_seconds_millis.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Err(e) = self.spool_cycle(cycle, dtos, &mut state, &state_path).await {
                // Without a spool nothing can be kept: say so loudly, and try the next cycle.
                tracing::error!("cycle {cycle}: cannot write the spool: {e}; this cycle's data is lost");
            }
            let (next, skipped) = next_cycle(cycle, self.interval, poll::unix_now() as i64);
            if skipped > 0 {
                Metrics::add(&self.metrics.cycles_skipped, skipped as u64);
                tracing::error!(
                    "cycle {cycle} took {:?}, past the next {skipped} cycle(s) of {}s; they are skipped",
                    started.elapsed(),
                    self.interval
                );
            }
            cycle = next;
        }
    }

    /// Polls every device of the group once, at most `max_concurrent_polls` at a time.
    async fn poll_all(
        &self,
        sessions: &mut [Option<Arc<dyn SnmpSession>>],
        state: &mut GroupState,
        plans: &Arc<Plans>,
    ) -> Vec<(Arc<DeviceSpec>, DevicePoll)> {
        let mut tasks = tokio::task::JoinSet::new();
        // Devices that answered last time first: the others may cost a timeout each, and must
        // not hold the poll slots while the live ones wait (see `probe`).
        let mut order: Vec<usize> = (0..self.devices.len()).collect();
        order.sort_by_key(|&k| !state.devices.get(&self.devices[k].name).is_some_and(|d| d.answering));
        for k in order {
            let device = &self.devices[k];
            let policy = RequestPolicy {
                timeout: device.timeout.unwrap_or(self.config.timeout),
                retries: device.retries.unwrap_or(self.config.retries),
            };
            if sessions[k].is_none() {
                match self.snmp.session(device, policy).await {
                    Ok(session) => sessions[k] = Some(session),
                    Err(e) => tracing::warn!("device {}: {e}", device.name),
                }
            }
            let session = sessions[k].clone();
            let device_state = state.devices.remove(&device.name).unwrap_or_default();
            let (device, plans, interval) = (device.clone(), plans.clone(), f64::from(self.interval));
            // The permit is taken before the task exists, so only polls in flight hold memory.
            let permit = self.polls.clone().acquire_owned().await.expect("semaphore");
            let wait = probe::PROBE_WAIT.min(policy.timeout);
            tasks.spawn(async move {
                let _permit = permit;
                let mut device_state: DeviceState = device_state;
                let refused = session.is_some()
                    && !device_state.answering
                    && probe::probe(&device.address, device.port, device.credentials.probe_community(), wait).await
                        == probe::Probe::Refused;
                let poll = match session {
                    _ if refused => {
                        DevicePoll { polled_at: Some(poll::unix_now()), refused: true, ..DevicePoll::default() }
                    }
                    Some(s) => {
                        poll::poll_device(&*s, interval, &device.name, &device.families, &plans, &mut device_state)
                            .await
                    }
                    None => DevicePoll::default(),
                };
                device_state.answering = poll.reachable;
                (k, device, poll, device_state)
            });
        }
        let mut results: Vec<Option<(Arc<DeviceSpec>, DevicePoll)>> = (0..self.devices.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (k, device, poll, device_state) = match joined {
                Ok(result) => result,
                Err(e) => {
                    // A bug, not a device problem: say so, and keep polling the others.
                    tracing::error!("a poll task failed: {e}; that device has no data this cycle");
                    continue;
                }
            };
            state.devices.insert(device.name.clone(), device_state);
            Metrics::add(&self.metrics.polls, 1);
            Metrics::add(&self.metrics.timeouts, u64::from(poll.timeouts));
            Metrics::add(&self.metrics.family_failures, poll.failures.len() as u64);
            if !poll.reachable {
                Metrics::add(&self.metrics.polls_unreachable, 1);
            }
            if poll.refused {
                Metrics::add(&self.metrics.polls_refused, 1);
            }
            for (family, why) in &poll.failures {
                tracing::debug!(device = device.name, family, "not polled: {why}");
            }
            results[k] = Some((device, poll));
        }
        results.into_iter().flatten().collect()
    }

    /// The cycle's DTOs, one per family (more above `max_records_per_dto`).
    fn dtos(&self, cycle: UnixSeconds, catalog: &Catalog, results: Vec<(Arc<DeviceSpec>, DevicePoll)>) -> Vec<Dto> {
        let interval = self.interval;
        // A record's time is its poll's; a poll that ran late is pinned inside the window the
        // aggregator accepts for the cycle rather than refused.
        let ts = |at: f64| (at as i64).clamp(cycle, cycle + 2 * i64::from(interval) - 1);
        let mut by_family: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        let now = poll::unix_now();
        for (device, poll) in results {
            if device.families.iter().any(|f| f == "Availability") {
                let reachable = if poll.reachable { 1.0 } else { 0.0 };
                by_family.entry("Availability".into()).or_default().push(Record {
                    device: device.name.clone(),
                    item: device.name.clone(),
                    ts: ts(poll.polled_at.unwrap_or(now)),
                    values: vec![Some(reachable), poll.response_ms],
                });
            }
            for (family, records) in poll.families {
                let list = by_family.entry(family).or_default();
                list.extend(records.into_iter().map(|(item, at, values)| Record {
                    device: device.name.clone(),
                    item,
                    ts: ts(at),
                    values,
                }));
            }
        }
        let default_interval = self.config.interval.as_secs() as u32;
        let mut dtos = Vec::new();
        for (family, records) in by_family {
            let Some(definition) = catalog.get(&family) else { continue };
            let metrics: Vec<String> = definition.metrics.iter().map(|m| m.name.clone()).collect();
            Metrics::add(&self.metrics.records, records.len() as u64);
            // Parts in record order, moved rather than copied (a cycle can be 100,000 records).
            let mut records = records.into_iter();
            for part in 0.. {
                let records: Vec<Record> = records.by_ref().take(self.config.max_records_per_dto).collect();
                if records.is_empty() {
                    break;
                }
                dtos.push(Dto {
                    id: dto_id(&self.config.id, &family, interval, default_interval, cycle, part),
                    collector: self.config.id.clone(),
                    family: family.clone(),
                    cycle,
                    interval,
                    metrics: metrics.clone(),
                    records,
                });
            }
        }
        dtos
    }

    /// Writes the cycle's DTOs to the spool (fsync'd), then the group's state.
    async fn spool_cycle(
        &self,
        cycle: UnixSeconds,
        dtos: Vec<Dto>,
        state: &mut GroupState,
        state_path: &std::path::Path,
    ) -> std::io::Result<()> {
        let count = dtos.len() as u64;
        let (spool, interval) = (self.spool.clone(), self.interval);
        let dropped = tokio::task::spawn_blocking(move || {
            if dtos.is_empty() {
                return Ok(Vec::new());
            }
            // Each DTO is dropped once encoded, so the cycle is never held twice over.
            let encoded: Vec<(String, Vec<u8>)> =
                dtos.into_iter().map(|d| (d.id.clone(), pollux_model::codec::binary::encode(&d))).collect();
            spool.add(cycle, interval, &encoded)
        })
        .await
        .expect("spool task")?;
        Metrics::add(&self.metrics.dtos_spooled, count);
        if !dropped.is_empty() {
            Metrics::add(&self.metrics.dropped, dropped.len() as u64);
            for d in &dropped {
                tracing::error!(
                    "spool full (spool_max_bytes = {}): DROPPED unsent DTO {} of cycle {}",
                    self.config.spool_max_bytes,
                    d.id,
                    d.cycle
                );
            }
        }
        state.done = Some(cycle);
        let snapshot = std::mem::take(state);
        let path = state_path.to_owned();
        let (snapshot, saved) = tokio::task::spawn_blocking(move || {
            let saved = snapshot.save(&path);
            (snapshot, saved)
        })
        .await
        .expect("state task");
        *state = snapshot;
        if let Err(e) = saved {
            tracing::warn!("{}: {e}; a restart would lose one rate", state_path.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_align_to_interval_boundaries_and_ids_are_stable() {
        assert_eq!(cycle_of(1_763_830_812, 300), 1_763_830_800);
        assert_eq!(cycle_of(1_763_830_800, 300), 1_763_830_800);
        assert_eq!(dto_id("dc1", "Interface", 300, 300, 1_763_830_800, 0), "dc1.Interface.1763830800.0");
        assert_eq!(dto_id("dc1", "CPU", 60, 300, 1_763_830_800, 2), "dc1.CPU.60s.1763830800.2");
    }

    #[test]
    fn restarts_poll_the_running_cycle_unless_done() {
        assert_eq!(first_cycle(None, 300, 1_800_100), 1_800_000);
        assert_eq!(first_cycle(Some(1_799_700), 300, 1_800_100), 1_800_000);
        assert_eq!(first_cycle(Some(1_800_000), 300, 1_800_100), 1_800_300);
    }

    #[test]
    fn an_overrun_polls_the_next_cycle_late_or_skips_to_the_running_one() {
        // On time, and a little late: the next cycle, nothing skipped.
        assert_eq!(next_cycle(1_800_000, 300, 1_800_010), (1_800_300, 0));
        assert_eq!(next_cycle(1_800_000, 300, 1_800_350), (1_800_300, 0));
        // Two boundaries later: the running cycle, one skipped.
        assert_eq!(next_cycle(1_800_000, 300, 1_800_650), (1_800_600, 1));
    }
}
