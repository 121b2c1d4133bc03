//! The milter stages of the session: after the built-in and Lua checks of
//! a stage accept (like Postfix's smtpd_milters after smtpd restrictions),
//! the `[[milter]]` chain is asked; its refusal goes through
//! [`Session::refuse`] like any other. End of message is in [`super::eod`].

use super::{Flow, Session};
use crate::envelope::TransactionInfo;
use crate::scan::milter::macros::MacroSource;
use crate::scan::milter::{MilterChain, Verdict};

impl Session {
    /// What the milters' macros are taken from at a stage.
    fn macro_source<'a>(
        &'a self,
        tx: Option<&'a TransactionInfo>,
        rcpt: Option<&'a str>,
    ) -> MacroSource<'a> {
        MacroSource {
            hostname: &self.ctx.config.hostname,
            conn: &self.info,
            tx,
            rcpt,
        }
    }

    /// Open the chain (at connect, after the connect hook accepted). A
    /// milter's refusal here answers the greeting and ends the session.
    pub(super) async fn milter_connect(&mut self) -> Flow {
        if self.ctx.config.milter.is_empty() {
            return Flow::Continue;
        }
        let cfgs: Vec<_> = self
            .ctx
            .config
            .milter
            .iter()
            .cloned()
            .map(std::sync::Arc::new)
            .collect();
        let mut chain = MilterChain::new(&cfgs, &self.info.id);
        let v = chain.connect(&self.macro_source(None, None)).await;
        self.milters = Some(chain);
        match v {
            Verdict::Continue => Flow::Continue,
            Verdict::Refuse { mut reply, milter } => {
                // A greeting refusal is 554 or 421 (RFC 5321 §3.1).
                reply.code = if reply.is_permanent() { 554 } else { 421 };
                let tx = self.transaction_view();
                self.refuse(&format!("milter {milter}"), &tx, &reply, true, &[], 0);
                Flow::Close
            }
        }
    }

    /// Take the chain out for one stage (it is put back by the caller).
    fn chain(&mut self) -> Option<MilterChain> {
        self.milters.take()
    }

    pub(super) async fn milter_helo(&mut self, host: &str) -> Verdict {
        let Some(mut chain) = self.chain() else {
            return Verdict::Continue;
        };
        let v = chain.helo(host, &self.macro_source(None, None)).await;
        self.milters = Some(chain);
        v
    }

    pub(super) async fn milter_mail(&mut self, tx: &TransactionInfo) -> Verdict {
        let Some(mut chain) = self.chain() else {
            return Verdict::Continue;
        };
        let args = esmtp_args(&tx.senderparams);
        let v = chain
            .mail(&tx.sender, &args, &self.macro_source(Some(tx), None))
            .await;
        self.milters = Some(chain);
        v
    }

    pub(super) async fn milter_rcpt(
        &mut self,
        tx: &TransactionInfo,
        rcpt: &str,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Verdict {
        let Some(mut chain) = self.chain() else {
            return Verdict::Continue;
        };
        let v = chain
            .rcpt(
                rcpt,
                &esmtp_args(params),
                &self.macro_source(Some(tx), Some(rcpt)),
            )
            .await;
        self.milters = Some(chain);
        v
    }

    pub(super) async fn milter_data(&mut self, tx: &TransactionInfo) -> Verdict {
        let Some(mut chain) = self.chain() else {
            return Verdict::Continue;
        };
        let v = chain.data(&self.macro_source(Some(tx), None)).await;
        self.milters = Some(chain);
        v
    }

    /// End of message over the chain (None: no milters).
    pub(super) async fn milter_eom(
        &mut self,
        tx: &TransactionInfo,
        message: &[u8],
    ) -> Option<crate::scan::milter::EomOutcome> {
        let mut chain = self.chain()?;
        let rcpts = tx.recipient_list();
        let out = chain
            .end_of_message(message, &rcpts, &self.macro_source(Some(tx), None))
            .await;
        self.milters = Some(chain);
        Some(out)
    }
}

/// MAIL/RCPT parameters as ESMTP arguments ("SIZE=123", "SMTPUTF8").
fn esmtp_args(params: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    params
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect()
}
