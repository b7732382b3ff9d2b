//! What a command that waits shows meanwhile: on a terminal, one line that a spinner and the
//! seconds rewrite in place; otherwise (a log, a pipe) a plain line at the start and one every
//! ten seconds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub struct Waiting {
    what: String,
    started: Instant,
    terminal: bool,
    shown: Option<Instant>,
    frame: usize,
}

impl Waiting {
    pub fn new(what: impl Into<String>) -> Waiting {
        Waiting {
            what: what.into(),
            started: Instant::now(),
            terminal: std::io::stdout().is_terminal(),
            shown: None,
            frame: 0,
        }
    }

    /// Call often while waiting; it shows at most ten frames a second.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64();
        if self.terminal {
            if self.shown.is_none_or(|t| now - t >= Duration::from_millis(100)) {
                self.frame = (self.frame + 1) % SPINNER.len();
                print!("\r\x1b[2K{} waiting for {} ({elapsed:.1} s)", SPINNER[self.frame], self.what);
                let _ = std::io::stdout().flush();
                self.shown = Some(now);
            }
        } else if self.shown.is_none_or(|t| now - t >= PLAIN_EVERY) {
            match self.shown {
                None => println!("waiting for {}...", self.what),
                Some(_) => println!("still waiting for {} ({elapsed:.0} s)", self.what),
            }
            self.shown = Some(now);
        }
    }

    /// Clears the spinner's line, if one was drawn.
    pub fn finish(self) {
        if self.terminal && self.shown.is_some() {
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
        }
    }
}
