//! `dns.query(name, type)` → list of records (strings, presentation form;
//! MX as "preference exchange", TXT joined), or `nil, error` where error is
//! "NXDOMAIN", "NODATA" or the resolver's message. Async: the script yields
//! while the query is in flight. `type` defaults to "A"; a PTR query accepts
//! an IP address. `dns.fcrdns(ip)` → the forward-confirmed PTR name or nil.
//!
//! One hickory `TokioResolver` per config epoch, built on first use from
//! `[dns]` (empty `nameservers` = /etc/resolv.conf).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, TokioResolver};
use mlua::{Lua, Value};

use super::Shared;
use crate::config::DnsConfig;

pub struct Dns {
    cfg: DnsConfig,
    resolver: OnceLock<Result<TokioResolver, String>>,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Dns {
        Dns {
            cfg: cfg.clone(),
            resolver: OnceLock::new(),
        }
    }

    fn build(&self) -> Result<TokioResolver, String> {
        let mut builder = if self.cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in &self.cfg.nameservers {
                let sa = match ns.parse::<SocketAddr>() {
                    Ok(sa) => sa,
                    Err(_) => SocketAddr::new(
                        ns.parse::<IpAddr>()
                            .map_err(|_| format!("bad nameserver {ns:?}"))?,
                        53,
                    ),
                };
                group.push(NameServerConfig::new(sa, Protocol::Udp));
                group.push(NameServerConfig::new(sa, Protocol::Tcp));
            }
            let config = ResolverConfig::from_parts(None, vec![], group);
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = self.cfg.timeout.unwrap_or(Duration::from_secs(5));
        opts.attempts = 2;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        Ok(builder.build())
    }

    pub fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver
            .get_or_init(|| self.build())
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Records of `name`/`rtype` in presentation form.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<Vec<String>, String> {
        let rtype = RecordType::from_str(&rtype.to_ascii_uppercase())
            .map_err(|_| format!("unknown record type {rtype:?}"))?;
        let name = if rtype == RecordType::PTR {
            match name.parse::<IpAddr>() {
                Ok(ip) => Name::from(ip),
                Err(_) => parse_name(name)?,
            }
        } else {
            parse_name(name)?
        };
        let resolver = self.resolver()?;
        match resolver.lookup(name, rtype).await {
            Ok(lookup) => Ok(lookup.iter().map(format_rdata).collect()),
            Err(e) if e.is_nx_domain() => Err("NXDOMAIN".into()),
            Err(e) if e.is_no_records_found() => Err("NODATA".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Dns {
    /// Forward-confirmed reverse DNS: a PTR name of `ip` whose A/AAAA
    /// records include `ip` (the first one that does), else None.
    pub async fn fcrdns(&self, ip: IpAddr) -> Option<String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let names = self.query(&ip.to_string(), "PTR").await.ok()?;
        let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
        for name in names.iter().take(10) {
            if let Ok(addrs) = self.query(name, rtype).await {
                if addrs.iter().any(|a| a.parse::<IpAddr>().ok() == Some(ip)) {
                    return Some(name.clone());
                }
            }
        }
        None
    }
}

fn parse_name(name: &str) -> Result<Name, String> {
    let mut n = Name::from_str(name).map_err(|e| format!("bad name {name:?}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

fn strip_dot(s: String) -> String {
    match s.strip_suffix('.') {
        Some(x) if !x.is_empty() => x.to_string(),
        _ => s,
    }
}

fn format_rdata(r: &RData) -> String {
    match r {
        RData::A(a) => a.to_string(),
        RData::AAAA(a) => a.to_string(),
        RData::MX(mx) => format!(
            "{} {}",
            mx.preference(),
            strip_dot(mx.exchange().to_string())
        ),
        RData::TXT(txt) => txt
            .txt_data()
            .iter()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect::<Vec<_>>()
            .concat(),
        RData::PTR(n) => strip_dot(n.0.to_string()),
        RData::CNAME(n) => strip_dot(n.0.to_string()),
        RData::NS(n) => strip_dot(n.0.to_string()),
        other => other.to_string(),
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
