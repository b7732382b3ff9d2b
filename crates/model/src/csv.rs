//! CSV fields for the reports (RFC 4180), safe to open in a spreadsheet.

/// A CSV field, quoted when it must be; a leading `=`, `+`, `-` or `@` is quoted with a `'` so a
/// spreadsheet does not run it as a formula.
pub fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_quoted_and_formulas_defused() {
        assert_eq!(super::field("ge-0/0/1"), "ge-0/0/1");
        assert_eq!(super::field("a,b"), "\"a,b\"");
        assert_eq!(super::field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(super::field("=cmd()"), "'=cmd()");
        assert_eq!(super::field("-1,5"), "\"'-1,5\"");
    }
}
