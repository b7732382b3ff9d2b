//! Double-precision arithmetic in SQL that PostgreSQL computes without ever raising.
//!
//! PostgreSQL's `float8` operators check their results where C's do not: a finite sum or
//! product that overflows raises `22003 value out of range: overflow`, and a product or quotient
//! of non-zero values that rounds to zero raises `value out of range: underflow`. `sum()` adds
//! with that `+`, and `avg()` also accumulates a sum of squared deviations, so it overflows on
//! any value beyond about 1.3e154. One such value sent by a collector would make every statement
//! that sums it fail, the rollup of its hour included, forever.
//!
//! The expressions here give what IEEE 754 arithmetic gives (what SQLite computes), but never
//! raise:
//!
//! - [`sum_parts`] / [`sum_of`]: a `sum()` split in two. Values up to 2^960 are summed as they
//!   are; larger ones (and infinities, and NaN) are summed scaled down by 2^-64, exactly (a
//!   power of two). Neither part can overflow (fewer than 2^62 rows), and the parts are joined
//!   in the scaled range, so that only a total beyond the range of a double saturates, to
//!   `+Infinity` or `-Infinity`: an intermediate sum never does, whatever order the rows came
//!   in. `+Infinity` and `-Infinity` in one sum give NaN. Without a value beyond 2^960 (about
//!   9.7e288) the result is exactly that of `sum()`.
//! - [`square_parts`]: the same for a sum of squares. A square is exactly IEEE `v * v`: one that
//!   overflows is `+Infinity` (so is the sum then), one that underflows is 0.
//! - [`quotient`]: `s / n` for a count `n >= 1`, exactly as IEEE divides, zero included.
//!
//! Each takes and returns SQL text; the values are literals that PostgreSQL reads back exactly
//! (tested against the server).

/// Values beyond this are summed scaled by [`DOWN`].
const SPLIT: f64 = 9.7453140114e288; // 2^960
const DOWN: f64 = 5.421010862427522e-20; // 2^-64
const UP: f64 = 1.8446744073709552e19; // 2^64
/// Squares of values beyond this are summed scaled by [`DOWN`] (their square exceeds 2^960).
const SQUARE_SPLIT: f64 = 3.1217485503159922e144; // 2^480
/// The largest double whose square is finite, and the smallest whose square is not zero.
const SQUARE_MAX: f64 = 1.3407807929942596e154; // 0x1.fffffffffffffp+511
const SQUARE_MIN: f64 = 1.5717277847026288e-162; // 0x1.6a09e667f3bcdp-538
/// A sum this small is negligible beside a scaled part that is not zero (at least 2^844).
const NEGLIGIBLE: f64 = 1.8928834978668395e-270; // 2^-896
const TINY: f64 = 9.332636185032189e-302; // 2^-1000
const TINY_UP: f64 = 1.0715086071862673e301; // 2^1000
const HALF_SUBNORMAL_UP: f64 = 3.777893186295716e22; // 2^75

fn lit(x: f64) -> String {
    format!("'{x:e}'::float8")
}

/// Two aggregates, `{alias}_s` and `{alias}_b`, for [`sum_of`] to join: the sum of `x`.
pub(crate) fn sum_parts(x: &str, alias: &str) -> String {
    let (split, down) = (lit(SPLIT), lit(DOWN));
    // NaN compares above every number in PostgreSQL: it goes to the scaled part, as infinities.
    format!(
        "sum(CASE WHEN abs({x}) <= {split} THEN {x} END) AS {alias}_s, \
         sum(CASE WHEN abs({x}) > {split} THEN {x} * {down} END) AS {alias}_b"
    )
}

/// Two aggregates, `{alias}_s` and `{alias}_b`, for [`sum_of`] to join: the sum of the squares
/// of `v`.
pub(crate) fn square_parts(v: &str, alias: &str) -> String {
    let (split, max, min, down) = (lit(SQUARE_SPLIT), lit(SQUARE_MAX), lit(SQUARE_MIN), lit(DOWN));
    format!(
        "sum(CASE WHEN abs({v}) > {split} THEN NULL WHEN abs({v}) < {min} THEN 0 ELSE {v} * {v} END) AS {alias}_s, \
         sum(CASE WHEN abs({v}) <= {split} THEN NULL WHEN abs({v}) > {max} THEN 'Infinity'::float8 \
             ELSE ({v} * {v}) * {down} END) AS {alias}_b"
    )
}

/// The sum whose parts [`sum_parts`] or [`square_parts`] named `alias` (columns of the query
/// this expression reads from): NULL when there was nothing to sum, as `sum()`.
pub(crate) fn sum_of(alias: &str) -> String {
    let (small, big) = (format!("{alias}_s"), format!("{alias}_b"));
    let (negligible, down, up, split) = (lit(NEGLIGIBLE), lit(DOWN), lit(UP), lit(SPLIT));
    // In the scaled range: the small part (scaled exactly unless negligible beside the other).
    let scaled =
        format!("({big} + coalesce(CASE WHEN abs({small}) < {negligible} THEN 0 ELSE {small} * {down} END, 0))");
    format!(
        "(CASE WHEN {big} IS NULL THEN {small} WHEN {big} = 0 THEN coalesce({small}, {big}) \
         WHEN {scaled} = 'NaN'::float8 THEN 'NaN'::float8 \
         WHEN {scaled} >= {split} THEN 'Infinity'::float8 WHEN {scaled} <= -{split} THEN '-Infinity'::float8 \
         ELSE {scaled} * {up} END)"
    )
}

/// `s / n` for a count `n >= 1` (an integer expression), as IEEE divides: a quotient too small
/// for a double is zero, not an error. NULL for a NULL `s`.
pub(crate) fn quotient(s: &str, n: &str) -> String {
    let (tiny, tiny_up, half_up) = (lit(TINY), lit(TINY_UP), lit(HALF_SUBNORMAL_UP));
    // Below 2^-1000 the quotient is zero exactly when |s| / n <= 2^-1075 (half the smallest
    // subnormal, which rounds to even: zero), i.e. |s| * 2^1075 <= n, in two exact steps.
    format!(
        "(CASE WHEN abs({s}) >= {tiny} THEN {s} / ({n})::float8 \
         WHEN abs({s}) * {tiny_up} * {half_up} <= ({n})::float8 THEN {s} * 0 \
         ELSE {s} / ({n})::float8 END)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::scratch::ScratchServer;

    /// The constants are what their comments say.
    #[test]
    fn the_constants_are_exact() {
        assert_eq!(SPLIT, 2f64.powi(960));
        assert_eq!((DOWN, UP), (2f64.powi(-64), 2f64.powi(64)));
        assert_eq!(SQUARE_SPLIT, 2f64.powi(480));
        assert_eq!(
            (NEGLIGIBLE, TINY, TINY_UP, HALF_SUBNORMAL_UP),
            (2f64.powi(-896), 2f64.powi(-1000), 2f64.powi(1000), 2f64.powi(75))
        );
        assert!((SQUARE_MAX * SQUARE_MAX).is_finite() && (SQUARE_MAX.next_up() * SQUARE_MAX.next_up()).is_infinite());
        assert!(SQUARE_MIN * SQUARE_MIN > 0.0 && SQUARE_MIN.next_down() * SQUARE_MIN.next_down() == 0.0);
    }

    const EDGES: [f64; 22] = [
        0.0,
        -0.0,
        1.0,
        -2.5,
        1e200,
        -1e200,
        1.7e308,
        -1.7e308,
        f64::MAX,
        f64::MIN,
        5e-324,
        -5e-324,
        1.5e-323,
        1e-200,
        f64::MIN_POSITIVE,
        SQUARE_MAX,
        SQUARE_MIN,
        SQUARE_MIN.next_down(),
        SPLIT,
        SPLIT.next_up(),
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];

    /// `(sum, sum of squares)` of `values` by the expressions here, on the server.
    fn sums(client: &mut postgres::Client, values: &[f64]) -> (Option<f64>, Option<f64>) {
        let sql = format!(
            "SELECT {}, {} FROM (SELECT {}, {} FROM unnest($1::float8[]) AS x) p",
            sum_of("v"),
            sum_of("q"),
            sum_parts("x", "v"),
            square_parts("x", "q")
        );
        let row = client.query_one(&sql, &[&values]).unwrap();
        (row.get(0), row.get(1))
    }

    /// On a server: the literals read back exactly, and every expression gives what IEEE
    /// arithmetic gives (a sum saturating only as a whole), without raising.
    #[test]
    fn the_expressions_never_raise_and_agree_with_ieee() {
        let server = match ScratchServer::start() {
            Ok(server) => server,
            Err(e) if crate::postgres::scratch::binaries().is_none() && !crate::postgres::scratch::required() => {
                eprintln!("SKIPPED: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut client = postgres::Client::connect(&server.database("floats").unwrap(), postgres::NoTls).unwrap();
        for x in [SPLIT, DOWN, UP, SQUARE_SPLIT, SQUARE_MAX, SQUARE_MIN, NEGLIGIBLE, TINY, TINY_UP, HALF_SUBNORMAL_UP] {
            let back: f64 = client.query_one(&format!("SELECT {}", lit(x)), &[]).unwrap().get(0);
            assert_eq!(back.to_bits(), x.to_bits(), "{x:e}");
        }
        let same = |a: Option<f64>, b: f64| a.is_some_and(|a| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        // One value: itself, and its IEEE square.
        for x in EDGES {
            let (sum, squares) = sums(&mut client, &[x]);
            assert!(same(sum, x), "sum of {x:e}: {sum:?}");
            assert!(same(squares, x * x), "square of {x:e}: {squares:?}");
        }
        // Two values: the IEEE sum (two values cannot overflow in between), squares summed.
        for a in EDGES {
            for b in EDGES {
                let (sum, squares) = sums(&mut client, &[a, b]);
                assert!(same(sum, a + b) || (a + b == 0.0 && sum == Some(0.0)), "{a:e} + {b:e}: {sum:?}");
                assert!(same(squares, a * a + b * b), "{a:e}² + {b:e}²: {squares:?}");
            }
        }
        // Only the total saturates, whatever the order; nothing at all is NULL, as sum().
        for values in [[f64::MAX, f64::MAX, f64::MIN], [f64::MAX, f64::MIN, f64::MAX], [f64::MIN, f64::MAX, f64::MAX]] {
            assert_eq!(sums(&mut client, &values).0, Some(f64::MAX), "{values:?}");
        }
        assert_eq!(sums(&mut client, &[f64::MAX, f64::MAX, 1.0]), (Some(f64::INFINITY), Some(f64::INFINITY)));
        assert_eq!(sums(&mut client, &[f64::MIN, -1e300, 1e300, f64::MIN]).0, Some(f64::NEG_INFINITY));
        assert_eq!(sums(&mut client, &[1e154, 1e154]).1, Some(f64::INFINITY), "squares 1e308 twice");
        assert_eq!(sums(&mut client, &[1.7e308, 1e200, -1.7e308]).0, Some(1e200), "no cancellation lost");
        assert_eq!(sums(&mut client, &[]), (None, None));
        // Quotients by counts, as IEEE divides.
        for s in EDGES.into_iter().chain([f64::NAN, 5e-324 * 3.0, -5e-324 * 7.0]) {
            for n in [1i64, 2, 3, 7, 12, 1 << 40] {
                let q: Option<f64> = client
                    .query_one(&format!("SELECT {}", quotient("$1::float8", "$2::bigint")), &[&s, &n])
                    .unwrap()
                    .get(0);
                assert!(same(q, s / n as f64), "{s:e} / {n}: {q:?}");
            }
        }
    }
}
