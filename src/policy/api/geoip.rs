//! `geoip.lookup(ip)` → `{country = "DE", country_name = "Germany",
//! continent = "EU", asn = 64500, as_org = "Example AS"}` (fields nil when
//! unknown) from the `[geoip]` databases. A script that uses `geoip` with
//! no database configured fails to load.
//!
//! `geoip.available([kind])` → whether a database is configured: `kind`
//! "country" (`country_db`), "asn" (`asn_db`), or omitted (either). It
//! never raises, so code that must work with and without the data (the
//! Axigen runtime, which reads GeoIPResult as "" without a country
//! database, as Axigen does) asks it instead of catching lookup's error.

use std::net::IpAddr;

use mlua::Lua;

use super::auth::scanners;

/// Does a script's source call into `geoip`?
pub fn mentions_geoip(src: &str) -> bool {
    src.contains("geoip.") || src.contains("geoip[") || src.contains("\"geoip\"")
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "available",
        lua.create_function(|lua, kind: Option<String>| {
            // Not `scanners()`: that needs a resolver, and this never fails
            // for want of DNS.
            let shared = lua
                .app_data_ref::<super::Shared>()
                .ok_or_else(|| mlua::Error::runtime("geoip.available: no policy engine state"))?;
            let g = &shared.scan.geoip;
            match kind.as_deref() {
                None => Ok(g.is_configured()),
                Some("country") => Ok(g.has_country()),
                Some("asn") => Ok(g.has_asn()),
                Some(other) => Err(mlua::Error::runtime(format!(
                    "geoip.available: kind must be \"country\" or \"asn\", got {other:?}"
                ))),
            }
        })?,
    )?;
    t.set(
        "lookup",
        lua.create_function(|lua, ip: String| {
            let addr: IpAddr = ip
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| {
                    mlua::Error::runtime(format!("geoip.lookup: {ip:?} is not an IP address"))
                })?;
            let (_, scan) = scanners(lua, "geoip.lookup")?;
            let info = scan
                .geoip
                .lookup(addr)
                .map_err(|e| mlua::Error::runtime(e.to_string()))?;
            let r = lua.create_table()?;
            r.set("country", info.country)?;
            r.set("country_name", info.country_name)?;
            r.set("continent", info.continent)?;
            r.set("asn", info.asn)?;
            r.set("as_org", info.as_org)?;
            Ok(r)
        })?,
    )?;
    lua.globals().set("geoip", t)
}
