//! ClamAV's clamd over its socket: `zINSTREAM`, the message in chunks,
//! the verdict line (`ScanClam` in eod).
//!
//! It owns the clamd connection for one scan; it must not decide what a
//! virus means for the message — the script does.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{ClamdConfig, ScanAddress};

#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("clamd at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("clamd: timed out after {0:?}")]
    Timeout(Duration),
    #[error("clamd: {0}")]
    Io(#[from] std::io::Error),
    #[error("clamd: {0}")]
    Protocol(String),
    /// The message is larger than `max_size` or clamd's StreamMaxLength.
    #[error("clamd: {0}")]
    Limit(String),
}

impl ClamdError {
    /// The `kind` label of `sluice_scanner_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClamdError::Connect { .. } | ClamdError::Io(_) => "connection",
            ClamdError::Timeout(_) => "timeout",
            ClamdError::Protocol(_) => "protocol",
            ClamdError::Limit(_) => "limit",
        }
    }
}

/// Scan `data`: the signature names found (empty: clean).
pub async fn scan(
    cfg: &ClamdConfig,
    data: &[u8],
    timeout: Duration,
    max_size: u64,
) -> Result<Vec<String>, ClamdError> {
    if data.len() as u64 > max_size {
        return Err(ClamdError::Limit(format!(
            "message of {} bytes exceeds the scan limit of {max_size} bytes",
            data.len()
        )));
    }
    let addr = ScanAddress::parse(&cfg.address)
        .ok_or_else(|| ClamdError::Protocol(format!("bad address {}", cfg.address)))?;
    let deadline = Instant::now() + timeout;
    let run =
        async {
            match addr {
                ScanAddress::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(&a).await.map_err(|e| {
                        ClamdError::Connect {
                            addr: a.clone(),
                            source: e,
                        }
                    })?;
                    instream(s, data, cfg.chunk_size).await
                }
                ScanAddress::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(&p).await.map_err(|e| {
                        ClamdError::Connect {
                            addr: p.display().to_string(),
                            source: e,
                        }
                    })?;
                    instream(s, data, cfg.chunk_size).await
                }
            }
        };
    match tokio::time::timeout_at(deadline.into(), run).await {
        Ok(r) => r,
        Err(_) => Err(ClamdError::Timeout(timeout)),
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    data: &[u8],
    chunk: usize,
) -> Result<Vec<String>, ClamdError> {
    s.write_all(b"zINSTREAM\0").await?;
    for c in data.chunks(chunk.max(1)) {
        s.write_all(&(c.len() as u32).to_be_bytes()).await?;
        if let Err(e) = s.write_all(c).await {
            // clamd closes early when the stream passes its StreamMaxLength;
            // its reply says so.
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if !buf.is_empty() {
                return parse_reply(&buf);
            }
            return Err(e.into());
        }
    }
    s.write_all(&0u32.to_be_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    let mut one = [0u8; 512];
    loop {
        let n = s.read(&mut one).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&one[..n]);
        if buf.contains(&0) || buf.len() > 64 * 1024 {
            break;
        }
    }
    parse_reply(&buf)
}

/// `stream: OK`, `stream: NAME FOUND` (one per line with AllMatchScan),
/// `... ERROR`.
pub fn parse_reply(buf: &[u8]) -> Result<Vec<String>, ClamdError> {
    let text = String::from_utf8_lossy(buf);
    let text = text.trim_end_matches('\0').trim();
    if text.is_empty() {
        return Err(ClamdError::Protocol("empty reply".into()));
    }
    let mut found = Vec::new();
    for line in text
        .split(['\0', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let body = line.split_once(": ").map(|(_, b)| b).unwrap_or(line);
        if body == "OK" {
            continue;
        }
        if let Some(name) = body.strip_suffix(" FOUND") {
            found.push(name.to_string());
        } else if body.ends_with("ERROR") {
            let msg = body.trim_end_matches("ERROR").trim().trim_end_matches('.');
            return Err(if msg.contains("size limit") {
                ClamdError::Limit(msg.to_string())
            } else {
                ClamdError::Protocol(msg.to_string())
            });
        } else {
            return Err(ClamdError::Protocol(format!("unexpected reply {line:?}")));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert!(parse_reply(b"stream: OK\0").unwrap().is_empty());
        assert_eq!(
            parse_reply(b"stream: Sluice.Test.Sig.UNOFFICIAL FOUND\0").unwrap(),
            vec!["Sluice.Test.Sig.UNOFFICIAL"]
        );
        assert!(matches!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Err(ClamdError::Limit(_))
        ));
        assert!(matches!(
            parse_reply(b"huh\0"),
            Err(ClamdError::Protocol(_))
        ));
        assert!(matches!(parse_reply(b""), Err(ClamdError::Protocol(_))));
    }
}
