//! A child process of the harness: started from a [`Launch`], its stderr kept (in memory or in a
//! file), signalled by name, killed by pid when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a process's stderr (its log) goes.
#[derive(Debug, Clone)]
pub enum LogTo {
    /// Kept in memory, for a test's assertions and failure messages.
    Memory,
    /// Appended to a file (the demo's `logs/<name>.log`), kept across restarts.
    File(PathBuf),
}

/// How to start a process; kept by the [`Process`] so it can be started again.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: LogTo,
    /// In a process group of its own (a signal meant for the runner's group never reaches it)
    /// and killed when the thread that started it dies (`setpriv --pdeathsig`, util-linux), so
    /// a test that panics or a runner that is killed leaves nothing behind.
    pub harnessed: bool,
}

impl Launch {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, args: &[String]) -> Launch {
        Launch {
            name: name.into(),
            program: program.into(),
            args: args.to_vec(),
            env: Vec::new(),
            log: LogTo::Memory,
            harnessed: false,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn log_to(mut self, log: LogTo) -> Launch {
        self.log = log;
        self
    }

    pub fn harnessed(mut self) -> Launch {
        self.harnessed = true;
        self
    }

    pub fn spawn(&self) -> std::io::Result<Process> {
        let memory = Arc::new(Mutex::new(String::new()));
        let child = self.start(&memory)?;
        Ok(Process { child: Some(child), launch: self.clone(), memory, url: String::new() })
    }

    /// Starts the program, its stderr going where `log` says (into `memory` when kept there).
    fn start(&self, memory: &Arc<Mutex<String>>) -> std::io::Result<Child> {
        let mut cmd = if self.harnessed {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(&self.program);
            cmd.process_group(0);
            cmd
        } else {
            Command::new(&self.program)
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::null());
        if !self.env.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match &self.log {
            LogTo::Memory => {
                cmd.stderr(Stdio::piped());
            }
            LogTo::File(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                cmd.stderr(file);
            }
        }
        let mut child = cmd.spawn()?;
        if let Some(stderr) = child.stderr.take() {
            let sink = memory.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = sink.lock().expect("log");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Ok(child)
    }
}

/// A running (or exited) child.
pub struct Process {
    child: Option<Child>,
    launch: Launch,
    memory: Arc<Mutex<String>>,
    /// The base URL of the HTTP server it runs, once known.
    pub url: String,
}

impl Process {
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The pid (0 once it was killed and reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything it logged so far (this run's, for a log kept in memory; the whole file
    /// otherwise).
    pub fn log(&self) -> String {
        match &self.launch.log {
            LogTo::Memory => self.memory.lock().expect("log").clone(),
            LogTo::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// The address the process says it listens on (`listening on ADDR` in its log). Only for a
    /// process given port 0, to learn the port the system chose; readiness is [`crate::health`].
    pub fn listening(&self, limit: Duration) -> Result<String, String> {
        crate::wait_for(limit, &format!("{} to say where it listens", self.name()), || {
            self.log().lines().find_map(|l| l.split("listening on ").nth(1).map(|a| a.trim().to_owned()))
        })
        .map_err(|e| format!("{e}:\n{}", self.log()))
    }

    /// Sends a signal by name: STOP, CONT, TERM, HUP, INT or KILL.
    pub fn signal(&self, name: &str) {
        use nix::sys::signal::Signal;
        let signal = match name {
            "STOP" => Signal::SIGSTOP,
            "CONT" => Signal::SIGCONT,
            "TERM" => Signal::SIGTERM,
            "HUP" => Signal::SIGHUP,
            "INT" => Signal::SIGINT,
            "KILL" => Signal::SIGKILL,
            other => panic!("no signal {other}"),
        };
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `limit` for the process to exit on its own; its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// SIGCONT and SIGTERM, then waits up to `limit` for a clean exit; SIGKILL after that.
    /// Returns the status of a clean exit.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal("CONT");
        self.signal("TERM");
        let status = self.wait_exit(limit);
        if status.is_none() {
            self.kill9();
        }
        status
    }

    /// Starts it again as it was started (a process that is still running is killed first).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill9();
        self.child = Some(self.launch.start(&self.memory)?);
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; continuing it first is harmless and tidy.
        self.signal("CONT");
        self.kill9();
    }
}
