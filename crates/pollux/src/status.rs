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
        return exit_code(&body);
    }
    print!("{}", render(&body));
    exit_code(&body)
}

/// 0 only while data flows: a ready active, a healthy shared directory and repository, loads
/// succeeding and nothing stuck in the store. An answer without the verdict (an older
/// aggregator) is judged by the shared directory and repository alone.
fn exit_code(body: &serde_json::Value) -> ExitCode {
    let flowing = match body["flowing"].as_bool() {
        Some(flowing) => flowing,
        None => {
            body["shared_dir"]["ok"].as_bool().unwrap_or(false) && body["repository"]["ok"].as_bool().unwrap_or(false)
        }
    };
    if flowing {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The System Status as a terminal table: one line per aggregator, then the shared state.
fn render(body: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<14} {:>6} {:>5} {:>11} {:<8} URL",
        "NODE", "ROLE", "EPOCH", "READY", "HEARTBEAT", "VERSION"
    );
    for node in body["nodes"].as_array().into_iter().flatten() {
        let text = |k: &str| node[k].as_str().unwrap_or("-").to_owned();
        let role = if node["reachable"] == false { format!("down({})", text("role")) } else { text("role") };
        let age = node["heartbeat_age_seconds"].as_f64().map_or("-".to_owned(), |a| format!("{a:.1}s ago"));
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:>6} {:>5} {:>11} {:<8} {}{}",
            text("node"),
            role,
            node["epoch"].as_u64().unwrap_or(0),
            if node["ready"].as_bool().unwrap_or(false) { "yes" } else { "no" },
            age,
            text("version"),
            text("advertise"),
            node["reason"].as_str().map(|r| format!("  ({r})")).unwrap_or_default(),
        );
    }
    let lease = &body["lease"];
    if lease.is_object() {
        let _ = writeln!(
            out,
            "lease: {} epoch {} {} (counter {}, unchanged for {:.1}s); failwait {}, startwait {}",
            lease["holder"].as_str().unwrap_or("-"),
            lease["epoch"],
            lease["state"].as_str().unwrap_or("-"),
            lease["counter"],
            lease["unchanged_seconds"].as_f64().unwrap_or(0.0),
            body["failwait"].as_str().unwrap_or("-"),
            body["startwait"].as_str().unwrap_or("-"),
        );
    } else {
        let _ = writeln!(out, "lease: not taken yet");
    }
    let shared = &body["shared_dir"];
    let repo = &body["repository"];
    let _ = writeln!(
        out,
        "DTO backlog {} (oldest {:.1}s); shared dir {} {} ({:.1} GiB free{}); repository {} ({:.1} MiB, {} DTOs loaded, {} rollups pending{})",
        body["dto_backlog"],
        body["loader_lag_seconds"].as_f64().unwrap_or(0.0),
        shared["path"].as_str().unwrap_or("-"),
        if shared["ok"].as_bool().unwrap_or(false) { "ok" } else { "FAILING" },
        shared["free_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        if shared["nfs"].as_bool().unwrap_or(false) { ", NFS" } else { "" },
        if repo["ok"].as_bool().unwrap_or(false) { "ok" } else { "FAILING" },
        repo["bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64,
        repo["loaded_dtos"],
        repo["pending_rollups"],
        match repo["replaced_records"].as_u64() {
            Some(n) if n > 0 => format!(", {n} records replaced by another DTO id's"),
            _ => String::new(),
        },
    );
    let alerting = &body["alerting"];
    if alerting.is_object() {
        let open: Vec<String> = alerting["open_events"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(severity, n)| format!("{n} {severity}"))
            .collect();
        let outbox = &alerting["outbox"];
        let _ = write!(
            out,
            "events open: {}; outbox {} waiting (oldest {}s){}",
            if open.is_empty() { "none".to_owned() } else { open.join(", ") },
            outbox["depth"],
            outbox["oldest_age_seconds"].as_i64().unwrap_or(0),
            match outbox["dropped"].as_u64() {
                Some(n) if n > 0 => format!(", {n} DROPPED (outbox full)"),
                _ => String::new(),
            }
        );
        for r in alerting["receivers"].as_array().into_iter().flatten() {
            let failing = r["last_error_ms"].as_i64() > r["last_ok_ms"].as_i64();
            let _ = write!(
                out,
                "; {} {} {}",
                r["kind"].as_str().unwrap_or("-"),
                r["url"].as_str().unwrap_or("-"),
                if failing { format!("FAILING: {}", r["last_error"].as_str().unwrap_or("-")) } else { "ok".into() }
            );
        }
        let _ = writeln!(out);
    }
    for (task, p) in body["progress"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{task} in progress: {}{} {}, {:.0}/s{}",
            p["done"],
            p["total"].as_u64().map_or(String::new(), |t| format!(" of {t}")),
            p["unit"].as_str().unwrap_or(""),
            p["rate_per_second"].as_f64().unwrap_or(0.0),
            p["seconds_left"].as_f64().map_or(String::new(), |s| format!(", about {s:.0} s left")),
        );
    }
    match body["problems"].as_array() {
        Some(problems) if !problems.is_empty() => {
            let _ = writeln!(out, "DATA IS NOT FLOWING:");
            for p in problems {
                let _ = writeln!(out, "  - {}", p.as_str().unwrap_or("?"));
            }
        }
        Some(_) => {
            let _ = writeln!(out, "data is flowing");
        }
        None => {}
    }
    out
}
