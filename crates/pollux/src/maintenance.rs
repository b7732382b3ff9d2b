//! `pollux maintenance on|off`: the original's DA maintenance state. A node in maintenance
//! never takes the lease; an active put into maintenance hands over first.

use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args)]
pub struct MaintenanceArgs {
    /// `on` or `off`.
    state: OnOff,
    /// The proxy, or any aggregator (in maintenance, a node is reached at its own URL).
    #[arg(long, default_value = "http://127.0.0.1:8581", value_parser = crate::client::parse_url)]
    url: String,
    /// The node to change (default: the one answering at --url).
    #[arg(long)]
    node: Option<String>,
    /// Put the active into maintenance even when no healthy standby would take over.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: crate::client::ClientArgs,
}

pub fn run(args: MaintenanceArgs) -> ExitCode {
    let on = matches!(args.state, OnOff::On);
    let url = format!("{}/api/v1/maintenance", args.url.trim_end_matches('/'));
    let agent = match args.client.client(Duration::from_secs(30)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pollux maintenance: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let mut body = json!({"on": on, "force": args.force});
    if let Some(node) = &args.node {
        body["node"] = json!(node);
    }
    // An active put into maintenance answers once it has handed over: show the wait.
    let (answered, answer) = std::sync::mpsc::channel();
    {
        let url = url.clone();
        std::thread::spawn(move || {
            let _ = answered.send(match agent.post(&url).send_json(&body) {
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    let headers = r.headers().clone();
                    Ok((status, headers, r.body_mut().read_json::<Value>().unwrap_or(Value::Null)))
                }
                Err(e) => Err(e.to_string()),
            });
        });
    }
    let mut waiting = crate::waiting::Waiting::new(if on { "the node to go into maintenance" } else { "the node" });
    let outcome = loop {
        match answer.recv_timeout(Duration::from_millis(50)) {
            Ok(outcome) => break outcome,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if on => waiting.tick(),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Err("the request thread died".to_owned()),
        }
    };
    waiting.finish();
    let (status, headers, answer) = match outcome {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("pollux maintenance: {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if status != 200 {
        eprintln!("pollux maintenance: {}", crate::client::refused(status, &headers, &answer));
        return ExitCode::FAILURE;
    }
    let node = answer["node"].as_str().unwrap_or("?");
    match (on, answer["was_active"].as_bool(), answer["handed_over"].as_bool()) {
        (true, Some(true), Some(true)) => {
            println!("{node} handed over and is in maintenance: it never takes the lease")
        }
        (true, Some(true), _) => {
            println!("{node} is in maintenance but still held the lease after 15 s; see pollux status");
            return ExitCode::FAILURE;
        }
        (true, _, _) => println!("{node} is in maintenance: it never takes the lease"),
        (false, _, _) => println!("{node} is out of maintenance: a standby again"),
    }
    ExitCode::SUCCESS
}
