//! Delivery status notifications (RFC 3464 multipart/report): failure,
//! delay and success reports to the envelope sender, honouring RET (full
//! message or headers only), ENVID and ORCPT. The human-readable part (and
//! From:, Subject:, how much of the original comes back) may be worded per
//! entry by a postdelivery script ([`DsnText`]); the machine-readable
//! delivery-status part never is — mail clients and MTAs parse it.

use crate::store::queue::{AttachSource, QueueEntry, QueuedRecipient};

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

/// The wording of one report, resolved: the script's wording for the entry
/// (a postdelivery `Pass({bounce = …})`, an Axigen ndr*/dsn* setting), then
/// `[queue]`, then [`default_text`].
pub struct DsnText<'a> {
    pub subject: &'a str,
    /// From: header; `None` = `Mail Delivery System <MAILER-DAEMON@hostname>`.
    /// A bare address gets that display name.
    pub from: Option<&'a str>,
    pub body: &'a str,
    /// One line per recipient with `{recipient}`, `{status}`, `{diagnostic}`;
    /// `None` = `<{recipient}>: {diagnostic}`.
    pub recipient_text: Option<&'a str>,
    /// After the per-recipient lines.
    pub footer: Option<&'a str>,
    /// At most this much of the original (RET=HDRS still means headers).
    pub attach: AttachSource,
}

impl<'a> DsnText<'a> {
    /// The built-in wording of `action`, returning the whole message.
    pub fn plain(subject: &'a str, body: &'a str) -> DsnText<'a> {
        DsnText {
            subject,
            from: None,
            body,
            recipient_text: None,
            footer: None,
            attach: AttachSource::Full,
        }
    }
}

const DEFAULT_RECIPIENT_TEXT: &str = "<{recipient}>: {diagnostic}";

/// A recipient's line of the human-readable part, from the template.
pub fn recipient_line(template: &str, r: &DsnRecipient<'_>) -> String {
    template
        .replace("{recipient}", &r.recipient.recipient)
        .replace("{status}", &r.status)
        .replace(
            "{diagnostic}",
            &clean(r.diagnostic.as_deref().unwrap_or(r.action.as_str())),
        )
}

fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
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
    match text.from.map(clean).filter(|f| !f.trim().is_empty()) {
        Some(f) if f.contains('<') => m.push_str(&format!("From: {f}\r\n")),
        Some(f) => m.push_str(&format!("From: Mail Delivery System <{}>\r\n", f.trim())),
        None => m.push_str(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        )),
    }
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
    m.push_str(&crlf(text.body));
    m.push_str("\r\n");
    let template = text.recipient_text.unwrap_or(DEFAULT_RECIPIENT_TEXT);
    for r in recipients {
        let line = crlf(&recipient_line(template, r));
        m.push_str(line.trim_end_matches(['\r', '\n']));
        m.push_str("\r\n");
    }
    if let Some(f) = text.footer.filter(|f| !f.is_empty()) {
        m.push_str("\r\n");
        m.push_str(crlf(f).trim_end_matches(['\r', '\n']));
        m.push_str("\r\n");
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
    let mut attach = text.attach;
    if entry.dsn.ret.as_deref() == Some("HDRS") {
        attach = attach.min(AttachSource::Headers);
    }
    let mut out = m.into_bytes();
    // RFC 3464 §2: the returned content is optional (AttachSource::None).
    if attach == AttachSource::Headers {
        out.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        let end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 2)
            .unwrap_or(original.len());
        out.extend_from_slice(&original[..end]);
    } else if attach == AttachSource::Full {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::RecipientDsn;

    fn entry(ret: Option<&str>) -> QueueEntry {
        let mut e = QueueEntry::accepted(
            "tx1",
            "s@example.net",
            vec![QueuedRecipient {
                recipient: "full@example.org".into(),
                transportid: "default".into(),
                dsn: RecipientDsn::default(),
            }],
            "default",
            "b1",
            10,
        );
        e.dsn.ret = ret.map(String::from);
        e
    }

    const ORIGINAL: &[u8] = b"Subject: hi\r\nFrom: s@example.net\r\n\r\nsecret body\r\n";

    fn report(e: &QueueEntry, text: &DsnText<'_>) -> String {
        let r = DsnRecipient {
            recipient: &e.recipients[0],
            action: DsnAction::Failed,
            status: "5.2.2".into(),
            remote_mta: Some("mx.example.org".into()),
            diagnostic: Some("552 5.2.2 mailbox full".into()),
        };
        String::from_utf8(build("mx.test", e, ORIGINAL, &[r], text)).unwrap()
    }

    #[test]
    fn wording_fills_each_part_and_expands_per_recipient() {
        let e = entry(None);
        let text = DsnText {
            subject: "Undeliverable",
            from: Some("postmaster@example.org"),
            body: "Dear sender,\nit failed.",
            recipient_text: Some("{recipient} ({status}): {diagnostic}"),
            footer: Some("-- the postmaster"),
            attach: AttachSource::Full,
        };
        let m = report(&e, &text);
        assert!(
            m.contains("From: Mail Delivery System <postmaster@example.org>\r\n"),
            "{m}"
        );
        assert!(m.contains("Subject: Undeliverable\r\n"), "{m}");
        assert!(m.contains("Dear sender,\r\nit failed.\r\n"), "{m}");
        assert!(
            m.contains(
                "full@example.org (5.2.2): 552 5.2.2 mailbox full\r\n\r\n-- the postmaster\r\n"
            ),
            "{m}"
        );
        assert!(m.contains("Content-Type: message/rfc822"), "{m}");
        assert!(m.contains("secret body"), "{m}");
        // The machine-readable part is not the script's to word.
        assert!(m.contains("Status: 5.2.2\r\n"), "{m}");
    }

    #[test]
    fn default_wording_names_recipient_and_reply() {
        let m = report(&entry(None), &DsnText::plain("s", "b"));
        assert!(m.contains("From: Mail Delivery System <MAILER-DAEMON@mx.test>\r\n"));
        assert!(
            m.contains("<full@example.org>: 552 5.2.2 mailbox full\r\n"),
            "{m}"
        );
    }

    #[test]
    fn attach_is_limited_by_policy_and_by_ret() {
        let mut t = DsnText::plain("s", "b");
        t.attach = AttachSource::Headers;
        let m = report(&entry(None), &t);
        assert!(
            m.contains("text/rfc822-headers") && m.contains("Subject: hi"),
            "{m}"
        );
        assert!(!m.contains("secret body"), "{m}");
        t.attach = AttachSource::None;
        let m = report(&entry(None), &t);
        assert!(
            !m.contains("Subject: hi") && !m.contains("rfc822-headers"),
            "{m}"
        );
        assert!(m.trim_end().ends_with("--"), "{m}");
        // RET=HDRS wins over a policy asking for the full message.
        let m = report(&entry(Some("HDRS")), &DsnText::plain("s", "b"));
        assert!(
            !m.contains("secret body") && m.contains("text/rfc822-headers"),
            "{m}"
        );
    }

    #[test]
    fn a_from_with_display_name_is_kept_and_lines_cannot_inject_headers() {
        let mut t = DsnText::plain("s\r\nBcc: x@y", "b");
        t.from = Some("Postmaster <pm@example.org>");
        let m = report(&entry(None), &t);
        assert!(m.contains("From: Postmaster <pm@example.org>\r\n"), "{m}");
        assert!(!m.contains("\r\nBcc:"), "{m}");
    }
}
