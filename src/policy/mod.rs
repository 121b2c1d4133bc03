//! Lua policy engine (issue 4): the Halon-style scripting API at every SMTP
//! stage. The server never touches Lua: it builds a [`HookInput`], awaits
//! [`PolicyEngine::run`] and acts on the [`HookOutcome`].
//!
//! - [`hooks`]: the hook table (names, verdicts, defaults) — declared once.
//! - `engine`: compile once, epoch-based pool of Lua states, hook dispatch.
//! - `sandbox`: what a fresh state contains and what it must not.
//! - [`api`]: one file per Lua-visible object, each with a `register` function.
//! - [`testing`]: run a hook from the command line (`sluice test-script`).
//! - [`axigen`]: the Axigen policy compiler (lexer → parser → checks → Lua).
//!
//! How the server drives it:
//!
//! - `PolicyEngine::load(&cfg)` at start compiles every `[scripts]` Lua file
//!   and every `[scripts] axigen` policy (translated to [`ScriptSource`]s
//!   that run before the hook's Lua file); errors are `file:line: message`
//!   (Axigen: `file:line:col`), all of them. `reload(&cfg)` on SIGHUP /
//!   `sluice reload` recompiles them all and swaps them in together, or
//!   keeps all the old ones; `sources()` says what is loaded. `check(&cfg)`
//!   for `sluice check` (returns the Axigen warnings). `load_with` injects
//!   extra sources (tests).
//! - Before each stage, `has_hook(hook)`; if false, carry on as if `Pass`
//!   (running a hook without a script returns its fall-through verdict —
//!   for `auth` that is Reject 535). Without an eod script the session's
//!   built-in eod queues every recipient to its transport; there is no
//!   second default here.
//! - For each command line, `proxy_wants(VERB, server_knows_verb)`, and for
//!   the line after a proxy verdict with `next = true`.
//! - `run(hook, input).await` → [`HookOutcome`]: act on `verdict` (render
//!   `reply` with or without the enhanced code; close after it when
//!   `disconnect`), keep `context` for the next hook of the connection, write
//!   `history`, queue `queued` (eod, only with `Accept`), set the recipient's
//!   `transportid` (rcptto), and log `error` with the connection id.
//! - `fcrdns(ip)` fills `connection.remoteptr`.

pub mod api;
pub mod axigen;
mod engine;
pub mod hooks;
pub mod pattern;
mod sandbox;
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use engine::{LoadedSources, PolicyEngine, ScriptSource};
pub use hooks::{reference_markdown, DefaultReply, Fallback, Hook, HookSpec, VerdictKind, HOOKS};
pub use testing::{outcome_json, test_input, test_script};

use crate::envelope::{ConnectionInfo, TransactionInfo};
use crate::proto::reply::{EnhancedCode, SmtpReply};
pub use crate::store::queue::{AttachSource, OverquotaAction, ReportWording, ReportWordings};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax error; `message` is Lua's `file:line: message`.
    #[error("{message}")]
    Compile {
        path: PathBuf,
        line: Option<u32>,
        message: String,
    },
    #[error("creating a Lua state: {0}")]
    State(String),
    #[error("{0}")]
    Input(String),
    /// `[scripts] axigen` policies that do not compile: every error
    /// diagnostic, one per line, each `file:line:col: error: …`.
    #[error("Axigen policy errors:\n{0}")]
    Axigen(String),
    /// More than one file failed: each error, one per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PolicyError>),
}

/// What a hook run is given.
#[derive(Debug, Clone)]
pub struct HookInput {
    pub connection: ConnectionInfo,
    pub transaction: Option<TransactionInfo>,
    pub arguments: HookArguments,
    /// The connection's `context` table (plain data); `Null` = empty table.
    pub context: serde_json::Value,
}

/// `arguments` in scripts.
#[derive(Debug, Clone)]
pub enum HookArguments {
    None,
    Helo {
        verb: String,
        host: String,
    },
    Auth {
        mechanism: String,
        username: String,
        password: String,
    },
    MailFrom {
        address: String,
        params: BTreeMap<String, String>,
    },
    RcptTo {
        address: String,
        params: BTreeMap<String, String>,
    },
    Proxy {
        command: String,
    },
    /// headers and eod: the raw message as received, including our Received
    /// header; `headers_only` for the headers hook (the body has not arrived).
    Mail {
        message: bytes::Bytes,
        headers_only: bool,
    },
    /// predelivery and postdelivery: `arguments.delivery`.
    Delivery(DeliveryInfo),
}

/// One queue entry about to be (pre) or just (post) handed to its next hop.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeliveryInfo {
    pub queue_id: String,
    pub transaction_id: String,
    pub sender: String,
    pub recipient: String,
    pub transportid: String,
    pub metadata: BTreeMap<String, String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Unix time the entry was queued.
    pub queued_at: f64,
    /// "host:port" (or MX name) of the next hop, when known.
    pub next_hop: Option<String>,
    /// postdelivery: what the next hop said (or the local error).
    pub result: Option<DeliveryResult>,
    /// Size of the message in bytes.
    pub size: u64,
    /// postdelivery after a temporary failure: Unix time of the next attempt.
    pub next_attempt: Option<f64>,
    /// postdelivery after a temporary failure: attempts left before the
    /// entry expires (an estimate from the backoff and `queue.max_lifetime`).
    pub remaining_attempts: Option<u32>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeliveryResult {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
    /// A connection/TLS/DNS error rather than an SMTP reply.
    pub local_error: bool,
}

/// What a hook run decided.
#[derive(Debug, Clone)]
pub struct HookOutcome {
    pub verdict: HookVerdict,
    /// The updated `context`; hand it to the next hook of the connection.
    pub context: serde_json::Value,
    /// eod: what `mail:queue` asked for. Non-empty only with `Accept`.
    pub queued: Vec<QueueRequest>,
    /// `History()` calls, kept whatever the verdict.
    pub history: Vec<HistoryRequest>,
    /// rcptto (and predelivery): `Pass({transportid = "x"})` or
    /// `Accept({transportid = "x"})`.
    pub transportid: Option<String>,
    /// predelivery: where this attempt goes, `Pass({host, port, tls})`.
    pub route: Option<Route>,
    /// postdelivery: the wording of this entry's reports,
    /// `Pass({bounce = {…}, delay = {…}, success = {…}})`.
    pub reports: ReportWordings,
    /// Script error message and traceback; the caller logs it with the
    /// connection id.
    pub error: Option<String>,
    /// Which rate limits / greylist entries decided (`state.note`, a
    /// denying `rate.check`): the history of a refusal records them.
    pub decided_by: Vec<String>,
}

/// A predelivery script's next hop for one attempt: what it names replaces
/// the transport's (and `metadata.relayhost`'s) setting, the rest stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// `"[192.0.2.1]"`, `"192.0.2.1"` or a name resolved to its addresses
    /// (no MX lookup), optionally with `:port`.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The transport TLS modes: none, opportunistic, required, verify.
    pub tls: Option<crate::config::TransportTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HookVerdict {
    /// Let the server handle the (possibly rewritten, proxy only) command.
    Pass {
        command: Option<String>,
        next: bool,
    },
    Reply {
        reply: SmtpReply,
        disconnect: bool,
        next: bool,
    },
    /// An explicit acceptance: in rcptto the one way to accept a recipient
    /// the built-in relay rule refuses. `reply` is the script's own reply
    /// (`reason`/`reply_codes`) or the hook's default.
    Accept {
        reply: SmtpReply,
        /// The script chose the reply text or codes (else the server's own).
        custom: bool,
        rewrite: Rewrite,
    },
    Reject {
        reply: SmtpReply,
        disconnect: bool,
    },
    Defer {
        reply: SmtpReply,
        disconnect: bool,
    },
}

impl HookVerdict {
    pub fn pass() -> HookVerdict {
        HookVerdict::Pass {
            command: None,
            next: false,
        }
    }

    /// The SMTP reply to send, if this verdict has one.
    pub fn reply(&self) -> Option<&SmtpReply> {
        match self {
            HookVerdict::Pass { .. } => None,
            HookVerdict::Reply { reply, .. }
            | HookVerdict::Accept { reply, .. }
            | HookVerdict::Reject { reply, .. }
            | HookVerdict::Defer { reply, .. } => Some(reply),
        }
    }

    pub fn disconnect(&self) -> bool {
        match self {
            HookVerdict::Reply { disconnect, .. }
            | HookVerdict::Reject { disconnect, .. }
            | HookVerdict::Defer { disconnect, .. } => *disconnect,
            _ => false,
        }
    }

    pub fn kind(&self) -> VerdictKind {
        match self {
            HookVerdict::Pass { .. } => VerdictKind::Pass,
            HookVerdict::Reply { .. } => VerdictKind::Reply,
            HookVerdict::Accept { .. } => VerdictKind::Accept,
            HookVerdict::Reject { .. } => VerdictKind::Reject,
            HookVerdict::Defer { .. } => VerdictKind::Defer,
        }
    }
}

/// What a stage `Accept({...})` rewrites (Halon's options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// helo: the HELO/EHLO name the session keeps.
    pub host: Option<String>,
    /// mailfrom: the envelope sender ("" = null sender).
    pub sender: Option<String>,
    /// rcptto: the envelope recipient.
    pub recipient: Option<String>,
    /// rcptto: the recipient's transport.
    pub transportid: Option<String>,
}

/// One `mail:queue(...)` (or the default eod's queueing of one recipient).
#[derive(Debug, Clone)]
pub struct QueueRequest {
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub transportid: String,
    /// The message with the script's header/body changes applied.
    pub message: bytes::Bytes,
    pub metadata: BTreeMap<String, String>,
    pub hold: bool,
    pub jobid: Option<String>,
    pub delay: Option<Duration>,
    pub dsn: QueueDsn,
    /// `overquota = "reject" | "tmpreject"`: what a next hop's X.2.2 means.
    pub overquota: Option<OverquotaAction>,
}

/// RFC 3461 parameters for one queued recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueDsn {
    pub envid: Option<String>,
    /// "FULL" or "HDRS".
    pub ret: Option<String>,
    /// Comma-separated NOTIFY list, e.g. "FAILURE,DELAY".
    pub notify: Option<String>,
    /// "rfc822;user@example.org".
    pub orcpt: Option<String>,
}

/// One `History(...)` call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryRequest {
    /// REJECT, DELETE, DELIVER, DEFER or ERROR.
    pub action: crate::store::history::HistoryAction,
    pub recipient: String,
    pub sender: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub transportid: Option<String>,
    pub reason: Option<String>,
}

/// Build the reply of a verdict from what the script chose and the hook's
/// defaults.
pub(crate) fn build_reply(
    default: DefaultReply,
    code: Option<u16>,
    enhanced: Option<Option<EnhancedCode>>,
    reason: Option<Vec<String>>,
) -> SmtpReply {
    let code = code.unwrap_or(default.code);
    let enhanced = match enhanced {
        Some(e) => e,
        None => {
            let mut e = default.enhanced;
            let class = (code / 100) as u8;
            if class != e.0 && (2..=5).contains(&class) {
                e.0 = class;
            }
            Some(e)
        }
    };
    let lines = match reason {
        Some(lines) if !lines.is_empty() => split_long_lines(lines),
        _ => vec![default.text.to_string()],
    };
    SmtpReply {
        code,
        enhanced,
        lines,
    }
}

/// Reply text per line, in bytes: RFC 5321 §4.5.3.1.5 allows 512 per reply
/// line including the code and CRLF.
const REPLY_TEXT_MAX: usize = 480;
/// Lines of one reply a script may produce.
const REPLY_LINES_MAX: usize = 64;

fn split_long_lines(lines: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        let mut rest = line.as_str();
        while rest.len() > REPLY_TEXT_MAX {
            let mut cut = REPLY_TEXT_MAX;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        out.push(rest.to_string());
    }
    out.truncate(REPLY_LINES_MAX);
    out
}
