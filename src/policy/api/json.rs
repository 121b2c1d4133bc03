//! `json.encode(value[, {pretty = true}])`, `json.decode(text)` and the
//! `json.null` sentinel (what `null` decodes to).

use mlua::{Lua, Table, Value};

use super::{json_to_lua, lua_to_json};

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "encode",
        lua.create_function(|lua, (v, opts): (Value, Option<Table>)| {
            let j = lua_to_json(lua, &v, 0)
                .map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))?;
            let pretty = match &opts {
                Some(o) => o.get::<Option<bool>>("pretty")?.unwrap_or(false),
                None => false,
            };
            let s = if pretty {
                serde_json::to_string_pretty(&j)
            } else {
                serde_json::to_string(&j)
            }
            .map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))?;
            Ok(s)
        })?,
    )?;
    t.set(
        "decode",
        lua.create_function(|lua, s: mlua::String| {
            let j: serde_json::Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("json.decode: {e}")))?;
            json_to_lua(lua, &j, &Value::NULL)
        })?,
    )?;
    t.set("null", Value::NULL)?;
    lua.globals().set("json", t)
}
