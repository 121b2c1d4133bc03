//! `Pass`, `Reply`, `Accept`, `Reject`, `Defer`: record the verdict in the
//! run state and end the script at once. The error they raise cannot be
//! swallowed by `pcall`/`xpcall`/`coroutine.resume` in user code: the
//! sandbox's wrappers re-raise it once a termination is recorded.

use mlua::{ChunkMode, Function, Lua, MultiValue, Table, Value};

use super::{record_termination, terminate, with_run, ScriptVerdict, Shared, Termination};
use crate::policy::hooks::VerdictKind;
use crate::proto::reply::EnhancedCode;

/// A verdict function: the host records the verdict (from then on the run
/// is terminated), then the script's coroutine yields mlua's "pending"
/// signal and the engine, seeing the run terminated, never resumes it.
///
/// Ending the script with an error instead made mlua build a traceback
/// twice per verdict (`luaL_traceback` searches every loaded module for
/// each frame's name): about a third of a hook's CPU for a one-line
/// `Reject()` (perf over benches/policy-overhead.sh). Where the script
/// cannot yield (inside a `table.sort` comparator, say) the error remains,
/// and the sandbox's `pcall` wrappers re-raise it as before. Bad arguments
/// fail from the host, with the traceback, since people read that message.
const VERDICT_WRAPPER: &str = r#"
local record, raw_error, yieldable, yield, pending = ...
return function(...)
  local msg = record(...)
  if yieldable() then
    -- mlua resumes a dropped coroutine once, to let it close: yield again.
    while true do yield(pending) end
  end
  raw_error(msg, 0)
end
"#;

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    let raw_error: Function = g.raw_get("error")?;
    let coroutine: Table = g.raw_get("coroutine")?;
    let yieldable: Function = coroutine.raw_get("isyieldable")?;
    let yield_: Function = coroutine.raw_get("yield")?;
    for kind in [
        VerdictKind::Pass,
        VerdictKind::Reply,
        VerdictKind::Accept,
        VerdictKind::Reject,
        VerdictKind::Defer,
    ] {
        let record = lua.create_function(move |lua, args: MultiValue| record(lua, kind, args))?;
        let f: Function = lua
            .load(VERDICT_WRAPPER)
            .set_name(format!("={}", kind.function()))
            .set_mode(ChunkMode::Text)
            .call((
                record,
                raw_error.clone(),
                yieldable.clone(),
                yield_.clone(),
                Value::LightUserData(Lua::poll_pending()),
            ))?;
        g.set(kind.function(), f)?;
    }
    Ok(())
}

fn fatal(lua: &Lua, msg: String) -> mlua::Error {
    terminate(lua, Termination::Fatal(msg))
}

/// Records the verdict (the run is terminated from here on) and returns
/// the message the script ends with.
fn record(lua: &Lua, kind: VerdictKind, args: MultiValue) -> mlua::Result<String> {
    // Metered: reading the options may run the script's metamethods.
    match parse(lua, kind, args) {
        Ok(v) => Ok(record_termination(lua, Termination::Verdict(v))),
        Err(msg) => Err(fatal(lua, msg)),
    }
}

fn parse(lua: &Lua, kind: VerdictKind, args: MultiValue) -> Result<ScriptVerdict, String> {
    let name = kind.function();
    let hook = with_run(lua, name, |rs| rs.hook).map_err(|e| e.to_string())?;
    let spec = hook.spec();
    if !spec.allows(kind) {
        return Err(format!(
            "{name}() is not a verdict of the {} hook (allowed: {})",
            spec.name,
            if spec.verdicts.is_empty() {
                "none".to_string()
            } else {
                spec.verdicts
                    .iter()
                    .map(|k| format!("{}()", k.function()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    let mut args = args.into_iter();
    let mut v = ScriptVerdict {
        kind: Some(kind),
        ..Default::default()
    };
    // Pass(options) and Accept(options); the others take (reason, options).
    let opts = match kind {
        VerdictKind::Pass | VerdictKind::Accept => args.next().unwrap_or(Value::Nil),
        _ => {
            let reason = args.next().unwrap_or(Value::Nil);
            v.reason = reason_lines(&reason, name)?;
            args.next().unwrap_or(Value::Nil)
        }
    };
    let opts = match opts {
        Value::Nil => None,
        Value::Table(t) => Some(t),
        other => {
            return Err(format!(
                "{name}(): options must be a table, got {}",
                other.type_name()
            ))
        }
    };
    let Some(opts) = opts else {
        return Ok(v);
    };
    let pass_allowed: Vec<&str> = ["command", "next", "transportid"]
        .into_iter()
        .chain(spec.pass_options.iter().copied())
        .collect();
    let allowed: &[&str] = match kind {
        VerdictKind::Pass => &pass_allowed,
        VerdictKind::Reply => &["disconnect", "reply_codes", "next"],
        // Per hook: helo {host}, mailfrom {sender}, rcptto {recipient, transportid}…
        VerdictKind::Accept => spec.accept_options,
        VerdictKind::Reject | VerdictKind::Defer => &["disconnect", "reply_codes"],
    };
    // Without a metatable, `get` of a key the table does not hold is nil:
    // only the keys present are read (one protected `get` per option name
    // was most of a verdict's cost; perf over benches/policy-overhead.sh).
    let raw = opts.metatable().is_none();
    let mut present: Vec<&str> = Vec::new();
    for pair in opts.clone().pairs::<Value, Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        let key = k.to_string().unwrap_or_default();
        if let Some(known) = allowed.iter().find(|a| **a == key) {
            if matches!(k, Value::String(_)) {
                present.push(known);
            }
        }
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "{name}(): unknown option {key:?} in the {} hook (known: {})",
                spec.name,
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
    }
    let get = |key: &str| -> Result<Value, String> {
        if raw && !present.contains(&key) {
            return Ok(Value::Nil);
        }
        opts.get::<Value>(key).map_err(|e| e.to_string())
    };
    v.disconnect = bool_opt(get("disconnect")?, name, "disconnect")?;
    v.next = bool_opt(get("next")?, name, "next")?;
    match get("command")? {
        Value::Nil => {}
        Value::String(s) => {
            let s = s.to_str().map_err(|e| e.to_string())?.to_string();
            if s.contains(['\r', '\n']) {
                return Err(format!("{name}(): command must be one line"));
            }
            v.command = Some(s);
        }
        other => {
            return Err(format!(
                "{name}(): command must be a string, got {}",
                other.type_name()
            ))
        }
    }
    match get("transportid")? {
        Value::Nil => {}
        Value::String(s) => {
            let id = s.to_str().map_err(|e| e.to_string())?.to_string();
            let known = lua
                .app_data_ref::<Shared>()
                .map(|sh| sh.transports.contains(&id))
                .unwrap_or(true);
            if !known {
                return Err(format!("{name}(): unknown transportid {id:?}"));
            }
            v.transportid = Some(id);
        }
        other => {
            return Err(format!(
                "{name}(): transportid must be a string, got {}",
                other.type_name()
            ))
        }
    }
    if kind == VerdictKind::Pass {
        // Only keys the hook's pass_options allow got past the check above.
        v.route = route_opts(&get("host")?, &get("port")?, &get("tls")?, name)?;
        for (key, slot) in [
            ("bounce", &mut v.reports.bounce),
            ("delay", &mut v.reports.delay),
            ("success", &mut v.reports.success),
        ] {
            *slot = wording_opt(&get(key)?, name, key)?;
        }
    }
    if kind == VerdictKind::Accept {
        v.reason = reason_lines(&get("reason")?, name)?;
        v.host = match get("host")? {
            Value::Nil => None,
            Value::String(s) => {
                let h = s.to_str().map_err(|e| e.to_string())?.trim().to_string();
                if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    return Err(format!("{name}(): host {h:?} is not a HELO name"));
                }
                Some(h)
            }
            other => {
                return Err(format!(
                    "{name}(): host must be a string, got {}",
                    other.type_name()
                ))
            }
        };
        v.sender = address_opt(&get("sender")?, name, "sender", true)?;
        v.recipient = address_opt(&get("recipient")?, name, "recipient", false)?;
    }
    match get("reply_codes")? {
        Value::Nil => {}
        Value::Table(rc) => {
            parse_reply_codes(&mut v, kind, hook.spec().default_reply(kind).code, &rc)?
        }
        other => {
            return Err(format!(
                "{name}(): reply_codes must be a table, got {}",
                other.type_name()
            ))
        }
    }
    Ok(v)
}

/// predelivery `Pass({host, port, tls})`: `None` when none is given.
fn route_opts(
    host: &Value,
    port: &Value,
    tls: &Value,
    name: &str,
) -> Result<Option<crate::policy::Route>, String> {
    let mut r = crate::policy::Route::default();
    match host {
        Value::Nil => {}
        Value::String(s) => {
            let h = s.to_str().map_err(|e| e.to_string())?.trim().to_string();
            let bare = h.trim_start_matches('[');
            if h.is_empty()
                || bare.is_empty()
                || h.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
            {
                return Err(format!("{name}(): host {h:?} is not a next hop"));
            }
            r.host = Some(h);
        }
        other => {
            return Err(format!(
                "{name}(): host must be a string, got {}",
                other.type_name()
            ))
        }
    }
    let p = match port {
        Value::Nil => None,
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.fract() == 0.0 => Some(*n as i64),
        Value::String(s) => s.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()),
        _ => Some(-1),
    };
    if let Some(p) = p {
        if !(1..=65535).contains(&p) {
            return Err(format!("{name}(): port must be 1-65535, got {port:?}"));
        }
        r.port = Some(p as u16);
    }
    match tls {
        Value::Nil => {}
        Value::String(s) => {
            let t = s.to_string_lossy();
            r.tls = Some(
                serde_json::from_value(serde_json::Value::String(t.to_string())).map_err(
                    |_| {
                        format!(
                            "{name}(): tls {t:?} is not a transport TLS mode (none, opportunistic, required, verify)"
                        )
                    },
                )?,
            );
        }
        other => {
            return Err(format!(
                "{name}(): tls must be a string, got {}",
                other.type_name()
            ))
        }
    }
    Ok((r != crate::policy::Route::default()).then_some(r))
}

/// postdelivery `Pass({bounce = {…}})` and its siblings.
fn wording_opt(
    v: &Value,
    name: &str,
    key: &str,
) -> Result<Option<crate::policy::ReportWording>, String> {
    let t = match v {
        Value::Nil => return Ok(None),
        Value::Table(t) => t,
        other => {
            return Err(format!(
                "{name}(): {key} must be a table, got {}",
                other.type_name()
            ))
        }
    };
    const KEYS: &[&str] = &[
        "send",
        "subject",
        "from",
        "text",
        "recipient_text",
        "footer",
        "attach",
    ];
    let mut w = crate::policy::ReportWording::default();
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, val) = pair.map_err(|e| e.to_string())?;
        let k = k.to_string().unwrap_or_default();
        let text = |val: &Value| -> Result<String, String> {
            match val {
                Value::String(s) => Ok(s.to_string_lossy().to_string()),
                Value::Integer(_) | Value::Number(_) => Ok(val.to_string().unwrap_or_default()),
                other => Err(format!(
                    "{name}(): {key}.{k} must be a string, got {}",
                    other.type_name()
                )),
            }
        };
        match k.as_str() {
            "send" => w.send = Some(bool_opt(val, name, &format!("{key}.send"))?),
            "subject" | "from" => {
                let s = text(&val)?;
                if s.contains(['\r', '\n']) {
                    return Err(format!("{name}(): {key}.{k} must be one line"));
                }
                if k == "subject" {
                    w.subject = Some(s)
                } else {
                    w.from = Some(s)
                }
            }
            "text" => w.text = Some(text(&val)?),
            "recipient_text" => w.recipient_text = Some(text(&val)?),
            "footer" => w.footer = Some(text(&val)?),
            "attach" => {
                let s = text(&val)?;
                w.attach = Some(crate::policy::AttachSource::parse(&s).ok_or_else(|| {
                    format!("{name}(): {key}.attach {s:?} is not full, headers or none")
                })?)
            }
            _ => {
                return Err(format!(
                    "{name}(): unknown option {key}.{k:?} (known: {})",
                    KEYS.join(", ")
                ))
            }
        }
    }
    Ok(Some(w))
}

/// An `Accept` address rewrite: a string or `{localpart, domain}`, lowercased;
/// the sender may be "" (the null sender), a recipient needs `local@domain`.
fn address_opt(
    v: &Value,
    name: &str,
    key: &str,
    may_be_null: bool,
) -> Result<Option<String>, String> {
    if v.is_nil() {
        return Ok(None);
    }
    let a = super::address_arg(v, &format!("{name}(): {key}"))
        .map_err(|e| e.to_string())?
        .trim()
        .to_lowercase();
    let valid = if a.is_empty() {
        may_be_null
    } else {
        match a.rsplit_once('@') {
            Some((l, d)) => !l.is_empty() && !d.is_empty() && super::is_envelope_address(&a),
            None => false,
        }
    };
    if !valid {
        return Err(format!("{name}(): {key} {a:?} is not an address"));
    }
    Ok(Some(a))
}

fn bool_opt(v: Value, name: &str, key: &str) -> Result<bool, String> {
    match v {
        Value::Nil => Ok(false),
        Value::Boolean(b) => Ok(b),
        other => Err(format!(
            "{name}(): {key} must be a boolean, got {}",
            other.type_name()
        )),
    }
}

/// A reason is a string (lines split at newlines) or a list of lines.
fn reason_lines(v: &Value, name: &str) -> Result<Option<Vec<String>>, String> {
    let mut lines = Vec::new();
    let mut push = |s: &str| {
        for l in s.split('\n') {
            lines.push(l.trim_end_matches('\r').to_string());
        }
    };
    match v {
        Value::Nil => return Ok(None),
        Value::String(s) => push(&s.to_string_lossy()),
        Value::Integer(_) | Value::Number(_) => push(&v.to_string().unwrap_or_default()),
        Value::Table(t) => {
            for item in t.clone().sequence_values::<Value>() {
                let item = item.map_err(|e| e.to_string())?;
                match item {
                    Value::String(s) => push(&s.to_string_lossy()),
                    Value::Integer(_) | Value::Number(_) => {
                        push(&item.to_string().unwrap_or_default())
                    }
                    other => {
                        return Err(format!(
                            "{name}(): reason lines must be strings, got {}",
                            other.type_name()
                        ))
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "{name}(): reason must be a string or a list of strings, got {}",
                other.type_name()
            ))
        }
    }
    Ok(if lines.iter().all(|l| l.is_empty()) {
        None
    } else {
        Some(lines)
    })
}

fn parse_reply_codes(
    v: &mut ScriptVerdict,
    kind: VerdictKind,
    default_code: u16,
    rc: &Table,
) -> Result<(), String> {
    let name = kind.function();
    let code = match rc.get::<Value>("code").map_err(|e| e.to_string())? {
        Value::Nil => None,
        Value::Integer(i) => Some(i),
        Value::Number(n) if n.fract() == 0.0 => Some(n as i64),
        other => {
            return Err(format!(
                "{name}(): reply_codes.code must be an integer, got {other:?}"
            ))
        }
    };
    if let Some(c) = code {
        if !(200..=599).contains(&c) {
            return Err(format!(
                "{name}(): reply_codes.code {c} is not an SMTP reply code"
            ));
        }
        let c = c as u16;
        if !kind.allowed_classes().contains(&(c / 100)) {
            return Err(format!(
                "{name}(): reply_codes.code {c} does not fit the verdict (allowed: {})",
                kind.allowed_classes()
                    .iter()
                    .map(|k| format!("{k}xx"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        v.code = Some(c);
    }
    let effective = v.code.unwrap_or(default_code);
    let enhanced = match rc.get::<Value>("enhanced").map_err(|e| e.to_string())? {
        Value::Nil => None,
        Value::Boolean(false) => Some(None),
        Value::String(s) => {
            let s = s.to_string_lossy();
            Some(Some(EnhancedCode::parse(&s).ok_or_else(|| {
                format!("{name}(): reply_codes.enhanced {s:?} is not x.y.z")
            })?))
        }
        Value::Table(t) => {
            let parts: Vec<i64> = t
                .sequence_values::<i64>()
                .collect::<mlua::Result<_>>()
                .map_err(|e| format!("{name}(): reply_codes.enhanced: {e}"))?;
            let text = parts
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(".");
            if parts.len() != 3 {
                return Err(format!(
                    "{name}(): reply_codes.enhanced must have three numbers"
                ));
            }
            Some(Some(EnhancedCode::parse(&text).ok_or_else(|| {
                format!("{name}(): reply_codes.enhanced {{{text}}} is not a valid status code")
            })?))
        }
        other => {
            return Err(format!(
                "{name}(): reply_codes.enhanced must be a table of three numbers, got {}",
                other.type_name()
            ))
        }
    };
    if let Some(Some(e)) = enhanced {
        if e.0 as u16 != effective / 100 {
            return Err(format!(
                "{name}(): enhanced code {e} does not match reply code {effective}"
            ));
        }
    }
    v.enhanced = enhanced;
    Ok(())
}
