//! Sending spooled DTOs to the active aggregator, oldest first, one at a time.
//!
//! ```text
//!  spool.oldest() ──PUT /api/v1/dto/{id}──> aggregators[current]
//!     201 / 200 with {"id": "<id>", "stored": true}
//!                          -> acknowledged: remove from the spool; next
//!     3xx, or 200/201 with any other body
//!                          -> not an aggregator (a front end that moved, a login page): said
//!                             once per URL, then treated like 503 (redirects are never
//!                             followed: a PUT redirected becomes a GET, whose 200 means nothing)
//!     400/413/415/422      -> refused for good: move to rejected/, log, count; next
//!     409                  -> the id was acknowledged before with other content (another
//!                             collector with this id?): move to rejected/, log, count; next
//!     404                  -> a wrong URL, not a bad DTO: treated like 503
//!     503, 5xx, no answer  -> next URL in the list; after a whole round without success,
//!                             wait (backoff doubling from 250 ms to 30 s, with jitter)
//!     401 / 403            -> the token is wrong there: log, next URL; after a whole round,
//!                             back off and try again (nothing is dropped)
//! ```
//!
//! Only that answer acknowledges. A spooled file that is gone when its turn comes (deleted by
//! hand, or by another process on the spool) was never seen by an aggregator: it is counted in
//! `pollux_collector_spool_vanished_total` and logged as lost, never as sent.
//!
//! Sending in cycle order means the repository fills in the order data was born, and one DTO at
//! a time is plenty: a collector produces a few DTOs per cycle (one per family, split only above
//! `max_records_per_dto`). The sender also fetches customized families from the aggregator it
//! is talking to (see [`crate::families`]).

use crate::families::FamilyCache;
use crate::metrics::Metrics;
use crate::spool::{Entry, Spool};
use pollux_model::codec::BINARY_CONTENT_TYPE;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Sender {
    pub spool: Arc<Spool>,
    pub urls: Vec<String>,
    pub token: pollux_transport::auth::ClientToken,
    pub tls: pollux_transport::ClientTls,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub families: Arc<FamilyCache>,
    pub families_refresh: Duration,
    pub stop: Arc<AtomicBool>,
    /// Where acknowledged ids are appended, if anywhere.
    pub ack_log: Option<std::fs::File>,
}

/// What an answer means for the DTO.
#[derive(Debug, PartialEq)]
enum Outcome {
    Acknowledged,
    Refused(String),
    /// The aggregator holds this id with other content.
    Conflict(String),
    Unauthorized,
    TryElsewhere(String),
    /// Something other than an aggregator answered: `status` and what it said.
    NotAnAggregator {
        status: u16,
        why: String,
    },
}

/// An aggregator's answer to a DTO it holds (201 stored now, 200 stored before).
#[derive(serde::Deserialize)]
struct Stored {
    id: String,
    stored: bool,
}

/// What an answer to `PUT /api/v1/dto/{id}` means; `location` is its Location header.
fn classify(id: &str, status: u16, location: Option<&str>, body: &str) -> Outcome {
    match status {
        200 | 201 => match serde_json::from_str::<Stored>(body) {
            Ok(answer) if answer.stored && answer.id == id => Outcome::Acknowledged,
            _ => {
                let mut shown: String = body.chars().take(80).map(|c| if c.is_control() { ' ' } else { c }).collect();
                if body.chars().nth(80).is_some() {
                    shown.push_str("...");
                }
                let why = format!("answered {status} without a Pollux acknowledgement (body {:?})", shown.trim());
                Outcome::NotAnAggregator { status, why }
            }
        },
        300..=399 => {
            let to = location.map_or_else(|| "nowhere (no Location)".to_owned(), str::to_owned);
            Outcome::NotAnAggregator { status, why: format!("answered {status} redirect to {to}") }
        }
        401 | 403 => Outcome::Unauthorized,
        // 404 is not the DTO's fault: a wrong URL or something else on the port. Try elsewhere.
        400 | 413 | 415 | 422 => Outcome::Refused(format!("{status} {}", body.trim())),
        409 => Outcome::Conflict(format!("{status} {}", body.trim())),
        _ => Outcome::TryElsewhere(format!("{status} {}", body.trim())),
    }
}

/// The wait after `failures` rounds without success: doubling, capped, with ±25 % jitter so
/// that collectors restarted together do not retry in lockstep.
pub fn backoff(failures: u32, jitter_draw: f64) -> Duration {
    let base = MIN_BACKOFF.saturating_mul(1 << failures.min(10)).min(MAX_BACKOFF);
    base.mul_f64(0.75 + 0.5 * jitter_draw.clamp(0.0, 1.0))
}

impl Sender {
    /// Runs until `stop` is set. Blocking: give it a thread.
    pub fn run(self) {
        let agent: ureq::Agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(self.timeout))
                .tls_config(self.tls.ureq())
                // An aggregator host that is down answers no SYN: move to the next URL soon.
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .http_status_as_error(false)
                // An aggregator never redirects; a redirected PUT would come back as a GET
                // whose 200 acknowledges nothing. The 3xx itself is the answer.
                .max_redirects(0)
                .build(),
        );
        // The family listing is small; a slow answer must not hold up sending for long.
        let listing_agent: ureq::Agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(LISTING_TIMEOUT))
                .tls_config(self.tls.ureq())
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .http_status_as_error(false)
                .max_redirects(0)
                .build(),
        );
        let mut current = 0usize;
        let mut failed_in_round = 0usize;
        let mut rounds_failed = 0u32;
        let mut jitter = Jitter::new();
        let mut families_due = Instant::now();
        // Per URL, the status of the last "not an aggregator" said about it, so that it is said
        // once, not for every DTO and every round; forgotten once the URL acknowledges.
        let mut told: HashMap<usize, u16> = HashMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            if Instant::now() >= families_due {
                self.families.refresh(&listing_agent, &self.token, &self.urls, current);
                families_due = Instant::now() + self.families_refresh;
            }
            let Some(entry) = self.spool.oldest(Duration::from_millis(200)) else { continue };
            let url = &self.urls[current];
            let outcome = match self.spool.read(&entry) {
                Ok(body) => self.send(&agent, url, &entry, &body),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Only an aggregator's answer acknowledges: this one is lost, and says so.
                    if self.spool.vanished(&entry) {
                        Metrics::add(&self.metrics.spool_vanished, 1);
                        tracing::warn!(
                            "spool: {} vanished before any aggregator acknowledged it (deleted outside \
                             this collector?): DTO {} of cycle {} is LOST",
                            self.spool.file(&entry).display(),
                            entry.id,
                            entry.cycle
                        );
                    }
                    continue;
                }
                Err(e) => Outcome::TryElsewhere(format!("cannot read the spooled file: {e}")),
            };
            if let Outcome::NotAnAggregator { status, why } = &outcome {
                if told.insert(current, *status) != Some(*status) {
                    tracing::error!(
                        "{url} {why}: not an aggregator; check the URL (DTOs stay in the spool until an \
                         aggregator acknowledges them)"
                    );
                }
            }
            match outcome {
                Outcome::Acknowledged => {
                    told.remove(&current);
                    Metrics::add(&self.metrics.dtos_sent, 1);
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    self.metrics.last_ack_ms.store(now_ms, Ordering::Relaxed);
                    if let Some(log) = &self.ack_log {
                        use std::io::Write;
                        // One write per line, in append mode: lines never interleave.
                        if let Err(e) = (&*log).write_all(format!("{}\n", entry.id).as_bytes()) {
                            tracing::warn!("ack_log: {e}");
                        }
                    }
                    if let Err(e) = self.spool.remove(&entry) {
                        tracing::error!("spool: cannot remove acknowledged {}: {e}", entry.id);
                    }
                    failed_in_round = 0;
                    rounds_failed = 0;
                }
                Outcome::Conflict(why) => {
                    Metrics::add(&self.metrics.dtos_conflict, 1);
                    Metrics::add(&self.metrics.dtos_rejected, 1);
                    tracing::error!("{url} refused DTO {}: {why}; kept in the spool's rejected/ directory", entry.id);
                    if let Err(e) = self.spool.reject(&entry) {
                        tracing::error!("spool: cannot move refused {}: {e}", entry.id);
                    }
                }
                Outcome::Refused(why) => {
                    Metrics::add(&self.metrics.dtos_rejected, 1);
                    tracing::error!("{url} refused DTO {}: {why}; kept in the spool's rejected/ directory", entry.id);
                    if let Err(e) = self.spool.reject(&entry) {
                        tracing::error!("spool: cannot move refused {}: {e}", entry.id);
                    }
                }
                Outcome::Unauthorized => {
                    // Another URL may hold the token this collector has (one node reconfigured
                    // before the other): move on, and back off once every URL has refused.
                    Metrics::add(&self.metrics.send_failures, 1);
                    tracing::error!("{url}: 401/403 for DTO {}: check ingest_token_file", entry.id);
                    current = (current + 1) % self.urls.len();
                    failed_in_round += 1;
                    if failed_in_round >= self.urls.len() {
                        self.sleep(backoff(rounds_failed, jitter.draw()));
                        failed_in_round = 0;
                        rounds_failed = rounds_failed.saturating_add(1);
                    }
                }
                Outcome::TryElsewhere(why) | Outcome::NotAnAggregator { why, .. } => {
                    Metrics::add(&self.metrics.send_failures, 1);
                    current = (current + 1) % self.urls.len();
                    failed_in_round += 1;
                    if failed_in_round >= self.urls.len() {
                        let wait = backoff(rounds_failed, jitter.draw());
                        tracing::warn!(
                            "DTO {} not sent ({why}); every aggregator URL failed, retrying in {wait:?}",
                            entry.id
                        );
                        self.sleep(wait);
                        failed_in_round = 0;
                        rounds_failed = rounds_failed.saturating_add(1);
                    } else {
                        tracing::info!("DTO {} not sent to {url} ({why}); trying {}", entry.id, self.urls[current]);
                    }
                }
            }
        }
    }

    fn send(&self, agent: &ureq::Agent, url: &str, entry: &Entry, body: &[u8]) -> Outcome {
        let mut request =
            agent.put(format!("{url}/api/v1/dto/{}", entry.id)).header("Content-Type", BINARY_CONTENT_TYPE);
        if let Some(authorization) = self.token.header() {
            request = request.header("Authorization", authorization);
        }
        match request.send(body) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let text = response.body_mut().read_to_string().unwrap_or_default();
                classify(&entry.id, status, location.as_deref(), &text)
            }
            Err(e) => Outcome::TryElsewhere(e.to_string()),
        }
    }

    /// Sleeps, waking early when asked to stop or when the token is replaced (SIGHUP).
    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        let token = self.token.version();
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < until && self.token.version() == token {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }
}

/// Jitter draws; quality does not matter, independence between collectors does.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Jitter(seed ^ u64::from(std::process::id()) << 32 | 1)
    }

    fn draw(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_the_dto_fate() {
        let classify = |status, body| classify("dc1.CPU.100.0", status, None, body);
        let stored = r#"{"id":"dc1.CPU.100.0","stored":true}"#;
        assert_eq!(classify(201, stored), Outcome::Acknowledged);
        assert_eq!(classify(200, stored), Outcome::Acknowledged);
        assert!(matches!(classify(400, "{\"error\":\"x\"}"), Outcome::Refused(_)));
        assert!(matches!(classify(409, "{\"error\":\"x\"}"), Outcome::Conflict(_)));
        assert!(matches!(classify(503, ""), Outcome::TryElsewhere(_)));
        assert!(matches!(classify(502, ""), Outcome::TryElsewhere(_)));
        assert!(matches!(classify(404, ""), Outcome::TryElsewhere(_)));
        assert_eq!(classify(401, ""), Outcome::Unauthorized);
    }

    /// Only an aggregator's own answer for this id acknowledges it.
    #[test]
    fn a_redirect_or_another_200_is_not_an_acknowledgement() {
        let id = "dc1.CPU.100.0";
        let not_an_aggregator = |outcome: Outcome, expected: &str| match outcome {
            Outcome::NotAnAggregator { why, .. } => assert!(why.contains(expected), "{why}"),
            other => panic!("{other:?}"),
        };
        for (status, body) in [
            (200, ""),
            (200, "<html><body>Please log in</body></html>"),
            (201, "{}"),
            (200, r#"{"id":"dc1.CPU.400.0","stored":true}"#),
            (201, r#"{"id":"dc1.CPU.100.0","stored":false}"#),
        ] {
            not_an_aggregator(classify(id, status, None, body), &format!("answered {status} without"));
        }
        let long = "x".repeat(500);
        not_an_aggregator(classify(id, 200, None, &long), &format!("{}...", "x".repeat(80)));
        let to = Some("https://sso.example/login");
        not_an_aggregator(classify(id, 302, to, ""), "answered 302 redirect to https://sso.example/login");
        not_an_aggregator(classify(id, 301, None, ""), "answered 301 redirect to nowhere");
        not_an_aggregator(classify(id, 307, to, ""), "answered 307 redirect to");
    }

    /// A spooled file deleted behind the sender's back (an operator, a second process on the
    /// spool) was never seen by an aggregator: it is not acknowledged, not logged as sent.
    #[test]
    fn a_spooled_file_that_vanishes_is_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool"), 1 << 20).unwrap());
        spool.add(100, 100, &[("c.CPU.100.0".into(), vec![7u8; 100])]).unwrap();
        std::fs::remove_file(dir.path().join("spool/outbox/000000000100.100s/c.CPU.100.0.pxd")).unwrap();
        let ack_log = dir.path().join("acked.log");
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            spool: spool.clone(),
            // Nothing listens there: whatever happens to the DTO, no aggregator saw it.
            urls: vec!["http://127.0.0.1:9".into()],
            token: pollux_transport::auth::ClientToken::new(None),
            tls: pollux_transport::ClientTls::load(None).unwrap(),
            timeout: Duration::from_secs(1),
            metrics: metrics.clone(),
            families: Arc::new(FamilyCache::open(dir.path().join("families.json"))),
            families_refresh: Duration::from_secs(3600),
            stop: stop.clone(),
            ack_log: Some(std::fs::File::create(&ack_log).unwrap()),
        };
        let thread = std::thread::spawn(move || sender.run());
        let deadline = Instant::now() + Duration::from_secs(10);
        while spool.depth().0 > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert_eq!(spool.depth().0, 0, "the sender never took up the vanished DTO");
        let sent = metrics.dtos_sent.load(Ordering::Relaxed);
        assert_eq!(sent, 0, "a file no aggregator saw was counted as acknowledged");
        let logged = std::fs::read_to_string(&ack_log).unwrap();
        assert_eq!(logged, "", "a file no aggregator saw is in the ack log");
        // A loss of its own, counted and shown.
        assert_eq!(metrics.spool_vanished.load(Ordering::Relaxed), 1);
        let shown = metrics.render(&spool, 0);
        assert!(shown.contains("\npollux_collector_spool_vanished_total 1\n"), "{shown}");
        assert!(shown.contains("\npollux_collector_dtos_sent_total 0\n"), "{shown}");
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(backoff(0, 0.5), MIN_BACKOFF);
        assert_eq!(backoff(1, 0.5), MIN_BACKOFF * 2);
        assert_eq!(backoff(20, 0.5), MAX_BACKOFF);
        assert!(backoff(3, 0.0) < backoff(3, 1.0));
    }
}
