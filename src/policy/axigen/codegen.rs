//! Lua generation: one hook script per Sluice hook the policy uses. Every
//! line that comes from the policy ends with `-- file:line`, and the source
//! map records it.

use super::ast::*;
use super::check::{parse_range, Analysis};
use super::vars::{self, Event};
use crate::policy::Hook;

const LUA_KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

pub struct Emitter {
    label: String,
    pub lines: Vec<(String, Option<u32>)>,
    indent: usize,
}

impl Emitter {
    pub fn new(label: &str) -> Self {
        Emitter {
            label: label.to_string(),
            lines: Vec::new(),
            indent: 0,
        }
    }

    fn line(&mut self, code: impl AsRef<str>, src: Option<u32>) {
        let code = format!("{}{}", "  ".repeat(self.indent), code.as_ref());
        self.lines.push((code, src));
    }

    /// The text and the source map (lua line, axigen line).
    pub fn finish(self) -> (String, Vec<(u32, u32)>) {
        let mut out = String::new();
        let mut map = Vec::new();
        for (i, (code, src)) in self.lines.iter().enumerate() {
            out.push_str(code);
            if let Some(l) = src {
                out.push_str(&format!("  -- {}:{l}", self.label));
                map.push((i as u32 + 1, *l));
            }
            out.push('\n');
        }
        (out, map)
    }
}

/// A Lua string literal.
pub fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Three digits always: \28 then "1" would read as \281
            // (a fuzz finding: generated Lua that did not load).
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:03}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn var_name(n: &Name) -> String {
    lua_str(vars::canonical(&n.text).unwrap_or(&n.text))
}

fn method_ref(key: &str) -> String {
    if LUA_KEYWORDS.contains(&key) {
        format!("M[{}]", lua_str(key))
    } else {
        format!("M.{key}")
    }
}

/// Variables that stand for "each recipient" in ndrRcptMessage /
/// dsnRcptMessage: kept as `%name%` in the template, which the runtime
/// hands to the delivery code to expand once per recipient of the report.
const PER_RECIPIENT: &[&str] = &[
    "ndrRcptAddress",
    "ndrRcptFailInfo",
    "dsnRcptAddress",
    "dsnRcptStatus",
];

fn value(v: &Value) -> String {
    value_in(v, false)
}

fn value_in(v: &Value, per_recipient: bool) -> String {
    let parts: Vec<String> = v
        .parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => lua_str(s),
            Part::Var(n) => match vars::canonical(&n.text) {
                Some(c) if per_recipient && PER_RECIPIENT.contains(&c) => {
                    lua_str(&format!("%{c}%"))
                }
                _ => format!("ax:get({})", var_name(n)),
            },
        })
        .collect();
    if parts.is_empty() {
        "\"\"".to_string()
    } else {
        parts.join(" .. ")
    }
}

fn cond(c: &Cond) -> String {
    match &c.kind {
        CondKind::Invalid => "false".to_string(),
        CondKind::Not(s) => format!("not {}", atom(s)),
        CondKind::AllOf(subs) | CondKind::AnyOf(subs) => {
            let op = if matches!(c.kind, CondKind::AllOf(_)) {
                " and "
            } else {
                " or "
            };
            if subs.len() == 1 {
                cond(&subs[0])
            } else {
                subs.iter().map(atom).collect::<Vec<_>>().join(op)
            }
        }
        CondKind::Cmp { op, var, value: v } => {
            let arg = match (op, v.constant()) {
                (CmpOp::IpRange, Some(k)) => match parse_range(&k) {
                    Ok(nets) => format!(
                        "{{{}}}",
                        nets.iter()
                            .map(|n| lua_str(&n.to_string()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Err(_) => value(v),
                },
                _ => value(v),
            };
            format!("ax:{}({}, {arg})", op.name(), var_name(var))
        }
    }
}

/// A condition safe to combine with `and`/`or`/`not`.
fn atom(c: &Cond) -> String {
    match &c.kind {
        CondKind::Cmp { .. } | CondKind::Invalid => cond(c),
        CondKind::AllOf(s) | CondKind::AnyOf(s) if s.len() == 1 => atom(&s[0]),
        _ => format!("({})", cond(c)),
    }
}

fn stmts(e: &mut Emitter, body: &[Stmt]) {
    for s in body {
        stmt(e, s);
    }
}

/// `ax.line = N; ` before a statement: the runtime names the policy line of
/// a runtime error with it (errors are mostly raised inside the runtime,
/// where Lua's own position says nothing about the policy).
fn at(line: u32) -> String {
    format!("ax.line = {line}; ")
}

fn stmt(e: &mut Emitter, s: &Stmt) {
    let line = Some(s.pos.line);
    let here = at(s.pos.line);
    match &s.kind {
        StmtKind::Set { var, value: v } => {
            let template = matches!(
                vars::canonical(&var.text),
                Some("ndrRcptMessage" | "dsnRcptMessage")
            );
            e.line(
                format!("{here}ax:set({}, {})", var_name(var), value_in(v, template)),
                line,
            )
        }
        StmtKind::Call(n) => match vars::method(&n.text) {
            Some((canon, _)) => e.line(format!("{here}ax:{canon}()"), line),
            None => e.line(format!("{here}{}()", method_ref(&n.key())), line),
        },
        StmtKind::Export(n) => e.line(format!("{here}ax:export({})", var_name(n)), line),
        StmtKind::Return => e.line("do return end", line),
        StmtKind::If { .. } => {
            let mut cur = s;
            let mut first = true;
            loop {
                let StmtKind::If { cond: c, then, els } = &cur.kind else {
                    unreachable!()
                };
                let head = if first {
                    format!("{}if {} then", at(cur.pos.line), cond(c))
                } else {
                    format!("elseif ax:at({}) and ({}) then", cur.pos.line, cond(c))
                };
                first = false;
                e.line(head, Some(cur.pos.line));
                e.indent += 1;
                stmts(e, then);
                e.indent -= 1;
                match els {
                    Some(b) if b.len() == 1 && matches!(b[0].kind, StmtKind::If { .. }) => {
                        cur = &b[0];
                    }
                    Some(b) => {
                        e.line("else", None);
                        e.indent += 1;
                        stmts(e, b);
                        e.indent -= 1;
                        break;
                    }
                    None => break,
                }
            }
            e.line("end", None);
        }
        StmtKind::Switch { cases, default } => {
            if cases.is_empty() {
                e.line("do", line);
                e.indent += 1;
                if let Some(d) = default {
                    stmts(e, d);
                }
                e.indent -= 1;
                e.line("end", None);
                return;
            }
            for (i, (c, b)) in cases.iter().enumerate() {
                let head = if i == 0 {
                    format!("{}if {} then", at(c.pos.line), cond(c))
                } else {
                    format!("elseif ax:at({}) and ({}) then", c.pos.line, cond(c))
                };
                e.line(head, Some(c.pos.line));
                e.indent += 1;
                stmts(e, b);
                e.indent -= 1;
            }
            if let Some(d) = default {
                e.line("else", None);
                e.indent += 1;
                stmts(e, d);
                e.indent -= 1;
            }
            e.line("end", None);
        }
    }
}

/// The events of `hook` this file defines, in run order.
pub fn hook_events(a: &Analysis, hook: Hook) -> Vec<Event> {
    a.events
        .keys()
        .copied()
        .filter(|e| e.hook() == hook)
        .collect()
}

/// The hooks this file needs, in hook order.
pub fn hooks(a: &Analysis) -> Vec<Hook> {
    Hook::ALL
        .iter()
        .copied()
        .filter(|h| !hook_events(a, *h).is_empty() || (*h == Hook::Eod && a.needs_eod))
        .collect()
}

/// One complete hook script.
pub fn hook_script(label: &str, items: &[Item], a: &Analysis, hook: Hook) -> Emitter {
    let mut e = Emitter::new(label);
    let events = hook_events(a, hook);
    e.line(
        format!(
            "-- {hook} hook of the Axigen policy {label}, generated by Sluice: edit the policy, not this."
        ),
        None,
    );
    e.line(
        format!(
            "local ax = require(\"axigen\").begin(_ENV, {}, {})",
            lua_str(hook.name()),
            lua_str(label)
        ),
        None,
    );
    let mut used: Vec<&str> = Vec::new();
    for ev in &events {
        if let Some(r) = a.reach.get(ev) {
            used.extend(r.iter().map(|s| s.as_str()));
        }
    }
    if !used.is_empty() {
        e.line("local M = {}", None);
        let mut ms: Vec<(usize, &str)> = used
            .iter()
            .filter_map(|k| a.methods.get(*k).map(|&i| (i, *k)))
            .collect();
        ms.sort();
        ms.dedup();
        for (i, key) in ms {
            let it = &items[i];
            e.line("", None);
            e.line(
                format!("{} = function()", method_ref(key)),
                Some(it.name.pos.line),
            );
            e.indent += 1;
            stmts(&mut e, &it.body);
            e.indent -= 1;
            e.line("end", Some(it.end.line));
        }
    }
    for ev in &events {
        let it = &items[a.events[ev]];
        e.line("", None);
        e.line(
            format!("ax:event({}, function()", lua_str(ev.name())),
            Some(it.name.pos.line),
        );
        e.indent += 1;
        stmts(&mut e, &it.body);
        e.indent -= 1;
        e.line("end)", Some(it.end.line));
    }
    e.line("", None);
    e.line("ax:finish()", None);
    e
}

#[cfg(test)]
mod lua_str_tests {
    use super::lua_str;

    #[test]
    fn control_character_before_a_digit_round_trips() {
        // Fuzz finding: "[127.0.0\x1c1]" became "\281", which Lua refuses.
        let lua = mlua::Lua::new();
        for s in ["[127.0.0\u{1c}1]", "\u{4}127", "\u{7f}9", "a\u{0}0b"] {
            let back: String = lua.load(format!("return {}", lua_str(s))).eval().unwrap();
            assert_eq!(back, s);
        }
    }
}
