//! Recipient validation at RCPT: an address in `relay.domains` that the
//! mailstore does not have is refused during the SMTP dialogue (550 5.1.1)
//! instead of being accepted and bounced later to a forged sender.
//!
//! [`Validator`] asks the `[recipients] sources` in order — [`map`] (a
//! file), and the sources that talk to other servers (callout, LDAP, SQL)
//! — and the first definite answer wins; a source that does not know the
//! address passes it on, and when no source knows it the address is
//! unknown. Answers are cached (`positive_ttl`, `negative_ttl`); a source
//! that cannot answer makes a tempfail, which `on_tempfail` turns into a
//! 451 4.4.3 or an acceptance.
//!
//! It owns the sources and their cache. It must not decide relaying (the
//! session's relay rule does, and asks this only for local recipients) nor
//! write replies (the session does).

pub mod callout;
pub mod ldap;
pub mod map;
pub mod sql;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, OnTempfail};

/// What one source says of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAnswer {
    /// The address exists; `rewrite` is where to deliver it (an alias).
    Exists {
        rewrite: Option<String>,
    },
    Unknown,
    /// The source cannot answer now (server down, timeout).
    TempFail(String),
    /// Not this source's to say (a map without the address or its domain).
    NoAnswer,
}

/// The validation's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Exists { rewrite: Option<String> },
    Unknown,
    TempFail(String),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Exists { .. } => "exists",
            Verdict::Unknown => "unknown",
            Verdict::TempFail(_) => "tempfail",
        }
    }
}

/// A verdict and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The source that answered ("none" when none did, "cache" never: see
    /// `cached`).
    pub source: String,
    pub cached: bool,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One source of answers. Implementations bound their own waits (each has
/// a timeout) and never panic on a server's answer.
pub trait RecipientSource: Send + Sync {
    /// The name in `[recipients] sources`.
    fn name(&self) -> &'static str;
    /// What the source says of `address` (lower case, `user@domain`).
    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, SourceAnswer>;
    /// Connect once and say what fails (`sluice check`).
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// Re-read what the source reads from files (SIGHUP).
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
    /// The source as its own type, for the script look-ups that reuse its
    /// connections (`ldap.search`, `sql.query`; see [`Validator::source`]).
    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        None
    }
}

struct Cached {
    verdict: Verdict,
    source: String,
    until: Instant,
}

/// Entries kept at most; past it, expired ones go (and if none has, all).
const CACHE_CAPACITY: usize = 100_000;

/// The configured sources and their cache.
pub struct Validator {
    sources: Vec<Arc<dyn RecipientSource>>,
    positive_ttl: Duration,
    negative_ttl: Duration,
    on_tempfail: OnTempfail,
    cache: Mutex<HashMap<String, Cached>>,
}

/// Builds a source the core does not know (callout, LDAP, SQL live in
/// their own modules and register here).
type Builder = fn(&Config) -> Result<Arc<dyn RecipientSource>, String>;

fn builder(name: &str) -> Option<Builder> {
    match name {
        "map" => Some(|cfg| {
            let path = cfg
                .recipients
                .map
                .clone()
                .ok_or("[recipients] sources has \"map\" but map is not set")?;
            Ok(Arc::new(map::MapSource::open(&path)?) as Arc<dyn RecipientSource>)
        }),
        "callout" => Some(|cfg| {
            Ok(Arc::new(callout::CalloutSource::from_config(cfg)?) as Arc<dyn RecipientSource>)
        }),
        "ldap" => Some(|cfg| {
            Ok(Arc::new(ldap::LdapSource::new(&cfg.recipients.ldap)?) as Arc<dyn RecipientSource>)
        }),
        "sql" => Some(|cfg| {
            Ok(Arc::new(sql::SqlSource::new(&cfg.recipients.sql)?) as Arc<dyn RecipientSource>)
        }),
        _ => None,
    }
}

impl Validator {
    /// The validator `[recipients]` describes; `None` when no source is
    /// configured. Errors name the key.
    pub fn from_config(cfg: &Config) -> Result<Option<Arc<Validator>>, String> {
        let r = &cfg.recipients;
        if r.sources.is_empty() {
            return Ok(None);
        }
        let mut sources = Vec::new();
        for name in &r.sources {
            let b = builder(name).ok_or_else(|| {
                format!("[recipients] sources: unknown source {name:?} (map, callout, ldap, sql)")
            })?;
            sources.push(b(cfg).map_err(|e| format!("[recipients] {name}: {e}"))?);
        }
        Ok(Some(Arc::new(Validator::new(
            sources,
            r.positive_ttl,
            r.negative_ttl,
            r.on_tempfail,
        ))))
    }

    pub fn new(
        sources: Vec<Arc<dyn RecipientSource>>,
        positive_ttl: Duration,
        negative_ttl: Duration,
        on_tempfail: OnTempfail,
    ) -> Validator {
        Validator {
            sources,
            positive_ttl,
            negative_ttl,
            on_tempfail,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn on_tempfail(&self) -> OnTempfail {
        self.on_tempfail
    }

    /// The configured source of type `T` (the LDAP or SQL source whose
    /// connections `ldap.search` / `sql.query` use).
    pub fn source<T: 'static>(&self) -> Option<&T> {
        self.sources
            .iter()
            .find_map(|s| s.as_any().and_then(|a| a.downcast_ref::<T>()))
    }

    /// The source names, in order.
    pub fn source_names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    /// Ask the sources (every one, or only those named) for `address`; the
    /// cache first when all sources are asked.
    pub async fn verify(&self, address: &str, only: Option<&[String]>) -> Outcome {
        let address = address.trim().to_ascii_lowercase();
        if only.is_none() {
            if let Some(hit) = self.cached(&address) {
                crate::metrics::recipient_check("cache", hit.verdict.as_str());
                return hit;
            }
        }
        for s in &self.sources {
            if only.is_some_and(|o| !o.iter().any(|n| n == s.name())) {
                continue;
            }
            let answer = s.lookup(&address).await;
            let verdict = match answer {
                SourceAnswer::NoAnswer => continue,
                SourceAnswer::Exists { rewrite } => Verdict::Exists { rewrite },
                SourceAnswer::Unknown => Verdict::Unknown,
                SourceAnswer::TempFail(e) => Verdict::TempFail(e),
            };
            crate::metrics::recipient_check(s.name(), verdict.as_str());
            let out = Outcome {
                verdict,
                source: s.name().to_string(),
                cached: false,
            };
            if only.is_none() {
                self.remember(&address, &out);
            }
            return out;
        }
        crate::metrics::recipient_check("none", "unknown");
        let out = Outcome {
            verdict: Verdict::Unknown,
            source: "none".into(),
            cached: false,
        };
        if only.is_none() {
            self.remember(&address, &out);
        }
        out
    }

    fn cached(&self, address: &str) -> Option<Outcome> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache.get(address)?;
        (c.until > Instant::now()).then(|| Outcome {
            verdict: c.verdict.clone(),
            source: c.source.clone(),
            cached: true,
        })
    }

    /// Tempfails are not cached: the next RCPT asks again.
    fn remember(&self, address: &str, out: &Outcome) {
        let ttl = match out.verdict {
            Verdict::Exists { .. } => self.positive_ttl,
            Verdict::Unknown => self.negative_ttl,
            Verdict::TempFail(_) => return,
        };
        if ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            address.to_string(),
            Cached {
                verdict: out.verdict.clone(),
                source: out.source.clone(),
                until: Instant::now() + ttl,
            },
        );
    }

    /// SIGHUP: every source re-reads its files; the cache is emptied (the
    /// answers may have changed).
    pub fn reload(&self) -> Result<(), String> {
        for s in &self.sources {
            s.reload().map_err(|e| format!("{}: {e}", s.name()))?;
        }
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// Connect to every source once (`sluice check`): the failures, named.
    pub async fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.sources {
            if let Err(e) = s.check().await {
                out.push(format!("[recipients] {}: {e}", s.name()));
            }
        }
        out
    }
}
