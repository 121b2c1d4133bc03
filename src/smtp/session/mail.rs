//! MAIL FROM: parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH), the
//! mailfrom hook (which may rewrite the sender with `Accept({sender = …})`),
//! and the start of the transaction.

use tracing::debug;

use super::{now_secs, Decision, Flow, Session, Transaction};
use crate::envelope::{Address, MessageDsn, TransactionInfo};
use crate::policy::{Hook, HookArguments};
use crate::proto::command;

impl Session {
    pub(super) async fn cmd_mail(
        &mut self,
        address: String,
        params: Vec<(String, String)>,
    ) -> Flow {
        if self.info.helo.is_none() {
            return self.error(503, "5.5.1", "Send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command");
        }
        if !params.is_empty() && !self.extended {
            return self.error(555, "5.5.4", "Parameters are not supported after HELO");
        }
        let mut dsn = MessageDsn::default();
        let mut eight_bit = false;
        let mut smtputf8 = false;
        for (k, v) in &params {
            match k.as_str() {
                "SIZE" => {
                    let Ok(n) = v.parse::<u64>() else {
                        return self.error(501, "5.5.4", "Syntax error in SIZE parameter");
                    };
                    if n > self.ctx.config.limits.message_size {
                        return self.error(
                            552,
                            "5.3.4",
                            "Message size exceeds fixed maximum message size",
                        );
                    }
                }
                "BODY" => match v.to_ascii_uppercase().as_str() {
                    "7BIT" => {}
                    "8BITMIME" => eight_bit = true,
                    _ => return self.error(555, "5.5.4", "Unsupported BODY type"),
                },
                "SMTPUTF8" => {
                    if !v.is_empty() {
                        return self.error(501, "5.5.4", "SMTPUTF8 takes no value");
                    }
                    smtputf8 = true;
                }
                "RET" => match v.to_ascii_uppercase().as_str() {
                    "FULL" | "HDRS" => dsn.ret = Some(v.to_ascii_uppercase()),
                    _ => return self.error(501, "5.5.4", "RET must be FULL or HDRS"),
                },
                "ENVID" => match command::xtext_decode(v) {
                    Some(d) if !v.is_empty() && v.len() <= 100 => dsn.envid = Some(d),
                    _ => return self.error(501, "5.5.4", "Malformed ENVID"),
                },
                "AUTH" => {
                    // RFC 4954 §5: accepted, and ignored for unauthenticated clients.
                    if command::xtext_decode(v).is_none() {
                        return self.error(501, "5.5.4", "Malformed AUTH parameter");
                    }
                }
                _ => {
                    return self.error(555, "5.5.4", &format!("Unsupported parameter {k}"));
                }
            }
        }
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
            senderparams: command::params_map(&params),
            recipients: Vec::new(),
            ts: now_secs(),
            dsn,
            eight_bit,
            smtputf8,
            open: true,
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
        debug!(conn = %self.info.id, tx = %info.id, from = %info.sender, "mail from");
        self.tx = Some(Transaction { info, chunks: None });
        match custom {
            Some(r) => self.reply(&r),
            None => self.send(250, "2.1.0", "Sender OK"),
        }
        Flow::Continue
    }
}
