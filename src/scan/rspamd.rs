//! rspamd over HTTP: `POST /checkv2` with the envelope in headers, the
//! JSON verdict (`ScanRspamd` in eod).
//!
//! It owns its HTTP client (built once per config epoch); it must not
//! change the message — the script applies rspamd's verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::RspamdConfig;

#[derive(Debug, thiserror::Error)]
pub enum RspamdError {
    #[error("rspamd: {0}")]
    Connect(String),
    #[error("rspamd: timed out after {0:?}")]
    Timeout(Duration),
    #[error("rspamd: {0}")]
    Protocol(String),
}

impl RspamdError {
    pub fn kind(&self) -> &'static str {
        match self {
            RspamdError::Connect(_) => "connection",
            RspamdError::Timeout(_) => "timeout",
            RspamdError::Protocol(_) => "protocol",
        }
    }
}

/// The envelope rspamd is told about.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub ip: Option<String>,
    pub helo: Option<String>,
    pub hostname: Option<String>,
    pub from: Option<String>,
    pub rcpts: Vec<String>,
    pub user: Option<String>,
    pub queue_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Symbol {
    #[serde(default)]
    pub score: f64,
}

/// What `/checkv2` answers (the parts scripts see).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RspamdResult {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub score: f64,
    #[serde(default)]
    pub required_score: f64,
    #[serde(default)]
    pub symbols: BTreeMap<String, Symbol>,
    #[serde(default)]
    pub messages: serde_json::Value,
    /// Header changes rspamd asks for (`milter.add_headers`/`remove_headers`).
    #[serde(default)]
    pub milter: Option<serde_json::Value>,
    #[serde(default)]
    pub is_skipped: bool,
}

pub struct Rspamd {
    cfg: RspamdConfig,
    client: reqwest::Client,
}

impl Rspamd {
    pub fn new(cfg: &RspamdConfig) -> Result<Rspamd, String> {
        // The daemon's one way to build HTTP clients: ring TLS (https://
        // rspamd), no redirects, 5 s connect timeout.
        let client = crate::http_client::builder(&crate::http_client::ClientOptions::default())
            .map_err(|e| format!("[scanners.rspamd]: {e}"))?
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("[scanners.rspamd]: {e}"))?;
        Ok(Rspamd {
            cfg: cfg.clone(),
            client,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.cfg.timeout
    }

    pub async fn check(
        &self,
        message: bytes::Bytes,
        env: &Envelope,
        timeout: Duration,
    ) -> Result<RspamdResult, RspamdError> {
        let url = format!("{}/checkv2", self.cfg.url.trim_end_matches('/'));
        let mut headers = reqwest::header::HeaderMap::new();
        let mut h = |k: &'static str, v: Option<&str>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                if let Ok(hv) = reqwest::header::HeaderValue::from_str(v) {
                    headers.append(k, hv);
                }
            }
        };
        h("IP", env.ip.as_deref());
        h("Helo", env.helo.as_deref());
        h("Hostname", env.hostname.as_deref());
        h("From", env.from.as_deref());
        h("User", env.user.as_deref());
        h("Queue-Id", env.queue_id.as_deref());
        for r in &env.rcpts {
            h("Rcpt", Some(r));
        }
        if !self.cfg.password.is_empty() {
            h("Password", Some(&self.cfg.password));
        }
        let req = self
            .client
            .post(&url)
            .timeout(timeout)
            .headers(headers)
            .body(message);
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                RspamdError::Timeout(timeout)
            } else {
                RspamdError::Connect(e.to_string())
            }
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                RspamdError::Timeout(timeout)
            } else {
                RspamdError::Connect(e.to_string())
            }
        })?;
        if !status.is_success() {
            return Err(RspamdError::Protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        serde_json::from_slice(&body).map_err(|e| RspamdError::Protocol(format!("bad JSON: {e}")))
    }
}
