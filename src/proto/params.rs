//! MAIL FROM and RCPT TO parameters as types: SIZE (RFC 1870), BODY (RFC
//! 6152, 3030), SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461 §4.3-4.4), AUTH
//! (RFC 4954 §5); NOTIFY and ORCPT (RFC 3461 §4.1-4.2). Parsed once from the
//! command line's `KEY=value` list; an invalid or unknown parameter is a
//! [`ParamError`] that carries the reply the server sends. Also RFC 3461
//! xtext, shared by the server (decoding) and the delivery client (encoding).

use std::collections::BTreeMap;

use super::reply::SmtpReply;

/// A refused parameter: the reply to send (501/555 with 5.5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError(pub SmtpReply);

impl ParamError {
    fn syntax(text: &str) -> ParamError {
        ParamError(SmtpReply::with(501, "5.5.4", text))
    }
    fn unsupported(text: String) -> ParamError {
        ParamError(SmtpReply::with(555, "5.5.4", text))
    }
}

/// `BODY=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// `RET=`: what a DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// One `NOTIFY=` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Notify {
    Never,
    Success,
    Failure,
    Delay,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Never => "NEVER",
            Notify::Success => "SUCCESS",
            Notify::Failure => "FAILURE",
            Notify::Delay => "DELAY",
        }
    }
}

/// MAIL FROM parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// Decoded from xtext.
    pub envid: Option<String>,
    /// Decoded from xtext; accepted and ignored for unauthenticated clients.
    pub auth: Option<String>,
    /// As given, keys uppercase (what scripts see as `senderparams`).
    pub raw: Vec<(String, String)>,
}

/// RCPT TO parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// In the order given; never empty when present, NEVER only alone.
    pub notify: Option<Vec<Notify>>,
    /// (address type lowercase, decoded address).
    pub orcpt: Option<(String, String)>,
    /// As given, keys uppercase (what scripts see as `params`).
    pub raw: Vec<(String, String)>,
}

impl MailParams {
    pub fn parse(raw: Vec<(String, String)>) -> Result<MailParams, ParamError> {
        let mut p = MailParams::default();
        for (k, v) in &raw {
            match k.as_str() {
                "SIZE" => {
                    let n = v
                        .parse::<u64>()
                        .map_err(|_| ParamError::syntax("Syntax error in SIZE parameter"))?;
                    p.size = Some(n);
                }
                "BODY" => {
                    p.body = Some(match v.to_ascii_uppercase().as_str() {
                        "7BIT" => Body::SevenBit,
                        "8BITMIME" => Body::EightBitMime,
                        _ => return Err(ParamError::unsupported("Unsupported BODY type".into())),
                    })
                }
                "SMTPUTF8" => {
                    if !v.is_empty() {
                        return Err(ParamError::syntax("SMTPUTF8 takes no value"));
                    }
                    p.smtputf8 = true;
                }
                "RET" => {
                    p.ret = Some(match v.to_ascii_uppercase().as_str() {
                        "FULL" => Ret::Full,
                        "HDRS" => Ret::Hdrs,
                        _ => return Err(ParamError::syntax("RET must be FULL or HDRS")),
                    })
                }
                "ENVID" => match xtext_decode(v) {
                    Some(d) if !v.is_empty() && v.len() <= 100 => p.envid = Some(d),
                    _ => return Err(ParamError::syntax("Malformed ENVID")),
                },
                "AUTH" => match xtext_decode(v) {
                    Some(d) => p.auth = Some(d),
                    None => return Err(ParamError::syntax("Malformed AUTH parameter")),
                },
                _ => {
                    return Err(ParamError::unsupported(format!(
                        "Unsupported parameter {k}"
                    )))
                }
            }
        }
        p.raw = raw;
        Ok(p)
    }

    pub fn map(&self) -> BTreeMap<String, String> {
        self.raw.iter().cloned().collect()
    }
}

impl RcptParams {
    pub fn parse(raw: Vec<(String, String)>) -> Result<RcptParams, ParamError> {
        let mut p = RcptParams::default();
        for (k, v) in &raw {
            match k.as_str() {
                "NOTIFY" => {
                    let mut items = Vec::new();
                    for i in v.split(',') {
                        items.push(match i.to_ascii_uppercase().as_str() {
                            "NEVER" => Notify::Never,
                            "SUCCESS" => Notify::Success,
                            "FAILURE" => Notify::Failure,
                            "DELAY" => Notify::Delay,
                            _ => return Err(ParamError::syntax("Malformed NOTIFY parameter")),
                        });
                    }
                    let never_alone = !items.contains(&Notify::Never) || items.len() == 1;
                    let mut dedup = items.clone();
                    dedup.sort();
                    dedup.dedup();
                    if !never_alone || dedup.len() != items.len() {
                        return Err(ParamError::syntax("Malformed NOTIFY parameter"));
                    }
                    p.notify = Some(items);
                }
                "ORCPT" => {
                    let parsed = v.split_once(';').and_then(|(t, a)| {
                        let t = t.to_ascii_lowercase();
                        if (t == "rfc822" || t == "utf-8") && !a.is_empty() {
                            xtext_decode(a).map(|a| (t, a))
                        } else {
                            None
                        }
                    });
                    match parsed {
                        Some(o) => p.orcpt = Some(o),
                        None => return Err(ParamError::syntax("Malformed ORCPT parameter")),
                    }
                }
                _ => {
                    return Err(ParamError::unsupported(format!(
                        "Unsupported parameter {k}"
                    )))
                }
            }
        }
        p.raw = raw;
        Ok(p)
    }

    /// NOTIFY as the strings the queue keeps ("FAILURE", "DELAY").
    pub fn notify_strings(&self) -> Vec<String> {
        self.notify
            .iter()
            .flatten()
            .map(|n| n.as_str().to_string())
            .collect()
    }

    pub fn map(&self) -> BTreeMap<String, String> {
        self.raw.iter().cloned().collect()
    }
}

/// RFC 3461 §4 xtext: `+XX` hex escapes; None if malformed.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'+' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if (33..=126).contains(&c) && c != b'=' {
            out.push(c);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3461 §4 xtext encoding.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mail_params_typed() {
        let p = MailParams::parse(kv(&[
            ("SIZE", "1000"),
            ("BODY", "8bitmime"),
            ("RET", "hdrs"),
            ("ENVID", "abc+2Bdef"),
            ("SMTPUTF8", ""),
        ]))
        .unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("abc+def"));
        assert!(p.smtputf8);
        assert_eq!(p.map().get("SIZE").map(String::as_str), Some("1000"));
    }

    #[test]
    fn mail_params_refused_with_the_right_reply() {
        let code = |l: &[(&str, &str)]| MailParams::parse(kv(l)).unwrap_err().0.to_string();
        assert!(code(&[("SIZE", "x")]).starts_with("501 5.5.4"));
        assert!(code(&[("BODY", "BINARYMIME")]).starts_with("555 5.5.4"));
        assert!(code(&[("SMTPUTF8", "yes")]).starts_with("501 5.5.4"));
        assert!(code(&[("RET", "ALL")]).starts_with("501 5.5.4"));
        assert!(code(&[("ENVID", "")]).starts_with("501 5.5.4"));
        assert!(code(&[("ENVID", "a+zz")]).starts_with("501 5.5.4"));
        assert!(code(&[("ENVID", &"x".repeat(101))]).starts_with("501 5.5.4"));
        assert!(code(&[("AUTH", "a+g")]).starts_with("501 5.5.4"));
        assert!(code(&[("XFOO", "1")]).starts_with("555 5.5.4 Unsupported parameter XFOO"));
    }

    #[test]
    fn rcpt_params_typed() {
        let p = RcptParams::parse(kv(&[
            ("NOTIFY", "failure,DELAY"),
            ("ORCPT", "rfc822;bob+40example.org"),
        ]))
        .unwrap();
        assert_eq!(p.notify, Some(vec![Notify::Failure, Notify::Delay]));
        assert_eq!(p.notify_strings(), vec!["FAILURE", "DELAY"]);
        assert_eq!(p.orcpt, Some(("rfc822".into(), "bob@example.org".into())));
        for bad in [
            ("NOTIFY", "NEVER,SUCCESS"),
            ("NOTIFY", "FAILURE,FAILURE"),
            ("NOTIFY", "SOMETIMES"),
            ("ORCPT", "x400;abc"),
            ("ORCPT", "rfc822;"),
        ] {
            let e = RcptParams::parse(kv(&[bad])).unwrap_err();
            assert!(e.0.to_string().starts_with("501 5.5.4"), "{bad:?}");
        }
    }

    #[test]
    fn xtext_round_trip() {
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("a+2Bb+3Dc+20d").as_deref(), Some("a+b=c d"));
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("+2"), None);
    }
}
