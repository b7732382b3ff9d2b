//! `pollux status`: the System Status of the aggregators, in a terminal or as JSON.

use pollux_model::wire::SystemStatus;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// An aggregator (or the proxy) to ask.
    #[arg(long, default_value = "http://127.0.0.1:8581", value_parser = crate::client::parse_url)]
    url: String,
    /// Print the full status as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: crate::client::ClientArgs,
}

pub fn run(args: StatusArgs) -> ExitCode {
    let url = format!("{}/api/v1/status", args.url.trim_end_matches('/'));
    let client = match args.client.client(std::time::Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pollux status: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let answer = client.get(&url).call().map(|mut r| {
        let body = r.body_mut().read_json().unwrap_or(serde_json::Value::Null);
        (r.status().as_u16(), r.headers().clone(), body)
    });
    let body: serde_json::Value = match answer {
        Ok((200, _, body)) if body.is_object() => body,
        Ok((code, headers, body)) => {
            eprintln!("pollux status: {url}: {}", crate::client::refused(code, &headers, &body));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("pollux status: {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body).expect("JSON"));
        return exit_code(&body);
    }
    match serde_json::from_value::<SystemStatus>(body.clone()) {
        Ok(status) => print!("{}", status.render()),
        Err(e) => println!("(an answer this release cannot read: {e})\n{body}"),
    }
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
