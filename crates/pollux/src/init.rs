//! `pollux init`: the original installer's prompts, for one role on one host.
//!
//! ```text
//!   flags ──┐
//!   saved answers (<config-dir>/init-answers.toml, unless asked again) ──┼─▶ answers ─▶ <role>.toml
//!   prompts on stdin (defaults with --yes) ──┘                                   pollux-<role>.service
//!                                                    aggregator: <shared>/init/aggregators/<node>.toml,
//!                                                    checked against the other aggregator's
//! ```
//!
//! Every answer is validated where it is given, and a bad one is asked again with the reason.
//! `--upgrade` asks only the questions the saved answers do not cover (those a newer release
//! added). The second aggregator's answers that must match the first's are compared, and every
//! mismatch is named before anything is written.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Aggregator,
    Proxy,
    Collector,
}

impl RoleArg {
    fn name(self) -> &'static str {
        match self {
            RoleArg::Aggregator => "aggregator",
            RoleArg::Proxy => "proxy",
            RoleArg::Collector => "collector",
        }
    }
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Which part this host runs.
    #[arg(long)]
    role: RoleArg,
    /// Keep the saved answers; ask only what this release added.
    #[arg(long)]
    upgrade: bool,
    /// Take the default for every question not answered by a flag or a saved answer.
    #[arg(long)]
    yes: bool,
    /// Install the systemd unit and start it (`systemctl enable --now`).
    #[arg(long)]
    enable: bool,
    /// Where the configuration, the unit and the saved answers go.
    #[arg(long, default_value = "/etc/pollux")]
    config_dir: PathBuf,
    /// 1 = no fault tolerance (one aggregator), 2 = fault tolerance (two aggregators and a proxy).
    #[arg(long)]
    fault_tolerance: Option<String>,
    /// This node's name (aggregator) or the collector's id.
    #[arg(long)]
    node_id: Option<String>,
    /// The host the proxy runs on.
    #[arg(long)]
    proxy_host: Option<String>,
    /// The HTTP port of the aggregators and the proxy.
    #[arg(long)]
    port: Option<String>,
    /// The address to listen on, when the host has several.
    #[arg(long)]
    bind_address: Option<String>,
    /// The shared directory of the two aggregators.
    #[arg(long)]
    shared_dir: Option<String>,
    #[arg(long)]
    failwait: Option<String>,
    #[arg(long)]
    startwait: Option<String>,
    /// The aggregator (or proxy) URL a collector sends to; for a proxy, the first aggregator.
    #[arg(long)]
    aggregator: Option<String>,
    /// The failover location: the other aggregator's URL.
    #[arg(long)]
    failover_aggregator: Option<String>,
    /// 1 = plain HTTP, 2 = HTTPS with tokens (certificates made with `pollux certs`).
    #[arg(long)]
    https: Option<String>,
}

/// One prompt of the installer.
struct Question {
    key: &'static str,
    /// The text shown, the original's advice where it gave any.
    prompt: &'static str,
    roles: &'static [RoleArg],
    /// Asked only with fault tolerance (2).
    fault_tolerant_only: bool,
    default: fn(&Answers) -> Option<String>,
    /// Checks an answer against those given before it; the error is the reason shown.
    check: fn(&str, &Answers) -> Result<String, String>,
}

type Answers = BTreeMap<String, String>;

const AGGREGATOR: &[RoleArg] = &[RoleArg::Aggregator];
const COLLECTOR: &[RoleArg] = &[RoleArg::Collector];
const PROXY: &[RoleArg] = &[RoleArg::Proxy];
/// Pollux's safe minimum failwait: fencing makes short values safe; below a second, a slow disk
/// would look like a dead active.
const MIN_FAILWAIT: Duration = Duration::from_secs(1);
/// The answers both aggregators must share.
const MUST_MATCH: &[&str] =
    &["fault_tolerance", "port", "proxy_host", "failwait", "startwait", "uid", "https", "tls_ca", "tokens"];

fn questions() -> Vec<Question> {
    vec![
        Question {
            key: "fault_tolerance",
            prompt: "Configure a fault-tolerant environment? 1 = no, 2 = yes",
            // A proxy exists only in a fault-tolerant environment.
            roles: &[RoleArg::Aggregator, RoleArg::Collector],
            fault_tolerant_only: false,
            default: |_| Some("1".into()),
            check: |a, _| one_or_two(a),
        },
        Question {
            key: "node_id",
            prompt: "This node's name (each aggregator's must differ; a collector's names its DTOs)",
            roles: &[RoleArg::Aggregator, RoleArg::Collector],
            fault_tolerant_only: false,
            default: |_| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
            check: |a, _| {
                if pollux_aggregator::config::valid_node_id(a) {
                    Ok(a.to_owned())
                } else {
                    Err("1 to 64 of A-Z a-z 0-9 . _ -, not starting with '.'".into())
                }
            },
        },
        Question {
            key: "proxy_host",
            prompt: "The proxy server's host name or address (clients and collectors reach the active through it)",
            roles: &[RoleArg::Aggregator, RoleArg::Collector],
            fault_tolerant_only: true,
            default: |_| None,
            check: |a, _| check_host(a),
        },
        Question {
            key: "port",
            prompt: "The HTTP port of the aggregators and the proxy",
            roles: &[RoleArg::Aggregator, RoleArg::Proxy],
            fault_tolerant_only: false,
            default: |_| Some("8581".into()),
            check: |a, _| match a.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p.to_string()),
                _ => Err(format!("{a:?} is not a port from 1 to 65535")),
            },
        },
        Question {
            key: "bind_address",
            prompt: "The address to listen on (0.0.0.0 for every address of this host)",
            roles: &[RoleArg::Aggregator, RoleArg::Proxy],
            fault_tolerant_only: false,
            default: |_| Some("0.0.0.0".into()),
            check: |a, _| {
                let ip: std::net::IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
                // The address must be one of this host's: binding port 0 on it tells.
                std::net::TcpListener::bind((ip, 0))
                    .map_err(|e| format!("{a} is not an address of this host ({e})"))?;
                Ok(ip.to_string())
            },
        },
        Question {
            key: "shared_dir",
            prompt: "The shared directory (both aggregators: the same NFSv4 share, owned by the same user id)",
            roles: AGGREGATOR,
            fault_tolerant_only: false,
            default: |_| Some(pollux_aggregator::config::DEFAULT_SHARED_DIR.into()),
            check: |a, _| check_shared_dir(a),
        },
        Question {
            key: "failwait",
            prompt: "failwait: how long the active may be silent before the standby takes over. The original \
                     advises 5m, long enough to ride out a network blip; Pollux fences a deposed active, so \
                     shorter is safe (at least 1s)",
            roles: AGGREGATOR,
            fault_tolerant_only: true,
            default: |_| Some("5m".into()),
            check: |a, _| {
                let d = pollux_model::duration::parse(a)?;
                if d < MIN_FAILWAIT {
                    return Err(format!("{a} is below the safe minimum of 1s"));
                }
                Ok(pollux_model::duration::format(d))
            },
        },
        Question {
            key: "startwait",
            prompt: "startwait: how long a new active may take to start before the other node gets its turn. \
                     The original advises 45m for a large backlog; at least failwait",
            roles: AGGREGATOR,
            fault_tolerant_only: true,
            default: |_| Some("45m".into()),
            check: |a, answers| {
                let d = pollux_model::duration::parse(a)?;
                let failwait = answers.get("failwait").and_then(|f| pollux_model::duration::parse(f).ok());
                if failwait.is_some_and(|f| d < f) {
                    return Err(format!("{a} is shorter than failwait ({})", answers["failwait"]));
                }
                Ok(pollux_model::duration::format(d))
            },
        },
        Question { roles: COLLECTOR, ..https_question() },
        Question {
            key: "aggregator",
            prompt: "The aggregator to send to (with fault tolerance: the proxy, http(s)://<proxy host>:8581)",
            roles: COLLECTOR,
            fault_tolerant_only: false,
            default: |answers| {
                let scheme = if answers.get("https").is_some_and(|h| h == "2") { "https" } else { "http" };
                // Without fault tolerance, the aggregator on this host.
                let host = answers.get("proxy_host").map_or("127.0.0.1", String::as_str);
                Some(format!("{scheme}://{host}:8581"))
            },
            check: |a, _| check_url(a),
        },
        Question {
            key: "failover_aggregator",
            prompt: "The failover location: the inactive aggregator's URL (empty for none)",
            roles: COLLECTOR,
            fault_tolerant_only: true,
            default: |_| Some(String::new()),
            check: |a, _| if a.is_empty() { Ok(String::new()) } else { check_url(a) },
        },
        Question {
            key: "aggregator",
            prompt: "The first aggregator's URL",
            roles: PROXY,
            fault_tolerant_only: false,
            default: |_| None,
            check: |a, _| check_url(a),
        },
        Question {
            key: "failover_aggregator",
            prompt: "The second aggregator's URL",
            roles: PROXY,
            fault_tolerant_only: false,
            default: |_| None,
            check: |a, _| check_url(a),
        },
        Question { roles: &[RoleArg::Aggregator, RoleArg::Proxy], ..https_question() },
    ]
}

/// The original's last install step, "Enable HTTPS": asked of every role (the collector before
/// its URLs, so their default has the right scheme).
fn https_question() -> Question {
    Question {
        key: "https",
        prompt: "Enable HTTPS with tokens (certificates from pollux certs in <config dir>/tls)? 1 = no, 2 = yes",
        roles: &[],
        fault_tolerant_only: false,
        default: |_| Some("1".into()),
        check: |a, _| one_or_two(a),
    }
}

/// The original's answers to a yes-or-no question: 1 = no, 2 = yes.
/// The question's check, after [`printable`].
fn printable_check(q: &Question, answer: &str, answers: &Answers) -> Result<String, String> {
    printable(answer).and_then(|a| (q.check)(&a, answers))
}

/// No answer holds a control character: a newline in one would start a line of its own in the
/// files written from it.
fn printable(a: &str) -> Result<String, String> {
    if a.chars().any(char::is_control) {
        return Err(format!("{a:?} holds a control character"));
    }
    Ok(a.to_owned())
}

/// A path a systemd unit can name: no quote, backslash, `%` (a unit specifier) or control
/// character, which would break or rewrite the unit's lines.
fn unit_safe(path: &Path) -> Result<(), String> {
    let text = path.display().to_string();
    if text.chars().any(|c| c.is_control() || matches!(c, '"' | '\\' | '%' | '$' | '`')) {
        return Err(format!(
            "{text:?} cannot be named in a systemd unit: choose a path without quotes, backslashes, % or $"
        ));
    }
    Ok(())
}

fn one_or_two(a: &str) -> Result<String, String> {
    match a {
        "1" | "2" => Ok(a.to_owned()),
        _ => Err(format!("{a:?} is not 1 or 2")),
    }
}

fn check_host(a: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if a.is_empty() || a.len() > 253 || !a.chars().all(ok) {
        return Err(format!("{a:?} is not a host name or address"));
    }
    Ok(a.to_owned())
}

fn check_url(a: &str) -> Result<String, String> {
    let rest = a.strip_prefix("http://").or_else(|| a.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace) => {
            Ok(a.trim_end_matches('/').to_owned())
        }
        _ => Err(format!("{a:?} is not an http:// or https:// URL with a host")),
    }
}

fn check_shared_dir(a: &str) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(a);
    if !path.is_absolute() {
        return Err(format!("{a:?} is not an absolute path"));
    }
    let shared = pollux_aggregator::shared_dir::SharedDir::new(path);
    shared.check(pollux_aggregator::config::DEFAULT_MIN_FREE_BYTES).map_err(|e| e.to_string())?;
    let owner = std::fs::metadata(path).map_err(|e| e.to_string())?.uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != me {
        return Err(format!(
            "{a} is owned by user id {owner}, not by this user ({me}): both aggregators must run as its owner"
        ));
    }
    Ok(a.to_owned())
}

/// Where answers come from when no flag gave one.
struct Input {
    lines: Box<dyn BufRead>,
    interactive: bool,
}

impl Input {
    /// Asks `q` until a good answer; `Err` when stdin ends first.
    fn ask(&mut self, q: &Question, answers: &Answers, yes: bool) -> Result<String, String> {
        let default = (q.default)(answers);
        if yes {
            if let Some(d) = &default {
                return printable_check(q, d, answers).map_err(|e| format!("{}: the default {d:?}: {e}", q.key));
            }
        }
        for _ in 0..10 {
            match &default {
                Some(d) if !d.is_empty() => print!("{} [{d}]: ", q.prompt),
                _ => print!("{}: ", q.prompt),
            }
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            if self.lines.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                println!();
                return Err(format!("{}: no answer (input ended); give --{} or --yes", q.key, q.key.replace('_', "-")));
            }
            if !self.interactive {
                println!("{}", line.trim_end());
            }
            let given = line.trim();
            let answer = if given.is_empty() { default.clone().unwrap_or_default() } else { given.to_owned() };
            match printable_check(q, &answer, answers) {
                Ok(good) => return Ok(good),
                Err(why) => println!("  {why}; try again"),
            }
        }
        Err(format!("{}: ten bad answers; giving up", q.key))
    }
}

pub fn run(args: InitArgs) -> ExitCode {
    match init(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pollux init: {e}");
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}

fn flag(args: &InitArgs, key: &str) -> Option<String> {
    match key {
        "fault_tolerance" => args.fault_tolerance.clone(),
        "node_id" => args.node_id.clone(),
        "proxy_host" => args.proxy_host.clone(),
        "port" => args.port.clone(),
        "bind_address" => args.bind_address.clone(),
        "shared_dir" => args.shared_dir.clone(),
        "failwait" => args.failwait.clone(),
        "startwait" => args.startwait.clone(),
        "aggregator" => args.aggregator.clone(),
        "failover_aggregator" => args.failover_aggregator.clone(),
        "https" => args.https.clone(),
        _ => None,
    }
}

fn init(args: &InitArgs) -> Result<(), String> {
    let role = args.role;
    unit_safe(&args.config_dir).map_err(|e| format!("--config-dir: {e}"))?;
    let answers_path = args.config_dir.join("init-answers.toml");
    let saved: Answers = match std::fs::read_to_string(&answers_path) {
        Ok(text) => read_answers(&text).map_err(|e| format!("{}: {e}", answers_path.display()))?,
        Err(_) if !args.upgrade => Answers::new(),
        Err(e) => return Err(format!("--upgrade: {}: {e} (run init without --upgrade first)", answers_path.display())),
    };
    if args.upgrade && saved.get("role").is_some_and(|r| r != role.name()) {
        return Err(format!("--upgrade: {} holds the answers of a {}", answers_path.display(), saved["role"]));
    }
    let mut input = Input {
        lines: Box::new(std::io::BufReader::new(std::io::stdin())),
        interactive: std::io::stdin().is_terminal(),
    };
    let mut answers = Answers::new();
    for q in questions().iter().filter(|q| q.roles.contains(&role)) {
        if q.fault_tolerant_only && answers.get("fault_tolerance").map(String::as_str) != Some("2") {
            continue;
        }
        let answer = match (flag(args, q.key), saved.get(q.key)) {
            (Some(given), _) => printable(&given)
                .and_then(|given| (q.check)(&given, &answers))
                .map_err(|e| format!("--{}: {e}", q.key.replace('_', "-")))?,
            // An upgrade keeps what was answered (checked again: the host may have changed).
            (None, Some(kept)) if args.upgrade => {
                (q.check)(kept, &answers).map_err(|e| format!("{}: the saved answer {kept:?}: {e}", q.key))?
            }
            (None, _) => input.ask(q, &answers, args.yes)?,
        };
        answers.insert(q.key.to_owned(), answer);
    }
    answers.insert("role".into(), role.name().into());
    if role == RoleArg::Collector {
        answers.insert("inventory".into(), args.config_dir.join("inventory.toml").display().to_string());
    }
    answers.insert("release".into(), env!("CARGO_PKG_VERSION").into());
    let https = answers.get("https").is_some_and(|h| h == "2");
    if role == RoleArg::Aggregator {
        answers.insert("uid".into(), nix::unistd::geteuid().as_raw().to_string());
        if https {
            // The second aggregator must serve under the first one's CA and hold its tokens.
            record_shared_secrets(&args.config_dir, &mut answers);
        }
        check_the_other_aggregator(&answers)?;
    }
    std::fs::create_dir_all(&args.config_dir).map_err(|e| format!("{}: {e}", args.config_dir.display()))?;
    let security = if https { https_files(role, &args.config_dir, &answers)? } else { String::new() };
    if role == RoleArg::Aggregator && https {
        record_shared_secrets(&args.config_dir, &mut answers);
    }
    let config_path = args.config_dir.join(format!("{}.toml", role.name()));
    write(&config_path, &(config_text(role, &answers) + &security))?;
    let unit_path = args.config_dir.join(format!("pollux-{}.service", role.name()));
    let (unit, installed) = unit_text(role, &config_path);
    write(&unit_path, &unit)?;
    let inventory = args.config_dir.join("inventory.toml");
    if role == RoleArg::Collector && !inventory.exists() {
        write(&inventory, INVENTORY_TEMPLATE)?;
        println!("\nwrote {} (a template: add your devices, then start the collector)", inventory.display());
    }
    write(&answers_path, &answers_text(&answers))?;
    if role == RoleArg::Aggregator {
        let dir = Path::new(&answers["shared_dir"]).join("init/aggregators");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write(&dir.join(format!("{}.toml", answers["node_id"])), &answers_text(&answers))?;
    }
    println!("\nwrote {}", config_path.display());
    println!("wrote {} (a systemd unit)", unit_path.display());
    if let Some(binary) = installed {
        println!("  it runs {binary}: install this binary there first (cp {} {binary})", current_exe_text());
    }
    println!("saved the answers in {} (pollux init --upgrade asks nothing again)", answers_path.display());
    println!("\nopen these ports:");
    for line in ports(role, &answers) {
        println!("  {line}");
    }
    if args.enable {
        enable(role, &unit_path)?;
    } else {
        println!(
            "\nto start it: cp {} /etc/systemd/system/ && systemctl enable --now pollux-{}",
            unit_path.display(),
            role.name()
        );
    }
    if role != RoleArg::Collector {
        let port = answers.get("port").map_or("8581", String::as_str);
        println!("then check the System Status: pollux status --url http://<proxy or aggregator>:{port}");
    }
    Ok(())
}

/// HTTPS for this host: its certificate (made with `pollux certs` when absent; the CA too, on
/// the first host), the tokens (made by the first aggregator), and the configuration keys that
/// name them. What another host must be given is printed.
fn https_files(role: RoleArg, dir: &Path, answers: &Answers) -> Result<String, String> {
    let tls = dir.join("tls");
    let q = |p: &Path| toml_string(&p.display().to_string());
    let ca = tls.join("ca.pem");
    let mut keys = String::new();
    if role != RoleArg::Collector {
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or("localhost".into());
        let mut names = vec![host.clone()];
        if let Some(bind) = answers.get("bind_address").filter(|b| *b != "0.0.0.0") {
            names.push(bind.clone());
        }
        if !tls.join(format!("{host}.pem")).exists() {
            let issued = crate::certs::issue(&tls, &names, 397, false)?;
            println!("made the certificate {} for {}", issued.cert.display(), names.join(", "));
            if issued.made_ca {
                println!(
                    "made a new CA in {}: copy ca.pem (and ca.key, to make their certificates) to the other                      hosts' {} before their init, then keep ca.key off the servers",
                    tls.display(),
                    tls.display()
                );
            }
        }
        keys += &format!(
            "tls_cert = {}\ntls_key = {}\n",
            q(&tls.join(format!("{host}.pem"))),
            q(&tls.join(format!("{host}.key")))
        );
    }
    if role != RoleArg::Aggregator {
        if !ca.exists() {
            return Err(format!("{} is missing: copy ca.pem from the host whose init made the CA", ca.display()));
        }
        keys += &format!("ca_file = {}\n", q(&ca));
    }
    let token = |class: &str| dir.join(format!("{class}.token"));
    match role {
        RoleArg::Aggregator => {
            for class in ["ingest", "admin"] {
                if crate::certs::make_token(&token(class))? {
                    println!("made {}: copy it to the other aggregator's {}", token(class).display(), dir.display());
                }
            }
            keys +=
                &format!("ingest_token_file = {}\nadmin_token_file = {}\n", q(&token("ingest")), q(&token("admin")));
            println!("collectors need {} (as ingest.token in their config dir)", token("ingest").display());
        }
        RoleArg::Collector => {
            if !token("ingest").exists() {
                return Err(format!(
                    "{} is missing: copy ingest.token from an aggregator host",
                    token("ingest").display()
                ));
            }
            keys += &format!("ingest_token_file = {}\n", q(&token("ingest")));
        }
        RoleArg::Proxy => {}
    }
    Ok(keys)
}

/// Digests (never the contents) of the CA certificate and the tokens in `dir`, kept with the
/// answers so the second aggregator's `init` can tell it was given the first one's.
fn record_shared_secrets(dir: &Path, answers: &mut Answers) {
    use sha2::Digest;
    let digest = |files: &[&str]| {
        let mut hash = sha2::Sha256::new();
        for f in files {
            match std::fs::read(dir.join(f)) {
                Ok(bytes) => hash.update(&bytes),
                Err(_) => return format!("not copied here yet ({})", files.join(", ")),
            }
        }
        hash.finalize()[..6].iter().map(|b| format!("{b:02x}")).collect()
    };
    answers.insert("tls_ca".into(), digest(&["tls/ca.pem"]));
    answers.insert("tokens".into(), digest(&["ingest.token", "admin.token"]));
}

/// The second aggregator must agree with the first on what both depend on.
fn check_the_other_aggregator(answers: &Answers) -> Result<(), String> {
    let dir = Path::new(&answers["shared_dir"]).join("init/aggregators");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_stem().is_some_and(|s| s.to_string_lossy() == answers["node_id"]) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let other = read_answers(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mismatches: Vec<String> = MUST_MATCH
            .iter()
            .filter(|k| other.get(**k) != answers.get(**k))
            .map(|k| {
                format!(
                    "{k}: {} here, {} on {}",
                    answers.get(*k).map_or("(none)", String::as_str),
                    other.get(*k).map_or("(none)", String::as_str),
                    other.get("node_id").map_or("the other aggregator", String::as_str)
                )
            })
            .collect();
        if !mismatches.is_empty() {
            return Err(format!(
                "these answers must match the other aggregator's ({}): {}",
                path.display(),
                mismatches.join("; ")
            ));
        }
    }
    Ok(())
}

/// A TOML string literal (quotes, backslashes and control characters escaped as TOML wants).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn config_text(role: RoleArg, a: &Answers) -> String {
    let q = |s: &str| toml_string(s);
    let mut out = format!("# Written by pollux init {} (role {}).\n", env!("CARGO_PKG_VERSION"), role.name());
    match role {
        RoleArg::Aggregator => {
            out += &format!("node_id = {}\n", q(&a["node_id"]));
            out += &format!("listen = {}\n", q(&format!("{}:{}", a["bind_address"], a["port"])));
            out += &format!("shared_dir = {}\n", q(&a["shared_dir"]));
            if let (Some(f), Some(s)) = (a.get("failwait"), a.get("startwait")) {
                out += &format!("failwait = {}\nstartwait = {}\n", q(f), q(s));
            }
        }
        RoleArg::Proxy => {
            out += &format!("listen = {}\n", q(&format!("{}:{}", a["bind_address"], a["port"])));
            out += &format!("aggregators = [{}, {}]\n", q(&a["aggregator"]), q(&a["failover_aggregator"]));
        }
        RoleArg::Collector => {
            out += &format!("id = {}\n", q(&a["node_id"]));
            if let Some(inventory) = a.get("inventory") {
                out += &format!("inventory = {}\n", q(inventory));
            }
            let mut urls = vec![q(&a["aggregator"])];
            if let Some(f) = a.get("failover_aggregator").filter(|f| !f.is_empty()) {
                urls.push(q(f));
            }
            out += &format!("aggregators = [{}]\n", urls.join(", "));
        }
    }
    out
}

/// Where the unit runs the binary from: this binary, unless it runs from a build directory
/// (`cargo run`), which is no place to run a service from; then the usual install path, said so.
const INSTALLED_BINARY: &str = "/usr/local/bin/pollux";

fn current_exe_text() -> String {
    std::env::current_exe().map_or_else(|_| "pollux".into(), |p| p.display().to_string())
}

/// The systemd unit, and the binary path it names when that is not this binary.
fn unit_text(role: RoleArg, config: &Path) -> (String, Option<String>) {
    let exe = current_exe_text();
    let built = exe.contains("/target/debug/") || exe.contains("/target/release/") || exe.contains("pollux-target/");
    let (binary, installed) = if built || unit_safe(Path::new(&exe)).is_err() {
        (INSTALLED_BINARY.to_owned(), Some(INSTALLED_BINARY.to_owned()))
    } else {
        (exe, None)
    };
    // The user who ran init runs the service: the shared directory and spool were checked (and
    // made) as that user.
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::geteuid().as_raw().to_string(), |u| u.name);
    let unit = format!(
        "[Unit]\nDescription=Pollux {role}\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nUser={user}\nExecStart=\"{binary}\" {role} --config \"{config}\"\nRestart=on-failure\nRestartSec=2\n\
         LimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n",
        role = role.name(),
        config = config.display()
    );
    (unit, installed)
}

/// The collector's first inventory: every key explained, no device yet (the collector refuses
/// to start on an empty one, naming this file).
const INVENTORY_TEMPLATE: &str = r#"# The devices this collector polls: one [[device]] table each. Written by pollux init.
# Uncomment and fill in one table per device; the collector re-reads nothing until restarted.
#
# [[device]]
# name = "core-rtr-1"          # unique; the device's name everywhere
# address = "192.0.2.1"        # host name or IP
# port = 161                   # default 161
# version = "2c"               # "2c" or "3"
# community = "public"         # v2c
# families = ["Interface", "CPU", "Memory", "Availability"]  # default: all built-in
# interval = "5m"              # default: the collector's interval
#
# [[device]]
# name = "edge-sw-7"
# address = "192.0.2.7"
# version = "3"
# user = "poller"
# auth_protocol = "sha"        # md5, sha, sha224, sha256, sha384, sha512
# auth_password = "..."
# priv_protocol = "aes"        # des, aes (128), aes192, aes256
# priv_password = "..."
"#;

fn ports(role: RoleArg, a: &Answers) -> Vec<String> {
    let port = a.get("port").cloned().unwrap_or_else(|| "8581".into());
    match role {
        RoleArg::Aggregator => vec![
            format!("TCP {port} inbound: the proxy, collectors and clients reach this aggregator's HTTP API"),
            "the shared directory's NFSv4 server (TCP 2049 outbound)".into(),
        ],
        RoleArg::Proxy => vec![
            format!("TCP {port} inbound: collectors, the portal and clients"),
            format!("TCP {port} outbound to both aggregators: forwarding and health checks"),
        ],
        RoleArg::Collector => vec![
            "UDP 161 outbound to every device: SNMP".into(),
            "TCP to the aggregator and the failover location (their port, 8581 by default)".into(),
            "TCP 8582 on 127.0.0.1: this collector's /metrics".into(),
        ],
    }
}

fn read_answers(text: &str) -> Result<Answers, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let answers = table.get("answers").and_then(|a| a.as_table()).ok_or("no [answers] table")?;
    Ok(answers.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
}

fn answers_text(answers: &Answers) -> String {
    let mut out = String::from("# pollux init's answers; pollux init --upgrade reuses them.\n[answers]\n");
    for (k, v) in answers {
        out += &format!("{k} = {}\n", toml_string(v));
    }
    out
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text)
        .and_then(|_| std::fs::rename(&temp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn enable(role: RoleArg, unit: &Path) -> Result<(), String> {
    let target = Path::new("/etc/systemd/system").join(unit.file_name().expect("a file name"));
    std::fs::copy(unit, &target).map_err(|e| format!("{}: {e}", target.display()))?;
    let status = std::process::Command::new("systemctl")
        .args(["enable", "--now", &format!("pollux-{}", role.name())])
        .status()
        .map_err(|e| format!("systemctl: {e}"))?;
    if !status.success() {
        return Err(format!("systemctl enable --now pollux-{}: {status}", role.name()));
    }
    println!("\nenabled and started pollux-{}", role.name());
    Ok(())
}
