//! The "ldap" source: an address exists when a subtree search under
//! `[recipients.ldap] base` with `filter` (`%s` = the address, escaped per
//! RFC 4515) finds an entry; `rewrite_attribute`'s first value, when set
//! and present, is the address to deliver to. No entry is unknown; a server
//! that does not answer, refuses the bind or the search is a tempfail.
//!
//! One multiplexed connection (ldap3's `Ldap` handle is a channel to one
//! driver task; clones share it), opened on first use, bound with
//! `bind_dn`/`bind_password` (empty: anonymous), over ldap://, ldaps:// or
//! ldap:// with StartTLS (rustls with ring, verified against `ca_file` or
//! else the Mozilla roots of webpki-roots). An operation
//! that fails drops the connection, so the lookup after a server restart
//! reconnects; the failing lookup itself is a tempfail. Every wait is
//! bounded by `timeout`.
//!
//! It also serves `ldap.search` for scripts ([`LdapSource::search`]), on
//! the same connection, search only. It owns that connection; it must not
//! modify the directory nor cache answers (the validator caches).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};

use super::{BoxFuture, RecipientSource, SourceAnswer};
use crate::config::LdapSourceConfig;

/// Escape `value` for use inside an RFC 4515 filter: `*`, `(`, `)`, `\`
/// and NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`, so an address cannot
/// add filter syntax (`*)(uid=*` matches only that literal string).
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// One entry a search found: its DN and its textual attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dn: String,
    pub attrs: BTreeMap<String, Vec<String>>,
}

pub struct LdapSource {
    cfg: LdapSourceConfig,
    /// The open connection, with a generation so that a failure drops only
    /// the connection it happened on, not one opened since.
    conn: Mutex<Option<(u64, Ldap)>>,
    generation: std::sync::atomic::AtomicU64,
    /// TLS for ldaps:// and StartTLS, built once.
    tls: std::sync::Arc<rustls::ClientConfig>,
    /// Serialises connecting, so a burst of RCPTs after a restart opens
    /// one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl LdapSource {
    pub fn new(cfg: &LdapSourceConfig) -> Result<LdapSource, String> {
        let url = cfg.url.as_str();
        if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
            return Err(format!("url {url:?}: expected ldap:// or ldaps://"));
        }
        if cfg.starttls && url.starts_with("ldaps://") {
            return Err("starttls = true needs an ldap:// url (ldaps:// is TLS already)".into());
        }
        if !cfg.filter.contains("%s") {
            return Err(format!("filter {:?} has no %s (the address)", cfg.filter));
        }
        if cfg.timeout.is_zero() {
            return Err("timeout must be more than 0".into());
        }
        // ldap3's own default would take the process-wide rustls provider
        // (a panic when none is installed) and the system store; ours
        // names ring, as the rest of the daemon does.
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca_file {
            Some(p) => {
                let certs = crate::tls::load_certs(p).map_err(|e| format!("ca_file: {e}"))?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("ca_file {}: {e}", p.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(LdapSource {
            tls: std::sync::Arc::new(tls),
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            generation: Default::default(),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn current(&self) -> Option<(u64, Ldap)> {
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let closed = g.as_mut().is_some_and(|(_, l)| l.is_closed());
        if closed {
            *g = None;
        }
        g.clone()
    }

    fn drop_conn(&self, generation: u64) {
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|(n, _)| *n == generation) {
            *g = None;
        }
    }

    /// The open connection, or a new one (connected and bound).
    async fn connection(&self) -> Result<(u64, Ldap), String> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let ldap = self.open().await?;
        let n = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((n, ldap.clone()));
        Ok((n, ldap))
    }

    async fn open(&self) -> Result<Ldap, String> {
        let t = self.cfg.timeout;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(t)
            .set_starttls(self.cfg.starttls)
            .set_config(self.tls.clone());
        let (conn, mut ldap) =
            tokio::time::timeout(t, LdapConnAsync::with_settings(settings, &self.cfg.url))
                .await
                .map_err(|_| format!("{}: no connection within {t:?}", self.cfg.url))?
                .map_err(|e| format!("{}: {e}", self.cfg.url))?;
        // The driver task ends when the server closes the connection; the
        // handle then reports closed and the next lookup reconnects.
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(target: "sluice::recipients", "ldap connection ended: {e}");
            }
        });
        if !self.cfg.bind_dn.is_empty() {
            let r = tokio::time::timeout(
                t,
                ldap.with_timeout(t)
                    .simple_bind(&self.cfg.bind_dn, &self.cfg.bind_password),
            )
            .await
            .map_err(|_| format!("bind as {}: no answer within {t:?}", self.cfg.bind_dn))?
            .and_then(|r| r.success());
            if let Err(e) = r {
                let _ = ldap.unbind().await;
                return Err(format!("bind as {}: {e}", self.cfg.bind_dn));
            }
        }
        Ok(ldap)
    }

    /// A subtree search (at most `limit` entries, every wait bounded by
    /// `timeout`); a failure drops the connection. More entries than
    /// `limit` is not an error: the first `limit` are returned, and `true`
    /// says there were more.
    pub async fn search(
        &self,
        base: Option<&str>,
        filter: &str,
        attrs: &[String],
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), String> {
        let (n, mut ldap) = self.connection().await?;
        let t = self.cfg.timeout;
        let base = base.unwrap_or(&self.cfg.base);
        let attrs: Vec<&str> = if attrs.is_empty() {
            vec!["*"]
        } else {
            attrs.iter().map(String::as_str).collect()
        };
        let r = tokio::time::timeout(
            t,
            ldap.with_timeout(t)
                .with_search_options(SearchOptions::new().sizelimit(limit as i32))
                .search(base, Scope::Subtree, filter, attrs),
        )
        .await;
        let (entries, res) = match r {
            Err(_) => {
                self.drop_conn(n);
                return Err(format!("search: no answer within {t:?}"));
            }
            Ok(Err(e)) => {
                self.drop_conn(n);
                return Err(format!("search: {e}"));
            }
            Ok(Ok(sr)) => (sr.0, sr.1),
        };
        // 4 = sizeLimitExceeded: the entries up to the limit are there.
        // Other codes (no such base, bad filter…) are the server's answer
        // on a working connection: keep it, report the error.
        if res.rc != 0 && res.rc != 4 {
            return Err(format!("search: {res}"));
        }
        let more = res.rc == 4 || entries.len() > limit;
        let entries = entries
            .into_iter()
            .take(limit)
            .map(|e| {
                let e = SearchEntry::construct(e);
                Entry {
                    dn: e.dn,
                    attrs: e.attrs.into_iter().collect(),
                }
            })
            .collect();
        Ok((entries, more))
    }

    async fn answer(&self, address: &str) -> SourceAnswer {
        let filter = self.cfg.filter.replace("%s", &escape_filter_value(address));
        let attrs: Vec<String> = if self.cfg.rewrite_attribute.is_empty() {
            // "1.1": no attributes (RFC 4511 §4.5.1.8), only the DN.
            vec!["1.1".into()]
        } else {
            vec![self.cfg.rewrite_attribute.clone()]
        };
        // Size limit 2: one entry is enough to exist, and a filter that
        // matches many (a bad config) costs no more than two.
        match self.search(None, &filter, &attrs, 2).await {
            Err(e) => SourceAnswer::TempFail(format!("ldap: {e}")),
            Ok((found, _)) => match found.first() {
                None => SourceAnswer::Unknown,
                Some(e) => {
                    let rewrite = e
                        .attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&self.cfg.rewrite_attribute))
                        .and_then(|(_, v)| v.first())
                        .map(|v| v.trim().to_ascii_lowercase())
                        .filter(|v| !v.is_empty() && v != address);
                    SourceAnswer::Exists { rewrite }
                }
            },
        }
    }

    pub fn timeout(&self) -> Duration {
        self.cfg.timeout
    }
}

impl RecipientSource for LdapSource {
    fn name(&self) -> &'static str {
        "ldap"
    }

    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, SourceAnswer> {
        Box::pin(self.answer(address))
    }

    /// Connect and bind; then a base-scope read of the base, which proves
    /// the base exists and the bound identity may search it.
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (n, mut ldap) = self.connection().await?;
            let t = self.cfg.timeout;
            let r = tokio::time::timeout(
                t,
                ldap.with_timeout(t).search(
                    &self.cfg.base,
                    Scope::Base,
                    "(objectClass=*)",
                    vec!["1.1"],
                ),
            )
            .await
            .map_err(|_| format!("search of base {:?}: no answer within {t:?}", self.cfg.base))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|r| r.success().map_err(|e| e.to_string()));
            if let Err(e) = r {
                self.drop_conn(n);
                return Err(format!("base {:?}: {e}", self.cfg.base));
            }
            Ok(())
        })
    }

    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_cannot_add_syntax() {
        assert_eq!(escape_filter_value("bob@example.org"), "bob@example.org");
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b\0c"), "a\\5cb\\00c");
    }

    #[test]
    fn config_errors_name_the_problem() {
        let mut c = LdapSourceConfig::default();
        assert!(LdapSource::new(&c).is_ok());
        c.filter = "(mail=x)".into();
        assert!(LdapSource::new(&c).err().unwrap().contains("%s"));
        c = LdapSourceConfig {
            url: "http://x".into(),
            ..Default::default()
        };
        assert!(LdapSource::new(&c).err().unwrap().contains("ldap://"));
    }
}
