//! Delivery status notifications (RFC 3464 multipart/report): failure,
//! delay and success reports to the envelope sender, honouring RET (full
//! message or headers only), ENVID and ORCPT.

use crate::store::queue::{QueueEntry, QueuedRecipient};

/// RFC 3464 §2.3.3 Action field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl DsnAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }
}

impl std::fmt::Display for DsnAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to one recipient, for the report.
pub struct DsnRecipient<'a> {
    pub recipient: &'a QueuedRecipient,
    pub action: DsnAction,
    /// "5.1.1" style.
    pub status: String,
    pub remote_mta: Option<String>,
    pub diagnostic: Option<String>,
}

/// Configurable text of the human-readable part.
pub struct DsnText<'a> {
    pub subject: &'a str,
    pub body: &'a str,
}

pub fn default_text(action: DsnAction) -> (&'static str, &'static str) {
    match action {
        DsnAction::Failed => (
            "Undelivered Mail Returned to Sender",
            "This is the mail system at {hostname}.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. The details are below.\r\n",
        ),
        DsnAction::Delayed => (
            "Delayed Mail (still being retried)",
            "This is the mail system at {hostname}.\r\n\r\nYour message could not be delivered yet. It will be retried\r\nuntil it is {lifetime} old; you do not need to resend it.\r\n",
        ),
        _ => (
            "Successful Mail Delivery Report",
            "This is the mail system at {hostname}.\r\n\r\nYour message was successfully delivered to the destinations below.\r\n",
        ),
    }
}

fn rfc5322_date(ts: f64) -> String {
    chrono::DateTime::from_timestamp(ts as i64, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// Build the report message (CRLF line ends).
pub fn build(
    hostname: &str,
    entry: &QueueEntry,
    original: &[u8],
    recipients: &[DsnRecipient<'_>],
    text: &DsnText<'_>,
) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let boundary = format!("{}.{}/{}", entry.id, crate::ids::new_id(), hostname);
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", entry.sender));
    m.push_str(&format!("Subject: {}\r\n", clean(text.subject)));
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    m.push_str(&format!(
        "Message-ID: <{}@{hostname}>\r\n",
        crate::ids::new_id()
    ));
    m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    m.push_str(&text.body.replace("\r\n", "\n").replace('\n', "\r\n"));
    m.push_str("\r\n");
    for r in recipients {
        m.push_str(&format!(
            "<{}>: {}\r\n",
            r.recipient.recipient,
            clean(r.diagnostic.as_deref().unwrap_or(r.action.as_str()))
        ));
    }
    m.push_str(&format!("\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(envid) = &entry.dsn.envid {
        m.push_str(&format!("Original-Envelope-Id: {}\r\n", clean(envid)));
    }
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(entry.received_at)
    ));
    for r in recipients {
        m.push_str("\r\n");
        if let Some((t, a)) = &r.recipient.dsn.orcpt {
            m.push_str(&format!("Original-Recipient: {t}; {}\r\n", clean(a)));
        }
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            r.recipient.recipient
        ));
        m.push_str(&format!("Action: {}\r\nStatus: {}\r\n", r.action, r.status));
        if let Some(mta) = &r.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(mta)));
        }
        if let Some(d) = &r.diagnostic {
            m.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", clean(d)));
        }
        if r.action == DsnAction::Delayed {
            m.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                rfc5322_date(entry.next_attempt)
            ));
        }
    }
    let headers_only = entry.dsn.ret.as_deref() == Some("HDRS");
    let mut out = m.into_bytes();
    if headers_only {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        let end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 2)
            .unwrap_or(original.len());
        out.extend_from_slice(&original[..end]);
    } else {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(original);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Does this recipient want a report of this kind? (RFC 3461 §4.1: without
/// NOTIFY, failures are reported; NEVER means none.)
pub fn wants(r: &QueuedRecipient, what: &str) -> bool {
    if r.dsn.notify.is_empty() {
        return what == "FAILURE";
    }
    r.dsn.notify.iter().any(|n| n == what)
}
