//! SMTP command parsing (RFC 5321 §4.1, with the parameters of RFC 1870,
//! 3030, 3461, 6152 and 6531). Pure functions over one command line; the
//! session decides what a parsed command means in its current state.

use super::params::{MailParams, RcptParams};
use super::reply::SmtpReply;

/// A parsed command line. Addresses keep their original case; parameters are
/// keyed by upper-case name, valueless parameters map to "".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        address: String,
        params: MailParams,
    },
    Rcpt {
        address: String,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(String),
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// Why a line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 500 5.5.1: no such command.
    Unknown(String),
    /// 501 5.5.4 (or 555 for parameters): the command's arguments are wrong.
    Syntax(&'static str),
    /// 553 5.1.3 / 501: the address is malformed.
    BadAddress(&'static str),
    /// A parameter is malformed or unknown: the reply to send.
    Param(SmtpReply),
}

/// Verbs the server implements (the proxy hook by default sees the others).
pub const KNOWN_VERBS: &[&str] = &[
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
    "STARTTLS", "AUTH",
];

/// Upper-case verb of a command line ("" if none).
pub fn verb_of(line: &str) -> String {
    line.split([' ', '\t'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

pub fn parse(line: &str) -> Result<Command, ParseError> {
    let verb = verb_of(line);
    let rest = line[verb.len().min(line.len())..].to_string();
    let args = rest.trim_matches(|c| c == ' ' || c == '\t');
    let has_sep = rest.starts_with(' ') || rest.is_empty();
    if !has_sep {
        return Err(ParseError::Unknown(verb));
    }
    let no_args = |cmd: Command| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(ParseError::Syntax("this command takes no arguments"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            if args.is_empty() || args.contains(' ') {
                return Err(ParseError::Syntax(
                    "a domain name or address literal is needed",
                ));
            }
            if !valid_helo(args) {
                return Err(ParseError::Syntax("invalid domain name or address literal"));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(args.to_string())
            } else {
                Command::Helo(args.to_string())
            })
        }
        "MAIL" => {
            let a = strip_prefix_ci(args, "FROM:")
                .ok_or(ParseError::Syntax("use MAIL FROM:<address>"))?;
            let (address, params) = parse_path_and_params(a.trim_start(), true)?;
            let params = MailParams::parse(params).map_err(|e| ParseError::Param(e.0))?;
            Ok(Command::Mail { address, params })
        }
        "RCPT" => {
            let a =
                strip_prefix_ci(args, "TO:").ok_or(ParseError::Syntax("use RCPT TO:<address>"))?;
            let (address, params) = parse_path_and_params(a.trim_start(), false)?;
            let params = RcptParams::parse(params).map_err(|e| ParseError::Param(e.0))?;
            Ok(Command::Rcpt { address, params })
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => {
            let mut it = args.split(' ').filter(|s| !s.is_empty());
            let size = it
                .next()
                .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ParseError::Syntax("use BDAT <size> [LAST]"))?;
            let last = match it.next() {
                None => false,
                Some(s) if s.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(ParseError::Syntax("use BDAT <size> [LAST]")),
            };
            if it.next().is_some() {
                return Err(ParseError::Syntax("use BDAT <size> [LAST]"));
            }
            Ok(Command::Bdat { size, last })
        }
        "RSET" => no_args(Command::Rset),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => {
            if args.is_empty() {
                Err(ParseError::Syntax("use VRFY <user>"))
            } else {
                Ok(Command::Vrfy(args.to_string()))
            }
        }
        "EXPN" => {
            if args.is_empty() {
                Err(ParseError::Syntax("use EXPN <list>"))
            } else {
                Ok(Command::Expn(args.to_string()))
            }
        }
        "HELP" => Ok(Command::Help(args.to_string())),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut it = args.split(' ').filter(|s| !s.is_empty());
            let mechanism = it
                .next()
                .ok_or(ParseError::Syntax(
                    "use AUTH <mechanism> [initial-response]",
                ))?
                .to_ascii_uppercase();
            let initial = it.next().map(|s| s.to_string());
            if it.next().is_some() {
                return Err(ParseError::Syntax(
                    "use AUTH <mechanism> [initial-response]",
                ));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(ParseError::Unknown(verb)),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get`: the line is any UTF-8, and a multi-byte character may straddle
    // the prefix's length (found by tests/fuzz.rs).
    match s.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => Some(&s[prefix.len()..]),
        _ => None,
    }
}

fn valid_helo(s: &str) -> bool {
    if s.len() > 255 {
        return false;
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        if let Some(v6) = strip_prefix_ci(inner, "IPv6:") {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        return inner.parse::<std::net::Ipv4Addr>().is_ok();
    }
    // Lenient like most MTAs: any printable token without brackets or '@'.
    // (Plenty of real clients send bare IPs or underscores.)
    s.chars()
        .all(|c| !c.is_control() && c != '<' && c != '>' && c != '@' && c != '[' && c != ']')
}

/// Parse `<path> [SP param]*`. The null path `<>` is allowed for MAIL only.
fn parse_path_and_params(
    s: &str,
    is_mail: bool,
) -> Result<(String, Vec<(String, String)>), ParseError> {
    if !s.starts_with('<') {
        return Err(ParseError::Syntax("the address must be enclosed in <>"));
    }
    // Find the closing '>' that is not inside a quoted local part.
    let bytes = s.as_bytes();
    let mut i = 1;
    let mut in_quote = false;
    let mut end = None;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => {
                end = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let end = end.ok_or(ParseError::Syntax("the address must be enclosed in <>"))?;
    let inner = &s[1..end];
    let rest = &s[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::Syntax("garbage after the address"));
    }
    let address = if inner.is_empty() {
        if !is_mail {
            return Err(ParseError::BadAddress(
                "the null address is not a valid recipient",
            ));
        }
        String::new()
    } else {
        // Strip an RFC 5321 source route ("@a,@b:user@host"), which must be accepted and ignored.
        let mailbox = if inner.starts_with('@') {
            match inner.split_once(':') {
                Some((_, m)) => m,
                None => return Err(ParseError::BadAddress("malformed source route")),
            }
        } else {
            inner
        };
        validate_mailbox(mailbox, is_mail)?;
        mailbox.to_string()
    };
    let mut params = Vec::new();
    for p in rest.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, v),
            None => (p, ""),
        };
        if k.is_empty()
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || !k.as_bytes()[0].is_ascii_alphanumeric()
        {
            return Err(ParseError::Syntax("malformed parameter"));
        }
        if p.contains('=') && v.is_empty() {
            return Err(ParseError::Syntax("malformed parameter"));
        }
        if v.bytes()
            .any(|b| b == b'=' || b.is_ascii_control() || b == b' ')
        {
            return Err(ParseError::Syntax("malformed parameter value"));
        }
        let k = k.to_ascii_uppercase();
        if params.iter().any(|(pk, _): &(String, String)| *pk == k) {
            return Err(ParseError::Syntax("duplicate parameter"));
        }
        params.push((k, v.to_string()));
    }
    Ok((address, params))
}

/// RFC 5321 Mailbox = Local-part "@" ( Domain / address-literal ), with
/// RFC 6531 UTF-8 allowed (the session checks SMTPUTF8 was given).
/// RCPT TO:<postmaster> (no domain) is allowed by §4.1.1.3.
fn validate_mailbox(m: &str, is_mail: bool) -> Result<(), ParseError> {
    if m.len() > 320 {
        return Err(ParseError::BadAddress("address too long"));
    }
    let (local, domain) = match m.rfind('@') {
        Some(i) => (&m[..i], &m[i + 1..]),
        None => {
            if !is_mail && m.eq_ignore_ascii_case("postmaster") {
                return Ok(());
            }
            return Err(ParseError::BadAddress("the address needs a domain"));
        }
    };
    if local.is_empty() || local.len() > 64 && !local.starts_with('"') {
        return Err(ParseError::BadAddress("malformed local part"));
    }
    if local.starts_with('"') {
        if local.len() < 2 || !local.ends_with('"') {
            return Err(ParseError::BadAddress("malformed quoted local part"));
        }
        let inner = &local[1..local.len() - 1];
        let mut esc = false;
        for c in inner.chars() {
            if esc {
                esc = false;
                continue;
            }
            match c {
                '\\' => esc = true,
                '"' => return Err(ParseError::BadAddress("malformed quoted local part")),
                c if c.is_control() => {
                    return Err(ParseError::BadAddress("control character in address"))
                }
                _ => {}
            }
        }
        if esc {
            return Err(ParseError::BadAddress("malformed quoted local part"));
        }
    } else {
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(ParseError::BadAddress("malformed local part"));
        }
        for c in local.chars() {
            let ok = c.is_ascii_alphanumeric()
                || "!#$%&'*+-/=?^_`{|}~.".contains(c)
                || (!c.is_ascii() && !c.is_control());
            if !ok {
                return Err(ParseError::BadAddress("invalid character in local part"));
            }
        }
    }
    if domain.is_empty() {
        return Err(ParseError::BadAddress("the address needs a domain"));
    }
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ok = match strip_prefix_ci(lit, "IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        if !ok {
            return Err(ParseError::BadAddress("malformed address literal"));
        }
        return Ok(());
    }
    if domain.len() > 255 {
        return Err(ParseError::BadAddress("domain too long"));
    }
    for label in domain.split('.') {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return Err(ParseError::BadAddress("malformed domain"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_control()))
        {
            return Err(ParseError::BadAddress("invalid character in domain"));
        }
    }
    Ok(())
}

pub use super::params::xtext_decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_variants() {
        let Command::Mail { address, params } =
            parse("MAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME").unwrap()
        else {
            panic!("not MAIL")
        };
        assert_eq!(address, "a@b.c");
        assert_eq!(params.size, Some(10));
        assert_eq!(params.body, Some(super::super::params::Body::EightBitMime));
        assert_eq!(
            params.raw,
            vec![
                ("SIZE".to_string(), "10".to_string()),
                ("BODY".to_string(), "8BITMIME".to_string())
            ]
        );
        assert_eq!(
            parse("mail from: <>").unwrap(),
            Command::Mail {
                address: "".into(),
                params: MailParams::default()
            }
        );
        assert!(matches!(
            parse("MAIL FROM:<a@b> SIZE=big"),
            Err(ParseError::Param(r)) if r.code == 501
        ));
        assert!(matches!(parse("MAIL FROM:a@b"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("MAIL TO:<a@b>"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse("MAIL FROM:<a@@b>"),
            Err(ParseError::BadAddress(_))
        ));
        assert!(matches!(
            parse("MAIL FROM:<a..b@c>"),
            Err(ParseError::BadAddress(_))
        ));
        assert!(matches!(
            parse("MAIL FROM:<a@b> SIZE=1 SIZE=2"),
            Err(ParseError::Syntax(_))
        ));
        assert_eq!(
            parse("MAIL FROM:<@x.y,@z:\"a b\"@[127.0.0.1]>").unwrap(),
            Command::Mail {
                address: "\"a b\"@[127.0.0.1]".into(),
                params: MailParams::default()
            }
        );
    }

    #[test]
    fn rcpt_variants() {
        assert!(matches!(
            parse("RCPT TO:<>"),
            Err(ParseError::BadAddress(_))
        ));
        assert!(parse("RCPT TO:<Postmaster>").is_ok());
        assert!(matches!(
            parse("RCPT TO:<user>"),
            Err(ParseError::BadAddress(_))
        ));
        assert!(parse("RCPT TO:<用户@例子.广告> ").is_ok());
    }

    #[test]
    fn bdat_and_simple() {
        assert_eq!(
            parse("BDAT 100 LAST").unwrap(),
            Command::Bdat {
                size: 100,
                last: true
            }
        );
        assert_eq!(
            parse("bdat 0").unwrap(),
            Command::Bdat {
                size: 0,
                last: false
            }
        );
        assert!(parse("BDAT x").is_err());
        assert!(parse("BDAT 1 FIRST").is_err());
        assert!(parse("BDAT 99999999999999999999999").is_err());
        assert_eq!(parse("NOOP hello").unwrap(), Command::Noop);
        assert!(matches!(parse("QUIT now"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("DATAX"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse("FOO bar"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse("EHLO"), Err(ParseError::Syntax(_))));
        assert!(parse("EHLO [IPv6:::1]").is_ok());
        assert!(parse("EHLO [1.2.3]").is_err());
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode("rfc822+3Ba@b").as_deref(), Some("rfc822;a@b"));
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a b"), None);
    }

    #[test]
    fn multibyte_character_across_the_prefix_is_a_syntax_error() {
        // Fuzz findings: "RCPT TO\u{e9}:" and "MAIL FROM\u{e9}<" panicked.
        for line in [
            "RCPT TO\u{e9}:<a@b>",
            "MAIL FROM\u{e9}<a@b>",
            "MAIL FRO\u{fffd}:<a@b>",
            "RCPT T\u{e1}ast",
        ] {
            assert!(matches!(parse(line), Err(ParseError::Syntax(_))), "{line}");
        }
    }
}
