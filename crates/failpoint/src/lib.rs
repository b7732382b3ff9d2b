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
            other => {
                eprintln!("failpoint {name}: unknown action {other:?}, ignored");
                false
            }
        }
    }
}
