//! Recursive-descent parser with error recovery: a bad statement is
//! reported and skipped (to its `;` or the end of its block), so one run
//! reports every syntax error of a file.

use super::ast::*;
use super::lexer::{Tok, Token};
use super::Pos;

/// Hard bound on syntactic nesting (blocks and condition groups), far above
/// the language's limit of 16 (checked later with a precise message); it
/// only keeps hostile input from exhausting the stack.
const MAX_DEPTH: usize = 200;

pub type ParseError = (Pos, String);

pub struct Parser<'a> {
    toks: &'a [Token],
    i: usize,
    pub errors: Vec<ParseError>,
    depth: usize,
}

/// A generic argument: `name`, `"string"`, `123` or `name (args)`.
enum Arg {
    Ident(Name),
    Value(Value),
    Call(Name, Vec<Arg>),
}

impl Arg {
    fn pos(&self) -> Pos {
        match self {
            Arg::Ident(n) | Arg::Call(n, _) => n.pos,
            Arg::Value(v) => v.pos,
        }
    }
}

fn is_kw(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
}

/// Split a string literal into text and `%variable%` references.
pub fn split_value(s: &str, at: &[Pos], pos: Pos) -> Value {
    let chars: Vec<char> = s.chars().collect();
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '%' {
            if chars.get(i + 1) == Some(&'%') {
                lit.push('%');
                i += 2;
                continue;
            }
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].is_ascii_alphanumeric() || chars[j] == '_' || chars[j] == '.')
            {
                j += 1;
            }
            if j > i + 1 && chars.get(j) == Some(&'%') {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(Name {
                    text: chars[i + 1..j].iter().collect(),
                    pos: at.get(i + 1).copied().unwrap_or(pos),
                }));
                i = j + 1;
                continue;
            }
        }
        lit.push(chars[i]);
        i += 1;
    }
    if !lit.is_empty() || parts.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Value { pos, parts }
}

impl<'a> Parser<'a> {
    pub fn new(toks: &'a [Token]) -> Self {
        Parser {
            toks,
            i: 0,
            errors: Vec::new(),
            depth: 0,
        }
    }

    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> &Token {
        let t = &self.toks[self.i.min(self.toks.len() - 1)];
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn err<T>(&mut self, pos: Pos, msg: impl Into<String>) -> Result<T, ()> {
        self.errors.push((pos, msg.into()));
        Err(())
    }

    /// Report an error in a statement that was read to its end.
    fn report<T>(&mut self, pos: Pos, msg: impl Into<String>) -> Result<Option<T>, ()> {
        self.errors.push((pos, msg.into()));
        Ok(None)
    }

    fn expect(&mut self, want: Tok, context: &str) -> Result<Pos, ()> {
        let t = self.peek().clone();
        if t.tok == want {
            self.next();
            Ok(t.pos)
        } else {
            self.err(
                t.pos,
                format!(
                    "expected {} {context}, found {}",
                    want.describe(),
                    t.tok.describe()
                ),
            )
        }
    }

    fn ident(&mut self, what: &str) -> Result<Name, ()> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Ident(s) => {
                self.next();
                Ok(Name {
                    text: s,
                    pos: t.pos,
                })
            }
            other => self.err(
                t.pos,
                format!("expected {what}, found {}", other.describe()),
            ),
        }
    }

    pub fn file(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            let t = self.peek().clone();
            match &t.tok {
                Tok::Eof => break,
                Tok::Semi => {
                    self.next();
                }
                Tok::Ident(s)
                    if s.eq_ignore_ascii_case("event") || s.eq_ignore_ascii_case("method") =>
                {
                    let kind = if s.eq_ignore_ascii_case("event") {
                        ItemKind::Event
                    } else {
                        ItemKind::Method
                    };
                    self.next();
                    match self.item(kind) {
                        Ok(item) => items.push(item),
                        Err(()) => self.skip_to_item(),
                    }
                }
                other => {
                    self.errors.push((
                        t.pos,
                        format!("expected `event` or `method`, found {}", other.describe()),
                    ));
                    self.next();
                    self.skip_to_item();
                }
            }
        }
        items
    }

    /// Skip to the next `event`/`method` keyword outside braces.
    fn skip_to_item(&mut self) {
        let mut depth = 0i32;
        loop {
            let t = &self.peek().tok;
            match t {
                Tok::Eof => return,
                Tok::LBrace => depth += 1,
                Tok::RBrace => depth -= 1,
                t if depth <= 0 && (is_kw(t, "event") || is_kw(t, "method")) => return,
                _ => {}
            }
            self.next();
        }
    }

    fn item(&mut self, kind: ItemKind) -> Result<Item, ()> {
        let what = match kind {
            ItemKind::Event => "an event name",
            ItemKind::Method => "a method name",
        };
        let name = self.ident(what)?;
        let (body, end) = self.block()?;
        Ok(Item {
            kind,
            name,
            body,
            end,
        })
    }

    /// `{ stmt* }`; returns the statements and the closing brace position.
    fn block(&mut self) -> Result<(Vec<Stmt>, Pos), ()> {
        self.expect(Tok::LBrace, "to open a block")?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let p = self.peek().pos;
            self.depth -= 1;
            return self.err(p, "blocks nested too deeply");
        }
        let mut body = Vec::new();
        let end = loop {
            let t = self.peek().clone();
            match t.tok {
                Tok::RBrace => {
                    self.next();
                    break t.pos;
                }
                Tok::Eof => {
                    self.depth -= 1;
                    return self.err(t.pos, "expected `}` to close the block, found end of file");
                }
                Tok::Semi => {
                    self.next();
                }
                _ if is_kw(&t.tok, "event") || is_kw(&t.tok, "method") => {
                    self.depth -= 1;
                    return self.err(t.pos, format!("expected `}}` before {}", t.tok.describe()));
                }
                _ => match self.stmt() {
                    Ok(Some(s)) => body.push(s),
                    Ok(None) => {}
                    Err(()) => self.skip_stmt(),
                },
            }
        };
        self.depth -= 1;
        Ok((body, end))
    }

    /// After an error in a statement: skip past its `;`, or to the `}` that
    /// closes the enclosing block (not consumed).
    fn skip_stmt(&mut self) {
        let mut depth = 0i32;
        loop {
            match &self.peek().tok {
                Tok::Eof => return,
                Tok::Semi if depth <= 0 => {
                    self.next();
                    return;
                }
                Tok::LBrace | Tok::LParen => depth += 1,
                Tok::RParen => depth -= 1,
                Tok::RBrace => {
                    if depth <= 0 {
                        return;
                    }
                    depth -= 1;
                    if depth == 0 {
                        self.next();
                        return;
                    }
                }
                t if depth <= 0 && (is_kw(t, "event") || is_kw(t, "method")) => return,
                _ => {}
            }
            self.next();
        }
    }

    /// A statement; `Ok(None)` when it was read to its end but is invalid
    /// (reported already).
    fn stmt(&mut self) -> Result<Option<Stmt>, ()> {
        let t = self.peek().clone();
        let Tok::Ident(word) = &t.tok else {
            return self.err(
                t.pos,
                format!(
                    "expected a statement (set, call, export, return, if, switch), found {}",
                    t.tok.describe()
                ),
            );
        };
        let pos = t.pos;
        let kw = word.to_ascii_lowercase();
        match kw.as_str() {
            "set" | "call" | "export" => {
                self.next();
                self.expect(Tok::LParen, &format!("after `{word}`"))?;
                let args = self.args()?;
                self.expect(Tok::Semi, &format!("after `{word} (…)`"))?;
                let want = if kw == "set" { 2 } else { 1 };
                if args.len() != want {
                    let usage = match kw.as_str() {
                        "set" => "set (variable, value)",
                        "call" => "call (method)",
                        _ => "export (variable)",
                    };
                    return self.report(
                        pos,
                        format!(
                            "`{word}` takes {want} argument{}, found {}: {usage}",
                            if want == 1 { "" } else { "s" },
                            args.len()
                        ),
                    );
                }
                let mut args = args.into_iter();
                let first = args.next().unwrap();
                let name = match first {
                    Arg::Ident(n) => n,
                    other => {
                        let what = match kw.as_str() {
                            "call" => "a method name",
                            _ => "a variable name",
                        };
                        return self.report(other.pos(), format!("`{word}` expects {what} first"));
                    }
                };
                let kind = match kw.as_str() {
                    "set" => {
                        let value = match args.next().unwrap() {
                            Arg::Value(v) => v,
                            other => {
                                return self.report(
                                    other.pos(),
                                    "`set` expects a string value (write \"%variable%\" to copy a variable)",
                                )
                            }
                        };
                        StmtKind::Set { var: name, value }
                    }
                    "call" => StmtKind::Call(name),
                    _ => StmtKind::Export(name),
                };
                Ok(Some(Stmt { pos, kind }))
            }
            "return" => {
                self.next();
                if self.peek().tok == Tok::LParen {
                    self.next();
                    self.expect(Tok::RParen, "after `return (`")?;
                }
                self.expect(Tok::Semi, "after `return`")?;
                Ok(Some(Stmt {
                    pos,
                    kind: StmtKind::Return,
                }))
            }
            "if" => self.if_stmt().map(Some),
            "switch" => {
                self.next();
                self.expect(Tok::LBrace, "after `switch`")?;
                let mut cases = Vec::new();
                let mut default = None;
                loop {
                    let t = self.peek().clone();
                    match &t.tok {
                        Tok::RBrace => {
                            self.next();
                            break;
                        }
                        Tok::Ident(s) if s.eq_ignore_ascii_case("case") => {
                            self.next();
                            let cond = self.paren_cond("`case`")?;
                            let (body, _) = self.block()?;
                            if default.is_some() {
                                return self.err(t.pos, "`case` after `default`");
                            }
                            cases.push((cond, body));
                        }
                        Tok::Ident(s) if s.eq_ignore_ascii_case("default") => {
                            self.next();
                            let (body, _) = self.block()?;
                            if default.is_some() {
                                return self.err(t.pos, "a second `default` in this switch");
                            }
                            default = Some(body);
                        }
                        other => {
                            return self.err(
                                t.pos,
                                format!(
                                    "expected `case`, `default` or `}}` in switch, found {}",
                                    other.describe()
                                ),
                            )
                        }
                    }
                }
                Ok(Some(Stmt {
                    pos,
                    kind: StmtKind::Switch { cases, default },
                }))
            }
            _ => {
                let hint = if CmpOp::from_name(word).is_some() {
                    " (conditions go inside `if (…)`)"
                } else {
                    ""
                };
                self.err(
                    pos,
                    format!(
                        "unknown statement `{word}`: expected set, call, export, return, if or switch{hint}"
                    ),
                )
            }
        }
    }

    fn if_stmt(&mut self) -> Result<Stmt, ()> {
        let pos = self.next().pos;
        let cond = self.paren_cond("`if`")?;
        let (then, _) = self.block()?;
        let mut els = None;
        if is_kw(&self.peek().tok, "else") {
            self.next();
            if is_kw(&self.peek().tok, "if") {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    let p = self.peek().pos;
                    self.depth -= 1;
                    return self.err(p, "blocks nested too deeply");
                }
                let r = self.if_stmt();
                self.depth -= 1;
                els = Some(vec![r?]);
            } else {
                els = Some(self.block()?.0);
            }
        }
        Ok(Stmt {
            pos,
            kind: StmtKind::If { cond, then, els },
        })
    }

    /// `( condition )`
    fn paren_cond(&mut self, after: &str) -> Result<Cond, ()> {
        self.expect(Tok::LParen, &format!("after {after}"))?;
        let t = self.peek().clone();
        let arg = self.arg()?;
        self.expect(Tok::RParen, &format!("to close the condition of {after}"))?;
        match arg {
            Arg::Call(name, args) => Ok(self.cond(name, args)),
            other => self.report_cond(
                t.pos,
                format!(
                    "expected a condition such as is (variable, \"value\"), found {}",
                    match other {
                        Arg::Ident(n) => format!("`{}`", n.text),
                        _ => "a string".to_string(),
                    }
                ),
            ),
        }
    }

    /// Arguments after `(` up to and including `)`.
    fn args(&mut self) -> Result<Vec<Arg>, ()> {
        let mut out = Vec::new();
        if self.peek().tok == Tok::RParen {
            self.next();
            return Ok(out);
        }
        loop {
            out.push(self.arg()?);
            let t = self.peek().clone();
            match t.tok {
                Tok::Comma => {
                    self.next();
                }
                Tok::RParen => {
                    self.next();
                    return Ok(out);
                }
                other => {
                    return self.err(
                        t.pos,
                        format!(
                            "expected `,` or `)` in argument list, found {}",
                            other.describe()
                        ),
                    )
                }
            }
        }
    }

    fn arg(&mut self) -> Result<Arg, ()> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Ident(s) => {
                self.next();
                let name = Name {
                    text: s,
                    pos: t.pos,
                };
                if self.peek().tok == Tok::LParen {
                    self.next();
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        self.depth -= 1;
                        return self.err(t.pos, "conditions nested too deeply");
                    }
                    let args = self.args();
                    self.depth -= 1;
                    Ok(Arg::Call(name, args?))
                } else {
                    Ok(Arg::Ident(name))
                }
            }
            Tok::Str(s) => {
                self.next();
                Ok(Arg::Value(split_value(&s, &t.chars, t.pos)))
            }
            Tok::Int(s) => {
                self.next();
                Ok(Arg::Value(Value {
                    pos: t.pos,
                    parts: vec![Part::Lit(s)],
                }))
            }
            other => self.err(
                t.pos,
                format!(
                    "expected a name, a string or a condition, found {}",
                    other.describe()
                ),
            ),
        }
    }

    fn report_cond(&mut self, pos: Pos, msg: impl Into<String>) -> Result<Cond, ()> {
        self.errors.push((pos, msg.into()));
        Ok(Cond {
            pos,
            kind: CondKind::Invalid,
        })
    }

    /// Turn a generic call into a condition, reporting arity and kind errors
    /// (an invalid condition is kept so the rest is still checked).
    fn cond(&mut self, name: Name, args: Vec<Arg>) -> Cond {
        match self.cond_inner(name, args) {
            Ok(c) => c,
            Err(c) => c,
        }
    }

    fn cond_inner(&mut self, name: Name, args: Vec<Arg>) -> Result<Cond, Cond> {
        let pos = name.pos;
        let lname = name.key();
        let group = matches!(lname.as_str(), "not" | "allof" | "anyof");
        if group {
            let mut subs = Vec::new();
            for a in args {
                match a {
                    Arg::Call(n, a) => {
                        let c = self.cond(n, a);
                        subs.push(c)
                    }
                    other => {
                        self.errors.push((
                            other.pos(),
                            format!("`{}` expects conditions as arguments", name.text),
                        ));
                        subs.push(Cond {
                            pos,
                            kind: CondKind::Invalid,
                        });
                    }
                }
            }
            let kind = if lname == "not" {
                if subs.len() != 1 {
                    return Err(self.invalid(
                        pos,
                        format!("`not` takes 1 condition, found {}", subs.len()),
                    ));
                }
                CondKind::Not(Box::new(subs.pop().unwrap()))
            } else {
                if subs.is_empty() {
                    return Err(
                        self.invalid(pos, format!("`{}` needs at least 1 condition", name.text))
                    );
                }
                if lname == "allof" {
                    CondKind::AllOf(subs)
                } else {
                    CondKind::AnyOf(subs)
                }
            };
            return Ok(Cond { pos, kind });
        }
        let Some(op) = CmpOp::from_name(&name.text) else {
            return Err(self.invalid(
                pos,
                format!(
                    "unknown condition `{}` (expected is, isCase, match, lessThan, greaterThan, greaterOrEqual, lessOrEqual, ipRange, not, allOf, anyOf)",
                    name.text
                ),
            ));
        };
        if args.len() != 2 {
            return Err(self.invalid(
                pos,
                format!(
                    "`{}` takes 2 arguments (variable, value), found {}",
                    name.text,
                    args.len()
                ),
            ));
        }
        let mut args = args.into_iter();
        let var = match args.next().unwrap() {
            Arg::Ident(n) => n,
            other => {
                return Err(self.invalid(
                    other.pos(),
                    format!(
                        "the first argument of `{}` must be a variable name",
                        name.text
                    ),
                ))
            }
        };
        let value = match args.next().unwrap() {
            Arg::Value(v) => v,
            other => {
                return Err(self.invalid(
                    other.pos(),
                    format!(
                        "the second argument of `{}` must be a string (write \"%variable%\" to compare with a variable)",
                        name.text
                    ),
                ))
            }
        };
        Ok(Cond {
            pos,
            kind: CondKind::Cmp { op, var, value },
        })
    }

    fn invalid(&mut self, pos: Pos, msg: impl Into<String>) -> Cond {
        self.errors.push((pos, msg.into()));
        Cond {
            pos,
            kind: CondKind::Invalid,
        }
    }
}
