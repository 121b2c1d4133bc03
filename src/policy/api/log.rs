//! `log.debug/info/warn/error(...)` and `print(...)`: into tracing, target
//! `sluice::script`, with the connection id (`conn`) and hook name.

use mlua::{Lua, Value, Variadic};

use super::RunState;

fn message(args: &Variadic<Value>) -> mlua::Result<String> {
    let mut parts = Vec::with_capacity(args.len());
    for v in args.iter() {
        parts.push(v.to_string()?);
    }
    Ok(parts.join("\t"))
}

fn ids(lua: &Lua) -> (String, &'static str) {
    lua.app_data_ref::<RunState>()
        .map(|rs| (rs.conn_id.clone(), rs.hook.name()))
        .unwrap_or_default()
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    macro_rules! level {
        ($name:literal, $mac:ident) => {
            t.set(
                $name,
                lua.create_function(|lua, args: Variadic<Value>| {
                    let msg = message(&args)?;
                    let (conn, hook) = ids(lua);
                    tracing::$mac!(target: "sluice::script", conn = %conn, hook, "{msg}");
                    Ok(())
                })?,
            )?;
        };
    }
    level!("debug", debug);
    level!("info", info);
    level!("warn", warn);
    level!("error", error);
    let g = lua.globals();
    g.set("print", t.get::<mlua::Function>("info")?)?;
    g.set("log", t)
}
