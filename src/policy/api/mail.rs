//! `arguments.mail`: the MailMessage userdata of the headers and eod hooks.
//!
//! The header block is kept as a list of raw fields (so untouched fields are
//! relayed byte for byte) and the body as a shared `Bytes` slice of what the
//! server received; MIME parsing (mail-parser) happens only when a script asks
//! for parts. Methods (indexes are 1-based):
//!
//! - `getHeader(name[, {index, field, decode}])`, `getHeaders(name[, {field, decode}])`,
//!   `getHeaderNames()`
//! - `addHeader(name, value[, {refold = true, bottom = false}])` (top by default),
//!   `setHeader(name, value[, {index, refold}])`, `delHeader(name[, {index}])`
//! - `getBody()`, `setBody(data)`, `getSize()`, `getID()`, `toString()`
//! - `getParts()`, `findByType(pattern)`: `{id, parent, type, filename, size,
//!   headers = {{name, value}, …}, body}` (id 0 is the whole message)
//! - eod only: `queue(sender, recipient, transportid[, {metadata, hold, jobid,
//!   quotas, delay, overquota, dsn = {envid, ret, notify, orcpt}}])` → `{transaction, queue}`
//! - `signDKIM(selector, domain, key[, {algorithm, canonicalization, headers,
//!   expire}])` → true, or nil and an error: signs the message as it is now
//!   (every edit so far applied, so what `queue` stores is what was signed)
//!   and puts the DKIM-Signature on top; keys and signing are `scan::dkim`'s
//! - `verifyDKIM([header])` → `{{domain, selector, result, error}, …}` (all
//!   signatures, or the one at that index / with that value), or nil and an error

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mail_parser::{MessageParser, MimeHeaders, PartType};
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::{address_arg, string_map, with_run, Shared};
use crate::policy::{QueueDsn, QueueRequest};
use crate::scan::dkim;

/// Folded header lines stay under this many characters when refolding.
const FOLD_AT: usize = 78;
/// RFC 5322 §2.1.1 hard limit (excluding CRLF).
const LINE_MAX: usize = 998;

#[derive(Debug, Clone)]
struct Field {
    /// Field name as written; "" for a line that is not a header field.
    name: String,
    /// The whole field including its name, folding and final line ending.
    raw: Vec<u8>,
}

impl Field {
    fn value_raw(&self) -> &[u8] {
        match self.raw.iter().position(|&b| b == b':') {
            Some(i) => &self.raw[i + 1..],
            None => &[],
        }
    }

    /// Unfolded, trimmed value.
    fn value(&self) -> String {
        unfold(&String::from_utf8_lossy(self.value_raw()))
    }

    /// The field as written, without the final line ending.
    fn field_text(&self) -> String {
        String::from_utf8_lossy(&self.raw)
            .trim_end_matches(['\r', '\n'])
            .to_string()
    }
}

fn unfold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\n' => {
                // CRLF followed by WSP is folding; a bare line end becomes a space.
                if !matches!(chars.peek(), Some(' ') | Some('\t')) {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

/// RFC 2047 decoding of one header value, via mail-parser.
fn decode_value(v: &str) -> String {
    let raw = format!("Subject: {v}\r\n\r\n");
    MessageParser::default()
        .parse_headers(raw.as_bytes())
        .and_then(|m| m.subject().map(|s| s.to_string()))
        .unwrap_or_else(|| v.to_string())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// "Name: value\r\n", refolded at whitespace to stay under 78 columns when
/// `refold` (or when a line would pass the 998 limit). CR and LF inside the
/// value never reach the output as line breaks.
pub fn format_field(name: &str, value: &str, refold: bool) -> Vec<u8> {
    let clean: String = unfold(value)
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let single = format!("{name}: {clean}");
    if !refold && single.len() <= LINE_MAX {
        return format!("{single}\r\n").into_bytes();
    }
    let mut out = String::with_capacity(single.len() + 16);
    out.push_str(name);
    out.push(':');
    let mut line_len = out.len();
    let mut first = true;
    for word in clean.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !first && line_len + 1 + word.len() > FOLD_AT {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
        first = false;
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// One MIME part as scripts see it.
#[derive(Debug, Clone)]
struct PartInfo {
    id: usize,
    parent: Option<usize>,
    ctype: String,
    filename: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

pub struct MailMessage {
    fields: Vec<Field>,
    /// The blank line ending the header block ("\r\n", "\n" or none).
    separator: Bytes,
    body: Bytes,
    headers_only: bool,
    id: String,
    /// The serialized message; the original bytes until something changes.
    cache: Option<Bytes>,
    parts: Option<Arc<Vec<PartInfo>>>,
}

impl MailMessage {
    pub fn parse(message: Bytes, headers_only: bool, id: &str) -> MailMessage {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = 0;
        let mut separator = Bytes::new();
        let mut body_start = message.len();
        let data = &message[..];
        while pos < data.len() {
            let end = data[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| pos + i + 1)
                .unwrap_or(data.len());
            let line = &data[pos..end];
            if line == b"\r\n" || line == b"\n" {
                separator = message.slice(pos..end);
                body_start = end;
                break;
            }
            if (line[0] == b' ' || line[0] == b'\t') && !fields.is_empty() {
                if let Some(f) = fields.last_mut() {
                    f.raw.extend_from_slice(line);
                }
            } else {
                let name = match line.iter().position(|&b| b == b':') {
                    Some(i) => String::from_utf8_lossy(&line[..i]).trim().to_string(),
                    None => String::new(),
                };
                fields.push(Field {
                    name,
                    raw: line.to_vec(),
                });
            }
            pos = end;
        }
        let body = message.slice(body_start.min(message.len())..);
        MailMessage {
            fields,
            separator,
            body,
            headers_only,
            id: id.to_string(),
            cache: Some(message),
            parts: None,
        }
    }

    fn changed(&mut self) {
        self.cache = None;
        self.parts = None;
    }

    /// The message as it would be queued now.
    pub fn bytes(&mut self) -> Bytes {
        if let Some(c) = &self.cache {
            return c.clone();
        }
        let len = self.fields.iter().map(|f| f.raw.len()).sum::<usize>()
            + self.separator.len().max(2)
            + self.body.len();
        let mut out = BytesMut::with_capacity(len);
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
            if !f.raw.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        if self.separator.is_empty() {
            if !self.body.is_empty() || !self.headers_only {
                out.extend_from_slice(b"\r\n");
            }
        } else {
            out.extend_from_slice(&self.separator);
        }
        out.extend_from_slice(&self.body);
        let b = out.freeze();
        self.cache = Some(b.clone());
        b
    }

    fn matching(&self, name: &str) -> impl Iterator<Item = (usize, &Field)> {
        let name = name.to_string();
        self.fields
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.name.eq_ignore_ascii_case(&name))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.matching(name).next().map(|(_, f)| f.value())
    }

    fn parts(&mut self) -> Arc<Vec<PartInfo>> {
        if let Some(p) = &self.parts {
            return p.clone();
        }
        let raw = self.bytes();
        let mut out = Vec::new();
        if let Some(msg) = MessageParser::default().parse(&raw[..]) {
            let mut parent = vec![None; msg.parts.len()];
            for (i, p) in msg.parts.iter().enumerate() {
                if let PartType::Multipart(children) = &p.body {
                    for c in children {
                        if let Some(slot) = parent.get_mut(*c as usize) {
                            *slot = Some(i);
                        }
                    }
                }
            }
            for (i, p) in msg.parts.iter().enumerate() {
                let ctype = match p.content_type() {
                    Some(ct) => match ct.subtype() {
                        Some(st) => format!("{}/{}", ct.ctype(), st),
                        None => ct.ctype().to_string(),
                    },
                    None => "text/plain".to_string(),
                }
                .to_ascii_lowercase();
                let headers = p
                    .headers
                    .iter()
                    .map(|h| {
                        let s = (h.offset_start as usize).min(raw.len());
                        let e = (h.offset_end as usize).clamp(s, raw.len());
                        (
                            h.name().to_string(),
                            unfold(&String::from_utf8_lossy(&raw[s..e])),
                        )
                    })
                    .collect();
                let body = match &p.body {
                    PartType::Text(t) | PartType::Html(t) => Some(t.as_bytes().to_vec()),
                    PartType::Binary(b) | PartType::InlineBinary(b) => Some(b.to_vec()),
                    PartType::Message(m) => Some(m.raw_message.to_vec()),
                    PartType::Multipart(_) => None,
                };
                out.push(PartInfo {
                    id: i,
                    parent: parent[i],
                    ctype,
                    filename: p.attachment_name().map(|s| s.to_string()),
                    headers,
                    body,
                });
            }
        }
        let arc = Arc::new(out);
        self.parts = Some(arc.clone());
        arc
    }
}

fn part_table(lua: &Lua, p: &PartInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("id", p.id)?;
    t.set("parent", p.parent)?;
    t.set("type", p.ctype.as_str())?;
    t.set("filename", p.filename.as_deref())?;
    t.set("size", p.body.as_ref().map(|b| b.len()).unwrap_or(0))?;
    let hs = lua.create_table()?;
    for (i, (n, v)) in p.headers.iter().enumerate() {
        let h = lua.create_table()?;
        h.set("name", n.as_str())?;
        h.set("value", v.as_str())?;
        h.raw_set(1, n.as_str())?;
        h.raw_set(2, v.as_str())?;
        hs.raw_set(i + 1, h)?;
    }
    t.set("headers", hs)?;
    if let Some(b) = &p.body {
        t.set("body", lua.create_string(b)?)?;
    }
    Ok(t)
}

fn opt<T: mlua::FromLua>(o: &Option<Table>, key: &str) -> mlua::Result<Option<T>> {
    match o {
        Some(t) => t.get::<Option<T>>(key),
        None => Ok(None),
    }
}

/// The options `queue()` reads, in [`QueueOpts`]' bit order.
const QUEUE_OPTIONS: [&str; 6] = ["metadata", "hold", "jobid", "overquota", "delay", "dsn"];

/// `queue()`'s options table. Without a metatable a key the table does not
/// hold reads as nil, so only the keys present are read with `get`: one
/// protected `get` per option name was most of a `queue()` call's own cost
/// (perf over benches/policy-overhead.sh). With a metatable every option is
/// read, as `opt` does.
struct QueueOpts {
    table: Option<Table>,
    /// Bit i: the table holds `QUEUE_OPTIONS[i]`; all set with a metatable.
    present: u8,
}

impl QueueOpts {
    fn new(table: Option<Table>) -> mlua::Result<QueueOpts> {
        let present = match &table {
            None => 0,
            Some(t) if t.metatable().is_some() => u8::MAX,
            Some(t) => {
                let mut bits = 0u8;
                for pair in t.pairs::<Value, Value>() {
                    if let (Value::String(k), _) = pair? {
                        let k = k.as_bytes();
                        if let Some(i) = QUEUE_OPTIONS.iter().position(|o| o.as_bytes() == &*k) {
                            bits |= 1 << i;
                        }
                    }
                }
                bits
            }
        };
        Ok(QueueOpts { table, present })
    }

    fn get<T: mlua::FromLua>(&self, key: &str) -> mlua::Result<Option<T>> {
        let bit = QUEUE_OPTIONS
            .iter()
            .position(|o| *o == key)
            .map(|i| 1u8 << i);
        if bit.is_some_and(|b| self.present & b == 0) {
            return Ok(None);
        }
        opt(&self.table, key)
    }
}

/// `index` options are 1-based; returns the 0-based position among matches.
fn index_opt(o: &Option<Table>) -> mlua::Result<Option<usize>> {
    match opt::<i64>(o, "index")? {
        None => Ok(None),
        Some(i) if i >= 1 => Ok(Some(i as usize - 1)),
        Some(i) => Err(mlua::Error::runtime(format!("index {i} must be 1 or more"))),
    }
}

fn check_name(name: &str, what: &str) -> mlua::Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(mlua::Error::runtime(format!(
            "{what}: {name:?} is not a header field name"
        )))
    }
}

impl UserData for MailMessage {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method(
            "getHeader",
            |_, this, (name, o): (String, Option<Table>)| {
                let idx = index_opt(&o)?.unwrap_or(0);
                let field = opt::<bool>(&o, "field")?.unwrap_or(false);
                let decode = opt::<bool>(&o, "decode")?.unwrap_or(false);
                Ok(this.matching(&name).nth(idx).map(|(_, f)| {
                    if field {
                        f.field_text()
                    } else if decode {
                        decode_value(&f.value())
                    } else {
                        f.value()
                    }
                }))
            },
        );
        m.add_method(
            "getHeaders",
            |_, this, (name, o): (String, Option<Table>)| {
                let field = opt::<bool>(&o, "field")?.unwrap_or(false);
                let decode = opt::<bool>(&o, "decode")?.unwrap_or(false);
                Ok(this
                    .matching(&name)
                    .map(|(_, f)| {
                        if field {
                            f.field_text()
                        } else if decode {
                            decode_value(&f.value())
                        } else {
                            f.value()
                        }
                    })
                    .collect::<Vec<_>>())
            },
        );
        m.add_method("getHeaderNames", |_, this, ()| {
            Ok(this
                .fields
                .iter()
                .filter(|f| !f.name.is_empty())
                .map(|f| f.name.clone())
                .collect::<Vec<_>>())
        });
        m.add_method_mut(
            "addHeader",
            |_, this, (name, value, o): (String, String, Option<Table>)| {
                check_name(&name, "addHeader")?;
                let refold = opt::<bool>(&o, "refold")?.unwrap_or(true);
                let bottom = opt::<bool>(&o, "bottom")?.unwrap_or(false);
                let f = Field {
                    raw: format_field(&name, &value, refold),
                    name,
                };
                if bottom {
                    this.fields.push(f);
                } else {
                    this.fields.insert(0, f);
                }
                this.changed();
                Ok(())
            },
        );
        m.add_method_mut(
            "setHeader",
            |_, this, (name, value, o): (String, String, Option<Table>)| {
                check_name(&name, "setHeader")?;
                let refold = opt::<bool>(&o, "refold")?.unwrap_or(true);
                let idx = index_opt(&o)?;
                let positions: Vec<usize> = this.matching(&name).map(|(i, _)| i).collect();
                let raw = format_field(&name, &value, refold);
                let changed = match idx {
                    Some(i) => match positions.get(i) {
                        Some(&p) => {
                            this.fields[p].raw = raw;
                            1
                        }
                        None => 0,
                    },
                    None if positions.is_empty() => {
                        this.fields.insert(0, Field { name, raw });
                        1
                    }
                    None => {
                        this.fields[positions[0]].raw = raw;
                        for &p in positions[1..].iter().rev() {
                            this.fields.remove(p);
                        }
                        positions.len()
                    }
                };
                if changed > 0 {
                    this.changed();
                }
                Ok(changed)
            },
        );
        m.add_method_mut(
            "delHeader",
            |_, this, (name, o): (String, Option<Table>)| {
                let idx = index_opt(&o)?;
                let positions: Vec<usize> = this.matching(&name).map(|(i, _)| i).collect();
                let remove: Vec<usize> = match idx {
                    Some(i) => positions.get(i).copied().into_iter().collect(),
                    None => positions,
                };
                for &p in remove.iter().rev() {
                    this.fields.remove(p);
                }
                if !remove.is_empty() {
                    this.changed();
                }
                Ok(remove.len())
            },
        );
        m.add_method("getBody", |lua, this, ()| lua.create_string(&this.body));
        m.add_method_mut("setBody", |_, this, body: mlua::String| {
            if this.headers_only {
                return Err(mlua::Error::runtime(
                    "setBody: the body has not arrived yet in the headers hook",
                ));
            }
            this.body = Bytes::copy_from_slice(&body.as_bytes());
            this.changed();
            Ok(())
        });
        m.add_method_mut("getSize", |_, this, ()| Ok(this.bytes().len()));
        m.add_method("getID", |_, this, ()| Ok(this.id.clone()));
        m.add_method_mut("toString", |lua, this, ()| lua.create_string(this.bytes()));
        m.add_method_mut("getParts", |lua, this, ()| {
            let parts = this.parts();
            let t = lua.create_table()?;
            for (i, p) in parts.iter().enumerate() {
                t.raw_set(i + 1, part_table(lua, p)?)?;
            }
            Ok(t)
        });
        m.add_method_mut("findByType", |lua, this, pattern: String| {
            let re = super::re::compile(&format!("(?i){pattern}"))?;
            let parts = this.parts();
            let t = lua.create_table()?;
            let mut n = 0;
            for p in parts.iter().filter(|p| re.is_match(&p.ctype)) {
                n += 1;
                t.raw_set(n, part_table(lua, p)?)?;
            }
            Ok(t)
        });
        m.add_method_mut(
            "queue",
            |lua, this, (sender, recipient, transportid, o): (Value, Value, String, Option<Table>)| {
                // Metered: reading the options may run the script's metamethods.
                queue(lua, this, sender, recipient, transportid, o)
            },
        );
        m.add_method_mut(
            "signDKIM",
            |lua, this, (selector, domain, key, o): (String, String, Value, Option<Table>)| {
                Ok(match sign_dkim(lua, this, selector, domain, key, o) {
                    Ok(()) => (Value::Boolean(true), Value::Nil),
                    Err(e) => (
                        Value::Nil,
                        Value::String(lua.create_string(format!("signDKIM: {e}"))?),
                    ),
                })
            },
        );
        m.add_async_method_mut("verifyDKIM", |lua, mut this, header: Value| async move {
            let fail = |lua: &Lua, e: String| -> mlua::Result<(Value, Value)> {
                Ok((
                    Value::Nil,
                    Value::String(lua.create_string(format!("verifyDKIM: {e}"))?),
                ))
            };
            let select = match &header {
                Value::Nil => dkim::Select::All,
                Value::Integer(i) if *i >= 1 => dkim::Select::Index(*i as usize),
                Value::Number(n) if n.fract() == 0.0 && *n >= 1.0 && *n < 1e9 => {
                    dkim::Select::Index(*n as usize)
                }
                Value::String(s) => dkim::Select::Value(s.to_str()?.to_string()),
                other => {
                    return fail(
                        &lua,
                        format!(
                            "header must be an index (1 or more) or a DKIM-Signature value, not {}",
                            other.type_name()
                        ),
                    )
                }
            };
            // The bytes as they are now; the borrow ends before the DNS wait.
            let raw = this.bytes();
            drop(this);
            let (resolver, _) = super::auth::scanners(&lua, "verifyDKIM")?;
            let sigs = match dkim::verify(&resolver, &raw, &select).await {
                Ok(s) => s,
                Err(e) => return fail(&lua, e.to_string()),
            };
            Ok((
                Value::Table(super::auth::sigs_to_lua(&lua, sigs)?),
                Value::Nil,
            ))
        });
        m.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| {
            Ok(format!("MailMessage({})", this.id))
        });
    }
}

/// `mail:signDKIM`: every problem (key, options, hook) is an error value
/// for the script, not a script error, so a policy can decide to relay
/// unsigned.
fn sign_dkim(
    lua: &Lua,
    this: &mut MailMessage,
    selector: String,
    domain: String,
    key: Value,
    o: Option<Table>,
) -> Result<(), String> {
    if this.headers_only {
        return Err("the body has not arrived yet in the headers hook".into());
    }
    let Value::String(key) = key else {
        return Err(format!(
            "key must be a PEM string or a [dkim.keys] id, not {}",
            key.type_name()
        ));
    };
    let key = key.to_str().map_err(|e| e.to_string())?.to_string();
    let mut opts = dkim::SignOptions::new(&selector, &domain);
    if let Some(t) = o {
        for pair in t.pairs::<String, Value>() {
            let (k, v) = pair.map_err(|e| format!("options: {e}"))?;
            let text = |v: &Value| match v {
                Value::String(s) => s.to_str().map(|s| s.to_string()).ok(),
                _ => None,
            };
            match k.as_str() {
                "algorithm" => {
                    let s = text(&v).ok_or("algorithm must be a string")?;
                    opts.algorithm = Some(dkim::parse_algorithm(&s).map_err(|e| e.to_string())?);
                }
                "canonicalization" => {
                    let s = text(&v).ok_or("canonicalization must be a string")?;
                    (opts.header_canon, opts.body_canon) =
                        dkim::parse_canonicalization(&s).map_err(|e| e.to_string())?;
                }
                "headers" => {
                    let Value::Table(list) = v else {
                        return Err("headers must be a list of header names".into());
                    };
                    let mut names = Vec::new();
                    for h in list.sequence_values::<Value>() {
                        let h = h.map_err(|e| format!("headers: {e}"))?;
                        names.push(text(&h).ok_or("headers must be a list of header names")?);
                    }
                    if names.is_empty() {
                        return Err("headers must not be empty".into());
                    }
                    opts.headers = Some(names);
                }
                "expire" => {
                    let secs = match v {
                        Value::Integer(i) if i > 0 => i as u64,
                        Value::Number(n) if n.fract() == 0.0 && n > 0.0 && n < 1e12 => n as u64,
                        _ => return Err("expire must be a whole number of seconds > 0".into()),
                    };
                    opts.expire = Some(secs);
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
    }
    let keys = lua
        .app_data_ref::<Shared>()
        .ok_or("no policy engine state")?;
    let key = keys.scan.dkim.resolve(&key).map_err(|e| e.to_string())?;
    drop(keys);
    let field = dkim::sign(&key, &this.bytes(), &opts).map_err(|e| e.to_string())?;
    this.fields.insert(
        0,
        Field {
            name: "DKIM-Signature".into(),
            raw: field,
        },
    );
    this.changed();
    Ok(())
}

/// An envelope address must not smuggle anything into an SMTP command.
fn envelope_address(a: String, what: &str) -> mlua::Result<String> {
    if !super::is_envelope_address(&a) {
        return Err(mlua::Error::runtime(format!(
            "queue(): {what} {a:?} is not an envelope address"
        )));
    }
    Ok(a)
}

fn queue(
    lua: &Lua,
    this: &mut MailMessage,
    sender: Value,
    recipient: Value,
    transportid: String,
    o: Option<Table>,
) -> mlua::Result<Table> {
    let hook = with_run(lua, "queue()", |rs| rs.hook)?;
    crate::policy::hooks::require_full_message(hook, "queue()").map_err(mlua::Error::runtime)?;
    if this.headers_only {
        return Err(mlua::Error::runtime(
            "queue(): the message has not fully arrived yet",
        ));
    }
    let sender = envelope_address(address_arg(&sender, "queue(): sender")?, "sender")?;
    let recipient = envelope_address(address_arg(&recipient, "queue(): recipient")?, "recipient")?;
    if recipient.is_empty() {
        return Err(mlua::Error::runtime("queue(): empty recipient"));
    }
    let known = lua
        .app_data_ref::<Shared>()
        .map(|s| s.transports.contains(&transportid))
        .unwrap_or(true);
    if !known {
        return Err(mlua::Error::runtime(format!(
            "queue(): unknown transportid {transportid:?}"
        )));
    }
    let o = QueueOpts::new(o)?;
    let metadata = string_map(o.get("metadata")?, "queue(): metadata")?;
    let hold = o.get::<bool>("hold")?.unwrap_or(false);
    let jobid = o.get::<String>("jobid")?;
    let overquota = match o.get::<String>("overquota")? {
        None => None,
        Some(s) => Some(crate::policy::OverquotaAction::parse(&s).ok_or_else(|| {
            mlua::Error::runtime(format!(
                "queue(): overquota {s:?} is not \"reject\" or \"tmpreject\""
            ))
        })?),
    };
    let delay = match o.get::<f64>("delay")? {
        None => None,
        // At most a year: from_secs_f64 panics on overflow.
        Some(d) if d.is_finite() && (0.0..=31_536_000.0).contains(&d) => {
            Some(Duration::from_secs_f64(d))
        }
        Some(d) => return Err(mlua::Error::runtime(format!("queue(): bad delay {d}"))),
    };
    // DSN: defaults from the envelope, overridden by options.dsn.
    let mut dsn = QueueDsn::default();
    let txn_id = with_run(lua, "queue()", |rs| {
        let t = rs.transaction.as_ref()?;
        dsn.envid = t.dsn.envid.clone();
        dsn.ret = t.dsn.ret.clone();
        if let Some(r) = t
            .recipients
            .iter()
            .find(|r| r.recipient.eq_ignore_ascii_case(&recipient))
        {
            if !r.dsn.notify.is_empty() {
                dsn.notify = Some(r.dsn.notify.join(","));
            }
            dsn.orcpt = r.dsn.orcpt.as_ref().map(|(t, a)| format!("{t};{a}"));
        }
        Some(t.id.clone())
    })?;
    if let Some(d) = o.get::<Table>("dsn")? {
        for (key, slot) in [
            ("envid", &mut dsn.envid),
            ("ret", &mut dsn.ret),
            ("notify", &mut dsn.notify),
            ("orcpt", &mut dsn.orcpt),
        ] {
            if let Some(v) = d.get::<Option<String>>(key)? {
                *slot = Some(v);
            }
        }
    }
    let queue_id = crate::ids::new_id();
    let req = QueueRequest {
        queue_id: queue_id.clone(),
        sender,
        recipient,
        transportid,
        message: this.bytes(),
        metadata,
        hold,
        jobid,
        delay,
        dsn,
        overquota,
    };
    with_run(lua, "queue()", |rs| rs.queued.push(req))?;
    // A new table has no metatable: raw_set is what set does.
    let t = lua.create_table_with_capacity(0, 2)?;
    t.raw_set("transaction", txn_id.unwrap_or_else(|| this.id.clone()))?;
    t.raw_set("queue", queue_id)?;
    Ok(t)
}

pub fn register(_lua: &Lua) -> mlua::Result<()> {
    // MailMessage values are created per run (arguments.mail); nothing global.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_roundtrip() {
        let raw = Bytes::from_static(
            b"Received: from a\r\n\tby b\r\nSubject: hi\r\n there\r\nX: 1\r\n\r\nbody\r\n",
        );
        let mut m = MailMessage::parse(raw.clone(), false, "t");
        assert_eq!(m.fields.len(), 3);
        assert_eq!(m.header("subject").unwrap(), "hi there");
        assert_eq!(m.bytes(), raw);
        m.changed();
        assert_eq!(m.bytes(), raw);
    }

    #[test]
    fn refold() {
        let long = "word ".repeat(40);
        let f = String::from_utf8(format_field("X-Long", &long, true)).unwrap();
        for line in f.split("\r\n") {
            assert!(line.len() <= FOLD_AT, "{line:?}");
        }
        assert!(f.starts_with("X-Long: word word"));
        let inj = String::from_utf8(format_field("X", "a\r\nBcc: evil", false)).unwrap();
        assert_eq!(inj, "X: a Bcc: evil\r\n");
    }
}
