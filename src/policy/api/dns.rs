//! `dns.query(name, type)` → list of records (strings, presentation form;
//! MX as "preference exchange", TXT joined), or `nil, error` where error is
//! "NXDOMAIN", "NODATA" or the resolver's message. Async: the script yields
//! while the query is in flight. `type` defaults to "A"; a PTR query accepts
//! an IP address. `dns.fcrdns(ip)` → the forward-confirmed PTR name or nil.
//!
//! One [`Resolver`](crate::scan::dns::Resolver) per config epoch, built on
//! first use from `[dns]` (empty `nameservers` = /etc/resolv.conf) and shared
//! with the sender checks (SPF, DKIM, DMARC, DNSBL…).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use mlua::{Lua, Value};

use super::Shared;
use crate::config::DnsConfig;
use crate::scan::dns::Resolver;

pub struct Dns {
    cfg: DnsConfig,
    resolver: OnceLock<Result<Arc<Resolver>, String>>,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Dns {
        Dns {
            cfg: cfg.clone(),
            resolver: OnceLock::new(),
        }
    }

    /// The shared resolver (built on first use).
    pub fn resolver(&self) -> Result<&Arc<Resolver>, String> {
        self.resolver
            .get_or_init(|| Resolver::new(&self.cfg).map(Arc::new))
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Records of `name`/`rtype` in presentation form.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<Vec<String>, String> {
        let resolver = self.resolver()?;
        resolver.query(name, rtype).await.map_err(|e| e.to_string())
    }

    /// Forward-confirmed reverse DNS: a PTR name of `ip` whose A/AAAA
    /// records include `ip` (the first one that does), else None.
    pub async fn fcrdns(&self, ip: IpAddr) -> Option<String> {
        let resolver = self.resolver().ok()?;
        resolver.fcrdns(ip).await.ok().flatten()
    }
}

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
