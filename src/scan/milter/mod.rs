//! Milter client: the `[[milter]]` chain one SMTP session talks to.
//!
//! - [`protocol`]: framing, commands, replies, option negotiation (bytes only).
//! - [`macros`]: the sendmail macros of each stage.
//! - this file: [`MilterChain`], one connection per milter per SMTP session
//!   (as Postfix does), opened at connect; each stage asks the milters in
//!   order and returns one [`Verdict`]; end of message collects each
//!   milter's modifications and applies them to the message before the
//!   next milter sees it (Postfix's chaining).
//!
//! It owns the milter sockets and the editing of the message by milter
//! actions; it must not reply to the client, touch the queue or the history:
//! the session turns a [`Verdict`] into a reply through its one `refuse`.
//!
//! A milter that fails (cannot connect, times out, closes, sends a malformed
//! or unexpected packet) is out for the rest of the session and its
//! `on_error` decides from then on: `tempfail` refuses every transaction
//! stage with 451 4.7.0, `reject` with 550 5.7.0, `accept` carries on
//! without it. Its modifications are applied only if its end of message
//! completed, so nothing half-modified is ever queued.

pub mod macros;
pub mod protocol;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use crate::config::{MilterConfig, OnError, ScanAddress};
use crate::proto::reply::SmtpReply;
use macros::MacroSource;
use protocol::{action, cmd, proto, reply, Negotiated, Packet, ProtocolError};

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// The SMTP stages a milter sees, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Header => "header",
            Stage::Eoh => "eoh",
            Stage::Body => "body",
            Stage::Eom => "eom",
        }
    }
    fn cmd(self) -> u8 {
        match self {
            Stage::Connect => cmd::CONNECT,
            Stage::Helo => cmd::HELO,
            Stage::Mail => cmd::MAIL,
            Stage::Rcpt => cmd::RCPT,
            Stage::Data => cmd::DATA,
            Stage::Header => cmd::HEADER,
            Stage::Eoh => cmd::EOH,
            Stage::Body => cmd::BODY,
            Stage::Eom => cmd::BODYEOB,
        }
    }
    /// The "don't send" and "no reply" protocol bits of this stage.
    fn flags(self) -> (u32, u32) {
        match self {
            Stage::Connect => (proto::NOCONNECT, proto::NR_CONN),
            Stage::Helo => (proto::NOHELO, proto::NR_HELO),
            Stage::Mail => (proto::NOMAIL, proto::NR_MAIL),
            Stage::Rcpt => (proto::NORCPT, proto::NR_RCPT),
            Stage::Data => (proto::NODATA, proto::NR_DATA),
            Stage::Header => (proto::NOHDRS, proto::NR_HDR),
            Stage::Eoh => (proto::NOEOH, proto::NR_EOH),
            Stage::Body => (proto::NOBODY, proto::NR_BODY),
            Stage::Eom => (0, 0),
        }
    }
    /// Connection stages: a milter's `accept` there skips it for the session.
    fn connection_level(self) -> bool {
        matches!(self, Stage::Connect | Stage::Helo)
    }
}

/// What the chain decided at a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Refuse (the command, the recipient at RCPT, the message at eom).
    Refuse {
        reply: SmtpReply,
        milter: String,
    },
}

/// One end-of-message modification, as the milter asked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// An empty value deletes the header.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    ReplaceBody,
    AddRcpt {
        rcpt: String,
        args: String,
    },
    DelRcpt {
        rcpt: String,
    },
    ChangeFrom {
        from: String,
        args: String,
    },
    Quarantine {
        reason: String,
    },
}

impl Action {
    /// `transaction.milters[id].actions[n]` as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Action::AddHeader { name, value } => {
                json!({"action": "add_header", "name": name, "value": value})
            }
            Action::InsertHeader { index, name, value } => {
                json!({"action": "insert_header", "index": index, "name": name, "value": value})
            }
            Action::ChangeHeader { index, name, value } if value.is_empty() => {
                json!({"action": "delete_header", "index": index, "name": name})
            }
            Action::ChangeHeader { index, name, value } => {
                json!({"action": "change_header", "index": index, "name": name, "value": value})
            }
            Action::ReplaceBody => json!({"action": "replace_body"}),
            Action::AddRcpt { rcpt, args } => {
                json!({"action": "add_recipient", "recipient": rcpt, "args": args})
            }
            Action::DelRcpt { rcpt } => json!({"action": "delete_recipient", "recipient": rcpt}),
            Action::ChangeFrom { from, args } => {
                json!({"action": "change_sender", "sender": from, "args": args})
            }
            Action::Quarantine { reason } => json!({"action": "quarantine", "reason": reason}),
        }
    }
}

/// What one milter did at end of message (`transaction.milters[id]`).
#[derive(Debug, Clone, Default)]
pub struct MilterReport {
    pub id: String,
    /// "continue", "accept", "reject", "tempfail", "discard", "replycode",
    /// "skipped" (accepted earlier), "error".
    pub reply: String,
    /// The SMTP reply a reject/tempfail/replycode asked for.
    pub smtp_reply: Option<String>,
    pub actions: Vec<Action>,
    pub quarantine: Option<String>,
    pub error: Option<String>,
}

/// The result of end of message over the chain.
#[derive(Debug, Clone)]
pub struct EomOutcome {
    pub verdict: Verdict,
    /// The milter that asked to discard the message.
    pub discard: Option<String>,
    /// The message after every milter's edits (`None`: unchanged).
    pub message: Option<Vec<u8>>,
    pub sender: Option<String>,
    pub add_rcpts: Vec<String>,
    pub del_rcpts: Vec<String>,
    /// (milter id, reason) of the first quarantine.
    pub quarantine: Option<(String, String)>,
    pub reports: Vec<MilterReport>,
}

impl EomOutcome {
    /// `transaction.milters`: id → {reply, actions, quarantine, reply_text, error}.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for r in &self.reports {
            let mut o = serde_json::Map::new();
            o.insert("reply".into(), r.reply.clone().into());
            o.insert(
                "actions".into(),
                serde_json::Value::Array(r.actions.iter().map(Action::to_json).collect()),
            );
            if let Some(q) = &r.quarantine {
                o.insert("quarantine".into(), q.clone().into());
            }
            if let Some(s) = &r.smtp_reply {
                o.insert("smtp_reply".into(), s.clone().into());
            }
            if let Some(e) = &r.error {
                o.insert("error".into(), e.clone().into());
            }
            m.insert(r.id.clone(), serde_json::Value::Object(o));
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// `accept` at a message stage: not asked again until the next MAIL.
    SkipTransaction,
    /// `accept` at connect/helo: not asked again this session.
    SkipSession,
    /// Failed: its `on_error` answers from now on.
    Failed,
}

struct Milter {
    cfg: Arc<MilterConfig>,
    io: Option<Box<dyn Io>>,
    neg: Negotiated,
    state: State,
    /// MAIL was sent and no end of message/abort since.
    in_tx: bool,
}

/// A reply read at a stage.
enum StageReply {
    Continue,
    Accept,
    Skip,
    Discard,
    Refuse(SmtpReply, &'static str),
}

/// One session's milters.
pub struct MilterChain {
    milters: Vec<Milter>,
    conn_id: String,
    /// A milter asked to discard the current message.
    discard: Option<String>,
}

fn failure_reply(on_error: OnError) -> Option<SmtpReply> {
    match on_error {
        OnError::Tempfail => Some(SmtpReply::with(
            451,
            "4.7.0",
            "Service unavailable - try again later",
        )),
        OnError::Reject => Some(SmtpReply::with(
            550,
            "5.7.0",
            "Message refused by content filter",
        )),
        OnError::Accept => None,
    }
}

/// SMFIR_REPLYCODE text ("550 5.7.1 text", possibly multi-line with "-").
pub fn parse_replycode(data: &[u8]) -> Result<SmtpReply, ProtocolError> {
    let s = split_one(data)?;
    let text = String::from_utf8_lossy(s).to_string();
    let bad = || ProtocolError::Malformed(format!("bad SMFIR_REPLYCODE {text:?}"));
    let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    if !(400..600).contains(&code) {
        return Err(bad());
    }
    let mut lines = Vec::new();
    let mut enhanced = None;
    for (i, line) in text.split("\r\n").filter(|l| !l.is_empty()).enumerate() {
        let rest = line.get(4..).unwrap_or("");
        let (enh, msg) = match rest.split_once(' ') {
            // An enhanced code of another class than the reply's is text
            // (RFC 3463 §2; a fuzz finding: "551 4.7.1" broke an assertion).
            Some((e, m))
                if crate::proto::reply::EnhancedCode::parse(e)
                    .is_some_and(|c| c.0 as u16 == code / 100) =>
            {
                (Some(e.to_string()), m)
            }
            _ => (None, rest),
        };
        if i == 0 {
            enhanced = enh;
        }
        lines.push(msg.to_string());
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    let mut r = match &enhanced {
        Some(e) => SmtpReply::with(code, e, &lines[0]),
        None => SmtpReply::new(code, None, lines[0].clone()),
    };
    r.lines = lines;
    Ok(r)
}

fn split_one(data: &[u8]) -> Result<&[u8], ProtocolError> {
    protocol::split_cstrings(data)?
        .into_iter()
        .next()
        .ok_or_else(|| ProtocolError::Malformed("empty string field".into()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

impl MilterChain {
    /// The chain for one session; nothing is connected yet.
    pub fn new(cfgs: &[Arc<MilterConfig>], conn_id: &str) -> MilterChain {
        MilterChain {
            milters: cfgs
                .iter()
                .map(|c| Milter {
                    cfg: c.clone(),
                    io: None,
                    neg: Negotiated {
                        version: 0,
                        actions: 0,
                        protocol: 0,
                    },
                    state: State::Active,
                    in_tx: false,
                })
                .collect(),
            conn_id: conn_id.to_string(),
            discard: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.milters.is_empty()
    }

    /// A milter asked to discard the current message (at any message stage).
    pub fn discarded(&self) -> Option<&str> {
        self.discard.as_deref()
    }

    /// Connect every milter, negotiate, send SMFIC_CONNECT.
    pub async fn connect(&mut self, src: &MacroSource<'_>) -> Verdict {
        for i in 0..self.milters.len() {
            if let Err(e) = self.open(i).await {
                self.fail(i, Stage::Connect, &e);
            }
        }
        let c = src.conn;
        let host = c
            .remoteptr
            .clone()
            .unwrap_or_else(|| format!("[{}]", c.remoteip));
        let data = protocol::connect_data(&host, &c.remoteip, c.remoteport);
        self.stage_all(Stage::Connect, src, &[data]).await
    }

    async fn open(&mut self, i: usize) -> Result<(), ProtocolError> {
        let m = &mut self.milters[i];
        let ct = m.cfg.connect_timeout;
        let addr = ScanAddress::parse(&m.cfg.address)
            .ok_or_else(|| ProtocolError::Malformed(format!("bad address {}", m.cfg.address)))?;
        let io: Box<dyn Io> = match addr {
            ScanAddress::Tcp(a) => {
                let s = tokio::time::timeout(ct, tokio::net::TcpStream::connect(a))
                    .await
                    .map_err(|_| ProtocolError::Timeout)??;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            ScanAddress::Unix(p) => Box::new(
                tokio::time::timeout(ct, tokio::net::UnixStream::connect(p))
                    .await
                    .map_err(|_| ProtocolError::Timeout)??,
            ),
        };
        m.io = Some(io);
        let timeout = m.cfg.timeout;
        let io = m.io.as_mut().expect("just set");
        protocol::write_packet(io, cmd::OPTNEG, &protocol::optneg_request(), timeout).await?;
        let p = protocol::read_packet(io, Instant::now() + timeout).await?;
        m.neg = protocol::parse_optneg(&p)?;
        debug!(conn = %self.conn_id, milter = %m.cfg.id, version = m.neg.version,
            actions = m.neg.actions, protocol = m.neg.protocol, "milter negotiated");
        Ok(())
    }

    /// Mark milter `i` failed and log it.
    fn fail(&mut self, i: usize, stage: Stage, e: &ProtocolError) {
        let m = &mut self.milters[i];
        warn!(conn = %self.conn_id, milter = %m.cfg.id, stage = stage.name(), error = %e,
            on_error = ?m.cfg.on_error, "milter failed");
        crate::metrics::scanner_error(&format!("milter:{}", m.cfg.id), e.kind());
        crate::metrics::milter_reply(&m.cfg.id, stage.name(), "error");
        m.state = State::Failed;
        m.io = None;
        m.in_tx = false;
    }

    /// The verdict of a failed milter at a transaction stage.
    fn failed_verdict(&self, i: usize, stage: Stage) -> Option<Verdict> {
        let m = &self.milters[i];
        if m.state != State::Failed || stage.connection_level() {
            return None;
        }
        failure_reply(m.cfg.on_error).map(|reply| Verdict::Refuse {
            reply,
            milter: m.cfg.id.clone(),
        })
    }

    /// HELO/EHLO.
    pub async fn helo(&mut self, host: &str, src: &MacroSource<'_>) -> Verdict {
        self.stage_all(Stage::Helo, src, &[protocol::cstrings(&[host])])
            .await
    }

    /// MAIL FROM: a new transaction (milters still in the last one are
    /// aborted first).
    pub async fn mail(&mut self, sender: &str, args: &[String], src: &MacroSource<'_>) -> Verdict {
        self.abort().await;
        self.discard = None;
        for m in &mut self.milters {
            if m.state == State::SkipTransaction {
                m.state = State::Active;
            }
        }
        let mut parts = vec![format!("<{sender}>")];
        parts.extend(args.iter().cloned());
        let v = self
            .stage_all(Stage::Mail, src, &[protocol::cstrings(&parts)])
            .await;
        for m in &mut self.milters {
            if m.io.is_some() && m.state == State::Active && !m.neg.has(proto::NOMAIL) {
                m.in_tx = true;
            }
        }
        v
    }

    /// RCPT TO, for one recipient: a refusal refuses that recipient only.
    pub async fn rcpt(&mut self, rcpt: &str, args: &[String], src: &MacroSource<'_>) -> Verdict {
        let mut parts = vec![format!("<{rcpt}>")];
        parts.extend(args.iter().cloned());
        self.stage_all(Stage::Rcpt, src, &[protocol::cstrings(&parts)])
            .await
    }

    /// DATA (or the first BDAT).
    pub async fn data(&mut self, src: &MacroSource<'_>) -> Verdict {
        self.stage_all(Stage::Data, src, &[Vec::new()]).await
    }

    /// The transaction ended without end of message (RSET, refusal): tell
    /// milters that saw MAIL.
    pub async fn abort(&mut self) {
        for i in 0..self.milters.len() {
            let m = &mut self.milters[i];
            if !m.in_tx {
                continue;
            }
            m.in_tx = false;
            let t = m.cfg.timeout;
            if let Some(io) = m.io.as_mut() {
                if let Err(e) = protocol::write_packet(io, cmd::ABORT, &[], t).await {
                    self.fail(i, Stage::Mail, &e);
                }
            }
        }
    }

    /// End of session: SMFIC_QUIT to every connected milter.
    pub async fn quit(&mut self) {
        for m in &mut self.milters {
            if let Some(mut io) = m.io.take() {
                let _ = protocol::write_packet(
                    &mut io,
                    cmd::QUIT,
                    &[],
                    Duration::from_secs(1).min(m.cfg.timeout),
                )
                .await;
            }
        }
    }

    /// Send one stage's packet(s) to every milter in order; the first refusal wins.
    async fn stage_all(
        &mut self,
        stage: Stage,
        src: &MacroSource<'_>,
        packets: &[Vec<u8>],
    ) -> Verdict {
        for i in 0..self.milters.len() {
            if let Some(v) = self.failed_verdict(i, stage) {
                return v;
            }
            match self.stage_one(i, stage, src, packets).await {
                Ok(Some(v)) => return v,
                Ok(None) => {}
                Err(e) => {
                    self.fail(i, stage, &e);
                    if let Some(v) = self.failed_verdict(i, stage) {
                        return v;
                    }
                }
            }
        }
        Verdict::Continue
    }

    async fn stage_one(
        &mut self,
        i: usize,
        stage: Stage,
        src: &MacroSource<'_>,
        packets: &[Vec<u8>],
    ) -> Result<Option<Verdict>, ProtocolError> {
        if self.milters[i].state != State::Active || self.milters[i].io.is_none() {
            return Ok(None);
        }
        if self.discard.is_some() && !stage.connection_level() {
            return Ok(None);
        }
        let (no_send, _) = stage.flags();
        if self.milters[i].neg.has(no_send) {
            return Ok(None);
        }
        self.send_macros(i, stage, src).await?;
        for p in packets {
            let r = self.exchange(i, stage, p).await?;
            if let Some(v) = self.apply_stage_reply(i, stage, r) {
                return Ok(Some(v));
            }
            if self.milters[i].state != State::Active {
                break;
            }
        }
        Ok(None)
    }

    async fn send_macros(
        &mut self,
        i: usize,
        stage: Stage,
        src: &MacroSource<'_>,
    ) -> Result<(), ProtocolError> {
        let list = macros::for_stage(stage.cmd(), src);
        if list.is_empty() {
            return Ok(());
        }
        let m = &mut self.milters[i];
        let t = m.cfg.timeout;
        let io = m.io.as_mut().ok_or(ProtocolError::Closed)?;
        protocol::write_packet(io, cmd::MACRO, &protocol::macro_data(stage.cmd(), &list), t).await
    }

    /// Send one packet of `stage`; read its reply unless the milter said it
    /// will not answer.
    async fn exchange(
        &mut self,
        i: usize,
        stage: Stage,
        data: &[u8],
    ) -> Result<StageReply, ProtocolError> {
        let m = &mut self.milters[i];
        let t = m.cfg.timeout;
        let (_, no_reply) = stage.flags();
        let io = m.io.as_mut().ok_or(ProtocolError::Closed)?;
        protocol::write_packet(io, stage.cmd(), data, t).await?;
        if no_reply != 0 && m.neg.has(no_reply) {
            return Ok(StageReply::Continue);
        }
        let overall = Instant::now() + m.cfg.overall_timeout;
        loop {
            let deadline = (Instant::now() + t).min(overall);
            let p = protocol::read_packet(io, deadline).await?;
            match p.code {
                reply::PROGRESS => continue,
                reply::CONTINUE => return Ok(StageReply::Continue),
                reply::ACCEPT => return Ok(StageReply::Accept),
                reply::SKIP if stage == Stage::Body => return Ok(StageReply::Skip),
                reply::DISCARD if !stage.connection_level() => return Ok(StageReply::Discard),
                reply::REJECT => {
                    return Ok(StageReply::Refuse(
                        SmtpReply::with(550, "5.7.1", "Command rejected"),
                        "reject",
                    ))
                }
                reply::TEMPFAIL => {
                    return Ok(StageReply::Refuse(
                        SmtpReply::with(451, "4.7.1", "Service unavailable - try again later"),
                        "tempfail",
                    ))
                }
                reply::REPLYCODE => {
                    return Ok(StageReply::Refuse(parse_replycode(&p.data)?, "replycode"));
                }
                other => {
                    return Err(ProtocolError::Malformed(format!(
                        "unexpected reply {:?} at {}",
                        other as char,
                        stage.name()
                    )))
                }
            }
        }
    }

    fn apply_stage_reply(&mut self, i: usize, stage: Stage, r: StageReply) -> Option<Verdict> {
        let m = &mut self.milters[i];
        let label = match &r {
            StageReply::Continue => "continue",
            StageReply::Accept => "accept",
            StageReply::Skip => "skip",
            StageReply::Discard => "discard",
            StageReply::Refuse(_, l) => l,
        };
        // Per-header and per-chunk answers would drown the counter.
        if !matches!(stage, Stage::Header | Stage::Body) || label != "continue" {
            crate::metrics::milter_reply(&m.cfg.id, stage.name(), label);
        }
        match r {
            StageReply::Continue | StageReply::Skip => None,
            StageReply::Accept => {
                m.state = if stage.connection_level() {
                    State::SkipSession
                } else {
                    State::SkipTransaction
                };
                None
            }
            StageReply::Discard => {
                info!(conn = %self.conn_id, milter = %m.cfg.id, stage = stage.name(), "milter: discard");
                self.discard = Some(m.cfg.id.clone());
                None
            }
            StageReply::Refuse(reply, _) => {
                info!(conn = %self.conn_id, milter = %m.cfg.id, stage = stage.name(), reply = %reply, "milter refused");
                Some(Verdict::Refuse {
                    reply,
                    milter: m.cfg.id.clone(),
                })
            }
        }
    }

    /// The message is in: headers, end of headers, body, end of message for
    /// each milter in turn, each one's actions applied before the next one
    /// reads the message.
    pub async fn end_of_message(
        &mut self,
        message: &[u8],
        recipients: &[String],
        src: &MacroSource<'_>,
    ) -> EomOutcome {
        let mut out = EomOutcome {
            verdict: Verdict::Continue,
            discard: None,
            message: None,
            sender: None,
            add_rcpts: Vec::new(),
            del_rcpts: Vec::new(),
            quarantine: None,
            reports: Vec::new(),
        };
        let mut msg = EditableMessage::parse(message);
        let mut changed = false;
        let mut rcpts: Vec<String> = recipients.to_vec();
        for i in 0..self.milters.len() {
            let id = self.milters[i].cfg.id.clone();
            if let Some(d) = &self.discard {
                out.discard = Some(d.clone());
                break;
            }
            if let Some(v) = self.failed_verdict(i, Stage::Eom) {
                out.reports.push(MilterReport {
                    id,
                    reply: "error".into(),
                    error: Some("milter unavailable".into()),
                    ..Default::default()
                });
                out.verdict = v;
                break;
            }
            if self.milters[i].state != State::Active || self.milters[i].io.is_none() {
                let reply = if self.milters[i].state == State::Failed {
                    "error"
                } else {
                    "skipped"
                };
                out.reports.push(MilterReport {
                    id,
                    reply: reply.into(),
                    ..Default::default()
                });
                continue;
            }
            self.milters[i].in_tx = false;
            match self.message_one(i, &msg, src).await {
                Err(e) => {
                    self.fail(i, Stage::Eom, &e);
                    out.reports.push(MilterReport {
                        id,
                        reply: "error".into(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    });
                    if let Some(v) = self.failed_verdict(i, Stage::Eom) {
                        out.verdict = v;
                        break;
                    }
                }
                Ok(Eom::Refused(v, report)) => {
                    out.reports.push(report);
                    out.verdict = v;
                    break;
                }
                Ok(Eom::Done(report, body)) => {
                    let lead = self.milters[i].neg.has(proto::HDR_LEADSPC);
                    for a in &report.actions {
                        changed |= msg.apply(a, lead);
                        match a {
                            Action::AddRcpt { rcpt, .. } => {
                                let r = strip_angle(rcpt).to_lowercase();
                                out.del_rcpts.retain(|d| *d != r);
                                if !rcpts.contains(&r) {
                                    rcpts.push(r.clone());
                                    out.add_rcpts.push(r);
                                }
                            }
                            Action::DelRcpt { rcpt } => {
                                let r = strip_angle(rcpt).to_lowercase();
                                out.add_rcpts.retain(|a| *a != r);
                                rcpts.retain(|x| *x != r);
                                out.del_rcpts.push(r);
                            }
                            Action::ChangeFrom { from, .. } => {
                                out.sender = Some(strip_angle(from).to_lowercase());
                            }
                            Action::Quarantine { reason } if out.quarantine.is_none() => {
                                out.quarantine = Some((id.clone(), reason.clone()));
                            }
                            _ => {}
                        }
                    }
                    if let Some(b) = body {
                        msg.body = b;
                        changed = true;
                    }
                    let discard = report.reply == "discard";
                    out.reports.push(report);
                    if discard {
                        self.discard = Some(id.clone());
                        out.discard = Some(id);
                        break;
                    }
                }
            }
        }
        if changed {
            out.message = Some(msg.serialize());
        }
        out
    }

    /// Headers, EOH, body, EOM to milter `i`.
    async fn message_one(
        &mut self,
        i: usize,
        msg: &EditableMessage,
        src: &MacroSource<'_>,
    ) -> Result<Eom, ProtocolError> {
        let id = self.milters[i].cfg.id.clone();
        let lead = self.milters[i].neg.has(proto::HDR_LEADSPC);
        // Headers.
        if !self.milters[i].neg.has(proto::NOHDRS) {
            for (name, value) in &msg.headers {
                let v = header_value_for_milter(value, lead);
                let data = protocol::cstrings(&[name.as_bytes(), v.as_slice()]);
                let r = self.exchange(i, Stage::Header, &data).await?;
                if let Some(v) = self.stage_reply_at_eom(i, Stage::Header, r) {
                    return Ok(v);
                }
                if self.milters[i].state != State::Active {
                    return Ok(self.skipped_report(i));
                }
            }
        }
        if !self.milters[i].neg.has(proto::NOEOH) {
            self.send_macros(i, Stage::Eoh, src).await?;
            let r = self.exchange(i, Stage::Eoh, &[]).await?;
            if let Some(v) = self.stage_reply_at_eom(i, Stage::Eoh, r) {
                return Ok(v);
            }
            if self.milters[i].state != State::Active {
                return Ok(self.skipped_report(i));
            }
        }
        if !self.milters[i].neg.has(proto::NOBODY) {
            for chunk in msg.body.chunks(protocol::CHUNK) {
                let r = self.exchange(i, Stage::Body, chunk).await?;
                if matches!(r, StageReply::Skip) {
                    break;
                }
                if let Some(v) = self.stage_reply_at_eom(i, Stage::Body, r) {
                    return Ok(v);
                }
                if self.milters[i].state != State::Active {
                    return Ok(self.skipped_report(i));
                }
            }
        }
        self.send_macros(i, Stage::Eom, src).await?;
        let m = &mut self.milters[i];
        let t = m.cfg.timeout;
        let neg = m.neg;
        let io = m.io.as_mut().ok_or(ProtocolError::Closed)?;
        protocol::write_packet(io, cmd::BODYEOB, &[], t).await?;
        let overall = Instant::now() + m.cfg.overall_timeout;
        let mut report = MilterReport {
            id: id.clone(),
            ..Default::default()
        };
        let mut body: Option<Vec<u8>> = None;
        let need = |flag: u32, what: &str| -> Result<(), ProtocolError> {
            if neg.may(flag) {
                Ok(())
            } else {
                Err(ProtocolError::Malformed(format!(
                    "{what} without negotiating it"
                )))
            }
        };
        loop {
            let deadline = (Instant::now() + t).min(overall);
            let Packet { code, data } = protocol::read_packet(io, deadline).await?;
            match code {
                reply::PROGRESS => continue,
                reply::ADDHEADER => {
                    need(action::ADDHDRS, "add header")?;
                    let f = protocol::split_cstrings(&data)?;
                    if f.len() < 2 {
                        return Err(ProtocolError::Malformed("SMFIR_ADDHEADER fields".into()));
                    }
                    report.actions.push(Action::AddHeader {
                        name: text(f[0]),
                        value: text(f[1]),
                    });
                }
                reply::INSHEADER | reply::CHGHEADER => {
                    need(
                        if code == reply::INSHEADER {
                            action::ADDHDRS
                        } else {
                            action::CHGHDRS
                        },
                        "change header",
                    )?;
                    if data.len() < 4 {
                        return Err(ProtocolError::Malformed("header index missing".into()));
                    }
                    let index = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                    let f = protocol::split_cstrings(&data[4..])?;
                    if f.is_empty() {
                        return Err(ProtocolError::Malformed("header name missing".into()));
                    }
                    let name = text(f[0]);
                    let value = f.get(1).map(|v| text(v)).unwrap_or_default();
                    report.actions.push(if code == reply::INSHEADER {
                        Action::InsertHeader { index, name, value }
                    } else {
                        Action::ChangeHeader { index, name, value }
                    });
                }
                reply::REPLBODY => {
                    need(action::CHGBODY, "replace body")?;
                    if body.is_none() {
                        report.actions.push(Action::ReplaceBody);
                    }
                    body.get_or_insert_with(Vec::new).extend_from_slice(&data);
                }
                reply::ADDRCPT | reply::ADDRCPT_PAR => {
                    need(
                        if code == reply::ADDRCPT {
                            action::ADDRCPT
                        } else {
                            action::ADDRCPT_PAR
                        },
                        "add recipient",
                    )?;
                    let f = protocol::split_cstrings(&data)?;
                    let rcpt = text(f.first().copied().unwrap_or_default());
                    if strip_angle(&rcpt).is_empty() {
                        return Err(ProtocolError::Malformed("empty recipient".into()));
                    }
                    let args = f.get(1).map(|a| text(a)).unwrap_or_default();
                    report.actions.push(Action::AddRcpt { rcpt, args });
                }
                reply::DELRCPT => {
                    need(action::DELRCPT, "delete recipient")?;
                    report.actions.push(Action::DelRcpt {
                        rcpt: text(split_one(&data)?),
                    });
                }
                reply::CHGFROM => {
                    need(action::CHGFROM, "change sender")?;
                    let f = protocol::split_cstrings(&data)?;
                    let from = text(f.first().copied().unwrap_or_default());
                    let args = f.get(1).map(|a| text(a)).unwrap_or_default();
                    report.actions.push(Action::ChangeFrom { from, args });
                }
                reply::QUARANTINE => {
                    need(action::QUARANTINE, "quarantine")?;
                    let reason = text(split_one(&data)?);
                    report.quarantine = Some(reason.clone());
                    report.actions.push(Action::Quarantine { reason });
                }
                reply::CONTINUE | reply::ACCEPT | reply::DISCARD => {
                    report.reply = match code {
                        reply::CONTINUE => "continue",
                        reply::ACCEPT => "accept",
                        _ => "discard",
                    }
                    .into();
                    crate::metrics::milter_reply(&id, "eom", &report.reply);
                    info!(conn = %self.conn_id, milter = %id, reply = %report.reply,
                        actions = report.actions.len(), quarantine = ?report.quarantine, "milter end of message");
                    return Ok(Eom::Done(report, body));
                }
                reply::REJECT | reply::TEMPFAIL | reply::REPLYCODE => {
                    let (reply, label) = match code {
                        reply::REJECT => (
                            SmtpReply::with(550, "5.7.1", "Message content rejected"),
                            "reject",
                        ),
                        reply::TEMPFAIL => (
                            SmtpReply::with(451, "4.7.1", "Service unavailable - try again later"),
                            "tempfail",
                        ),
                        _ => (parse_replycode(&data)?, "replycode"),
                    };
                    crate::metrics::milter_reply(&id, "eom", label);
                    info!(conn = %self.conn_id, milter = %id, reply = %reply, "milter refused the message");
                    report.reply = label.into();
                    report.smtp_reply = Some(reply.to_string());
                    // What it asked before refusing is not applied.
                    return Ok(Eom::Refused(
                        Verdict::Refuse {
                            reply,
                            milter: id.clone(),
                        },
                        report,
                    ));
                }
                other => {
                    return Err(ProtocolError::Malformed(format!(
                        "unexpected reply {:?} at end of message",
                        other as char
                    )))
                }
            }
        }
    }

    fn skipped_report(&self, i: usize) -> Eom {
        Eom::Done(
            MilterReport {
                id: self.milters[i].cfg.id.clone(),
                reply: "accept".into(),
                ..Default::default()
            },
            None,
        )
    }

    /// A header/eoh/body stage answer inside end of message.
    fn stage_reply_at_eom(&mut self, i: usize, stage: Stage, r: StageReply) -> Option<Eom> {
        let discard = matches!(r, StageReply::Discard);
        let refused = self.apply_stage_reply(i, stage, r);
        if discard || refused.is_some() {
            // It saw no end of message: the next MAIL aborts this one first.
            self.milters[i].in_tx = true;
        }
        if discard {
            // Nothing more of this message goes to this milter.
            return Some(Eom::Done(
                MilterReport {
                    id: self.milters[i].cfg.id.clone(),
                    reply: "discard".into(),
                    ..Default::default()
                },
                None,
            ));
        }
        let refused = refused?;
        let id = self.milters[i].cfg.id.clone();
        let reply_text = match &refused {
            Verdict::Refuse { reply, .. } => Some(reply.to_string()),
            Verdict::Continue => None,
        };
        Some(Eom::Refused(
            refused,
            MilterReport {
                id,
                reply: "reject".into(),
                smtp_reply: reply_text,
                ..Default::default()
            },
        ))
    }
}

enum Eom {
    Done(MilterReport, Option<Vec<u8>>),
    Refused(Verdict, MilterReport),
}

fn strip_angle(s: &str) -> &str {
    s.trim().trim_start_matches('<').trim_end_matches('>')
}

/// A header value as a milter sees it: folds as bare LF (as sendmail and
/// Postfix send them), the leading space dropped unless HDR_LEADSPC.
fn header_value_for_milter(raw: &[u8], leadspc: bool) -> Vec<u8> {
    let mut v: &[u8] = raw;
    if !leadspc {
        while let Some((&b, rest)) = v.split_first() {
            if b == b' ' || b == b'\t' {
                v = rest;
            } else {
                break;
            }
        }
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' && v.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// A value from a milter as it goes into the message: every line break CRLF.
fn header_value_for_message(value: &str, leadspc: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    if !leadspc {
        out.push(b' ');
    }
    let b = value.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' && (i == 0 || b[i - 1] != b'\r') {
            out.push(b'\r');
        }
        if c == b'\r' && b.get(i + 1) != Some(&b'\n') {
            continue;
        }
        out.push(c);
    }
    out
}

/// The message as milter actions edit it: headers (name, raw value after
/// the colon, folds included, without the final CRLF) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditableMessage {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl EditableMessage {
    pub fn parse(raw: &[u8]) -> EditableMessage {
        let (head, body) = match memchr::memmem::find(raw, b"\r\n\r\n") {
            Some(p) => (&raw[..p + 2], &raw[p + 4..]),
            None if raw.starts_with(b"\r\n") => (&raw[..0], &raw[2..]),
            None => (raw, &raw[raw.len()..]),
        };
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if (line[0] == b' ' || line[0] == b'\t') && !headers.is_empty() {
                let last = headers.last_mut().expect("not empty");
                last.1.extend_from_slice(b"\r\n");
                last.1.extend_from_slice(line);
                continue;
            }
            match line.iter().position(|&b| b == b':') {
                Some(c) => headers.push((text(&line[..c]), line[c + 1..].to_vec())),
                None => headers.push((text(line), Vec::new())),
            }
        }
        EditableMessage {
            headers,
            body: body.to_vec(),
        }
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64 * self.headers.len() + 2);
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.push(b':');
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Position of the `index`-th (1-based) header called `name`.
    fn nth(&self, name: &str, index: u32) -> Option<usize> {
        let index = index.max(1) as usize;
        self.headers
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
            .nth(index - 1)
            .map(|(i, _)| i)
    }

    /// Apply one header action; true when the message changed.
    pub fn apply(&mut self, a: &Action, leadspc: bool) -> bool {
        match a {
            Action::AddHeader { name, value } => {
                self.headers
                    .push((name.clone(), header_value_for_message(value, leadspc)));
                true
            }
            Action::InsertHeader { index, name, value } => {
                let at = (*index as usize).min(self.headers.len());
                self.headers
                    .insert(at, (name.clone(), header_value_for_message(value, leadspc)));
                true
            }
            Action::ChangeHeader { index, name, value } => match self.nth(name, *index) {
                Some(i) if value.is_empty() => {
                    self.headers.remove(i);
                    true
                }
                Some(i) => {
                    self.headers[i].1 = header_value_for_message(value, leadspc);
                    true
                }
                // Changing a header that is not there adds it (libmilter's smfi_chgheader).
                None if !value.is_empty() => {
                    self.headers
                        .push((name.clone(), header_value_for_message(value, leadspc)));
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_headers() {
        let raw = b"Received: from a\r\n\tby b\r\nSubject: hi\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\n";
        let mut m = EditableMessage::parse(raw);
        assert_eq!(m.serialize(), raw.to_vec());
        assert_eq!(m.headers.len(), 4);
        assert_eq!(
            header_value_for_milter(&m.headers[0].1, false),
            b"from a\n\tby b".to_vec()
        );
        m.apply(
            &Action::ChangeHeader {
                index: 2,
                name: "x-a".into(),
                value: "".into(),
            },
            false,
        );
        m.apply(
            &Action::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: "new".into(),
            },
            false,
        );
        m.apply(
            &Action::InsertHeader {
                index: 0,
                name: "DKIM-Signature".into(),
                value: "v=1;\n\tb=x".into(),
            },
            false,
        );
        m.apply(
            &Action::AddHeader {
                name: "X-Spam".into(),
                value: "Yes".into(),
            },
            false,
        );
        assert_eq!(
            String::from_utf8(m.serialize()).unwrap(),
            "DKIM-Signature: v=1;\r\n\tb=x\r\nReceived: from a\r\n\tby b\r\nSubject: new\r\nX-A: 1\r\nX-Spam: Yes\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn replycode_parses() {
        let r = parse_replycode(b"554 5.7.1 Spam message rejected\0").unwrap();
        assert_eq!(r.code, 554);
        assert_eq!(r.to_string(), "554 5.7.1 Spam message rejected");
        assert!(parse_replycode(b"250 ok\0").is_err());
        assert!(parse_replycode(b"xyz\0").is_err());
    }

    #[test]
    fn replycode_with_an_enhanced_code_of_another_class_keeps_it_as_text() {
        // Fuzz finding: "551 4.7.1 …" tripped SmtpReply::with's assertion.
        let r = parse_replycode(b"551 4.7.1 no\0").unwrap();
        assert_eq!(r.code, 551);
        assert!(r.enhanced.is_none(), "{r:?}");
        let r = parse_replycode(b"451 4.7.1 later\0").unwrap();
        assert_eq!(r.enhanced.map(|e| e.0), Some(4));
    }
}
