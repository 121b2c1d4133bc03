//! SPF, RFC 7208, written to the letter on the shared [`Resolver`].
//!
//! [`check_host`] is §4's function; [`verify_mail_from`] / [`verify_helo`]
//! pick the identity (§2.3, §2.4). What the RFC makes an error, this makes
//! the same error:
//!
//! - **permerror** for a record that does not follow the §12 ABNF — an
//!   unknown mechanism, a bad qualifier, CIDR lengths out of range or with
//!   leading zeros, a bad `ip4:`/`ip6:` address, an empty or invalid
//!   modifier name, `redirect=`/`exp=` twice or with a bad target, a
//!   domain-spec whose end is not `.toplabel` (a numeric top label, a single
//!   label), a macro error (`%` not followed by `{`, `%`, `_` or `-`, an
//!   unknown macro letter, a zero DIGIT transformer, `c`/`r`/`t` outside
//!   `exp`), any byte outside visible ASCII and SP (§12's terms; a TAB, a
//!   NUL or UTF-8 is a syntax error) — and for two or more `v=spf1` records
//!   (§4.5), more than 10 DNS-querying terms (§4.6.4: include, a, mx, ptr,
//!   exists, redirect, counted across includes and redirects, when they are
//!   evaluated), more than 2 void lookups (§4.6.4), an MX set of more than
//!   10 names, an `include:` whose target has no record or is malformed
//!   (§5.2), a `redirect=` target without a record or malformed (§6.1);
//! - **temperror** for a check that takes more than 20 s (§4.6.4's SHOULD),
//!   and for a DNS failure (timeout, SERVFAIL, REFUSED) on the
//!   record lookup (§4.4), in `include`, `a`, `mx` (the MX lookup and each
//!   host's addresses) and `exists` (§5) — but not in `ptr` (§5.5: the
//!   mechanism does not match) nor in the `exp` lookup (§6.2: the
//!   explanation is left out);
//! - **none** for a malformed or single-label domain, a domain literal,
//!   NXDOMAIN on it, or no record (§4.3, §4.5); the HELO identity of a
//!   domain literal is none.
//!
//! A domain-spec may hold any visible character but `%` outside macros
//! (§7.1: `a:foo:bar/baz.example.com` is valid; the dual-cidr-length is only
//! a trailing `/n`, `//n` or `/n//m`), and names are looked up as octets
//! (RFC 2181 §11). Where the RFC leaves the choice open, a target name that
//! DNS cannot carry (an empty label, a label over 63 octets, from the record
//! or a macro) makes `a`, `mx`, `ptr` and `exists` not match, as a name that
//! does not exist would (see `Evaluation::mech_target`).
//!
//! Mechanisms with a `/0` prefix match every address of the family; IPv4-
//! mapped IPv6 clients are IPv4 (§5); `exists` asks for A whatever the
//! client family (§5.7); `ptr` validates up to 10 names (§4.6.4). Macros
//! (§7) expand in domain-specs and in `exp` text, with URL escaping for
//! upper-case letters and the left-trim of names over 253 octets; `%{p}`
//! prefers the current `<domain>`, then a subdomain of it (§7.3); `%{i}` of
//! IPv6 is lower-case nibbles, as §7.4's example. The conformance table is
//! tests/spf_rfc7208.rs.
//!
//! It must not decide anything: the result goes to scripts (`spf.check`),
//! DMARC and Authentication-Results in [`super::auth`].

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use ipnet::{Ipv4Net, Ipv6Net};

use super::dns::{format_rdata, unmap, LookupError, Resolver};
use mail_auth::hickory_resolver::proto::rr::{RData, RecordType};

/// §4.6.4: terms that cause DNS queries, across the whole evaluation.
pub const MAX_DNS_TERMS: usize = 10;
/// §4.6.4: lookups that return no answer (NODATA or NXDOMAIN).
pub const MAX_VOID_LOOKUPS: usize = 2;
/// §4.6.4: names an `mx` (address lookups) or `ptr` (validations) may use.
pub const MAX_NAME_LOOKUPS: usize = 10;
/// §4.6.4: a check SHOULD have an elapsed-time limit of at least 20 s, and
/// exceeding it SHOULD be a temperror. We take the 20 s: ten terms whose
/// queries each time out would otherwise hold the SMTP session for minutes.
pub const MAX_ELAPSED: std::time::Duration = std::time::Duration::from_secs(20);

/// The seven results (§2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }

    /// The same result in mail-auth's terms (for DMARC and A-R).
    pub fn to_mail_auth(self) -> mail_auth::SpfResult {
        match self {
            SpfResult::None => mail_auth::SpfResult::None,
            SpfResult::Neutral => mail_auth::SpfResult::Neutral,
            SpfResult::Pass => mail_auth::SpfResult::Pass,
            SpfResult::Fail => mail_auth::SpfResult::Fail,
            SpfResult::SoftFail => mail_auth::SpfResult::SoftFail,
            SpfResult::TempError => mail_auth::SpfResult::TempError,
            SpfResult::PermError => mail_auth::SpfResult::PermError,
        }
    }
}

impl std::fmt::Display for SpfResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `check_host()` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The identity's domain (the `<domain>` of the first call).
    pub domain: String,
    /// `exp=` text for a fail, when the domain publishes one (§6.2).
    pub explanation: Option<String>,
    /// Why: the matching term, or what made it an error (for logs and
    /// Authentication-Results comments).
    pub reason: String,
}

/// The inputs that stay the same through recursion.
#[derive(Debug, Clone)]
pub struct SpfQuery {
    pub ip: IpAddr,
    /// The full MAIL FROM (or `postmaster@helo` for the HELO identity).
    pub sender: String,
    /// The HELO/EHLO name as given.
    pub helo: String,
    /// Our host name (`%{r}`).
    pub receiver: String,
}

/// SPF for the MAIL FROM identity (§2.4); the null sender is checked as
/// `postmaster@<helo>` (§2.4), which is [`verify_helo`].
pub async fn verify_mail_from(
    res: &Resolver,
    ip: IpAddr,
    helo: &str,
    sender: &str,
    receiver: &str,
) -> SpfOutcome {
    let Some((local, domain)) = sender.rsplit_once('@') else {
        return verify_helo(res, ip, helo, receiver).await;
    };
    let local = if local.is_empty() {
        "postmaster"
    } else {
        local
    };
    let q = SpfQuery {
        ip,
        sender: format!("{local}@{domain}"),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
    };
    check_host(res, &q, domain).await
}

/// SPF for the HELO identity (§2.3). A domain literal or a name that is not
/// a domain has no SPF: none.
pub async fn verify_helo(res: &Resolver, ip: IpAddr, helo: &str, receiver: &str) -> SpfOutcome {
    let h = helo.trim_end_matches('.');
    if h.starts_with('[') || h.parse::<IpAddr>().is_ok() || !valid_domain(h) {
        return SpfOutcome {
            result: SpfResult::None,
            domain: h.to_ascii_lowercase(),
            explanation: None,
            reason: "the HELO name is not a domain".into(),
        };
    }
    let q = SpfQuery {
        ip,
        sender: format!("postmaster@{h}"),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
    };
    check_host(res, &q, h).await
}

/// §4: `check_host(<ip>, <domain>, <sender>)`.
pub async fn check_host(res: &Resolver, q: &SpfQuery, domain: &str) -> SpfOutcome {
    let mut ev = Evaluation {
        res,
        q,
        dns_terms: 0,
        void_lookups: 0,
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let r = match tokio::time::timeout(MAX_ELAPSED, ev.check(domain.clone(), true)).await {
        Ok(r) => r,
        Err(_) => HostResult::new(
            SpfResult::TempError,
            format!(
                "the check of {domain} took more than {} s (§4.6.4)",
                MAX_ELAPSED.as_secs()
            ),
        ),
    };
    SpfOutcome {
        result: r.result,
        domain,
        explanation: r.explanation,
        reason: r.reason,
    }
}

// ---- records (§4.5, §12) ---------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// IPv4 and IPv6 prefix lengths of `a` / `mx` (defaults 32 / 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualCidr {
    pub v4: u8,
    pub v6: u8,
}

impl Default for DualCidr {
    fn default() -> Self {
        DualCidr { v4: 32, v6: 128 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(MacroString),
    A(Option<MacroString>, DualCidr),
    Mx(Option<MacroString>, DualCidr),
    Ptr(Option<MacroString>),
    Ip4(Ipv4Net),
    Ip6(Ipv6Net),
    Exists(MacroString),
}

impl Mechanism {
    /// Does it query DNS (the §4.6.4 count)?
    fn queries_dns(&self) -> bool {
        matches!(
            self,
            Mechanism::Include(_)
                | Mechanism::A(..)
                | Mechanism::Mx(..)
                | Mechanism::Ptr(_)
                | Mechanism::Exists(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    /// As written, for reasons.
    pub text: String,
}

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub exp: Option<MacroString>,
}

/// A macro-string (§7.1): literal text and macros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroString(Vec<MacroPart>);

impl MacroString {
    fn uses(&self, letter: u8) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, MacroPart::Macro { letter: l, .. } if *l == letter))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MacroPart {
    Literal(String),
    Macro {
        letter: u8,
        /// Rightmost parts to keep (None: all).
        digits: Option<usize>,
        reverse: bool,
        /// Split on these (default ".").
        delimiters: String,
        /// Upper-case letter: URL-escape the value.
        escape: bool,
    },
}

/// Is this TXT string an SPF record (§4.5: "v=spf1" then SP or the end)?
pub fn is_spf_record(txt: &str) -> bool {
    let b = txt.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

/// Parse a whole record (starting with "v=spf1"); every syntax error is a
/// permerror (the message says which term).
pub fn parse_record(txt: &str) -> Result<Record, String> {
    if !is_spf_record(txt) {
        return Err("not an SPF record".into());
    }
    if let Some(c) = txt.chars().find(|c| *c != ' ' && !c.is_ascii_graphic()) {
        return Err(format!(
            "character {c:?} is not allowed in a record (RFC 7208 §12)"
        ));
    }
    let mut rec = Record::default();
    for term in txt[6..].split(' ').filter(|t| !t.is_empty()) {
        parse_term(term, &mut rec).map_err(|e| format!("{term:?}: {e}"))?;
    }
    Ok(rec)
}

fn parse_term(term: &str, rec: &mut Record) -> Result<(), String> {
    // A modifier is name "=" …, where name = ALPHA *(ALPHA / DIGIT / "-" / "_" / ".").
    let name_end = term
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(term.len());
    if term[name_end..].starts_with('=') {
        let name = &term[..name_end];
        if name.is_empty() || !name.as_bytes()[0].is_ascii_alphabetic() {
            return Err("a modifier name must start with a letter".into());
        }
        let value = &term[name_end + 1..];
        match name.to_ascii_lowercase().as_str() {
            "redirect" => {
                if rec.redirect.is_some() {
                    return Err("redirect= appears twice (§6)".into());
                }
                rec.redirect = Some(parse_domain_spec(value, false)?);
            }
            "exp" => {
                if rec.exp.is_some() {
                    return Err("exp= appears twice (§6)".into());
                }
                rec.exp = Some(parse_domain_spec(value, false)?);
            }
            // Unknown modifiers are ignored (§6), but must be well formed.
            _ => {
                parse_macro_string(value, false)?;
            }
        }
        return Ok(());
    }
    let (qualifier, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, arg) = rest.split_at(split);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" => {
            if !arg.is_empty() {
                return Err("all takes no argument".into());
            }
            Mechanism::All
        }
        "include" => Mechanism::Include(required_domain(arg)?),
        "exists" => Mechanism::Exists(required_domain(arg)?),
        "a" => {
            let (d, c) = domain_and_cidr(arg)?;
            Mechanism::A(d, c)
        }
        "mx" => {
            let (d, c) = domain_and_cidr(arg)?;
            Mechanism::Mx(d, c)
        }
        "ptr" => Mechanism::Ptr(optional_domain(arg)?),
        "ip4" => Mechanism::Ip4(parse_ip4(arg)?),
        "ip6" => Mechanism::Ip6(parse_ip6(arg)?),
        "" => return Err("empty mechanism".into()),
        other => return Err(format!("unknown mechanism {other:?}")),
    };
    rec.directives.push(Directive {
        qualifier,
        mechanism,
        text: term.to_string(),
    });
    Ok(())
}

fn required_domain(arg: &str) -> Result<MacroString, String> {
    let Some(d) = arg.strip_prefix(':') else {
        return Err("needs \":domain\"".into());
    };
    parse_domain_spec(d, false)
}

fn optional_domain(arg: &str) -> Result<Option<MacroString>, String> {
    match arg.strip_prefix(':') {
        None if arg.is_empty() => Ok(None),
        None => Err("unexpected text after the mechanism".into()),
        Some(d) => parse_domain_spec(d, false).map(Some),
    }
}

/// `[":" domain-spec] [dual-cidr-length]`. A domain-spec may itself hold
/// "/" and ":" (macro-literal is any visible character but "%", §7.1:
/// "a:foo:bar/baz.example.com" is a valid target), so the CIDR part is only
/// a trailing `/digits`, `//digits` or `/digits//digits`.
fn domain_and_cidr(arg: &str) -> Result<(Option<MacroString>, DualCidr), String> {
    let Some(rest) = arg.strip_prefix(':') else {
        return Ok((None, parse_dual_cidr(arg)?));
    };
    let at = cidr_suffix(rest);
    let domain = parse_domain_spec(&rest[..at], false)?;
    Ok((Some(domain), parse_dual_cidr(&rest[at..])?))
}

/// Where a trailing dual-cidr-length starts (`s.len()` when there is none).
fn cidr_suffix(s: &str) -> usize {
    // Strip "/" 1*DIGIT from the end, at most twice ("/24//64").
    let digits_before = |end: usize| -> Option<usize> {
        let d = s[..end].trim_end_matches(|c: char| c.is_ascii_digit());
        (d.len() < end && d.ends_with('/')).then(|| d.len() - 1)
    };
    let Some(slash) = digits_before(s.len()) else {
        return s.len();
    };
    if s[..slash].ends_with('/') {
        // "//v6", maybe after "/v4"
        let v6 = slash - 1;
        return digits_before(v6).unwrap_or(v6);
    }
    slash
}

/// ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT); ip6 up to 3 digits.
fn cidr_len(s: &str, max: u8) -> Result<u8, String> {
    let ok = !s.is_empty()
        && s.len() <= 3
        && s.bytes().all(|c| c.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    let n: u32 = if ok { s.parse().unwrap_or(999) } else { 999 };
    if n > max as u32 {
        return Err(format!("bad CIDR length /{s} (0-{max})"));
    }
    Ok(n as u8)
}

fn parse_dual_cidr(s: &str) -> Result<DualCidr, String> {
    let mut c = DualCidr::default();
    if s.is_empty() {
        return Ok(c);
    }
    if let Some(v6) = s.strip_prefix("//") {
        c.v6 = cidr_len(v6, 128)?;
        return Ok(c);
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err("unexpected text".into());
    };
    match rest.split_once("//") {
        Some((v4, v6)) => {
            c.v4 = cidr_len(v4, 32)?;
            c.v6 = cidr_len(v6, 128)?;
        }
        None => c.v4 = cidr_len(rest, 32)?,
    }
    Ok(c)
}

fn parse_ip4(arg: &str) -> Result<Ipv4Net, String> {
    let Some(v) = arg.strip_prefix(':') else {
        return Err("needs \":address\"".into());
    };
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, cidr_len(l, 32)?),
        None => (v, 32),
    };
    // Dotted quad only (no leading zeros, four parts), as §12's ip4-network.
    let parts: Vec<&str> = addr.split('.').collect();
    let good = parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|c| c.is_ascii_digit())
                && (*p == "0" || !p.starts_with('0'))
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        });
    let ip: std::net::Ipv4Addr = if good {
        addr.parse()
            .map_err(|_| format!("bad IPv4 address {addr:?}"))?
    } else {
        return Err(format!("bad IPv4 address {addr:?}"));
    };
    Ipv4Net::new(ip, len).map_err(|e| e.to_string())
}

fn parse_ip6(arg: &str) -> Result<Ipv6Net, String> {
    let Some(v) = arg.strip_prefix(':') else {
        return Err("needs \":address\"".into());
    };
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, cidr_len(l, 128)?),
        None => (v, 128),
    };
    let ip: std::net::Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("bad IPv6 address {addr:?}"))?;
    Ipv6Net::new(ip, len).map_err(|e| e.to_string())
}

/// A domain-spec (§7.1): a macro-string whose end is "." toplabel ["."] or
/// a macro.
fn parse_domain_spec(s: &str, explain: bool) -> Result<MacroString, String> {
    if s.is_empty() {
        return Err("empty domain".into());
    }
    let m = parse_macro_string(s, explain)?;
    if let Some(MacroPart::Literal(last)) = m.0.last() {
        // domain-end = ( "." toplabel [ "." ] ) / macro-expand
        let body = last.strip_suffix('.').unwrap_or(last);
        let Some(dot) = body.rfind('.') else {
            return Err(format!("domain {s:?} does not end in \".toplabel\""));
        };
        let top = &body[dot + 1..];
        if !valid_toplabel(top) {
            return Err(format!("bad top label {top:?} in {s:?}"));
        }
    }
    // An empty label ("a..b.example.com") is not a syntax error: §7.1's
    // macro-literal allows any run of dots, and the same name can come out of
    // a macro expansion. It is a name DNS cannot carry, judged after
    // expansion (see `Evaluation::mech_target`).
    Ok(m)
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
fn valid_toplabel(t: &str) -> bool {
    let b = t.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if !b.contains(&b'-') {
        return b.iter().any(|c| c.is_ascii_alphabetic());
    }
    b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
}

fn parse_macro_string(s: &str, explain: bool) -> Result<MacroString, String> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'%' {
            // macro-literal = %x21-24 / %x26-7E, plus SP in explain-strings.
            let allowed = (0x21..=0x7e).contains(&c) || (explain && c == b' ');
            if !allowed {
                return Err(format!("character {:?} is not allowed", c as char));
            }
            lit.push(c as char);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'%') => {
                lit.push('%');
                i += 2;
            }
            Some(b'_') => {
                lit.push(' ');
                i += 2;
            }
            Some(b'-') => {
                lit.push_str("%20");
                i += 2;
            }
            Some(b'{') => {
                let end = s[i + 2..]
                    .find('}')
                    .map(|e| i + 2 + e)
                    .ok_or("unterminated macro")?;
                let body = &s[i + 2..end];
                if !lit.is_empty() {
                    parts.push(MacroPart::Literal(std::mem::take(&mut lit)));
                }
                parts.push(parse_macro(body, explain)?);
                i = end + 1;
            }
            _ => {
                return Err("\"%\" must be followed by \"{\", \"%\", \"_\" or \"-\" (§7.1)".into())
            }
        }
    }
    if !lit.is_empty() {
        parts.push(MacroPart::Literal(lit));
    }
    Ok(MacroString(parts))
}

fn parse_macro(body: &str, explain: bool) -> Result<MacroPart, String> {
    let b = body.as_bytes();
    let Some(&letter) = b.first() else {
        return Err("empty macro".into());
    };
    let lower = letter.to_ascii_lowercase();
    match lower {
        b's' | b'l' | b'o' | b'd' | b'i' | b'p' | b'h' | b'v' => {}
        b'c' | b'r' | b't' if explain => {}
        b'c' | b'r' | b't' => {
            return Err(format!(
                "macro %{{{}}} is allowed only in exp text (§7.2)",
                letter as char
            ))
        }
        _ => return Err(format!("unknown macro letter {:?}", letter as char)),
    }
    let mut i = 1;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let digits = if i > start {
        let n: usize = body[start..i].parse().unwrap_or(usize::MAX);
        if n == 0 {
            return Err("a macro's DIGIT transformer must not be zero (§7.1)".into());
        }
        Some(n)
    } else {
        None
    };
    let mut reverse = false;
    if i < b.len() && (b[i] == b'r' || b[i] == b'R') {
        reverse = true;
        i += 1;
    }
    let delimiters = &body[i..];
    if !delimiters.bytes().all(|c| b".-+,/_=".contains(&c)) {
        return Err(format!("bad macro delimiter in %{{{body}}}"));
    }
    Ok(MacroPart::Macro {
        letter: lower,
        digits,
        reverse,
        delimiters: if delimiters.is_empty() {
            ".".into()
        } else {
            delimiters.into()
        },
        escape: letter.is_ascii_uppercase(),
    })
}

/// §4.3: a domain SPF can be asked about.
fn valid_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    // A domain literal ("[192.0.2.1]", "[IPv6:…]") is an address, not a
    // domain: no SPF (the HELO identity §2.3, a MAIL FROM literal §4.3).
    !d.is_empty()
        && !d.starts_with('[')
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

// ---- evaluation --------------------------------------------------------------

struct Evaluation<'a> {
    res: &'a Resolver,
    q: &'a SpfQuery,
    dns_terms: usize,
    void_lookups: usize,
}

struct HostResult {
    result: SpfResult,
    explanation: Option<String>,
    reason: String,
}

impl HostResult {
    fn new(result: SpfResult, reason: impl Into<String>) -> HostResult {
        HostResult {
            result,
            explanation: None,
            reason: reason.into(),
        }
    }
}

/// An error that ends evaluation with this result.
struct Stop(SpfResult, String);

type BoxFut<'b, T> = Pin<Box<dyn Future<Output = T> + Send + 'b>>;

impl<'a> Evaluation<'a> {
    /// TXT strings of `name`, each record's strings joined (§3.3).
    async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        Ok(self
            .res
            .lookup_octets(name, RecordType::TXT)
            .await?
            .iter()
            .map(format_rdata)
            .collect())
    }

    /// MX exchanges of `name` by preference, without the final dot.
    async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, LookupError> {
        let mut v: Vec<(u16, String)> = self
            .res
            .lookup_octets(name, RecordType::MX)
            .await?
            .iter()
            .filter_map(|d| match d {
                RData::MX(mx) => {
                    // the raw labels, not the escaped presentation form: an
                    // exchange may hold any octets (RFC 2181 §11)
                    let ex: Vec<String> = mx
                        .exchange()
                        .iter()
                        .map(|l| String::from_utf8_lossy(l).into_owned())
                        .collect();
                    Some((mx.preference(), ex.join(".")))
                }
                _ => None,
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn count_dns_term(&mut self) -> Result<(), Stop> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS {
            return Err(Stop(
                SpfResult::PermError,
                format!("more than {MAX_DNS_TERMS} DNS-querying terms (§4.6.4)"),
            ));
        }
        Ok(())
    }

    fn void(&mut self) -> Result<(), Stop> {
        self.void_lookups += 1;
        if self.void_lookups > MAX_VOID_LOOKUPS {
            return Err(Stop(
                SpfResult::PermError,
                format!("more than {MAX_VOID_LOOKUPS} void DNS lookups (§4.6.4)"),
            ));
        }
        Ok(())
    }

    /// One `check_host()` (recursion for include and redirect); `top`
    /// says whether an `exp=` of this record may be used.
    fn check(&mut self, domain: String, top: bool) -> BoxFut<'_, HostResult> {
        Box::pin(async move {
            if !valid_domain(&domain) {
                return HostResult::new(SpfResult::None, format!("{domain:?} is not a domain"));
            }
            let txts = match self.txt(&domain).await {
                Ok(t) => t,
                Err(LookupError::NxDomain) | Err(LookupError::NoData) => {
                    return HostResult::new(SpfResult::None, format!("no SPF record at {domain}"))
                }
                Err(LookupError::Invalid(e)) => return HostResult::new(SpfResult::None, e),
                Err(LookupError::Temporary(e)) => {
                    return HostResult::new(
                        SpfResult::TempError,
                        format!("DNS error looking up {domain}: {e}"),
                    )
                }
            };
            let records: Vec<&String> = txts.iter().filter(|t| is_spf_record(t)).collect();
            let text = match records.as_slice() {
                [] => {
                    return HostResult::new(SpfResult::None, format!("no SPF record at {domain}"))
                }
                [one] => one.as_str(),
                _ => {
                    return HostResult::new(
                        SpfResult::PermError,
                        format!("{domain} has {} SPF records (§4.5)", records.len()),
                    )
                }
            };
            let rec = match parse_record(text) {
                Ok(r) => r,
                Err(e) => {
                    return HostResult::new(
                        SpfResult::PermError,
                        format!("syntax error in the record of {domain}: {e}"),
                    )
                }
            };
            match self.evaluate(&domain, &rec).await {
                Err(Stop(r, why)) => HostResult::new(r, why),
                Ok(Some((result, why))) => {
                    let mut out = HostResult::new(result, why);
                    if result == SpfResult::Fail && top {
                        if let Some(exp) = &rec.exp {
                            out.explanation = self.explain(&domain, exp).await;
                        }
                    }
                    out
                }
                Ok(None) => match &rec.redirect {
                    // §6.1: redirect applies only when no mechanism matched,
                    // and not when the record has "all" (which always matches).
                    Some(target) => {
                        if let Err(Stop(r, why)) = self.count_dns_term() {
                            return HostResult::new(r, why);
                        }
                        let target = match self.target(Some(target), &domain).await {
                            Ok(t) => t,
                            Err(Stop(r, why)) => return HostResult::new(r, why),
                        };
                        let inner = self.check(target.clone(), top).await;
                        if inner.result == SpfResult::None {
                            return HostResult::new(
                                SpfResult::PermError,
                                format!("redirect={target} has no SPF record (§6.1)"),
                            );
                        }
                        inner
                    }
                    None => HostResult::new(SpfResult::Neutral, "no mechanism matched"),
                },
            }
        })
    }

    /// Mechanisms left to right: `Some(result)` at the first match.
    async fn evaluate(
        &mut self,
        domain: &str,
        rec: &Record,
    ) -> Result<Option<(SpfResult, String)>, Stop> {
        for d in &rec.directives {
            if d.mechanism.queries_dns() {
                self.count_dns_term()?;
            }
            if self.matches(domain, &d.mechanism).await? {
                return Ok(Some((d.qualifier.result(), format!("matched {}", d.text))));
            }
        }
        Ok(None)
    }

    /// The target-name of a mechanism: its domain-spec expanded, or the
    /// current domain.
    async fn target(&mut self, spec: Option<&MacroString>, domain: &str) -> Result<String, Stop> {
        let Some(m) = spec else {
            return Ok(domain.to_string());
        };
        let p = if m.uses(b'p') {
            Some(self.p_macro(domain).await)
        } else {
            None
        };
        self.expand_domain(m, domain, p.as_deref())
            .map_err(|e| Stop(SpfResult::PermError, e))
    }

    /// The target-name of an `a`, `mx`, `ptr` or `exists`; `None` when
    /// macro expansion made it a name DNS cannot carry (an empty label, a
    /// label over 63 octets). RFC 7208 leaves this case undefined (the
    /// openspf suite accepts fail or permerror, invalid-domain-long-via-macro);
    /// we treat it as a name that does not exist — the mechanism does not
    /// match — by analogy with §4.3 and §5 (NXDOMAIN = no answers), so a
    /// sender-chosen local part ("%{l}") cannot turn a fail into a permerror.
    /// It is not a void lookup: nothing was asked. `include` and `redirect`
    /// keep the permerror (§5.2 none → permerror, §6.1 malformed target).
    async fn mech_target(
        &mut self,
        spec: Option<&MacroString>,
        domain: &str,
    ) -> Result<Option<String>, Stop> {
        match self.target(spec, domain).await {
            Ok(t) => Ok(Some(t)),
            Err(Stop(SpfResult::PermError, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn temp(name: &str, e: &LookupError) -> Stop {
        Stop(
            SpfResult::TempError,
            format!("DNS error looking up {name}: {e}"),
        )
    }

    async fn matches(&mut self, domain: &str, m: &Mechanism) -> Result<bool, Stop> {
        let ip = unmap(self.q.ip);
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net) => Ok(matches!(ip, IpAddr::V4(v4) if net.contains(&v4))),
            Mechanism::Ip6(net) => Ok(matches!(ip, IpAddr::V6(v6) if net.contains(&v6))),
            Mechanism::Include(spec) => {
                let target = self.target(Some(spec), domain).await?;
                let inner = self.check(target.clone(), false).await;
                match inner.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(Stop(SpfResult::TempError, inner.reason)),
                    SpfResult::PermError => Err(Stop(SpfResult::PermError, inner.reason)),
                    SpfResult::None => Err(Stop(
                        SpfResult::PermError,
                        format!("include:{target} has no SPF record (§5.2)"),
                    )),
                }
            }
            Mechanism::A(spec, cidr) => {
                let Some(target) = self.mech_target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let addrs = self.addresses(&target, ip, true).await?;
                Ok(addrs.iter().any(|a| in_prefix(ip, *a, *cidr)))
            }
            Mechanism::Mx(spec, cidr) => {
                let Some(target) = self.mech_target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let mx = match self.mx(&target).await {
                    Ok(v) => v,
                    Err(e) if e.is_temporary() => return Err(Self::temp(&target, &e)),
                    Err(_) => {
                        self.void()?;
                        return Ok(false);
                    }
                };
                // A null MX (".") names no host.
                let names: Vec<String> = mx
                    .into_iter()
                    .map(|(_, n)| n)
                    .filter(|n| !n.is_empty() && n != ".")
                    .collect();
                if names.len() > MAX_NAME_LOOKUPS {
                    return Err(Stop(
                        SpfResult::PermError,
                        format!("mx:{target} has more than {MAX_NAME_LOOKUPS} MX names (§4.6.4)"),
                    ));
                }
                for n in names {
                    let addrs = self.addresses(&n, ip, false).await?;
                    if addrs.iter().any(|a| in_prefix(ip, *a, *cidr)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let Some(target) = self.mech_target(spec.as_ref(), domain).await? else {
                    return Ok(false);
                };
                let names = self.validated_names(ip, true).await?;
                let t = target.to_ascii_lowercase();
                Ok(names.iter().any(|n| {
                    let n = n.trim_end_matches('.').to_ascii_lowercase();
                    n == t || n.ends_with(&format!(".{t}"))
                }))
            }
            Mechanism::Exists(spec) => {
                let Some(target) = self.mech_target(Some(spec), domain).await? else {
                    return Ok(false);
                };
                // §5.7: an A query whatever the client's address family.
                match self.res.lookup_octets(&target, RecordType::A).await {
                    Ok(v) => Ok(!v.is_empty()),
                    Err(e) if e.is_temporary() => Err(Self::temp(&target, &e)),
                    Err(LookupError::Invalid(_)) => Ok(false),
                    Err(_) => {
                        self.void()?;
                        Ok(false)
                    }
                }
            }
        }
    }

    /// A or AAAA records of `name` for the client's family. `counts_void`:
    /// the lookup is the mechanism's own (a), not one of an mx's names.
    async fn addresses(
        &mut self,
        name: &str,
        ip: IpAddr,
        counts_void: bool,
    ) -> Result<Vec<IpAddr>, Stop> {
        let rtype = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        match self.res.lookup_octets(name, rtype).await {
            Ok(v) => Ok(v
                .iter()
                .filter_map(|d| match d {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_temporary() => Err(Self::temp(name, &e)),
            Err(LookupError::Invalid(_)) => Ok(Vec::new()),
            Err(_) => {
                if counts_void {
                    self.void()?;
                }
                Ok(Vec::new())
            }
        }
    }

    /// §5.5: the client's PTR names whose addresses include it (at most 10
    /// names are tried; DNS errors skip a name, they are not temperrors).
    /// `counts_void`: the `ptr` mechanism's own lookup (not `%{p}`'s).
    async fn validated_names(
        &mut self,
        ip: IpAddr,
        counts_void: bool,
    ) -> Result<Vec<String>, Stop> {
        let names = match self.res.ptr(ip).await {
            Ok(n) => n,
            Err(e) if e.is_empty_answer() => {
                if counts_void {
                    self.void()?;
                }
                return Ok(Vec::new());
            }
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        for n in names.into_iter().take(MAX_NAME_LOOKUPS) {
            let rtype = if ip.is_ipv4() {
                RecordType::A
            } else {
                RecordType::AAAA
            };
            if let Ok(addrs) = self.res.lookup_octets(&n, rtype).await {
                let hit = addrs.iter().any(|d| match d {
                    RData::A(a) => IpAddr::V4(a.0) == ip,
                    RData::AAAA(a) => IpAddr::V6(a.0) == ip,
                    _ => false,
                });
                if hit {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    /// §6.2: the explanation of a fail; any problem leaves it out.
    async fn explain(&mut self, domain: &str, exp: &MacroString) -> Option<String> {
        let name = self.target(Some(exp), domain).await.ok()?;
        let txts = self.txt(&name).await.ok()?;
        let [one] = txts.as_slice() else {
            return None;
        };
        let text = parse_macro_string(one, true).ok()?;
        let p = if text.uses(b'p') {
            Some(self.p_macro(domain).await)
        } else {
            None
        };
        let out = self.expand_text(&text, domain, p.as_deref());
        out.is_ascii().then_some(out)
    }

    fn expand_text(&self, m: &MacroString, domain: &str, p: Option<&str>) -> String {
        let mut out = String::new();
        for part in &m.0 {
            match part {
                MacroPart::Literal(l) => out.push_str(l),
                MacroPart::Macro { .. } => out.push_str(&self.macro_value(part, domain, p)),
            }
        }
        out
    }

    /// A domain-spec expanded and left-trimmed to 253 octets (§7.3); an
    /// error when the result is not a domain name.
    fn expand_domain(
        &self,
        m: &MacroString,
        domain: &str,
        p: Option<&str>,
    ) -> Result<String, String> {
        let out = self.expand_text(m, domain, p);
        let mut out = out.trim_end_matches('.').to_string();
        while out.len() > 253 {
            match out.find('.') {
                Some(i) => out = out[i + 1..].to_string(),
                None => break,
            }
        }
        if out.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(format!("{out:?} is not a valid domain name"));
        }
        Ok(out)
    }

    /// `%{p}`: a validated PTR name of the client (§7.3): the current
    /// `<domain>` itself if validated, else a subdomain of it, else the first
    /// validated name, else "unknown". The <domain> is check_host()'s, which
    /// inside an include or after a redirect is not the sender's domain.
    async fn p_macro(&mut self, domain: &str) -> String {
        let ip = unmap(self.q.ip);
        let names = self.validated_names(ip, false).await.unwrap_or_default();
        let d = domain.to_ascii_lowercase();
        let lower: Vec<String> = names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let sub = format!(".{d}");
        lower
            .iter()
            .position(|n| *n == d)
            .or_else(|| lower.iter().position(|n| n.ends_with(&sub)))
            .map(|i| names[i].trim_end_matches('.').to_string())
            .or_else(|| names.first().map(|n| n.trim_end_matches('.').to_string()))
            .unwrap_or_else(|| "unknown".into())
    }

    fn macro_value(&self, part: &MacroPart, domain: &str, p: Option<&str>) -> String {
        let MacroPart::Macro {
            letter,
            digits,
            reverse,
            delimiters,
            escape,
        } = part
        else {
            return String::new();
        };
        let ip = unmap(self.q.ip);
        let (local, sdom) = self
            .q
            .sender
            .rsplit_once('@')
            .unwrap_or(("postmaster", self.q.sender.as_str()));
        let raw = match letter {
            b's' => self.q.sender.clone(),
            b'l' => local.to_string(),
            b'o' => sdom.to_string(),
            b'd' => domain.to_string(),
            b'i' => dotted_ip(ip),
            b'p' => p.unwrap_or("unknown").to_string(),
            b'v' => if ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            b'h' => self.q.helo.clone(),
            b'c' => ip.to_string(),
            b'r' => {
                if self.q.receiver.is_empty() {
                    "unknown".into()
                } else {
                    self.q.receiver.clone()
                }
            }
            b't' => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string(),
            _ => String::new(),
        };
        let mut parts: Vec<&str> = raw.split(|c: char| delimiters.contains(c)).collect();
        if *reverse {
            parts.reverse();
        }
        if let Some(n) = digits {
            if *n < parts.len() {
                parts = parts[parts.len() - n..].to_vec();
            }
        }
        let joined = parts.join(".");
        if *escape {
            url_escape(&joined)
        } else {
            joined
        }
    }
}

/// `%{i}`: dotted quad, or 32 dot-separated nibbles for IPv6 (§7.3).
fn dotted_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(63);
            for b in v6.octets() {
                for n in [b >> 4, b & 0x0f] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push(char::from_digit(n as u32, 16).unwrap_or('0'));
                }
            }
            s
        }
    }
}

/// RFC 3986 escaping of everything but the unreserved characters (§7.3).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn in_prefix(client: IpAddr, addr: IpAddr, cidr: DualCidr) -> bool {
    match (client, unmap(addr)) {
        (IpAddr::V4(c), IpAddr::V4(a)) => Ipv4Net::new(a, cidr.v4)
            .map(|n| n.trunc().contains(&c))
            .unwrap_or(false),
        (IpAddr::V6(c), IpAddr::V6(a)) => Ipv6Net::new(a, cidr.v6)
            .map(|n| n.trunc().contains(&c))
            .unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(rec: &str) -> bool {
        parse_record(rec).is_err()
    }

    #[test]
    fn record_syntax() {
        for ok in [
            "v=spf1",
            "v=spf1 -all",
            "V=SPF1 +A -ALL",
            "v=spf1 a/24 mx/24//64 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all",
            "v=spf1 a:example.com/0 mx:example.com//0 ip4:0.0.0.0/0",
            "v=spf1 include:_spf.example.com exists:%{ir}.%{l1r+-}._spf.%{d} -all",
            "v=spf1 redirect=_spf.example.com",
            "v=spf1 exp=explain._spf.%{d} -all",
            "v=spf1 foo=bar -all",
            "v=spf1 a:mail.example.com. -all",
            "v=spf1 ptr ptr:example.com ?all",
            "v=spf1  a   -all ",
            "v=spf1 a:e-xample.com a:example.c0m a:x.a-b",
            // valid domain-specs, but names DNS cannot carry: no match
            "v=spf1 a:foo..example.com",
            "v=spf1 a:.example.com",
            // ":" and "/" are macro-literals; the CIDR is only a trailing suffix
            "v=spf1 a:foo:bar/baz.example.com mx:foo:bar/baz.example.com/24//64",
        ] {
            assert!(parse_record(ok).is_ok(), "{ok}: {:?}", parse_record(ok));
        }
        for bad in [
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip6:::1/129",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:1.2.3.256",
            "v=spf1 ip4:01.2.3.4",
            "v=spf1 ip4:1.2.3.4/024",
            "v=spf1 a/33",
            "v=spf1 mx//129",
            "v=spf1 a:example.com/",
            "v=spf1 =bar",
            "v=spf1 1foo=bar",
            "v=spf1 redirect=",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 exp=a.example exp=b.example",
            "v=spf1 exp=%{c}.example",
            "v=spf1 a:example.123",
            "v=spf1 a:museum",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 exists",
            "v=spf1 all:foo",
            "v=spf1 foo",
            "v=spf1 ip4",
            "v=spf1 *all",
            "v=spf1 -all\tfoo",
            "v=spf1 a:exämple.com",
            "v=spf1 a:%{x}.example.com",
            "v=spf1 a:%{d0}.example.com",
            "v=spf1 a:%.example.com",
            "v=spf1 a:%{d",
            "v=spf1 a:example.-com",
            "v=spf1 a:example.com- ",
        ] {
            assert!(perm(bad), "{bad} should be a syntax error");
        }
        assert!(is_spf_record("v=spf1"));
        assert!(!is_spf_record("v=spf10"));
        assert!(!is_spf_record("v=spf1-all"));
    }

    #[test]
    fn macros_expand_as_rfc_7208_section_7_4() {
        // The examples of §7.4.
        let q = SpfQuery {
            ip: "192.0.2.3".parse().unwrap(),
            sender: "strong-bad@email.example.com".into(),
            helo: "mx.example.org".into(),
            receiver: "mx.example.net".into(),
        };
        let res = Resolver::new(&Default::default()).unwrap();
        let ev = Evaluation {
            res: &res,
            q: &q,
            dns_terms: 0,
            void_lookups: 0,
        };
        let d = "email.example.com";
        let x = |s: &str| {
            let m = parse_macro_string(s, true).unwrap();
            let mut out = String::new();
            for p in &m.0 {
                match p {
                    MacroPart::Literal(l) => out.push_str(l),
                    _ => out.push_str(&ev.macro_value(p, d, None)),
                }
            }
            out
        };
        assert_eq!(x("%{s}"), "strong-bad@email.example.com");
        assert_eq!(x("%{o}"), "email.example.com");
        assert_eq!(x("%{d}"), "email.example.com");
        assert_eq!(x("%{d4}"), "email.example.com");
        assert_eq!(x("%{d3}"), "email.example.com");
        assert_eq!(x("%{d2}"), "example.com");
        assert_eq!(x("%{d1}"), "com");
        assert_eq!(x("%{dr}"), "com.example.email");
        assert_eq!(x("%{d2r}"), "example.email");
        assert_eq!(x("%{l}"), "strong-bad");
        assert_eq!(x("%{l-}"), "strong.bad");
        assert_eq!(x("%{lr}"), "strong-bad");
        assert_eq!(x("%{lr-}"), "bad.strong");
        assert_eq!(x("%{l1r-}"), "strong");
        assert_eq!(
            x("%{ir}.%{v}._spf.%{d2}"),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(x("%{lr-}.lp._spf.%{d2}"), "bad.strong.lp._spf.example.com");
        assert_eq!(
            x("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}"),
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            x("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}"),
            "3.2.0.192.in-addr.strong.lp._spf.example.com"
        );
        assert_eq!(
            x("%{d2}.trusted-domains.example.net"),
            "example.com.trusted-domains.example.net"
        );
        assert_eq!(x("%%%_%-"), "% %20");
        assert_eq!(x("%{S}"), "strong-bad%40email.example.com");
        assert_eq!(x("%{h}"), "mx.example.org");
        assert_eq!(x("%{c}"), "192.0.2.3");
        assert_eq!(x("%{r}"), "mx.example.net");
        let q6 = SpfQuery {
            ip: "2001:db8::cb01".parse().unwrap(),
            ..q.clone()
        };
        let ev6 = Evaluation { q: &q6, ..ev };
        let m = parse_macro_string("%{ir}.%{v}._spf.%{d2}", false).unwrap();
        let mut out = String::new();
        for p in &m.0 {
            match p {
                MacroPart::Literal(l) => out.push_str(l),
                _ => out.push_str(&ev6.macro_value(p, d, None)),
            }
        }
        assert_eq!(
            out,
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn dual_cidr_is_a_trailing_suffix() {
        let split = |s: &str| {
            let at = cidr_suffix(s);
            (s[..at].to_string(), s[at..].to_string())
        };
        for (arg, dom, cidr) in [
            ("example.com", "example.com", ""),
            ("example.com/24", "example.com", "/24"),
            ("example.com//64", "example.com", "//64"),
            ("example.com/24//64", "example.com", "/24//64"),
            ("foo:bar/baz.example.com", "foo:bar/baz.example.com", ""),
            (
                "foo:bar/baz.example.com/0//0",
                "foo:bar/baz.example.com",
                "/0//0",
            ),
            ("example.com/", "example.com/", ""),
            ("example.com/24/24", "example.com/24", "/24"),
        ] {
            assert_eq!(split(arg), (dom.to_string(), cidr.to_string()), "{arg}");
        }
    }

    #[test]
    fn prefixes() {
        let c = DualCidr { v4: 0, v6: 0 };
        assert!(in_prefix(
            "198.51.100.7".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            c
        ));
        assert!(!in_prefix(
            "198.51.100.7".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            c
        ));
        let c = DualCidr { v4: 24, v6: 64 };
        assert!(in_prefix(
            "192.0.2.200".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            c
        ));
        assert!(!in_prefix(
            "192.0.3.1".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            c
        ));
        assert!(in_prefix(
            "2001:db8::ffff".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            c
        ));
    }
}
