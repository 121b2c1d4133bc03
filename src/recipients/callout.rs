//! The "callout" source: ask the mailstore itself. For each address it
//! probes the next hop of `[recipients] callout_transport`'s transport —
//! the static `host` list, or the MX of the recipient's domain, with the
//! transport's port, kind (EHLO or LHLO) and TLS setting — with
//! `MAIL FROM:<>` and `RCPT TO:<address>`, never DATA, and reads the RCPT
//! reply: 2xx exists, 5xx unknown, 4xx tempfail. A server that cannot be
//! reached (refused, timeout, TLS failure, a refused greeting or MAIL) is a
//! tempfail with the reason, after the next hop in order was tried.
//!
//! After a probe the transaction is reset (RSET) and the connection kept
//! for the next probe to the same address, a few per destination; a
//! connection that fails or idles past [`IDLE`] is closed (QUIT). At most
//! the transport's `connections_per_destination` probes run at once per
//! destination (a semaphore, so at most that many connections exist), and
//! every wait is bounded: connecting by the transport's `connect_timeout`,
//! each reply by `callout_timeout`.
//!
//! It owns its connections and their pool. It must not cache answers (the
//! [`super::Validator`] does), speak SMTP itself (the delivery client's
//! [`SmtpClient::probe`] does), nor share connections with delivery: a
//! probe's connection holds an open `MAIL FROM:<>` transaction between
//! its commands, which delivery must never inherit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::debug;

use super::{BoxFuture, RecipientSource, SourceAnswer};
use crate::config::{Config, TransportConfig};
use crate::delivery::client::{client_tls_config, ClientError, SmtpClient};
use crate::delivery::route::{next_hops, RouteError};
use crate::scan::dns::Dns;

/// A pooled connection idle longer than this is closed rather than reused:
/// servers drop idle clients (Postfix after `smtpd_timeout`, 300s), and a
/// short idle keeps a reused connection's failure rare.
pub const IDLE: Duration = Duration::from_secs(30);

/// One destination (next-hop address): its probe slots and idle connections.
struct Destination {
    slots: Arc<Semaphore>,
    idle: Vec<(SmtpClient, Instant)>,
}

pub struct CalloutSource {
    transport_name: String,
    transport: TransportConfig,
    tls_config: Arc<rustls::ClientConfig>,
    helo_name: String,
    reply_timeout: Duration,
    /// The domain `check()` resolves when the transport routes by MX.
    check_domain: Option<String>,
    dns: Dns,
    pool: Mutex<HashMap<SocketAddr, Destination>>,
}

/// How one probe ended.
enum Probe {
    Answer(SourceAnswer),
    /// The server could not be asked; the next hop may be.
    Failed(String),
}

impl CalloutSource {
    /// The source `[recipients]` describes; the error names what is wrong.
    pub fn from_config(cfg: &Config) -> Result<CalloutSource, String> {
        let name = &cfg.recipients.callout_transport;
        let t = cfg.transport.get(name).ok_or_else(|| {
            format!("callout_transport = {name:?}: no [transport.{name}] is configured")
        })?;
        let tls_config = client_tls_config(t.tls, t.ca_file.as_deref())
            .map_err(|e| format!("[transport.{name}] TLS: {e}"))?;
        Ok(CalloutSource {
            transport_name: name.clone(),
            transport: t.clone(),
            tls_config,
            helo_name: cfg.hostname.clone(),
            reply_timeout: cfg.recipients.callout_timeout,
            check_domain: cfg
                .relay
                .domains
                .iter()
                .map(|d| d.trim_start_matches('.').to_string())
                .find(|d| !d.is_empty()),
            dns: Dns::new(&cfg.dns),
            pool: Mutex::new(HashMap::new()),
        })
    }

    fn slots(&self, addr: SocketAddr) -> Arc<Semaphore> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.transport.connections_per_destination.max(1);
        pool.entry(addr)
            .or_insert_with(|| Destination {
                slots: Arc::new(Semaphore::new(cap)),
                idle: Vec::new(),
            })
            .slots
            .clone()
    }

    /// A connection idle for less than [`IDLE`], newest first; the stale
    /// ones are handed back to be closed.
    fn take_idle(&self, addr: SocketAddr) -> (Option<SmtpClient>, Vec<SmtpClient>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = pool.get_mut(&addr) else {
            return (None, Vec::new());
        };
        let now = Instant::now();
        let (fresh, stale): (Vec<_>, Vec<_>) = d
            .idle
            .drain(..)
            .partition(|(_, since)| now.duration_since(*since) < IDLE);
        d.idle = fresh;
        let c = d.idle.pop().map(|(c, _)| c);
        (c, stale.into_iter().map(|(c, _)| c).collect())
    }

    fn put_idle(&self, addr: SocketAddr, c: SmtpClient) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = pool.get_mut(&addr) {
            d.idle.push((c, Instant::now()));
        }
    }

    async fn connect(&self, host: &str, addr: SocketAddr) -> Result<SmtpClient, String> {
        crate::metrics::recipient_probe_connection();
        // The client's own reply timeout is delivery's (minutes); the
        // probe's greeting gets the transport's connect time plus one
        // reply timeout altogether.
        let t = &self.transport;
        let connect = SmtpClient::connect(
            addr,
            host,
            t.kind,
            t.tls,
            self.tls_config.clone(),
            &self.helo_name,
            t.connect_timeout,
        );
        match tokio::time::timeout(t.connect_timeout + self.reply_timeout, connect).await {
            Err(_) => Err(format!("{host} ({addr}): no greeting in time")),
            Ok(Err(ClientError::Network(e))) => Err(e),
            Ok(Err(ClientError::Reply(r) | ClientError::Local(r))) => {
                Err(format!("{host} ({addr}) refused the session: {r}"))
            }
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// One probe at one destination, on a pooled connection if there is
    /// one (again on a new one when that fails: the server may have
    /// dropped it meanwhile).
    async fn probe_at(&self, host: &str, addr: SocketAddr, address: &str) -> Probe {
        let slots = self.slots(addr);
        let wait = self.transport.connect_timeout + self.reply_timeout;
        let _slot = match tokio::time::timeout(wait, slots.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Probe::Failed(format!(
                    "{host} ({addr}): all {} probe connections busy",
                    self.transport.connections_per_destination
                ))
            }
        };
        let (pooled, stale) = self.take_idle(addr);
        for c in stale {
            c.quit().await;
        }
        if let Some(c) = pooled {
            match self.ask(c, host, addr, address).await {
                Ok(p) => return p,
                Err(e) => debug!(%host, %addr, error = %e, "pooled callout connection failed"),
            }
        }
        match self.connect(host, addr).await {
            Err(e) => Probe::Failed(e),
            Ok(c) => self
                .ask(c, host, addr, address)
                .await
                .unwrap_or_else(Probe::Failed),
        }
    }

    /// RCPT on `c`: the answer, or why the connection failed before the
    /// server answered about the address (it is dropped): an I/O error, or
    /// a 421 — the server closing, which a pooled connection may meet.
    async fn ask(
        &self,
        mut c: SmtpClient,
        host: &str,
        addr: SocketAddr,
        address: &str,
    ) -> Result<Probe, String> {
        let reply = match c.probe(address, self.reply_timeout).await {
            Ok(r) if r.code == 421 => {
                return Err(format!("{host} ({addr}) closing: {r}"));
            }
            Ok(r) => r,
            Err(ClientError::Network(e)) => return Err(e),
            Err(ClientError::Reply(r) | ClientError::Local(r)) if r.code == 421 => {
                return Err(format!("{host} ({addr}) closing: {r}"));
            }
            Err(ClientError::Reply(r) | ClientError::Local(r)) => {
                c.quit().await;
                return Ok(Probe::Failed(format!(
                    "{host} ({addr}) refused MAIL FROM:<>: {r}"
                )));
            }
        };
        if c.rset_within(self.reply_timeout).await {
            self.put_idle(addr, c);
        } else {
            c.quit().await;
        }
        let answer = match reply.code / 100 {
            2 => SourceAnswer::Exists { rewrite: None },
            5 => SourceAnswer::Unknown,
            _ => SourceAnswer::TempFail(format!("{host} ({addr}) said {reply}")),
        };
        Ok(Probe::Answer(answer))
    }

    async fn hops(&self, domain: &str) -> Result<Vec<(String, SocketAddr)>, String> {
        next_hops(&self.dns, &self.transport, domain)
            .await
            .map_err(|e| match e {
                RouteError::Temporary(e) => e,
                // A domain we take mail for that routes nowhere is a
                // configuration to fix, not an answer about the address.
                RouteError::Permanent(r) => r.to_string(),
            })
    }

    async fn lookup_inner(&self, address: &str) -> SourceAnswer {
        let domain = address.rsplit_once('@').map(|x| x.1).unwrap_or("");
        let hops = match self.hops(domain).await {
            Ok(h) => h,
            Err(e) => return SourceAnswer::TempFail(format!("no next hop: {e}")),
        };
        let mut why = Vec::new();
        for (host, addr) in hops {
            match self.probe_at(&host, addr, address).await {
                Probe::Answer(a) => return a,
                Probe::Failed(e) => why.push(e),
            }
        }
        SourceAnswer::TempFail(why.join("; "))
    }
}

impl RecipientSource for CalloutSource {
    fn name(&self) -> &'static str {
        "callout"
    }

    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, SourceAnswer> {
        Box::pin(async move {
            let answer = self.lookup_inner(address).await;
            crate::metrics::recipient_probe(match &answer {
                SourceAnswer::Exists { .. } => "exists",
                SourceAnswer::Unknown => "unknown",
                SourceAnswer::TempFail(_) | SourceAnswer::NoAnswer => "tempfail",
            });
            answer
        })
    }

    /// Connect to the first next hop, greet, QUIT.
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let domain = match (&self.transport.host, &self.check_domain) {
                (Some(_), _) => "",
                (None, Some(d)) => d.as_str(),
                (None, None) => {
                    return Err(format!(
                        "[transport.{}] routes by MX and relay.domains is empty",
                        self.transport_name
                    ))
                }
            };
            let hops = self
                .hops(domain)
                .await
                .map_err(|e| format!("[transport.{}]: {e}", self.transport_name))?;
            let (host, addr) = hops.into_iter().next().ok_or("no next hop")?;
            let c = self
                .connect(&host, addr)
                .await
                .map_err(|e| format!("[transport.{}] {e}", self.transport_name))?;
            c.quit().await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_the_transport() {
        let cfg = Config::from_toml_str(
            "[recipients]\nsources = [\"callout\"]\ncallout_transport = \"mailstore\"\n",
        )
        .unwrap();
        let e = CalloutSource::from_config(&cfg).err().unwrap();
        assert!(e.contains("[transport.mailstore]"), "{e}");
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A scripted SMTP server: RCPT to ok@ → 250, no@ → 550, later@ → 450,
    /// bye@ → 421 and close on the first connection, 250 on the others;
    /// counts connections.
    async fn fake_server() -> (u16, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let n = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let seen = n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 fake\r\n").await.unwrap();
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let up = line.to_ascii_uppercase();
                        let reply: &[u8] = if up.starts_with("EHLO") {
                            b"250-fake\r\n250 PIPELINING\r\n"
                        } else if up.starts_with("RCPT TO:<OK@") {
                            b"250 2.1.5 ok\r\n"
                        } else if up.starts_with("RCPT TO:<NO@") {
                            b"550 5.1.1 no such user\r\n"
                        } else if up.starts_with("RCPT TO:<LATER@") {
                            b"450 4.2.1 try later\r\n"
                        } else if up.starts_with("RCPT TO:<BYE@") && seen == 0 {
                            // The first connection dies as an idle one would.
                            let _ = w.write_all(b"421 4.4.2 idle too long\r\n").await;
                            return;
                        } else if up.starts_with("RCPT TO:<BYE@") {
                            b"250 2.1.5 ok\r\n"
                        } else if up.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        (port, conns)
    }

    fn source(port: u16) -> CalloutSource {
        let cfg = Config::from_toml_str(&format!(
            "[recipients]\ncallout_timeout = \"1s\"\n[transport.default]\nhost = \"127.0.0.1:{port}\"\ntls = \"none\"\nconnect_timeout = \"1s\"\n"
        ))
        .unwrap();
        CalloutSource::from_config(&cfg).unwrap()
    }

    #[tokio::test]
    async fn replies_map_to_answers_over_one_connection() {
        let (port, conns) = fake_server().await;
        let s = source(port);
        assert_eq!(
            s.lookup("ok@example.org").await,
            SourceAnswer::Exists { rewrite: None }
        );
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // The pooled connection answers 421 to bye@ (as a server closing
        // an idle client would): the probe is made again on a new one.
        assert_eq!(
            s.lookup("bye@example.org").await,
            SourceAnswer::Exists { rewrite: None }
        );
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        assert_eq!(s.lookup("no@example.org").await, SourceAnswer::Unknown);
        match s.lookup("later@example.org").await {
            SourceAnswer::TempFail(e) => assert!(e.contains("450 4.2.1 try later"), "{e}"),
            a => panic!("{a:?}"),
        }
        // Reused: no connection beyond the second.
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        s.check().await.unwrap();
    }

    /// Probes at once beyond `connections_per_destination` wait for a slot
    /// instead of opening more connections.
    #[tokio::test]
    async fn probes_per_destination_are_capped() {
        let (port, conns) = fake_server().await;
        let cfg = Config::from_toml_str(&format!(
            "[transport.default]\nhost = \"127.0.0.1:{port}\"\ntls = \"none\"\nconnections_per_destination = 2\n"
        ))
        .unwrap();
        let s = CalloutSource::from_config(&cfg).unwrap();
        let addrs: Vec<String> = (0..8).map(|i| format!("ok@d{i}.example")).collect();
        let answers = futures_join(addrs.iter().map(|a| s.lookup(a))).await;
        assert!(answers
            .iter()
            .all(|a| *a == SourceAnswer::Exists { rewrite: None }));
        assert!(conns.load(Ordering::SeqCst) <= 2, "{conns:?}");
    }

    async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in fs {
            set.push(Box::pin(f));
        }
        let mut out = Vec::new();
        // Poll them together: a JoinSet would need 'static futures.
        let all = std::future::poll_fn(|cx| {
            let mut done = true;
            for (i, f) in set.iter_mut().enumerate() {
                if out.len() <= i {
                    out.push(None);
                }
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => done = false,
                    }
                }
            }
            if done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        all.await;
        out.into_iter().map(|v| v.unwrap()).collect()
    }

    /// A server that accepts and says nothing: the probe gives up in
    /// connect_timeout + callout_timeout.
    #[tokio::test]
    async fn a_silent_server_is_a_bounded_tempfail() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let s = source(port);
        let t = Instant::now();
        match s.lookup("ok@example.org").await {
            SourceAnswer::TempFail(e) => assert!(e.contains("no greeting in time"), "{e}"),
            a => panic!("{a:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        drop(l);
    }

    /// A closed port: a tempfail naming the address, quickly.
    #[tokio::test]
    async fn refused_is_a_tempfail_with_the_reason() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let cfg = Config::from_toml_str(&format!(
            "[transport.default]\nhost = \"127.0.0.1:{port}\"\ntls = \"none\"\nconnect_timeout = \"2s\"\n"
        ))
        .unwrap();
        let s = CalloutSource::from_config(&cfg).unwrap();
        let t = Instant::now();
        match s.lookup("bob@example.org").await {
            SourceAnswer::TempFail(e) => assert!(e.contains(&port.to_string()), "{e}"),
            a => panic!("{a:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(s.check().await.unwrap_err().contains(&port.to_string()));
    }
}
