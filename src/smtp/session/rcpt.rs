//! RCPT TO: parameters (NOTIFY, ORCPT), the recipient limit, the rcptto
//! hook, a policy's delivery rule ([`super::settings`]) and the relay rule. Only an explicit `Accept()` from the script
//! takes a recipient past [`relay::permits`]; every refusal is recorded
//! with the reply sent.

use tracing::{debug, warn};

use super::settings::Extension;
use super::{relay, Decision, Flow, Session};
use crate::config::OnTempfail;
use crate::envelope::{Address, RecipientDsn, RecipientInfo};
use crate::policy::{Hook, HookArguments};
use crate::proto::params::RcptParams;
use crate::proto::reply::SmtpReply;
use crate::recipients::Verdict;
use crate::scan::milter::Verdict as MilterVerdict;

impl Session {
    pub(super) async fn cmd_rcpt(&mut self, address: String, params: RcptParams) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.error(503, "5.5.1", "Need MAIL command");
        };
        if tx.chunks.is_some() {
            return self.error(503, "5.5.1", "RCPT not allowed after BDAT");
        }
        if !params.raw.is_empty() && !self.extended {
            return self.error(555, "5.5.4", "Parameters are not supported after HELO");
        }
        if (params.notify.is_some() || params.orcpt.is_some())
            && !self.extension_allowed(Extension::Dsn)
        {
            return self.error(
                555,
                "5.5.4",
                "DSN parameters are not available in this session",
            );
        }
        let smtputf8 = tx.info.smtputf8;
        let dsn = RecipientDsn {
            notify: params.notify_strings(),
            orcpt: params.orcpt.clone(),
        };
        if !address.is_ascii() && !smtputf8 {
            return self.error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let tx_info = tx.info.clone();
        let rcpt = address.to_lowercase();
        if tx_info.recipients.len() >= self.max_recipients() {
            let reply = SmtpReply::with(452, "4.5.3", "Too many recipients");
            return self.refuse("recipient limit", &tx_info, &reply, false, &[rcpt], 0);
        }
        let args = HookArguments::RcptTo {
            address: rcpt.clone(),
            params: params.map(),
        };
        let (decision, transportid) = self
            .stage_for(
                Hook::RcptTo,
                args,
                Some(tx_info.clone()),
                std::slice::from_ref(&rcpt),
                0,
            )
            .await;
        let mut transportid = transportid.unwrap_or_else(|| "default".to_string());
        let (rcpt, custom) = match decision {
            Decision::Done(flow) => return flow,
            // The script's explicit decision: accepted whatever the relay
            // rule says, with Halon's rewrites.
            Decision::Accepted { reply, rewrite } => {
                if let Some(t) = rewrite.transportid {
                    transportid = t;
                }
                let r = rewrite.recipient.unwrap_or(rcpt);
                debug!(conn = %self.info.id, tx = %tx_info.id, to = %r, transport = %transportid, "recipient accepted by policy");
                (r, reply)
            }
            // Everything else: the built-in rule decides.
            Decision::Builtin(custom) => {
                // A policy's localDelivery / remoteDelivery narrows the rule.
                let domain = Address::split(&rcpt).domain;
                let rule = (!domain.is_empty())
                    .then(|| self.delivery_rule_refuses(&domain))
                    .flatten();
                if let Some(why) = rule {
                    let reply = SmtpReply::with(550, "5.7.1", why);
                    return self.refuse("delivery rule", &tx_info, &reply, false, &[rcpt], 0);
                }
                if !self.relay_permits(&rcpt) {
                    let reply = SmtpReply::with(550, "5.7.1", "Relaying denied");
                    let flow = self.refuse("relay rule", &tx_info, &reply, false, &[rcpt], 0);
                    return match flow {
                        Flow::Close => Flow::Close,
                        Flow::Continue => self.count_error(),
                    };
                }
                // A local recipient the mailstore does not have is refused
                // now, not bounced later to a sender who may be forged.
                match self.validate_recipient(&tx_info, &rcpt).await {
                    Ok(r) => (r, custom),
                    Err(reply) => {
                        return self.refuse(
                            "recipient validation",
                            &tx_info,
                            &reply,
                            false,
                            &[rcpt],
                            0,
                        );
                    }
                }
            }
        };
        let rcpt_params = params.map();
        if let MilterVerdict::Refuse { reply, milter } =
            self.milter_rcpt(&tx_info, &rcpt, &rcpt_params).await
        {
            let why = format!("milter {milter}");
            return self.refuse(&why, &tx_info, &reply, false, &[rcpt], 0);
        }
        let Some(tx) = self.tx.as_mut() else {
            return Flow::Continue;
        };
        if !tx.info.recipients.iter().any(|r| r.recipient == rcpt) {
            tx.info.recipients.push(RecipientInfo {
                address: Address::split(&rcpt),
                recipient: rcpt,
                params: params.map(),
                transportid,
                dsn,
            });
        }
        match custom {
            Some(r) => self.reply(&r),
            None => self.send(250, "2.1.5", "Recipient OK"),
        }
        Flow::Continue
    }

    /// `[recipients]` validation of a recipient in `relay.domains`: the
    /// address to accept (a source may rewrite it), or the refusal.
    /// `postmaster` is always accepted (RFC 5321 §4.5.1).
    async fn validate_recipient(
        &self,
        tx: &crate::envelope::TransactionInfo,
        rcpt: &str,
    ) -> Result<String, SmtpReply> {
        let Some(v) = &self.ctx.recipients else {
            return Ok(rcpt.to_string());
        };
        let addr = Address::split(rcpt);
        if addr.domain.is_empty()
            || addr.localpart.eq_ignore_ascii_case("postmaster")
            || !self.ctx.config.relay.is_local_domain(&addr.domain)
        {
            return Ok(rcpt.to_string());
        }
        let out = v.verify(rcpt, None).await;
        debug!(conn = %self.info.id, tx = %tx.id, to = %rcpt, verdict = out.verdict.as_str(),
            source = %out.source, cached = out.cached, "recipient validation");
        match out.verdict {
            Verdict::Exists { rewrite } => Ok(rewrite.unwrap_or_else(|| rcpt.to_string())),
            Verdict::Unknown => Err(SmtpReply::with(
                550,
                "5.1.1",
                format!("<{rcpt}>: Recipient address rejected: User unknown"),
            )),
            Verdict::TempFail(why) => {
                warn!(conn = %self.info.id, tx = %tx.id, to = %rcpt, source = %out.source,
                    error = %why, "recipient validation could not answer");
                match v.on_tempfail() {
                    OnTempfail::Accept => Ok(rcpt.to_string()),
                    OnTempfail::Defer => Err(SmtpReply::with(
                        451,
                        "4.4.3",
                        format!("<{rcpt}>: Recipient address verification failed, try again later"),
                    )),
                }
            }
        }
    }

    /// The built-in relay rule for one recipient address (a bare
    /// `postmaster`, RFC 5321 §4.5.1, is always ours).
    pub(super) fn relay_permits(&self, recipient: &str) -> bool {
        let addr = Address::split(recipient);
        addr.domain.is_empty()
            || relay::permits(
                &self.ctx.config.relay,
                &addr.domain,
                self.info.remoteip.parse().ok(),
                self.info.auth.is_some(),
            )
    }
}
