//! Baselines: the same hour of the week over the last weeks, from the hourly rollups.

use crate::eval::Baseline;

/// Weeks looked back over.
pub const WEEKS: i64 = 4;
/// Weeks with data needed before a baseline exists.
pub const MIN_WEEKS: usize = 2;
const WEEK: i64 = 7 * 86_400;

/// The starts of the hours a baseline for the hour starting at `hour` is built from: the same
/// hour one to [`WEEKS`] weeks earlier.
pub fn hours_for(hour: i64) -> [i64; WEEKS as usize] {
    std::array::from_fn(|i| hour - (i as i64 + 1) * WEEK)
}

/// One hourly rollup period's figures for one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HourStats {
    pub count: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

/// Pools the samples of the given hours: their mean and (population) standard deviation.
/// `None` with fewer than [`MIN_WEEKS`] hours holding data.
///
/// The repository saturates a sum or sum of squares beyond the range of a double to `+inf` (or
/// `-inf`, or NaN for both): one value beyond about 1.3e154 does it for the squares. Such an
/// hour counts as one without data, and pooled figures that overflow make no baseline: a mean
/// or spread that is not finite would make every poll violate, or none.
pub fn baseline(hours: &[HourStats]) -> Option<Baseline> {
    let with_data: Vec<_> =
        hours.iter().filter(|h| h.count > 0 && h.sum.is_finite() && h.sum_squares.is_finite()).collect();
    if with_data.len() < MIN_WEEKS {
        return None;
    }
    let n: f64 = with_data.iter().map(|h| h.count as f64).sum();
    let sum: f64 = with_data.iter().map(|h| h.sum).sum();
    let squares: f64 = with_data.iter().map(|h| h.sum_squares).sum();
    let mean = sum / n;
    // Rounding can leave a tiny negative variance for constant data.
    let variance = (squares / n - mean * mean).max(0.0);
    let stddev = variance.sqrt();
    (mean.is_finite() && stddev.is_finite()).then_some(Baseline { mean, stddev })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(values: &[f64]) -> HourStats {
        HourStats {
            count: values.len() as u64,
            sum: values.iter().sum(),
            sum_squares: values.iter().map(|v| v * v).sum(),
        }
    }

    #[test]
    fn pools_the_weeks_with_data() {
        let b = baseline(&[hour(&[10.0, 20.0]), hour(&[30.0, 40.0]), hour(&[]), hour(&[])]).unwrap();
        assert_eq!(b.mean, 25.0);
        assert!((b.stddev - 125f64.sqrt()).abs() < 1e-12, "{b:?}");
    }

    #[test]
    fn one_week_is_not_a_baseline() {
        assert_eq!(baseline(&[hour(&[10.0, 20.0]), hour(&[]), hour(&[]), hour(&[])]), None);
        assert_eq!(baseline(&[]), None);
    }

    #[test]
    fn constant_data_has_no_spread() {
        let b = baseline(&[hour(&[0.1; 12]), hour(&[0.1; 12])]).unwrap();
        assert!(b.stddev < 1e-7, "no more than rounding: {b:?}");
    }

    /// Hours whose figures saturated do not count; pooled figures that overflow are no
    /// baseline. (Before: a mean of +inf with no spread, which every poll is below.)
    #[test]
    fn saturated_hours_are_left_out() {
        let saturated = hour(&[f64::MAX, f64::MAX]);
        assert_eq!((saturated.sum, saturated.sum_squares), (f64::INFINITY, f64::INFINITY));
        let squares_only = hour(&[1e200, 1.0]);
        assert!(squares_only.sum.is_finite() && squares_only.sum_squares.is_infinite());
        let nan = HourStats { count: 2, sum: f64::NAN, sum_squares: f64::INFINITY };
        assert_eq!(baseline(&[saturated, saturated, squares_only, nan]), None);
        let b = baseline(&[saturated, hour(&[10.0, 20.0]), nan, hour(&[30.0, 40.0])]).unwrap();
        assert_eq!(b.mean, 25.0, "from the hours that did not saturate");
        // Each hour finite (squares of 1e308, sums of 1.7e308), their pool not.
        assert!(hour(&[1e154]).sum_squares.is_finite() && hour(&[1.7e308]).sum.is_finite());
        assert_eq!(baseline(&[hour(&[1e154]), hour(&[1e154])]), None);
        assert_eq!(baseline(&[hour(&[1.7e308]), hour(&[1.7e308])]), None, "its square alone saturates");
    }

    #[test]
    fn the_same_hour_of_past_weeks() {
        let monday_9 = 1_700_438_400; // 2023-11-20 00:00 UTC is a Monday
        assert_eq!(hours_for(monday_9)[0], monday_9 - WEEK);
        assert_eq!(hours_for(monday_9)[3], monday_9 - 4 * WEEK);
    }
}
