//! Content and sender scanners the policy engine exposes to scripts.
//!
//! - [`dns`]: the shared resolver (with caches) every check uses.
//! - [`auth`]: SPF, DKIM, DMARC (`ScanDMARC`), ARC verify and seal.
//! - [`dkim`]: DKIM signing keys (`[dkim.keys]`) and signing.
//! - [`spf`]: SPF (RFC 7208), our own evaluator.
//! - [`dnsbl`]: DNSBL / RHSBL / DNSWL lookups, FCrDNS, sender MX.
//! - [`geoip`]: MaxMind country and ASN databases.
//! - [`dlp`]: content inspection (`ScanDLP`).
//! - [`milter`]: the milter client (`[[milter]]`), driven by the SMTP session.
//! - [`clamd`]: ClamAV's clamd (`ScanClam`).
//! - [`rspamd`]: rspamd over HTTP (`ScanRspamd`).

pub mod auth;
pub mod clamd;
pub mod dkim;
pub mod dlp;
pub mod dns;
pub mod dnsbl;
pub mod geoip;
pub mod milter;
pub mod rspamd;
pub mod spf;

use std::sync::Arc;

use crate::config::Config;

/// The scanners of one config epoch, built when the policy engine loads
/// (bad DLP rules, an unreadable ARC or DKIM key or GeoIP database are
/// load errors).
/// DNS is not here: the resolver belongs to the policy engine's `Dns`.
pub struct ScanContext {
    pub auth: auth::AuthSettings,
    pub dkim: dkim::DkimKeys,
    pub geoip: geoip::GeoIp,
    pub dlp: Arc<dlp::DlpEngine>,
    /// `[scanners.clamd]` (ScanClam), when configured.
    pub clamd: Option<crate::config::ClamdConfig>,
    /// `[scanners.rspamd]` (ScanRspamd), when configured.
    pub rspamd: Option<Arc<rspamd::Rspamd>>,
    /// `[[milter]]` (id, address), for Axigen's addFilter.
    pub milters: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Dkim(#[from] dkim::DkimError),
    #[error(transparent)]
    GeoIp(#[from] geoip::GeoIpError),
    #[error("[dlp] {0}")]
    Dlp(#[from] dlp::DlpError),
    #[error("{0}")]
    Scanner(String),
}

/// `sluice check`: a short connect to every milter and scanner; what
/// cannot be reached is a warning (the daemon starts anyway and applies
/// `on_error` / the script's choice), never an error.
pub async fn probe(cfg: &Config) -> Vec<String> {
    use crate::config::ScanAddress;
    let t = std::time::Duration::from_secs(2);
    async fn connect(a: &ScanAddress, t: std::time::Duration) -> Result<(), String> {
        let r = match a {
            ScanAddress::Tcp(h) => tokio::time::timeout(t, tokio::net::TcpStream::connect(h))
                .await
                .map(|r| r.map(|_| ())),
            ScanAddress::Unix(p) => tokio::time::timeout(t, tokio::net::UnixStream::connect(p))
                .await
                .map(|r| r.map(|_| ())),
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
    let mut out = Vec::new();
    for m in &cfg.milter {
        if let Some(a) = ScanAddress::parse(&m.address) {
            if let Err(e) = connect(&a, t).await {
                out.push(format!(
                    "milter {}: cannot connect to {a}: {e} (sessions will apply on_error = {:?})",
                    m.id, m.on_error
                ));
            }
        }
    }
    if let Some(c) = &cfg.scanners.clamd {
        if let Some(a) = ScanAddress::parse(&c.address) {
            if let Err(e) = connect(&a, t).await {
                out.push(format!("[scanners.clamd]: cannot connect to {a}: {e}"));
            }
        }
    }
    if let Some(r) = &cfg.scanners.rspamd {
        let url = format!("{}/ping", r.url.trim_end_matches('/'));
        let ok = match reqwest::Client::builder().timeout(t).build() {
            Ok(c) => c.get(&url).send().await.map(|r| r.status().is_success()),
            Err(e) => Err(e),
        };
        match ok {
            Ok(true) => {}
            Ok(false) => out.push(format!("[scanners.rspamd]: {url} does not answer 200")),
            Err(e) => out.push(format!("[scanners.rspamd]: {url}: {e}")),
        }
    }
    out
}

impl ScanContext {
    pub fn from_config(cfg: &Config) -> Result<ScanContext, ScanError> {
        Ok(ScanContext {
            auth: auth::AuthSettings::from_config(cfg)?,
            dkim: dkim::DkimKeys::from_config(&cfg.dkim)?,
            geoip: geoip::GeoIp::open(&cfg.geoip)?,
            dlp: Arc::new(dlp::DlpEngine::from_config(&cfg.dlp.rules)?),
            clamd: cfg.scanners.clamd.clone(),
            rspamd: match &cfg.scanners.rspamd {
                Some(r) => Some(Arc::new(
                    rspamd::Rspamd::new(r).map_err(ScanError::Scanner)?,
                )),
                None => None,
            },
            milters: cfg
                .milter
                .iter()
                .map(|m| (m.id.clone(), m.address.clone()))
                .collect(),
        })
    }

    /// No ARC key, no GeoIP, the built-in DLP rules only.
    pub fn minimal(hostname: &str) -> ScanContext {
        ScanContext {
            auth: auth::AuthSettings::new(hostname, hostname),
            dkim: dkim::DkimKeys::default(),
            geoip: geoip::GeoIp::default(),
            dlp: Arc::new(
                dlp::DlpEngine::from_config(&Default::default()).expect("built-in DLP rules"),
            ),
            clamd: None,
            rspamd: None,
            milters: Vec::new(),
        }
    }
}
