//! Session settings a policy narrows: the limits and switches of an Axigen
//! policy (`maxRcptCount`, `maxDataSize`, `maxReceivedHeaders`,
//! `allowStartTLS` & co., `localDelivery` / `remoteDelivery`).
//!
//! The compiled policy's runtime keeps them in `context.axigen.session` (the
//! connection's context, which every hook hands to the next). The session
//! reads them from there at every stage and enforces them itself, so a
//! setting takes effect whichever event set it and whether or not the policy
//! has a later event that would look at it. A policy only ever narrows the
//! server: a limit above `[limits]` does not raise it, a switch can only turn
//! an extension off, and a delivery rule can only refuse recipients the
//! built-in relay rule would take.
//!
//! It must not decide anything else: the relay rule is [`super::relay`].

use super::Session;

/// Where in the context a policy's session settings live.
const SETTINGS: &str = "/axigen/session";

/// An ESMTP extension a policy may switch off for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extension {
    Pipelining,
    EightBitMime,
    Chunking,
    Dsn,
    StartTls,
}

impl Extension {
    fn key(self) -> &'static str {
        match self {
            Extension::Pipelining => "allowpipelining",
            Extension::EightBitMime => "allow8bitmime",
            Extension::Chunking => "allowbinarydata",
            Extension::Dsn => "allowdsn",
            Extension::StartTls => "allowstarttls",
        }
    }
}

/// Axigen's `localDelivery` / `remoteDelivery`: which clients may send to
/// local / remote recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryRule {
    All,
    Auth,
    None,
}

impl DeliveryRule {
    fn parse(v: &str) -> Option<DeliveryRule> {
        match v.trim().to_ascii_lowercase().as_str() {
            "all" | "yes" => Some(DeliveryRule::All),
            "auth" => Some(DeliveryRule::Auth),
            "none" | "no" => Some(DeliveryRule::None),
            _ => None,
        }
    }
}

impl Session {
    /// A setting the policy gave this session, as written.
    fn policy_setting(&self, key: &str) -> Option<&str> {
        self.context
            .pointer(SETTINGS)?
            .get(key)?
            .as_str()
            .map(str::trim)
    }

    /// A numeric setting; `0`, a negative or a non-number set no limit (an
    /// unreadable value must not refuse every client).
    fn policy_limit(&self, key: &str) -> Option<u64> {
        self.policy_setting(key)?
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
    }

    /// Has the policy switched this extension off for the session?
    pub(super) fn extension_allowed(&self, ext: Extension) -> bool {
        !self
            .policy_setting(ext.key())
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
    }

    /// Recipients per transaction: `[limits] recipients`, or less.
    pub(super) fn max_recipients(&self) -> usize {
        let cfg = self.ctx.config.limits.recipients;
        self.policy_limit("maxrcptcount")
            .map_or(cfg, |n| cfg.min(usize::try_from(n).unwrap_or(usize::MAX)))
    }

    /// Message size in bytes: `[limits] message_size`, or less
    /// (`maxDataSize` is in KB).
    pub(super) fn max_message_size(&self) -> u64 {
        let cfg = self.ctx.config.limits.message_size;
        self.policy_limit("maxdatasize")
            .map_or(cfg, |kb| cfg.min(kb.saturating_mul(1024)))
    }

    /// Received headers before the message is a loop: `[limits]
    /// received_headers`, or less.
    pub(super) fn max_received_headers(&self) -> usize {
        let cfg = self.ctx.config.limits.received_headers;
        self.policy_limit("maxreceivedheaders")
            .map_or(cfg, |n| cfg.min(usize::try_from(n).unwrap_or(usize::MAX)))
    }

    /// Does the policy's `localDelivery` / `remoteDelivery` refuse this
    /// recipient domain for this client? A local domain is one of
    /// `relay.domains`. Unset or unknown values refuse nothing.
    pub(super) fn delivery_rule_refuses(&self, domain: &str) -> Option<&'static str> {
        // No rule set (every session without an Axigen policy): nothing to
        // look up on this RCPT.
        if self.policy_setting("localdelivery").is_none()
            && self.policy_setting("remotedelivery").is_none()
        {
            return None;
        }
        let local = self.ctx.config.relay.is_local_domain(domain);
        let key = if local {
            "localdelivery"
        } else {
            "remotedelivery"
        };
        let rule = DeliveryRule::parse(self.policy_setting(key)?)?;
        let refused = match rule {
            DeliveryRule::All => false,
            DeliveryRule::Auth => self.info.auth.is_none(),
            DeliveryRule::None => true,
        };
        refused.then_some(if local {
            "Local delivery is not allowed"
        } else {
            "Relaying denied"
        })
    }
}
