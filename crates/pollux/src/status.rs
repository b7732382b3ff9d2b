//! `pollux status`: the System Status of the aggregators, in a terminal or as JSON.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// An aggregator (or the proxy) to ask.
    #[arg(long, default_value = "http://127.0.0.1:8581")]
    url: String,
    /// Print the full status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> ExitCode {
    let url = format!("{}/api/v1/status", args.url.trim_end_matches('/'));
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .http_status_as_error(false)
            .build(),
    );
    let body: serde_json::Value = match agent.get(&url).call().and_then(|mut r| r.body_mut().read_json()) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("pollux status: {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<16} {:<9} {:>5} {:>5} {:>9} {:>9} {:>8} {:>10} {:>10} {:<8}",
        "NODE", "ROLE", "EPOCH", "READY", "FAILWAIT", "STARTWAIT", "BACKLOG", "LAG(s)", "REPO(MiB)", "VERSION"
    );
    let mut healthy = true;
    for node in body["nodes"].as_array().into_iter().flatten() {
        let text = |k: &str| node[k].as_str().unwrap_or("-").to_owned();
        healthy &=
            node["shared_dir"]["ok"].as_bool().unwrap_or(false) && node["repository"]["ok"].as_bool().unwrap_or(false);
        println!(
            "{:<16} {:<9} {:>5} {:>5} {:>9} {:>9} {:>8} {:>10.1} {:>10.1} {:<8}",
            text("node"),
            text("role"),
            node["epoch"].as_u64().unwrap_or(0),
            if node["ready"].as_bool().unwrap_or(false) { "yes" } else { "no" },
            text("failwait"),
            text("startwait"),
            node["dto_backlog"].as_u64().unwrap_or(0),
            node["loader_lag_seconds"].as_f64().unwrap_or(0.0),
            node["repository"]["bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
            text("version"),
        );
        if let Some(reason) = node["reason"].as_str() {
            println!("  reason: {reason}");
        }
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        println!("shared dir or repository unhealthy: see --json");
        ExitCode::FAILURE
    }
}
