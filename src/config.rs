//! Configuration: built-in defaults ← `conf/sluice.toml` (or `-c FILE`) ←
//! `SLUICE_<SECTION>__<KEY>` environment variables, merged with figment and
//! validated once. Unknown keys and bad values are errors that name the key.
//!
//! This module owns the shape of `sluice.toml`; it must not open sockets,
//! databases or scripts — it only checks that the paths and values make sense.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Where `sluice run` looks for its config when no `-c` is given.
pub const DEFAULT_CONFIG_PATH: &str = "conf/sluice.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Figment(Box<figment::Error>),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Figment(Box::new(e))
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our name: banner, Received, EHLO when relaying.
    pub hostname: String,
    /// sled database directory (queue + history).
    pub data_dir: PathBuf,
    /// Unix socket the CLI uses to talk to a running daemon.
    pub control_socket: PathBuf,
    pub listener: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub smtp: SmtpConfig,
    pub relay: RelayConfig,
    pub scripts: ScriptsConfig,
    pub transport: BTreeMap<String, TransportConfig>,
    pub dns: DnsConfig,
    pub http: HttpConfig,
    pub queue: QueueConfig,
    pub history: HistoryConfig,
    pub dlp: DlpConfig,
    pub auth: AuthConfig,
    pub geoip: GeoipConfig,
    pub recipients: RecipientsConfig,
    pub dkim: DkimConfig,
    /// `[[milter]]`: milters asked in order at every SMTP stage.
    pub milter: Vec<MilterConfig>,
    /// `[scanners.clamd]`, `[scanners.rspamd]`: ScanClam / ScanRspamd.
    pub scanners: ScannersConfig,
    pub state: StateConfig,
}

impl Default for Config {
    fn default() -> Self {
        let mut transport = BTreeMap::new();
        transport.insert("default".to_string(), TransportConfig::default());
        Config {
            hostname: default_hostname(),
            data_dir: PathBuf::from("var"),
            control_socket: PathBuf::from("var/control.sock"),
            listener: vec![ListenerConfig::default()],
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            smtp: SmtpConfig::default(),
            relay: RelayConfig::default(),
            scripts: ScriptsConfig::default(),
            transport,
            dns: DnsConfig::default(),
            http: HttpConfig::default(),
            queue: QueueConfig::default(),
            history: HistoryConfig::default(),
            dlp: DlpConfig::default(),
            auth: AuthConfig::default(),
            geoip: GeoipConfig::default(),
            recipients: RecipientsConfig::default(),
            dkim: DkimConfig::default(),
            milter: Vec::new(),
            scanners: ScannersConfig::default(),
            state: StateConfig::default(),
        }
    }
}

fn default_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Becomes `connection.serverid`.
    pub id: String,
    pub address: String,
    pub tls: ListenerTls,
    /// Expect a HAProxy PROXY v1/v2 header before SMTP starts.
    pub proxy_protocol: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            id: "inbound".into(),
            address: "127.0.0.1:2525".into(),
            tls: ListenerTls::None,
            proxy_protocol: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificate: PathBuf::from("conf/tls/cert.pem"),
            private_key: PathBuf::from("conf/tls/key.pem"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Maximum message size in bytes (SIZE extension; 552 5.3.4 beyond).
    pub message_size: u64,
    /// Recipients per transaction (452 4.5.3 beyond).
    pub recipients: usize,
    /// Connections over all listeners (421 4.7.0 beyond).
    pub connections: usize,
    pub connections_per_ip: usize,
    /// Command line length including CRLF (RFC 5321 §4.5.3.1.4: 512).
    pub command_line_length: usize,
    /// Text line length in message data, excluding CRLF (RFC 5322: 998).
    pub data_line_length: usize,
    /// Received headers allowed before we call it a loop (554 5.4.6).
    pub received_headers: usize,
    /// Bytes of the whole header section of a message (552 5.3.4 beyond);
    /// nothing past it is kept in memory.
    pub header_size: u64,
    /// Lines of the header section, continuation lines included (554 5.6.0 beyond).
    pub header_lines: usize,
    /// Bytes of message content all sessions together may hold in memory
    /// while receiving; a message that would go past it is read to its end,
    /// not kept, and refused with 452 4.3.1 (the client retries).
    pub data_memory: u64,
    /// Bad commands before the server gives up on a client (421 4.7.0).
    pub errors: usize,
    /// Wait for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Wait for each block of message data (RFC 5321 §4.5.3.2.5/6).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Wait for the PROXY header and the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            message_size: 52_428_800,
            recipients: 100,
            connections: 10_000,
            connections_per_ip: 100,
            command_line_length: 512,
            data_line_length: 998,
            received_headers: 50,
            header_size: 1024 * 1024,
            header_lines: 10_000,
            data_memory: 512 * 1024 * 1024,
            errors: 20,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// What to do with a bare CR or LF inside message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEnding {
    /// 550 5.6.11 at end of data (the SMTP smuggling defence).
    Reject,
    /// Store it as CRLF; only `<CRLF>.<CRLF>` still ends DATA.
    Normalize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Text after `220 hostname` in the greeting.
    pub banner: String,
    pub bare_line_ending: BareLineEnding,
    /// On SIGTERM, how long transactions in flight may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Resolve and verify the client's PTR (FCrDNS) at connect.
    pub reverse_dns: bool,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            banner: "ESMTP Sluice".into(),
            bare_line_ending: BareLineEnding::Reject,
            shutdown_grace: Duration::from_secs(30),
            reverse_dns: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Recipient domains we accept mail for; ".example.org" also matches subdomains.
    pub domains: Vec<String>,
    /// Clients that may relay anywhere.
    pub trusted_networks: Vec<IpNet>,
}

impl RelayConfig {
    /// Is `domain` one of `domains` (a leading dot there: any subdomain)?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        self.domains.iter().any(|rd| {
            if let Some(suffix) = rd.strip_prefix('.') {
                d.len() > suffix.len()
                    && d.to_ascii_lowercase()
                        .ends_with(&suffix.to_ascii_lowercase())
                    && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
            } else {
                rd.eq_ignore_ascii_case(d)
            }
        })
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            domains: vec!["example.org".into()],
            trusted_networks: vec!["127.0.0.0/8".parse().expect("static CIDR")],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsConfig {
    /// Directories `require` may load modules from.
    pub lib_path: Vec<PathBuf>,
    pub connect: Option<PathBuf>,
    pub helo: Option<PathBuf>,
    pub auth: Option<PathBuf>,
    pub mailfrom: Option<PathBuf>,
    pub rcptto: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub headers: Option<PathBuf>,
    pub eod: Option<PathBuf>,
    pub disconnect: Option<PathBuf>,
    pub proxy: Option<PathBuf>,
    pub predelivery: Option<PathBuf>,
    pub postdelivery: Option<PathBuf>,
    /// Commands the proxy hook sees; empty = the ones the server does not know.
    pub proxy_commands: Vec<String>,
    /// Axigen policy files compiled to Lua at load time.
    pub axigen: Vec<PathBuf>,
    /// Lua memory limit per state, bytes.
    pub memory_limit: usize,
    /// Lua VM instructions one hook run may execute.
    pub instruction_limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Smtp,
    Lmtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportTls {
    None,
    Opportunistic,
    Required,
    Verify,
}

/// One next hop or several (tried in order for failover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HostList {
    One(String),
    Many(Vec<String>),
}

impl HostList {
    pub fn hosts(&self) -> Vec<String> {
        match self {
            HostList::One(h) => vec![h.clone()],
            HostList::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub kind: TransportKind,
    /// Static next hop(s) `host:port`; absent = deliver by MX.
    pub host: Option<HostList>,
    /// Port used for MX-resolved hosts.
    pub port: u16,
    pub tls: TransportTls,
    /// PEM bundle of CAs for `tls = "verify"`; empty = webpki roots.
    pub ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub concurrency: usize,
    pub connections_per_destination: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            kind: TransportKind::Smtp,
            // Omitted = deliver by MX (conf/sluice.toml sets a static next hop).
            host: None,
            port: 25,
            tls: TransportTls::Opportunistic,
            ca_file: None,
            connect_timeout: Duration::from_secs(30),
            concurrency: 100,
            // Postfix's default_destination_concurrency_limit: an edge MX mostly
            // has one next hop (the mailstore), and 10 left relay waiting on
            // round trips (benches/compare.sh, issue 22).
            connections_per_destination: 20,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// "ip:port" list; empty = /etc/resolv.conf.
    pub nameservers: Vec<String>,
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// e.g. "127.0.0.1:8025"; empty = off.
    pub address: String,
    /// Bearer token for /api/* and the console's password; /metrics needs none.
    pub token: String,
    /// A console session ends after this long without a request.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            address: String::new(),
            token: String::new(),
            session_timeout: Duration::from_secs(8 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Retry schedule: first delay, doubling up to `max_retry_delay`.
    #[serde(with = "humantime_serde")]
    pub min_retry_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// Give up (bounce) after this long in the queue.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Send a delay DSN (NOTIFY=DELAY) once after this long.
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
    /// Subject and text of failure reports; `{hostname}` and `{lifetime}` expand.
    pub bounce_subject: Option<String>,
    pub bounce_text: Option<String>,
    /// Delivery attempts running at once, all transports together.
    pub max_active: usize,
    /// Run the delivery scheduler (false = accept and keep only).
    pub deliver: bool,
    /// Space kept free on the data_dir filesystem (Postfix's
    /// `queue_minfree`): below it MAIL FROM gets 452 4.3.1. Bytes, or
    /// "5%", "512MiB", "1GiB". Default: 5% of the filesystem or 1 GiB,
    /// whichever is smaller.
    pub min_free: Option<MinFree>,
}

/// `[queue] min_free`: an absolute reserve or a share of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    /// Percent of the filesystem size.
    Percent(f64),
}

impl MinFree {
    /// The reserve in bytes on a filesystem of `total` bytes; `None` in
    /// the config means the default.
    pub fn reserve(this: Option<MinFree>, total: u64) -> u64 {
        match this {
            Some(MinFree::Bytes(b)) => b,
            Some(MinFree::Percent(p)) => (total as f64 * p / 100.0) as u64,
            None => (total / 20).min(1 << 30),
        }
    }

    pub fn parse(s: &str) -> Result<MinFree, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: not a percentage"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?}: percentage out of 0..100"));
            }
            return Ok(MinFree::Percent(v));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected bytes, \"5%\", \"512MiB\" or \"1GiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        n.checked_mul(mult)
            .map(MinFree::Bytes)
            .ok_or_else(|| format!("{s:?}: too large"))
    }
}

impl Serialize for MinFree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MinFree::Bytes(b) => s.serialize_u64(*b),
            MinFree::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MinFree, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(MinFree::Bytes(n)),
            Raw::S(s) => MinFree::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            min_retry_delay: Duration::from_secs(300),
            max_retry_delay: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(5 * 86400),
            delay_warning: Duration::from_secs(4 * 3600),
            bounce_subject: None,
            bounce_text: None,
            max_active: 500,
            deliver: true,
            min_free: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Records older than this are pruned.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Keep at most this many records (0 = no cap).
    pub max_records: u64,
    /// `[history.export]`: copy every record to ClickHouse.
    pub export: ExportConfig,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            retention: Duration::from_secs(30 * 86400),
            max_records: 0,
            export: ExportConfig::default(),
        }
    }
}

/// `[history.export]`: where the history is copied for fleet queries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// "" (off) or "clickhouse".
    pub kind: String,
    /// ClickHouse's HTTP interface.
    pub url: String,
    pub database: String,
    pub table: String,
    pub user: String,
    pub password: String,
    /// Rows per INSERT.
    pub batch: usize,
    /// How often to look for new records when caught up.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// One request (INSERT or query) gives up after this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            kind: String::new(),
            url: "http://127.0.0.1:8123".into(),
            database: "sluice".into(),
            table: "history".into(),
            user: "default".into(),
            password: String::new(),
            batch: 5000,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

impl ExportConfig {
    pub fn enabled(&self) -> bool {
        !self.kind.is_empty()
    }
}

/// DLP rules by name (`[dlp.rules.NAME]`); the DLP engine validates them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlpConfig {
    pub rules: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// authserv-id in Authentication-Results; empty = hostname.
    pub authserv_id: String,
    /// The built-in eod (no eod script) adds our Authentication-Results
    /// (spf, dkim, dmarc, arc) and removes every incoming one that claims
    /// our authserv-id (RFC 8601 §5).
    pub results: bool,
    /// ARC sealing keys: selector, domain, PEM key path.
    pub arc_selector: String,
    pub arc_domain: String,
    pub arc_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoipConfig {
    pub country_db: Option<PathBuf>,
    pub asn_db: Option<PathBuf>,
}

/// `[state]`: where rate limits, greylisting, `memory.*` and `cache()`
/// keep their data (see `crate::state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// "local": in this process (one node) | "redis": shared by every node.
    pub backend: StateBackend,
    /// redis:// or rediss:// (TLS), with the database number as path.
    pub redis_url: String,
    /// Redis unreachable or too slow: "open" (allow, log, count) | "tempfail" (451 4.3.0).
    pub on_error: StateOnError,
    /// Bound on one state operation (a Redis round trip).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Every key is stored under this prefix (several fleets can share a Redis).
    pub prefix: String,
    /// local backend: memory cap in bytes; least recently used keys go first.
    pub max_memory: usize,
    /// redis backend: `[limits] connections_per_ip` counts across every node.
    pub fleet_connections: bool,
    /// rediss://: PEM CA certificates to verify Redis with (a private CA);
    /// unset = the Mozilla roots.
    pub redis_ca_file: Option<std::path::PathBuf>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Local,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            on_error: StateOnError::Open,
            timeout: Duration::from_millis(500),
            prefix: "sluice:".into(),
            max_memory: 64 << 20,
            fleet_connections: true,
            redis_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateOnError {
    Open,
    Tempfail,
}

/// `[recipients]`: validation of recipients in `relay.domains` at RCPT
/// (see `crate::recipients`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientsConfig {
    /// Asked in order ("map", "callout", "ldap", "sql"); the first definite
    /// answer wins. Empty: no validation.
    pub sources: Vec<String>,
    /// The map file: `user@domain`, `@domain`, `!user@domain`, `#` comments.
    pub map: Option<PathBuf>,
    /// The transport whose next hop the callout probes.
    pub callout_transport: String,
    /// The callout's wait for each reply of the probe (banner, EHLO, MAIL,
    /// RCPT); connecting waits the transport's `connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub callout_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// A source cannot answer: defer (451 4.4.3) or accept.
    pub on_tempfail: OnTempfail,
    pub ldap: LdapSourceConfig,
    pub sql: SqlSourceConfig,
}

impl Default for RecipientsConfig {
    fn default() -> Self {
        RecipientsConfig {
            sources: Vec::new(),
            map: None,
            callout_transport: "default".into(),
            callout_timeout: Duration::from_secs(10),
            positive_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(3_600),
            on_tempfail: OnTempfail::Defer,
            ldap: LdapSourceConfig::default(),
            sql: SqlSourceConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTempfail {
    Defer,
    Accept,
}

/// `[recipients.ldap]` (source "ldap").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapSourceConfig {
    /// ldap://, ldaps://; `starttls = true` upgrades ldap://.
    pub url: String,
    pub starttls: bool,
    pub bind_dn: String,
    pub bind_password: String,
    pub base: String,
    /// `%s` = the address, escaped per RFC 4515.
    pub filter: String,
    /// An attribute holding the address to deliver to (an alias), if any.
    pub rewrite_attribute: String,
    /// PEM CA certificates for ldaps:// and StartTLS; unset: the Mozilla
    /// roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for LdapSourceConfig {
    fn default() -> Self {
        LdapSourceConfig {
            url: "ldap://127.0.0.1:389".into(),
            starttls: false,
            bind_dn: String::new(),
            bind_password: String::new(),
            base: String::new(),
            filter: "(|(mail=%s)(proxyAddresses=smtp:%s))".into(),
            rewrite_attribute: String::new(),
            ca_file: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[recipients.sql]` (source "sql", PostgreSQL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlSourceConfig {
    pub url: String,
    /// `$1` = the address; a row = exists; a first text column, when
    /// present and not empty, is the address to deliver to (an alias).
    pub query: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SqlSourceConfig {
    fn default() -> Self {
        SqlSourceConfig {
            url: "postgresql://sluice@127.0.0.1/mail".into(),
            query: "SELECT 1 FROM mailbox WHERE address = $1".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            authserv_id: String::new(),
            results: true,
            arc_selector: String::new(),
            arc_domain: String::new(),
            arc_key: None,
        }
    }
}

/// `[dkim]`: signing keys `mail:signDKIM` names by id. The files are read
/// and parsed when the policy engine loads (`crate::scan::dkim`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    /// Key id → PEM private key file (RSA PKCS#1/PKCS#8, Ed25519 PKCS#8).
    pub keys: BTreeMap<String, PathBuf>,
}

/// What happens when a milter or scanner cannot answer (down, timeout,
/// protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// 451 4.7.0 at the stage that needed the answer.
    Tempfail,
    /// Go on as if the milter were not configured.
    Accept,
    /// 550 5.7.0.
    Reject,
}

/// One `[[milter]]` (see `crate::scan::milter`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    pub id: String,
    /// "ip:port", "host:port" or "unix:/path".
    pub address: String,
    /// The wait for each reply (SMFIR_PROGRESS restarts it).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The cap on one stage, progress or not.
    #[serde(with = "humantime_serde")]
    pub overall_timeout: Duration,
    pub on_error: OnError,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            id: String::new(),
            address: String::new(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            overall_timeout: Duration::from_secs(300),
            on_error: OnError::Tempfail,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannersConfig {
    pub clamd: Option<ClamdConfig>,
    pub rspamd: Option<RspamdConfig>,
}

/// `[scanners.clamd]` (see `crate::scan::clamd`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamdConfig {
    /// "ip:port" or "unix:/path".
    pub address: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes sent to clamd at most (keep it ≤ clamd's StreamMaxLength).
    pub max_size: u64,
    /// INSTREAM chunk size.
    pub chunk_size: usize,
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: "127.0.0.1:3310".into(),
            timeout: Duration::from_secs(30),
            max_size: 26_214_400,
            chunk_size: 65_536,
        }
    }
}

/// `[scanners.rspamd]` (see `crate::scan::rspamd`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RspamdConfig {
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Sent as the `Password` header when not empty (controller workers).
    pub password: String,
}

impl Default for RspamdConfig {
    fn default() -> Self {
        RspamdConfig {
            url: "http://127.0.0.1:11333".into(),
            timeout: Duration::from_secs(30),
            password: String::new(),
        }
    }
}

/// A scanner or milter address: TCP "host:port" or "unix:/path".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanAddress {
    Tcp(String),
    Unix(PathBuf),
}

impl ScanAddress {
    pub fn parse(s: &str) -> Option<ScanAddress> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return None;
            }
            return Some(ScanAddress::Unix(PathBuf::from(p)));
        }
        // Postfix style "inet:host:port" too.
        let s = s.strip_prefix("inet:").unwrap_or(s);
        split_host_port(s).map(|_| ScanAddress::Tcp(s.to_string()))
    }
}

impl std::fmt::Display for ScanAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanAddress::Tcp(a) => f.write_str(a),
            ScanAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Config {
    /// Defaults ← file (if it exists, or if named explicitly) ← environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError::Io {
                        path: p.to_path_buf(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    });
                }
                fig = fig.merge(Toml::file_exact(p));
            }
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    fig = fig.merge(Toml::file_exact(p));
                }
            }
        }
        fig = fig.merge(Env::prefixed("SLUICE_").split("__"));
        Self::from_figment(fig)
    }

    /// Parse a TOML string over the defaults (tests, `sluice check` on text).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Self::from_figment(fig)
    }

    fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        // `[[listener]]` in a file replaces the default list instead of
        // merging element by element, which is what an operator means.
        let cfg: Config = fig.extract()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values serde cannot: addresses parse, ids are unique, limits sane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hostname.trim().is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid("hostname", "must be a non-empty host name"));
        }
        let ex = &self.history.export;
        if !matches!(ex.kind.as_str(), "" | "clickhouse") {
            return Err(invalid(
                "history.export.kind",
                format!("{:?}: must be \"\" (off) or \"clickhouse\"", ex.kind),
            ));
        }
        if ex.enabled() {
            if !(ex.url.starts_with("http://") || ex.url.starts_with("https://"))
                || reqwest::Url::parse(&ex.url).is_err()
            {
                return Err(invalid(
                    "history.export.url",
                    format!("{:?}: must be an http:// or https:// URL", ex.url),
                ));
            }
            for (key, v) in [
                ("history.export.database", &ex.database),
                ("history.export.table", &ex.table),
            ] {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid(key, format!("{v:?}: letters, digits and _ only")));
                }
            }
            if ex.batch == 0 || ex.batch > 1_000_000 {
                return Err(invalid("history.export.batch", "must be 1 to 1000000"));
            }
            if ex.flush_interval.is_zero() || ex.timeout.is_zero() {
                return Err(invalid(
                    "history.export",
                    "flush_interval and timeout must be above zero",
                ));
            }
        }
        if self.listener.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] is needed"));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, l) in self.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            if l.id.is_empty() {
                return Err(invalid(&format!("{key}.id"), "must not be empty"));
            }
            if !ids.insert(l.id.clone()) {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("duplicate listener id {:?}", l.id),
                ));
            }
            if l.address.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    &format!("{key}.address"),
                    format!("{:?} is not an ip:port address", l.address),
                ));
            }
        }
        let lim = &self.limits;
        if lim.command_line_length < 512 {
            return Err(invalid(
                "limits.command_line_length",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            ));
        }
        if lim.data_line_length < 78 {
            return Err(invalid("limits.data_line_length", "must be at least 78"));
        }
        if lim.header_size < 1024 {
            return Err(invalid("limits.header_size", "must be at least 1024 bytes"));
        }
        if lim.message_size < 1024 {
            return Err(invalid(
                "limits.message_size",
                "must be at least 1024 bytes",
            ));
        }
        if lim.data_memory < lim.message_size {
            return Err(invalid(
                "limits.data_memory",
                format!(
                    "{} is smaller than limits.message_size ({}): a message of the largest allowed size could never be received",
                    lim.data_memory, lim.message_size
                ),
            ));
        }
        for (key, v) in [
            ("limits.recipients", lim.recipients),
            ("limits.connections", lim.connections),
            ("limits.connections_per_ip", lim.connections_per_ip),
            ("limits.received_headers", lim.received_headers),
            ("limits.header_lines", lim.header_lines),
            ("limits.errors", lim.errors),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for (key, d) in [
            ("limits.command_timeout", lim.command_timeout),
            ("limits.data_timeout", lim.data_timeout),
            ("limits.handshake_timeout", lim.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for (i, d) in self.relay.domains.iter().enumerate() {
            if d.trim().is_empty() || d.contains(char::is_whitespace) || d.contains('@') {
                return Err(invalid(
                    &format!("relay.domains[{i}]"),
                    format!("{d:?} is not a domain"),
                ));
            }
        }
        let st = &self.state;
        if st.timeout.is_zero() {
            return Err(invalid("state.timeout", "must be greater than 0"));
        }
        if st.backend == StateBackend::Redis
            && !(st.redis_url.starts_with("redis://") || st.redis_url.starts_with("rediss://"))
        {
            return Err(invalid(
                "state.redis_url",
                format!("{:?} is not a redis:// or rediss:// URL", st.redis_url),
            ));
        }
        if st.max_memory < 4096 {
            return Err(invalid("state.max_memory", "must be at least 4096 bytes"));
        }
        if !self.transport.contains_key("default") {
            return Err(invalid(
                "transport.default",
                "a transport named \"default\" is required",
            ));
        }
        for (name, t) in &self.transport {
            if let Some(h) = &t.host {
                let hosts = h.hosts();
                if hosts.is_empty() {
                    return Err(invalid(
                        &format!("transport.{name}.host"),
                        "empty host list",
                    ));
                }
                for host in hosts {
                    if split_host_port(&host).is_none() {
                        return Err(invalid(
                            &format!("transport.{name}.host"),
                            format!("{host:?} is not host:port"),
                        ));
                    }
                }
            }
            if t.concurrency == 0 {
                return Err(invalid(
                    &format!("transport.{name}.concurrency"),
                    "must be greater than 0",
                ));
            }
        }
        for (i, ns) in self.dns.nameservers.iter().enumerate() {
            if ns.parse::<SocketAddr>().is_err() && ns.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    &format!("dns.nameservers[{i}]"),
                    format!("{ns:?} is not an ip or ip:port"),
                ));
            }
        }
        if self.http.session_timeout.is_zero() {
            return Err(invalid("http.session_timeout", "must be greater than 0"));
        }
        if !self.http.address.is_empty() && self.http.address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.address",
                format!("{:?} is not an ip:port address", self.http.address),
            ));
        }
        if self.queue.min_retry_delay.is_zero()
            || self.queue.max_retry_delay < self.queue.min_retry_delay
        {
            return Err(invalid(
                "queue.max_retry_delay",
                "must be at least queue.min_retry_delay, which must be > 0",
            ));
        }
        let mut milter_ids = std::collections::HashSet::new();
        for (i, m) in self.milter.iter().enumerate() {
            let key = format!("milter[{i}]");
            if m.id.is_empty() || m.id.contains(char::is_whitespace) {
                return Err(invalid(&format!("{key}.id"), "must be a non-empty name"));
            }
            if !milter_ids.insert(m.id.clone()) {
                return Err(invalid(
                    &format!("{key}.id"),
                    format!("duplicate milter id {:?}", m.id),
                ));
            }
            if ScanAddress::parse(&m.address).is_none() {
                return Err(invalid(
                    &format!("{key}.address"),
                    format!("{:?} is not host:port or unix:/path", m.address),
                ));
            }
            for (k, d) in [
                ("timeout", m.timeout),
                ("connect_timeout", m.connect_timeout),
                ("overall_timeout", m.overall_timeout),
            ] {
                if d.is_zero() {
                    return Err(invalid(&format!("{key}.{k}"), "must be greater than 0"));
                }
            }
        }
        if let Some(c) = &self.scanners.clamd {
            if ScanAddress::parse(&c.address).is_none() {
                return Err(invalid(
                    "scanners.clamd.address",
                    format!("{:?} is not host:port or unix:/path", c.address),
                ));
            }
            if c.timeout.is_zero() || c.chunk_size == 0 || c.max_size == 0 {
                return Err(invalid(
                    "scanners.clamd",
                    "timeout, chunk_size and max_size must be greater than 0",
                ));
            }
        }
        if let Some(r) = &self.scanners.rspamd {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(invalid(
                    "scanners.rspamd.url",
                    format!("{:?} is not an http:// or https:// URL", r.url),
                ));
            }
            if r.timeout.is_zero() {
                return Err(invalid("scanners.rspamd.timeout", "must be greater than 0"));
            }
        }
        Ok(())
    }

    /// Does any listener need the certificate?
    pub fn needs_tls(&self) -> bool {
        self.listener.iter().any(|l| l.tls != ListenerTls::None)
    }
}

/// Split "host:port" or "[v6]:port".
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    if h.is_empty() || h.contains(':') {
        return None;
    }
    Some((h.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn history_export_settings_are_checked() {
        let c = Config::from_toml_str(
            "[history.export]\nkind='clickhouse'\nurl='http://10.0.0.5:8123'\nbatch=100\nflush_interval='500ms'\n",
        )
        .unwrap();
        assert!(c.history.export.enabled());
        assert_eq!(c.history.export.batch, 100);
        assert_eq!(c.history.export.table, "history");
        for (bad, key) in [
            ("kind='kafka'", "history.export.kind"),
            (
                "kind='clickhouse'\nurl='10.0.0.5:8123'",
                "history.export.url",
            ),
            ("kind='clickhouse'\nbatch=0", "history.export.batch"),
            ("kind='clickhouse'\ntable='h; DROP'", "history.export.table"),
        ] {
            let err = Config::from_toml_str(&format!("[history.export]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[limits]\nmesage_size = 5\n").unwrap_err();
        let s = err.to_string();
        assert!(s.contains("mesage_size"), "{s}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::from_toml_str("[limits]\nrecipients = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.recipients"), "{err}");
        let err = Config::from_toml_str("[[listener]]\nid='a'\naddress='nope'\n").unwrap_err();
        assert!(err.to_string().contains("listener[0].address"), "{err}");
        let err = Config::from_toml_str("[limits]\ncommand_timeout = 'soon'\n").unwrap_err();
        assert!(err.to_string().contains("command_timeout"), "{err}");
    }

    #[test]
    fn milters_and_scanners() {
        let c = Config::from_toml_str(
            "[[milter]]\nid='a'\naddress='127.0.0.1:1'\n[[milter]]\nid='b'\naddress='unix:/x.sock'\non_error='accept'\ntimeout='2s'\n[scanners.clamd]\naddress='unix:/c'\n[scanners.rspamd]\nurl='http://127.0.0.1:1'\n",
        )
        .unwrap();
        assert_eq!(c.milter.len(), 2);
        assert_eq!(c.milter[1].on_error, OnError::Accept);
        assert_eq!(c.milter[1].timeout, Duration::from_secs(2));
        assert_eq!(
            ScanAddress::parse(&c.milter[1].address),
            Some(ScanAddress::Unix("/x.sock".into()))
        );
        let err = Config::from_toml_str(
            "[[milter]]\nid='a'\naddress='127.0.0.1:1'\n[[milter]]\nid='a'\naddress='127.0.0.1:2'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("milter[1].id"), "{err}");
        let err = Config::from_toml_str("[[milter]]\nid='a'\naddress='nowhere'\n").unwrap_err();
        assert!(err.to_string().contains("milter[0].address"), "{err}");
        let err = Config::from_toml_str("[scanners.rspamd]\nurl='127.0.0.1:1'\n").unwrap_err();
        assert!(err.to_string().contains("scanners.rspamd.url"), "{err}");
    }

    #[test]
    fn listeners_replace_default() {
        let c = Config::from_toml_str(
            "[[listener]]\nid='a'\naddress='127.0.0.1:1'\n[[listener]]\nid='b'\naddress='127.0.0.1:2'\ntls='implicit'\n",
        )
        .unwrap();
        assert_eq!(c.listener.len(), 2);
        assert_eq!(c.listener[1].tls, ListenerTls::Implicit);
    }

    #[test]
    fn host_list_forms() {
        let c = Config::from_toml_str(
            "[transport.default]\nhost=['a:1','b:2']\n[transport.lmtp]\nkind='lmtp'\nhost='c:3'\n",
        )
        .unwrap();
        assert_eq!(
            c.transport["default"].host.as_ref().unwrap().hosts().len(),
            2
        );
        assert_eq!(c.transport["lmtp"].kind, TransportKind::Lmtp);
    }
}
