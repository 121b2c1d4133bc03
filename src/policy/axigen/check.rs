//! Semantic checks over the parsed file: events and methods resolve, no
//! recursion, variables are used where they exist, literals (regexes, IP
//! ranges, numbers) are valid, nesting stays within 16 levels — and what
//! would go wrong only at run time on this server: a scanner method with
//! no input (checkDNSBL with DNSBLServer never set), GeoIP without a
//! database ([`CompileEnv`]), onBodyChunk's single run. A policy `sluice
//! check` passes must not fail in a dialogue; what it cannot rule out it
//! says as a warning with the file:line.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Net, Ipv6Subnets};

use super::ast::*;
use super::vars::{self, Access, Event};
use super::{CompileEnv, Pos, Severity};

/// The language's nesting limit for if/switch and for condition groups.
pub const MAX_NESTING: usize = 16;

pub struct Analysis {
    /// Event → index into the items.
    pub events: BTreeMap<Event, usize>,
    /// Lowercase method name → index into the items.
    pub methods: HashMap<String, usize>,
    /// Custom methods each event reaches (lowercase names).
    pub reach: BTreeMap<Event, BTreeSet<String>>,
    /// Some incoming event has an effect that shows only at end of data.
    pub needs_eod: bool,
}

pub struct Checker<'a> {
    items: &'a [Item],
    pub diags: Vec<(Pos, Severity, String)>,
    seen: HashSet<(Pos, String)>,
    /// Custom variables (lowercase) set or exported anywhere.
    custom: HashSet<String>,
    /// Per event, the variables (lowercase) set by statements it runs.
    set_in: BTreeMap<Event, HashSet<String>>,
    env: CompileEnv,
    /// Where a running event reads GeoIP results or calls checkGeoIp.
    geoip_uses: Vec<Pos>,
}

/// The values smtpAction and ActionGeoIPBan take effect with.
const ACTIONS: &[&str] = &["accept", "reject", "tmpreject", "abort"];

fn collect_sets(stmts: &[Stmt], out: &mut HashSet<String>, calls: &mut Vec<Name>) {
    for s in stmts {
        match &s.kind {
            StmtKind::Set { var, .. } => {
                out.insert(var.key());
            }
            StmtKind::Call(n) => calls.push(n.clone()),
            StmtKind::Export(_) | StmtKind::Return => {}
            StmtKind::If { then, els, .. } => {
                collect_sets(then, out, calls);
                if let Some(e) = els {
                    collect_sets(e, out, calls);
                }
            }
            StmtKind::Switch { cases, default } => {
                for (_, b) in cases {
                    collect_sets(b, out, calls);
                }
                if let Some(d) = default {
                    collect_sets(d, out, calls);
                }
            }
        }
    }
}

/// Outputs of the predefined methods (lowercase).
fn method_outputs(m: &str) -> &'static [&'static str] {
    match m {
        "checkspf" => &["spfresult", "spfexplanation"],
        "checkreversedns" => &["reversednsresult"],
        "checkdnsbl" => &["dnsblresult", "dnsblexplanation"],
        "checksendermx" => &["sendermxcheckresult"],
        "checkgeoip" => &["geoipresult", "isgeoipbanned"],
        "readheader" => &["headervalue"],
        "checkexistsheader" => &["existsheader"],
        "addfilter" => &["addfilterresult", "addfilterexplanation"],
        _ => &[],
    }
}

impl<'a> Checker<'a> {
    pub fn new(items: &'a [Item]) -> Self {
        Checker {
            items,
            diags: Vec::new(),
            seen: HashSet::new(),
            custom: HashSet::new(),
            set_in: BTreeMap::new(),
            env: CompileEnv::default(),
            geoip_uses: Vec::new(),
        }
    }

    /// Check for the server `env` describes.
    pub fn with_env(mut self, env: CompileEnv) -> Self {
        self.env = env;
        self
    }

    /// Is `var` set in `e` or in an incoming event that runs before it (the
    /// session keeps check inputs such as DNSBLServer for the connection)?
    fn set_by(&self, var: &str, e: Event) -> bool {
        self.set_in
            .iter()
            .any(|(ev, s)| (*ev == e || (ev.incoming() && *ev < e)) && s.contains(var))
    }

    fn report(&mut self, pos: Pos, sev: Severity, msg: String) {
        if self.seen.insert((pos, msg.clone())) {
            self.diags.push((pos, sev, msg));
        }
    }

    fn error(&mut self, pos: Pos, msg: String) {
        self.report(pos, Severity::Error, msg)
    }

    fn warn(&mut self, pos: Pos, msg: String) {
        self.report(pos, Severity::Warning, msg)
    }

    pub fn run(&mut self) -> Analysis {
        let items = self.items;
        let mut events = BTreeMap::new();
        let mut methods: HashMap<String, usize> = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            match it.kind {
                ItemKind::Event => match Event::from_name(&it.name.text) {
                    Some(e) => {
                        if let Some(&first) = events.get(&e) {
                            let first: &Item = &items[first];
                            self.error(
                                it.name.pos,
                                format!(
                                    "event {} is defined twice (first at line {})",
                                    e.name(),
                                    first.name.pos.line
                                ),
                            );
                        } else {
                            events.insert(e, i);
                        }
                    }
                    None => self.error(
                        it.name.pos,
                        format!(
                            "unknown event `{}` (events: {})",
                            it.name.text,
                            Event::ALL.map(|e| e.name()).join(", ")
                        ),
                    ),
                },
                ItemKind::Method => {
                    let key = it.name.key();
                    if let Some((canon, _)) = vars::method(&key) {
                        self.error(
                            it.name.pos,
                            format!(
                                "method `{}` redefines the predefined method {canon}",
                                it.name.text
                            ),
                        );
                    } else if let Some(&first) = methods.get(&key) {
                        self.error(
                            it.name.pos,
                            format!(
                                "method `{}` is defined twice (first at line {})",
                                it.name.text, items[first].name.pos.line
                            ),
                        );
                    } else {
                        methods.insert(key, i);
                    }
                }
            }
        }
        // Variables set anywhere, and the call graph.
        let mut sets_by_item: Vec<HashSet<String>> = Vec::new();
        let mut calls_by_item: Vec<Vec<Name>> = Vec::new();
        for it in items {
            let mut s = HashSet::new();
            let mut c = Vec::new();
            collect_sets(&it.body, &mut s, &mut c);
            for name in &c {
                for o in method_outputs(&name.key()) {
                    s.insert(o.to_string());
                }
            }
            self.custom
                .extend(s.iter().filter(|v| vars::canonical(v).is_none()).cloned());
            sets_by_item.push(s);
            calls_by_item.push(c);
        }
        for it in items {
            let mut exports = Vec::new();
            collect_exports(&it.body, &mut exports);
            for e in exports {
                if vars::canonical(&e.text).is_none() && !self.custom.contains(&e.key()) {
                    self.error(
                        e.pos,
                        format!("export of `{}`, which is never set in this file", e.text),
                    );
                }
            }
        }
        // Calls resolve.
        for calls in &calls_by_item {
            for c in calls {
                let k = c.key();
                if !methods.contains_key(&k) && vars::method(&k).is_none() {
                    self.error(
                        c.pos,
                        format!(
                            "call of undefined method `{}` (define `method {} {{ … }}` in this file, or call a predefined method)",
                            c.text, c.text
                        ),
                    );
                }
            }
        }
        self.recursion(&methods, &calls_by_item);
        // What each event reaches.
        let mut reach = BTreeMap::new();
        for (&e, &i) in &events {
            let mut seen = BTreeSet::new();
            let mut stack = vec![i];
            let mut sets = sets_by_item[i].clone();
            while let Some(j) = stack.pop() {
                for c in &calls_by_item[j] {
                    if let Some(&m) = methods.get(&c.key()) {
                        if seen.insert(c.key()) {
                            sets.extend(sets_by_item[m].iter().cloned());
                            stack.push(m);
                        }
                    }
                }
            }
            self.set_in.insert(e, sets);
            reach.insert(e, seen);
        }
        // Contexts: the events that run each item.
        let mut needs_eod = false;
        for (idx, it) in items.iter().enumerate() {
            let ctx: Vec<Event> = match it.kind {
                ItemKind::Event => match Event::from_name(&it.name.text) {
                    Some(e) if events.get(&e) == Some(&idx) => vec![e],
                    _ => continue,
                },
                ItemKind::Method => {
                    if methods.get(&it.name.key()) != Some(&idx) {
                        continue;
                    }
                    reach
                        .iter()
                        .filter(|(_, r)| r.contains(&it.name.key()))
                        .map(|(e, _)| *e)
                        .collect()
                }
            };
            let label = match it.kind {
                ItemKind::Method => Some(it.name.text.clone()),
                ItemKind::Event => None,
            };
            if ctx
                .iter()
                .any(|e| e.incoming() && e.hook() != crate::policy::Hook::Eod)
                && has_eod_effect(&it.body)
            {
                needs_eod = true;
            }
            // A scanner filter selected before end of data scans there.
            if self.env.scanners
                && ctx
                    .iter()
                    .any(|e| e.incoming() && e.hook() != crate::policy::Hook::Eod)
                && calls(&it.body, "executefilters")
            {
                needs_eod = true;
            }
            self.stmts(&it.body, &ctx, label.as_deref(), 0);
        }
        if let Some(&i) = events.get(&Event::BodyChunk) {
            self.warn(
                items[i].name.pos,
                "onBodyChunk runs once, at end of data, over the whole body (Sluice has no \
                 per-chunk hook), just before onDataReceived"
                    .to_string(),
            );
        }
        if !self.env.geoip {
            if let Some(&first) = self.geoip_uses.iter().min() {
                self.warn(
                    first,
                    "GeoIP has no country database here ([geoip] country_db is not set): \
                     GeoIPResult reads \"\" and isGeoIPBanned \"no\", so checkGeoIp bans \
                     no one (first use; the policy runs without it)"
                        .to_string(),
                );
            }
        }
        Analysis {
            events,
            methods,
            reach,
            needs_eod,
        }
    }

    fn recursion(&mut self, methods: &HashMap<String, usize>, calls: &[Vec<Name>]) {
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut color: HashMap<usize, u8> = HashMap::new();
        let mut names: Vec<(&String, &usize)> = methods.iter().collect();
        names.sort_by_key(|(_, &i)| i);
        for (_, &start) in names {
            if color.get(&start).copied().unwrap_or(0) != 0 {
                continue;
            }
            // Iterative DFS: (item, next call index); path of items.
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            color.insert(start, 1);
            while let Some(&mut (node, ref mut ci)) = stack.last_mut() {
                if *ci >= calls[node].len() {
                    color.insert(node, 2);
                    stack.pop();
                    continue;
                }
                let call = &calls[node][*ci];
                *ci += 1;
                let Some(&target) = methods.get(&call.key()) else {
                    continue;
                };
                match color.get(&target).copied().unwrap_or(0) {
                    0 => {
                        color.insert(target, 1);
                        stack.push((target, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let mut path: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| self.items[*n].name.text.clone())
                            .collect();
                        path.push(self.items[target].name.text.clone());
                        let pos = call.pos;
                        self.error(
                            pos,
                            format!(
                                "recursive call of method `{}` ({}); methods cannot call themselves",
                                call.text,
                                path.join(" → ")
                            ),
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    fn stmts(&mut self, body: &[Stmt], ctx: &[Event], method: Option<&str>, depth: usize) {
        for s in body {
            match &s.kind {
                StmtKind::Set { var, value } => {
                    self.value(value, ctx, method);
                    let key = var.key();
                    if key == "smtpaction" || key == "actiongeoipban" {
                        if let Some(k) = value.constant() {
                            let k = k.trim().to_ascii_lowercase();
                            if !k.is_empty() && !ACTIONS.contains(&k.as_str()) {
                                self.warn(
                                    value.pos,
                                    format!(
                                        "`{}` {k:?} is not an action ({}); it has no effect",
                                        var.text,
                                        ACTIONS.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                    if vars::canonical(&var.text).is_some() {
                        if ctx.is_empty() && vars::always_ro(&var.text) {
                            self.error(
                                var.pos,
                                format!("`{}` is a read-only variable; it cannot be set", var.text),
                            );
                        }
                        for e in ctx {
                            if vars::access(&var.text, *e) == Some(Access::Ro) {
                                self.error(
                                    var.pos,
                                    format!(
                                        "`{}` is read-only in {}; it cannot be set{}",
                                        var.text,
                                        e.name(),
                                        via(method, *e)
                                    ),
                                );
                            }
                        }
                    }
                }
                StmtKind::Call(name) => {
                    if let Some((canon, mask)) = vars::method(&name.text) {
                        if canon == "checkGeoIp" && !ctx.is_empty() {
                            self.geoip_uses.push(name.pos);
                        }
                        if canon == "checkDNSBL" {
                            for e in ctx {
                                if e.incoming() && !self.set_by("dnsblserver", *e) {
                                    self.warn(
                                        name.pos,
                                        format!(
                                            "checkDNSBL in {} but DNSBLServer is never set there \
                                             or in an earlier event{}; DNSBLResult is always \"\" \
                                             (set (DNSBLServer, \"zone\") before the call)",
                                            e.name(),
                                            via(method, *e)
                                        ),
                                    );
                                }
                            }
                        }
                        for e in ctx {
                            if !vars::method_works_in(mask, *e) {
                                self.warn(
                                    name.pos,
                                    format!(
                                        "{canon} has no effect in {}{}",
                                        e.name(),
                                        via(method, *e)
                                    ),
                                );
                            }
                        }
                    }
                }
                StmtKind::Export(_) | StmtKind::Return => {}
                StmtKind::If { cond, then, els } => {
                    if depth + 1 > MAX_NESTING {
                        self.error(
                            s.pos,
                            format!("`if` nested more than {MAX_NESTING} levels deep"),
                        );
                    }
                    self.cond(cond, ctx, method, 1);
                    self.stmts(then, ctx, method, depth + 1);
                    if let Some(e) = els {
                        // `else if` continues the same level.
                        let d = if e.len() == 1 && matches!(e[0].kind, StmtKind::If { .. }) {
                            depth
                        } else {
                            depth + 1
                        };
                        self.stmts(e, ctx, method, d);
                    }
                }
                StmtKind::Switch { cases, default } => {
                    if depth + 1 > MAX_NESTING {
                        self.error(
                            s.pos,
                            format!("`switch` nested more than {MAX_NESTING} levels deep"),
                        );
                    }
                    for (c, b) in cases {
                        self.cond(c, ctx, method, 1);
                        self.stmts(b, ctx, method, depth + 1);
                    }
                    if let Some(d) = default {
                        self.stmts(d, ctx, method, depth + 1);
                    }
                }
            }
        }
    }

    fn read(&mut self, var: &Name, ctx: &[Event], method: Option<&str>) {
        let key = var.key();
        if (key == "geoipresult" || key == "isgeoipbanned") && !ctx.is_empty() {
            self.geoip_uses.push(var.pos);
        }
        if vars::canonical(&key).is_some() {
            for e in ctx {
                if vars::access(&key, *e).is_none()
                    && !self.set_in.get(e).is_some_and(|s| s.contains(&key))
                {
                    self.warn(
                        var.pos,
                        format!(
                            "`{}` is never known in {}{}; it reads as \"\"",
                            var.text,
                            e.name(),
                            via(method, *e)
                        ),
                    );
                }
            }
        } else if !self.custom.contains(&key) && !is_filter_var(&key) {
            self.warn(
                var.pos,
                format!(
                    "`{}` is not an Axigen variable and is never set in this file; it reads as \"\"",
                    var.text
                ),
            );
        }
    }

    fn value(&mut self, v: &Value, ctx: &[Event], method: Option<&str>) {
        for p in &v.parts {
            if let Part::Var(n) = p {
                self.read(n, ctx, method);
            }
        }
    }

    fn cond(&mut self, c: &Cond, ctx: &[Event], method: Option<&str>, depth: usize) {
        let group = |this: &mut Self, name: &str| {
            if depth > MAX_NESTING {
                this.error(
                    c.pos,
                    format!("`{name}` nested more than {MAX_NESTING} levels deep"),
                );
            }
        };
        match &c.kind {
            CondKind::Invalid => {}
            CondKind::Not(sub) => {
                group(self, "not");
                self.cond(sub, ctx, method, depth + 1);
            }
            CondKind::AllOf(subs) | CondKind::AnyOf(subs) => {
                group(
                    self,
                    if matches!(c.kind, CondKind::AllOf(_)) {
                        "allOf"
                    } else {
                        "anyOf"
                    },
                );
                for s in subs {
                    self.cond(s, ctx, method, depth + 1);
                }
            }
            CondKind::Cmp { op, var, value } => {
                self.read(var, ctx, method);
                self.value(value, ctx, method);
                let Some(k) = value.constant() else {
                    return;
                };
                match op {
                    CmpOp::Match => {
                        if let Err(e) = regex::RegexBuilder::new(&k).size_limit(1 << 20).build() {
                            self.error(
                                value.pos,
                                format!("bad regular expression {k:?}: {}", regex_error(&e)),
                            );
                        }
                    }
                    CmpOp::IpRange => {
                        if let Err(e) = parse_range(&k) {
                            self.error(value.pos, format!("bad IP range {k:?}: {e}"));
                        }
                    }
                    CmpOp::LessThan
                    | CmpOp::GreaterThan
                    | CmpOp::GreaterOrEqual
                    | CmpOp::LessOrEqual => {
                        if k.trim().parse::<f64>().is_err() {
                            self.warn(
                                value.pos,
                                format!(
                                    "{} compares numbers but {k:?} is not a number; the condition is always false",
                                    op.name()
                                ),
                            );
                        }
                    }
                    CmpOp::Is | CmpOp::IsCase => {}
                }
            }
        }
    }
}

fn via(method: Option<&str>, e: Event) -> String {
    match method {
        Some(m) => format!(" (method {m} is called from {})", e.name()),
        None => String::new(),
    }
}

fn is_filter_var(key: &str) -> bool {
    key.contains('.')
        && (key.ends_with(".result") || key.ends_with(".action") || key.ends_with(".explanation"))
}

fn collect_exports(stmts: &[Stmt], out: &mut Vec<Name>) {
    for s in stmts {
        match &s.kind {
            StmtKind::Export(n) => out.push(n.clone()),
            StmtKind::If { then, els, .. } => {
                collect_exports(then, out);
                if let Some(e) = els {
                    collect_exports(e, out);
                }
            }
            StmtKind::Switch { cases, default } => {
                for (_, b) in cases {
                    collect_exports(b, out);
                }
                if let Some(d) = default {
                    collect_exports(d, out);
                }
            }
            _ => {}
        }
    }
}

/// Does the block call `method` (lowercase), at any depth?
fn calls(stmts: &[Stmt], method: &str) -> bool {
    stmts.iter().any(|s| match &s.kind {
        StmtKind::Call(n) => n.key() == method,
        StmtKind::If { then, els, .. } => {
            calls(then, method) || els.as_deref().is_some_and(|b| calls(b, method))
        }
        StmtKind::Switch { cases, default } => {
            cases.iter().any(|(_, b)| calls(b, method))
                || default.as_deref().is_some_and(|b| calls(b, method))
        }
        _ => false,
    })
}

fn has_eod_effect(stmts: &[Stmt]) -> bool {
    stmts.iter().any(|s| match &s.kind {
        StmtKind::Set { var, .. } => vars::EOD_VARS.contains(&var.key().as_str()),
        StmtKind::Call(n) => vars::EOD_METHODS.contains(&n.key().as_str()),
        StmtKind::If { then, els, .. } => {
            has_eod_effect(then) || els.as_deref().is_some_and(has_eod_effect)
        }
        StmtKind::Switch { cases, default } => {
            cases.iter().any(|(_, b)| has_eod_effect(b))
                || default.as_deref().is_some_and(has_eod_effect)
        }
        _ => false,
    })
}

/// The useful line of a regex crate error.
fn regex_error(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .find_map(|l| l.strip_prefix("error: "))
        .map(|l| l.to_string())
        .unwrap_or_else(|| s.lines().last().unwrap_or("").trim().to_string())
}

fn parse_ip(s: &str) -> Result<std::net::IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", s.trim()))
}

/// An Axigen IP range as CIDR networks: `a-b`, `a/len`, `a/mask`, or one
/// address; IPv4 and IPv6.
pub fn parse_range(s: &str) -> Result<Vec<IpNet>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty range".into());
    }
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (parse_ip(a)?, parse_ip(b)?);
        return match (a, b) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) if a <= b => {
                Ok(Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect())
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) if a <= b => {
                Ok(Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect())
            }
            (std::net::IpAddr::V4(_), std::net::IpAddr::V4(_))
            | (std::net::IpAddr::V6(_), std::net::IpAddr::V6(_)) => {
                Err("the first address is greater than the second".into())
            }
            _ => Err("the two ends are not of the same IP version".into()),
        };
    }
    if let Some((a, m)) = s.split_once('/') {
        let ip = parse_ip(a)?;
        let m = m.trim();
        let len: u8 = if let Ok(n) = m.parse::<u8>() {
            n
        } else {
            let mask = parse_ip(m)
                .map_err(|_| format!("{m:?} is neither a prefix length nor a netmask"))?;
            let bits: u128 = match mask {
                std::net::IpAddr::V4(v) => u32::from(v) as u128,
                std::net::IpAddr::V6(v) => u128::from(v),
            };
            let width = if mask.is_ipv4() { 32 } else { 128 };
            let ones = bits.count_ones();
            let expect = if ones == 0 {
                0
            } else {
                (u128::MAX >> (128 - width)) & !((1u128 << (width - ones)) - 1)
            };
            if bits != expect || mask.is_ipv4() != ip.is_ipv4() {
                return Err(format!("{m:?} is not a valid netmask"));
            }
            ones as u8
        };
        return match ip {
            std::net::IpAddr::V4(v) => Ipv4Net::new(v, len)
                .map(|n| vec![IpNet::V4(n.trunc())])
                .map_err(|_| format!("prefix length {len} is more than 32")),
            std::net::IpAddr::V6(v) => Ipv6Net::new(v, len)
                .map(|n| vec![IpNet::V6(n.trunc())])
                .map_err(|_| format!("prefix length {len} is more than 128")),
        };
    }
    let ip = parse_ip(s)?;
    Ok(vec![IpNet::from(ip)])
}
