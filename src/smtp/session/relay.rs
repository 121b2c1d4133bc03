//! The built-in relay rule — a property of the server, not of the scripts.
//!
//! A recipient is accepted for relaying when its domain is one of
//! `relay.domains` (a leading dot: any subdomain), or the client is in
//! `relay.trusted_networks`, or the session is authenticated. Only an rcptto
//! script's explicit `Accept()` gets past it; `Pass()`, falling off the end,
//! a script that decides nothing and any Axigen event that sets no action
//! leave it in force. The same rule applies to a recipient that enters
//! elsewhere: `mail:queue()` in eod (or Axigen `addRcpt`) for an address no
//! RCPT accepted, and RCPT lines a proxy script rewrote.

use std::net::IpAddr;

use crate::config::RelayConfig;

/// May a message for `domain` be accepted from this client?
pub fn permits(
    cfg: &RelayConfig,
    domain: &str,
    client: Option<IpAddr>,
    authenticated: bool,
) -> bool {
    cfg.is_local_domain(domain) || authenticated || client.is_some_and(|ip| trusted(cfg, ip))
}

/// Is the client in `relay.trusted_networks`?
pub fn trusted(cfg: &RelayConfig, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    cfg.trusted_networks.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(domains: &[&str], nets: &[&str]) -> RelayConfig {
        RelayConfig {
            domains: domains.iter().map(|s| s.to_string()).collect(),
            trusted_networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn local_domains_and_subdomains() {
        let c = cfg(&["bar.test", ".sub.test"], &[]);
        let ext: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(permits(&c, "bar.test", Some(ext), false));
        assert!(permits(&c, "BAR.TEST.", Some(ext), false));
        assert!(permits(&c, "a.sub.test", Some(ext), false));
        assert!(!permits(&c, "sub.test", Some(ext), false));
        assert!(!permits(&c, "xsub.test", Some(ext), false));
        assert!(!permits(&c, "elsewhere.test", Some(ext), false));
        assert!(!permits(&c, "foo.bar.test", Some(ext), false));
    }

    #[test]
    fn trusted_networks_and_authentication_relay() {
        let c = cfg(&["bar.test"], &["10.0.0.0/8", "::1/128"]);
        assert!(permits(
            &c,
            "elsewhere.test",
            Some("10.1.2.3".parse().unwrap()),
            false
        ));
        assert!(permits(
            &c,
            "elsewhere.test",
            Some("::ffff:10.1.2.3".parse().unwrap()),
            false
        ));
        assert!(permits(
            &c,
            "elsewhere.test",
            Some("::1".parse().unwrap()),
            false
        ));
        assert!(!permits(
            &c,
            "elsewhere.test",
            Some("11.1.2.3".parse().unwrap()),
            false
        ));
        assert!(permits(
            &c,
            "elsewhere.test",
            Some("11.1.2.3".parse().unwrap()),
            true
        ));
        assert!(!permits(&c, "elsewhere.test", None, false));
    }
}
