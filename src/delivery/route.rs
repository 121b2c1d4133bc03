//! Where a message goes next: the transport's static hosts (in order, for
//! failover) or the recipient domain's MX hosts by preference (RFC 5321 §5),
//! the domain itself when it has no MX (implicit MX), and a permanent
//! failure for a null MX (RFC 7505).

use std::net::{IpAddr, SocketAddr};

use crate::config::{split_host_port, TransportConfig};
use crate::proto::reply::SmtpReply;
use crate::scan::dns::Dns;
use crate::scan::dns::LookupError;

#[derive(Debug)]
pub enum RouteError {
    Permanent(SmtpReply),
    Temporary(String),
}

async fn addresses(dns: &Dns, host: &str, port: u16) -> Result<Vec<SocketAddr>, RouteError> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolver = dns.resolver().map_err(RouteError::Temporary)?;
    match resolver.addresses(host).await {
        Ok(l) => Ok(l.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        Err(e) if e.is_empty_answer() => Ok(Vec::new()),
        Err(e) => Err(RouteError::Temporary(format!("resolving {host}: {e}"))),
    }
}

/// Next hops (name, address) in the order to try them.
pub async fn next_hops(
    dns: &Dns,
    t: &TransportConfig,
    domain: &str,
) -> Result<Vec<(String, SocketAddr)>, RouteError> {
    if let Some(hosts) = &t.host {
        let mut out = Vec::new();
        for h in hosts.hosts() {
            let (name, port) = split_host_port(&h).ok_or_else(|| {
                RouteError::Permanent(SmtpReply::with(550, "5.3.5", format!("bad next hop {h:?}")))
            })?;
            for a in addresses(dns, &name, port).await? {
                out.push((name.clone(), a));
            }
        }
        if out.is_empty() {
            return Err(RouteError::Temporary(
                "static next hops do not resolve".into(),
            ));
        }
        return Ok(out);
    }
    if domain.is_empty() {
        return Err(RouteError::Permanent(SmtpReply::with(
            550,
            "5.1.2",
            "recipient has no domain",
        )));
    }
    // Address literals route to themselves.
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = lit.trim_start_matches("IPv6:").trim_start_matches("ipv6:");
        return match ip.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![(domain.to_string(), SocketAddr::new(ip, t.port))]),
            Err(_) => Err(RouteError::Permanent(SmtpReply::with(
                550,
                "5.1.2",
                "bad address literal",
            ))),
        };
    }
    let resolver = dns.resolver().map_err(RouteError::Temporary)?;
    let mut mx: Vec<(u16, String)> = match resolver.mx(domain.trim_end_matches('.')).await {
        Ok(v) => v,
        Err(LookupError::NxDomain) => {
            return Err(RouteError::Permanent(SmtpReply::with(
                550,
                "5.1.2",
                format!("domain {domain} does not exist"),
            )))
        }
        Err(LookupError::NoData) => Vec::new(),
        Err(e) => {
            return Err(RouteError::Temporary(format!(
                "MX lookup for {domain}: {e}"
            )))
        }
    };
    // RFC 7505: a single "0 ." MX means the domain accepts no mail.
    if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) {
        return Err(RouteError::Permanent(SmtpReply::with(
            556,
            "5.1.10",
            format!("domain {domain} does not accept mail (null MX)"),
        )));
    }
    mx.retain(|(_, h)| h != "." && !h.is_empty());
    if mx.is_empty() {
        // Implicit MX: the domain's own address records.
        mx.push((0, domain.to_string()));
    }
    mx.sort_by_key(|(p, _)| *p);
    let mut out = Vec::new();
    let mut last_err = None;
    for (_, host) in mx {
        let name = host.trim_end_matches('.').to_string();
        match addresses(dns, &name, t.port).await {
            Ok(a) => out.extend(a.into_iter().map(|a| (name.clone(), a))),
            Err(RouteError::Temporary(e)) => last_err = Some(e),
            Err(p) => return Err(p),
        }
    }
    if out.is_empty() {
        return Err(RouteError::Temporary(last_err.unwrap_or_else(|| {
            format!("no address for the mail exchangers of {domain}")
        })));
    }
    Ok(out)
}
