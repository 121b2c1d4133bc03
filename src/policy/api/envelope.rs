//! `connection`, `transaction`, `arguments` and `context`: plain tables built
//! for each run from the server's data (absent fields are nil). Scripts may
//! change them, but only `context` is read back.

use mlua::{Lua, LuaSerdeExt, SerializeOptions, Table, Value};
use serde::Serialize;

use super::json_to_lua;
use super::mail::MailMessage;
use crate::envelope::{Address, ConnectionInfo, TransactionInfo};
use crate::policy::HookArguments;

fn options() -> SerializeOptions {
    SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
}

pub fn to_lua<T: Serialize>(lua: &Lua, v: &T) -> mlua::Result<Value> {
    lua.to_value_with(v, options())
}

/// `connection`; `tls.peercert` is `{x509 = PEM}` as in Halon.
pub fn connection(lua: &Lua, c: &ConnectionInfo) -> mlua::Result<Value> {
    let v = to_lua(lua, c)?;
    if let Value::Table(t) = &v {
        if let Some(tls) = t.get::<Option<Table>>("tls")? {
            if let Some(pem) = tls.get::<Option<String>>("peercert")? {
                let pc = lua.create_table()?;
                pc.set("x509", pem)?;
                tls.set("peercert", pc)?;
            }
        }
    }
    Ok(v)
}

pub fn transaction(lua: &Lua, t: Option<&TransactionInfo>) -> mlua::Result<Value> {
    match t {
        // Before MAIL FROM: `transaction.id` (and an empty recipient list) only.
        Some(t) if !t.open => {
            let v = lua.create_table()?;
            v.set("id", t.id.as_str())?;
            v.set("recipients", lua.create_table()?)?;
            Ok(Value::Table(v))
        }
        Some(t) => to_lua(lua, t),
        None => Ok(Value::Nil),
    }
}

/// `arguments`; for headers/eod `arguments.mail` is a MailMessage. In
/// mailfrom and rcptto, as in Halon: `sender` / `recipient` is the address
/// string (lowercase; the null sender is ""), `address` is `{localpart,
/// domain}` (nil for the null sender; "postmaster" has domain "").
pub fn arguments(lua: &Lua, a: &HookArguments, txn_id: Option<&str>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    match a {
        HookArguments::None => {}
        HookArguments::Helo { verb, host } => {
            t.set("verb", verb.as_str())?;
            t.set("host", host.as_str())?;
        }
        HookArguments::Auth {
            mechanism,
            username,
            password,
        } => {
            t.set("mechanism", mechanism.as_str())?;
            t.set("username", username.as_str())?;
            t.set("password", password.as_str())?;
        }
        HookArguments::MailFrom { address, params } => {
            let sender = address.to_lowercase();
            // The null sender has no parts: `address` is nil, `sender` "".
            if !sender.is_empty() {
                t.set("address", to_lua(lua, &Address::split(&sender))?)?;
            }
            t.set("sender", sender)?;
            t.set("params", to_lua(lua, params)?)?;
        }
        HookArguments::RcptTo { address, params } => {
            let recipient = address.to_lowercase();
            t.set("address", to_lua(lua, &Address::split(&recipient))?)?;
            t.set("recipient", recipient)?;
            t.set("params", to_lua(lua, params)?)?;
        }
        HookArguments::Proxy { command } => {
            t.set("command", command.as_str())?;
        }
        HookArguments::Mail {
            message,
            headers_only,
        } => {
            let m = MailMessage::parse(message.clone(), *headers_only, txn_id.unwrap_or_default());
            t.set("mail", lua.create_userdata(m)?)?;
        }
        HookArguments::Delivery(d) => {
            if let Value::Table(d) = to_lua(lua, d)? {
                for pair in d.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    t.raw_set(k, v)?;
                }
            }
        }
    }
    Ok(t)
}

/// `context`: a table even when the connection has none yet.
pub fn context(lua: &Lua, c: &serde_json::Value) -> mlua::Result<Value> {
    match c {
        serde_json::Value::Null => Ok(Value::Table(lua.create_table()?)),
        other => json_to_lua(lua, other, &Value::Nil),
    }
}
