//! Sending spooled DTOs to the active aggregator, oldest first, one at a time.
//!
//! ```text
//!  spool.oldest() ──PUT /api/v1/dto/{id}──> aggregators[current]
//!     201 / 200            -> remove from the spool; next
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
//! Sending in cycle order means the repository fills in the order data was born, and one DTO at
//! a time is plenty: a collector produces a few DTOs per cycle (one per family, split only above
//! `max_records_per_dto`). The sender also fetches customized families from the aggregator it
//! is talking to (see [`crate::families`]).

use crate::families::FamilyCache;
use crate::metrics::Metrics;
use crate::spool::{Entry, Spool};
use pollux_model::codec::BINARY_CONTENT_TYPE;
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
}

fn classify(status: u16, body: &str) -> Outcome {
    match status {
        200 | 201 => Outcome::Acknowledged,
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
                .build(),
        );
        // The family listing is small; a slow answer must not hold up sending for long.
        let listing_agent: ureq::Agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(LISTING_TIMEOUT))
                .tls_config(self.tls.ureq())
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .http_status_as_error(false)
                .build(),
        );
        let mut current = 0usize;
        let mut failed_in_round = 0usize;
        let mut rounds_failed = 0u32;
        let mut jitter = Jitter::new();
        let mut families_due = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            if Instant::now() >= families_due {
                self.families.refresh(&listing_agent, &self.token, &self.urls, current);
                families_due = Instant::now() + self.families_refresh;
            }
            let Some(entry) = self.spool.oldest(Duration::from_millis(200)) else { continue };
            let url = &self.urls[current];
            match self.send(&agent, url, &entry) {
                Outcome::Acknowledged => {
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
                Outcome::TryElsewhere(why) => {
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

    fn send(&self, agent: &ureq::Agent, url: &str, entry: &Entry) -> Outcome {
        let body = match self.spool.read(entry) {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Acknowledged,
            Err(e) => return Outcome::TryElsewhere(format!("cannot read the spooled file: {e}")),
        };
        let mut request =
            agent.put(format!("{url}/api/v1/dto/{}", entry.id)).header("Content-Type", BINARY_CONTENT_TYPE);
        if let Some(authorization) = self.token.header() {
            request = request.header("Authorization", authorization);
        }
        match request.send(&body[..]) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let text = response.body_mut().read_to_string().unwrap_or_default();
                classify(status, &text)
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
        assert_eq!(classify(201, ""), Outcome::Acknowledged);
        assert_eq!(classify(200, ""), Outcome::Acknowledged);
        assert!(matches!(classify(400, "{\"error\":\"x\"}"), Outcome::Refused(_)));
        assert!(matches!(classify(409, "{\"error\":\"x\"}"), Outcome::Conflict(_)));
        assert!(matches!(classify(503, ""), Outcome::TryElsewhere(_)));
        assert!(matches!(classify(502, ""), Outcome::TryElsewhere(_)));
        assert!(matches!(classify(404, ""), Outcome::TryElsewhere(_)));
        assert_eq!(classify(401, ""), Outcome::Unauthorized);
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(backoff(0, 0.5), MIN_BACKOFF);
        assert_eq!(backoff(1, 0.5), MIN_BACKOFF * 2);
        assert_eq!(backoff(20, 0.5), MAX_BACKOFF);
        assert!(backoff(3, 0.0) < backoff(3, 1.0));
    }
}
