//! `sluice translate --explain FILE`: what an Axigen policy does once it
//! runs in Sluice, event by event — the hook and SMTP stage it runs at, the
//! methods it calls, the variables it sets that take effect (and which of
//! them become settings for the rest of the session), and every construct
//! Sluice only approximates or does not support. An operator migrating from
//! Axigen reads this instead of the generated Lua.
//!
//! The facts about each variable and method live in the tables below
//! ([`set_effect`], [`method_effect`]); when the runtime
//! (lib-lua/axigen.lua) or the delivery code learns to apply more, change
//! them here — the unit tests pin the wording of the important ones.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use super::ast::*;
use super::check::Analysis;
use super::vars::{self, Access, Event};
use super::Diagnostic;

/// onRelay settings Sluice's delivery applies (the runtime's
/// `Ax:relay_route` turns them into the predelivery `Pass({host, port, tls})`
/// route); the other onRelay settings are reported as unsupported.
const RELAY_APPLIED: &[&str] = &[
    "remotesmtphost",
    "remotesmtpport",
    "remotesmtpip",
    "sslenabled",
    "allowstarttls",
];

/// Bounce / success-notice settings of the delivery events Sluice applies
/// (`Ax:report_wording` → the postdelivery `Pass({bounce, delay, success})`).
const DELIVERY_APPLIED: &[&str] = &[
    "sendndr",
    "ndrattachsource",
    "ndrsubject",
    "ndrsender",
    "ndrmessage",
    "ndrrcptmessage",
    "ndrmessagefooter",
    "dsnsender",
    "dsnsubject",
    "dsnmessage",
    "dsnrcptmessage",
    "dsnmessagefooter",
];

/// Where and when an event runs.
fn stage(e: Event) -> &'static str {
    match e {
        Event::Connect => "when the client connects, before the 220 banner",
        Event::Ehlo => "at EHLO / HELO",
        Event::MailFrom => "at MAIL FROM",
        Event::RcptTo => "at each RCPT TO",
        Event::HeadersReceived => "during DATA, once the message headers have arrived",
        Event::BodyChunk => {
            "at end of data, before onDataReceived (once over the whole body, not per chunk)"
        }
        Event::DataReceived => "at end of data, before the reply to the final dot",
        Event::Processing => {
            "at end of data, after onBodyChunk and onDataReceived, before the reply to the final dot"
        }
        Event::Relay => "before each delivery attempt to the next hop",
        Event::DeliverySuccess => "after a delivery attempt the next hop accepted (2xx)",
        Event::DeliveryFailure => "after a delivery attempt the next hop refused for good (5xx)",
        Event::TemporaryDeliveryFailure => {
            "after a delivery attempt that failed temporarily (4xx, or no connection)"
        }
    }
}

/// What setting a predefined variable does.
enum Effect {
    /// Kept for the rest of the connection (context axigen.session).
    Session(String),
    /// For this command, event or message.
    Once(String),
    /// Recorded, but Sluice does not apply it.
    Unsupported(String),
}

/// What setting a predefined variable does in `e`; `None`: no effect there.
fn set_effect(key: &str, e: Event) -> Option<Effect> {
    let s = |t: &str| Some(Effect::Session(t.to_string()));
    let once = |t: &str| Some(Effect::Once(t.to_string()));
    // Not known in this event: Axigen ignores the set, so does Sluice.
    vars::access(key, e)?;
    if e == Event::Relay && vars::access(key, e) == Some(Access::Rw) {
        return Some(if RELAY_APPLIED.contains(&key) {
            Effect::Once("onRelay setting, applied to this delivery".to_string())
        } else {
            Effect::Unsupported(
                "onRelay setting: recorded (context axigen.relay) but not applied by Sluice's \
                 delivery"
                    .to_string(),
            )
        });
    }
    if matches!(
        e,
        Event::DeliverySuccess | Event::DeliveryFailure | Event::TemporaryDeliveryFailure
    ) && vars::access(key, e) == Some(Access::Rw)
    {
        return Some(if DELIVERY_APPLIED.contains(&key) {
            Effect::Once("bounce / notice setting, applied".to_string())
        } else {
            Effect::Unsupported(
                "bounce / notice setting: recorded (context axigen.ndr / axigen.dsn) but not \
                 applied by Sluice's DSN code"
                    .to_string(),
            )
        });
    }
    match key {
        "smtpaction" => once(
            "the verdict of this command: accept (the built-in rules still decide relaying), \
             reject (5xx), tmpreject (4xx), abort (421 and the connection is closed)",
        ),
        "smtpexplanation" => once("the reply text of reject / tmpreject / abort"),
        "smtpgreeting" => once("the 220 banner"),
        "maxdatasize" => {
            s("message size limit in KB: EHLO's SIZE, MAIL FROM SIZE= and the data itself (552 5.3.4), never above [limits] message_size")
        }
        "maxrcptcount" => s("recipients per message, enforced at RCPT TO (452 4.5.3), never above [limits] recipients"),
        "maxreceivedheaders" => s(
            "Received headers allowed before the message counts as looping (554 5.4.6), \
             checked at end of data",
        ),
        "allowstarttls" => s("\"no\": EHLO stops advertising STARTTLS and STARTTLS is refused"),
        "allowpipelining" => s("\"no\": EHLO stops advertising PIPELINING"),
        "allow8bitmime" => s("\"no\": EHLO stops advertising 8BITMIME; BODY=8BITMIME gets 555 5.5.4"),
        "allowbinarydata" => s("\"no\": EHLO stops advertising CHUNKING; BDAT gets 502 5.5.1"),
        "allowdsn" => s("\"no\": EHLO stops advertising DSN; RET/ENVID/NOTIFY/ORCPT get 555 5.5.4"),
        "localdelivery" | "remotedelivery" => s(
            "narrows relaying at RCPT TO (\"none\", \"auth\": 550 5.7.1); local = relay.domains; \
             the built-in relay rule still applies",
        ),
        "spfresult" | "spfexplanation" | "reversednsresult" | "dnsblresult"
        | "dnsblexplanation" => s("check result, read by later events (SPFResult Fail also fails the next MAIL FROM)"),
        "dnsblserver" => s("the DNSBL zone(s) checkDNSBL asks (spaces or commas between zones)"),
        "allowedcountries" | "bannedcountries" | "actiongeoipban" => {
            s("input of checkGeoIp (ActionGeoIPBan: accept, reject, tmpreject, abort)")
        }
        "overquotaaction" => None,
        "delaydelivery" => once(
            "delays the first delivery attempt (relative \"+[[nnh] nnm]nn[s]\" only; an absolute \
             date delivers at once)",
        ),
        "currentrcpt" => once("rewrites the recipient: queued under the new address at end of data"),
        "currentrcptfolder" => once("delivery metadata `folder` of this recipient"),
        "currentrcptrelayhost" => once("delivery metadata `relayhost`: this recipient's next hop"),
        "headername" | "headervalue" => once("input of the header methods"),
        "filtername" | "filtertype" | "filteraddress" | "filternamepattern" => {
            once("input of addFilter / executeFilters")
        }
        _ => None,
    }
}

/// What a predefined method does in `e` (`canon`: its canonical name).
fn method_effect(canon: &str, e: Event) -> String {
    let later = matches!(e, Event::RcptTo | Event::HeadersReceived);
    let t = match canon {
        "checkSPF" => {
            "SPF of the client for the MAIL FROM address (the HELO name before MAIL FROM \
             or for the null sender) → SPFResult, SPFExplanation"
                .to_string()
        }
        "checkReverseDNS" => {
            "forward-confirmed PTR name of the client → ReverseDNSResult (Pass, Fail, TempError)"
                .to_string()
        }
        "checkDNSBL" => {
            "asks the DNSBLServer zone(s) for the client's address → DNSBLResult (the A \
             answer, \"\" when not listed or on a DNS error), DNSBLExplanation"
                .to_string()
        }
        "checkSenderMX" => {
            "MX (or address) of the sender's domain → SenderMXCheckResult (Pass, Fail, \
             Neutral for the null sender, Error on a DNS failure)"
                .to_string()
        }
        "checkGeoIp" => "the client's country ([geoip] country_db) against AllowedCountries / \
             BannedCountries → GeoIPResult, isGeoIPBanned; a banned country gets ActionGeoIPBan"
            .to_string(),
        "addHeader"
        | "addIfNotExistsHeader"
        | "removeFirstHeader"
        | "removeHeader"
        | "removeHeaderValue"
        | "modifyHeader"
        | "modifyIfExistsHeader" => {
            if later {
                "header change (HeaderName / HeaderValue), kept and applied to the message at end \
                 of data"
                    .to_string()
            } else {
                "header change (HeaderName / HeaderValue) of the queued message".to_string()
            }
        }
        "readHeader" => "reads HeaderName into HeaderValue".to_string(),
        "checkExistsHeader" => "sets existsHeader to yes / no".to_string(),
        "addRcpt" => "adds currentRcpt as a recipient (queued at end of data)".to_string(),
        "discardRcpt" => {
            "drops this recipient: the client gets 250, nothing is queued for it".to_string()
        }
        "addFilter" => "registers a Lua filter (require(\"axigen\").filters.NAME, or \
             module.function in filterAddress)"
            .to_string(),
        "executeFilters" => {
            "runs the registered Lua filters matching filterNamePattern; a filter's \
             action stands when the policy sets no smtpAction"
                .to_string()
        }
        _ => String::new(),
    };
    match vars::method(canon) {
        Some((_, mask)) if !vars::method_works_in(mask, e) => {
            format!("no effect in {}", e.name())
        }
        _ => t,
    }
}

/// One statement's fact, with the custom method it came through.
struct Fact {
    line: u32,
    via: Option<String>,
    name: String,
}

#[derive(Default)]
struct Walk {
    calls: Vec<Fact>,
    sets: Vec<Fact>,
    reads: Vec<Fact>,
    seen: HashSet<String>,
}

fn cond_reads(c: &Cond, via: &Option<String>, out: &mut Vec<Fact>) {
    match &c.kind {
        CondKind::Cmp { var, value, .. } => {
            out.push(Fact {
                line: var.pos.line,
                via: via.clone(),
                name: var.text.clone(),
            });
            value_reads(value, via, out);
        }
        CondKind::Not(s) => cond_reads(s, via, out),
        CondKind::AllOf(v) | CondKind::AnyOf(v) => v.iter().for_each(|s| cond_reads(s, via, out)),
        CondKind::Invalid => {}
    }
}

fn value_reads(v: &Value, via: &Option<String>, out: &mut Vec<Fact>) {
    for p in &v.parts {
        if let Part::Var(n) = p {
            out.push(Fact {
                line: n.pos.line,
                via: via.clone(),
                name: n.text.clone(),
            });
        }
    }
}

impl Walk {
    fn stmts(&mut self, items: &[Item], a: &Analysis, body: &[Stmt], via: &Option<String>) {
        for s in body {
            match &s.kind {
                StmtKind::Set { var, value } => {
                    value_reads(value, via, &mut self.reads);
                    self.sets.push(Fact {
                        line: var.pos.line,
                        via: via.clone(),
                        name: var.text.clone(),
                    });
                }
                StmtKind::Call(n) => {
                    self.calls.push(Fact {
                        line: n.pos.line,
                        via: via.clone(),
                        name: n.text.clone(),
                    });
                    if let Some(&i) = a.methods.get(&n.key()) {
                        if self.seen.insert(n.key()) {
                            self.stmts(items, a, &items[i].body, &Some(items[i].name.text.clone()));
                        }
                    }
                }
                StmtKind::Export(_) | StmtKind::Return => {}
                StmtKind::If { cond, then, els } => {
                    cond_reads(cond, via, &mut self.reads);
                    self.stmts(items, a, then, via);
                    if let Some(e) = els {
                        self.stmts(items, a, e, via);
                    }
                }
                StmtKind::Switch { cases, default } => {
                    for (c, b) in cases {
                        cond_reads(c, via, &mut self.reads);
                        self.stmts(items, a, b, via);
                    }
                    if let Some(d) = default {
                        self.stmts(items, a, d, via);
                    }
                }
            }
        }
    }
}

fn at(f: &Fact) -> String {
    match &f.via {
        Some(m) => format!("line {}, in method {m}", f.line),
        None => format!("line {}", f.line),
    }
}

/// The explanation of a checked policy (`diags`: its warnings).
pub fn explain(file: &Path, items: &[Item], a: &Analysis, diags: &[Diagnostic]) -> String {
    let name = file.display();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Axigen policy {name}: what each event does in Sluice.\n\
         Session settings last for the connection (context axigen.session); the rest lasts for \
         the event or the message."
    );
    if a.events.is_empty() {
        let _ = writeln!(out, "\nNo events: the policy does nothing.");
    }
    for (&e, &i) in &a.events {
        let item = &items[i];
        let _ = writeln!(
            out,
            "\n{} ({name}:{}) → hook `{}`, {}",
            e.name(),
            item.name.pos.line,
            e.hook(),
            stage(e)
        );
        let mut w = Walk::default();
        w.stmts(items, a, &item.body, &None);
        let mut notes: Vec<String> = Vec::new();
        if e == Event::BodyChunk {
            notes.push(
                "onBodyChunk runs once, at end of data, over the whole body — not once per chunk \
                 as in Axigen"
                    .into(),
            );
        }
        if matches!(
            e,
            Event::DeliverySuccess | Event::DeliveryFailure | Event::TemporaryDeliveryFailure
        ) {
            notes.push(format!(
                "the postdelivery hook runs every delivery event of the policy; the runtime picks \
                 {} from the delivery result",
                e.name()
            ));
        }
        if w.calls.is_empty() {
            let _ = writeln!(out, "  methods: none");
        } else {
            let _ = writeln!(out, "  methods:");
        }
        for c in &w.calls {
            let k = c.name.to_ascii_lowercase();
            if let Some((canon, _)) = vars::method(&k) {
                let _ = writeln!(out, "    {canon} ({}): {}", at(c), method_effect(canon, e));
                match canon {
                    "executeFilters" => notes.push(format!(
                        "executeFilters ({}) runs Lua filters only; Axigen's external filters \
                         (AV / AS daemons) are not supported",
                        at(c)
                    )),
                    "addFilter" => notes.push(format!(
                        "addFilter ({}) needs a Lua filter; an Axigen external filter address \
                         gives addFilterResult \"error\"",
                        at(c)
                    )),
                    _ => {}
                }
            } else if let Some(&m) = a.methods.get(&k) {
                let _ = writeln!(
                    out,
                    "    {} ({}): custom method (line {}), its statements are listed here",
                    c.name,
                    at(c),
                    items[m].name.pos.line
                );
            }
        }
        // One line per variable, with every place that sets it.
        let mut once: Vec<(&str, String, Vec<String>)> = Vec::new();
        let mut settings: Vec<(&str, String, Vec<String>)> = Vec::new();
        let mut custom: Vec<(&str, String, Vec<String>)> = Vec::new();
        let mut inert: Vec<(&str, String, Vec<String>)> = Vec::new();
        fn add<'a>(
            list: &mut Vec<(&'a str, String, Vec<String>)>,
            name: &'a str,
            t: String,
            at: String,
        ) {
            match list
                .iter_mut()
                .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            {
                Some((_, _, ats)) => ats.push(at),
                None => list.push((name, t, vec![at])),
            }
        }
        for s in &w.sets {
            let k = s.name.to_ascii_lowercase();
            match vars::canonical(&k) {
                None => add(&mut custom, &s.name, String::new(), at(s)),
                Some(canon) => match set_effect(&k, e) {
                    Some(Effect::Session(t)) => add(&mut settings, canon, t, at(s)),
                    Some(Effect::Once(t)) => add(&mut once, canon, t, at(s)),
                    Some(Effect::Unsupported(t)) => {
                        notes.push(format!("{canon} ({}) is not applied", at(s)));
                        add(&mut once, canon, t, at(s))
                    }
                    None => {
                        if k == "overquotaaction" {
                            notes.push(format!(
                                "overquotaAction ({}) has no effect: Sluice has no mailbox quotas",
                                at(s)
                            ));
                        }
                        add(&mut inert, canon, String::new(), at(s))
                    }
                },
            }
        }
        for (title, list) in [
            ("sets (take effect)", &once),
            ("session settings", &settings),
        ] {
            if !list.is_empty() {
                let _ = writeln!(out, "  {title}:");
                for (n, t, ats) in list.iter() {
                    let _ = writeln!(out, "    {n} ({}): {t}", ats.join("; "));
                }
            }
        }
        let short = |list: &[(&str, String, Vec<String>)]| {
            list.iter()
                .map(|(n, _, ats)| format!("{n} ({})", ats.join("; ")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !custom.is_empty() {
            let _ = writeln!(
                out,
                "  custom variables (this event only, unless exported): {}",
                short(&custom)
            );
        }
        if !inert.is_empty() {
            let _ = writeln!(
                out,
                "  sets with no effect in {}: {}",
                e.name(),
                short(&inert)
            );
        }
        // Check results read without their method: the runtime runs the
        // check on the first read.
        let called: HashSet<String> = w
            .calls
            .iter()
            .map(|c| c.name.to_ascii_lowercase())
            .collect();
        let mut implicit: Vec<(&str, String, Vec<String>)> = Vec::new();
        for r in &w.reads {
            let k = r.name.to_ascii_lowercase();
            let (method, what) = match k.as_str() {
                "spfresult" | "spfexplanation" => ("checkspf", "runs the SPF check (spf.check) on the first read"),
                "geoipresult" | "isgeoipbanned" => ("checkgeoip", "looks the client up in [geoip] country_db on the first read (\"\" / \"no\" without it)"),
                _ => continue,
            };
            if !called.contains(method) {
                if let Some(canon) = vars::canonical(&k) {
                    add(&mut implicit, canon, what.to_string(), at(r));
                }
            }
        }
        if !implicit.is_empty() {
            let _ = writeln!(out, "  reads (computed on demand):");
            for (n, t, ats) in &implicit {
                let _ = writeln!(out, "    {n} ({}): {t}", ats.join("; "));
            }
        }
        let mut read_notes = HashSet::new();
        for r in &w.reads {
            let k = r.name.to_ascii_lowercase();
            let note = match k.as_str() {
                "isoverquota" => {
                    Some("isOverquota is always \"no\" (Sluice has no mailbox quotas)")
                }
                "currentrcptfolder" => {
                    Some("currentRcptFolder reads \"INBOX\" unless the policy set it")
                }
                "isrcptlocal" | "isrcptdomainlocal" => Some(
                    "isRcptLocal / isRcptDomainLocal come from require(\"axigen\").local_domains \
                     (\"\" when it is empty); Sluice does not know the mailboxes",
                ),
                _ => None,
            };
            if let Some(n) = note {
                if read_notes.insert(k) {
                    notes.push(format!("{n} ({})", at(r)));
                }
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "  approximated / unsupported:");
            for n in &notes {
                let _ = writeln!(out, "    {n}");
            }
        }
    }
    if !diags.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for d in diags {
            let _ = writeln!(out, "  {d}");
        }
    }
    out
}
