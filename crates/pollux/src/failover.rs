//! `pollux failover`: a planned switchover, reported with the time the system had no active.

use crate::client::{Client, ClientArgs};
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// The proxy, or any aggregator.
    #[arg(long, default_value = "http://127.0.0.1:8581", value_parser = crate::client::parse_url)]
    url: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// A GET of the status; anything but a 200 is the refusal, in words.
fn get_status(client: &Client, url: &str) -> Result<Value, String> {
    let mut r = client.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let body = r.body_mut().read_json().unwrap_or(Value::Null);
    match r.status().as_u16() {
        200 => Ok(body),
        status => Err(format!("{url}: {}", crate::client::refused(status, r.headers(), &body))),
    }
}

pub fn run(args: FailoverArgs) -> ExitCode {
    let switched =
        args.client.client(Duration::from_secs(15)).and_then(|c| switch_over(&c, args.url.trim_end_matches('/')));
    match switched {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollux failover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn switch_over(agent: &Client, base: &str) -> Result<String, String> {
    let status = get_status(agent, &format!("{base}/api/v1/status"))?;
    let nodes: Vec<Value> = status["nodes"].as_array().cloned().unwrap_or_default();
    let old = status["lease"]["holder"].as_str().unwrap_or("").to_owned();
    let others: Vec<String> = nodes
        .iter()
        .filter(|n| n["node"].as_str() != Some(old.as_str()))
        .filter_map(|n| n["advertise"].as_str().map(str::to_owned))
        .collect();
    if others.is_empty() {
        return Err("no other aggregator has reported: nothing to switch over to".into());
    }
    let started = Instant::now();
    let mut r = agent.post(&format!("{base}/api/v1/failover")).send_empty().map_err(|e| e.to_string())?;
    let answer: Value = r.body_mut().read_json().unwrap_or(Value::Null);
    if r.status() != 200 {
        return Err(crate::client::refused(r.status().as_u16(), r.headers(), &answer));
    }
    let released = Instant::now();
    let deadline = released + Duration::from_secs(30);
    let mut waiting = crate::waiting::Waiting::new("the other aggregator to become active");
    while Instant::now() < deadline {
        for url in &others {
            // Each node's own URL comes from the status: it is sent no token.
            let health = agent.get_open(&format!("{url}/health/active")).call().ok().and_then(|mut r| {
                (r.status() == 200).then(|| r.body_mut().read_json::<Value>().unwrap_or(Value::Null))
            });
            if let Some(health) = health {
                let gap = released.elapsed();
                waiting.finish();
                return Ok(format!(
                    "switched over from {} (epoch {}) to {} (epoch {}); no active for at most {:.0} ms (request to new active {:.0} ms)",
                    answer["node"].as_str().unwrap_or(&old),
                    answer["epoch"],
                    health["node"].as_str().unwrap_or("?"),
                    health["epoch"],
                    gap.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3,
                ));
            }
        }
        waiting.tick();
        std::thread::sleep(Duration::from_millis(10));
    }
    waiting.finish();
    Err("the lease was released but no other aggregator became active within 30 s".into())
}
