//! The outbound SMTP/LMTP client: one connection to one next hop, EHLO (LHLO
//! for LMTP) with HELO fallback, STARTTLS by transport policy, PIPELINING,
//! SIZE/8BITMIME/SMTPUTF8/DSN honoured, per-recipient results (LMTP gives
//! one reply per recipient after DATA, RFC 2033). Several transactions may
//! run over one connection.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::{TransportKind, TransportTls};
use crate::proto::reply::{EnhancedCode, SmtpReply};

pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
pub const DATA_TIMEOUT: Duration = Duration::from_secs(600);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection attempt or a transaction failed before per-recipient replies.
#[derive(Debug, Clone)]
pub enum ClientError {
    /// Network, timeout, TLS: try the next host or later.
    Network(String),
    /// The server answered this at a connection-level step (banner, EHLO, MAIL, DATA).
    Reply(SmtpReply),
    /// We decided not to send (e.g. SIZE over the peer's limit, no SMTPUTF8).
    Local(SmtpReply),
}

impl ClientError {
    /// A network error with the protocol step it happened in, for the
    /// history reason and the log ("… reset by peer (while sending the
    /// message data)"): a cut DATA is what operators ask about.
    fn during(self, step: &str) -> ClientError {
        match self {
            ClientError::Network(s) => ClientError::Network(format!("{s} ({step})")),
            other => other,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Network(s) => write!(f, "{s}"),
            ClientError::Reply(r) | ClientError::Local(r) => write!(f, "{r}"),
        }
    }
}

pub struct SmtpClient {
    r: BufReader<Box<dyn Io>>,
    pub peer: SocketAddr,
    pub host: String,
    pub ext: HashSet<String>,
    pub size_limit: Option<u64>,
    pub tls: bool,
    pub lmtp: bool,
    pub banner: String,
}

/// One message to send over a client.
pub struct Envelope<'a> {
    pub sender: &'a str,
    pub recipients: Vec<(&'a str, Option<String>)>, // (address, "NOTIFY=.. ORCPT=.." params)
    pub body: &'a [u8],
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub ret: Option<&'a str>,
    pub envid: Option<&'a str>,
}

fn parse_reply_lines(lines: &[String]) -> SmtpReply {
    let code = lines
        .first()
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(451);
    let mut enhanced = None;
    let texts = lines
        .iter()
        .map(|l| {
            let t = l.get(4..).unwrap_or("").to_string();
            let (first, rest) = t.split_once(' ').unwrap_or((t.as_str(), ""));
            if let Some(e) = EnhancedCode::parse(first) {
                enhanced.get_or_insert(e);
                rest.to_string()
            } else {
                t.clone()
            }
        })
        .collect();
    SmtpReply {
        code,
        enhanced,
        lines: texts,
    }
}

/// Accepts any certificate: opportunistic TLS protects against passive
/// eavesdropping only, as in every MTA's default.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client TLS config for a transport's mode.
pub fn client_tls_config(
    mode: TransportTls,
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let cfg = if mode == TransportTls::Verify {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(p) => {
                for c in crate::tls::load_certs(p).map_err(|e| e.to_string())? {
                    roots.add(c).map_err(|e| e.to_string())?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

impl SmtpClient {
    async fn read_reply(&mut self, timeout: Duration) -> Result<SmtpReply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(timeout, self.r.read_line(&mut line))
                .await
                .map_err(|_| ClientError::Network(format!("timeout waiting for {}", self.host)))?
                .map_err(|e| ClientError::Network(format!("{}: {e}", self.host)))?;
            if n == 0 {
                return Err(ClientError::Network(format!(
                    "{} closed the connection",
                    self.host
                )));
            }
            if line.len() > 2048 || lines.len() > 200 {
                return Err(ClientError::Network(format!(
                    "{} sent an oversized reply",
                    self.host
                )));
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            if line.len() < 3 || !line.as_bytes()[..3].iter().all(|b| b.is_ascii_digit()) {
                return Err(ClientError::Network(format!(
                    "{} sent a malformed reply: {line:?}",
                    self.host
                )));
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(parse_reply_lines(&lines));
            }
        }
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let w = self.r.get_mut();
        tokio::time::timeout(COMMAND_TIMEOUT, async {
            w.write_all(data).await?;
            w.flush().await
        })
        .await
        .map_err(|_| ClientError::Network(format!("timeout writing to {}", self.host)))?
        .map_err(|e| ClientError::Network(format!("{}: {e}", self.host)))
    }

    async fn command(&mut self, line: &str) -> Result<SmtpReply, ClientError> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(COMMAND_TIMEOUT).await
    }

    async fn greet(&mut self, helo_name: &str) -> Result<(), ClientError> {
        let verb = if self.lmtp { "LHLO" } else { "EHLO" };
        let r = self.command(&format!("{verb} {helo_name}")).await?;
        if r.code == 250 {
            self.ext = r
                .lines
                .iter()
                .skip(1)
                .map(|l| l.to_ascii_uppercase())
                .collect();
            self.size_limit = self
                .ext
                .iter()
                .find_map(|e| e.strip_prefix("SIZE ").and_then(|n| n.trim().parse().ok()))
                .filter(|n| *n > 0);
            return Ok(());
        }
        if self.lmtp {
            return Err(ClientError::Reply(r));
        }
        let r = self.command(&format!("HELO {helo_name}")).await?;
        if r.code != 250 {
            return Err(ClientError::Reply(r));
        }
        self.ext.clear();
        Ok(())
    }

    pub fn has(&self, ext: &str) -> bool {
        self.ext
            .iter()
            .any(|e| e == ext || e.starts_with(&format!("{ext} ")))
    }

    /// Connect, read the banner, greet, and STARTTLS as the mode asks.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        kind: TransportKind,
        tls_mode: TransportTls,
        tls_config: Arc<rustls::ClientConfig>,
        helo_name: &str,
        connect_timeout: Duration,
    ) -> Result<SmtpClient, ClientError> {
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Network(format!("connect to {addr}: timeout")))?
            .map_err(|e| ClientError::Network(format!("connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut c = SmtpClient {
            r: BufReader::new(Box::new(tcp)),
            peer: addr,
            host: host.to_string(),
            ext: HashSet::new(),
            size_limit: None,
            tls: false,
            lmtp: kind == TransportKind::Lmtp,
            banner: String::new(),
        };
        let banner = c.read_reply(COMMAND_TIMEOUT).await?;
        if banner.code != 220 {
            return Err(ClientError::Reply(banner));
        }
        c.banner = banner.text();
        c.greet(helo_name).await?;
        if tls_mode == TransportTls::None {
            return Ok(c);
        }
        if !c.has("STARTTLS") {
            if tls_mode == TransportTls::Opportunistic {
                return Ok(c);
            }
            return Err(ClientError::Local(SmtpReply::with(
                451,
                "4.7.5",
                format!("{host} does not offer STARTTLS, which the transport requires"),
            )));
        }
        let r = c.command("STARTTLS").await?;
        if r.code != 220 {
            if tls_mode == TransportTls::Opportunistic {
                return Ok(c);
            }
            return Err(ClientError::Reply(r));
        }
        // Nothing may be buffered past the 220 (a server injecting data).
        if !c.r.buffer().is_empty() {
            return Err(ClientError::Network(format!(
                "{host} sent data after 220 to STARTTLS"
            )));
        }
        let io = c.r.into_inner();
        let name = rustls::pki_types::ServerName::try_from(host.trim_end_matches('.').to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(tls_config);
        let tls = tokio::time::timeout(COMMAND_TIMEOUT, connector.connect(name, io))
            .await
            .map_err(|_| ClientError::Network(format!("TLS handshake with {host}: timeout")))?
            .map_err(|e| ClientError::Network(format!("TLS handshake with {host}: {e}")))?;
        c.r = BufReader::new(Box::new(tls));
        c.tls = true;
        c.greet(helo_name).await?;
        Ok(c)
    }

    /// Send one message; returns one reply per recipient (in order).
    /// Connection-level failures are `Err`.
    pub async fn send_message(
        &mut self,
        env: &Envelope<'_>,
    ) -> Result<Vec<SmtpReply>, ClientError> {
        if let Some(limit) = self.size_limit {
            if env.body.len() as u64 > limit {
                return Err(ClientError::Local(SmtpReply::with(
                    552,
                    "5.3.4",
                    format!(
                        "message size {} exceeds {}'s limit {limit}",
                        env.body.len(),
                        self.host
                    ),
                )));
            }
        }
        if env.smtputf8 && !self.has("SMTPUTF8") {
            return Err(ClientError::Local(SmtpReply::with(
                553,
                "5.6.7",
                format!(
                    "{} does not support SMTPUTF8, required by this message",
                    self.host
                ),
            )));
        }
        let dsn = self.has("DSN");
        let mut mail = format!("MAIL FROM:<{}>", env.sender);
        if self.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", env.body.len()));
        }
        if env.eight_bit && self.has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if dsn {
            if let Some(r) = env.ret {
                mail.push_str(&format!(" RET={r}"));
            }
            if let Some(e) = env.envid {
                mail.push_str(&format!(" ENVID={}", xtext_encode(e)));
            }
        }
        let rcpt_lines: Vec<String> = env
            .recipients
            .iter()
            .map(|(a, p)| match (dsn, p) {
                (true, Some(p)) if !p.is_empty() => format!("RCPT TO:<{a}> {p}"),
                _ => format!("RCPT TO:<{a}>"),
            })
            .collect();
        let (mail_reply, rcpt_replies, data_reply) = if self.has("PIPELINING") {
            let mut batch = format!("{mail}\r\n");
            for l in &rcpt_lines {
                batch.push_str(l);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.send(batch.as_bytes()).await?;
            let m = self.read_reply(COMMAND_TIMEOUT).await?;
            let mut rs = Vec::new();
            for _ in &rcpt_lines {
                rs.push(self.read_reply(COMMAND_TIMEOUT).await?);
            }
            let d = self.read_reply(COMMAND_TIMEOUT).await?;
            (m, rs, d)
        } else {
            let m = self.command(&mail).await?;
            if m.code != 250 {
                return Err(ClientError::Reply(m));
            }
            let mut rs = Vec::new();
            for l in &rcpt_lines {
                rs.push(self.command(l).await?);
            }
            if !rs.iter().any(|r| r.code / 100 == 2) {
                let _ = self.command("RSET").await;
                return Ok(rs);
            }
            let d = self.command("DATA").await?;
            (m, rs, d)
        };
        if mail_reply.code != 250 {
            if data_reply.code == 354 {
                // Pipelined DATA was accepted although MAIL failed: end it empty.
                self.send(b".\r\n").await?;
                let _ = self.read_reply(DATA_TIMEOUT).await;
            }
            let _ = self.command("RSET").await;
            return Err(ClientError::Reply(mail_reply));
        }
        let accepted: Vec<usize> = rcpt_replies
            .iter()
            .enumerate()
            .filter(|(_, r)| r.code / 100 == 2)
            .map(|(i, _)| i)
            .collect();
        if data_reply.code != 354 {
            let _ = self.command("RSET").await;
            if accepted.is_empty() {
                return Ok(rcpt_replies);
            }
            return Err(ClientError::Reply(data_reply));
        }
        if accepted.is_empty() {
            // All recipients refused but DATA was accepted (pipelining): send nothing.
            self.send(b".\r\n").await?;
            let _ = self.read_reply(DATA_TIMEOUT).await;
            return Ok(rcpt_replies);
        }
        let mut data = dot_stuff(env.body);
        data.extend_from_slice(b".\r\n");
        tokio::time::timeout(DATA_TIMEOUT, self.send(&data))
            .await
            .map_err(|_| ClientError::Network(format!("timeout sending data to {}", self.host)))?
            .map_err(|e| e.during("while sending the message data"))?;
        let mut out = rcpt_replies;
        if self.lmtp {
            for i in accepted {
                out[i] = self
                    .read_reply(DATA_TIMEOUT)
                    .await
                    .map_err(|e| e.during("waiting for the reply to the message data"))?;
            }
        } else {
            let r = self
                .read_reply(DATA_TIMEOUT)
                .await
                .map_err(|e| e.during("waiting for the reply to the message data"))?;
            for i in accepted {
                out[i] = r.clone();
            }
        }
        Ok(out)
    }

    /// Ask whether the server would take `rcpt`: `MAIL FROM:<>` then
    /// `RCPT TO:<rcpt>`, each answered within `timeout`; never DATA. The
    /// RCPT reply is the answer (the caller ends the transaction with
    /// [`Self::rset`] or [`Self::quit`]); a refused MAIL is `Err(Reply)`,
    /// since it says nothing of the recipient.
    pub async fn probe(&mut self, rcpt: &str, timeout: Duration) -> Result<SmtpReply, ClientError> {
        self.send(b"MAIL FROM:<>\r\n").await?;
        let m = self.read_reply(timeout).await?;
        if m.code != 250 {
            return Err(ClientError::Reply(m));
        }
        self.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await?;
        self.read_reply(timeout).await
    }

    /// RSET answered 250 within `timeout`: the connection can serve again.
    pub async fn rset_within(&mut self, timeout: Duration) -> bool {
        if self.send(b"RSET\r\n").await.is_err() {
            return false;
        }
        matches!(self.read_reply(timeout).await, Ok(r) if r.code == 250)
    }

    pub async fn rset(&mut self) -> bool {
        matches!(self.command("RSET").await, Ok(r) if r.code == 250)
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.command("QUIT")).await;
    }
}

/// RFC 5321 §4.5.2 transparency; also makes sure the data ends in CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub use crate::proto::params::xtext_encode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_and_xtext() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n");
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn reply_parsing() {
        let r = parse_reply_lines(&["550-5.1.1 no such".into(), "550 5.1.1 user".into()]);
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, EnhancedCode::parse("5.1.1"));
        assert_eq!(r.lines, vec!["no such", "user"]);
    }
}
