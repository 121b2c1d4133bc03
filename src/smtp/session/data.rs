//! DATA and BDAT (RFC 3030): the data hook, our Received header, and reading
//! the content through the smuggling-safe decoder until the message ends.

use tracing::info;

use super::settings::Extension;
use super::{Decision, Flow, Session};
use crate::config::BareLineEnding;
use crate::envelope::TransactionInfo;
use crate::policy::{Hook, HookArguments};
use crate::proto::reply::SmtpReply;
use crate::scan::milter::Verdict;
use crate::smtp::data::{DataProgress, DotDecoder, MessageBuilder};
use crate::smtp::io::IoError;
use crate::smtp::server::Phase;

impl Session {
    pub(super) fn received_header(&self, tx: &TransactionInfo) -> Vec<u8> {
        let helo = self
            .info
            .helo
            .as_ref()
            .map(|h| h.host.as_str())
            .unwrap_or("unknown");
        let ptr = self.info.remoteptr.as_deref().unwrap_or("unknown");
        let ip = &self.info.remoteip;
        let ip_lit = if ip.contains(':') {
            format!("IPv6:{ip}")
        } else {
            ip.clone()
        };
        let mut proto = String::from(if tx.smtputf8 {
            "UTF8SMTP"
        } else if self.extended {
            "ESMTP"
        } else {
            "SMTP"
        });
        if self.info.tls.is_some() {
            proto.push('S');
        }
        if self.info.auth.is_some() {
            proto.push('A');
        }
        let mut h = format!(
            "Received: from {helo} ({ptr} [{ip_lit}])\r\n\tby {} (Sluice) with {proto} id {}",
            self.ctx.config.hostname, tx.id
        );
        if let Some(t) = &self.info.tls {
            h.push_str(&format!(
                "\r\n\t(using {} with cipher {} ({} bits))",
                t.protocol, t.cipher, t.keysize
            ));
        }
        if tx.recipients.len() == 1 {
            h.push_str(&format!("\r\n\tfor <{}>", tx.recipients[0].recipient));
        }
        h.push_str(&format!(
            ";\r\n\t{}\r\n",
            chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S +0000")
        ));
        h.into_bytes()
    }

    pub(super) fn new_builder(&self, tx: &TransactionInfo) -> MessageBuilder {
        let cfg = &self.ctx.config;
        MessageBuilder::new(
            &self.received_header(tx),
            self.max_message_size(),
            cfg.limits.data_line_length,
            cfg.smtp.bare_line_ending == BareLineEnding::Normalize,
        )
        .with_header_limits(cfg.limits.header_size, cfg.limits.header_lines)
        .with_memory(self.ctx.data_memory.clone())
    }

    pub(super) async fn cmd_data(&mut self) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.error(503, "5.5.1", "Need MAIL command");
        };
        if tx.chunks.is_some() {
            return self.error(503, "5.5.1", "DATA not allowed after BDAT");
        }
        if tx.info.recipients.is_empty() {
            return self.error(554, "5.5.1", "No valid recipients");
        }
        if let Some(flow) = self.data_stage().await {
            return flow;
        }
        let Some(tx) = self.tx.as_ref() else {
            return Flow::Continue;
        };
        let mut builder = self.new_builder(&tx.info);
        self.conn
            .queue_reply("354 End data with <CR><LF>.<CR><LF>\r\n");
        let reject_bare = self.ctx.config.smtp.bare_line_ending == BareLineEnding::Reject;
        let mut decoder = DotDecoder::new(reject_bare);
        let timeout = self.ctx.config.limits.data_timeout;
        let mut phase = self.ctx.phase.clone();
        loop {
            let (used, progress) = decoder.feed(self.conn.buffered(), &mut builder);
            self.conn.consume(used);
            match progress {
                DataProgress::End => break,
                DataProgress::SuspiciousEnd => {
                    // Nothing after this line can be trusted to be a command.
                    let Some(tx) = self.end_transaction() else {
                        return Flow::Close;
                    };
                    let reply = SmtpReply::with(
                        550,
                        "5.6.11",
                        "Message contains bare CR or LF characters; only <CRLF>.<CRLF> ends data",
                    );
                    let rcpts = tx.info.recipient_list();
                    self.refuse(
                        "smuggling check",
                        &tx.info,
                        &reply,
                        true,
                        &rcpts,
                        builder.size,
                    );
                    return Flow::Close;
                }
                DataProgress::More => {}
            }
            let filled = tokio::select! {
                r = self.conn.fill(timeout) => r,
                _ = phase.wait_for(|p| *p == Phase::Stopping) => {
                    self.send(421, "4.3.2", "Service shutting down, closing connection");
                    return Flow::Close;
                }
            };
            match filled {
                Ok(_) => {}
                Err(IoError::Timeout) => {
                    info!(conn = %self.info.id, "data timeout");
                    self.send(421, "4.4.2", "Timeout exceeded, closing connection");
                    return Flow::Close;
                }
                Err(_) => return Flow::Close,
            }
        }
        self.finish_message(builder).await
    }

    pub(super) async fn cmd_bdat(&mut self, size: u64, last: bool) -> Flow {
        let timeout = self.ctx.config.limits.data_timeout;
        let usable = self.extended
            && self.extension_allowed(Extension::Chunking)
            && self
                .tx
                .as_ref()
                .is_some_and(|t| !t.info.recipients.is_empty());
        if !usable {
            // The chunk must be read anyway, or its bytes would be taken as commands.
            if let Err(e) = self.conn.read_exact_into(size, timeout, |_| {}).await {
                return self.io_failed(e);
            }
            if !self.extended {
                return self.error(503, "5.5.1", "BDAT requires EHLO");
            }
            if !self.extension_allowed(Extension::Chunking) {
                return self.error(502, "5.5.1", "BDAT is not available in this session");
            }
            if self.tx.is_none() {
                return self.error(503, "5.5.1", "Need MAIL command");
            }
            return self.error(554, "5.5.1", "No valid recipients");
        }
        let first = self.tx.as_ref().is_some_and(|t| t.chunks.is_none());
        if first {
            if let Some(flow) = self.data_stage().await {
                // Refused: the chunk must still be consumed to stay in sync
                // (the refusal is this BDAT's one reply).
                if let Err(e) = self.conn.read_exact_into(size, timeout, |_| {}).await {
                    return self.io_failed(e);
                }
                return flow;
            }
        }
        let Some(tx) = self.tx.as_mut() else {
            return Flow::Continue;
        };
        let mut builder = match tx.chunks.take() {
            Some(b) => b,
            None => {
                let info = tx.info.clone();
                self.new_builder(&info)
            }
        };
        let r = self
            .conn
            .read_exact_into(size, timeout, |chunk| builder.push_slice(chunk))
            .await;
        if let Err(e) = r {
            return self.io_failed(e);
        }
        self.after_chunk(builder, size, last).await
    }

    /// A BDAT chunk is in: refuse an oversized message, keep a middle chunk,
    /// finish the message at the last one.
    pub(super) async fn after_chunk(
        &mut self,
        mut builder: MessageBuilder,
        size: u64,
        last: bool,
    ) -> Flow {
        if builder.flags.discarding() {
            // Over a limit: refused now, nothing of it kept.
            let Some(tx) = self.end_transaction() else {
                return Flow::Continue;
            };
            let reply = self
                .content_rejection(&builder)
                .unwrap_or_else(|| SmtpReply::with(552, "5.3.4", "Message too large"));
            let rcpts = tx.info.recipient_list();
            return self.refuse(
                "content check",
                &tx.info,
                &reply,
                false,
                &rcpts,
                builder.size,
            );
        }
        if !last {
            if let Some(tx) = self.tx.as_mut() {
                tx.chunks = Some(builder);
            }
            self.send(250, "2.0.0", &format!("{size} octets received"));
            return Flow::Continue;
        }
        builder.finish();
        self.finish_message(builder).await
    }

    pub(super) fn io_failed(&mut self, e: IoError) -> Flow {
        if let IoError::Timeout = e {
            info!(conn = %self.info.id, "data timeout");
            self.send(421, "4.4.2", "Timeout exceeded, closing connection");
        }
        Flow::Close
    }

    /// The data hook (on DATA or the first BDAT); `Some(flow)` when it refused
    /// (the transaction ends, every recipient's refusal is recorded).
    pub(super) async fn data_stage(&mut self) -> Option<Flow> {
        let info = self.tx.as_ref()?.info.clone();
        let rcpts = info.recipient_list();
        let (decision, _) = self
            .stage_for(Hook::Data, HookArguments::None, Some(info), &rcpts, 0)
            .await;
        if let Decision::Done(flow) = decision {
            self.reset_transaction();
            return Some(flow);
        }
        let info = self.tx.as_ref()?.info.clone();
        if let Verdict::Refuse { reply, milter } = self.milter_data(&info).await {
            self.reset_transaction();
            let why = format!("milter {milter}");
            return Some(self.refuse(&why, &info, &reply, false, &rcpts, 0));
        }
        None
    }
}
