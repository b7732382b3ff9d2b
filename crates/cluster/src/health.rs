//! Readiness by `GET /health`: a process is up when it answers as the Pollux role it is.

use pollux_model::wire::Health;
use std::time::{Duration, Instant};

/// `GET <base>/health` (or `/health/active` when `active`): the status code and the body, or
/// `None` when nothing answered or the body is not a Pollux health.
pub fn health(client: &ureq::Agent, base: &str, active: bool) -> Option<(u16, Health)> {
    let path = if active { "/health/active" } else { "/health" };
    let mut response = client.get(format!("{base}{path}")).call().ok()?;
    let status = response.status().as_u16();
    let health: Health = response.body_mut().read_json().ok()?;
    Some((status, health))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails naming `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
