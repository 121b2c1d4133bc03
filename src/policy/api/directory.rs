//! `ldap` and `sql`: read-only look-ups in the directory and the database
//! the `[recipients]` "ldap" and "sql" sources talk to, on their
//! connections (the sources own them; this file only converts values).
//!
//! - `ldap.search(filter[, {attributes = {…}, base = "…"}])` → a list of
//!   `{dn = "…", attrs = {name = {values…}}}`, or `nil, error`. Subtree
//!   scope under `base` (default `[recipients.ldap] base`), all user
//!   attributes unless `attributes` names some, at most [`ROW_LIMIT`]
//!   entries (more is an error). The filter is the script's: put values in
//!   it through `ldap.escape(value)` (RFC 4515).
//! - `sql.query(query[, {params…}])` → a list of rows, each a table column
//!   name → value (NULL is absent), or `nil, error`. `$1`, `$2`… are bound
//!   to the params (never formatted into the text), converted to the type
//!   the server infers for each placeholder; the query runs in a READ ONLY
//!   transaction; at most [`ROW_LIMIT`] rows (more is an error). Columns
//!   of types other than boolean, integer, float and text must be cast
//!   (`::text`).
//!
//! Both answer `nil, "no [recipients] … source"` when the source is not in
//! `[recipients] sources`. Wrong arguments (an unknown option) raise an
//! error: that is the script's bug, not the server's answer.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::Shared;
use crate::recipients::ldap::{escape_filter_value, LdapSource};
use crate::recipients::sql::{self, SqlSource};
use crate::recipients::Validator;

/// Entries / rows a script gets at most from one call.
pub const ROW_LIMIT: usize = 1000;

fn validator(lua: &Lua) -> Option<Arc<Validator>> {
    lua.app_data_ref::<Shared>()
        .and_then(|s| s.recipients.clone())
}

fn fail(lua: &Lua, e: impl AsRef<str>) -> mlua::Result<(Value, Value)> {
    Ok((Value::Nil, Value::String(lua.create_string(e.as_ref())?)))
}

fn search_options(o: Option<Table>) -> mlua::Result<(Vec<String>, Option<String>)> {
    let mut attrs = Vec::new();
    let mut base = None;
    if let Some(o) = o {
        for pair in o.pairs::<String, Value>() {
            let (k, v) = pair?;
            match k.as_str() {
                "attributes" => attrs = Vec::<String>::from_lua_value(v, "attributes")?,
                "base" => base = Some(String::from_lua_value(v, "base")?),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "ldap.search: unknown option {other:?} (known: attributes, base)"
                    )))
                }
            }
        }
    }
    Ok((attrs, base))
}

/// `FromLua` with the option's name in the error.
trait FromLuaNamed: Sized {
    fn from_lua_value(v: Value, what: &str) -> mlua::Result<Self>;
}

impl FromLuaNamed for String {
    fn from_lua_value(v: Value, what: &str) -> mlua::Result<Self> {
        match v {
            Value::String(s) => Ok(s.to_str()?.to_string()),
            other => Err(mlua::Error::runtime(format!(
                "ldap.search: {what} must be a string, got {}",
                other.type_name()
            ))),
        }
    }
}

impl FromLuaNamed for Vec<String> {
    fn from_lua_value(v: Value, what: &str) -> mlua::Result<Self> {
        match v {
            Value::Table(t) => t
                .sequence_values::<Value>()
                .map(|v| String::from_lua_value(v?, what))
                .collect(),
            other => Err(mlua::Error::runtime(format!(
                "ldap.search: {what} must be a list of names, got {}",
                other.type_name()
            ))),
        }
    }
}

fn param(n: usize, v: Value) -> mlua::Result<sql::Param> {
    Ok(match v {
        Value::Nil => sql::Param::Null,
        Value::LightUserData(u) if u.0.is_null() => sql::Param::Null,
        Value::Boolean(b) => sql::Param::Bool(b),
        Value::Integer(i) => sql::Param::Int(i),
        Value::Number(f) => sql::Param::Float(f),
        Value::String(s) => sql::Param::Text(s.to_str()?.to_string()),
        other => {
            return Err(mlua::Error::runtime(format!(
                "sql.query: parameter ${} must be a string, number, boolean or nil, got {}",
                n + 1,
                other.type_name()
            )))
        }
    })
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let l = lua.create_table()?;
    l.set(
        "escape",
        lua.create_function(|_, s: String| Ok(escape_filter_value(&s)))?,
    )?;
    l.set(
        "search",
        lua.create_async_function(|lua, (filter, o): (String, Option<Table>)| async move {
            let (attrs, base) = search_options(o)?;
            let v = validator(&lua);
            let Some(src) = v.as_ref().and_then(|v| v.source::<LdapSource>()) else {
                return fail(&lua, "no [recipients] ldap source");
            };
            let (entries, more) = match src
                .search(base.as_deref(), &filter, &attrs, ROW_LIMIT)
                .await
            {
                Ok(r) => r,
                Err(e) => return fail(&lua, e),
            };
            if more {
                return fail(
                    &lua,
                    format!("more than {ROW_LIMIT} entries (narrow the filter)"),
                );
            }
            let out = lua.create_table_with_capacity(entries.len(), 0)?;
            for e in entries {
                let t = lua.create_table()?;
                t.set("dn", e.dn)?;
                let a = lua.create_table()?;
                for (k, vals) in e.attrs {
                    a.set(k, lua.create_sequence_from(vals)?)?;
                }
                t.set("attrs", a)?;
                out.push(t)?;
            }
            Ok((Value::Table(out), Value::Nil))
        })?,
    )?;
    lua.globals().set("ldap", l)?;

    let s = lua.create_table()?;
    s.set(
        "query",
        lua.create_async_function(|lua, (query, params): (String, Option<Table>)| async move {
            let mut ps = Vec::new();
            if let Some(p) = params {
                // Up to the highest index, so a nil in the middle binds NULL.
                let n = p.raw_len();
                for i in 1..=n {
                    ps.push(param(i - 1, p.raw_get(i)?)?);
                }
            }
            let v = validator(&lua);
            let Some(src) = v.as_ref().and_then(|v| v.source::<SqlSource>()) else {
                return fail(&lua, "no [recipients] sql source");
            };
            let rows = match src.query(&query, &ps, ROW_LIMIT).await {
                Ok(r) => r,
                Err(e) => return fail(&lua, e),
            };
            let out = lua.create_table_with_capacity(rows.len(), 0)?;
            for row in rows {
                let t = lua.create_table()?;
                for (name, val) in row {
                    let val = match val {
                        sql::Value::Null => continue,
                        sql::Value::Bool(b) => Value::Boolean(b),
                        sql::Value::Int(i) => Value::Integer(i),
                        sql::Value::Float(f) => Value::Number(f),
                        sql::Value::Text(s) => Value::String(lua.create_string(s)?),
                    };
                    t.set(name, val)?;
                }
                out.push(t)?;
            }
            Ok((Value::Table(out), Value::Nil))
        })?,
    )?;
    lua.globals().set("sql", s)
}
