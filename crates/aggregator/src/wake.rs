//! A wake-up call for blocking worker threads (the loader is woken by ingest, housekeeping and
//! the notifier by the loader).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A wake-up call for a blocking worker thread: `notify` from anywhere, `wait` with a timeout.
#[derive(Debug, Default)]
pub struct Wake {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.pending.lock().expect("wake") = true;
        self.cond.notify_all();
    }

    /// Returns at the next `notify` (or at once if one came since the last wait), or after
    /// `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let pending = self.pending.lock().expect("wake");
        let (mut pending, _) = self.cond.wait_timeout_while(pending, timeout, |p| !*p).expect("wake");
        *pending = false;
    }
}
