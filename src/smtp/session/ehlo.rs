//! EHLO and HELO: the helo hook, then the greeting with the extension list
//! (which Axigen policies can switch off per session).

use tracing::debug;

use super::settings::Extension;
use super::{Decision, Flow, Session};
use crate::envelope::HeloInfo;
use crate::policy::{Hook, HookArguments};
use crate::proto::reply::SmtpReply;
use crate::scan::milter::Verdict;

impl Session {
    pub(super) async fn cmd_helo(&mut self, verb: &str, host: String) -> Flow {
        // RFC 5321 §4.1.4: EHLO/HELO resets the transaction.
        self.reset_transaction();
        let args = HookArguments::Helo {
            verb: verb.to_string(),
            host: host.clone(),
        };
        let (custom, host) = match self.stage(Hook::Helo, args, None).await {
            Decision::Builtin(r) => (r, host),
            // Halon's Accept({host = …}): the session keeps the new name.
            Decision::Accepted { reply, rewrite } => (reply, rewrite.host.unwrap_or(host)),
            Decision::Done(flow) => return flow,
        };
        if let Verdict::Refuse { reply, milter } = self.milter_helo(&host).await {
            let tx = self.transaction_view();
            return self.refuse(&format!("milter {milter}"), &tx, &reply, false, &[], 0);
        }
        self.extended = verb == "EHLO";
        self.info.helo = Some(HeloInfo {
            verb: verb.to_string(),
            host: host.clone(),
        });
        let cfg = &self.ctx.config;
        let greet = format!("{} Hello {}", cfg.hostname, host);
        let reply = if self.extended {
            let mut lines = vec![greet];
            // Axigen policies switch extensions off per session (allowStartTLS & co.).
            let on = |ext| self.extension_allowed(ext);
            if on(Extension::Pipelining) {
                lines.push("PIPELINING".to_string());
            }
            lines.push(format!("SIZE {}", self.max_message_size()));
            if on(Extension::EightBitMime) {
                lines.push("8BITMIME".to_string());
            }
            lines.push("SMTPUTF8".to_string());
            lines.push("ENHANCEDSTATUSCODES".to_string());
            if on(Extension::Chunking) {
                lines.push("CHUNKING".to_string());
            }
            if on(Extension::Dsn) {
                lines.push("DSN".to_string());
            }
            if self.starttls_available() && on(Extension::StartTls) {
                lines.push("STARTTLS".to_string());
            }
            if self.auth_available() && self.info.auth.is_none() {
                lines.push("AUTH PLAIN LOGIN".to_string());
            }
            lines.push("HELP".to_string());
            SmtpReply {
                code: 250,
                enhanced: None,
                lines,
            }
        } else {
            SmtpReply::new(250, None, greet)
        };
        debug!(conn = %self.info.id, verb, helo = %host, "helo");
        // A script's positive reply replaces the greeting line, not the extension list.
        let reply = match custom {
            Some(c) if !self.extended => c,
            Some(c) => {
                let mut r = reply;
                r.code = c.code;
                r.lines[0] = c.lines.first().cloned().unwrap_or_default();
                r
            }
            None => reply,
        };
        self.conn.queue_reply(&reply.render(false));
        Flow::Continue
    }
}
