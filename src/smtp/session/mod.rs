//! One SMTP session: the RFC 5321 state machine for a single connection.
//!
//! One file per verb, each an `impl Session` block: [`ehlo`], [`auth`],
//! [`starttls`], [`mail`], [`rcpt`], [`data`] (DATA and BDAT), [`eod`] (end of
//! data: content checks, headers/eod hooks, queueing) and [`proxy`]. This
//! file owns the loop, the connection's state and the one place where a
//! hook's verdict becomes what the server does ([`Session::stage`]) and where
//! a refusal becomes the reply, the log line and the history record
//! ([`Session::refuse`]) — so the history always holds the reply the client
//! got. Replies are written only through [`Session::reply`] (which counts
//! them in the metrics).
//!
//! Relay protection is the server's: [`relay::permits`] decides every
//! recipient unless an rcptto script explicitly `Accept()`s it.
//!
//! It must not touch Lua or sled: it asks `policy` for verdicts and `store`
//! to keep messages and history.

mod auth;
mod data;
mod ehlo;
mod eod;
mod mail;
mod milter;
mod proxy;
mod rcpt;
pub mod relay;
mod settings;
mod starttls;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::data::MessageBuilder;
use super::io::{Conn, IoError, Line, Stream};
use super::server::{Phase, ServerContext};
use crate::config::ListenerConfig;
use crate::envelope::{ConnectionInfo, TransactionInfo};
use crate::policy::{Hook, HookArguments, HookInput, HookOutcome, HookVerdict, Rewrite};
use crate::proto::command::{self, Command, ParseError};
use crate::proto::reply::SmtpReply;
use crate::store::history::{HistoryRecord, SmtpOrigin};

pub use eod::message_id_of;

/// How a step of the session ends.
enum Flow {
    Continue,
    Close,
}

/// The open mail transaction (after MAIL FROM).
struct Transaction {
    info: TransactionInfo,
    /// Content received so far through BDAT.
    chunks: Option<MessageBuilder>,
}

/// What the server does with a command after its stage hook ran.
enum Decision {
    /// The built-in rules decide (no script, `Pass()`, falling off the end,
    /// or a positive `Reply()`, whose reply then replaces the default one).
    Builtin(Option<SmtpReply>),
    /// The script accepted explicitly (`Accept()`): in rcptto this is the
    /// one way past the built-in relay rule. `reply`: the script's own.
    Accepted {
        reply: Option<SmtpReply>,
        rewrite: Rewrite,
    },
    /// The script refused (or answered negatively): the reply is sent and
    /// recorded already.
    Done(Flow),
}

pub struct Session {
    ctx: Arc<ServerContext>,
    listener: Arc<ListenerConfig>,
    conn: Conn,
    info: ConnectionInfo,
    /// EHLO (not HELO) was used: extensions are on.
    extended: bool,
    tx: Option<Transaction>,
    /// The id of the transaction scripts see before MAIL FROM (and that MAIL
    /// FROM then opens); renewed after each message and after RSET.
    next_txid: String,
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
    /// The `[[milter]]` chain of this session (None: no milters configured,
    /// or taken out while a stage talks to it).
    milters: Option<crate::scan::milter::MilterChain>,
    /// What the last hook run noted as deciding (rate limits, greylist):
    /// the next refusal's history records it as `metadata.decided_by`.
    decided_by: Vec<String>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
            next_txid: crate::ids::new_id(),
            errors: 0,
            context: serde_json::Value::Object(Default::default()),
            messages: 0,
            proxy_next: false,
            conn_trace: Vec::new(),
            tx_trace: Vec::new(),
            milters: None,
            decided_by: Vec::new(),
        }
    }

    /// The only writer of replies (the connection counts them in the metrics).
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
        self.count_error()
    }

    fn count_error(&mut self) -> Flow {
        self.errors += 1;
        if self.errors >= self.ctx.config.limits.errors {
            info!(conn = %self.info.id, errors = self.errors, "too many errors: disconnecting");
            self.send(421, "4.7.0", "Too many errors, closing connection");
            return Flow::Close;
        }
        Flow::Continue
    }

    fn tx_id(&self) -> &str {
        self.tx
            .as_ref()
            .map(|t| t.info.id.as_str())
            .unwrap_or(&self.next_txid)
    }

    /// End the transaction (message done, RSET, new EHLO, STARTTLS): scripts
    /// see a new transaction id from now on.
    fn reset_transaction(&mut self) {
        self.end_transaction();
    }

    /// Take the open transaction, if any; the next one gets a new id.
    fn end_transaction(&mut self) -> Option<Transaction> {
        let tx = self.tx.take()?;
        self.next_txid = crate::ids::new_id();
        Some(tx)
    }

    /// `transaction` for a hook: the open one, or the pending one (its id only).
    fn transaction_view(&self) -> TransactionInfo {
        match &self.tx {
            Some(t) => t.info.clone(),
            None => TransactionInfo::pending(self.next_txid.clone()),
        }
    }

    /// Boxed: an async fn keeps its by-value arguments in its future
    /// beside the body's own copy (rust-lang/rust#62958), so a `Session`
    /// (~1 KiB) passed by value sat twice in every connection's task.
    pub async fn run(mut self: Box<Self>) {
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
                // Boxed: the lookup's state is large and would otherwise
                // stay in every idle connection's task.
                self.info.remoteptr = Box::pin(self.ctx.policy.fcrdns(ip)).await;
            }
        }
        let banner = SmtpReply::new(
            220,
            None,
            format!(
                "{} {}",
                self.ctx.config.hostname, self.ctx.config.smtp.banner
            ),
        );
        let end = match Box::pin(self.stage(Hook::Connect, HookArguments::None, None)).await {
            Decision::Done(_) => "policy",
            Decision::Builtin(custom) => match Box::pin(self.milter_connect()).await {
                Flow::Close => "milter",
                Flow::Continue => {
                    // A script's positive reply is the greeting, sent as it chose.
                    let greeting = custom.unwrap_or(banner);
                    self.conn.queue_reply(&greeting.render(false));
                    self.command_loop().await
                }
            },
            Decision::Accepted { .. } => match Box::pin(self.milter_connect()).await {
                Flow::Close => "milter",
                Flow::Continue => {
                    self.conn.queue_reply(&banner.render(false));
                    self.command_loop().await
                }
            },
        };
        if let Some(mut chain) = self.milters.take() {
            Box::pin(chain.quit()).await;
        }
        if self.ctx.policy.has_hook(Hook::Disconnect) {
            self.tx = None;
            let _ = Box::pin(self.run_hook(Hook::Disconnect, HookArguments::None, None)).await;
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
                // Boxed: a command's future lives only while it runs, so an
                // idle connection's task stays small (10,000 clients < 100 MiB).
                Ok(s) if !s.contains('\0') => match Box::pin(self.proxy(s)).await {
                    Ok(cmd) => Box::pin(self.dispatch(&cmd)).await,
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
            Err(ParseError::Param(reply)) => {
                self.reply(&reply);
                return self.count_error();
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
                self.reset_transaction();
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

    /// Run a stage hook and turn its verdict into what the server does: the
    /// one place where a verdict becomes a reply. `tx` overrides the
    /// transaction scripts see (MAIL FROM: not stored yet); `recipients` are
    /// the ones a refusal is recorded for (the hook table's
    /// `refusal_history` says which a hook has).
    async fn stage(
        &mut self,
        hook: Hook,
        arguments: HookArguments,
        tx: Option<TransactionInfo>,
    ) -> Decision {
        self.stage_for(hook, arguments, tx, &[], 0).await.0
    }

    /// [`Session::stage`] with the recipients and size a refusal is recorded
    /// for; also returns the outcome's `transportid`.
    async fn stage_for(
        &mut self,
        hook: Hook,
        arguments: HookArguments,
        tx: Option<TransactionInfo>,
        recipients: &[String],
        size: u64,
    ) -> (Decision, Option<String>) {
        // No script: the built-in rules, without building the script's view.
        if !self.ctx.policy.has_hook(hook) {
            return (Decision::Builtin(None), None);
        }
        let tx = tx.unwrap_or_else(|| self.transaction_view());
        let Some(out) = self.run_hook(hook, arguments, Some(tx.clone())).await else {
            return (Decision::Builtin(None), None);
        };
        let decision = match out.verdict {
            HookVerdict::Pass { .. } => Decision::Builtin(None),
            HookVerdict::Accept {
                reply,
                custom,
                rewrite,
            } => Decision::Accepted {
                reply: custom.then_some(reply),
                rewrite,
            },
            HookVerdict::Reply {
                reply, disconnect, ..
            } if reply.is_positive() && !disconnect => Decision::Builtin(Some(reply)),
            HookVerdict::Reply {
                reply, disconnect, ..
            }
            | HookVerdict::Reject { reply, disconnect }
            | HookVerdict::Defer { reply, disconnect } => {
                let why = format!("{} policy", hook.name());
                Decision::Done(self.refuse(&why, &tx, &reply, disconnect, recipients, size))
            }
        };
        // The script let the command through: what it noted did not decide
        // (a built-in refusal that follows is the server's, not a limit's).
        if !matches!(decision, Decision::Done(_)) {
            self.decided_by.clear();
        }
        (decision, out.transportid)
    }

    /// Refuse: send the reply, log it, record it in the history for each
    /// recipient (REJECT for 5xx, DEFER for 4xx) with exactly the text sent.
    /// Every refusal of a recipient or message goes through here.
    fn refuse(
        &mut self,
        why: &str,
        tx: &TransactionInfo,
        reply: &SmtpReply,
        disconnect: bool,
        recipients: &[String],
        size: u64,
    ) -> Flow {
        info!(
            conn = %self.info.id, tx = %tx.id, from = %tx.sender,
            nrcpt = recipients.len(), size, by = why, reply = %reply,
            disconnect, "refused"
        );
        let decided_by = std::mem::take(&mut self.decided_by).join("; ");
        if !decided_by.is_empty() {
            info!(conn = %self.info.id, tx = %tx.id, decided_by = %decided_by, "refusal decided by");
        }
        if !recipients.is_empty() {
            let origin = self.origin();
            let recs: Vec<HistoryRecord> = recipients
                .iter()
                .map(|r| {
                    let mut h = HistoryRecord::refused(&origin, &tx.id, &tx.sender, r, size, reply);
                    if !decided_by.is_empty() {
                        h.metadata.insert("decided_by".into(), decided_by.clone());
                    }
                    h
                })
                .collect();
            // Rejections are most of an edge MX's traffic: keep them off the reply path.
            self.ctx.store.append_history_background(recs);
        }
        self.reply(reply);
        if disconnect || reply.code == 421 {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    fn origin(&self) -> SmtpOrigin {
        SmtpOrigin {
            client_ip: self.info.remoteip.clone(),
            serverid: self.info.serverid.clone(),
            connection: self.info.id.clone(),
        }
    }

    /// Run a hook if a script is configured for it; writes its `History()`
    /// calls and keeps the trace for `sluice trace`.
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
        let sender = transaction
            .as_ref()
            .map(|t| t.sender.clone())
            .unwrap_or_default();
        let input = HookInput {
            connection: self.info.clone(),
            transaction,
            arguments,
            context: std::mem::take(&mut self.context),
        };
        let mut out = self.ctx.policy.run(hook, input).await;
        self.context = std::mem::take(&mut out.context);
        self.decided_by = std::mem::take(&mut out.decided_by);
        if let Some(e) = &out.error {
            warn!(conn = %self.info.id, tx = %txid.as_deref().unwrap_or("-"), hook = hook.name(), error = %e, "script error");
        }
        debug!(conn = %self.info.id, hook = hook.name(), verdict = ?out.verdict.kind(), "hook");
        let step = match out.verdict.reply() {
            Some(r) => format!("{}: {:?} {}", hook.name(), out.verdict.kind(), r),
            None => format!("{}: {:?}", hook.name(), out.verdict.kind()),
        };
        match hook {
            Hook::Connect | Hook::Helo | Hook::Auth => self.conn_trace.push(step),
            Hook::Proxy | Hook::Disconnect => {}
            _ => self.tx_trace.push(step),
        }
        if !out.history.is_empty() {
            let origin = self.origin();
            let txid = txid.unwrap_or_default();
            let recs: Vec<HistoryRecord> = out
                .history
                .iter()
                .map(|h| {
                    HistoryRecord::scripted(
                        &origin,
                        &txid,
                        h.sender.as_deref().unwrap_or(&sender),
                        h.action,
                        &h.recipient,
                        h.transportid.as_deref().unwrap_or_default(),
                        h.reason.as_deref().unwrap_or_default(),
                        h.metadata.clone(),
                    )
                })
                .collect();
            if let Err(e) = self.ctx.store.append_history(&recs) {
                warn!(conn = %self.info.id, error = %e, "history write failed");
            }
        }
        Some(out)
    }
}
