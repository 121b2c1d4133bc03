//! Sender authentication over the shared [`Resolver`]: SPF (RFC 7208) by
//! our own evaluator ([`super::spf`]), fed to mail-auth's DMARC and
//! Authentication-Results code; with mail-auth DKIM (RFC 6376), DMARC
//! (RFC 7489, RFC 9091) as Halon's
//! `ScanDMARC` reports it, ARC verify and seal (RFC 8617), and the
//! Authentication-Results header (RFC 8601).
//!
//! # ScanDMARC
//!
//! [`scan_dmarc`] returns [`DmarcVerdict::PermError`] when the RFC5322.From
//! domain cannot be extracted (no From field, several From fields or
//! addresses, unparsable); otherwise the From domain and one of `pass`,
//! `none`, `reject`, `quarantine`, `temperror`, `policy_absent`:
//!
//! 1. Policy discovery (RFC 7489 §6.6.3, RFC 9091 §4): `_dmarc.<from>`,
//!    then `_dmarc.<organisational domain>` (public suffix list), then
//!    `_dmarc.<public suffix>` when that record says `psd=y`. A record
//!    found above the From domain applies its `sp` (default `p`), or its
//!    `np` (default `sp`) when the From domain does not exist (no A, AAAA
//!    or MX: RFC 9091 §2.7). No record → `policy_absent`; a DNS failure →
//!    `temperror`.
//! 2. Identifier alignment: SPF `pass` for the MAIL FROM domain (the HELO
//!    domain for the null sender), DKIM `pass` for a signature's `d=`, each
//!    compared with the From domain exactly (`aspf`/`adkim=s`) or by
//!    organisational domain (`r`, the default). Either aligned → `pass`.
//! 3. Otherwise, a temporary SPF or DKIM failure → `temperror`; else the
//!    policy, where `pct` < 100 applies `quarantine`/`reject` to that share
//!    of messages and the next weaker policy (`reject` → `quarantine` →
//!    `none`) to the rest (§6.6.4).

use std::net::IpAddr;
use std::path::Path;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::Done;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::{Alignment, Dmarc, Policy, Psd};
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, Error,
    SpfOutput, SpfResult,
};

use super::dns::Resolver;
use super::spf;
use crate::config::Config;

/// Headers an ARC-Message-Signature covers (those present are signed):
/// the ones a DKIM signature covers by default, and the DKIM signatures.
fn arc_headers() -> impl Iterator<Item = &'static str> {
    super::dkim::DEFAULT_HEADERS
        .iter()
        .copied()
        .chain(["DKIM-Signature"])
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("[auth] arc_key {}: {message}", path.display())]
    Key {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("[auth] {0}")]
    Config(String),
    #[error("the message cannot be parsed")]
    Unparsable,
    #[error("ARC sealing is not configured ([auth] arc_key, arc_selector, arc_domain)")]
    NoArcKey,
    #[error("the ARC chain failed validation; it must not be sealed")]
    ChainFailed,
    #[error("ARC seal: {0}")]
    Seal(String),
}

enum Sealer {
    Rsa(ArcSealer<RsaKey<Sha256>, Done>),
    Ed25519(ArcSealer<Ed25519Key, Done>),
}

/// `[auth]` made ready: the authserv-id and the ARC sealing key.
pub struct AuthSettings {
    /// authserv-id of Authentication-Results ("" in config = the hostname).
    pub authserv_id: String,
    /// Our host name, for SPF's `%{r}` macro.
    pub hostname: String,
    /// `[auth] results`: stamp Authentication-Results in the built-in eod
    /// (and in `auth.stamp`).
    pub results: bool,
    sealer: Option<Sealer>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("authserv_id", &self.authserv_id)
            .field("arc", &self.sealer.is_some())
            .finish()
    }
}

/// A private key from PEM: PKCS#1 RSA, or PKCS#8 RSA or Ed25519.
fn load_key(path: &Path, domain: &str, selector: &str) -> Result<Sealer, AuthError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let err = |m: String| AuthError::Key {
        path: path.to_path_buf(),
        message: m,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| err(format!("expected a PEM private key: {e}")))?;
    let headers = arc_headers();
    if let Ok(key) = RsaKey::<Sha256>::from_key_der(der.clone_key()) {
        return Ok(Sealer::Rsa(
            ArcSealer::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(headers),
        ));
    }
    let key = match &der {
        PrivateKeyDer::Pkcs8(p) => Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
            .map_err(|e| err(format!("not an RSA or Ed25519 key: {e}")))?,
        _ => return Err(err("not an RSA or Ed25519 key".into())),
    };
    Ok(Sealer::Ed25519(
        ArcSealer::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(headers),
    ))
}

impl AuthSettings {
    pub fn from_config(cfg: &Config) -> Result<AuthSettings, AuthError> {
        let a = &cfg.auth;
        let authserv_id = if a.authserv_id.trim().is_empty() {
            cfg.hostname.clone()
        } else {
            a.authserv_id.trim().to_string()
        };
        let sealer = match &a.arc_key {
            None => None,
            Some(path) => {
                if a.arc_domain.is_empty() || a.arc_selector.is_empty() {
                    return Err(AuthError::Config(
                        "arc_key needs arc_domain and arc_selector".into(),
                    ));
                }
                Some(load_key(path, &a.arc_domain, &a.arc_selector)?)
            }
        };
        Ok(AuthSettings {
            authserv_id,
            hostname: cfg.hostname.clone(),
            results: a.results,
            sealer,
        })
    }

    /// Settings without an ARC key (tests, tools).
    pub fn new(authserv_id: &str, hostname: &str) -> AuthSettings {
        AuthSettings {
            authserv_id: authserv_id.to_string(),
            hostname: hostname.to_string(),
            results: true,
            sealer: None,
        }
    }

    /// Add an ARC key from a PEM file.
    pub fn with_arc_key(
        mut self,
        path: &Path,
        domain: &str,
        selector: &str,
    ) -> Result<AuthSettings, AuthError> {
        self.sealer = Some(load_key(path, domain, selector)?);
        Ok(self)
    }

    pub fn can_seal(&self) -> bool {
        self.sealer.is_some()
    }
}

/// The SPF inputs: client IP, HELO name and envelope sender ("" = null
/// sender, when the HELO identity is checked instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfRequest {
    pub ip: IpAddr,
    pub helo: String,
    pub sender: String,
}

impl SpfRequest {
    /// The domain SPF authenticates: the sender's, or HELO's for "<>".
    pub fn identity_domain(&self) -> String {
        match self.sender.rsplit_once('@') {
            Some((_, d)) if !d.is_empty() => d.to_ascii_lowercase(),
            _ => self.helo.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

/// `spf.check` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    /// pass, fail, softfail, neutral, none, temperror, permerror.
    pub result: &'static str,
    /// The domain whose record was evaluated.
    pub domain: String,
    /// "mailfrom" or "helo".
    pub identity: &'static str,
    /// The `exp=` text of a fail, when the domain publishes one.
    pub explanation: Option<String>,
    /// The matching term, or what made it an error.
    pub reason: String,
}

/// Our RFC 7208 evaluator ([`super::spf`]) for the request's identity.
async fn spf_outcome(
    res: &Resolver,
    host: &str,
    req: &SpfRequest,
) -> (spf::SpfOutcome, &'static str) {
    if req.sender.contains('@') {
        (
            spf::verify_mail_from(res, req.ip, &req.helo, &req.sender, host).await,
            "mailfrom",
        )
    } else {
        (spf::verify_helo(res, req.ip, &req.helo, host).await, "helo")
    }
}

/// The same result in mail-auth's form, for its DMARC and
/// Authentication-Results code.
fn spf_output(o: &spf::SpfOutcome) -> SpfOutput {
    let out = SpfOutput::new(o.domain.clone()).with_result(o.result.to_mail_auth());
    match &o.explanation {
        Some(e) => out.with_explanation(e.clone()),
        None => out,
    }
}

/// A DNS failure that may go away (timeout, SERVFAIL, REFUSED).
fn is_temporary(e: &Error) -> bool {
    use mail_auth::hickory_resolver::proto::op::ResponseCode;
    match e {
        Error::DnsError(_) => true,
        Error::DnsRecordNotFound(code) => {
            !matches!(code, ResponseCode::NXDomain | ResponseCode::NoError)
        }
        _ => false,
    }
}

/// SPF for the MAIL FROM identity (the HELO identity for the null sender).
pub async fn spf_check(res: &Resolver, host: &str, req: &SpfRequest) -> SpfCheck {
    let (out, identity) = spf_outcome(res, host, req).await;
    SpfCheck {
        result: out.result.as_str(),
        domain: out.domain,
        identity,
        explanation: out.explanation,
        reason: out.reason,
    }
}

/// One verified DKIM-Signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSig {
    pub domain: Option<String>,
    pub selector: Option<String>,
    /// pass, fail, neutral, temperror, permerror, none.
    pub result: &'static str,
    pub error: Option<String>,
}

fn error_text(e: &Error) -> String {
    match e {
        Error::FailedBodyHashMatch => "body hash mismatch".into(),
        Error::FailedVerification => "signature verification failed".into(),
        Error::CryptoError(m) if m.contains("Unspecified") => {
            "signature verification failed".into()
        }
        other => other.to_string(),
    }
}

/// Result name and error of a DKIM (or ARC) result. mail-auth calls a
/// body-hash mismatch "neutral"; RFC 6376 §6.3 makes it a failure.
pub fn dkim_result_name(r: &DkimResult) -> (&'static str, Option<String>) {
    match r {
        DkimResult::Pass => ("pass", None),
        DkimResult::Neutral(e @ Error::FailedBodyHashMatch) => ("fail", Some(error_text(e))),
        DkimResult::Neutral(e) => ("neutral", Some(error_text(e))),
        DkimResult::Fail(e) => ("fail", Some(error_text(e))),
        DkimResult::PermError(e) => ("permerror", Some(error_text(e))),
        DkimResult::TempError(e) => ("temperror", Some(error_text(e))),
        DkimResult::None => ("none", None),
    }
}

/// Per-signature results of a mail-auth DKIM verification.
pub(crate) fn dkim_sigs(out: &[DkimOutput<'_>]) -> Vec<DkimSig> {
    out.iter()
        .map(|o| {
            let (result, error) = dkim_result_name(o.result());
            DkimSig {
                domain: o.signature().map(|s| s.d.to_ascii_lowercase()),
                selector: o.signature().map(|s| s.s.clone()),
                result,
                error,
            }
        })
        .collect()
}

/// Verify every DKIM-Signature of `raw`.
pub async fn dkim_verify(res: &Resolver, raw: &[u8]) -> Result<Vec<DkimSig>, AuthError> {
    let msg = AuthenticatedMessage::parse(raw).ok_or(AuthError::Unparsable)?;
    let out = res.authenticator().verify_dkim(res.params(&msg)).await;
    Ok(dkim_sigs(&out))
}

/// `arc.verify` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcCheck {
    /// none (no ARC sets), pass, fail, …
    pub result: &'static str,
    /// Number of ARC sets in the chain.
    pub instances: usize,
    pub error: Option<String>,
}

fn arc_check(out: &ArcOutput<'_>) -> ArcCheck {
    let (result, error) = dkim_result_name(out.result());
    ArcCheck {
        result,
        instances: out.sets().len(),
        error,
    }
}

/// Validate the ARC chain of `raw`.
pub async fn arc_verify(res: &Resolver, raw: &[u8]) -> Result<ArcCheck, AuthError> {
    let msg = AuthenticatedMessage::parse(raw).ok_or(AuthError::Unparsable)?;
    let out = res.authenticator().verify_arc(res.params(&msg)).await;
    Ok(arc_check(&out))
}

/// The organisational domain (public suffix list); the name itself when the
/// list does not know its suffix.
pub fn org_domain(d: &str) -> &str {
    psl::domain_str(d).unwrap_or(d)
}

fn aligned(a: &str, b: &str, mode: &Alignment) -> bool {
    a.eq_ignore_ascii_case(b)
        || (*mode == Alignment::Relaxed && org_domain(a).eq_ignore_ascii_case(org_domain(b)))
}

/// What `ScanDMARC` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmarcVerdict {
    /// The From domain could not be extracted.
    PermError,
    /// The From domain and pass/none/reject/quarantine/temperror/policy_absent.
    Domain(String, &'static str),
}

/// The single RFC5322.From domain, or None (no From, several, unparsable).
pub fn from_domain(msg: &AuthenticatedMessage<'_>) -> Option<String> {
    let fields = msg
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"From"))
        .count();
    if fields != 1 || msg.from.len() != 1 {
        return None;
    }
    let (_, d) = msg.from[0].rsplit_once('@')?;
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    let valid = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(d)
}

enum Discovery {
    /// The record, and whether it was found above the From domain (at the
    /// organisational domain or the public suffix: `sp` / `np` apply).
    Found(std::sync::Arc<Dmarc>, bool),
    Absent,
    TempError,
}

/// RFC 7489 §6.6.3 with RFC 9091 §4: the From domain's record, else the
/// organisational domain's (public suffix list), else the public suffix
/// domain's when that record says `psd=y`.
async fn discover(res: &Resolver, domain: &str) -> Discovery {
    let auth = res.authenticator();
    let org = org_domain(domain);
    let mut names = vec![(domain, false, false)];
    if org != domain {
        names.push((org, true, false));
    }
    if let Some(psd) = psl::suffix_str(domain).filter(|p| *p != org && *p != domain) {
        names.push((psd, true, true));
    }
    for (name, above, psd) in names {
        match auth
            .txt_lookup::<Dmarc>(format!("_dmarc.{name}."), Some(res.txt_cache()))
            .await
        {
            // A suffix's record applies only when it says it is a PSD's.
            Ok(rec) if psd && rec.psd != Psd::Yes => {}
            Ok(rec) => return Discovery::Found(rec, above),
            Err(e) if is_temporary(&e) => return Discovery::TempError,
            Err(_) => {}
        }
    }
    Discovery::Absent
}

/// RFC 9091 §2.7: a domain with no A, AAAA or MX records (NXDOMAIN or
/// NODATA for all three) does not exist; `None` when DNS failed.
async fn nonexistent(res: &Resolver, domain: &str) -> Option<bool> {
    use mail_auth::hickory_resolver::proto::rr::RecordType;
    let (a, aaaa, mx) = tokio::join!(
        res.lookup(domain, RecordType::A),
        res.lookup(domain, RecordType::AAAA),
        res.lookup(domain, RecordType::MX)
    );
    let mut none = true;
    for r in [a, aaaa, mx] {
        match r {
            Ok(_) => none = false,
            Err(e) if e.is_temporary() => return None,
            Err(_) => {}
        }
    }
    Some(none)
}

/// A number in 0..100 for `pct` sampling.
fn sample_percent() -> u8 {
    use rand::Rng;
    rand::thread_rng().gen_range(0..100)
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

/// `ScanDMARC` for a raw message and SPF inputs (see the module doc).
pub async fn scan_dmarc(res: &Resolver, host: &str, raw: &[u8], spf: &SpfRequest) -> DmarcVerdict {
    let Some(msg) = AuthenticatedMessage::parse(raw) else {
        return DmarcVerdict::PermError;
    };
    let Some(from) = from_domain(&msg) else {
        return DmarcVerdict::PermError;
    };
    let verdict = |r: &'static str| DmarcVerdict::Domain(from.clone(), r);
    let (record, subdomain) = match discover(res, &from).await {
        Discovery::Found(r, sub) => (r, sub),
        Discovery::Absent => return verdict("policy_absent"),
        Discovery::TempError => return verdict("temperror"),
    };
    let auth = res.authenticator();
    let ((spf_res, _), dkim_out) = tokio::join!(
        spf_outcome(res, host, spf),
        auth.verify_dkim(res.params(&msg))
    );
    let spf_out = spf_output(&spf_res);
    let spf_domain = spf.identity_domain();
    let spf_aligned =
        spf_out.result() == SpfResult::Pass && aligned(&spf_domain, &from, &record.aspf);
    let dkim_aligned = dkim_out.iter().any(|o| {
        *o.result() == DkimResult::Pass
            && o.signature()
                .is_some_and(|s| aligned(&s.d, &from, &record.adkim))
    });
    if spf_aligned || dkim_aligned {
        return verdict("pass");
    }
    let temp = spf_out.result() == SpfResult::TempError
        || dkim_out
            .iter()
            .any(|o| matches!(o.result(), DkimResult::TempError(_)));
    if temp {
        return verdict("temperror");
    }
    // RFC 7489 §6.6.3 / RFC 9091 §4.2: `p` for the domain that published
    // the record; below it `sp`, or `np` when the From domain does not exist.
    let mut policy = if !subdomain {
        record.p
    } else if record.np != record.sp && nonexistent(res, &from).await == Some(true) {
        record.np
    } else {
        record.sp
    };
    if record.pct < 100
        && matches!(policy, Policy::Reject | Policy::Quarantine)
        && sample_percent() >= record.pct
    {
        policy = match policy {
            Policy::Reject => Policy::Quarantine,
            _ => Policy::None,
        };
    }
    verdict(policy_name(policy))
}

/// Everything checked once, for Authentication-Results and ARC sealing.
pub struct AuthReport {
    /// The Authentication-Results value (after "Authentication-Results: ").
    pub header_value: String,
    /// ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results, each
    /// "Name: value\r\n" (folded), when sealing was asked for.
    pub arc_headers: Option<String>,
}

/// Run SPF, DKIM, ARC and DMARC on `raw`; build the Authentication-Results
/// value under our authserv-id and, with `seal`, the next ARC set.
pub async fn authenticate(
    res: &Resolver,
    settings: &AuthSettings,
    raw: &[u8],
    spf: &SpfRequest,
    seal: bool,
) -> Result<AuthReport, AuthError> {
    if seal && settings.sealer.is_none() {
        return Err(AuthError::NoArcKey);
    }
    let msg = AuthenticatedMessage::parse(raw).ok_or(AuthError::Unparsable)?;
    let auth = res.authenticator();
    let ((spf_res, _), dkim_out, arc_out) = tokio::join!(
        spf_outcome(res, &settings.hostname, spf),
        auth.verify_dkim(res.params(&msg)),
        auth.verify_arc(res.params(&msg))
    );
    let spf_out = spf_output(&spf_res);
    let from = msg.from.first().cloned().unwrap_or_default();
    let mail_from_domain = spf.identity_domain();
    let dmarc_out = auth
        .verify_dmarc(
            res.params(
                DmarcParameters::new(&msg, &dkim_out, &mail_from_domain, &spf_out)
                    .with_domain_suffix_fn(org_domain),
            ),
        )
        .await;
    let helo = spf.helo.trim_end_matches('.');
    let mut results = AuthenticationResults::new(&settings.authserv_id)
        .with_dkim_results(&dkim_out, &from)
        .with_spf_mailfrom_result(&spf_out, spf.ip, &spf.sender, helo);
    if !arc_out.sets().is_empty() || seal {
        results = results.with_arc_result(&arc_out, spf.ip);
    }
    if !dmarc_out.domain().is_empty() {
        results = results.with_dmarc_result(&dmarc_out);
    }
    let mut header_value = results.to_string();
    if dkim_out.is_empty() {
        // RFC 8601 §2.7.1: say so rather than leave dkim out.
        header_value.push_str(";\r\n\tdkim=none");
    }
    let arc_headers = if seal {
        if !arc_out.can_be_sealed() {
            return Err(AuthError::ChainFailed);
        }
        let set = match &settings.sealer {
            Some(Sealer::Rsa(s)) => s.seal(&msg, &results, &arc_out),
            Some(Sealer::Ed25519(s)) => s.seal(&msg, &results, &arc_out),
            None => return Err(AuthError::NoArcKey),
        }
        .map_err(|e| AuthError::Seal(e.to_string()))?;
        Some(set.to_header())
    } else {
        None
    };
    Ok(AuthReport {
        header_value,
        arc_headers,
    })
}

/// Skip CFWS (white space, folding and nested comments) at the start.
fn skip_cfws(s: &str) -> &str {
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if !rest.starts_with('(') {
            return rest;
        }
        let mut depth = 0usize;
        let mut end = rest.len();
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
}

/// Does this Authentication-Results value claim `authserv_id`? The
/// authserv-id is the first token of the value (RFC 8601 §2.2), a token or
/// a quoted-string, compared case-insensitively.
pub fn claims_authserv_id(value: &str, authserv_id: &str) -> bool {
    let v = skip_cfws(value);
    let id = if let Some(q) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut escaped = false;
        for c in q.chars() {
            match c {
                _ if escaped => {
                    out.push(c);
                    escaped = false
                }
                '\\' => escaped = true,
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else {
        v.split(|c: char| c.is_whitespace() || c == ';' || c == '(')
            .next()
            .unwrap_or("")
            .to_string()
    };
    !id.is_empty() && id.eq_ignore_ascii_case(authserv_id.trim())
}

/// The message with every Authentication-Results field that claims our
/// authserv-id removed (RFC 8601 §5: a forgery, or a stale result of
/// ours) and `ours` (a header value, folded as it is) added on top. Other
/// servers' results are kept.
pub fn stamp_results(raw: &[u8], authserv_id: &str, ours: Option<&str>) -> Vec<u8> {
    const NAME: &[u8] = b"authentication-results:";
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(raw.len());
    let mut out = Vec::with_capacity(raw.len() + 256);
    if let Some(v) = ours {
        out.extend_from_slice(b"Authentication-Results: ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut i = 0;
    while i < header_end {
        // One field: its first line and the continuation lines.
        let mut end = i;
        loop {
            match raw[end..header_end].windows(2).position(|w| w == b"\r\n") {
                Some(p) => end += p + 2,
                None => {
                    end = header_end;
                    break;
                }
            }
            if end >= header_end || !matches!(raw[end], b' ' | b'\t') {
                break;
            }
        }
        let field = &raw[i..end];
        let ours_claimed = field.len() > NAME.len()
            && field[..NAME.len()].eq_ignore_ascii_case(NAME)
            && claims_authserv_id(&String::from_utf8_lossy(&field[NAME.len()..]), authserv_id);
        if !ours_claimed {
            out.extend_from_slice(field);
        }
        i = end;
    }
    out.extend_from_slice(&raw[header_end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_our_authserv_id_are_removed() {
        assert!(claims_authserv_id(
            " mx.example.org; dmarc=pass",
            "MX.example.org"
        ));
        assert!(claims_authserv_id(
            " (comment (nested)) mx.example.org 1; spf=pass",
            "mx.example.org"
        ));
        assert!(claims_authserv_id(
            " \"mx.example.org\"; none",
            "mx.example.org"
        ));
        assert!(claims_authserv_id(
            "\r\n\tmx.example.org;\r\n\tdkim=pass",
            "mx.example.org"
        ));
        assert!(!claims_authserv_id(
            " mx.example.org.evil; dmarc=pass",
            "mx.example.org"
        ));
        assert!(!claims_authserv_id(
            " other.example; dmarc=pass",
            "mx.example.org"
        ));
        let raw = b"Received: x\r\nAuthentication-Results: mx.example.org;\r\n\tdmarc=pass\r\nAuthentication-Results: other.example; spf=pass\r\nauthentication-results: MX.EXAMPLE.ORG; dkim=pass\r\nSubject: s\r\n\r\nAuthentication-Results: mx.example.org; body\r\n";
        let out = stamp_results(raw, "mx.example.org", Some("mx.example.org; spf=none"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Authentication-Results: mx.example.org; spf=none\r\nReceived: x\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: s\r\n\r\nAuthentication-Results: mx.example.org; body\r\n"
        );
        let out = stamp_results(raw, "mx.example.org", None);
        assert!(!String::from_utf8_lossy(&out).starts_with("Authentication-Results: mx"));
    }

    #[test]
    fn org_domains() {
        assert_eq!(org_domain("mail.example.co.uk"), "example.co.uk");
        assert_eq!(org_domain("a.b.example.com"), "example.com");
        assert_eq!(org_domain("example.com"), "example.com");
        assert!(aligned(
            "bounce.example.com",
            "example.com",
            &Alignment::Relaxed
        ));
        assert!(!aligned(
            "bounce.example.com",
            "example.com",
            &Alignment::Strict
        ));
        assert!(!aligned("example.net", "example.com", &Alignment::Relaxed));
    }

    #[test]
    fn from_domain_extraction() {
        let one = b"From: A <a@Example.COM>\r\nTo: b@x\r\n\r\nhi\r\n";
        let m = AuthenticatedMessage::parse(one).unwrap();
        assert_eq!(from_domain(&m).as_deref(), Some("example.com"));
        let two = b"From: a@example.com, b@example.net\r\n\r\nhi\r\n";
        let m = AuthenticatedMessage::parse(two).unwrap();
        assert_eq!(from_domain(&m), None);
        let fields = b"From: a@example.com\r\nFrom: a@example.com\r\n\r\nhi\r\n";
        let m = AuthenticatedMessage::parse(fields).unwrap();
        assert_eq!(from_domain(&m), None);
        let none = b"To: a@example.com\r\n\r\nhi\r\n";
        let m = AuthenticatedMessage::parse(none).unwrap();
        assert_eq!(from_domain(&m), None);
        let junk = b"From: not an address\r\n\r\nhi\r\n";
        let m = AuthenticatedMessage::parse(junk).unwrap();
        assert_eq!(from_domain(&m), None);
    }
}
