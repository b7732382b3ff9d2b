//! Threshold rules: what an operator writes, checked whole before it is stored.

use serde::{Deserialize, Serialize};

/// The longest window (and count) a rule may ask for: a state keeps one bit per poll in a `u64`.
pub const MAX_POLLS: u32 = 64;
/// Longest rule name and device or item pattern.
pub const MAX_TEXT: usize = 256;

/// How a value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    /// More than `value` standard deviations above the baseline's mean.
    #[serde(rename = "above_baseline")]
    AboveBaseline,
    /// More than `value` standard deviations below the baseline's mean.
    #[serde(rename = "below_baseline")]
    BelowBaseline,
}

impl Op {
    /// True for the operators that alarm on high values (their peak is the maximum).
    pub fn upward(self) -> bool {
        matches!(self, Op::Gt | Op::Ge | Op::AboveBaseline)
    }

    pub fn is_baseline(self) -> bool {
        matches!(self, Op::AboveBaseline | Op::BelowBaseline)
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::AboveBaseline => "above_baseline",
            Op::BelowBaseline => "below_baseline",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Warning,
    Info,
}

impl Severity {
    pub const ALL: [Severity; 5] =
        [Severity::Critical, Severity::Major, Severity::Minor, Severity::Warning, Severity::Info];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.name() == text)
    }
}

fn one() -> u32 {
    1
}

fn warning() -> Severity {
    Severity::Warning
}

/// A rule as the API takes it (`POST /api/v1/thresholds`) and the repository stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub family: String,
    pub metric: String,
    pub op: Op,
    /// The threshold, or for a baseline rule the number of standard deviations.
    pub value: f64,
    /// Violating polls before an event opens: consecutive ones, or within `window_polls`.
    #[serde(default = "one")]
    pub for_polls: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_polls: Option<u32>,
    /// Where an open event clears (hysteresis); `value` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_value: Option<f64>,
    /// Consecutive clearing polls before an open event clears.
    #[serde(default = "one")]
    pub clear_polls: u32,
    #[serde(default = "warning")]
    pub severity: Severity,
    /// Device name, exact or a `*` glob; every device when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Item name, exact or a `*` glob; every item when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: i64,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

/// What is wrong with a rule, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub field: &'static str,
    pub problem: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for RuleError {}

fn bad(field: &'static str, problem: impl Into<String>) -> Result<(), RuleError> {
    Err(RuleError { field, problem: problem.into() })
}

impl RuleSpec {
    /// The rule's own consistency (the family and metric are checked against the catalog by the
    /// caller, who knows it).
    pub fn validate(&self) -> Result<(), RuleError> {
        if let Some(name) = &self.name {
            if name.trim().is_empty() || name.len() > MAX_TEXT || name.chars().any(char::is_control) {
                return bad("name", format!("must be 1 to {MAX_TEXT} printable characters"));
            }
        }
        if !self.value.is_finite() {
            return bad("value", "must be a finite number");
        }
        if self.op.is_baseline() && self.value < 0.0 {
            return bad("value", "a baseline rule's value is a number of standard deviations: 0 or more");
        }
        if !(1..=MAX_POLLS).contains(&self.for_polls) {
            return bad("for_polls", format!("must be 1 to {MAX_POLLS}"));
        }
        if let Some(window) = self.window_polls {
            if !(self.for_polls..=MAX_POLLS).contains(&window) {
                return bad("window_polls", format!("must be from for_polls ({}) to {MAX_POLLS}", self.for_polls));
            }
        }
        if !(1..=MAX_POLLS).contains(&self.clear_polls) {
            return bad("clear_polls", format!("must be 1 to {MAX_POLLS}"));
        }
        if let Some(clear) = self.clear_value {
            if !clear.is_finite() {
                return bad("clear_value", "must be a finite number");
            }
            // The clear condition must lie on the calm side of the threshold, or an event
            // would clear while the value still violates.
            if self.op.upward() && clear > self.value {
                return bad(
                    "clear_value",
                    format!("must not be above value ({}) for op {}", self.value, self.op.symbol()),
                );
            }
            if !self.op.upward() && clear < self.value {
                return bad(
                    "clear_value",
                    format!("must not be below value ({}) for op {}", self.value, self.op.symbol()),
                );
            }
            if self.op.is_baseline() && clear < 0.0 {
                return bad("clear_value", "a number of standard deviations: 0 or more");
            }
        }
        for (field, pattern) in [("device", &self.device), ("item", &self.item)] {
            if let Some(p) = pattern {
                if p.is_empty() || p.len() > MAX_TEXT {
                    return bad(field, format!("must be 1 to {MAX_TEXT} characters (use * for any)"));
                }
            }
        }
        Ok(())
    }

    /// The name events and alerts carry: the rule's own, or one made of its condition.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{} {} {} {}", self.family, self.metric, self.op.symbol(), self.value),
        }
    }

    pub fn clear_value(&self) -> f64 {
        self.clear_value.unwrap_or(self.value)
    }

    /// Whether the rule applies to an item.
    pub fn applies_to(&self, device: &str, item: &str) -> bool {
        self.device.as_deref().is_none_or(|p| glob_match(p, device))
            && self.item.as_deref().is_none_or(|p| glob_match(p, item))
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters (none too) and
/// every other character for itself.
///
/// Linear in the lengths: the literal runs between stars are found in order, each at its first
/// place after the one before (with only `*`, the leftmost place is always a right choice), the
/// first anchored at the start and the last at the end. A backtracking matcher costs up to
/// pattern x text steps, which 400 rules of 256-character patterns turned into seconds a load.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut runs = pattern.split('*');
    let first = runs.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let mut runs: Vec<&str> = runs.collect();
    let Some(last) = runs.pop() else {
        // No star: the whole text must be the literal.
        return rest.is_empty();
    };
    for run in runs.into_iter().filter(|r| !r.is_empty()) {
        match rest.find(run) {
            Some(at) => rest = &rest[at + run.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A rule on Interface `in_util` of every item, for the tests.
#[cfg(test)]
pub(crate) fn example(op: Op, value: f64) -> RuleSpec {
    RuleSpec {
        name: None,
        family: "Interface".into(),
        metric: "in_util".into(),
        op,
        value,
        for_polls: 1,
        window_polls: None,
        clear_value: None,
        clear_polls: 1,
        severity: Severity::Warning,
        device: None,
        item: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(op: Op, value: f64) -> RuleSpec {
        example(op, value)
    }

    /// The matcher this module had before: backtracking, slow on long patterns, simply right.
    fn reference_glob(pattern: &str, text: &str) -> bool {
        let (p, t) = (pattern.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }

    #[test]
    fn the_linear_matcher_agrees_with_the_backtracking_one() {
        // Every pattern and text of up to 6 characters over a 3-letter alphabet with stars.
        let alphabet = ['a', 'b', '*'];
        let words = |len: usize, with_star: bool| -> Vec<String> {
            let letters: Vec<char> = alphabet.iter().copied().filter(|c| with_star || *c != '*').collect();
            let mut all = vec![String::new()];
            for _ in 0..len {
                all = all.iter().flat_map(|w| letters.iter().map(move |c| format!("{w}{c}"))).collect();
            }
            all
        };
        let mut compared = 0;
        for pl in 0..=5 {
            for pattern in words(pl, true) {
                for tl in 0..=5 {
                    for text in words(tl, false) {
                        assert_eq!(
                            glob_match(&pattern, &text),
                            reference_glob(&pattern, &text),
                            "{pattern:?} {text:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 10_000, "{compared}");
        assert!(glob_match("*é*", "café au lait") && !glob_match("caf*z", "café"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("core-*", "core-rtr1"));
        assert!(!glob_match("core-*", "edge-rtr1"));
        assert!(glob_match("*rtr*", "core-rtr1"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("ge-0/0/*", "ge-0/0/12"));
        assert!(!glob_match("exact", "exact2"));
        assert!(glob_match("exact", "exact"));
        assert!(glob_match("**a", "ba"));
    }

    #[test]
    fn the_clear_value_must_lie_on_the_calm_side() {
        let mut s = spec(Op::Gt, 90.0);
        s.clear_value = Some(95.0);
        assert_eq!(s.validate().unwrap_err().field, "clear_value");
        s.clear_value = Some(80.0);
        s.validate().unwrap();
        let mut s = spec(Op::Lt, 10.0);
        s.clear_value = Some(5.0);
        assert_eq!(s.validate().unwrap_err().field, "clear_value");
        s.clear_value = Some(20.0);
        s.validate().unwrap();
    }

    #[test]
    fn counts_and_windows_are_bounded() {
        let mut s = spec(Op::Gt, 1.0);
        s.for_polls = 0;
        assert_eq!(s.validate().unwrap_err().field, "for_polls");
        s.for_polls = 3;
        s.window_polls = Some(2);
        assert_eq!(s.validate().unwrap_err().field, "window_polls");
        s.window_polls = Some(65);
        assert_eq!(s.validate().unwrap_err().field, "window_polls");
        s.window_polls = Some(5);
        s.clear_polls = 0;
        assert_eq!(s.validate().unwrap_err().field, "clear_polls");
        let mut b = spec(Op::AboveBaseline, -1.0);
        assert_eq!(b.validate().unwrap_err().field, "value");
        b.value = f64::NAN;
        assert_eq!(b.validate().unwrap_err().field, "value");
    }

    #[test]
    fn the_json_form_names_operators_as_written() {
        let s: RuleSpec =
            serde_json::from_str(r#"{"family":"Interface","metric":"in_util","op":">=","value":90,"device":"core-*"}"#)
                .unwrap();
        assert_eq!((s.op, s.for_polls, s.clear_polls, s.severity), (Op::Ge, 1, 1, Severity::Warning));
        assert!(serde_json::from_str::<RuleSpec>(r#"{"family":"F","metric":"m","op":"=>","value":1}"#).is_err());
        assert!(serde_json::from_str::<RuleSpec>(r#"{"family":"F","metric":"m","op":">","value":1,"for_polls":-1}"#)
            .is_err());
    }
}
