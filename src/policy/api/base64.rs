//! `base64.encode(data)`, `base64.decode(text)` → data, or nil and an error.

use base64::Engine;
use mlua::{Lua, Value};

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "encode",
        lua.create_function(|_, data: mlua::String| {
            Ok(base64::engine::general_purpose::STANDARD.encode(&*data.as_bytes()))
        })?,
    )?;
    t.set(
        "decode",
        lua.create_function(|lua, text: mlua::String| {
            let cleaned: Vec<u8> = text
                .as_bytes()
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            match base64::engine::general_purpose::STANDARD.decode(&cleaned) {
                Ok(d) => Ok((Value::String(lua.create_string(&d)?), Value::Nil)),
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
            }
        })?,
    )?;
    lua.globals().set("base64", t)
}
