//! Counters into rates: the delta between two polls over the time measured between them.
//!
//! Pure functions over samples; the state they need (each counter's previous sample and each
//! device's previous sysUpTime) is kept by [`crate::state`]. What must never come out of here
//! is a bogus spike, so:
//!
//! - the first sample of a counter gives no rate;
//! - a device whose sysUpTime went back rebooted: its counters restarted, no rate this poll;
//! - an item whose ifCounterDiscontinuityTime changed had its counters reset: no rate;
//! - a 32-bit counter that went down wrapped (once: see the next rule); a 64-bit counter that
//!   went down was reset (it cannot wrap in the life of the hardware);
//! - samples further apart than the caller allows (a few poll intervals, after an outage of the
//!   collector or the device) give no rate: a 32-bit counter may have wrapped more than once,
//!   and one average over hours is not this cycle's rate;
//!
//! A rate is not checked against the interface's speed: loopbacks, tunnels and aggregates
//! report speeds that their traffic exceeds, and refusing their rates would hide real data.

use serde::{Deserialize, Serialize};

/// A counter's value and when it was read (Unix seconds with fractions). Stored as a pair
/// `[value, at]`: the state file holds eight of them per interface.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "(u64, f64)", into = "(u64, f64)")]
pub struct Sample {
    pub value: u64,
    pub at: f64,
}

impl From<(u64, f64)> for Sample {
    fn from((value, at): (u64, f64)) -> Sample {
        Sample { value, at }
    }
}

impl From<Sample> for (u64, f64) {
    fn from(s: Sample) -> (u64, f64) {
        (s.value, s.at)
    }
}

/// The width of a counter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Width {
    Bits32,
    Bits64,
}

/// A device's sysUpTime (hundredths of a second) and when it was read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Uptime {
    pub ticks: u32,
    pub at: f64,
}

/// Whether the device restarted between two sysUpTime readings. sysUpTime is a 32-bit count
/// of hundredths that wraps after 497 days; a reading that went back by about that much wrapped.
pub fn rebooted(previous: Uptime, current: Uptime) -> bool {
    if current.ticks >= previous.ticks {
        // Still counting up, unless more wall time passed than uptime did (a reboot that
        // happened long enough ago to count past the old value).
        let ticks = f64::from(current.ticks - previous.ticks);
        let wall = (current.at - previous.at) * 100.0;
        return ticks + 100.0 * 60.0 < wall;
    }
    let wrapped = f64::from(current.ticks) + (f64::from(u32::MAX) + 1.0 - f64::from(previous.ticks));
    let wall = (current.at - previous.at) * 100.0;
    (wrapped - wall).abs() > 100.0 * 60.0
}

/// The per-second rate between two samples of one counter at most `max_elapsed` seconds apart,
/// or `None` when there is no honest one.
pub fn rate(previous: Sample, current: Sample, width: Width, max_elapsed: f64) -> Option<f64> {
    let elapsed = current.at - previous.at;
    if elapsed <= 0.0 || !elapsed.is_finite() || elapsed > max_elapsed {
        return None;
    }
    let delta = if current.value >= previous.value {
        current.value - previous.value
    } else {
        match width {
            Width::Bits32 => (1u64 << 32) - (previous.value & 0xFFFF_FFFF) + (current.value & 0xFFFF_FFFF),
            Width::Bits64 => return None,
        }
    };
    Some(delta as f64 / elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(value: u64, at: f64) -> Sample {
        Sample { value, at }
    }

    const GAP: f64 = 900.0;

    #[test]
    fn rate_over_measured_time() {
        assert_eq!(rate(s(1_000, 100.0), s(4_000, 103.0), Width::Bits64, GAP), Some(1_000.0));
        assert_eq!(rate(s(1_000, 100.0), s(1_000, 100.0), Width::Bits64, GAP), None);
        assert_eq!(rate(s(1_000, 100.0), s(1_000, 99.0), Width::Bits64, GAP), None);
        // Too far apart: no rate.
        assert_eq!(rate(s(1_000, 100.0), s(4_000, 1_003.0), Width::Bits64, GAP), None);
    }

    #[test]
    fn thirty_two_bit_counters_wrap() {
        let before = u64::from(u32::MAX) - 99;
        assert_eq!(rate(s(before, 0.0), s(100, 2.0), Width::Bits32, GAP), Some(100.0));
        // A fast counter's wrap is a wrap too, even past half the range.
        assert_eq!(rate(s(1_000_000_000, 0.0), s(5, 300.0), Width::Bits32, GAP), Some(3_294_967_301.0 / 300.0));
    }

    #[test]
    fn a_sixty_four_bit_counter_going_down_was_reset() {
        assert_eq!(rate(s(1_000, 0.0), s(5, 10.0), Width::Bits64, GAP), None);
    }

    #[test]
    fn reboot_detection() {
        let up = |ticks, at| Uptime { ticks, at };
        assert!(!rebooted(up(10_000, 0.0), up(16_000, 60.0)));
        assert!(rebooted(up(10_000, 0.0), up(500, 60.0)));
        // Rebooted long enough ago that uptime has passed its old value again.
        assert!(rebooted(up(10_000, 0.0), up(20_000, 3_600.0)));
        // The 497-day wrap of sysUpTime is not a reboot.
        assert!(!rebooted(up(u32::MAX - 1_000, 0.0), up(5_000, 60.0)));
    }
}
