//! MAIL FROM: parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH), the
//! mailfrom hook (which may rewrite the sender with `Accept({sender = …})`),
//! and the start of the transaction.

use tracing::{debug, warn};

use super::settings::Extension;
use super::{now_secs, Decision, Flow, Session, Transaction};
use crate::config::MinFree;
use crate::envelope::{Address, MessageDsn, TransactionInfo};
use crate::policy::{Hook, HookArguments};
use crate::proto::params::{Body, MailParams};
use crate::scan::milter::Verdict;

impl Session {
    pub(super) async fn cmd_mail(&mut self, address: String, params: MailParams) -> Flow {
        if self.info.helo.is_none() {
            return self.error(503, "5.5.1", "Send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command");
        }
        if !params.raw.is_empty() && !self.extended {
            return self.error(555, "5.5.4", "Parameters are not supported after HELO");
        }
        if params.size.is_some_and(|n| n > self.max_message_size()) {
            return self.error(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
        }
        // `[queue] min_free`: refuse before anything is written, so mail
        // intake never fills the disk (Postfix's queue_minfree).
        if self.ctx.store.reserve_in_use() {
            crate::metrics::storage_refusal();
            warn!(
                conn = %self.info.id,
                "452 4.3.1: the data_dir space reserve is in use (the disk was full at start); intake resumes once it is restored"
            );
            self.send(452, "4.3.1", "Insufficient system storage");
            return Flow::Continue;
        }
        if let Some(space) = self.ctx.store.free_space() {
            let reserve = MinFree::reserve(self.ctx.config.queue.min_free, space.total);
            let above = space.avail.saturating_sub(reserve);
            let size = params.size.unwrap_or(0);
            if space.avail < reserve || size > above {
                crate::metrics::storage_refusal();
                warn!(
                    conn = %self.info.id,
                    free = space.avail,
                    min_free = reserve,
                    size,
                    "452 4.3.1: free space on data_dir below [queue] min_free"
                );
                self.send(452, "4.3.1", "Insufficient system storage");
                return Flow::Continue;
            }
        }
        // RFC 1652 / RFC 3461: a parameter of an extension the session does
        // not offer (a policy switched it off) is refused, not ignored.
        if params.body == Some(Body::EightBitMime)
            && !self.extension_allowed(Extension::EightBitMime)
        {
            return self.error(
                555,
                "5.5.4",
                "BODY=8BITMIME is not available in this session",
            );
        }
        if (params.ret.is_some() || params.envid.is_some())
            && !self.extension_allowed(Extension::Dsn)
        {
            return self.error(
                555,
                "5.5.4",
                "DSN parameters are not available in this session",
            );
        }
        let smtputf8 = params.smtputf8;
        let eight_bit = params.body == Some(Body::EightBitMime);
        let dsn = MessageDsn {
            ret: params.ret.map(|r| r.as_str().to_string()),
            envid: params.envid.clone(),
        };
        if !address.is_ascii() && !smtputf8 {
            return self.error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let sender = address.to_lowercase();
        let mut info = TransactionInfo {
            id: self.next_txid.clone(),
            senderaddress: if sender.is_empty() {
                Address::default()
            } else {
                Address::split(&sender)
            },
            sender,
            senderparams: params.map(),
            recipients: Vec::new(),
            ts: now_secs(),
            dsn,
            eight_bit,
            smtputf8,
            open: true,
            milters: None,
        };
        self.tx_trace.clear();
        let args = HookArguments::MailFrom {
            address: info.sender.clone(),
            params: info.senderparams.clone(),
        };
        let custom = match self.stage(Hook::MailFrom, args, Some(info.clone())).await {
            Decision::Builtin(r) => r,
            Decision::Accepted { reply, rewrite } => {
                // Halon's Accept({sender = …}) rewrites the envelope sender.
                if let Some(s) = rewrite.sender {
                    debug!(conn = %self.info.id, tx = %info.id, from = %info.sender, to = %s, "sender rewritten by policy");
                    info.senderaddress = if s.is_empty() {
                        Address::default()
                    } else {
                        Address::split(&s)
                    };
                    info.sender = s;
                }
                reply
            }
            Decision::Done(flow) => return flow,
        };
        if let Verdict::Refuse { reply, milter } = self.milter_mail(&info).await {
            return self.refuse(&format!("milter {milter}"), &info, &reply, false, &[], 0);
        }
        debug!(conn = %self.info.id, tx = %info.id, from = %info.sender, "mail from");
        self.tx = Some(Transaction { info, chunks: None });
        match custom {
            Some(r) => self.reply(&r),
            None => self.send(250, "2.1.0", "Sender OK"),
        }
        Flow::Continue
    }
}
