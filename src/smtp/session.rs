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
use crate::envelope::AuthInfo;
use crate::envelope::{
    Address, ConnectionInfo, HeloInfo, MessageDsn, RecipientDsn, RecipientInfo, TransactionInfo,
};
use crate::policy::{Hook, HookArguments, HookInput, HookOutcome, HookVerdict, QueueRequest};
use crate::store::history::HistoryRecord;
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
    /// The proxy hook asked to see the next command line (`next = true`).
    proxy_next: bool,
    /// Hook verdicts of this connection (connect, helo, auth) and of the
    /// current transaction, for the RECEIVED history record `sluice trace` shows.
    conn_trace: Vec<String>,
    tx_trace: Vec<String>,
}

/// What the server does after a stage hook.
enum Decision {
    /// Go on; use this reply instead of the default one if given.
    Proceed(Option<SmtpReply>),
    /// The hook answered (reply already queued); stop here.
    Stop(Flow),
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
            proxy_next: false,
            conn_trace: Vec::new(),
            tx_trace: Vec::new(),
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
        if self.ctx.config.smtp.reverse_dns {
            if let Ok(ip) = self.info.remoteip.parse() {
                self.info.remoteptr = self.ctx.policy.fcrdns(ip).await;
            }
        }
        let banner = format!(
            "{} {}",
            self.ctx.config.hostname, self.ctx.config.smtp.banner
        );
        let end = match self.hook(Hook::Connect, HookArguments::None).await {
            Some(HookVerdict::Pass { .. }) | None => {
                self.conn
                    .queue_reply(&SmtpReply::new(220, None, banner).render(false));
                self.command_loop().await
            }
            Some(v) => {
                // The script's reply is the greeting; a refusal ends the session.
                let reply = v
                    .reply()
                    .cloned()
                    .unwrap_or_else(|| SmtpReply::with(554, "5.7.1", "Access denied"));
                if reply.is_positive() && !v.disconnect() {
                    self.conn.queue_reply(&reply.render(false));
                    self.command_loop().await
                } else {
                    info!(conn = %self.info.id, reply = %reply, "connection refused by policy");
                    self.conn.queue_reply(&reply.render(true));
                    "policy"
                }
            }
        };
        if self.ctx.policy.has_hook(Hook::Disconnect) {
            self.tx = None;
            let _ = self
                .run_hook(Hook::Disconnect, HookArguments::None, None)
                .await;
        }
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
                Ok(s) if !s.contains('\0') => match self.proxy(s).await {
                    Ok(cmd) => self.dispatch(&cmd).await,
                    Err(flow) => flow,
                },
                _ => self.error(500, "5.5.2", "Invalid characters in command"),
            };
            if let Flow::Close = flow {
                return "closed";
            }
        }
    }

    async fn dispatch(&mut self, line: &str) -> Flow {
        debug!(conn = %self.info.id, tx = %self.tx_id(), command = %line, "command");
        self.conn.metrics_command = crate::metrics::command_index(&command::verb_of(line));
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
            Command::Ehlo(host) => self.cmd_helo("EHLO", host).await,
            Command::Helo(host) => self.cmd_helo("HELO", host).await,
            Command::Mail { address, params } => self.cmd_mail(address, params).await,
            Command::Rcpt { address, params } => self.cmd_rcpt(address, params).await,
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
            Command::Auth { mechanism, initial } => self.cmd_auth(mechanism, initial).await,
        }
    }

    // ---- policy -------------------------------------------------------

    /// Run a hook if a script is configured for it; returns its verdict.
    async fn hook(&mut self, hook: Hook, arguments: HookArguments) -> Option<HookVerdict> {
        let tx = self.tx.as_ref().map(|t| t.info.clone());
        self.run_hook(hook, arguments, tx).await.map(|o| o.verdict)
    }

    /// Run a hook with an explicit `transaction` (MAIL FROM: not stored yet).
    async fn run_hook(
        &mut self,
        hook: Hook,
        arguments: HookArguments,
        transaction: Option<TransactionInfo>,
    ) -> Option<HookOutcome> {
        if !self.ctx.policy.has_hook(hook) {
            return None;
        }
        let txid = transaction.as_ref().map(|t| t.id.clone());
        let input = HookInput {
            connection: self.info.clone(),
            transaction,
            arguments,
            context: std::mem::take(&mut self.context),
        };
        let mut out = self.ctx.policy.run(hook, input).await;
        self.context = std::mem::take(&mut out.context);
        if let Some(e) = &out.error {
            warn!(conn = %self.info.id, tx = %txid.as_deref().unwrap_or("-"), hook = hook.spec().name, error = %e, "script error");
        }
        debug!(conn = %self.info.id, hook = hook.spec().name, verdict = ?out.verdict.kind(), "hook");
        let step = match out.verdict.reply() {
            Some(r) => format!("{}: {:?} {}", hook.spec().name, out.verdict.kind(), r),
            None => format!("{}: {:?}", hook.spec().name, out.verdict.kind()),
        };
        match hook {
            Hook::Connect | Hook::Helo | Hook::Auth => self.conn_trace.push(step),
            Hook::Proxy | Hook::Disconnect => {}
            _ => self.tx_trace.push(step),
        }
        if !out.history.is_empty() {
            let recs: Vec<HistoryRecord> = out
                .history
                .iter()
                .map(|h| HistoryRecord {
                    ts: now_secs(),
                    action: h.action.clone(),
                    transaction: txid.clone().unwrap_or_default(),
                    sender: h.sender.clone().unwrap_or_else(|| {
                        self.tx
                            .as_ref()
                            .map(|t| t.info.sender.clone())
                            .unwrap_or_default()
                    }),
                    recipient: h.recipient.clone(),
                    transportid: h.transportid.clone().unwrap_or_default(),
                    reason: h.reason.clone().unwrap_or_default(),
                    metadata: h.metadata.clone(),
                    ..self.history_base()
                })
                .collect();
            if let Err(e) = self.ctx.store.append_history(&recs) {
                warn!(conn = %self.info.id, error = %e, "history write failed");
            }
        }
        Some(out)
    }

    /// One RECEIVED record per accepted message: who sent it, how, and what
    /// every hook decided — the start of `sluice trace`.
    fn record_received(
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
        let rec = HistoryRecord {
            action: "RECEIVED".into(),
            id: ids.first().cloned().unwrap_or_default(),
            transaction: info.id.clone(),
            message_id: message_id.clone(),
            sender: info.sender.clone(),
            recipient: info
                .recipients
                .iter()
                .map(|r| r.recipient.as_str())
                .collect::<Vec<_>>()
                .join(","),
            size,
            reason: format!("queued as {}", ids.join(",")),
            metadata,
            ..self.history_base()
        };
        // Off the reply path, batched with other sessions' records.
        self.ctx.store.append_history_background(vec![rec]);
    }

    fn history_base(&self) -> HistoryRecord {
        HistoryRecord {
            ts: now_secs(),
            client_ip: self.info.remoteip.clone(),
            serverid: self.info.serverid.clone(),
            connection: self.info.id.clone(),
            ..Default::default()
        }
    }

    /// A REJECT history record per recipient refused at SMTP time.
    fn record_reject(
        &self,
        tx: Option<&TransactionInfo>,
        recipients: &[String],
        size: u64,
        reply: &SmtpReply,
    ) {
        let recs: Vec<HistoryRecord> = recipients
            .iter()
            .map(|r| HistoryRecord {
                action: "REJECT".into(),
                transaction: tx.map(|t| t.id.clone()).unwrap_or_default(),
                sender: tx.map(|t| t.sender.clone()).unwrap_or_default(),
                recipient: r.clone(),
                size,
                reason: reply.to_string(),
                ..self.history_base()
            })
            .collect();
        // Rejections are most of an edge MX's traffic: keep them off the reply path.
        self.ctx.store.append_history_background(recs);
    }

    /// Turn a stage hook's verdict into what the server does next.
    fn decide(&mut self, verdict: Option<HookVerdict>) -> Decision {
        match verdict {
            None | Some(HookVerdict::Pass { .. }) => Decision::Proceed(None),
            Some(HookVerdict::Accept { reply }) => Decision::Proceed(Some(reply)),
            Some(HookVerdict::Reply {
                reply, disconnect, ..
            }) if reply.is_positive() && !disconnect => Decision::Proceed(Some(reply)),
            Some(v) => {
                let reply = v
                    .reply()
                    .cloned()
                    .unwrap_or_else(|| SmtpReply::with(550, "5.7.1", "Rejected"));
                debug!(conn = %self.info.id, tx = %self.tx_id(), reply = %reply, "refused by policy");
                self.reply(&reply);
                Decision::Stop(if v.disconnect() {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
        }
    }

    /// The proxy hook: may rewrite the command line or answer it itself.
    async fn proxy(&mut self, line: String) -> Result<String, Flow> {
        let verb = command::verb_of(&line);
        let known = command::KNOWN_VERBS.contains(&verb.as_str());
        if !self.proxy_next && !self.ctx.policy.proxy_wants(&verb, known) {
            return Ok(line);
        }
        self.proxy_next = false;
        let args = HookArguments::Proxy {
            command: line.clone(),
        };
        match self.hook(Hook::Proxy, args).await {
            None => Ok(line),
            Some(HookVerdict::Pass { command, next }) => {
                self.proxy_next = next;
                Ok(command.unwrap_or(line))
            }
            Some(HookVerdict::Reply {
                reply,
                disconnect,
                next,
            }) => {
                self.proxy_next = next;
                self.reply(&reply);
                Err(if disconnect {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
            Some(v) => {
                if let Some(r) = v.reply() {
                    let r = r.clone();
                    self.reply(&r);
                }
                Err(if v.disconnect() {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
        }
    }

    fn auth_available(&self) -> bool {
        self.info.tls.is_some() && self.ctx.policy.has_hook(Hook::Auth)
    }

    /// Send a 334 challenge and read the client's answer (base64 text).
    async fn sasl_challenge(&mut self, challenge: &str) -> Result<String, Flow> {
        self.conn.queue_reply(&format!("334 {challenge}\r\n"));
        let max = self.ctx.config.limits.command_line_length.max(12288);
        match self
            .conn
            .read_line(max, self.ctx.config.limits.command_timeout)
            .await
        {
            Ok(Line::Text(l)) => Ok(String::from_utf8_lossy(&l).trim().to_string()),
            Ok(Line::TooLong) => {
                Err(self.error(500, "5.5.6", "Authentication exchange line is too long"))
            }
            Err(IoError::Timeout) => {
                self.send(421, "4.4.2", "Timeout exceeded, closing connection");
                Err(Flow::Close)
            }
            Err(_) => Err(Flow::Close),
        }
    }

    async fn cmd_auth(&mut self, mechanism: String, initial: Option<String>) -> Flow {
        use base64::Engine;
        if !self.auth_available() || !self.extended {
            return self.error(503, "5.5.1", "AUTH not available");
        }
        if self.info.auth.is_some() {
            return self.error(503, "5.5.1", "Already authenticated");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "AUTH not allowed during a mail transaction");
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| -> Option<String> {
            if s == "=" {
                return Some(String::new());
            }
            b64.decode(s).ok().and_then(|v| String::from_utf8(v).ok())
        };
        let (username, password) = match mechanism.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(i) => i,
                    None => match self.sasl_challenge("").await {
                        Ok(r) => r,
                        Err(f) => return f,
                    },
                };
                if resp == "*" {
                    return self.error(501, "5.0.0", "Authentication cancelled");
                }
                let Some(text) = decode(&resp) else {
                    return self.error(501, "5.5.2", "Invalid base64 data");
                };
                let parts: Vec<&str> = text.split('\0').collect();
                if parts.len() != 3 || parts[1].is_empty() {
                    return self.error(501, "5.5.2", "Malformed PLAIN response");
                }
                (parts[1].to_string(), parts[2].to_string())
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => i,
                    None => match self.sasl_challenge("VXNlcm5hbWU6").await {
                        Ok(r) => r,
                        Err(f) => return f,
                    },
                };
                if user == "*" {
                    return self.error(501, "5.0.0", "Authentication cancelled");
                }
                let pass = match self.sasl_challenge("UGFzc3dvcmQ6").await {
                    Ok(r) => r,
                    Err(f) => return f,
                };
                if pass == "*" {
                    return self.error(501, "5.0.0", "Authentication cancelled");
                }
                match (decode(&user), decode(&pass)) {
                    (Some(u), Some(p)) => (u, p),
                    _ => return self.error(501, "5.5.2", "Invalid base64 data"),
                }
            }
            _ => return self.error(504, "5.5.4", "Unrecognized authentication type"),
        };
        let args = HookArguments::Auth {
            mechanism: mechanism.clone(),
            username: username.clone(),
            password,
        };
        match self.hook(Hook::Auth, args).await {
            Some(HookVerdict::Accept { reply }) => {
                info!(conn = %self.info.id, mechanism = %mechanism, user = %username, "authenticated");
                self.info.auth = Some(AuthInfo {
                    mechanism,
                    username,
                });
                self.reply(&reply);
                Flow::Continue
            }
            Some(v) => {
                let reply = v.reply().cloned().unwrap_or_else(|| {
                    SmtpReply::with(535, "5.7.8", "Authentication credentials invalid")
                });
                info!(conn = %self.info.id, mechanism = %mechanism, user = %username, reply = %reply, "authentication failed");
                self.reply(&reply);
                self.errors += 1;
                if v.disconnect() || self.errors >= self.ctx.config.limits.errors {
                    self.send(421, "4.7.0", "Too many errors, closing connection");
                    return Flow::Close;
                }
                Flow::Continue
            }
            None => self.error(503, "5.5.1", "AUTH not available"),
        }
    }

    /// An Axigen policy set this session switch to "no" (context.axigen.session).
    fn policy_switched_off(&self, key: &str) -> bool {
        self.context
            .pointer(&format!("/axigen/session/{key}"))
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
    }

    fn starttls_available(&self) -> bool {
        self.listener.tls == ListenerTls::Starttls
            && self.info.tls.is_none()
            && self.ctx.tls.get().is_some()
    }

    async fn cmd_helo(&mut self, verb: &str, host: String) -> Flow {
        self.tx = None;
        let args = HookArguments::Helo {
            verb: verb.to_string(),
            host: host.clone(),
        };
        let custom = match self.hook(Hook::Helo, args).await {
            v @ Some(_) => match self.decide(v) {
                Decision::Proceed(r) => r,
                Decision::Stop(flow) => return flow,
            },
            None => None,
        };
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
            let on = |key: &str| !self.policy_switched_off(key);
            if on("allowpipelining") {
                lines.push("PIPELINING".to_string());
            }
            lines.push(format!("SIZE {}", cfg.limits.message_size));
            if on("allow8bitmime") {
                lines.push("8BITMIME".to_string());
            }
            lines.push("SMTPUTF8".to_string());
            lines.push("ENHANCEDSTATUSCODES".to_string());
            if on("allowbinarydata") {
                lines.push("CHUNKING".to_string());
            }
            if on("allowdsn") {
                lines.push("DSN".to_string());
            }
            if self.starttls_available() && on("allowstarttls") {
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

    async fn cmd_mail(&mut self, address: String, params: Vec<(String, String)>) -> Flow {
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
        self.tx_trace.clear();
        let args = HookArguments::MailFrom {
            address: info.sender.clone(),
            params: info.senderparams.clone(),
        };
        let out = self
            .run_hook(Hook::MailFrom, args, Some(info.clone()))
            .await;
        let custom = match self.decide(out.map(|o| o.verdict)) {
            Decision::Proceed(r) => r,
            Decision::Stop(flow) => return flow,
        };
        debug!(conn = %self.info.id, tx = %info.id, from = %info.sender, "mail from");
        self.tx = Some(Transaction { info, chunks: None });
        match custom {
            Some(r) => self.reply(&r),
            None => self.send(250, "2.1.0", "Sender OK"),
        }
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
        if listed || self.info.auth.is_some() {
            return true;
        }
        let Ok(ip) = self.info.remoteip.parse::<std::net::IpAddr>() else {
            return false;
        };
        cfg.trusted_networks.iter().any(|n| n.contains(&ip))
    }

    async fn cmd_rcpt(&mut self, address: String, params: Vec<(String, String)>) -> Flow {
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
        let mut transportid = "default".to_string();
        let mut custom = None;
        if self.ctx.policy.has_hook(Hook::RcptTo) {
            // With an rcptto script, the script decides who may relay.
            let args = HookArguments::RcptTo {
                address: rcpt.clone(),
                params: command::params_map(&params),
            };
            let tx_info = self.tx.as_ref().map(|t| t.info.clone());
            let out = self.run_hook(Hook::RcptTo, args, tx_info).await;
            if let Some(t) = out.as_ref().and_then(|o| o.transportid.clone()) {
                transportid = t;
            }
            match self.decide(out.map(|o| o.verdict)) {
                Decision::Proceed(r) => custom = r,
                Decision::Stop(flow) => {
                    let tx_info = self.tx.as_ref().map(|t| t.info.clone());
                    let reply = SmtpReply::new(550, None, "refused by policy");
                    self.record_reject(tx_info.as_ref(), std::slice::from_ref(&rcpt), 0, &reply);
                    return flow;
                }
            }
        } else if !is_postmaster && !self.relay_allowed(&addr.domain) {
            info!(conn = %self.info.id, tx = %tx.info.id, to = %rcpt, "relay denied: 550");
            let info = tx.info.clone();
            let reply = SmtpReply::with(550, "5.7.1", "Relaying denied");
            self.record_reject(Some(&info), std::slice::from_ref(&rcpt), 0, &reply);
            return self.error(550, "5.7.1", "Relaying denied");
        }
        let Some(tx) = self.tx.as_mut() else {
            return Flow::Continue;
        };
        if !tx.info.recipients.iter().any(|r| r.recipient == rcpt) {
            tx.info.recipients.push(RecipientInfo {
                recipient: rcpt,
                address: addr,
                params: command::params_map(&params),
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
        if let Some(v) = self.hook(Hook::Data, HookArguments::None).await {
            if let Decision::Stop(flow) = self.decide(Some(v)) {
                return flow;
            }
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
        let first = self.tx.as_ref().is_some_and(|t| t.chunks.is_none());
        if first {
            if let Some(v) = self.hook(Hook::Data, HookArguments::None).await {
                if !matches!(v, HookVerdict::Pass { .. }) {
                    // Refused: the chunk must still be consumed to stay in sync.
                    if let Err(e) = self.conn.read_exact_into(size, timeout, |_| {}).await {
                        return self.io_failed(e);
                    }
                    self.tx = None;
                    if let Decision::Stop(flow) = self.decide(Some(v)) {
                        return flow;
                    }
                    return Flow::Continue;
                }
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
        if !self.starttls_available() || self.policy_switched_off("allowstarttls") {
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
        let rcpts: Vec<String> = info
            .recipients
            .iter()
            .map(|r| r.recipient.clone())
            .collect();
        if let Some((code, enh, text)) = rejection {
            info!(
                conn = %self.info.id, tx = %info.id, from = %info.sender,
                nrcpt = info.recipients.len(), size = builder.size,
                reply = %format!("{code} {enh}"), "message rejected: {text}"
            );
            let reply = SmtpReply::with(code, enh, text);
            self.record_reject(Some(&info), &rcpts, builder.size, &reply);
            self.reply(&reply);
            return Flow::Continue;
        }
        let size = builder.size;
        let header_end = builder.header_end.unwrap_or(builder.body.len());
        let body = Bytes::from(builder.body);
        let body_message_id = message_id_of(&body);

        if self.ctx.policy.has_hook(Hook::Headers) {
            let args = HookArguments::Mail {
                message: body.slice(..header_end),
                headers_only: true,
            };
            let out = self.run_hook(Hook::Headers, args, Some(info.clone())).await;
            if let Decision::Stop(flow) = self.decide(out.map(|o| o.verdict)) {
                let reply = SmtpReply::new(550, None, "refused by the headers policy");
                self.record_reject(Some(&info), &rcpts, size, &reply);
                return flow;
            }
        }

        let result = if !self.ctx.policy.has_script(Hook::Eod) {
            // The built-in eod: every recipient to its transport, natively.
            self.queue_message(&info, body, size)
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
            match out.verdict {
                HookVerdict::Accept { reply } => self
                    .queue_requests(&info, &out.queued, size)
                    .await
                    .map(|ids| (ids, Some(reply))),
                other => {
                    let reply = other
                        .reply()
                        .cloned()
                        .unwrap_or_else(|| SmtpReply::with(451, "4.3.0", "Try again later"));
                    info!(
                        conn = %self.info.id, tx = %info.id, from = %info.sender,
                        nrcpt = info.recipients.len(), size, reply = %reply,
                        "message refused by eod policy"
                    );
                    self.record_reject(Some(&info), &rcpts, size, &reply);
                    self.reply(&reply);
                    return if other.disconnect() {
                        Flow::Close
                    } else {
                        Flow::Continue
                    };
                }
            }
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
                    Some(r)
                        if r.lines != ["Ok: queued"]
                            && r.lines != [format!("Ok: queued as {}", info.id)] =>
                    {
                        self.reply(&r)
                    }
                    _ if ids.is_empty() => self.send(250, "2.0.0", "Ok"),
                    _ => self.send(250, "2.0.0", &format!("Ok: queued as {}", ids.join(","))),
                }
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

    /// Commit what an eod script queued: one entry per `mail:queue` call,
    /// bodies shared between calls that queued the same bytes.
    async fn queue_requests(
        &self,
        info: &TransactionInfo,
        reqs: &[QueueRequest],
        size: u64,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_secs();
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
            let body_id = msgs[idx].body_id.clone();
            let message_id = message_id_of(&q.message);
            msgs[idx].entries.push(QueueEntry {
                id: q.queue_id.clone(),
                transaction: info.id.clone(),
                state: if q.hold {
                    QueueState::Held
                } else {
                    QueueState::Queued
                },
                sender: q.sender.clone(),
                recipients: vec![QueuedRecipient {
                    recipient: q.recipient.clone(),
                    transportid: q.transportid.clone(),
                    dsn: RecipientDsn { notify, orcpt },
                }],
                transportid: q.transportid.clone(),
                dsn: MessageDsn {
                    ret: q.dsn.ret.clone().or_else(|| info.dsn.ret.clone()),
                    envid: q.dsn.envid.clone().or_else(|| info.dsn.envid.clone()),
                },
                metadata: q.metadata.clone(),
                jobid: q.jobid.clone(),
                received_at: now,
                next_attempt: now + q.delay.map(|d| d.as_secs_f64()).unwrap_or(0.0),
                attempts: 0,
                size: if q.message.len() as u64 >= size {
                    q.message.len() as u64
                } else {
                    size
                },
                body: body_id,
                smtputf8: info.smtputf8,
                eight_bit: info.eight_bit,
                client: self.client_info(),
                message_id,
                last_error: None,
                delay_notified: false,
            });
            ids.push(q.queue_id.clone());
        }
        self.ctx.store.commit_messages(&msgs).await?;
        Ok(ids)
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
                delay_notified: false,
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
