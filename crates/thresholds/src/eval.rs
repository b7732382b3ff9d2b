//! The evaluator: one poll of one item against one rule, from a state to a state and at most
//! one transition. No clock, no I/O: the repository applies the result in the transaction that
//! loads the poll, which is what makes thresholding survive a failover unchanged.

use crate::rule::{Op, RuleSpec};

/// What a (rule, item) pair remembers between polls. A pair with no violation in its window and
/// no open event has no state at all (`None`): only pairs that are doing something are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    /// The cycle of the newest poll evaluated; an older one arriving later is not evaluated.
    pub last_cycle: i64,
    /// Violations among the last polls, bit 0 the newest (while no event is open).
    pub history: u64,
    pub open: Option<OpenEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenEvent {
    /// The event's id, given by the repository when it stored the opening.
    pub id: i64,
    /// The most extreme value since the event opened (highest for `>`, lowest for `<`).
    pub peak: f64,
    /// Consecutive clearing polls so far.
    pub clear_run: u32,
}

/// The mean and standard deviation of the same hour of the week over past weeks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub mean: f64,
    pub stddev: f64,
}

/// One poll of one item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cycle: i64,
    pub ts: i64,
    pub value: f64,
    /// Only read by baseline rules; `None` when there is no baseline yet.
    pub baseline: Option<Baseline>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// An event opens with this poll (`peak` is its value).
    Open { at: i64, cycle: i64, value: f64 },
    /// The open event's peak moved.
    Peak { event: i64, peak: f64 },
    /// The open event clears with this poll.
    Clear { event: i64, at: i64, value: f64, peak: f64 },
}

/// What [`evaluate`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The poll is older than (or as old as) one already evaluated: nothing changes.
    Late,
    /// The pair's new state (`None`: nothing to remember) and what happened, if anything. After
    /// an `Open` the caller stores the event and sets `open.id` in the state.
    Next { state: Option<State>, transition: Option<Transition> },
}

/// Whether `value` violates `threshold` under `op`; baseline operators compare with
/// `mean ± threshold × stddev`, and never violate without a baseline.
pub fn violates(op: Op, threshold: f64, value: f64, baseline: Option<Baseline>) -> bool {
    match op {
        Op::Gt => value > threshold,
        Op::Ge => value >= threshold,
        Op::Lt => value < threshold,
        Op::Le => value <= threshold,
        Op::AboveBaseline => baseline.is_some_and(|b| value > b.mean + threshold * b.stddev),
        Op::BelowBaseline => baseline.is_some_and(|b| value < b.mean - threshold * b.stddev),
    }
}

fn window_mask(polls: u32) -> u64 {
    if polls >= 64 {
        u64::MAX
    } else {
        (1u64 << polls) - 1
    }
}

/// Evaluates one poll.
///
/// - No event open: the poll's violation joins the history. An event opens when the last
///   `for_polls` polls all violate or, with `window_polls`, when at least `for_polls` of the
///   last `window_polls` do. Polls count as they arrive: a missed poll neither breaks nor
///   extends a run.
/// - An event open: a poll that no longer violates `clear_value` (the hysteresis) counts
///   towards `clear_polls` consecutive ones, which clear it; a violating poll resets the count.
///   The peak follows the most extreme value.
pub fn evaluate(rule: &RuleSpec, state: Option<&State>, sample: &Sample) -> Step {
    if state.is_some_and(|s| sample.cycle <= s.last_cycle) {
        return Step::Late;
    }
    let mut next = state.copied().unwrap_or(State { last_cycle: sample.cycle, history: 0, open: None });
    next.last_cycle = sample.cycle;
    let mut transition = None;
    match &mut next.open {
        None => {
            let violating = violates(rule.op, rule.value, sample.value, sample.baseline);
            next.history = match (violating, rule.window_polls) {
                // A calm poll ends a run of consecutive violations: nothing older counts again.
                (false, None) => 0,
                _ => (next.history << 1) | u64::from(violating),
            };
            let window = rule.window_polls.unwrap_or(rule.for_polls);
            let recent = next.history & window_mask(window);
            let count = match rule.window_polls {
                Some(_) => recent.count_ones(),
                None => next.history.trailing_ones(),
            };
            if count >= rule.for_polls {
                next.history = 0;
                next.open = Some(OpenEvent { id: 0, peak: sample.value, clear_run: 0 });
                transition = Some(Transition::Open { at: sample.ts, cycle: sample.cycle, value: sample.value });
            } else if recent == 0 {
                return Step::Next { state: None, transition: None };
            }
        }
        Some(open) => {
            let more_extreme = if rule.op.upward() { sample.value > open.peak } else { sample.value < open.peak };
            if more_extreme {
                open.peak = sample.value;
                transition = Some(Transition::Peak { event: open.id, peak: open.peak });
            }
            if violates(rule.op, rule.clear_value(), sample.value, sample.baseline) {
                open.clear_run = 0;
            } else {
                open.clear_run += 1;
                if open.clear_run >= rule.clear_polls {
                    let cleared =
                        Transition::Clear { event: open.id, at: sample.ts, value: sample.value, peak: open.peak };
                    return Step::Next { state: None, transition: Some(cleared) };
                }
            }
        }
    }
    Step::Next { state: Some(next), transition }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(op: Op, value: f64) -> RuleSpec {
        crate::rule::example(op, value)
    }

    /// Feeds values polled every 300 s from cycle 0 and returns the transitions with the index
    /// of the poll that caused each, giving opened events ids 1, 2, ...
    fn run(rule: &RuleSpec, values: &[f64]) -> (Vec<(usize, Transition)>, Option<State>) {
        let mut state = None;
        let mut out = Vec::new();
        let mut next_id = 1;
        for (i, &value) in values.iter().enumerate() {
            let cycle = i as i64 * 300;
            let sample = Sample { cycle, ts: cycle + 7, value, baseline: None };
            match evaluate(rule, state.as_ref(), &sample) {
                Step::Late => panic!("poll {i} is not late"),
                Step::Next { state: s, transition } => {
                    state = s;
                    if let Some(t) = transition {
                        if let Transition::Open { .. } = t {
                            state.as_mut().unwrap().open.as_mut().unwrap().id = next_id;
                            next_id += 1;
                        }
                        out.push((i, t));
                    }
                }
            }
        }
        (out, state)
    }

    fn kinds(transitions: &[(usize, Transition)]) -> Vec<(usize, &'static str)> {
        transitions
            .iter()
            .map(|(i, t)| {
                let kind = match t {
                    Transition::Open { .. } => "open",
                    Transition::Peak { .. } => "peak",
                    Transition::Clear { .. } => "clear",
                };
                (*i, kind)
            })
            .collect()
    }

    #[test]
    fn one_violating_poll_opens_and_one_calm_poll_clears() {
        let (t, state) = run(&rule(Op::Gt, 90.0), &[10.0, 95.0, 97.0, 90.0, 10.0]);
        assert_eq!(kinds(&t), [(1, "open"), (2, "peak"), (3, "clear")]);
        assert_eq!(t[0].1, Transition::Open { at: 307, cycle: 300, value: 95.0 });
        assert_eq!(t[2].1, Transition::Clear { event: 1, at: 907, value: 90.0, peak: 97.0 });
        assert_eq!(state, None, "a calm pair keeps no state");
    }

    #[test]
    fn for_polls_needs_consecutive_violations() {
        let mut r = rule(Op::Ge, 90.0);
        r.for_polls = 3;
        let (t, _) = run(&r, &[95.0, 95.0, 10.0, 95.0, 95.0, 90.0, 10.0]);
        assert_eq!(kinds(&t), [(5, "open"), (6, "clear")]);
    }

    #[test]
    fn a_window_opens_on_a_flapping_item() {
        let mut r = rule(Op::Gt, 0.0);
        r.for_polls = 3;
        r.window_polls = Some(5);
        // Down, up, down, up, down: three violations within five polls, never two in a row.
        let (t, _) = run(&r, &[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(kinds(&t), [(4, "open"), (5, "clear")]);
        // Spread over more than the window, they never open.
        let (t, state) = run(&r, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(state, None, "the last violation left the window");
    }

    #[test]
    fn hysteresis_and_clear_polls() {
        let mut r = rule(Op::Gt, 90.0);
        r.clear_value = Some(70.0);
        r.clear_polls = 2;
        // 85 and 80 no longer violate 90 but do violate the clear value 70: the event stays.
        // One calm poll, then a violating one resets the count; two calm in a row clear.
        let (t, _) = run(&r, &[95.0, 85.0, 80.0, 60.0, 75.0, 60.0, 50.0, 40.0]);
        assert_eq!(kinds(&t), [(0, "open"), (6, "clear")]);
    }

    #[test]
    fn lower_bound_rules_track_the_lowest_peak() {
        let mut r = rule(Op::Lt, 10.0);
        r.clear_value = Some(20.0);
        let (t, _) = run(&r, &[50.0, 5.0, 2.0, 15.0, 25.0]);
        assert_eq!(kinds(&t), [(1, "open"), (2, "peak"), (4, "clear")]);
        assert_eq!(t[2].1, Transition::Clear { event: 1, at: 1207, value: 25.0, peak: 2.0 });
    }

    #[test]
    fn a_second_event_opens_after_a_clear() {
        let (t, _) = run(&rule(Op::Gt, 5.0), &[9.0, 1.0, 9.0, 1.0]);
        assert_eq!(kinds(&t), [(0, "open"), (1, "clear"), (2, "open"), (3, "clear")]);
        assert!(matches!(t[3].1, Transition::Clear { event: 2, .. }));
    }

    #[test]
    fn late_and_repeated_polls_change_nothing() {
        let mut r = rule(Op::Gt, 90.0);
        r.for_polls = 2;
        let first = Sample { cycle: 600, ts: 601, value: 95.0, baseline: None };
        let Step::Next { state: Some(state), transition: None } = evaluate(&r, None, &first) else {
            panic!("a first violation is remembered")
        };
        for cycle in [300, 600] {
            let late = Sample { cycle, ts: cycle + 1, value: 99.0, baseline: None };
            assert_eq!(evaluate(&r, Some(&state), &late), Step::Late, "cycle {cycle}");
        }
        let next = Sample { cycle: 900, ts: 901, value: 95.0, baseline: None };
        assert!(matches!(
            evaluate(&r, Some(&state), &next),
            Step::Next { transition: Some(Transition::Open { cycle: 900, .. }), .. }
        ));
    }

    #[test]
    fn baselines_compare_with_standard_deviations_and_need_a_baseline() {
        let r = rule(Op::AboveBaseline, 3.0);
        let base = Some(Baseline { mean: 100.0, stddev: 10.0 });
        let at = |value, baseline| Sample { cycle: 0, ts: 0, value, baseline };
        let opens = |s: Sample| matches!(evaluate(&r, None, &s), Step::Next { transition: Some(_), .. });
        assert!(!opens(at(130.0, base)), "exactly 3 deviations is not above");
        assert!(opens(at(131.0, base)));
        assert!(!opens(at(1e9, None)), "no baseline, no violation");
        let below = rule(Op::BelowBaseline, 2.0);
        assert!(violates(below.op, below.value, 79.0, base));
        assert!(!violates(below.op, below.value, 81.0, base));
    }

    #[test]
    fn a_full_window_of_64_polls_works() {
        let mut r = rule(Op::Gt, 0.0);
        r.for_polls = 64;
        r.window_polls = Some(64);
        let mut values = vec![1.0; 63];
        let (t, state) = run(&r, &values);
        assert!(t.is_empty());
        assert_eq!(state.unwrap().history.count_ones(), 63);
        values.push(1.0);
        let (t, _) = run(&r, &values);
        assert_eq!(kinds(&t), [(63, "open")]);
    }
}
