//! Reputation lookups for scripts (see `crate::scan::dnsbl`):
//!
//! - `dnsbl.check(ip, zones)`, `dnswl.check(ip, zones)`,
//!   `rhsbl.check(domain, zones)` → `listed, errors`: `listed` is a table
//!   zone → `{a = {"127.0.0.2"}, txt = {"reason"}}` of the zones that list
//!   the query (empty when none does); `errors` is nil, or zone → message
//!   for the zones that could not be asked (timeout, SERVFAIL, refusal).
//!   Zones are queried in parallel; IPv6 addresses are reversed by nibble.
//! - `reverse_dns(ip)` → the forward-confirmed PTR name, or nil (and an
//!   error message when DNS failed temporarily).
//! - `sender_mx(domain)` → `{ok, null_mx, implicit, mx = {{preference,
//!   exchange}, …}}`, or nil and an error on a temporary failure. `ok` is
//!   false for a null MX (RFC 7505) or a domain with neither MX nor A/AAAA.

use std::net::IpAddr;

use mlua::{Lua, Table, Value};

use super::auth::scanners;
use crate::scan::dnsbl::{self, ZoneResults};

fn zones_arg(v: Value, what: &str) -> mlua::Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.to_str()?.to_string()]),
        Value::Table(t) => t.sequence_values::<String>().collect(),
        other => Err(mlua::Error::runtime(format!(
            "{what}: zones must be a list of zone names, got {}",
            other.type_name()
        ))),
    }
}

fn results_to_lua(lua: &Lua, r: ZoneResults) -> mlua::Result<(Table, Value)> {
    let listed = lua.create_table()?;
    for (zone, l) in r.listed {
        let t = lua.create_table()?;
        t.set(
            "a",
            lua.create_sequence_from(l.a.iter().map(|a| a.to_string()))?,
        )?;
        t.set("txt", lua.create_sequence_from(l.txt)?)?;
        listed.set(zone, t)?;
    }
    let errors = if r.errors.is_empty() {
        Value::Nil
    } else {
        let t = lua.create_table()?;
        for (zone, e) in r.errors {
            t.set(zone, e)?;
        }
        Value::Table(t)
    };
    Ok((listed, errors))
}

fn ip_checker(lua: &Lua, name: &'static str) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "check",
        lua.create_async_function(move |lua, (ip, zones): (String, Value)| async move {
            let zones = zones_arg(zones, name)?;
            let (resolver, _) = scanners(&lua, name)?;
            let r = dnsbl::check_ip(&resolver, &ip, &zones)
                .await
                .map_err(|e| mlua::Error::runtime(format!("{name}: {e}")))?;
            results_to_lua(&lua, r)
        })?,
    )?;
    Ok(t)
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    g.set("dnsbl", ip_checker(lua, "dnsbl.check")?)?;
    g.set("dnswl", ip_checker(lua, "dnswl.check")?)?;
    let rhsbl = lua.create_table()?;
    rhsbl.set(
        "check",
        lua.create_async_function(|lua, (domain, zones): (String, Value)| async move {
            let zones = zones_arg(zones, "rhsbl.check")?;
            let (resolver, _) = scanners(&lua, "rhsbl.check")?;
            let r = dnsbl::check_domain(&resolver, &domain, &zones)
                .await
                .map_err(|e| mlua::Error::runtime(format!("rhsbl.check: {e}")))?;
            results_to_lua(&lua, r)
        })?,
    )?;
    g.set("rhsbl", rhsbl)?;
    g.set(
        "reverse_dns",
        lua.create_async_function(|lua, ip: String| async move {
            let Ok(addr) = ip.trim().parse::<IpAddr>() else {
                return Err(mlua::Error::runtime(format!(
                    "reverse_dns: {ip:?} is not an IP address"
                )));
            };
            let (resolver, _) = scanners(&lua, "reverse_dns")?;
            match resolver.fcrdns(addr).await {
                Ok(name) => Ok((name, None)),
                Err(e) => Ok((None, Some(e.to_string()))),
            }
        })?,
    )?;
    g.set(
        "sender_mx",
        lua.create_async_function(|lua, domain: String| async move {
            let (resolver, _) = scanners(&lua, "sender_mx")?;
            match dnsbl::sender_mx(&resolver, &domain).await {
                Ok(r) => {
                    let t = lua.create_table()?;
                    t.set("ok", r.ok)?;
                    t.set("null_mx", r.null_mx)?;
                    t.set("implicit", r.implicit)?;
                    let list = lua.create_table()?;
                    for (i, (pref, host)) in r.mx.into_iter().enumerate() {
                        let m = lua.create_table()?;
                        m.set("preference", pref)?;
                        m.set("exchange", host)?;
                        list.raw_set(i + 1, m)?;
                    }
                    t.set("mx", list)?;
                    Ok((Value::Table(t), Value::Nil))
                }
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
            }
        })?,
    )?;
    Ok(())
}
