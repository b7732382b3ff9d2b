//! Charts drawn on the server as SVG: no script library to vendor or load, nothing to draw in
//! the browser but the SVG itself, and a page that works with JavaScript off. A chart of a
//! rollup resolution draws the min-max band under the average line.

use crate::html::{esc, human};
use pollux_repository::Series;
use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 20.0;
const COLORS: [&str; 3] = ["#2563eb", "#dc2626", "#059669"];

/// One line of a chart: its label and what the repository returned.
pub struct Line<'a> {
    pub label: &'a str,
    pub series: &'a Series,
}

/// Points of a series as (ts, avg, min, max).
fn points(series: &Series) -> Vec<(i64, f64, f64, f64)> {
    match series {
        Series::Raw(p) => p.iter().map(|&(t, v)| (t, v, v, v)).collect(),
        Series::Rollup(p) => p.iter().map(|r| (r.period, r.avg, r.min, r.max)).collect(),
    }
}

/// A time on the x axis: `HH:MM` for ranges up to two days, `MM-DD` beyond (UTC).
fn time_label(t: i64, span: i64) -> String {
    let text = pollux_model::period::format_utc(t);
    if span <= 2 * 86_400 {
        text[11..16].to_owned()
    } else {
        text[5..10].to_owned()
    }
}

/// An SVG chart of `lines` over `[from, to)`; `data-points` on the `<svg>` says how many
/// points it drew (the browser test reads it).
pub fn render(title: &str, unit: &str, from: i64, to: i64, lines: &[Line<'_>]) -> String {
    let all: Vec<Vec<(i64, f64, f64, f64)>> = lines.iter().map(|l| points(l.series)).collect();
    let count: usize = all.iter().map(Vec::len).sum();
    let top = all.iter().flatten().map(|p| p.3).fold(0.0f64, f64::max);
    let bottom = all.iter().flatten().map(|p| p.2).fold(0.0f64, f64::min);
    let span = if top > bottom { top - bottom } else { 1.0 };
    let x = |t: i64| LEFT + (t - from) as f64 / (to - from).max(1) as f64 * (WIDTH - LEFT);
    let y = |v: f64| (HEIGHT - BOTTOM) - (v - bottom) / span * (HEIGHT - BOTTOM - 8.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure class=\"chart\"><figcaption>{}{}</figcaption>\
         <svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" data-points=\"{count}\">",
        esc(title),
        if unit.is_empty() { String::new() } else { format!(" <small>({})</small>", esc(unit)) },
        esc(title)
    );
    // Times along the bottom: the start, the middle and the end of the range (UTC), as hours
    // and minutes within two days, as month and day beyond.
    for (t, anchor) in [(from, "start"), (from + (to - from) / 2, "middle"), (to, "end")] {
        let _ = write!(
            svg,
            "<text class=\"axis time\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            x(t),
            HEIGHT - 4.0,
            esc(&time_label(t, to - from))
        );
    }
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    for (value, label) in [(bottom, format!("{}{unit}", human(bottom))), (top, format!("{}{unit}", human(top)))] {
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{WIDTH}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 4.0,
            y(value) + 4.0,
            esc(&label),
            y = y(value)
        );
    }
    for (i, (line, pts)) in lines.iter().zip(&all).enumerate() {
        let color = COLORS[i % COLORS.len()];
        if matches!(line.series, Series::Rollup(_)) && !pts.is_empty() {
            // The band: up along the maxima, back along the minima.
            let mut band = String::new();
            for p in pts {
                let _ = write!(band, "{:.1},{:.1} ", x(p.0), y(p.3));
            }
            for p in pts.iter().rev() {
                let _ = write!(band, "{:.1},{:.1} ", x(p.0), y(p.2));
            }
            let _ = write!(svg, "<polygon class=\"band\" fill=\"{color}\" points=\"{}\"/>", band.trim_end());
        }
        let path: String = pts.iter().map(|p| format!("{:.1},{:.1} ", x(p.0), y(p.1))).collect();
        let _ = write!(
            svg,
            "<polyline class=\"line\" stroke=\"{color}\" points=\"{}\"/><text class=\"legend\" x=\"{}\" y=\"12\" fill=\"{color}\">{}</text>",
            path.trim_end(),
            LEFT + 8.0 + i as f64 * 120.0,
            esc(line.label)
        );
    }
    if count == 0 {
        let _ = write!(
            svg,
            "<text class=\"empty\" x=\"{}\" y=\"{}\">no data in this range</text>",
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollux_repository::RollupPoint;

    #[test]
    fn raw_lines_and_rollup_bands() {
        let raw = Series::Raw(vec![(0, 1.0), (50, 3.0), (100, 2.0)]);
        let svg = render("in <b>", "bit/s", 0, 100, &[Line { label: "in", series: &raw }]);
        assert!(svg.contains("data-points=\"3\"") && svg.contains("<polyline") && !svg.contains("<polygon"));
        assert!(svg.contains("in &lt;b&gt;"), "the title is escaped");
        let rolled = Series::Rollup(vec![RollupPoint { period: 0, min: 1.0, max: 5.0, avg: 2.0, count: 12 }]);
        let svg = render("r", "", 0, 3600, &[Line { label: "avg", series: &rolled }]);
        assert!(svg.contains("<polygon class=\"band\""));
        let empty = Series::Raw(vec![]);
        assert!(render("e", "", 0, 1, &[Line { label: "x", series: &empty }]).contains("no data"));
        // Times along the bottom and the unit on the values.
        let day = 1_796_169_600; // 2026-12-02 00:00:00 UTC
        let svg = render("t", "bit/s", day, day + 6 * 3600, &[Line { label: "in", series: &raw }]);
        assert!(svg.contains(">00:00<") && svg.contains(">03:00<") && svg.contains(">06:00<"), "{svg}");
        assert!(svg.contains("bit/s</text>"), "{svg}");
        let svg = render("t", "", day, day + 30 * 86_400, &[Line { label: "in", series: &raw }]);
        assert!(svg.contains(">12-02<") && svg.contains(">01-01<"), "{svg}");
    }
}
