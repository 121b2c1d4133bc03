//! `dns.query(name, type)` → list of records (strings, presentation form;
//! MX as "preference exchange", TXT joined), or `nil, error` where error is
//! "NXDOMAIN", "NODATA" or the resolver's message. Async: the script yields
//! while the query is in flight. `type` defaults to "A"; a PTR query accepts
//! an IP address. `dns.fcrdns(ip)` → the forward-confirmed PTR name or nil.
//!
//! One [`Dns`] per config epoch, built on first use from `[dns]` (empty
//! `nameservers` = /etc/resolv.conf) and shared with the sender checks (SPF,
//! DKIM, DMARC, DNSBL…).

use std::net::IpAddr;
use std::sync::Arc;

use mlua::{Lua, Value};

use super::Shared;
pub use crate::scan::dns::Dns;

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "query",
        lua.create_async_function(|lua, (name, rtype): (String, Option<String>)| async move {
            let dns: Option<Arc<Dns>> = lua.app_data_ref::<Shared>().map(|s| s.dns.clone());
            let Some(dns) = dns else {
                return Ok((Value::Nil, Value::String(lua.create_string("no resolver")?)));
            };
            let rtype = rtype.unwrap_or_else(|| "A".into());
            match dns.query(&name, &rtype).await {
                Ok(records) => Ok((Value::Table(lua.create_sequence_from(records)?), Value::Nil)),
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e)?))),
            }
        })?,
    )?;
    t.set(
        "fcrdns",
        lua.create_async_function(|lua, ip: String| async move {
            let dns: Option<Arc<Dns>> = lua.app_data_ref::<Shared>().map(|s| s.dns.clone());
            let (Some(dns), Ok(ip)) = (dns, ip.parse::<IpAddr>()) else {
                return Ok(None);
            };
            Ok(dns.fcrdns(ip).await)
        })?,
    )?;
    lua.globals().set("dns", t)
}
