//! Keys generated in the test and messages signed with them (mail-auth signs).
#![allow(dead_code)]

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

pub struct Key {
    pub pkcs8: Vec<u8>,
    /// base64 public key for the DKIM TXT record.
    pub public: String,
}

impl Key {
    pub fn generate() -> Key {
        let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
        let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
        Key {
            public: base64::engine::general_purpose::STANDARD.encode(key.public_key()),
            pkcs8,
        }
    }

    /// The `<selector>._domainkey` TXT value.
    pub fn dns_record(&self) -> String {
        format!("v=DKIM1; k=ed25519; p={}", self.public)
    }

    pub fn pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// `msg` with a DKIM-Signature of `d=domain; s=selector` on top.
    pub fn sign(&self, domain: &str, selector: &str, msg: &[u8]) -> Vec<u8> {
        let key = Ed25519Key::from_pkcs8_der(&self.pkcs8).unwrap();
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(msg)
            .unwrap();
        let mut out = sig.to_header().into_bytes();
        out.extend_from_slice(msg);
        out
    }
}

/// A plain message from `from`, with a body of about `body_bytes`.
pub fn message(from: &str, subject: &str, body_bytes: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <{from}>\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n\
         Date: Mon, 13 Jan 2025 10:00:00 +0000\r\nMessage-ID: <t1@sluice.test>\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n";
    let mut n = 0;
    while n < body_bytes.max(1) {
        m.extend_from_slice(line);
        n += line.len();
    }
    m
}

/// A fixed RSA-2048 key for the tests (no dependency generates RSA keys):
/// the same key as PKCS#1 and PKCS#8 PEM. Test-only; it signs nothing real.
pub const RSA_PKCS1_PEM: &str = include_str!("rsa2048.pem");
pub const RSA_PKCS8_PEM: &str = include_str!("rsa2048-pkcs8.pem");

/// The `<selector>._domainkey` TXT value of the RSA test key
/// (SubjectPublicKeyInfo, as `openssl rsa -pubout` writes it).
pub fn rsa_dns_record() -> String {
    format!(
        "v=DKIM1; k=rsa; p={}",
        include_str!("rsa2048.pub.b64").trim()
    )
}
