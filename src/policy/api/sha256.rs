//! `sha256(data)` → lowercase hex digest.

use mlua::Lua;
use sha2::{Digest, Sha256};

pub fn hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in d.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let f = lua.create_function(|_, data: mlua::String| Ok(hex(&data.as_bytes())))?;
    lua.globals().set("sha256", f)
}
