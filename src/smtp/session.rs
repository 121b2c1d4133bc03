//! One SMTP session: the RFC 5321 state machine for a single connection.
//! Reads commands (pipelined input included), answers with enhanced status
//! codes, reads DATA/BDAT content through the smuggling-safe decoder, and
//! hands accepted messages to the queue, replying 250 only once they are
//! fsync'd. Policy decisions go through [`Session::policy_*`] methods.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::command::{self, Command, ParseError};
use super::data::{DataProgress, DotDecoder, MessageBuilder};
use super::io::{Conn, IoError, Line, Stream};
use super::reply::SmtpReply;
use super::server::{Phase, ServerContext};
use crate::config::{BareLineEnding, ListenerConfig, ListenerTls};
use crate::envelope::{
    Address, ConnectionInfo, HeloInfo, MessageDsn, RecipientDsn, RecipientInfo, TransactionInfo,
};
use crate::store::queue::{ClientInfo, NewMessage, QueueEntry, QueueState, QueuedRecipient};

/// How a step of the session ends.
enum Flow {
    Continue,
    Close,
}

struct Transaction {
    info: TransactionInfo,
    /// Content received so far through BDAT.
    chunks: Option<MessageBuilder>,
}

pub struct Session {
    ctx: Arc<ServerContext>,
    listener: Arc<ListenerConfig>,
    conn: Conn,
    info: ConnectionInfo,
    /// EHLO (not HELO) was used: extensions are on.
    extended: bool,
    tx: Option<Transaction>,
    errors: usize,
    /// The connection's `context` table for scripts (plain data).
    pub context: serde_json::Value,
    messages: usize,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn has_non_ascii(s: &str) -> bool {
    !s.is_ascii()
}

impl Session {
    pub fn new(
        ctx: Arc<ServerContext>,
        listener: Arc<ListenerConfig>,
        conn: Conn,
        id: String,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Session {
        let tls = match &conn.stream {
            Stream::Tls(s) => Some(crate::tls::session_info(s.get_ref().1)),
            _ => None,
        };
        let info = ConnectionInfo {
            id,
            remoteip: peer.ip().to_canonical().to_string(),
            remoteport: peer.port(),
            remoteptr: None,
            localip: local.ip().to_canonical().to_string(),
            localport: local.port(),
            serverid: listener.id.clone(),
            helo: None,
            tls,
            auth: None,
        };
        Session {
            ctx,
            listener,
            conn,
            info,
            extended: false,
            tx: None,
            errors: 0,
            context: serde_json::Value::Object(Default::default()),
            messages: 0,
        }
    }

    fn reply(&mut self, r: &SmtpReply) {
        debug!(conn = %self.info.id, reply = %r, "reply");
        self.conn.queue_reply(&r.render(true));
    }

    fn send(&mut self, code: u16, enhanced: &str, text: &str) {
        let r = SmtpReply::with(code, enhanced, text);
        self.reply(&r);
    }

    /// A client error: counted, and past the limit the session ends.
    fn error(&mut self, code: u16, enhanced: &str, text: &str) -> Flow {
        self.send(code, enhanced, text);
        self.errors += 1;
        if self.errors >= self.ctx.config.limits.errors {
            info!(conn = %self.info.id, errors = self.errors, "too many errors: disconnecting");
            self.send(421, "4.7.0", "Too many errors, closing connection");
            return Flow::Close;
        }
        Flow::Continue
    }

    fn tx_id(&self) -> &str {
        self.tx.as_ref().map(|t| t.info.id.as_str()).unwrap_or("-")
    }

    pub async fn run(mut self) {
        let started = std::time::Instant::now();
        info!(
            conn = %self.info.id,
            client = %format!("{}:{}", self.info.remoteip, self.info.remoteport),
            listener = %self.info.serverid,
            tls = self.info.tls.is_some(),
            "connect"
        );
        let banner = format!(
            "{} {}",
            self.ctx.config.hostname, self.ctx.config.smtp.banner
        );
        self.conn
            .queue_reply(&SmtpReply::new(220, None, banner).render(false));
        let end = self.command_loop().await;
        self.conn.shutdown().await;
        info!(
            conn = %self.info.id,
            messages = self.messages,
            errors = self.errors,
            duration_ms = started.elapsed().as_millis() as u64,
            end = end,
            "disconnect"
        );
    }

    /// Returns why the session ended (for the disconnect log line).
    async fn command_loop(&mut self) -> &'static str {
        let mut phase = self.ctx.phase.clone();
        loop {
            if *phase.borrow() != Phase::Running {
                self.send(421, "4.3.2", "Service shutting down, closing connection");
                return "shutdown";
            }
            let max = self.ctx.config.limits.command_line_length;
            let timeout = self.ctx.config.limits.command_timeout;
            let line = tokio::select! {
                l = self.conn.read_line(max, timeout) => l,
                _ = phase.wait_for(|p| *p != Phase::Running) => {
                    self.send(421, "4.3.2", "Service shutting down, closing connection");
                    return "shutdown";
                }
            };
            let line = match line {
                Ok(Line::Text(l)) => l,
                Ok(Line::TooLong) => match self.error(500, "5.5.2", "Line too long") {
                    Flow::Continue => continue,
                    Flow::Close => return "errors",
                },
                Err(IoError::Timeout) => {
                    info!(conn = %self.info.id, "command timeout");
                    self.send(421, "4.4.2", "Timeout exceeded, closing connection");
                    return "timeout";
                }
                Err(IoError::Eof) => return "eof",
                Err(e) => {
                    debug!(conn = %self.info.id, error = %e, "read error");
                    return "io-error";
                }
            };
            let flow = match String::from_utf8(line) {
                Ok(s) if !s.contains('\0') => self.dispatch(&s).await,
                _ => self.error(500, "5.5.2", "Invalid characters in command"),
            };
            if let Flow::Close = flow {
                return "closed";
            }
        }
    }

    async fn dispatch(&mut self, line: &str) -> Flow {
        debug!(conn = %self.info.id, tx = %self.tx_id(), command = %line, "command");
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(ParseError::Unknown(v)) => {
                debug!(conn = %self.info.id, verb = %v, "unknown command");
                return self.error(500, "5.5.1", "Command unrecognized");
            }
            Err(ParseError::Syntax(why)) => {
                // A BDAT we cannot parse has an unknown size: we cannot stay in sync.
                if command::verb_of(line) == "BDAT" {
                    self.send(501, "5.5.4", why);
                    return Flow::Close;
                }
                return self.error(501, "5.5.4", &format!("Syntax error: {why}"));
            }
            Err(ParseError::BadAddress(why)) => {
                let enh = if command::verb_of(line) == "MAIL" {
                    "5.1.7"
                } else {
                    "5.1.3"
                };
                return self.error(501, enh, &format!("Bad address syntax: {why}"));
            }
        };
        match cmd {
            Command::Ehlo(host) => self.cmd_helo("EHLO", host),
            Command::Helo(host) => self.cmd_helo("HELO", host),
            Command::Mail { address, params } => self.cmd_mail(address, params),
            Command::Rcpt { address, params } => self.cmd_rcpt(address, params),
            Command::Data => self.cmd_data().await,
            Command::Bdat { size, last } => self.cmd_bdat(size, last).await,
            Command::Rset => {
                self.tx = None;
                self.send(250, "2.0.0", "OK");
                Flow::Continue
            }
            Command::Noop => {
                self.send(250, "2.0.0", "OK");
                Flow::Continue
            }
            Command::Quit => {
                self.send(221, "2.0.0", "Bye");
                Flow::Close
            }
            Command::Vrfy(_) => {
                self.send(
                    252,
                    "2.1.5",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                );
                Flow::Continue
            }
            Command::Expn(_) => {
                self.send(502, "5.5.1", "EXPN not available");
                Flow::Continue
            }
            Command::Help(_) => {
                self.send(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
                );
                Flow::Continue
            }
            Command::StartTls => self.cmd_starttls().await,
            Command::Auth { .. } => self.error(502, "5.5.1", "AUTH not available"),
        }
    }

    fn starttls_available(&self) -> bool {
        self.listener.tls == ListenerTls::Starttls
            && self.info.tls.is_none()
            && self.ctx.tls.get().is_some()
    }

    fn cmd_helo(&mut self, verb: &str, host: String) -> Flow {
        self.tx = None;
        self.extended = verb == "EHLO";
        self.info.helo = Some(HeloInfo {
            verb: verb.to_string(),
            host: host.clone(),
        });
        let cfg = &self.ctx.config;
        let greet = format!("{} Hello {}", cfg.hostname, host);
        let reply = if self.extended {
            let mut lines = vec![
                greet,
                "PIPELINING".to_string(),
                format!("SIZE {}", cfg.limits.message_size),
                "8BITMIME".to_string(),
                "SMTPUTF8".to_string(),
                "ENHANCEDSTATUSCODES".to_string(),
                "CHUNKING".to_string(),
                "DSN".to_string(),
            ];
            if self.starttls_available() {
                lines.push("STARTTLS".to_string());
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
        self.conn.queue_reply(&reply.render(false));
        Flow::Continue
    }

    fn cmd_mail(&mut self, address: String, params: Vec<(String, String)>) -> Flow {
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
        if has_non_ascii(&address) && !smtputf8 {
            return self.error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        let sender = address.to_lowercase();
        let info = TransactionInfo {
            id: crate::ids::new_id(),
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
        };
        debug!(conn = %self.info.id, tx = %info.id, from = %info.sender, "mail from");
        self.tx = Some(Transaction { info, chunks: None });
        self.send(250, "2.1.0", "Sender OK");
        Flow::Continue
    }

    fn relay_allowed(&self, domain: &str) -> bool {
        let cfg = &self.ctx.config.relay;
        let d = domain.trim_end_matches('.');
        let listed = cfg.domains.iter().any(|rd| {
            if let Some(suffix) = rd.strip_prefix('.') {
                d.len() > suffix.len()
                    && d.to_ascii_lowercase()
                        .ends_with(&suffix.to_ascii_lowercase())
                    && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
            } else {
                rd.eq_ignore_ascii_case(d)
            }
        });
        if listed {
            return true;
        }
        let Ok(ip) = self.info.remoteip.parse::<std::net::IpAddr>() else {
            return false;
        };
        cfg.trusted_networks.iter().any(|n| n.contains(&ip))
    }

    fn cmd_rcpt(&mut self, address: String, params: Vec<(String, String)>) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.error(503, "5.5.1", "Need MAIL command");
        };
        if tx.chunks.is_some() {
            return self.error(503, "5.5.1", "RCPT not allowed after BDAT");
        }
        if !params.is_empty() && !self.extended {
            return self.error(555, "5.5.4", "Parameters are not supported after HELO");
        }
        let smtputf8 = tx.info.smtputf8;
        let mut dsn = RecipientDsn::default();
        for (k, v) in &params {
            match k.as_str() {
                "NOTIFY" => {
                    let items: Vec<String> = v.split(',').map(|s| s.to_ascii_uppercase()).collect();
                    let valid = items
                        .iter()
                        .all(|i| matches!(i.as_str(), "NEVER" | "SUCCESS" | "FAILURE" | "DELAY"));
                    let never_alone = !items.iter().any(|i| i == "NEVER") || items.len() == 1;
                    let mut dedup = items.clone();
                    dedup.sort();
                    dedup.dedup();
                    if !valid || !never_alone || dedup.len() != items.len() {
                        return self.error(501, "5.5.4", "Malformed NOTIFY parameter");
                    }
                    dsn.notify = items;
                }
                "ORCPT" => {
                    let parsed = v.split_once(';').and_then(|(t, a)| {
                        let t = t.to_ascii_lowercase();
                        if (t == "rfc822" || t == "utf-8") && !a.is_empty() {
                            command::xtext_decode(a).map(|a| (t, a))
                        } else {
                            None
                        }
                    });
                    match parsed {
                        Some(p) => dsn.orcpt = Some(p),
                        None => return self.error(501, "5.5.4", "Malformed ORCPT parameter"),
                    }
                }
                _ => {
                    return self.error(555, "5.5.4", &format!("Unsupported parameter {k}"));
                }
            }
        }
        if has_non_ascii(&address) && !smtputf8 {
            return self.error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        if tx.info.recipients.len() >= self.ctx.config.limits.recipients {
            self.send(452, "4.5.3", "Too many recipients");
            return Flow::Continue;
        }
        let rcpt = address.to_lowercase();
        let addr = Address::split(&rcpt);
        let is_postmaster = addr.domain.is_empty();
        if !is_postmaster && !self.relay_allowed(&addr.domain) {
            info!(conn = %self.info.id, tx = %tx.info.id, to = %rcpt, "relay denied: 550");
            return self.error(550, "5.7.1", "Relaying denied");
        }
        let tx = self.tx.as_mut().expect("checked above");
        if !tx.info.recipients.iter().any(|r| r.recipient == rcpt) {
            tx.info.recipients.push(RecipientInfo {
                recipient: rcpt,
                address: addr,
                params: command::params_map(&params),
                transportid: "default".to_string(),
                dsn,
            });
        }
        self.send(250, "2.1.5", "Recipient OK");
        Flow::Continue
    }

    /// Our Received header (RFC 5321 §4.4, with-protocol per RFC 3848/6531).
    fn received_header(&self, tx: &TransactionInfo) -> Vec<u8> {
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

    fn new_builder(&self, tx: &TransactionInfo) -> MessageBuilder {
        let cfg = &self.ctx.config;
        MessageBuilder::new(
            &self.received_header(tx),
            cfg.limits.message_size,
            cfg.limits.data_line_length,
            cfg.smtp.bare_line_ending == BareLineEnding::Normalize,
        )
    }

    async fn cmd_data(&mut self) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.error(503, "5.5.1", "Need MAIL command");
        };
        if tx.chunks.is_some() {
            return self.error(503, "5.5.1", "DATA not allowed after BDAT");
        }
        if tx.info.recipients.is_empty() {
            return self.error(554, "5.5.1", "No valid recipients");
        }
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
                    let id = self.tx_id().to_string();
                    info!(conn = %self.info.id, tx = %id, "bare LF/CR dot line in DATA: 550, disconnecting");
                    self.tx = None;
                    self.send(
                        550,
                        "5.6.11",
                        "Message contains bare CR or LF characters; only <CRLF>.<CRLF> ends data",
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

    async fn cmd_bdat(&mut self, size: u64, last: bool) -> Flow {
        let timeout = self.ctx.config.limits.data_timeout;
        let usable = self.extended
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
            if self.tx.is_none() {
                return self.error(503, "5.5.1", "Need MAIL command");
            }
            return self.error(554, "5.5.1", "No valid recipients");
        }
        let tx = self.tx.as_mut().expect("checked above");
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
        if builder.flags.too_big {
            self.tx = None;
            self.send(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
            return Flow::Continue;
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

    fn io_failed(&mut self, e: IoError) -> Flow {
        if let IoError::Timeout = e {
            info!(conn = %self.info.id, "data timeout");
            self.send(421, "4.4.2", "Timeout exceeded, closing connection");
        }
        Flow::Close
    }

    async fn cmd_starttls(&mut self) -> Flow {
        if self.info.tls.is_some() {
            return self.error(503, "5.5.1", "TLS already active");
        }
        if !self.starttls_available() {
            return self.error(502, "5.5.1", "STARTTLS not available");
        }
        let Some(sc) = self.ctx.tls.get() else {
            return self.error(454, "4.7.0", "TLS not available");
        };
        self.send(220, "2.0.0", "Ready to start TLS");
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        // RFC 3207 §4.2 / CVE-2011-0411: whatever was pipelined after
        // STARTTLS arrived in clear text and must not be executed.
        let injected = self.conn.discard_input();
        if injected > 0 {
            warn!(conn = %self.info.id, bytes = injected, "discarded input sent before the TLS handshake");
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.conn.stream, Stream::Closed) else {
            return Flow::Close;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(sc);
        let hs = tokio::time::timeout(
            self.ctx.config.limits.handshake_timeout,
            acceptor.accept(tcp),
        )
        .await;
        match hs {
            Ok(Ok(tls)) => {
                let ti = crate::tls::session_info(tls.get_ref().1);
                info!(conn = %self.info.id, protocol = %ti.protocol, cipher = %ti.cipher, "starttls");
                self.info.tls = Some(ti);
                self.conn.stream = Stream::Tls(Box::new(tls));
                // RFC 3207 §4.2: forget everything learnt before TLS.
                self.info.helo = None;
                self.extended = false;
                self.tx = None;
                Flow::Continue
            }
            Ok(Err(e)) => {
                info!(conn = %self.info.id, error = %e, "TLS handshake failed");
                Flow::Close
            }
            Err(_) => {
                info!(conn = %self.info.id, "TLS handshake timeout");
                Flow::Close
            }
        }
    }

    /// End of data: check the content, queue it durably, answer.
    async fn finish_message(&mut self, builder: MessageBuilder) -> Flow {
        let Some(tx) = self.tx.take() else {
            return Flow::Continue;
        };
        let info = tx.info;
        let limits = &self.ctx.config.limits;
        let f = builder.flags;
        let rejection = if f.too_big {
            Some((
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size".to_string(),
            ))
        } else if f.nul {
            Some((550, "5.6.0", "Message contains NUL characters".to_string()))
        } else if (f.bare_lf || f.bare_cr)
            && self.ctx.config.smtp.bare_line_ending == BareLineEnding::Reject
        {
            Some((
                550,
                "5.6.11",
                "Message contains bare CR or LF characters (RFC 5321 section 2.3.8)".to_string(),
            ))
        } else if f.long_line {
            Some((
                550,
                "5.6.0",
                format!(
                    "Message contains a line longer than {} characters",
                    limits.data_line_length
                ),
            ))
        } else if builder.received > limits.received_headers {
            Some((
                554,
                "5.4.6",
                "Too many Received headers: mail loop detected".to_string(),
            ))
        } else {
            None
        };
        if let Some((code, enh, text)) = rejection {
            info!(
                conn = %self.info.id, tx = %info.id, from = %info.sender,
                nrcpt = info.recipients.len(), size = builder.size,
                reply = %format!("{code} {enh}"), "message rejected: {text}"
            );
            self.send(code, enh, &text);
            return Flow::Continue;
        }
        let size = builder.size;
        let body = Bytes::from(builder.body);
        match self.queue_message(&info, body, size).await {
            Ok(ids) => {
                self.messages += 1;
                info!(
                    conn = %self.info.id, tx = %info.id, from = %info.sender,
                    nrcpt = info.recipients.len(), size, queue = %ids.join(","),
                    "queued"
                );
                self.send(250, "2.0.0", &format!("Ok: queued as {}", ids.join(",")));
            }
            Err(e) => {
                warn!(conn = %self.info.id, tx = %info.id, error = %e, "queue write failed: 451");
                self.send(
                    451,
                    "4.3.0",
                    "Temporary failure writing the queue, try again later",
                );
            }
        }
        Flow::Continue
    }

    fn client_info(&self) -> ClientInfo {
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
    async fn queue_message(
        &self,
        info: &TransactionInfo,
        body: Bytes,
        size: u64,
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
        let now = now_secs();
        let mut entries = Vec::new();
        for (transportid, recipients) in by_transport {
            entries.push(QueueEntry {
                id: crate::ids::new_id(),
                transaction: info.id.clone(),
                state: QueueState::Queued,
                sender: info.sender.clone(),
                recipients,
                transportid,
                dsn: info.dsn.clone(),
                metadata: BTreeMap::new(),
                jobid: None,
                received_at: now,
                next_attempt: now,
                attempts: 0,
                size,
                body: body_id.clone(),
                smtputf8: info.smtputf8,
                eight_bit: info.eight_bit,
                client: self.client_info(),
                message_id: message_id.clone(),
                last_error: None,
            });
        }
        let ids = entries.iter().map(|e| e.id.clone()).collect();
        let msg = NewMessage {
            body_id,
            body,
            entries,
        };
        self.ctx
            .store
            .commit_messages(std::slice::from_ref(&msg))
            .await?;
        Ok(ids)
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
