//! The data that describes a client connection and an SMTP transaction, shared
//! by the server (which fills it), the policy engine (which shows it to
//! scripts as `connection` / `transaction`) and the queue (which stores it).
//! Plain data only: no sockets, no Lua, no sled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub localpart: String,
    pub domain: String,
}

impl Address {
    /// Split at the last '@'; an address without '@' (postmaster) has no domain.
    pub fn split(addr: &str) -> Address {
        match addr.rsplit_once('@') {
            Some((l, d)) => Address {
                localpart: l.to_string(),
                domain: d.to_string(),
            },
            None => Address {
                localpart: addr.to_string(),
                domain: String::new(),
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeloInfo {
    /// "HELO" or "EHLO".
    pub verb: String,
    pub host: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3".
    pub protocol: String,
    /// IANA cipher suite name.
    pub cipher: String,
    /// Symmetric key size in bits.
    pub keysize: u32,
    pub sni: Option<String>,
    /// Client certificate (PEM) when one was presented.
    pub peercert: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    pub mechanism: String,
    pub username: String,
}

/// Everything known about the client; `connection` in scripts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub id: String,
    pub remoteip: String,
    pub remoteport: u16,
    /// FCrDNS-verified PTR name, if any.
    pub remoteptr: Option<String>,
    pub localip: String,
    pub localport: u16,
    /// Listener id from config.
    pub serverid: String,
    pub helo: Option<HeloInfo>,
    pub tls: Option<TlsInfo>,
    pub auth: Option<AuthInfo>,
}

/// RFC 3461 per-recipient DSN parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDsn {
    /// NOTIFY: any of "SUCCESS", "FAILURE", "DELAY", or just "NEVER"; empty = not given.
    pub notify: Vec<String>,
    /// ORCPT as (addr-type, decoded address).
    pub orcpt: Option<(String, String)>,
}

/// RFC 3461 per-message DSN parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDsn {
    /// "FULL" or "HDRS".
    pub ret: Option<String>,
    /// ENVID, xtext-decoded.
    pub envid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientInfo {
    /// Lowercase envelope address.
    pub recipient: String,
    pub address: Address,
    /// RCPT TO parameters, keys uppercase; valueless parameters are "".
    pub params: BTreeMap<String, String>,
    pub transportid: String,
    pub dsn: RecipientDsn,
}

/// One SMTP transaction (MAIL FROM .. end of data); `transaction` in scripts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransactionInfo {
    pub id: String,
    /// Lowercase envelope sender; "" for the null sender.
    pub sender: String,
    pub senderaddress: Address,
    /// MAIL FROM parameters, keys uppercase; valueless parameters are "".
    pub senderparams: BTreeMap<String, String>,
    pub recipients: Vec<RecipientInfo>,
    /// Unix time (seconds, fractional) the transaction began.
    pub ts: f64,
    pub dsn: MessageDsn,
    /// BODY=8BITMIME was given.
    pub eight_bit: bool,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
    /// MAIL FROM has been given; before it scripts see only `id`.
    #[serde(skip)]
    pub open: bool,
    /// eod: what each milter did (`transaction.milters`, see
    /// `crate::scan::milter::EomOutcome::to_json`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub milters: Option<serde_json::Value>,
}

impl TransactionInfo {
    /// The accepted recipients' addresses, in order.
    pub fn recipient_list(&self) -> Vec<String> {
        self.recipients
            .iter()
            .map(|r| r.recipient.clone())
            .collect()
    }

    /// The transaction before MAIL FROM: scripts see its id (and no sender).
    pub fn pending(id: String) -> TransactionInfo {
        TransactionInfo {
            id,
            ..Default::default()
        }
    }
}
