//! `rate`, `memory`, `cache` and `state`: the scripts' view of the shared
//! state store ([`crate::state`]), local or Redis as `[state]` says. This
//! file converts Lua values and applies `[state] on_error`; it owns no data.
//!
//! - `rate.check(key, limit, seconds[, {cost = 1}])` → `allowed, count`:
//!   GCRA, `limit` events per `seconds`, atomic across nodes with Redis.
//!   `rate.peek(...)` answers the same without counting. A denial is noted
//!   for the history record of the refusal that follows (`decided_by`).
//! - `memory.get(key)` → value or nil; `memory.set(key, value[, ttl])` →
//!   true; `memory.incr(key[, by = 1[, ttl]])` → the new integer (the TTL
//!   is set when the key has none, so a counter's window starts at its
//!   first increment); `memory.delete(key)` → whether it existed. Values
//!   are plain data (strings, numbers, booleans, tables of them).
//! - `cache(fn, {ttl = 60, key = "…"})` → a function that calls `fn` with
//!   its arguments once per `ttl` per distinct argument list (keyed by
//!   `key`, default the function's source:line); results whose first value
//!   is nil (`nil, err`) are not cached.
//! - `state.note(text)`: record which rule decided (greylist.lua uses it);
//!   shown in the refusal's history record and `sluice trace`.
//!
//! Backend failures (Redis down, slower than `[state] timeout`): with
//! `on_error = "open"` the call answers allowed / nil with a warning and
//! `sluice_state_errors_total`; with `"tempfail"` the run ends with a
//! `451 4.3.0` Defer (Reply in the proxy hook), like a script's `Defer()`.

use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::{terminate, with_run, ScriptVerdict, Shared, Termination};
use crate::config::StateOnError;
use crate::policy::hooks::VerdictKind;
use crate::proto::reply::EnhancedCode;
use crate::state::{StateError, StateStore};

/// Longest key a script may use (bytes).
pub const MAX_KEY: usize = 1024;
/// Largest value `memory.set` and `cache` store (bytes of JSON).
pub const MAX_VALUE: usize = 1 << 20;

fn store(lua: &Lua) -> mlua::Result<Arc<StateStore>> {
    lua.app_data_ref::<Shared>()
        .map(|s| s.state.clone())
        .ok_or_else(|| mlua::Error::runtime("no state store"))
}

fn check_key(what: &str, key: &str) -> mlua::Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(mlua::Error::runtime(format!(
            "{what}: the key must be 1 to {MAX_KEY} bytes"
        )));
    }
    Ok(())
}

fn seconds(what: &str, v: Value) -> mlua::Result<Option<Duration>> {
    let s = match v {
        Value::Nil => return Ok(None),
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        other => {
            return Err(mlua::Error::runtime(format!(
                "{what}: expected a number of seconds, got {}",
                other.type_name()
            )))
        }
    };
    if !s.is_finite() || s <= 0.0 || s > 10.0 * 365.0 * 86400.0 {
        return Err(mlua::Error::runtime(format!(
            "{what}: seconds must be greater than 0 (and at most ten years), got {s}"
        )));
    }
    Ok(Some(Duration::from_secs_f64(s)))
}

fn note(lua: &Lua, text: String) {
    if let Some(mut rs) = lua.app_data_mut::<super::RunState>() {
        if rs.decided_by.len() < 16 {
            rs.decided_by.push(text);
        }
    }
}

/// A backend failure: `Ok(())` when `on_error = "open"` (the caller
/// answers allowed / nil), else the run ends with 451 4.3.0.
fn failed(lua: &Lua, store: &StateStore, op: &'static str, e: &StateError) -> mlua::Result<()> {
    let (conn, hook) = lua
        .app_data_ref::<super::RunState>()
        .map(|rs| (rs.conn_id.clone(), rs.hook))
        .unzip();
    let conn = conn.unwrap_or_default();
    match store.on_error() {
        StateOnError::Open => {
            tracing::warn!(conn = %conn, op, error = %e, "state backend failed: on_error = open, allowing");
            crate::metrics::state_fail_open(op);
            Ok(())
        }
        StateOnError::Tempfail => {
            tracing::warn!(conn = %conn, op, error = %e, "state backend failed: on_error = tempfail");
            note(lua, format!("state backend unavailable ({op}): {e}"));
            let kind = match hook.map(|h| h.spec()) {
                Some(s) if s.allows(VerdictKind::Defer) => VerdictKind::Defer,
                Some(s) if s.allows(VerdictKind::Reply) => VerdictKind::Reply,
                _ => return Err(mlua::Error::runtime(format!("{op}: {e}"))),
            };
            Err(terminate(
                lua,
                Termination::Verdict(ScriptVerdict {
                    kind: Some(kind),
                    code: Some(451),
                    enhanced: Some(Some(EnhancedCode(4, 3, 0))),
                    reason: Some(vec![
                        "Temporary local problem, please try again later".into()
                    ]),
                    ..Default::default()
                }),
            ))
        }
    }
}

/// Plain Lua data → JSON text, bounded.
fn encode(lua: &Lua, what: &str, v: &Value) -> mlua::Result<String> {
    let j =
        super::lua_to_json(lua, v, 0).map_err(|e| mlua::Error::runtime(format!("{what}: {e}")))?;
    let s = j.to_string();
    if s.len() > MAX_VALUE {
        return Err(mlua::Error::runtime(format!(
            "{what}: the value is larger than {MAX_VALUE} bytes"
        )));
    }
    Ok(s)
}

fn decode(lua: &Lua, s: &str) -> mlua::Result<Value> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(j) => super::json_to_lua(lua, &j, &Value::Nil),
        // Written by someone else (redis-cli): the raw string.
        Err(_) => Ok(Value::String(lua.create_string(s)?)),
    }
}

fn rate_options(what: &str, o: Option<Table>) -> mlua::Result<u64> {
    let mut cost = 1;
    if let Some(o) = o {
        for pair in o.pairs::<String, Value>() {
            let (k, v) = pair?;
            match (k.as_str(), v) {
                ("cost", Value::Integer(i)) if i >= 0 => cost = i as u64,
                ("cost", Value::Number(n)) if n >= 0.0 && n.fract() == 0.0 => cost = n as u64,
                ("cost", other) => {
                    return Err(mlua::Error::runtime(format!(
                        "{what}: cost must be a non-negative integer, got {other:?}"
                    )))
                }
                (other, _) => {
                    return Err(mlua::Error::runtime(format!(
                        "{what}: unknown option {other:?} (known: cost)"
                    )))
                }
            }
        }
    }
    Ok(cost)
}

fn rate_fn(lua: &Lua, peek: bool) -> mlua::Result<Function> {
    let what = if peek { "rate.peek" } else { "rate.check" };
    lua.create_async_function(
        move |lua, (key, limit, secs, o): (String, i64, Value, Option<Table>)| async move {
            check_key(what, &key)?;
            if limit < 0 {
                return Err(mlua::Error::runtime(format!(
                    "{what}: limit must be 0 or more, got {limit}"
                )));
            }
            let period = seconds(what, secs)?
                .ok_or_else(|| mlua::Error::runtime(format!("{what}: seconds is required")))?;
            let cost = rate_options(what, o)?;
            let st = store(&lua)?;
            match st.rate(&key, limit as u64, period, cost, peek).await {
                Ok(a) => {
                    if !a.allowed && !peek {
                        note(
                            &lua,
                            format!(
                                "rate {key}: {}/{limit} per {}s",
                                a.count,
                                period.as_secs_f64()
                            ),
                        );
                    }
                    Ok((a.allowed, a.count))
                }
                Err(e) => {
                    failed(&lua, &st, "rate", &e)?;
                    Ok((true, 0))
                }
            }
        },
    )
}

fn cache_options(o: Option<Table>) -> mlua::Result<(Duration, Option<String>)> {
    let mut ttl = Duration::from_secs(60);
    let mut key = None;
    if let Some(o) = o {
        for pair in o.pairs::<String, Value>() {
            let (k, v) = pair?;
            match k.as_str() {
                "ttl" => ttl = seconds("cache: ttl", v)?.unwrap_or(ttl),
                "key" => match v {
                    Value::String(s) => key = Some(s.to_str()?.to_string()),
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "cache: key must be a string, got {}",
                            other.type_name()
                        )))
                    }
                },
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "cache: unknown option {other:?} (known: ttl, key)"
                    )))
                }
            }
        }
    }
    Ok((ttl, key))
}

/// The cache key of one call: the function's identity and its arguments.
fn cache_key(ident: &str, args: &str) -> String {
    let k = format!("{ident}|{args}");
    if k.len() <= 200 {
        return k;
    }
    use sha2::Digest;
    let h = sha2::Sha256::digest(k.as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{ident}|sha256:{hex}")
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let rate = lua.create_table()?;
    rate.set("check", rate_fn(lua, false)?)?;
    rate.set("peek", rate_fn(lua, true)?)?;
    lua.globals().set("rate", rate)?;

    let m = lua.create_table()?;
    m.set(
        "get",
        lua.create_async_function(|lua, key: String| async move {
            check_key("memory.get", &key)?;
            let st = store(&lua)?;
            match st.get("m", &key).await {
                Ok(Some(s)) => decode(&lua, &s),
                Ok(None) => Ok(Value::Nil),
                Err(e) => {
                    failed(&lua, &st, "get", &e)?;
                    Ok(Value::Nil)
                }
            }
        })?,
    )?;
    m.set(
        "set",
        lua.create_async_function(|lua, (key, v, ttl): (String, Value, Value)| async move {
            check_key("memory.set", &key)?;
            let ttl = seconds("memory.set: ttl", ttl)?;
            let text = encode(&lua, "memory.set", &v)?;
            let st = store(&lua)?;
            match st.set("m", &key, text, ttl).await {
                Ok(()) => Ok(Value::Boolean(true)),
                Err(e) => {
                    failed(&lua, &st, "set", &e)?;
                    Ok(Value::Nil)
                }
            }
        })?,
    )?;
    m.set(
        "incr",
        lua.create_async_function(
            |lua, (key, by, ttl): (String, Option<i64>, Value)| async move {
                check_key("memory.incr", &key)?;
                let ttl = seconds("memory.incr: ttl", ttl)?;
                let st = store(&lua)?;
                match st.incr(&key, by.unwrap_or(1), ttl).await {
                    Ok(n) => Ok(Value::Integer(n)),
                    Err(e) if e.is_backend() => {
                        failed(&lua, &st, "incr", &e)?;
                        Ok(Value::Nil)
                    }
                    Err(e) => Err(mlua::Error::runtime(format!("memory.incr: {e}"))),
                }
            },
        )?,
    )?;
    m.set(
        "delete",
        lua.create_async_function(|lua, key: String| async move {
            check_key("memory.delete", &key)?;
            let st = store(&lua)?;
            match st.delete("m", &key).await {
                Ok(b) => Ok(Value::Boolean(b)),
                Err(e) => {
                    failed(&lua, &st, "delete", &e)?;
                    Ok(Value::Nil)
                }
            }
        })?,
    )?;
    lua.globals().set("memory", m)?;

    lua.globals().set(
        "cache",
        lua.create_function(|lua, (f, o): (Function, Option<Table>)| {
            let (ttl, key) = cache_options(o)?;
            let ident = key.unwrap_or_else(|| {
                let i = f.info();
                format!(
                    "{}:{}",
                    i.short_src.unwrap_or_default(),
                    i.line_defined.unwrap_or(0)
                )
            });
            lua.create_async_function(move |lua, args: MultiValue| {
                let f = f.clone();
                let ident = ident.clone();
                async move {
                    let list: Vec<Value> = args.iter().cloned().collect();
                    let t = lua.create_sequence_from(list)?;
                    let argj = encode(&lua, "cache: arguments", &Value::Table(t))?;
                    let k = cache_key(&ident, &argj);
                    let st = store(&lua)?;
                    match st.get("c", &k).await {
                        Ok(Some(s)) => {
                            if let Ok(serde_json::Value::Array(items)) =
                                serde_json::from_str::<serde_json::Value>(&s)
                            {
                                let mut out = MultiValue::new();
                                for it in &items {
                                    out.push_back(super::json_to_lua(&lua, it, &Value::Nil)?);
                                }
                                return Ok(out);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => failed(&lua, &st, "get", &e)?,
                    }
                    let out: MultiValue = f.call_async(args).await?;
                    if out.front().is_some_and(|v| !v.is_nil()) {
                        let t = lua.create_sequence_from(out.iter().cloned())?;
                        // Pad nils: the sequence stops at the first hole.
                        for (i, v) in out.iter().enumerate() {
                            t.raw_set(i + 1, v.clone())?;
                        }
                        let j = match super::lua_to_json(&lua, &Value::Table(t), 0) {
                            Ok(serde_json::Value::Object(o)) if o.is_empty() => {
                                serde_json::Value::Array(vec![])
                            }
                            Ok(j) => j,
                            Err(e) => {
                                return Err(mlua::Error::runtime(format!(
                                    "cache: the function's results are not plain data: {e}"
                                )))
                            }
                        };
                        let text = match j {
                            serde_json::Value::Object(o) => {
                                // Holes: keys "1".."n" → an array with nulls.
                                let mut arr = vec![serde_json::Value::Null; out.len()];
                                for (k, v) in o {
                                    if let Ok(i) = k.parse::<usize>() {
                                        if (1..=out.len()).contains(&i) {
                                            arr[i - 1] = v;
                                        }
                                    }
                                }
                                serde_json::Value::Array(arr).to_string()
                            }
                            j => j.to_string(),
                        };
                        if text.len() <= MAX_VALUE {
                            if let Err(e) = st.set("c", &k, text, Some(ttl)).await {
                                failed(&lua, &st, "set", &e)?;
                            }
                        }
                    }
                    Ok(out)
                }
            })
        })?,
    )?;

    let s = lua.create_table()?;
    s.set(
        "note",
        lua.create_function(|lua, text: String| {
            with_run(lua, "state.note", |_| ())?;
            note(lua, text.chars().take(300).collect());
            Ok(())
        })?,
    )?;
    lua.globals().set("state", s)
}
