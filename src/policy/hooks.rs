//! Every hook declared once: its name (also the `[scripts]` key), when it
//! runs, which verdicts a script may give, what falling off the end means, what
//! a script error means and the default reply of each verdict. The engine,
//! `sluice check` and the docs all read [`HOOKS`]; nothing else lists hooks.

use std::path::Path;

use crate::config::ScriptsConfig;
use crate::proto::reply::{EnhancedCode, SmtpReply};

/// A point in the life of a connection (or a queued message) where a script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Connect,
    Helo,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Headers,
    Eod,
    Disconnect,
    Proxy,
    PreDelivery,
    PostDelivery,
}

/// The verdict functions a script can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    Pass,
    Reply,
    Accept,
    Reject,
    Defer,
}

impl VerdictKind {
    /// The Lua global that gives this verdict.
    pub fn function(self) -> &'static str {
        match self {
            VerdictKind::Pass => "Pass",
            VerdictKind::Reply => "Reply",
            VerdictKind::Accept => "Accept",
            VerdictKind::Reject => "Reject",
            VerdictKind::Defer => "Defer",
        }
    }

    /// The reply code classes a script may choose with `reply_codes.code`.
    pub fn allowed_classes(self) -> &'static [u16] {
        match self {
            VerdictKind::Pass => &[],
            VerdictKind::Reply => &[2, 3, 4, 5],
            VerdictKind::Accept => &[2],
            VerdictKind::Reject => &[5],
            VerdictKind::Defer => &[4],
        }
    }
}

/// A reply the engine uses when the script does not choose one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultReply {
    pub code: u16,
    pub enhanced: EnhancedCode,
    pub text: &'static str,
}

impl DefaultReply {
    pub fn reply(&self) -> SmtpReply {
        SmtpReply::new(self.code, Some(self.enhanced), self.text)
    }
}

const fn r(code: u16, a: u8, b: u16, c: u16, text: &'static str) -> DefaultReply {
    DefaultReply {
        code,
        enhanced: EnhancedCode(a, b, c),
        text,
    }
}

/// What the engine does when the script gives no verdict (falls off the end)
/// or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `Pass()` — the server carries on as if there were no script.
    Pass,
    Reply(DefaultReply, bool),
    Reject(DefaultReply, bool),
    Defer(DefaultReply, bool),
}

/// Which recipients a refusal (a 4xx/5xx reply) at a hook is recorded for:
/// the history then holds, per recipient, the exact reply the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalHistory {
    /// Nothing: no recipient is known yet (connect, helo, auth, mailfrom,
    /// proxy) or the hook runs after the SMTP dialogue.
    None,
    /// The recipient of the RCPT command (rcptto).
    Recipient,
    /// Every accepted recipient of the transaction (data, headers, eod).
    Transaction,
}

impl Fallback {
    /// The reply this fallback answers with (none for `Pass`).
    pub fn reply(self) -> Option<SmtpReply> {
        match self {
            Fallback::Pass => None,
            Fallback::Reply(d, _) | Fallback::Reject(d, _) | Fallback::Defer(d, _) => {
                Some(d.reply())
            }
        }
    }
}

/// One row of the hook table.
#[derive(Debug)]
pub struct HookSpec {
    pub hook: Hook,
    /// Lowercase name; also the `[scripts]` key.
    pub name: &'static str,
    /// When the server runs it (docs, `sluice check`).
    pub when: &'static str,
    /// Keys of the `arguments` table.
    pub arguments: &'static [&'static str],
    pub verdicts: &'static [VerdictKind],
    pub fallthrough: Fallback,
    pub on_error: Fallback,
    pub reply: DefaultReply,
    pub accept: DefaultReply,
    pub reject: DefaultReply,
    pub defer: DefaultReply,
    /// Options `Accept({...})` takes in this hook (rewrites and reply).
    pub accept_options: &'static [&'static str],
    /// Options `Pass({...})` takes in this hook besides `command`, `next`
    /// and `transportid` (predelivery: the route; postdelivery: the wording
    /// of the entry's reports).
    pub pass_options: &'static [&'static str],
    /// Whose history a refusal at this hook records.
    pub refusal_history: RefusalHistory,
    /// The whole message is there: `mail:queue`, ScanDMARC and ScanDLP work.
    pub full_message: bool,
    /// The configured script path for this hook.
    pub script: fn(&ScriptsConfig) -> Option<&Path>,
}

impl HookSpec {
    pub fn allows(&self, kind: VerdictKind) -> bool {
        self.verdicts.contains(&kind)
    }

    pub fn default_reply(&self, kind: VerdictKind) -> DefaultReply {
        match kind {
            VerdictKind::Pass | VerdictKind::Reply => self.reply,
            VerdictKind::Accept => self.accept,
            VerdictKind::Reject => self.reject,
            VerdictKind::Defer => self.defer,
        }
    }
}

const REPLY: DefaultReply = r(250, 2, 0, 0, "OK");
const ACCEPT: DefaultReply = r(250, 2, 0, 0, "OK");
const REJECT: DefaultReply = r(550, 5, 7, 1, "Rejected by policy");
const DEFER: DefaultReply = r(451, 4, 7, 1, "Deferred by policy, try again later");
const ERROR: DefaultReply = r(421, 4, 3, 0, "Local policy error, try again later");
const EOD_ERROR: DefaultReply = r(451, 4, 3, 0, "Message not queued, try again later");

/// Halon's stage verdicts: connect, helo, mailfrom, rcptto.
const STAGE: &[VerdictKind] = &[
    VerdictKind::Pass,
    VerdictKind::Reply,
    VerdictKind::Accept,
    VerdictKind::Reject,
    VerdictKind::Defer,
];
const BODY_STAGE: &[VerdictKind] = &[VerdictKind::Pass, VerdictKind::Reject, VerdictKind::Defer];
const DELIVERY_ARGS: &[&str] = &[
    "queue_id",
    "transaction_id",
    "sender",
    "recipient",
    "transportid",
    "metadata",
    "attempt",
    "queued_at",
    "next_hop",
    "result",
    "size",
    "next_attempt",
    "remaining_attempts",
];
const STAGE_ERROR: Fallback = Fallback::Defer(ERROR, true);

/// How many hooks there are (arrays indexed by [`Hook`] use it).
pub const HOOK_COUNT: usize = 12;

/// The hook table. Order is the order hooks run in a session.
pub static HOOKS: [HookSpec; HOOK_COUNT] = [
    HookSpec {
        hook: Hook::Connect,
        name: "connect",
        when: "after accept, before the banner",
        arguments: &[],
        verdicts: STAGE,
        fallthrough: Fallback::Pass,
        on_error: STAGE_ERROR,
        reply: r(220, 2, 0, 0, "ESMTP"),
        accept: r(220, 2, 0, 0, "ESMTP"),
        // RFC 5321 §3.1: a server refusing service answers 554 (or 421) instead of 220.
        reject: r(554, 5, 7, 1, "Connection refused by policy"),
        defer: r(421, 4, 7, 0, "Service not available, try again later"),
        accept_options: &[],
        pass_options: &[],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.connect.as_deref(),
    },
    HookSpec {
        hook: Hook::Helo,
        name: "helo",
        when: "on EHLO/HELO",
        arguments: &["verb", "host"],
        verdicts: STAGE,
        fallthrough: Fallback::Pass,
        on_error: STAGE_ERROR,
        reply: REPLY,
        accept: ACCEPT,
        reject: REJECT,
        defer: DEFER,
        accept_options: &["host"],
        pass_options: &[],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.helo.as_deref(),
    },
    HookSpec {
        hook: Hook::Auth,
        name: "auth",
        when: "on AUTH PLAIN/LOGIN",
        arguments: &["mechanism", "username", "password"],
        verdicts: &[VerdictKind::Accept, VerdictKind::Reject, VerdictKind::Defer],
        fallthrough: Fallback::Reject(r(535, 5, 7, 8, "Authentication credentials invalid"), false),
        on_error: STAGE_ERROR,
        reply: REPLY,
        accept: r(235, 2, 7, 0, "Authentication successful"),
        reject: r(535, 5, 7, 8, "Authentication credentials invalid"),
        // RFC 4954 §6: temporary authentication failure.
        defer: r(454, 4, 7, 0, "Temporary authentication failure"),
        accept_options: &["reason", "reply_codes"],
        pass_options: &[],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.auth.as_deref(),
    },
    HookSpec {
        hook: Hook::MailFrom,
        name: "mailfrom",
        when: "on MAIL FROM",
        arguments: &["sender", "address", "params"],
        verdicts: STAGE,
        fallthrough: Fallback::Pass,
        on_error: STAGE_ERROR,
        reply: REPLY,
        accept: r(250, 2, 1, 0, "Sender OK"),
        reject: REJECT,
        defer: DEFER,
        accept_options: &["sender", "reason", "reply_codes"],
        pass_options: &[],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.mailfrom.as_deref(),
    },
    HookSpec {
        hook: Hook::RcptTo,
        name: "rcptto",
        when: "on each RCPT TO",
        arguments: &["recipient", "address", "params"],
        verdicts: STAGE,
        fallthrough: Fallback::Pass,
        on_error: STAGE_ERROR,
        reply: REPLY,
        accept: r(250, 2, 1, 5, "Recipient OK"),
        reject: REJECT,
        defer: DEFER,
        accept_options: &["recipient", "transportid", "reason", "reply_codes"],
        pass_options: &[],
        refusal_history: RefusalHistory::Recipient,
        full_message: false,
        script: |s| s.rcptto.as_deref(),
    },
    HookSpec {
        hook: Hook::Data,
        name: "data",
        when: "on DATA or the first BDAT",
        arguments: &[],
        verdicts: BODY_STAGE,
        fallthrough: Fallback::Pass,
        on_error: STAGE_ERROR,
        reply: REPLY,
        accept: ACCEPT,
        reject: REJECT,
        defer: DEFER,
        accept_options: &[],
        pass_options: &[],
        refusal_history: RefusalHistory::Transaction,
        full_message: false,
        script: |s| s.data.as_deref(),
    },
    HookSpec {
        hook: Hook::Headers,
        name: "headers",
        when: "once the header block has arrived",
        arguments: &["mail"],
        verdicts: BODY_STAGE,
        fallthrough: Fallback::Pass,
        on_error: STAGE_ERROR,
        reply: REPLY,
        accept: ACCEPT,
        reject: REJECT,
        defer: DEFER,
        accept_options: &[],
        pass_options: &[],
        refusal_history: RefusalHistory::Transaction,
        full_message: false,
        script: |s| s.headers.as_deref(),
    },
    HookSpec {
        hook: Hook::Eod,
        name: "eod",
        when: "at end of data, once per message",
        arguments: &["mail"],
        verdicts: &[VerdictKind::Accept, VerdictKind::Reject, VerdictKind::Defer],
        fallthrough: Fallback::Defer(EOD_ERROR, false),
        on_error: Fallback::Defer(EOD_ERROR, false),
        reply: REPLY,
        accept: r(250, 2, 0, 0, "Ok: queued"),
        reject: REJECT,
        defer: DEFER,
        accept_options: &["reason", "reply_codes"],
        pass_options: &[],
        refusal_history: RefusalHistory::Transaction,
        full_message: true,
        script: |s| s.eod.as_deref(),
    },
    HookSpec {
        hook: Hook::Disconnect,
        name: "disconnect",
        when: "when the connection has closed (no verdict)",
        arguments: &[],
        verdicts: &[],
        fallthrough: Fallback::Pass,
        on_error: Fallback::Pass,
        reply: REPLY,
        accept: ACCEPT,
        reject: REJECT,
        defer: DEFER,
        accept_options: &[],
        pass_options: &[],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.disconnect.as_deref(),
    },
    HookSpec {
        hook: Hook::Proxy,
        name: "proxy",
        when: "before the server sees a command in proxy_commands (default: the ones it does not know), and the line after next = true",
        arguments: &["command"],
        verdicts: &[VerdictKind::Pass, VerdictKind::Reply],
        fallthrough: Fallback::Pass,
        on_error: Fallback::Reply(ERROR, true),
        reply: REPLY,
        accept: ACCEPT,
        reject: REJECT,
        defer: DEFER,
        accept_options: &[],
        pass_options: &[],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.proxy.as_deref(),
    },
    HookSpec {
        hook: Hook::PreDelivery,
        name: "predelivery",
        when: "before a queued message is handed to its next hop",
        arguments: DELIVERY_ARGS,
        verdicts: &[VerdictKind::Pass, VerdictKind::Reject, VerdictKind::Defer],
        fallthrough: Fallback::Pass,
        on_error: Fallback::Defer(r(451, 4, 3, 0, "Local policy error"), false),
        reply: REPLY,
        accept: ACCEPT,
        reject: r(550, 5, 7, 1, "Rejected by delivery policy"),
        defer: r(451, 4, 7, 1, "Deferred by delivery policy"),
        accept_options: &[],
        pass_options: &["host", "port", "tls"],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.predelivery.as_deref(),
    },
    HookSpec {
        hook: Hook::PostDelivery,
        name: "postdelivery",
        when: "after a delivery attempt, with its result",
        arguments: DELIVERY_ARGS,
        verdicts: &[VerdictKind::Pass, VerdictKind::Reject, VerdictKind::Defer],
        fallthrough: Fallback::Pass,
        on_error: Fallback::Pass,
        reply: REPLY,
        accept: ACCEPT,
        reject: r(550, 5, 7, 1, "Rejected by delivery policy"),
        defer: r(451, 4, 7, 1, "Deferred by delivery policy"),
        accept_options: &[],
        pass_options: &["bounce", "delay", "success"],
        refusal_history: RefusalHistory::None,
        full_message: false,
        script: |s| s.postdelivery.as_deref(),
    },
];

impl Hook {
    pub const ALL: [Hook; HOOK_COUNT] = [
        Hook::Connect,
        Hook::Helo,
        Hook::Auth,
        Hook::MailFrom,
        Hook::RcptTo,
        Hook::Data,
        Hook::Headers,
        Hook::Eod,
        Hook::Disconnect,
        Hook::Proxy,
        Hook::PreDelivery,
        Hook::PostDelivery,
    ];

    pub fn spec(self) -> &'static HookSpec {
        let s = &HOOKS[self as usize];
        debug_assert_eq!(s.hook, self);
        s
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// `"eod"` → `Hook::Eod` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Hook> {
        HOOKS
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .map(|s| s.hook)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A host function that needs the whole message (eod): the error names
/// the hook it was called from.
pub fn require_full_message(hook: Hook, what: &str) -> Result<(), String> {
    if hook.spec().full_message {
        return Ok(());
    }
    let hooks: Vec<&str> = HOOKS
        .iter()
        .filter(|s| s.full_message)
        .map(|s| s.name)
        .collect();
    Err(format!(
        "{what} is only available in the {} hook (this is {})",
        hooks.join(", "),
        hook.name()
    ))
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn describe(f: Fallback) -> String {
    let reply = |d: DefaultReply, disconnect: bool| {
        format!(
            "{} {} {}{}",
            d.code,
            d.enhanced,
            d.text,
            if disconnect { " (disconnect)" } else { "" }
        )
    };
    match f {
        Fallback::Pass => "Pass()".to_string(),
        Fallback::Reply(d, x) => format!("Reply: {}", reply(d, x)),
        Fallback::Reject(d, x) => format!("Reject: {}", reply(d, x)),
        Fallback::Defer(d, x) => format!("Defer: {}", reply(d, x)),
    }
}

/// The hook reference as Markdown, generated from [`HOOKS`] (for the docs
/// and `sluice check --hooks`).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "| hook | runs | arguments | verdicts (default reply) | falling off the end | script error |\n|---|---|---|---|---|---|\n",
    );
    for s in &HOOKS {
        let verdicts = if s.verdicts.is_empty() {
            "—".to_string()
        } else {
            s.verdicts
                .iter()
                .map(|k| match k {
                    VerdictKind::Pass if !s.pass_options.is_empty() => {
                        format!("Pass({{{}}})", s.pass_options.join(", "))
                    }
                    VerdictKind::Pass => "Pass()".to_string(),
                    k => {
                        let d = s.default_reply(*k);
                        format!("{}() ({} {})", k.function(), d.code, d.enhanced)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            s.name,
            s.when,
            if s.arguments.is_empty() {
                "—".to_string()
            } else {
                s.arguments.join(", ")
            },
            verdicts,
            describe(s.fallthrough),
            describe(s.on_error),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order() {
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(HOOKS[i].hook, *h);
            assert_eq!(Hook::from_name(HOOKS[i].name), Some(*h));
        }
    }

    #[test]
    fn defaults_are_consistent() {
        for s in &HOOKS {
            for k in s.verdicts {
                let d = s.default_reply(*k);
                if *k != VerdictKind::Pass {
                    assert!(
                        k.allowed_classes().contains(&(d.code / 100)),
                        "{} {:?}",
                        s.name,
                        k
                    );
                }
                assert_eq!(d.code / 100, d.enhanced.0 as u16, "{} {:?}", s.name, k);
            }
        }
    }

    #[test]
    fn reference_lists_every_hook() {
        let md = reference_markdown();
        for s in &HOOKS {
            assert!(md.contains(&format!("| `{}` |", s.name)));
        }
        assert!(md.contains("Accept() (235 2.7.0)"));
        assert!(md.contains("Defer: 451 4.3.0"));
    }
}
