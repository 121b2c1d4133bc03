//! `connection`, `transaction`, `arguments` and `context`: plain tables built
//! for each run from the server's data (absent fields are nil), each when the
//! script first reads it (the engine's `_ENV` metatable). Scripts may change
//! them, but only `context` is read back.

use std::ffi::{c_char, c_int};

use mlua::{ffi, Lua, LuaSerdeExt, SerializeOptions, Table, Value};
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
        Some(t) => build_transaction(lua, t),
        None => Ok(Value::Nil),
    }
}

/// Builds `transaction` from flat values in one call: the same table the
/// serde conversion of [`TransactionInfo`] gives (the tests compare them),
/// with the keys as constants of the chunk and no intermediate Rust handle
/// per nested table. A field added to [`TransactionInfo`] makes that test
/// fail until it is added here too. The serde way was a fifth of a hook's CPU for the
/// mailfrom and eod hooks (perf over benches/policy-overhead.sh).
///
/// Values: id, sender, sender localpart, domain, ts, dsn ret, dsn envid,
/// eight_bit, smtputf8, then the sender parameters (count, then key and
/// value each), then the recipients (count, then for each: recipient,
/// localpart, domain, transportid, orcpt type, orcpt address, notify
/// count and values, parameter count, keys and values).
const TRANSACTION_BUILDER: &str = r#"
local setmetatable, array_mt = ...
return function(...)
  local a = {...}
  -- Each table in one constructor, its parts built first: a field set
  -- after construction makes Lua resize the table.
  local i = 10
  local sp = {}
  for _ = 1, a[i] do sp[a[i + 1]] = a[i + 2]; i = i + 2 end
  i = i + 1
  local rs = setmetatable({}, array_mt)
  for r = 1, a[i] do
    local base = i
    local orcpt = nil
    if a[base + 5] ~= nil then
      orcpt = setmetatable({a[base + 5], a[base + 6]}, array_mt)
    end
    i = base + 7
    local notify = setmetatable({}, array_mt)
    for n = 1, a[i] do notify[n] = a[i + n] end
    i = i + a[i] + 1
    local params = {}
    for _ = 1, a[i] do params[a[i + 1]] = a[i + 2]; i = i + 2 end
    rs[r] = {
      recipient = a[base + 1],
      address = {localpart = a[base + 2], domain = a[base + 3]},
      transportid = a[base + 4],
      params = params,
      dsn = {notify = notify, orcpt = orcpt},
    }
  end
  return {
    id = a[1], sender = a[2],
    senderaddress = {localpart = a[3], domain = a[4]},
    senderparams = sp,
    recipients = rs,
    ts = a[5], dsn = {ret = a[6], envid = a[7]},
    eight_bit = a[8], smtputf8 = a[9],
  }
end
"#;

const TRANSACTION_BUILDER_KEY: &str = "sluice.transaction_builder";

/// Compile the transaction builder once per state (at sandbox creation).
pub fn register(lua: &Lua) -> mlua::Result<()> {
    let setmetatable: mlua::Function = lua.globals().raw_get("setmetatable")?;
    let f: mlua::Function = lua
        .load(TRANSACTION_BUILDER)
        .set_name("=sluice transaction")
        .set_mode(mlua::ChunkMode::Text)
        .call((setmetatable, lua.array_metatable()))?;
    lua.set_named_registry_value(TRANSACTION_BUILDER_KEY, f)
}

fn build_transaction(lua: &Lua, t: &TransactionInfo) -> mlua::Result<Value> {
    let f: mlua::Function = lua.named_registry_value(TRANSACTION_BUILDER_KEY)?;
    let nargs = transaction_arg_count(t);
    // The values go onto the Lua stack straight from the Rust strings:
    // an mlua `Value` per string (a registry-backed reference, made and then
    // pushed again) was most of the builder's cost (perf over
    // benches/policy-overhead.sh).
    //
    // SAFETY: the closure runs in a protected call (a Lua error unwinds to
    // `exec_raw`, which returns it); it owns nothing that needs dropping,
    // only borrows `t`, and leaves exactly the builder's result above the
    // arguments `exec_raw` pushed (`f`, which `lua_call` consumes).
    let table: Table = unsafe {
        lua.exec_raw(f, |state| {
            if ffi::lua_checkstack(state, nargs) == 0 {
                ffi::lua_pushstring(
                    state,
                    c"transaction: too many values for the Lua stack".as_ptr(),
                );
                ffi::lua_error(state);
            }
            push_transaction_args(state, t);
            ffi::lua_call(state, nargs, 1);
        })
    }?;
    if let Some(m) = &t.milters {
        table.raw_set("milters", json_to_lua(lua, m, &Value::Nil)?)?;
    }
    Ok(Value::Table(table))
}

/// How many values [`push_transaction_args`] pushes (the builder's
/// argument list, see [`TRANSACTION_BUILDER`]).
fn transaction_arg_count(t: &TransactionInfo) -> c_int {
    let mut n = 10 + 2 * t.senderparams.len() + 1;
    for r in &t.recipients {
        n += 7 + r.dsn.notify.len() + 1 + 2 * r.params.len();
    }
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// Push the builder's arguments, in [`TRANSACTION_BUILDER`]'s order.
///
/// # Safety
/// `state` has room for [`transaction_arg_count`] more values; must run
/// where a Lua error (out of memory) may unwind.
unsafe fn push_transaction_args(state: *mut ffi::lua_State, t: &TransactionInfo) {
    let s = |v: &str| {
        ffi::lua_pushlstring(state, v.as_ptr() as *const c_char, v.len());
    };
    let opt = |v: &Option<String>| match v {
        Some(v) => s(v),
        None => ffi::lua_pushnil(state),
    };
    let n = |k: usize| ffi::lua_pushinteger(state, k as ffi::lua_Integer);
    s(&t.id);
    s(&t.sender);
    s(&t.senderaddress.localpart);
    s(&t.senderaddress.domain);
    ffi::lua_pushnumber(state, t.ts);
    opt(&t.dsn.ret);
    opt(&t.dsn.envid);
    ffi::lua_pushboolean(state, t.eight_bit as c_int);
    ffi::lua_pushboolean(state, t.smtputf8 as c_int);
    n(t.senderparams.len());
    for (k, v) in &t.senderparams {
        s(k);
        s(v);
    }
    n(t.recipients.len());
    for r in &t.recipients {
        s(&r.recipient);
        s(&r.address.localpart);
        s(&r.address.domain);
        s(&r.transportid);
        match &r.dsn.orcpt {
            Some((ty, addr)) => {
                s(ty);
                s(addr);
            }
            None => {
                ffi::lua_pushnil(state);
                ffi::lua_pushnil(state);
            }
        }
        n(r.dsn.notify.len());
        for v in &r.dsn.notify {
            s(v);
        }
        n(r.params.len());
        for (k, v) in &r.params {
            s(k);
            s(v);
        }
    }
}

/// `{localpart, domain}`, as the serde conversion of [`Address`] gives it.
fn address(lua: &Lua, a: &Address) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 2)?;
    t.raw_set("localpart", a.localpart.as_str())?;
    t.raw_set("domain", a.domain.as_str())?;
    Ok(t)
}

/// A parameter map (`params`), as its serde conversion gives it.
fn params(lua: &Lua, p: &std::collections::BTreeMap<String, String>) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, p.len())?;
    for (k, v) in p {
        t.raw_set(k.as_str(), v.as_str())?;
    }
    Ok(t)
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
                t.raw_set("address", self::address(lua, &Address::split(&sender))?)?;
            }
            t.raw_set("sender", sender)?;
            t.raw_set("params", self::params(lua, params)?)?;
        }
        HookArguments::RcptTo { address, params } => {
            let recipient = address.to_lowercase();
            t.raw_set("address", self::address(lua, &Address::split(&recipient))?)?;
            t.raw_set("recipient", recipient)?;
            t.raw_set("params", self::params(lua, params)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{MessageDsn, RecipientDsn, RecipientInfo};
    use std::collections::BTreeMap;

    /// Same keys, same values, same array metatable, all the way down.
    fn same(lua: &Lua, a: &Value, b: &Value, at: &str) {
        match (a, b) {
            (Value::Table(x), Value::Table(y)) => {
                let arr = |t: &Table| t.metatable().is_some_and(|m| m == lua.array_metatable());
                assert_eq!(arr(x), arr(y), "{at}: array metatable");
                let keys = |t: &Table| {
                    let mut k: Vec<String> = t
                        .pairs::<Value, Value>()
                        .map(|p| format!("{:?}", p.unwrap().0))
                        .collect();
                    k.sort();
                    k
                };
                assert_eq!(keys(x), keys(y), "{at}: keys");
                for p in x.pairs::<Value, Value>() {
                    let (k, v) = p.unwrap();
                    let w: Value = y.raw_get(k.clone()).unwrap();
                    same(lua, &v, &w, &format!("{at}.{k:?}"));
                }
            }
            (Value::String(x), Value::String(y)) => assert_eq!(x, y, "{at}"),
            (x, y) => assert_eq!(format!("{x:?}"), format!("{y:?}"), "{at}"),
        }
    }

    fn rcpt(addr: &str, notify: &[&str], orcpt: Option<(&str, &str)>) -> RecipientInfo {
        let mut params = BTreeMap::new();
        if !notify.is_empty() {
            params.insert("NOTIFY".to_string(), notify.join(","));
        }
        RecipientInfo {
            recipient: addr.into(),
            address: Address::split(addr),
            params,
            transportid: "default".into(),
            dsn: RecipientDsn {
                notify: notify.iter().map(|s| s.to_string()).collect(),
                orcpt: orcpt.map(|(t, a)| (t.to_string(), a.to_string())),
            },
        }
    }

    #[test]
    fn transaction_builder_gives_the_serde_table() {
        let lua = Lua::new();
        register(&lua).unwrap();
        let mut senderparams = BTreeMap::new();
        senderparams.insert("SIZE".to_string(), "1234".to_string());
        senderparams.insert("BODY".to_string(), "8BITMIME".to_string());
        let full = TransactionInfo {
            id: "t1".into(),
            sender: "alice@example.com".into(),
            senderaddress: Address::split("alice@example.com"),
            senderparams,
            recipients: vec![
                rcpt(
                    "bob@example.org",
                    &["SUCCESS", "DELAY"],
                    Some(("rfc822", "Bob@example.org")),
                ),
                rcpt("carol@example.org", &[], None),
                rcpt("postmaster", &["NEVER"], None),
            ],
            ts: 1_700_000_000.25,
            dsn: MessageDsn {
                ret: Some("HDRS".into()),
                envid: Some("QQ314159".into()),
            },
            eight_bit: true,
            smtputf8: false,
            open: true,
            milters: Some(serde_json::json!({"spamd": {"action": "accept"}})),
        };
        let bare = TransactionInfo {
            id: "t2".into(),
            open: true,
            ..Default::default()
        };
        for t in [full, bare] {
            let built = build_transaction(&lua, &t).unwrap();
            let serde = to_lua(&lua, &t).unwrap();
            same(&lua, &built, &serde, &t.id);
        }
    }
}
