//! End of data: the content checks, the headers and eod hooks, then the
//! queue write — the 250 goes out only once the message is on disk. A
//! recipient an eod script queues that no RCPT accepted must pass the relay
//! rule like any other; every refusal is recorded with the reply sent.

use std::collections::BTreeMap;

use bytes::Bytes;
use tracing::{info, warn};

use super::{Decision, Flow, Session};
use crate::config::BareLineEnding;
use crate::envelope::{Address, MessageDsn, RecipientDsn, RecipientInfo, TransactionInfo};
use crate::policy::{Hook, HookArguments, HookVerdict, QueueRequest};
use crate::proto::reply::SmtpReply;
use crate::scan::milter::Verdict;
use crate::smtp::data::MessageBuilder;
use crate::store::history::{HistoryAction, HistoryRecord};
use crate::store::queue::{ClientInfo, NewMessage, QueueEntry, QueuedRecipient};

impl Session {
    /// End of data: check the content, run headers and eod, queue durably, answer.
    pub(super) async fn finish_message(&mut self, mut builder: MessageBuilder) -> Flow {
        let Some(tx) = self.end_transaction() else {
            return Flow::Continue;
        };
        let mut info = tx.info;
        let rcpts = info.recipient_list();
        if let Some(reply) = self.content_rejection(&builder) {
            return self.refuse("content check", &info, &reply, false, &rcpts, builder.size);
        }
        let mut size = builder.size;
        let header_end = builder.header_end.unwrap_or(builder.body.len());
        // `builder` lives to the end of this function: the message's share
        // of `[limits] data_memory` is held until it is queued or refused.
        let mut body = Bytes::from(builder.take_body());
        let body_message_id = message_id_of(&body);

        if self.ctx.policy.has_hook(Hook::Headers) {
            let args = HookArguments::Mail {
                message: body.slice(..header_end),
                headers_only: true,
            };
            let (decision, _) = self
                .stage_for(Hook::Headers, args, Some(info.clone()), &rcpts, size)
                .await;
            if let Decision::Done(flow) = decision {
                return flow;
            }
        }

        // The milters' end of message: their edits are applied to the
        // message and the envelope before the eod hook sees them.
        let mut hold = false;
        if let Some(out) = self.milter_eom(&info, &body).await {
            if let Verdict::Refuse { reply, milter } = &out.verdict {
                let why = format!("milter {milter}");
                return self.refuse(&why, &info, reply, false, &rcpts, size);
            }
            if let Some(m) = &out.discard {
                return self.discard(&info, &format!("discarded by milter {m}"), size);
            }
            if let Some(m) = out.message.clone() {
                size = m.len() as u64;
                body = Bytes::from(m);
            }
            if let Some(s) = &out.sender {
                info.senderaddress = Address::split(s);
                info.sender = s.clone();
            }
            info.recipients
                .retain(|r| !out.del_rcpts.contains(&r.recipient));
            for r in &out.add_rcpts {
                if !info.recipients.iter().any(|x| x.recipient == *r) {
                    info.recipients.push(RecipientInfo {
                        address: Address::split(r),
                        recipient: r.clone(),
                        transportid: "default".into(),
                        ..Default::default()
                    });
                }
            }
            if info.recipients.is_empty() {
                return self.discard(&info, "every recipient removed by the milters", size);
            }
            if let Some((m, reason)) = &out.quarantine {
                info!(conn = %self.info.id, tx = %info.id, milter = %m, reason = %reason, "quarantined by milter: queued on hold");
                hold = true;
                self.tx_trace
                    .push(format!("milter {m}: quarantine {reason}"));
            }
            info.milters = Some(out.to_json());
        }
        let allowed = info.recipient_list();

        let result = if !self.ctx.policy.has_hook(Hook::Eod) {
            // The built-in eod: our Authentication-Results, then every
            // recipient to its transport, natively.
            let body = if self.ctx.config.auth.results {
                self.stamp_results(&info, &body).await
            } else {
                body
            };
            self.queue_message(&info, body, size, hold)
                .await
                .map(|ids| (ids, None))
        } else {
            let args = HookArguments::Mail {
                message: body.clone(),
                headers_only: false,
            };
            let Some(out) = self.run_hook(Hook::Eod, args, Some(info.clone())).await else {
                return Flow::Continue;
            };
            let (reply, custom) = match out.verdict {
                HookVerdict::Accept { reply, custom, .. } => (reply, custom),
                HookVerdict::Reject { reply, disconnect }
                | HookVerdict::Defer { reply, disconnect }
                | HookVerdict::Reply {
                    reply, disconnect, ..
                } => {
                    return self.refuse("eod policy", &info, &reply, disconnect, &rcpts, size);
                }
                HookVerdict::Pass { .. } => {
                    let reply = Hook::Eod.spec().defer.reply();
                    return self.refuse("eod policy", &info, &reply, false, &rcpts, size);
                }
            };
            // The relay rule holds for recipients the script added.
            if let Some(q) = out
                .queued
                .iter()
                .find(|q| !allowed.contains(&q.recipient) && !self.relay_permits(&q.recipient))
            {
                warn!(
                    conn = %self.info.id, tx = %info.id, to = %q.recipient,
                    "eod script queued a recipient the relay rule refuses: nothing queued"
                );
                // Answered like an eod script error: 451, nothing queued.
                let spec = Hook::Eod.spec();
                let reply = spec.on_error.reply().unwrap_or_else(|| spec.defer.reply());
                return self.refuse("relay rule (eod)", &info, &reply, false, &rcpts, size);
            }
            let mut queued = out.queued;
            if hold {
                for q in &mut queued {
                    q.hold = true;
                }
            }
            self.queue_requests(&info, &queued, size)
                .await
                .map(|ids| (ids, custom.then_some(reply)))
        };
        match result {
            Ok((ids, reply)) => {
                self.messages += 1;
                info!(
                    conn = %self.info.id, tx = %info.id, from = %info.sender,
                    nrcpt = info.recipients.len(), size, queue = %ids.join(","),
                    "queued"
                );
                self.record_received(&info, &ids, size, &body_message_id);
                match reply {
                    // A script's own text stays; the default one gets the ids.
                    Some(r) => self.reply(&r),
                    None if ids.is_empty() => self.send(250, "2.0.0", "Ok"),
                    None => self.send(250, "2.0.0", &format!("Ok: queued as {}", ids.join(","))),
                }
            }
            Err(e) => {
                warn!(conn = %self.info.id, tx = %info.id, error = %e, "queue write failed: 451");
                let reply = SmtpReply::with(
                    451,
                    "4.3.0",
                    "Temporary failure writing the queue, try again later",
                );
                return self.refuse("queue write", &info, &reply, false, &rcpts, size);
            }
        }
        Flow::Continue
    }

    /// A milter discarded the message: 250 to the client, nothing queued,
    /// a DELETE record per recipient saying who discarded it.
    fn discard(&mut self, info: &TransactionInfo, reason: &str, size: u64) -> Flow {
        info!(conn = %self.info.id, tx = %info.id, from = %info.sender,
            nrcpt = info.recipients.len(), size, reason, "discarded");
        let origin = self.origin();
        let recs: Vec<HistoryRecord> = info
            .recipients
            .iter()
            .map(|r| {
                HistoryRecord::scripted(
                    &origin,
                    &info.id,
                    &info.sender,
                    HistoryAction::Delete,
                    &r.recipient,
                    &r.transportid,
                    reason,
                    BTreeMap::new(),
                )
            })
            .collect();
        self.ctx.store.append_history_background(recs);
        self.send(250, "2.0.0", "Ok");
        Flow::Continue
    }

    /// The built-in content rules (RFC 5321 §2.3.8, §4.5.3.1.6, §6.3).
    pub(super) fn content_rejection(&self, builder: &MessageBuilder) -> Option<SmtpReply> {
        let limits = &self.ctx.config.limits;
        let f = &builder.flags;
        let (code, enh, text) = if f.too_big {
            (
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size".to_string(),
            )
        } else if f.header_too_big {
            (
                552,
                "5.3.4",
                format!(
                    "Message header too large (limit {} bytes)",
                    limits.header_size
                ),
            )
        } else if f.too_many_header_lines {
            (
                554,
                "5.6.0",
                format!("Too many header lines (limit {})", limits.header_lines),
            )
        } else if f.nul {
            (550, "5.6.0", "Message contains NUL characters".to_string())
        } else if (f.bare_lf || f.bare_cr)
            && self.ctx.config.smtp.bare_line_ending == BareLineEnding::Reject
        {
            (
                550,
                "5.6.11",
                "Message contains bare CR or LF characters (RFC 5321 section 2.3.8)".to_string(),
            )
        } else if f.long_line {
            (
                550,
                "5.6.0",
                format!(
                    "Message contains a line longer than {} characters",
                    limits.data_line_length
                ),
            )
        } else if builder.received > self.max_received_headers() {
            (
                554,
                "5.4.6",
                "Too many Received headers: mail loop detected".to_string(),
            )
        } else if f.no_memory {
            // Nothing wrong with the message: too much mail arriving at
            // once. Temporary; the log line says which limit.
            crate::metrics::data_memory_refusal();
            warn!(
                conn = %self.info.id,
                data_memory = limits.data_memory,
                in_use = self.ctx.data_memory.used(),
                "452 4.3.1: [limits] data_memory spent by the messages being received"
            );
            (
                452,
                "4.3.1",
                "Insufficient system resources: too much mail in transit, try again later"
                    .to_string(),
            )
        } else {
            return None;
        };
        Some(SmtpReply::with(code, enh, text))
    }

    /// One RECEIVED record per accepted message: who sent it, how, and what
    /// every hook decided — the start of `sluice trace`.
    pub(super) fn record_received(
        &mut self,
        info: &TransactionInfo,
        ids: &[String],
        size: u64,
        message_id: &Option<String>,
    ) {
        let mut metadata = std::collections::BTreeMap::new();
        let mut steps = self.conn_trace.clone();
        steps.append(&mut self.tx_trace);
        if !steps.is_empty() {
            metadata.insert("hooks".to_string(), steps.join("; "));
        }
        if let Some(h) = &self.info.helo {
            metadata.insert("helo".to_string(), h.host.clone());
        }
        if let Some(t) = &self.info.tls {
            metadata.insert("tls".to_string(), format!("{} {}", t.protocol, t.cipher));
        }
        if let Some(a) = &self.info.auth {
            metadata.insert("auth".to_string(), a.username.clone());
        }
        metadata.insert("queue_ids".to_string(), ids.join(","));
        let recipients: Vec<&str> = info
            .recipients
            .iter()
            .map(|r| r.recipient.as_str())
            .collect();
        let rec = HistoryRecord::received(
            &self.origin(),
            &info.id,
            &info.sender,
            &recipients,
            ids,
            message_id.clone(),
            size,
            metadata,
        );
        // Off the reply path, batched with other sessions' records.
        self.ctx.store.append_history_background(vec![rec]);
    }

    /// Commit what an eod script queued: one entry per `mail:queue` call,
    /// bodies shared between calls that queued the same bytes.
    pub(super) async fn queue_requests(
        &self,
        info: &TransactionInfo,
        reqs: &[QueueRequest],
        size: u64,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client_info();
        let mut msgs: Vec<NewMessage> = Vec::new();
        let mut ids = Vec::new();
        for q in reqs {
            let idx = match msgs.iter().position(|m| {
                m.body.as_ptr() == q.message.as_ptr() && m.body.len() == q.message.len()
            }) {
                Some(i) => i,
                None => {
                    msgs.push(NewMessage {
                        body_id: crate::ids::new_id(),
                        body: q.message.clone(),
                        entries: Vec::new(),
                    });
                    msgs.len() - 1
                }
            };
            let notify = q
                .dsn
                .notify
                .as_deref()
                .map(|n| {
                    n.split(',')
                        .map(|s| s.trim().to_ascii_uppercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let orcpt = q.dsn.orcpt.as_deref().and_then(|o| {
                o.split_once(';')
                    .map(|(t, a)| (t.to_ascii_lowercase(), a.to_string()))
            });
            let recipients = vec![QueuedRecipient {
                recipient: q.recipient.clone(),
                transportid: q.transportid.clone(),
                dsn: RecipientDsn { notify, orcpt },
            }];
            let entry_size = size.max(q.message.len() as u64);
            let mut e = QueueEntry::accepted(
                &info.id,
                &q.sender,
                recipients,
                &q.transportid,
                &msgs[idx].body_id,
                entry_size,
            );
            e.id = q.queue_id.clone();
            e.dsn = MessageDsn {
                ret: q.dsn.ret.clone().or_else(|| info.dsn.ret.clone()),
                envid: q.dsn.envid.clone().or_else(|| info.dsn.envid.clone()),
            };
            e.metadata = q.metadata.clone();
            e.jobid = q.jobid.clone();
            e.control.overquota = q.overquota;
            e.smtputf8 = info.smtputf8;
            e.eight_bit = info.eight_bit;
            e.client = client.clone();
            e.message_id = message_id_of(&q.message);
            if q.hold {
                e = e.held();
            }
            if let Some(d) = q.delay {
                e = e.delayed(d);
            }
            msgs[idx].entries.push(e);
            ids.push(q.queue_id.clone());
        }
        self.commit(&info.id, &msgs).await?;
        Ok(ids)
    }

    pub(super) fn client_info(&self) -> ClientInfo {
        ClientInfo {
            ip: self.info.remoteip.clone(),
            port: self.info.remoteport,
            ptr: self.info.remoteptr.clone(),
            helo: self.info.helo.as_ref().map(|h| h.host.clone()),
            serverid: self.info.serverid.clone(),
            tls: self
                .info
                .tls
                .as_ref()
                .map(|t| format!("{} {}", t.protocol, t.cipher)),
            auth: self.info.auth.as_ref().map(|a| a.username.clone()),
            connection: self.info.id.clone(),
        }
    }

    /// One queue entry per transport, sharing one body; fsync'd on return.
    /// `[auth] results`: the message with our Authentication-Results on top
    /// and every incoming one claiming our authserv-id removed. A check that
    /// cannot run (an unparsable message, no resolver) adds nothing, but the
    /// forged results still go.
    async fn stamp_results(&self, info: &TransactionInfo, body: &Bytes) -> Bytes {
        let spf = crate::scan::auth::SpfRequest {
            ip: self
                .info
                .remoteip
                .parse()
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            helo: self
                .info
                .helo
                .as_ref()
                .map(|h| h.host.clone())
                .unwrap_or_default(),
            sender: info.sender.clone(),
        };
        let ours = match self.ctx.policy.authentication_results(body, &spf).await {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(conn = %self.info.id, tx = %info.id, error = %e, "Authentication-Results not added");
                None
            }
        };
        let id = self.ctx.policy.authserv_id();
        Bytes::from(crate::scan::auth::stamp_results(body, &id, ours.as_deref()))
    }

    pub(super) async fn queue_message(
        &self,
        info: &TransactionInfo,
        body: Bytes,
        size: u64,
        hold: bool,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        let mut by_transport: BTreeMap<String, Vec<QueuedRecipient>> = BTreeMap::new();
        for r in &info.recipients {
            by_transport
                .entry(r.transportid.clone())
                .or_default()
                .push(QueuedRecipient {
                    recipient: r.recipient.clone(),
                    transportid: r.transportid.clone(),
                    dsn: r.dsn.clone(),
                });
        }
        let body_id = crate::ids::new_id();
        let message_id = message_id_of(&body);
        let client = self.client_info();
        let entries: Vec<QueueEntry> = by_transport
            .into_iter()
            .map(|(transportid, recipients)| {
                let mut e = QueueEntry::accepted(
                    &info.id,
                    &info.sender,
                    recipients,
                    &transportid,
                    &body_id,
                    size,
                );
                e.dsn = info.dsn.clone();
                e.smtputf8 = info.smtputf8;
                e.eight_bit = info.eight_bit;
                e.client = client.clone();
                e.message_id = message_id.clone();
                if hold {
                    e = e.held();
                }
                e
            })
            .collect();
        let ids = entries.iter().map(|e| e.id.clone()).collect();
        let msg = NewMessage {
            body_id,
            body,
            entries,
        };
        self.commit(&info.id, std::slice::from_ref(&msg)).await?;
        Ok(ids)
    }

    /// Commit the transaction's messages; its RECEIVED record (written
    /// later, in the background) is marked pending first so that no
    /// delivery outcome lands in the history before it.
    async fn commit(
        &self,
        transaction: &str,
        msgs: &[NewMessage],
    ) -> Result<(), crate::store::StoreError> {
        self.ctx.store.expect_received(transaction);
        let committed = self.ctx.store.commit_messages(msgs).await;
        if committed.is_err() {
            self.ctx.store.received_gone(transaction);
        }
        committed
    }
}

/// The Message-ID header's value, if the header block has one.
pub fn message_id_of(raw: &[u8]) -> Option<String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(raw.len());
    let headers = &raw[..end];
    let mut i = 0;
    while i < headers.len() {
        let line_end = headers[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| i + p)
            .unwrap_or(headers.len());
        let line = &headers[i..line_end];
        if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            let mut v = String::from_utf8_lossy(&line[11..]).trim().to_string();
            // Folded continuation lines.
            let mut j = line_end + 2;
            while j < headers.len() && (headers[j] == b' ' || headers[j] == b'\t') {
                let e = headers[j..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map(|p| j + p)
                    .unwrap_or(headers.len());
                v.push_str(String::from_utf8_lossy(&headers[j..e]).trim());
                j = e + 2;
            }
            let v = v.trim_start_matches('<').trim_end_matches('>').to_string();
            return if v.is_empty() { None } else { Some(v) };
        }
        i = line_end + 2;
    }
    None
}
