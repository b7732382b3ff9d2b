//! Percentiles by the nearest-rank rule, as the monthly 95th-percentile traffic report uses.
//!
//! Of `n` samples sorted ascending, the p-th percentile is the one at rank `ceil(p / 100 * n)`
//! (1-based): always a sample that was measured, never an interpolation, and the rule billing
//! uses ("drop the top 5 %"). A 30-day month of 5-minute samples has 8,640; the 95th percentile
//! is the 8,208th smallest, i.e. the 433rd highest: the 432 highest (5 % of 8,640, exactly)
//! are dropped. Where `p / 100 * n` is not whole, rounding up keeps at least 100 - p % of the
//! samples at or above the answer.

/// The nearest-rank percentile of `values` (any order; they are sorted in place), `p` in
/// (0, 100]. `None` with no samples or a `p` out of range. NaN samples are ignored.
pub fn nearest_rank(values: &mut Vec<f64>, p: f64) -> Option<f64> {
    values.retain(|v| !v.is_nan());
    if values.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    // p / 100 * n computed exactly enough: the product of a decimal p and a count is rounded up
    // only when it is really above a whole number (95 * 8640 / 100 = 8208 exactly).
    let rank = ((p * n as f64 / 100.0) - 1e-9).ceil().max(1.0) as usize;
    Some(values[rank.min(n) - 1])
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    /// By hand: samples 1..=n, so the k-th smallest is k.
    fn ranks(n: usize, p: f64) -> f64 {
        let mut v: Vec<f64> = (1..=n).rev().map(|k| k as f64).collect();
        nearest_rank(&mut v, p).unwrap()
    }

    #[test]
    fn months_of_five_minute_samples() {
        // 28, 29, 30 and 31 days: n = 8064, 8352, 8640, 8928.
        assert_eq!(ranks(8064, 95.0), 7661.0); // 0.95 * 8064 = 7660.8 -> 7661
        assert_eq!(ranks(8352, 95.0), 7935.0); // 7934.4 -> 7935
        assert_eq!(ranks(8640, 95.0), 8208.0); // exactly 8208: the 433rd highest
        assert_eq!(8640 - 8208 + 1, 433);
        assert_eq!(ranks(8928, 95.0), 8482.0); // 8481.6 -> 8482
    }

    #[test]
    fn small_and_edge_cases() {
        assert_eq!(ranks(1, 95.0), 1.0);
        assert_eq!(ranks(20, 95.0), 19.0);
        assert_eq!(ranks(10, 100.0), 10.0);
        assert_eq!(ranks(10, 50.0), 5.0);
        assert_eq!(ranks(10, 0.1), 1.0);
        assert_eq!(nearest_rank(&mut vec![], 95.0), None);
        assert_eq!(nearest_rank(&mut vec![1.0], 0.0), None);
        assert_eq!(nearest_rank(&mut vec![1.0], 101.0), None);
        // Missing samples are simply not there: the rank is taken over what was measured.
        let mut with_gaps = vec![5.0, f64::NAN, 1.0, 3.0];
        assert_eq!(nearest_rank(&mut with_gaps, 50.0), Some(3.0));
    }
}
