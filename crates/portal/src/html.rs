//! HTML building blocks: escaping, links and the page frame. Every string that comes from data
//! (device, item and rule names, errors) goes through [`esc`] or [`url_part`].

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value: everything but the unreserved characters.
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A number as people read it: 1.25 G, 340 k, 12.5.
pub fn human(value: f64) -> String {
    let a = value.abs();
    let (scaled, unit) = match a {
        a if a >= 1e12 => (value / 1e12, " T"),
        a if a >= 1e9 => (value / 1e9, " G"),
        a if a >= 1e6 => (value / 1e6, " M"),
        a if a >= 1e4 => (value / 1e3, " k"),
        _ => (value, ""),
    };
    if scaled.fract() == 0.0 && a < 1e4 {
        format!("{scaled:.0}{unit}")
    } else {
        format!("{scaled:.2}{unit}")
    }
}

pub const NAV: [(&str, &str); 7] = [
    ("/", "System Status"),
    ("/devices", "Devices"),
    ("/top", "Top-N"),
    ("/events", "Events"),
    ("/rules", "Rules"),
    ("/reports/percentile", "95th percentile"),
    ("/api/v1/openapi.json", "API"),
];

/// A whole page: the frame, the navigation (with `current` marked) and `body`.
pub fn page(title: &str, current: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, label) in NAV {
        let mark = if href == current { " class=\"current\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{mark}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Pollux</title><link rel=\"stylesheet\" href=\"/portal/app.css\">\
         <script src=\"/portal/app.js\" defer></script></head>\
         <body><header><span class=\"brand\">Pollux</span><nav>{nav}</nav></header>\
         <main><h1>{}</h1>{body}</main></body></html>\n",
        esc(title),
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(url_part("ge-0/0/1 \"é\""), "ge-0%2F0%2F1%20%22%C3%A9%22");
        assert_eq!(human(1_250_000.0), "1.25 M");
        assert_eq!(human(12.5), "12.50");
        assert_eq!(human(340.0), "340");
    }
}
