//! Reputation lookups: DNSBL / DNSWL (by IP, IPv6 reversed by nibbles),
//! RHSBL (by domain), and the sender-domain checks `sender_mx` (has MX or
//! A/AAAA, RFC 7505 null MX) — all through the shared [`Resolver`].
//!
//! Zones are looked up in parallel. A zone lists the query when it answers
//! with an A record in 127.0.0.0/8; the TXT record is then fetched for the
//! reason. Answers in 127.255.255.0/24 are the lists' "you may not query
//! us" codes (Spamhaus & co.) and are reported as errors, not listings, as
//! are answers outside 127/8.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::dns::{reverse_labels, LookupError, Resolver};

/// At most this many zones per call.
pub const MAX_ZONES: usize = 32;

/// A zone that listed the query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub a: Vec<Ipv4Addr>,
    pub txt: Vec<String>,
}

/// The result of one check over several zones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZoneResults {
    /// zone → its answers, for the zones that listed the query.
    pub listed: BTreeMap<String, Listing>,
    /// zone → why it could not be asked (timeout, SERVFAIL, refusal code).
    pub errors: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsblError {
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("{0:?} is not a domain")]
    BadDomain(String),
    #[error("{0:?} is not a DNS zone")]
    BadZone(String),
    #[error("too many zones ({0}, at most {MAX_ZONES})")]
    TooManyZones(usize),
}

fn clean_zone(z: &str) -> Result<String, DnsblError> {
    let z = z.trim().trim_end_matches('.').to_ascii_lowercase();
    if z.is_empty() || !valid_domain(&z) {
        return Err(DnsblError::BadZone(z));
    }
    Ok(z)
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A domain or an address's domain, lowercase, without the final dot.
pub fn clean_domain(d: &str) -> Result<String, DnsblError> {
    let d = d.rsplit_once('@').map(|(_, d)| d).unwrap_or(d);
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || !valid_domain(&d) {
        return Err(DnsblError::BadDomain(d));
    }
    Ok(d)
}

async fn ask(res: Arc<Resolver>, query: String) -> Result<Option<Listing>, String> {
    let a = match res.a(&query).await {
        Ok(a) => a,
        Err(e) if e.is_empty_answer() => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(code) = a.iter().find(|ip| {
        let o = ip.octets();
        o[0] != 127 || (o[1] == 255 && o[2] == 255)
    }) {
        return Err(format!(
            "the list refused the query or answered oddly ({code})"
        ));
    }
    let txt = res.txt(&query).await.unwrap_or_default();
    Ok(Some(Listing { a, txt }))
}

async fn check(
    res: &Arc<Resolver>,
    prefix: &str,
    zones: &[String],
) -> Result<ZoneResults, DnsblError> {
    if zones.len() > MAX_ZONES {
        return Err(DnsblError::TooManyZones(zones.len()));
    }
    let zones: Vec<String> = zones
        .iter()
        .map(|z| clean_zone(z))
        .collect::<Result<_, _>>()?;
    let mut set = JoinSet::new();
    for zone in zones {
        let res = res.clone();
        let query = format!("{prefix}.{zone}");
        set.spawn(async move { (zone, ask(res, query).await) });
    }
    let mut out = ZoneResults::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((zone, Ok(Some(l)))) => {
                out.listed.insert(zone, l);
            }
            Ok((_, Ok(None))) => {}
            Ok((zone, Err(e))) => {
                out.errors.insert(zone, e);
            }
            Err(e) => tracing::warn!("dnsbl lookup task failed: {e}"),
        }
    }
    Ok(out)
}

/// DNSBL (and DNSWL): is `ip` listed in `zones`?
pub async fn check_ip(
    res: &Arc<Resolver>,
    ip: &str,
    zones: &[String],
) -> Result<ZoneResults, DnsblError> {
    let addr: IpAddr = ip
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| DnsblError::BadIp(ip.to_string()))?;
    check(res, &reverse_labels(addr), zones).await
}

/// RHSBL: is `domain` (or an address's domain) listed in `zones`?
pub async fn check_domain(
    res: &Arc<Resolver>,
    domain: &str,
    zones: &[String],
) -> Result<ZoneResults, DnsblError> {
    let d = clean_domain(domain)?;
    check(res, &d, zones).await
}

/// What `sender_mx` found for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderMx {
    /// (preference, exchange) sorted by preference.
    pub mx: Vec<(u16, String)>,
    /// The domain publishes a null MX (RFC 7505: "0 .") — accepts no mail.
    pub null_mx: bool,
    /// No MX, but A/AAAA records (the implicit MX of RFC 5321 §5.1).
    pub implicit: bool,
    /// The domain can receive mail (bounces to it can be delivered).
    pub ok: bool,
}

/// Can `domain` receive mail? `Err` only for temporary failures and bad names.
pub async fn sender_mx(res: &Resolver, domain: &str) -> Result<SenderMx, LookupError> {
    let d = clean_domain(domain).map_err(|e| LookupError::Invalid(e.to_string()))?;
    let mut out = SenderMx::default();
    match res.mx(&d).await {
        Ok(mx) => {
            out.null_mx = mx.len() == 1 && (mx[0].1.is_empty() || mx[0].1 == ".");
            out.ok = !out.null_mx;
            out.mx = mx;
            return Ok(out);
        }
        Err(LookupError::NxDomain) => return Ok(out),
        Err(LookupError::NoData) => {}
        Err(e) => return Err(e),
    }
    match res.addresses(&d).await {
        Ok(_) => {
            out.implicit = true;
            out.ok = true;
            Ok(out)
        }
        Err(e) if e.is_empty_answer() => Ok(out),
        Err(e) => Err(e),
    }
}
