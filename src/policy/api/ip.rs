//! `ip.in_network(ip, cidr_or_list)` → boolean; `ip.is_valid(ip)`;
//! `ip.version(ip)` → 4, 6 or nil.

use std::net::IpAddr;

use ipnet::IpNet;
use mlua::{Lua, Value};

fn parse_net(s: &str) -> mlua::Result<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(mlua::Error::runtime(format!(
        "ip.in_network: {s:?} is not a network (a.b.c.d/n or x::/n)"
    )))
}

/// Strip an IPv4-mapped IPv6 prefix so "::ffff:1.2.3.4" matches 1.2.3.0/24.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = s.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    })
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "in_network",
        lua.create_function(|_, (ip, nets): (String, Value)| {
            let Some(ip) = parse_ip(&ip) else {
                return Ok(false);
            };
            let list: Vec<String> = match nets {
                Value::String(s) => vec![s.to_str()?.to_string()],
                Value::Table(t) => t.sequence_values::<String>().collect::<mlua::Result<_>>()?,
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "ip.in_network: expected a network or a list of networks, got {}",
                        other.type_name()
                    )))
                }
            };
            for n in list {
                if parse_net(&n)?.contains(&ip) {
                    return Ok(true);
                }
            }
            Ok(false)
        })?,
    )?;
    t.set(
        "is_valid",
        lua.create_function(|_, ip: String| Ok(parse_ip(&ip).is_some()))?,
    )?;
    t.set(
        "version",
        lua.create_function(|_, ip: String| {
            Ok(parse_ip(&ip).map(|a| if a.is_ipv4() { 4 } else { 6 }))
        })?,
    )?;
    // ip.network("192.0.2.7", 24, 64) → "192.0.2.0/24": the network of an
    // address at the given prefix (IPv4, IPv6); nil for a non-address.
    t.set(
        "network",
        lua.create_function(|_, (ip, v4, v6): (String, Option<u8>, Option<u8>)| {
            let Some(ip) = parse_ip(&ip) else {
                return Ok(None);
            };
            let net =
                match ip {
                    IpAddr::V4(a) => ipnet::Ipv4Net::new(a, v4.unwrap_or(32).min(32))
                        .map(|n| IpNet::V4(n.trunc())),
                    IpAddr::V6(a) => ipnet::Ipv6Net::new(a, v6.unwrap_or(128).min(128))
                        .map(|n| IpNet::V6(n.trunc())),
                };
            Ok(net.ok().map(|n| n.to_string()))
        })?,
    )?;
    lua.globals().set("ip", t)
}
