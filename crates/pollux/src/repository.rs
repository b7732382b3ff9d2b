//! `pollux repository copy`: moves an existing installation's SQLite repository into
//! PostgreSQL, resumably, with a progress line and the counts compared at the end.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RepositoryArgs {
    #[command(subcommand)]
    command: RepositoryCommand,
}

#[derive(clap::Subcommand)]
enum RepositoryCommand {
    /// Copy every family, series, rollup, registry entry, rule, event and notification from a
    /// SQLite repository into an empty PostgreSQL database. Stop both aggregators first. Run
    /// again after an interruption: it resumes where it stopped.
    Copy {
        /// The source: sqlite:PATH (e.g. sqlite:/var/lib/pollux/shared/repository.sqlite).
        #[arg(long)]
        from: String,
        /// The destination: a postgresql:// URL.
        #[arg(long)]
        to: String,
    },
}

pub fn run(args: RepositoryArgs) -> ExitCode {
    let RepositoryCommand::Copy { from, to } = args.command;
    use pollux_repository::Location;
    let here = Path::new(".");
    let (from, to) = match (Location::parse(&from, here), Location::parse(&to, here)) {
        (Ok(Location::Sqlite(from)), Ok(Location::Postgres(to))) => (from, to),
        (Err(e), _) => return usage(&format!("--from: {e}")),
        (_, Err(e)) => return usage(&format!("--to: {e}")),
        _ => return usage("only a copy from sqlite:PATH to a postgresql:// URL is supported"),
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = (String::new(), u64::MAX);
    let mut progress = |step: &str, done: u64, total: u64| {
        let percent = done * 100 / total.max(1);
        // On a terminal one line redrawn; in a log a line per step and each tenth.
        if tty {
            let bar = "#".repeat((percent / 5) as usize);
            eprint!("\r{step:<24} [{bar:<20}] {percent:>3}%");
            if done >= total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else if last.0 != step || percent / 10 != last.1 / 10 {
            eprintln!("{step}: {percent}%");
        }
        last = (step.to_owned(), percent);
    };
    match pollux_repository::copy::sqlite_to_postgres(&from, &to, &mut progress) {
        Ok(counts) => {
            println!("copied and verified:");
            for c in counts {
                println!("  {:<28} {:>12} rows", c.table, c.copied);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let redacted = Location::Postgres(to).to_string();
            eprintln!("pollux repository copy to {redacted}: {e}");
            match e.action() {
                pollux_repository::Action::Rejected => ExitCode::from(super::EXIT_USAGE),
                pollux_repository::Action::Retry => ExitCode::from(super::EXIT_UNAVAILABLE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("pollux repository copy: {problem}");
    ExitCode::from(super::EXIT_USAGE)
}
