//! SMTP replies: a code, an optional RFC 3463 enhanced status code and one or
//! more text lines, rendered with the RFC 5321 multi-line continuation form.
//! Used by the server, by policy verdicts and by the SMTP client.

use std::fmt;

/// RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl EnhancedCode {
    /// Parse "5.7.1".
    pub fn parse(s: &str) -> Option<EnhancedCode> {
        let mut it = s.split('.');
        let a: u8 = it.next()?.parse().ok()?;
        let b: u16 = it.next()?.parse().ok()?;
        let c: u16 = it.next()?.parse().ok()?;
        if it.next().is_some() || !(2..=5).contains(&a) || b > 999 || c > 999 {
            return None;
        }
        Some(EnhancedCode(a, b, c))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmtpReply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    /// Text lines; never empty when rendered (an empty list renders one blank text).
    pub lines: Vec<String>,
}

impl SmtpReply {
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        SmtpReply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// A reply with an enhanced code given as "x.y.z" (must be valid and of
    /// the code's class: a mismatch is a bug in our own text, caught in tests).
    pub fn with(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        let e = EnhancedCode::parse(enhanced);
        debug_assert!(
            e.is_some_and(|e| e.0 as u16 == code / 100),
            "reply {code} with enhanced code {enhanced}"
        );
        SmtpReply::new(code, e, text)
    }

    /// A reply from outside values (a script, a config file): refuses a code
    /// outside 200..=599 and an enhanced code of another class (550 with 4.4.7).
    pub fn checked(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<String>,
    ) -> Result<Self, String> {
        if !(200..=599).contains(&code) {
            return Err(format!("{code} is not an SMTP reply code"));
        }
        if let Some(e) = enhanced {
            if e.0 as u16 != code / 100 {
                return Err(format!(
                    "enhanced code {e} does not match reply code {code}"
                ));
            }
        }
        Ok(SmtpReply::new(code, enhanced, text))
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Render with CRLF line ends. Text is sanitised: CR/LF inside a line would
    /// let a script inject extra reply lines.
    pub fn render(&self, with_enhanced: bool) -> String {
        let mut out = String::new();
        let lines: Vec<&str> = if self.lines.is_empty() {
            vec![""]
        } else {
            self.lines.iter().map(|s| s.as_str()).collect()
        };
        let n = lines.len();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if with_enhanced {
                if let Some(e) = self.enhanced {
                    out.push_str(&e.to_string());
                    out.push(' ');
                }
            }
            for c in line.chars() {
                if c == '\r' || c == '\n' {
                    out.push(' ');
                } else {
                    out.push(c);
                }
            }
            out.push_str("\r\n");
        }
        out
    }

    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_refuses_a_class_mismatch() {
        assert!(SmtpReply::checked(550, EnhancedCode::parse("4.4.7"), "x").is_err());
        assert!(SmtpReply::checked(199, None, "x").is_err());
        let r = SmtpReply::checked(451, EnhancedCode::parse("4.7.1"), "later").unwrap();
        assert_eq!(r.render(true), "451 4.7.1 later\r\n");
    }

    #[test]
    fn renders_multiline() {
        let r = SmtpReply {
            code: 550,
            enhanced: EnhancedCode::parse("5.7.1"),
            lines: vec!["one".into(), "two\r\nthree".into()],
        };
        assert_eq!(r.render(true), "550-5.7.1 one\r\n550 5.7.1 two  three\r\n");
        assert_eq!(r.render(false), "550-one\r\n550 two  three\r\n");
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!(EnhancedCode::parse("4.7.1"), Some(EnhancedCode(4, 7, 1)));
        assert_eq!(EnhancedCode::parse("1.2.3"), None);
        assert_eq!(EnhancedCode::parse("5.7"), None);
    }
}
