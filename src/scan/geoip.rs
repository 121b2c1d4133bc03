//! GeoIP: country, continent and AS of an address from MaxMind databases
//! (`[geoip] country_db` — GeoLite2/GeoIP2 Country or City — and `asn_db` —
//! GeoLite2 ASN). Both are read into memory once per config epoch; a path
//! that is set but cannot be opened is an error at start, and so is a
//! script that calls `geoip.lookup` when neither database is configured.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{geoip2, Reader};

use crate::config::GeoipConfig;

#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("geoip database {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("geoip: no database configured ([geoip] country_db / asn_db)")]
    NotConfigured,
    #[error("geoip lookup of {ip}: {message}")]
    Lookup { ip: IpAddr, message: String },
}

/// What is known about one address; every field may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2, e.g. "DE".
    pub country: Option<String>,
    /// English name, e.g. "Germany".
    pub country_name: Option<String>,
    /// Two-letter continent code: AF AN AS EU NA OC SA.
    pub continent: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

#[derive(Default)]
pub struct GeoIp {
    country: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

fn open(path: &Path) -> Result<Reader<Vec<u8>>, GeoIpError> {
    Reader::open_readfile(path).map_err(|e| GeoIpError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl GeoIp {
    /// Open the configured databases (none configured is fine until used).
    pub fn open(cfg: &GeoipConfig) -> Result<GeoIp, GeoIpError> {
        Ok(GeoIp {
            country: cfg.country_db.as_deref().map(open).transpose()?,
            asn: cfg.asn_db.as_deref().map(open).transpose()?,
        })
    }

    pub fn is_configured(&self) -> bool {
        self.country.is_some() || self.asn.is_some()
    }

    /// Is there a country database (`[geoip] country_db`)?
    pub fn has_country(&self) -> bool {
        self.country.is_some()
    }

    /// Is there an AS database (`[geoip] asn_db`)?
    pub fn has_asn(&self) -> bool {
        self.asn.is_some()
    }

    pub fn lookup(&self, ip: IpAddr) -> Result<GeoInfo, GeoIpError> {
        if !self.is_configured() {
            return Err(GeoIpError::NotConfigured);
        }
        let ip = super::dns::unmap(ip);
        let err = |e: maxminddb::MaxMindDbError| GeoIpError::Lookup {
            ip,
            message: e.to_string(),
        };
        let mut out = GeoInfo::default();
        if let Some(r) = &self.country {
            if let Some(c) = r.lookup::<geoip2::Country>(ip).map_err(err)? {
                let country = c.country.or(c.registered_country);
                if let Some(country) = country {
                    out.country = country.iso_code.map(|s| s.to_ascii_uppercase());
                    out.country_name = country
                        .names
                        .as_ref()
                        .and_then(|n| n.get("en"))
                        .map(|s| s.to_string());
                }
                out.continent = c.continent.and_then(|k| k.code).map(|s| s.to_string());
            }
        }
        if let Some(r) = &self.asn {
            if let Some(a) = r.lookup::<geoip2::Asn>(ip).map_err(err)? {
                out.asn = a.autonomous_system_number;
                out.as_org = a.autonomous_system_organization.map(|s| s.to_string());
            }
        }
        Ok(out)
    }
}
