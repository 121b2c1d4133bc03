//! What the language knows: events (and the hook each maps to), variables
//! (where each is known and whether a policy may set it) and predefined
//! methods. Built from the reference tables; where the published tables are
//! missing (onConnect, onEhlo, onMailFrom, onDeliverySuccess) the variables
//! follow the pattern of the neighbouring events.

use crate::policy::Hook;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    Connect,
    Ehlo,
    MailFrom,
    RcptTo,
    HeadersReceived,
    BodyChunk,
    DataReceived,
    Processing,
    Relay,
    DeliverySuccess,
    DeliveryFailure,
    TemporaryDeliveryFailure,
}

impl Event {
    /// In the order they run; within one hook, this is the order too.
    pub const ALL: [Event; 12] = [
        Event::Connect,
        Event::Ehlo,
        Event::MailFrom,
        Event::RcptTo,
        Event::HeadersReceived,
        Event::BodyChunk,
        Event::DataReceived,
        Event::Processing,
        Event::Relay,
        Event::DeliverySuccess,
        Event::DeliveryFailure,
        Event::TemporaryDeliveryFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Connect => "onConnect",
            Event::Ehlo => "onEhlo",
            Event::MailFrom => "onMailFrom",
            Event::RcptTo => "onRcptTo",
            Event::HeadersReceived => "onHeadersReceived",
            Event::BodyChunk => "onBodyChunk",
            Event::DataReceived => "onDataReceived",
            Event::Processing => "onProcessing",
            Event::Relay => "onRelay",
            Event::DeliverySuccess => "onDeliverySuccess",
            Event::DeliveryFailure => "onDeliveryFailure",
            Event::TemporaryDeliveryFailure => "onTemporaryDeliveryFailure",
        }
    }

    pub fn from_name(s: &str) -> Option<Event> {
        Self::ALL
            .iter()
            .copied()
            .find(|e| e.name().eq_ignore_ascii_case(s))
    }

    /// The Sluice hook the event runs in. onBodyChunk runs once, at end of
    /// data, over the whole body (Sluice has no per-chunk hook).
    pub fn hook(self) -> Hook {
        match self {
            Event::Connect => Hook::Connect,
            Event::Ehlo => Hook::Helo,
            Event::MailFrom => Hook::MailFrom,
            Event::RcptTo => Hook::RcptTo,
            Event::HeadersReceived => Hook::Headers,
            Event::BodyChunk | Event::DataReceived | Event::Processing => Hook::Eod,
            Event::Relay => Hook::PreDelivery,
            Event::DeliverySuccess | Event::DeliveryFailure | Event::TemporaryDeliveryFailure => {
                Hook::PostDelivery
            }
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn incoming(self) -> bool {
        (self as u16) <= (Event::Processing as u16)
    }
}

const fn mask(from: Event, to: Event) -> u16 {
    let mut m = 0u16;
    let mut i = from as u16;
    while i <= to as u16 {
        m |= 1 << i;
        i += 1;
    }
    m
}

const IN: u16 = mask(Event::Connect, Event::Processing);
const FROM_EHLO: u16 = mask(Event::Ehlo, Event::Processing);
const FROM_MAIL: u16 = mask(Event::MailFrom, Event::Processing);
const FROM_HDRS: u16 = mask(Event::HeadersReceived, Event::Processing);
const MSG: u16 = FROM_HDRS | (1 << Event::RcptTo as u16);
const RCPT: u16 = 1 << Event::RcptTo as u16;
const UNTIL_RCPT: u16 = mask(Event::Connect, Event::RcptTo);
const AFTER_RCPT: u16 = FROM_HDRS;
const CONNECT: u16 = 1 << Event::Connect as u16;
const RELAY: u16 = 1 << Event::Relay as u16;
const SUCCESS: u16 = 1 << Event::DeliverySuccess as u16;
const FAILURE: u16 = 1 << Event::DeliveryFailure as u16;
const TEMP: u16 = 1 << Event::TemporaryDeliveryFailure as u16;
const FAILURES: u16 = FAILURE | TEMP;
const DELIVERY: u16 = SUCCESS | FAILURES;
const OUT: u16 = RELAY | DELIVERY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Input only: `set` is a compile error.
    Ro,
    /// May be set (output or input/output).
    Rw,
}

/// One row: the variable (canonical spelling), the events where it has this
/// access.
pub struct VarRow {
    pub name: &'static str,
    pub events: u16,
    pub access: Access,
}

const fn ro(name: &'static str, events: u16) -> VarRow {
    VarRow {
        name,
        events,
        access: Access::Ro,
    }
}
const fn rw(name: &'static str, events: u16) -> VarRow {
    VarRow {
        name,
        events,
        access: Access::Rw,
    }
}

/// Every predefined variable. A name may have several rows (different
/// access in different events).
pub static VARS: &[VarRow] = &[
    // The connection.
    ro("smtpPort", IN),
    ro("smtpIp", IN),
    ro("remoteSmtpPort", IN),
    ro("remoteSmtpIp", IN),
    ro("isSSLConnection", IN),
    ro("ehloHost", FROM_EHLO),
    ro("isESMTP", FROM_EHLO),
    ro("authUser", FROM_EHLO),
    ro("mailCount", IN),
    ro("totalMailSize", IN),
    rw("smtpGreeting", CONNECT),
    // Limits, switches, relay control.
    rw("remoteDelivery", UNTIL_RCPT),
    ro("remoteDelivery", AFTER_RCPT),
    rw("localDelivery", UNTIL_RCPT),
    ro("localDelivery", AFTER_RCPT),
    rw("maxRcptCount", UNTIL_RCPT | RELAY),
    ro("maxRcptCount", AFTER_RCPT),
    rw("maxDataSize", IN),
    rw("maxReceivedHeaders", IN),
    rw("allowStartTLS", IN | RELAY),
    rw("allowPipelining", IN | RELAY),
    rw("allow8BitMime", IN | RELAY),
    rw("allowBinaryData", IN | RELAY),
    rw("allowDSN", IN),
    ro("RFCBreak", IN),
    // Results of checks (inputs and outputs of the check methods).
    rw("DNSBLServer", IN),
    rw("DNSBLResult", IN),
    rw("DNSBLExplanation", IN),
    rw("SPFResult", IN),
    rw("SPFExplanation", IN),
    rw("ReverseDNSResult", IN),
    ro("SenderMXCheckResult", IN),
    rw("AllowedCountries", IN),
    rw("BannedCountries", IN),
    rw("ActionGeoIPBan", IN),
    ro("GeoIPResult", IN),
    ro("IsGeoIPBanned", IN),
    // Filters.
    rw("filterName", IN),
    rw("filterType", IN),
    rw("filterAddress", IN),
    ro("addFilterResult", IN),
    ro("addFilterExplanation", IN),
    rw("filterNamePattern", IN),
    // The envelope.
    ro("mailFrom", FROM_MAIL | RELAY | SUCCESS | FAILURE),
    rw("mailFrom", TEMP),
    ro("mailFromLocalPart", FROM_MAIL | OUT),
    ro("mailFromDomain", FROM_MAIL | OUT),
    ro("mailFromAuthUser", FROM_MAIL | OUT),
    ro("mailFromSize", FROM_MAIL | DELIVERY),
    ro("rcptCount", FROM_MAIL | RELAY),
    rw("delayDelivery", FROM_MAIL),
    rw("currentRcpt", RCPT),
    rw("currentRcptFolder", RCPT),
    ro("currentRcptLocalPart", RCPT),
    rw("currentRcptRelayHost", RCPT),
    ro("isRcptDomainLocal", RCPT),
    ro("isRcptLocal", RCPT),
    rw("overquotaAction", RCPT),
    ro("isOverquota", RCPT),
    // Headers.
    rw("HeaderName", MSG),
    rw("HeaderValue", MSG),
    ro("existsHeader", MSG),
    // Actions.
    rw("smtpAction", IN),
    rw("smtpExplanation", IN),
    // onRelay.
    rw("localInterface", RELAY),
    rw("remoteSmtpHost", RELAY),
    rw("remoteSmtpPort", RELAY),
    rw("remoteSmtpIp", RELAY),
    rw("authUser", RELAY),
    rw("authPasswd", RELAY),
    rw("atuhPasswd", RELAY),
    ro("isFromLocalDomain", RELAY),
    ro("mailSize", RELAY),
    rw("maxConnections", RELAY),
    rw("smtpConnectTimeout", RELAY),
    rw("chunkSize", RELAY),
    rw("requestAuth", RELAY),
    rw("strict7BitMime", RELAY),
    rw("sslEnabled", RELAY),
    rw("allowedSSLVersions", RELAY),
    rw("plainConnAuthTypes", RELAY),
    rw("secureConnAuthTypes", RELAY),
    // Delivery results.
    rw("sendNDR", FAILURES),
    rw("ndrAttachSource", FAILURES),
    rw("ndrSubject", FAILURES),
    rw("ndrSender", FAILURES),
    rw("ndrMessage", FAILURES),
    rw("ndrRcptMessage", FAILURES),
    rw("ndrMessageFooter", FAILURES),
    ro("ndrRetryCount", FAILURES),
    ro("ndrRemainingRetryCount", TEMP),
    ro("ndrRescheduleDate", TEMP),
    ro("ndrRcptAddress", FAILURES),
    ro("ndrRcptFailInfo", FAILURES),
    rw("dsnSender", SUCCESS),
    rw("dsnSubject", SUCCESS),
    rw("dsnMessage", SUCCESS),
    rw("dsnRcptMessage", SUCCESS),
    rw("dsnMessageFooter", SUCCESS),
    ro("dsnRcptAddress", SUCCESS),
    ro("dsnRcptStatus", SUCCESS),
];

/// `Some(canonical name)` when `name` is a predefined variable.
pub fn canonical(name: &str) -> Option<&'static str> {
    VARS.iter()
        .find(|r| r.name.eq_ignore_ascii_case(name))
        .map(|r| r.name)
}

/// Access of a predefined variable in `event`; `None` when it is not known
/// there (reads as "").
pub fn access(name: &str, event: Event) -> Option<Access> {
    VARS.iter()
        .find(|r| r.name.eq_ignore_ascii_case(name) && r.events & event.bit() != 0)
        .map(|r| r.access)
}

/// Is the variable read-only in every event it is known in?
pub fn always_ro(name: &str) -> bool {
    let mut any = false;
    for r in VARS.iter().filter(|r| r.name.eq_ignore_ascii_case(name)) {
        any = true;
        if r.access == Access::Rw {
            return false;
        }
    }
    any
}

/// Predefined methods: canonical name and the events where they do something.
pub static METHODS: &[(&str, u16)] = &[
    ("checkSPF", IN),
    ("checkReverseDNS", IN),
    ("checkDNSBL", IN),
    ("checkSenderMX", FROM_MAIL),
    ("checkGeoIp", IN),
    ("addHeader", MSG),
    ("addIfNotExistsHeader", MSG),
    ("removeFirstHeader", MSG),
    ("removeHeader", MSG),
    ("removeHeaderValue", MSG),
    ("modifyHeader", MSG),
    ("modifyIfExistsHeader", MSG),
    ("readHeader", FROM_HDRS),
    ("checkExistsHeader", FROM_HDRS),
    ("addRcpt", RCPT | FROM_HDRS),
    ("discardRcpt", RCPT),
    ("addFilter", IN),
    ("executeFilters", IN),
];

pub fn method(name: &str) -> Option<(&'static str, u16)> {
    METHODS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .copied()
}

pub fn method_works_in(mask: u16, event: Event) -> bool {
    mask & event.bit() != 0
}

/// Calls and sets whose effect shows only when the message is queued: a
/// policy using them in an incoming event also gets an eod hook.
pub const EOD_METHODS: &[&str] = &[
    "addheader",
    "addifnotexistsheader",
    "removefirstheader",
    "removeheader",
    "removeheadervalue",
    "modifyheader",
    "modifyifexistsheader",
    "addrcpt",
    // The eod hook leaves a discarded recipient out; without it the built-in
    // eod would queue every recipient the session took, discarded or not.
    "discardrcpt",
    // A filter may answer "discard" for the recipient (same reason).
    "executefilters",
];
pub const EOD_VARS: &[&str] = &[
    "currentrcpt",
    "currentrcptfolder",
    "currentrcptrelayhost",
    // Carried to the queue entry by mail:queue({overquota = …}).
    "overquotaaction",
    "delaydelivery",
];
