//! What the collector remembers between polls, kept in the spool directory so that a restart
//! loses at most one rate: each counter's previous sample, each device's previous sysUpTime,
//! and the last cycle whose DTOs are safely in the spool.
//!
//! One file per poll interval group (`state-<interval>s.json`), written after the cycle's DTOs
//! are fsync'd into the spool, by write-to-temp and rename. It is not fsync'd itself: if a crash
//! loses it, the next poll starts over from no previous sample (one rate lost, never a wrong
//! one), and a cycle whose DTOs are already spooled is recognised by its spool directory.

use crate::rates::{Sample, Uptime};
use pollux_model::UnixSeconds;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The previous counters of one item.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ItemState {
    /// ifCounterDiscontinuityTime (or none), to notice counter resets of one interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discontinuity: Option<u32>,
    /// The family definition the counters were read under (see `poll::Plan`): a customized
    /// family whose metrics changed starts its counters over instead of subtracting across OIDs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub layout: u64,
    /// One slot per counter of the family, in the family's counter order.
    pub counters: Vec<Option<Sample>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What one device's polls left behind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<Uptime>,
    /// GETBULK repetitions the device could answer, once it refused more. Not kept across
    /// restarts, so a device that refused once during a bad moment gets full walks again.
    #[serde(skip)]
    pub repetitions: Option<u32>,
    /// The device answered its last poll, so it is neither probed nor polled after the others
    /// (see `probe`). Not kept across restarts: after one, every device is probed once.
    #[serde(skip)]
    pub answering: bool,
    /// Per family, per item.
    #[serde(default)]
    pub items: HashMap<String, HashMap<String, ItemState>>,
}

/// The state of one interval group.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GroupState {
    /// The last cycle whose DTOs are in the spool.
    pub done: Option<UnixSeconds>,
    #[serde(default)]
    pub devices: HashMap<String, DeviceState>,
}

pub fn path(spool_dir: &Path, interval: u32) -> PathBuf {
    spool_dir.join(format!("state-{interval}s.json"))
}

impl GroupState {
    /// Loads a group's state; a missing or unreadable file is an empty state (logged).
    pub fn load(path: &Path) -> GroupState {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); starting without previous counters", path.display());
                GroupState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GroupState::default(),
            Err(e) => {
                tracing::warn!("{}: {e}; starting without previous counters", path.display());
                GroupState::default()
            }
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let temp = path.with_extension("json.tmp");
        // Streamed: the state of 100,000 interfaces is tens of megabytes of JSON.
        let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
        serde_json::to_writer(&mut out, self).map_err(std::io::Error::other)?;
        out.flush()?;
        drop(out);
        std::fs::rename(&temp, path)
    }
}
