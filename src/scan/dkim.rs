//! DKIM signing (RFC 6376, RFC 8463 for Ed25519) and the per-signature
//! verification behind `mail:signDKIM` / `mail:verifyDKIM`.
//!
//! Owns: the signing keys of `[dkim.keys]` (read and parsed once per config
//! epoch, so a bad key is a load error naming its id and file), parsing PEM
//! keys given inline by a script, the signing options (algorithm,
//! canonicalization, signed headers, expiry) and producing the
//! DKIM-Signature field. Verification reuses `scan::auth` (result names,
//! [`DkimSig`]); this module only adds picking one signature.
//!
//! Does not touch: the message representation (`policy::api::mail` decides
//! what bytes are signed and where the field goes — they must be the bytes
//! that will be queued), DNS (the shared [`Resolver`]), ARC keys
//! (`scan::auth`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::common::crypto::{Algorithm, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::AuthenticatedMessage;

use super::auth::{dkim_sigs, DkimSig};
use super::dns::Resolver;
use crate::config::DkimConfig;

/// Headers signed when the script names none (those present; `From`
/// always, RFC 6376 §5.4). The ARC set minus DKIM-Signature: a signer
/// must not cover signatures a later hop may legitimately strip.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// A `[dkim.keys]` entry that cannot be loaded (a load/`sluice check` error).
    #[error("[dkim.keys] {id} = {}: {message}", path.display())]
    KeyFile {
        id: String,
        path: PathBuf,
        message: String,
    },
    /// An inline key, an unknown key id, a bad option (script-visible).
    #[error("{0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the message cannot be parsed")]
    Unparsable,
}

fn invalid(m: impl Into<String>) -> DkimError {
    DkimError::Invalid(m.into())
}

/// A parsed private key. Shared between the states of an epoch.
pub enum PrivateKey {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrivateKey::Rsa(_) => "PrivateKey(rsa)",
            PrivateKey::Ed25519(_) => "PrivateKey(ed25519)",
        })
    }
}

impl PrivateKey {
    /// PEM: PKCS#1 RSA, PKCS#8 RSA or PKCS#8 Ed25519.
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("expected a PEM private key: {e}"))?;
        if let Ok(k) = RsaKey::<Sha256>::from_key_der(der.clone_key()) {
            return Ok(PrivateKey::Rsa(k));
        }
        match &der {
            PrivateKeyDer::Pkcs8(p) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                    .map(PrivateKey::Ed25519)
                    .map_err(|e| format!("not an RSA or Ed25519 key: {e}"))
            }
            _ => Err("not an RSA or Ed25519 key".into()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Rsa(_) => Algorithm::RsaSha256,
            PrivateKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }
}

/// `[dkim.keys]` made ready: id → key.
#[derive(Debug, Default)]
pub struct DkimKeys {
    keys: BTreeMap<String, Arc<PrivateKey>>,
}

impl DkimKeys {
    pub fn from_config(cfg: &DkimConfig) -> Result<DkimKeys, DkimError> {
        let mut keys = BTreeMap::new();
        for (id, path) in &cfg.keys {
            keys.insert(id.clone(), Arc::new(load_file(id, path)?));
        }
        Ok(DkimKeys { keys })
    }

    pub fn get(&self, id: &str) -> Option<Arc<PrivateKey>> {
        self.keys.get(id).cloned()
    }

    /// A script's `key` argument: an inline PEM, else a configured id.
    pub fn resolve(&self, key: &str) -> Result<Arc<PrivateKey>, DkimError> {
        if key.contains("-----BEGIN") {
            return PrivateKey::from_pem(key.as_bytes())
                .map(Arc::new)
                .map_err(|e| invalid(format!("key: {e}")));
        }
        self.get(key).ok_or_else(|| {
            invalid(format!(
                "key {key:?} is neither a PEM private key nor an id in [dkim.keys]"
            ))
        })
    }
}

fn load_file(id: &str, path: &Path) -> Result<PrivateKey, DkimError> {
    let err = |message: String| DkimError::KeyFile {
        id: id.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    PrivateKey::from_pem(&pem).map_err(err)
}

/// What a signature covers and how (`mail:signDKIM` options).
#[derive(Debug, Clone)]
pub struct SignOptions {
    pub selector: String,
    pub domain: String,
    /// The algorithm the script asked for; it must match the key.
    pub algorithm: Option<Algorithm>,
    pub header_canon: Canonicalization,
    pub body_canon: Canonicalization,
    /// None: [`DEFAULT_HEADERS`] present in the message.
    pub headers: Option<Vec<String>>,
    /// `x=` this many seconds after `t=`.
    pub expire: Option<u64>,
}

impl SignOptions {
    /// relaxed/relaxed, the default headers, no expiry.
    pub fn new(selector: &str, domain: &str) -> SignOptions {
        SignOptions {
            selector: selector.to_string(),
            domain: domain.to_string(),
            algorithm: None,
            header_canon: Canonicalization::Relaxed,
            body_canon: Canonicalization::Relaxed,
            headers: None,
            expire: None,
        }
    }
}

pub fn parse_algorithm(s: &str) -> Result<Algorithm, DkimError> {
    match s.to_ascii_lowercase().as_str() {
        "rsa-sha256" => Ok(Algorithm::RsaSha256),
        "ed25519-sha256" => Ok(Algorithm::Ed25519Sha256),
        _ => Err(invalid(format!(
            "algorithm {s:?} is not \"rsa-sha256\" or \"ed25519-sha256\""
        ))),
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// `c=` syntax (RFC 6376 §3.5): "header/body", or "header" alone with a
/// simple body.
pub fn parse_canonicalization(s: &str) -> Result<(Canonicalization, Canonicalization), DkimError> {
    let one = |p: &str| match p.trim().to_ascii_lowercase().as_str() {
        "simple" => Some(Canonicalization::Simple),
        "relaxed" => Some(Canonicalization::Relaxed),
        _ => None,
    };
    let (h, b) = match s.split_once('/') {
        Some((h, b)) => (one(h), one(b)),
        None => (one(s), Some(Canonicalization::Simple)),
    };
    match (h, b) {
        (Some(h), Some(b)) => Ok((h, b)),
        _ => Err(invalid(format!(
            "canonicalization {s:?} is not header/body with simple or relaxed"
        ))),
    }
}

/// A selector or domain: dot-separated labels of letters, digits, `-`, `_`
/// (anything else could break out of the tag list).
fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// mail-auth's signer owns its key; this lends it one of the epoch's keys
/// for the duration of a signature instead of re-parsing it.
struct Lent<'a, K>(&'a K);

impl<K: SigningKey> SigningKey for Lent<'_, K> {
    type Hasher = K::Hasher;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

/// Names of the header fields of `message` (up to the first empty line).
fn header_names(message: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        if line.is_empty() || line == b"\r" {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if let Some(i) = line.iter().position(|&b| b == b':') {
            out.push(line[..i].trim_ascii());
        }
    }
    out
}

/// The headers to list in `h=`: the script's list (absent names are
/// listed too, which forbids adding them later) or the defaults present;
/// `From` is always signed.
fn signed_headers(message: &[u8], wanted: &Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = match wanted {
        Some(list) => list.clone(),
        None => {
            let present = header_names(message);
            DEFAULT_HEADERS
                .iter()
                .filter(|h| present.iter().any(|n| n.eq_ignore_ascii_case(h.as_bytes())))
                .map(|h| h.to_string())
                .collect()
        }
    };
    if !out.iter().any(|h| h.eq_ignore_ascii_case("From")) {
        out.insert(0, "From".into());
    }
    out
}

/// The DKIM-Signature field (name, value, folding, final CRLF) for
/// `message`, ready to be put on top of it byte for byte — simple header
/// canonicalization signs exactly this text.
pub fn sign(key: &PrivateKey, message: &[u8], o: &SignOptions) -> Result<Vec<u8>, DkimError> {
    if !valid_dns_name(&o.selector) {
        return Err(invalid(format!("selector {:?} is not valid", o.selector)));
    }
    if !valid_dns_name(&o.domain) {
        return Err(invalid(format!("domain {:?} is not valid", o.domain)));
    }
    if let Some(a) = o.algorithm {
        if a != key.algorithm() {
            return Err(invalid(format!(
                "algorithm {} does not match the key ({})",
                algorithm_name(a),
                algorithm_name(key.algorithm())
            )));
        }
    }
    if let Some(list) = &o.headers {
        if let Some(bad) = list.iter().find(|h| !valid_header_name(h)) {
            return Err(invalid(format!("headers: {bad:?} is not a header name")));
        }
    }
    // The streaming signer finds the body at the first CRLF CRLF; a header
    // block ended by a bare LF (never from SMTP, which stores CRLF) would be
    // signed as all headers and an empty body.
    let crlf_end = message.windows(4).any(|w| w == b"\r\n\r\n");
    if !crlf_end && message.windows(2).any(|w| w == b"\n\n") {
        return Err(invalid("the message does not use CRLF line endings"));
    }
    let headers = signed_headers(message, &o.headers);
    // The streaming signer, not `sign()`: mail-auth 0.7's `sign()` hashes
    // the body with the *header* canonicalization, so relaxed/simple and
    // simple/relaxed signatures fail everywhere; the stream uses `cb`.
    let sig = match key {
        PrivateKey::Rsa(k) => {
            let signer = configure(DkimSigner::from_key(Lent(k)), o, headers);
            let mut stream = signer.sign_streaming();
            stream.write(message);
            stream.finish()
        }
        PrivateKey::Ed25519(k) => {
            let signer = configure(DkimSigner::from_key(Lent(k)), o, headers);
            let mut stream = signer.sign_streaming();
            stream.write(message);
            stream.finish()
        }
    }
    .map_err(|e| DkimError::Sign(e.to_string()))?;
    Ok(sig.to_header().into_bytes())
}

fn configure<K: SigningKey>(
    s: DkimSigner<K, mail_auth::dkim::NeedDomain>,
    o: &SignOptions,
    headers: Vec<String>,
) -> DkimSigner<K, mail_auth::dkim::Done> {
    let s = s
        .domain(o.domain.as_str())
        .selector(o.selector.as_str())
        .headers(headers)
        .header_canonicalization(o.header_canon)
        .body_canonicalization(o.body_canon);
    match o.expire {
        Some(x) => s.expiration(x),
        None => s,
    }
}

/// Which DKIM-Signature fields `mail:verifyDKIM` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    All,
    /// 1-based, in message order (top first), as `getHeaders` lists them.
    Index(usize),
    /// The field's value (or the whole field); whitespace does not count.
    Value(String),
}

fn squeeze(b: &[u8]) -> Vec<u8> {
    b.iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect()
}

/// Verify the selected DKIM-Signature fields of `raw` (every one for
/// [`Select::All`]). A selection that matches nothing is an error.
pub async fn verify(
    res: &Resolver,
    raw: &[u8],
    select: &Select,
) -> Result<Vec<DkimSig>, DkimError> {
    let mut msg = AuthenticatedMessage::parse(raw).ok_or(DkimError::Unparsable)?;
    match select {
        Select::All => {}
        Select::Index(i) => {
            let n = msg.dkim_headers.len();
            if *i == 0 || *i > n {
                return Err(invalid(format!(
                    "no DKIM-Signature number {i} (the message has {n})"
                )));
            }
            let h = msg.dkim_headers.swap_remove(i - 1);
            msg.dkim_headers = vec![h];
        }
        Select::Value(v) => {
            let mut want = squeeze(v.as_bytes());
            if want.len() > 15 && want[..15].eq_ignore_ascii_case(b"dkim-signature:") {
                want.drain(..15);
            }
            msg.dkim_headers.retain(|h| squeeze(h.value) == want);
            if msg.dkim_headers.is_empty() {
                return Err(invalid("no DKIM-Signature has that value"));
            }
            msg.dkim_headers.truncate(1);
        }
    }
    let out = res.authenticator().verify_dkim(res.params(&msg)).await;
    Ok(dkim_sigs(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";

    fn ed25519() -> PrivateKey {
        PrivateKey::Ed25519(
            Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap(),
        )
    }

    #[test]
    fn canonicalization_forms() {
        use Canonicalization::*;
        assert_eq!(
            parse_canonicalization("relaxed/simple").unwrap(),
            (Relaxed, Simple)
        );
        assert_eq!(parse_canonicalization("Simple").unwrap(), (Simple, Simple));
        assert_eq!(
            parse_canonicalization("relaxed").unwrap(),
            (Relaxed, Simple)
        );
        assert!(parse_canonicalization("loose/simple").is_err());
        assert!(parse_canonicalization("relaxed/").is_err());
    }

    #[test]
    fn default_headers_present_and_from_always() {
        assert_eq!(signed_headers(MSG, &None), ["From", "To", "Subject"]);
        let no_from = b"Subject: x\r\n\r\nb\r\n";
        assert_eq!(signed_headers(no_from, &None), ["From", "Subject"]);
        let list = Some(vec!["Subject".to_string(), "X-Absent".to_string()]);
        assert_eq!(signed_headers(MSG, &list), ["From", "Subject", "X-Absent"]);
    }

    #[test]
    fn sign_field_shape_and_option_errors() {
        let k = ed25519();
        let mut o = SignOptions::new("s1", "example.net");
        o.expire = Some(3600);
        let f = String::from_utf8(sign(&k, MSG, &o).unwrap()).unwrap();
        assert!(
            f.starts_with(
                "DKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=example.net; c=relaxed/relaxed;"
            ),
            "{f}"
        );
        assert!(f.ends_with(";\r\n"), "{f}");
        // h= lists fields bottom-up, as mail-auth signs them.
        assert!(f.contains("h=Subject:To:From;"), "{f}");
        assert!(f.contains("x="), "{f}");

        o.algorithm = Some(Algorithm::RsaSha256);
        let e = sign(&k, MSG, &o).unwrap_err().to_string();
        assert!(e.contains("does not match the key (ed25519-sha256)"), "{e}");
        let mut o = SignOptions::new("s1; h=x", "example.net");
        assert!(sign(&k, MSG, &o)
            .unwrap_err()
            .to_string()
            .contains("selector"));
        o.selector = "s1".into();
        o.domain = "".into();
        assert!(sign(&k, MSG, &o)
            .unwrap_err()
            .to_string()
            .contains("domain"));
        o.domain = "example.net".into();
        o.headers = Some(vec!["Bad:Name".into()]);
        assert!(sign(&k, MSG, &o)
            .unwrap_err()
            .to_string()
            .contains("header name"));
        o.headers = None;
        let lf = b"From: a@example.net\nSubject: hi\n\nbody\n";
        assert!(sign(&k, lf, &o).unwrap_err().to_string().contains("CRLF"));
    }

    #[test]
    fn key_resolution() {
        let keys = DkimKeys::default();
        let e = keys.resolve("main").unwrap_err().to_string();
        assert!(e.contains("\"main\"") && e.contains("[dkim.keys]"), "{e}");
        let e = keys
            .resolve("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("key: "), "{e}");
        let cfg = DkimConfig {
            keys: [("main".to_string(), PathBuf::from("/nonexistent/main.pem"))].into(),
        };
        let e = DkimKeys::from_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("[dkim.keys] main = /nonexistent/main.pem"),
            "{e}"
        );
    }
}
