//! Rollup periods: UTC hours, days and weeks starting on Monday.
//!
//! Every period is a half-open range `[start, start + length)` in Unix seconds. Weeks start on
//! Monday 00:00 UTC (ISO 8601); the Unix epoch fell on a Thursday, hence the 4-day offset.

use crate::UnixSeconds;

/// The resolutions data is kept at. `Raw` is what collectors sent; the others are rollups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    Raw,
    Hour,
    Day,
    Week,
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;
/// Monday 1970-01-05 00:00 UTC, the first week start after the epoch.
const WEEK_ORIGIN: i64 = 4 * DAY;

impl Resolution {
    /// The rollup resolutions, finest first: each is computed from the one before it.
    pub const ROLLUPS: [Resolution; 3] = [Resolution::Hour, Resolution::Day, Resolution::Week];

    pub fn name(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Hour => "hour",
            Resolution::Day => "day",
            Resolution::Week => "week",
        }
    }

    pub fn parse(text: &str) -> Option<Resolution> {
        Some(match text {
            "raw" => Resolution::Raw,
            "hour" => Resolution::Hour,
            "day" => Resolution::Day,
            "week" => Resolution::Week,
            _ => return None,
        })
    }

    /// Length of one period in seconds (`None` for raw data, which has no periods).
    pub fn length(self) -> Option<i64> {
        match self {
            Resolution::Raw => None,
            Resolution::Hour => Some(HOUR),
            Resolution::Day => Some(DAY),
            Resolution::Week => Some(WEEK),
        }
    }

    /// Start of the period containing `ts`.
    pub fn period_start(self, ts: UnixSeconds) -> UnixSeconds {
        match self {
            Resolution::Raw => ts,
            Resolution::Hour => ts.div_euclid(HOUR) * HOUR,
            Resolution::Day => ts.div_euclid(DAY) * DAY,
            Resolution::Week => (ts - WEEK_ORIGIN).div_euclid(WEEK) * WEEK + WEEK_ORIGIN,
        }
    }

    /// The next coarser rollup, which is recomputed when a period of this one changes.
    pub fn parent(self) -> Option<Resolution> {
        match self {
            Resolution::Raw => Some(Resolution::Hour),
            Resolution::Hour => Some(Resolution::Day),
            Resolution::Day => Some(Resolution::Week),
            Resolution::Week => None,
        }
    }

    /// The finer resolution a rollup of this one is computed from.
    pub fn child(self) -> Option<Resolution> {
        match self {
            Resolution::Raw => None,
            Resolution::Hour => Some(Resolution::Raw),
            Resolution::Day => Some(Resolution::Hour),
            Resolution::Week => Some(Resolution::Day),
        }
    }

    /// The resolution `resolution=auto` picks for a query range: raw up to two days, hourly up
    /// to 31 days, daily up to a year, weekly beyond. Each keeps a series under ~800 points.
    pub fn auto(range_seconds: i64) -> Resolution {
        if range_seconds <= 2 * DAY {
            Resolution::Raw
        } else if range_seconds <= 31 * DAY {
            Resolution::Hour
        } else if range_seconds <= 366 * DAY {
            Resolution::Day
        } else {
            Resolution::Week
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_contain_their_timestamp() {
        for ts in [0, 1, 3599, 3600, 1_763_830_812, -1, -3601] {
            for r in Resolution::ROLLUPS {
                let start = r.period_start(ts);
                assert!(start <= ts && ts < start + r.length().unwrap(), "{r:?} {ts}");
                assert_eq!(r.period_start(start), start);
            }
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2025-11-24 00:00 UTC is a Monday; 2025-11-22 (Saturday) belongs to the week of the 17th.
        assert_eq!(Resolution::Week.period_start(1_763_942_400), 1_763_942_400);
        assert_eq!(Resolution::Week.period_start(1_763_830_812), 1_763_337_600);
    }

    #[test]
    fn auto_resolution_grows_with_the_range() {
        assert_eq!(Resolution::auto(3600), Resolution::Raw);
        assert_eq!(Resolution::auto(7 * DAY), Resolution::Hour);
        assert_eq!(Resolution::auto(90 * DAY), Resolution::Day);
        assert_eq!(Resolution::auto(3 * 366 * DAY), Resolution::Week);
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y`-`m`-`d` (H. Hinnant's
/// days-from-civil; the inverse of [`civil`]).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix seconds, for messages.
pub fn format_utc(ts: UnixSeconds) -> String {
    let (y, m, d, secs) = civil(ts);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The UTC calendar date of Unix seconds `ts`: (year, month 1-12, day 1-31) and the seconds
/// into that day (H. Hinnant's civil-from-days).
pub fn civil(ts: UnixSeconds) -> (i64, i64, i64, i64) {
    let (days, secs) = (ts.div_euclid(86_400), ts.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day, secs)
}

#[cfg(test)]
mod civil_tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil(0), (1970, 1, 1, 0));
        assert_eq!(super::civil(951_782_400), (2000, 2, 29, 0));
        assert_eq!(super::civil(1_796_175_045), (2026, 12, 2, 5445));
        assert_eq!(super::civil(-1), (1969, 12, 31, 86_399));
        for ts in [0, 951_782_400, 1_796_175_045, -1, 4_102_444_800] {
            let (y, m, d, secs) = super::civil(ts);
            assert_eq!(super::days_from_civil(y, m, d) * 86_400 + secs, ts);
        }
        assert_eq!(super::format_utc(1_796_181_300), "2026-12-02 03:15:00");
    }
}
