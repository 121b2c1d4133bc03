//! The Lua face of ScanDLP: `ScanDLP([patterns[, options]])`.
//!
//! - `patterns`: nil or `{}` = every configured rule; a list of configured
//!   rule names (`{"CREDITCARD", "EXECUTABLE"}`); or custom rules
//!   (`{RULE1 = {filename = {"/\\.exe$/i"}, sha1hash = {"…"}}}`).
//! - `options`: `stop_on_match`, `timeout` (seconds), `recursion_limit`
//!   (default 9), `partid`, `extended_result`.
//!
//! Returns a list of matched rule names (sorted; error rules included);
//! with `partid`, a table of rule name → list of part ids where it matched
//! (`{CREDITCARD = {"1", "2:a.zip:b.txt"}}`); with `extended_result`,
//! `{rules = <either of the above>, error = bool}`.

use std::collections::BTreeMap;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use serde::Deserialize;

use super::{DlpEngine, RuleSpec, ScanOptions, ScanResult, Selection};

fn bad(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(format!("ScanDLP: {}", msg.into()))
}

/// Turn the `patterns` argument into a [`Selection`]. Custom rules are parsed
/// and checked (a bad one raises a Lua error naming the rule and field);
/// their regexes compile when scanned, or ahead with
/// [`DlpEngine::compile_custom`].
pub fn selection_from_lua(value: Value) -> mlua::Result<Selection> {
    let t = match value {
        Value::Nil => return Ok(Selection::All),
        Value::Table(t) => t,
        other => {
            return Err(bad(format!(
                "patterns must be a table, got {}",
                other.type_name()
            )))
        }
    };
    let mut names = Vec::new();
    let mut custom = BTreeMap::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        match (k, v) {
            (Value::Integer(_), Value::String(s)) => names.push(s.to_str()?.to_string()),
            (Value::String(k), v @ Value::Table(_)) => {
                let name = k.to_str()?.to_string();
                let json = serde_json::Value::deserialize(mlua::serde::Deserializer::new(v))
                    .map_err(|e| bad(format!("rule {name:?}: {e}")))?;
                let spec = RuleSpec::from_json(&name, &json).map_err(|e| bad(e.to_string()))?;
                custom.insert(name, spec);
            }
            (k, v) => {
                return Err(bad(format!(
                    "patterns must be a list of rule names or a table of custom rules \
                     (got {} = {})",
                    k.type_name(),
                    v.type_name()
                )))
            }
        }
    }
    match (names.is_empty(), custom.is_empty()) {
        (true, true) => Ok(Selection::All),
        (false, true) => Ok(Selection::Named(names)),
        (true, false) => Ok(Selection::Custom(custom)),
        (false, false) => Err(bad(
            "patterns mix rule names and custom rules; use one or the other",
        )),
    }
}

/// Turn the `options` argument into [`ScanOptions`]; unknown keys are errors.
pub fn options_from_lua(value: Value) -> mlua::Result<ScanOptions> {
    let mut o = ScanOptions::default();
    let t: Table = match value {
        Value::Nil => return Ok(o),
        Value::Table(t) => t,
        other => {
            return Err(bad(format!(
                "options must be a table, got {}",
                other.type_name()
            )))
        }
    };
    let flag = |v: &Value, key: &str| -> mlua::Result<bool> {
        match v {
            Value::Boolean(b) => Ok(*b),
            Value::Nil => Ok(false),
            other => Err(bad(format!(
                "option {key} must be a boolean, got {}",
                other.type_name()
            ))),
        }
    };
    for pair in t.pairs::<String, Value>() {
        let (k, v) = pair?;
        match k.as_str() {
            "stop_on_match" => o.stop_on_match = flag(&v, &k)?,
            "partid" => o.partid = flag(&v, &k)?,
            "extended_result" => o.extended_result = flag(&v, &k)?,
            "timeout" => {
                let secs = match v {
                    Value::Integer(i) => i as f64,
                    Value::Number(n) => n,
                    Value::Nil => continue,
                    other => {
                        return Err(bad(format!(
                            "option timeout must be a number of seconds, got {}",
                            other.type_name()
                        )))
                    }
                };
                if !secs.is_finite() || secs < 0.0 {
                    return Err(bad("option timeout must be a non-negative number"));
                }
                o.timeout = Some(Duration::from_secs_f64(secs.min(86_400.0)));
            }
            "recursion_limit" => match v {
                Value::Integer(i) if i >= 0 => o.recursion_limit = i as usize,
                Value::Number(n) if n >= 0.0 && n.fract() == 0.0 => o.recursion_limit = n as usize,
                _ => return Err(bad("option recursion_limit must be a non-negative integer")),
            },
            other => {
                return Err(bad(format!(
                    "unknown option {other:?} (stop_on_match, timeout, recursion_limit, \
                     partid, extended_result)"
                )))
            }
        }
    }
    Ok(o)
}

/// The Lua value `ScanDLP` returns for `r` under `opts` (see the module doc).
pub fn result_to_lua(lua: &Lua, r: &ScanResult, opts: &ScanOptions) -> mlua::Result<Value> {
    let rules = if opts.partid {
        let t = lua.create_table()?;
        for (rule, places) in &r.matches {
            let list = lua.create_sequence_from(places.iter().map(|p| p.to_string()))?;
            t.set(rule.as_str(), list)?;
        }
        t
    } else {
        lua.create_sequence_from(r.matches.keys().map(String::as_str))?
    };
    if opts.extended_result {
        let t = lua.create_table()?;
        t.set("rules", rules)?;
        t.set("error", r.error)?;
        Ok(Value::Table(t))
    } else {
        Ok(Value::Table(rules))
    }
}

/// All of `ScanDLP` in one call, for the policy engine: parse the arguments,
/// compile custom rules (a bad regex is a Lua error naming the rule), scan
/// `raw_message`, and build the result. CPU-bound: run it where blocking is
/// acceptable.
pub fn scan_dlp_lua(
    lua: &Lua,
    engine: &DlpEngine,
    raw_message: &[u8],
    patterns: Value,
    options: Value,
) -> mlua::Result<Value> {
    let mut selection = selection_from_lua(patterns)?;
    let opts = options_from_lua(options)?;
    if let Selection::Custom(specs) = &selection {
        let set = engine
            .compile_custom(specs)
            .map_err(|e| bad(e.to_string()))?;
        selection = Selection::Compiled(std::sync::Arc::new(set));
    }
    let r = engine.scan(raw_message, &selection, &opts);
    result_to_lua(lua, &r, &opts)
}
