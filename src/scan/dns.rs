//! The one DNS resolver of a config epoch: every lookup of the policy engine
//! (`dns.query`, FCrDNS) and of the sender checks (SPF, DKIM, DMARC, ARC,
//! DNSBL, MX) goes through it.
//!
//! It is the hickory resolver that mail-auth is built on (mail-auth pins its
//! own hickory version, so this is the one both can share), configured from
//! `[dns]`: the nameservers (empty = /etc/resolv.conf), a per-query
//! `timeout` (default 5 s) and two attempts. Two caches sit in front of it:
//! hickory's record cache (TTL-bound, negative answers included) and
//! mail-auth's parsed-record caches ([`TtlCache`]) so a warm SPF, DKIM key
//! or DMARC record costs a hash lookup, not a parse.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ProtocolConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use mail_auth::hickory_resolver::name_server::TokioConnectionProvider;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::{RData, RecordType};
use mail_auth::hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use mail_auth::hickory_resolver::{Name, TokioResolver};
use mail_auth::{MessageAuthenticator, Parameters, ResolverCache, Txt, MX};

use crate::config::DnsConfig;

/// Default per-query timeout when `[dns] timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries per parsed-record cache; past it, expired entries are dropped
/// (and if none are, the whole cache).
const CACHE_CAPACITY: usize = 16_384;

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist.
    #[error("NXDOMAIN")]
    NxDomain,
    /// The name exists but has no records of that type.
    #[error("NODATA")]
    NoData,
    /// Timeout, SERVFAIL, refused, network: try again later.
    #[error("{0}")]
    Temporary(String),
    /// The question itself is bad (a malformed name).
    #[error("{0}")]
    Invalid(String),
}

impl LookupError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, LookupError::Temporary(_))
    }

    /// Nothing there (NXDOMAIN or NODATA).
    pub fn is_empty_answer(&self) -> bool {
        matches!(self, LookupError::NxDomain | LookupError::NoData)
    }
}

fn classify(e: ProtoError) -> LookupError {
    match e.kind() {
        // hickory reports SERVFAIL, REFUSED & co. as "no records" too.
        ProtoErrorKind::NoRecordsFound(nr) => match nr.response_code {
            ResponseCode::NXDomain => LookupError::NxDomain,
            ResponseCode::NoError => LookupError::NoData,
            code => LookupError::Temporary(format!("server answered {code}")),
        },
        _ => LookupError::Temporary(e.to_string()),
    }
}

/// A small TTL-bound map behind a mutex: mail-auth's parsed-record cache.
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}

/// mail-auth's lookup parameters with our caches.
pub type CachedParameters<'a, P> = Parameters<
    'a,
    P,
    TtlCache<String, Txt>,
    TtlCache<String, Arc<Vec<MX>>>,
    TtlCache<String, Arc<Vec<Ipv4Addr>>>,
    TtlCache<String, Arc<Vec<Ipv6Addr>>>,
    TtlCache<IpAddr, Arc<Vec<String>>>,
>;

pub struct Resolver {
    auth: MessageAuthenticator,
    txt: TtlCache<String, Txt>,
    mx: TtlCache<String, Arc<Vec<MX>>>,
    ipv4: TtlCache<String, Arc<Vec<Ipv4Addr>>>,
    ipv6: TtlCache<String, Arc<Vec<Ipv6Addr>>>,
    ptr: TtlCache<IpAddr, Arc<Vec<String>>>,
}

/// "ip:port" or a bare ip (port 53).
pub fn parse_nameserver(ns: &str) -> Result<SocketAddr, String> {
    match ns.parse::<SocketAddr>() {
        Ok(sa) => Ok(sa),
        Err(_) => ns
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, 53))
            .map_err(|_| format!("bad nameserver {ns:?}")),
    }
}

impl Resolver {
    /// Build the resolver `[dns]` describes. Only reads /etc/resolv.conf
    /// when no nameservers are configured; opens no socket yet.
    pub fn new(cfg: &DnsConfig) -> Result<Resolver, String> {
        let mut builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
        } else {
            let mut group = NameServerConfigGroup::with_capacity(cfg.nameservers.len() * 2);
            for ns in &cfg.nameservers {
                let sa = parse_nameserver(ns)?;
                group.push(NameServerConfig::new(sa, ProtocolConfig::Udp));
                group.push(NameServerConfig::new(sa, ProtocolConfig::Tcp));
            }
            let config = ResolverConfig::from_parts(None, vec![], group);
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = cfg.timeout.unwrap_or(DEFAULT_TIMEOUT);
        opts.attempts = 2;
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.cache_size = 32_768;
        // EDNS0: SPF and DKIM TXT answers often exceed 512 octets; without
        // it every such answer costs a truncated UDP reply and a TCP retry
        // (and a server that drops oversized UDP replies, a timeout).
        opts.edns0 = true;
        Ok(Resolver {
            auth: MessageAuthenticator(builder.build()),
            txt: TtlCache::new(CACHE_CAPACITY),
            mx: TtlCache::new(CACHE_CAPACITY),
            ipv4: TtlCache::new(CACHE_CAPACITY),
            ipv6: TtlCache::new(CACHE_CAPACITY),
            ptr: TtlCache::new(CACHE_CAPACITY),
        })
    }

    /// mail-auth's authenticator over this resolver.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    /// mail-auth parameters that use this resolver's caches.
    pub fn params<P>(&self, params: P) -> CachedParameters<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }

    pub(crate) fn txt_cache(&self) -> &TtlCache<String, Txt> {
        &self.txt
    }

    /// Records of one type, as hickory returns them.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, LookupError> {
        let name = fqdn(name)?;
        self.lookup_name(name, rtype).await
    }

    /// Records of one type for a name of any octets (RFC 2181 §11): SPF
    /// target names may hold ":", "/", "%" or spaces (RFC 7208 §7.1), which
    /// hickory's text parser refuses.
    pub async fn lookup_octets(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Vec<RData>, LookupError> {
        let name = match fqdn(name) {
            Ok(n) => n,
            Err(e) => {
                let mut n =
                    Name::from_labels(name.trim_end_matches('.').split('.').map(str::as_bytes))
                        .map_err(|_| e)?;
                n.set_fqdn(true);
                n
            }
        };
        self.lookup_name(name, rtype).await
    }

    async fn lookup_name(&self, name: Name, rtype: RecordType) -> Result<Vec<RData>, LookupError> {
        let started = Instant::now();
        let res = self.lookup_records(name, rtype).await;
        let ok = res.as_ref().err().is_none_or(|e| !e.is_temporary());
        crate::metrics::dns_query(rtype.into(), started.elapsed(), ok);
        res
    }

    async fn lookup_records(
        &self,
        name: Name,
        rtype: RecordType,
    ) -> Result<Vec<RData>, LookupError> {
        match self.auth.resolver().lookup(name, rtype).await {
            Ok(l) => {
                let v: Vec<RData> = l
                    .record_iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data().clone())
                    .collect();
                if v.is_empty() {
                    Err(LookupError::NoData)
                } else {
                    Ok(v)
                }
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Records in presentation form (`dns.query`): MX as "preference
    /// exchange", TXT strings joined, names without the final dot.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<Vec<String>, LookupError> {
        let rtype = RecordType::from_str(&rtype.to_ascii_uppercase())
            .map_err(|_| LookupError::Invalid(format!("unknown record type {rtype:?}")))?;
        let name = match (rtype, name.parse::<IpAddr>()) {
            (RecordType::PTR, Ok(ip)) => Name::from(ip),
            _ => fqdn(name)?,
        };
        Ok(self
            .lookup_name(name, rtype)
            .await?
            .iter()
            .map(format_rdata)
            .collect())
    }

    /// A and AAAA addresses of `name` (A first).
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let (a, aaaa) = tokio::join!(
            self.lookup(name, RecordType::A),
            self.lookup(name, RecordType::AAAA)
        );
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for r in [a, aaaa] {
            match r {
                Ok(v) => out.extend(v.iter().filter_map(|d| match d {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => errs.push(e),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        Err(pick_error(errs))
    }

    /// IPv4 answers of `name` (DNSBL style).
    pub async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, LookupError> {
        Ok(self
            .lookup(name, RecordType::A)
            .await?
            .iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// TXT strings of `name`, each record's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        Ok(self
            .lookup(name, RecordType::TXT)
            .await?
            .iter()
            .map(format_rdata)
            .collect())
    }

    /// MX records sorted by preference: (preference, exchange without the dot).
    pub async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, LookupError> {
        let mut v: Vec<(u16, String)> = self
            .lookup(domain, RecordType::MX)
            .await?
            .iter()
            .filter_map(|d| match d {
                RData::MX(mx) => Some((mx.preference(), strip_dot(mx.exchange().to_string()))),
                _ => None,
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// PTR names of `ip`.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, LookupError> {
        Ok(self
            .lookup_name(Name::from(ip), RecordType::PTR)
            .await?
            .iter()
            .map(format_rdata)
            .collect())
    }

    /// Forward-confirmed reverse DNS: the first PTR name of `ip` whose
    /// A/AAAA records include `ip` (at most 10 names are tried).
    pub async fn fcrdns(&self, ip: IpAddr) -> Result<Option<String>, LookupError> {
        let ip = unmap(ip);
        let names = match self.ptr(ip).await {
            Ok(n) => n,
            Err(e) if e.is_empty_answer() => return Ok(None),
            Err(e) => return Err(e),
        };
        let rtype = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let mut temp = None;
        for name in names.iter().take(10) {
            match self.lookup(name, rtype).await {
                Ok(addrs) => {
                    let hit = addrs.iter().any(|d| match d {
                        RData::A(a) => IpAddr::V4(a.0) == ip,
                        RData::AAAA(a) => IpAddr::V6(a.0) == ip,
                        _ => false,
                    });
                    if hit {
                        return Ok(Some(name.clone()));
                    }
                }
                Err(e) if e.is_temporary() => temp = Some(e),
                Err(_) => {}
            }
        }
        match temp {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// The most telling of several errors: temporary beats NODATA beats NXDOMAIN.
pub(crate) fn pick_error(errs: Vec<LookupError>) -> LookupError {
    let mut best = LookupError::NxDomain;
    for e in errs {
        match (&best, &e) {
            (LookupError::Temporary(_), _) => {}
            (_, LookupError::Temporary(_)) | (_, LookupError::Invalid(_)) => best = e,
            (LookupError::NxDomain, LookupError::NoData) => best = e,
            _ => {}
        }
    }
    best
}

/// "::ffff:1.2.3.4" → 1.2.3.4.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The reversed form DNSBLs and PTR use, without a zone: "4.3.2.1" for
/// 1.2.3.4, 32 nibbles for IPv6 ("b.a.9.8.….8.b.d.0.1.0.0.2").
pub fn reverse_labels(ip: IpAddr) -> String {
    match unmap(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
                }
            }
            s
        }
    }
}

/// A fully qualified name (a trailing dot added); errors on bad names.
pub fn fqdn(name: &str) -> Result<Name, LookupError> {
    let mut n = Name::from_str(name)
        .map_err(|e| LookupError::Invalid(format!("bad name {name:?}: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

fn strip_dot(s: String) -> String {
    match s.strip_suffix('.') {
        Some(x) if !x.is_empty() => x.to_string(),
        _ => s,
    }
}

pub fn format_rdata(r: &RData) -> String {
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

/// A resolver built on first use from `[dns]`: what the policy engine (per
/// config epoch) and the delivery code (MX look-ups) each hold one of.
pub struct Dns {
    cfg: DnsConfig,
    resolver: std::sync::OnceLock<Result<Arc<Resolver>, String>>,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Dns {
        Dns {
            cfg: cfg.clone(),
            resolver: std::sync::OnceLock::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_v4_v6() {
        assert_eq!(reverse_labels("192.0.2.7".parse().unwrap()), "7.2.0.192");
        assert_eq!(
            reverse_labels("::ffff:192.0.2.7".parse().unwrap()),
            "7.2.0.192"
        );
        assert_eq!(
            reverse_labels("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn ttl_cache_expires() {
        let c: TtlCache<String, u32> = TtlCache::new(2);
        c.insert("a".into(), 1, Instant::now() + Duration::from_secs(60));
        c.insert("b".into(), 2, Instant::now() - Duration::from_secs(1));
        assert_eq!(c.get("a"), Some(1));
        assert_eq!(c.get("b"), None);
        c.insert("c".into(), 3, Instant::now() + Duration::from_secs(60));
        c.insert("d".into(), 4, Instant::now() + Duration::from_secs(60));
        assert!(c.len() <= 2);
    }
}
