//! Rust regular expressions: `re.match(pattern, subject)` → boolean,
//! `re.find(pattern, subject)` → `{[0] = whole, group1, …, name = …}` or nil,
//! `re.find_all(pattern, subject)` → list of whole matches,
//! `re.replace(pattern, subject, replacement)` (all matches, `$1`/`${name}`),
//! `re.split(pattern, subject)`, `re.escape(text)`. Compiled patterns are
//! cached process-wide.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use mlua::{Lua, Value};
use regex::{Regex, RegexBuilder};

const CACHE_MAX: usize = 1024;

fn cache() -> &'static Mutex<HashMap<String, Regex>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

pub fn compile(pattern: &str) -> mlua::Result<Regex> {
    if let Some(r) = cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(pattern)
    {
        return Ok(r.clone());
    }
    let r = RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| mlua::Error::runtime(format!("re: bad pattern {pattern:?}: {e}")))?;
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(pattern.to_string(), r.clone());
    Ok(r)
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "match",
        lua.create_function(|_, (p, s): (String, mlua::String)| {
            Ok(compile(&p)?.is_match(&s.to_str()?))
        })?,
    )?;
    t.set(
        "find",
        lua.create_function(|lua, (p, s): (String, mlua::String)| {
            let re = compile(&p)?;
            let s = s.to_str()?;
            let Some(caps) = re.captures(&s) else {
                return Ok(Value::Nil);
            };
            let out = lua.create_table()?;
            for (i, m) in caps.iter().enumerate() {
                if let Some(m) = m {
                    out.raw_set(i, m.as_str())?;
                }
            }
            for name in re.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    out.raw_set(name, m.as_str())?;
                }
            }
            Ok(Value::Table(out))
        })?,
    )?;
    t.set(
        "find_all",
        lua.create_function(|_, (p, s): (String, mlua::String)| {
            let re = compile(&p)?;
            let s = s.to_str()?;
            Ok(re
                .find_iter(&s)
                .map(|m| m.as_str().to_string())
                .collect::<Vec<_>>())
        })?,
    )?;
    t.set(
        "replace",
        lua.create_function(|_, (p, s, rep): (String, mlua::String, String)| {
            let re = compile(&p)?;
            let s = s.to_str()?;
            Ok(re.replace_all(&s, rep.as_str()).into_owned())
        })?,
    )?;
    t.set(
        "split",
        lua.create_function(|_, (p, s): (String, mlua::String)| {
            let re = compile(&p)?;
            let s = s.to_str()?;
            Ok(re.split(&s).map(|x| x.to_string()).collect::<Vec<_>>())
        })?,
    )?;
    t.set(
        "escape",
        lua.create_function(|_, s: String| Ok(regex::escape(&s)))?,
    )?;
    lua.globals().set("re", t)
}
