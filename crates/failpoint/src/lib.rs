//! Named crash points for fault-injection tests.
//!
//! A crash point marks a place on a durability path where a real process could die: inside a
//! temp-file write, between a rename and the answer, inside a load transaction, between a commit
//! and the removal of the loaded file. The black-box tests start the real binary with
//! `POLLUX_FAILPOINTS=name=action[,name=action...]` and check that nothing acknowledged was lost
//! and nothing was loaded twice after the process died there.
//!
//! Actions:
//! - `abort`: the process dies at once (SIGABRT: no destructors, no flushing), as with kill -9.
//! - `hang`: the calling thread sleeps forever, as with a wedged disk or a start that never ends.
//! - `error`: [`hit`] returns `true`, and the caller turns that into an I/O error of its own.
//! - `error-while:<path>`: like `error`, but only while the file `<path>` exists, so a test can
//!   switch a fault on and off in a running process (a shared directory that is unwritable for
//!   a while).
//! - `delay-while:<ms>:<path>`: the calling thread waits there while the file `<path>` exists,
//!   `<ms>` milliseconds at most (an answer that comes too late for a sender that dies
//!   meanwhile; a load held until a test lets it go).
//!
//! Without the `failpoints` feature every point compiles to nothing and [`hit`] is `false`, so a
//! production binary carries no trace of them.
#![forbid(unsafe_code)]

/// Checks the crash point `name`: aborts or hangs the process if the test configured it so, and
/// returns `true` when the configured action is `error`.
#[inline]
pub fn hit(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::hit(name)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Every crash point the code has. A test that names another (a typo, a point that was
/// renamed) would test nothing: [`check_configuration`] refuses it.
pub const NAMES: &[&str] = &[
    "ingest.after_registry_check",
    "loader.after_commit",
    "loader.before_load",
    "notify.before_post",
    "repository.load.before_commit",
    "shared.write",
    "startup.hang",
    "store.after_link",
    "store.before_link",
    "store.mid_write",
];

/// Checks `POLLUX_FAILPOINTS` (when set): every name must be one of [`NAMES`] and every action
/// known. The binary exits 64 with the message otherwise. Without the `failpoints` feature a
/// configuration is an error too: the test expected faults this build cannot inject.
pub fn check_configuration() -> Result<(), String> {
    let Ok(text) = std::env::var("POLLUX_FAILPOINTS") else { return Ok(()) };
    if text.trim().is_empty() {
        return Ok(());
    }
    if !ENABLED {
        return Err(
            "POLLUX_FAILPOINTS is set, but this build has no crash points (build with --features failpoints)".into()
        );
    }
    for entry in text.split(',') {
        let Some((name, action)) = entry.split_once('=') else {
            return Err(format!("POLLUX_FAILPOINTS: {entry:?} is not name=action"));
        };
        let (name, action) = (name.trim(), action.trim());
        if !NAMES.contains(&name) {
            return Err(format!("POLLUX_FAILPOINTS: no crash point {name:?} (known: {})", NAMES.join(", ")));
        }
        let delay_ok = action
            .strip_prefix("delay-while:")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(ms, path)| ms.parse::<u64>().is_ok() && !path.is_empty());
        if !matches!(action, "abort" | "hang" | "error") && !action.starts_with("error-while:") && !delay_ok {
            return Err(format!(
                "POLLUX_FAILPOINTS: {name}: unknown action {action:?} (abort, hang, error, error-while:<path>, delay-while:<ms>:<path>)"
            ));
        }
    }
    Ok(())
}

/// True when this build carries crash points (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::OnceLock;

    /// The variable the tests set on the process they start.
    const ENV: &str = "POLLUX_FAILPOINTS";

    fn configured() -> &'static [(String, String)] {
        static POINTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
        POINTS.get_or_init(|| {
            std::env::var(ENV)
                .unwrap_or_default()
                .split(',')
                .filter_map(|entry| {
                    let (name, action) = entry.split_once('=')?;
                    Some((name.trim().to_owned(), action.trim().to_owned()))
                })
                .collect()
        })
    }

    pub fn hit(name: &str) -> bool {
        let Some((_, action)) = configured().iter().find(|(n, _)| n == name) else {
            return false;
        };
        match action.as_str() {
            "abort" => {
                eprintln!("failpoint {name}: abort");
                std::process::abort();
            }
            "hang" => {
                eprintln!("failpoint {name}: hang");
                loop {
                    std::thread::park();
                }
            }
            "error" => true,
            other if other.starts_with("error-while:") => std::path::Path::new(&other["error-while:".len()..]).exists(),
            other if other.starts_with("delay-while:") => {
                // delay-while:<ms>:<path>: the calling thread waits while the file exists, <ms>
                // at most.
                let (ms, path) = other["delay-while:".len()..].split_once(':').unwrap_or(("0", ""));
                let path = std::path::Path::new(path);
                if path.exists() {
                    eprintln!("failpoint {name}: delay {ms} ms");
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms.parse().unwrap_or(0));
                    while path.exists() && std::time::Instant::now() < until {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                false
            }
            other => {
                eprintln!("failpoint {name}: unknown action {other:?}, ignored");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every `hit("...")` in the workspace names a point of [`super::NAMES`], and every name is
    /// used somewhere: the list cannot drift from the code.
    #[test]
    fn names_match_the_code() {
        // Where cargo runs the test from, not where this binary was first compiled: a target
        // directory shared between clones may hold a build made in another checkout.
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let crates = std::path::Path::new(&manifest).parent().unwrap().to_owned();
        let mut used = std::collections::BTreeSet::new();
        let mut dirs = vec![crates];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("failpoint/src/lib.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for piece in text.split("failpoint::hit(\"").skip(1) {
                        used.insert(piece.split('"').next().unwrap().to_owned());
                    }
                }
            }
        }
        let known: std::collections::BTreeSet<String> = super::NAMES.iter().map(|s| s.to_string()).collect();
        assert_eq!(used, known);
    }
}
