//! HTML for the console: the one escaping function every rendered value
//! goes through ([`esc`]), URL query encoding ([`url`]), the page layout and
//! a few shared pieces. The CSS and the small JS file are vendored here
//! (`assets/`) and served by Sluice; nothing is fetched from elsewhere.

use std::fmt::Write;

/// The console's stylesheet, served at `/static/console.css`.
pub const CSS: &str = include_str!("assets/console.css");
/// The console's script (live tail, select-all), served at `/static/console.js`.
/// Every page works without it.
pub const JS: &str = include_str!("assets/console.js");

/// Escape text for an HTML element or a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
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

/// Percent-encode a query parameter value (everything but unreserved).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A unix time as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ts: f64) -> String {
    chrono::DateTime::from_timestamp(ts as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A whole page: a title, the body, and — when logged in (`csrf` is the
/// session's token) — the navigation and the logout form.
pub fn page(title: &str, csrf: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Sluice</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head><body>",
        esc(title)
    );
    if let Some(token) = csrf {
        out.push_str(
            "<header><span class=\"brand\">Sluice</span><nav>\
             <a href=\"/history\">History</a><a href=\"/queue\">Queue</a>\
             <a href=\"/charts\">Charts</a><a href=\"/tail\">Live tail</a></nav>\
             <form method=\"post\" action=\"/logout\" class=\"logout\">",
        );
        out.push_str(&csrf_field(token));
        out.push_str("<button type=\"submit\">Log out</button></form></header>");
    }
    let _ = write!(
        out,
        "<main><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    out
}

/// The hidden CSRF field of a form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A history action as a coloured label.
pub fn action_label(action: &str) -> String {
    format!(
        "<span class=\"act act-{}\">{}</span>",
        esc(&action.to_ascii_lowercase()),
        esc(action)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_break_out() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("plain ü text"), "plain ü text");
        assert_eq!(
            esc("&amp;"),
            "&amp;amp;",
            "escaping is not idempotent by design"
        );
        // An attribute value cannot be closed from inside.
        let attr = format!("<a title=\"{}\">", esc("\" onmouseover=\"x"));
        assert!(!attr.contains("\" onmouseover"), "{attr}");
    }

    #[test]
    fn urls_and_pages() {
        assert_eq!(url("a b&c=d/<x>@y"), "a%20b%26c%3Dd%2F%3Cx%3E%40y");
        assert_eq!(url("ok-._~9"), "ok-._~9");
        let p = page("<T>", None, "<p>x</p>");
        assert!(p.contains("<title>&lt;T&gt; · Sluice</title>"));
        assert!(!p.contains("Log out"), "no navigation before login");
        assert!(page("t", Some("c\"1"), "").contains("name=\"csrf\" value=\"c&quot;1\""));
        assert_eq!(time(0.0), "1970-01-01 00:00:00");
    }
}
