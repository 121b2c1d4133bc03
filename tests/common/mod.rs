//! Test harness: start the real daemon in-process on loopback with an inline
//! config and a temporary data dir, and talk to it with a small SMTP client
//! whose calls read like the protocol.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::daemon::Daemon;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const STEP: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
}

/// Write a self-signed certificate for "localhost" into `dir`; returns (cert, key) paths.
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

impl TestServer {
    /// `extra` is TOML appended to a base config; it may define `[[listener]]`s
    /// (then they replace the default one; use address "127.0.0.1:0").
    pub async fn start(extra: &str) -> TestServer {
        // Logs of the server under test, visible with RUST_LOG=... and --nocapture.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make_cert(dir.path());
        let listeners = if extra.contains("[[listener]]") {
            String::new()
        } else {
            "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\n".to_string()
        };
        // Tests never resolve real domains: unless a test routes mail itself,
        // the next hop is a closed loopback port.
        let transport = if extra.contains("[transport.default]") {
            ""
        } else {
            "\n[transport.default]\nhost = \"127.0.0.1:9\"\ntls = \"none\"\n"
        };
        // Nor does anything ask the machine's resolver: without a test DNS
        // server the built-in eod's Authentication-Results (on by default,
        // tested in tests/auth_results.rs) is off.
        let dns = if extra.contains("[dns]") || extra.contains("[auth]") {
            ""
        } else {
            "\n[auth]\nresults = false\n"
        };
        let toml = format!(
            "hostname = \"mx.test.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n{listeners}{extra}{transport}{dns}\n[tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
            dir.path().join("var"),
            dir.path().join("var/control.sock"),
            cert,
            key,
        );
        let cfg = Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let daemon = Daemon::start(cfg).await.unwrap();
        TestServer {
            daemon: Some(daemon),
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr_of("inbound")
    }

    pub fn addr_of(&self, id: &str) -> SocketAddr {
        self.daemon.as_ref().unwrap().addr(id).unwrap()
    }

    pub fn store(&self) -> &sluice::store::Store {
        &self.daemon.as_ref().unwrap().store
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub async fn client(&self) -> Client<TcpStream> {
        Client::connect(self.addr()).await
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

pub struct Client<S> {
    pub s: S,
    buf: Vec<u8>,
}

/// A reply: code and the text of all lines joined by '\n'.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let s = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client { s, buf: Vec::new() }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Client { s, buf: Vec::new() }
    }

    pub fn into_inner(self) -> (S, Vec<u8>) {
        (self.s, self.buf)
    }

    pub async fn send_raw(&mut self, data: &[u8]) {
        tokio::time::timeout(STEP, self.s.write_all(data))
            .await
            .unwrap()
            .unwrap();
    }

    /// Read one (possibly multi-line) reply; None on EOF.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let pos = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                let mut tmp = [0u8; 4096];
                let n = tokio::time::timeout(STEP, self.s.read(&mut tmp))
                    .await
                    .expect("reply timed out")
                    .unwrap_or(0);
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&tmp[..n]);
            };
            let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let line = String::from_utf8_lossy(&line[..pos]).to_string();
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return Some(Reply {
                    code,
                    text: lines.join("\n"),
                });
            }
        }
    }

    pub async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .expect("connection closed, expected a reply")
    }

    /// Expect a reply starting with `prefix` (e.g. "250", "550 5.7.1").
    pub async fn expect(&mut self, prefix: &str) -> Reply {
        let r = self.reply().await;
        let full = format!("{} {}", r.code, r.text);
        assert!(
            full.starts_with(prefix),
            "expected {prefix:?}, got {full:?}"
        );
        r
    }

    /// Send a command line and expect a reply starting with `prefix`.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }

    pub async fn greet(&mut self) {
        self.expect("220").await;
        self.cmd("EHLO client.example.net", "250").await;
    }

    /// MAIL, RCPT, DATA, body (dot-terminated by us), expecting `final_prefix`.
    pub async fn send_message(
        &mut self,
        from: &str,
        to: &[&str],
        body: &str,
        final_prefix: &str,
    ) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.cmd("DATA", "354").await;
        let mut data = body.replace("\r\n.", "\r\n..");
        if data.starts_with('.') {
            data.insert(0, '.');
        }
        self.send_raw(data.as_bytes()).await;
        self.send_raw(b".\r\n").await;
        self.expect(final_prefix).await
    }

    /// Read until EOF; true if the server closed within the step timeout.
    pub async fn closed(&mut self) -> bool {
        let mut tmp = [0u8; 1024];
        loop {
            match tokio::time::timeout(STEP, self.s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A rustls client config trusting exactly the test certificate.
impl Client<TcpStream> {
    /// STARTTLS (expecting 220), then the handshake trusting `cert`: the
    /// same client over TLS (EHLO again before anything else).
    pub async fn starttls(
        mut self,
        cert: &Path,
    ) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
        self.cmd("STARTTLS", "220").await;
        let (tcp, _) = self.into_inner();
        let tls = tokio_rustls::TlsConnector::from(tls_client_config(cert))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        Client::new(tls)
    }
}

pub fn tls_client_config(cert: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

pub const MSG: &str = "From: <a@example.net>\r\nTo: <b@example.org>\r\nSubject: test\r\nMessage-ID: <m1@example.net>\r\n\r\nHello.\r\n";

/// The stored message of the only queue entry, minus our Received header.
pub fn stored_without_received(raw: &[u8]) -> Vec<u8> {
    // The built-in eod's Authentication-Results ([auth] results) comes first.
    let raw = if raw.starts_with(b"Authentication-Results: ") {
        without_first_field(raw)
    } else {
        raw.to_vec()
    };
    assert!(raw.starts_with(b"Received: "), "no Received header first");
    without_first_field(&raw)
}

/// `raw` without its first header field (and the field's continuation lines).
pub fn without_first_field(raw: &[u8]) -> Vec<u8> {
    // A field ends at the first line that does not start with whitespace.
    let mut i = 0;
    loop {
        let e = raw[i..].windows(2).position(|w| w == b"\r\n").unwrap() + i + 2;
        if e >= raw.len() || (raw[e] != b' ' && raw[e] != b'\t') {
            return raw[e..].to_vec();
        }
        i = e;
    }
}

/// The sink's answer rule, swappable while it runs.
pub type SinkRule = Arc<std::sync::Mutex<Box<dyn Fn(&str) -> SinkAnswer + Send>>>;

/// What a sink answers, decided per recipient address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkAnswer {
    Accept,
    TempFail,
    PermFail,
    /// LMTP only: accept at RCPT, refuse after DATA.
    FailAfterData,
    /// 552 5.2.2 at RCPT: mailbox full (permanent).
    OverQuota,
    /// 452 4.2.2 at RCPT: mailbox full (temporary).
    OverQuotaTemp,
    /// Accept at RCPT and 354 DATA, then reset the connection (TCP RST)
    /// after the first line of message data.
    ResetMidData,
}

/// A message a sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub mail_params: String,
    pub rcpt_params: Vec<String>,
    pub data: Vec<u8>,
}

/// A next hop on loopback: SMTP or LMTP, answering by a rule, recording
/// what it accepted. Advertises PIPELINING, SIZE, 8BITMIME, DSN (and
/// SMTPUTF8 unless `no_utf8`).
pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<std::sync::Mutex<Vec<Received>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub rule: SinkRule,
    /// Milliseconds to wait before answering the end of data (a slow next hop).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Advertise DSN (default true); without it the sender of a relayed
    /// message gets its NOTIFY=SUCCESS report from us.
    pub dsn: Arc<std::sync::atomic::AtomicBool>,
}

impl Sink {
    pub async fn start(lmtp: bool, no_utf8: bool) -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap(), lmtp, no_utf8)
            .await
            .unwrap()
    }

    /// A sink on a given loopback address (e.g. 127.0.0.2:PORT for MX tests).
    pub async fn start_on(bind: SocketAddr, lmtp: bool, no_utf8: bool) -> std::io::Result<Sink> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr().unwrap();
        let received: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rule: SinkRule = Arc::new(std::sync::Mutex::new(Box::new(|_: &str| {
            SinkAnswer::Accept
        })));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dsn = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (rec, conns, rl, dl, ds) = (
            received.clone(),
            connections.clone(),
            rule.clone(),
            delay_ms.clone(),
            dsn.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (rec, rl, dl) = (rec.clone(), rl.clone(), dl.clone());
                let dsn = ds.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = sink_session(s, lmtp, no_utf8, dsn, rec, rl, dl).await;
                });
            }
        });
        Ok(Sink {
            addr,
            received,
            connections,
            rule,
            delay_ms,
            dsn,
        })
    }

    pub fn set_dsn(&self, on: bool) {
        self.dsn.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_rule(&self, f: impl Fn(&str) -> SinkAnswer + Send + 'static) {
        *self.rule.lock().unwrap() = Box::new(f);
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait (bounded) until `n` messages arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..300 {
            if self.received.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.messages()
    }
}

async fn sink_session(
    s: TcpStream,
    lmtp: bool,
    no_utf8: bool,
    dsn: bool,
    rec: Arc<std::sync::Mutex<Vec<Received>>>,
    rule: SinkRule,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let (r, mut w) = s.into_split();
    let mut r = tokio::io::BufReader::new(r);
    w.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut from = String::new();
    let mut mail_params = String::new();
    let mut to: Vec<(String, String, SinkAnswer)> = Vec::new();
    let mut line = String::new();
    for _ in 0..10_000 {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let l = line.trim_end().to_string();
        let up = l.to_ascii_uppercase();
        if up.starts_with("EHLO") || up.starts_with("LHLO") {
            let utf8 = if no_utf8 { "" } else { "250-SMTPUTF8\r\n" };
            let last = if dsn { "250 DSN\r\n" } else { "250 HELP\r\n" };
            w.write_all(format!("250-sink.test\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-8BITMIME\r\n{utf8}{last}").as_bytes()).await?;
        } else if up.starts_with("MAIL FROM:") {
            let rest = &l[10..];
            let end = rest.find('>').unwrap_or(0);
            from = rest[1..end].to_string();
            mail_params = rest[end + 1..].trim().to_string();
            to.clear();
            w.write_all(b"250 2.1.0 ok\r\n").await?;
        } else if up.starts_with("RCPT TO:") {
            let rest = &l[8..];
            let end = rest.find('>').unwrap_or(0);
            let addr = rest[1..end].to_string();
            let ans = (rule.lock().unwrap())(&addr);
            match ans {
                SinkAnswer::TempFail => w.write_all(b"451 4.2.0 try later\r\n").await?,
                SinkAnswer::PermFail => w.write_all(b"550 5.1.1 no such user\r\n").await?,
                SinkAnswer::OverQuota => w.write_all(b"552 5.2.2 mailbox full\r\n").await?,
                SinkAnswer::OverQuotaTemp => {
                    w.write_all(b"452 4.2.2 mailbox full, try later\r\n")
                        .await?
                }
                _ => {
                    to.push((addr, rest[end + 1..].trim().to_string(), ans));
                    w.write_all(b"250 2.1.5 ok\r\n").await?
                }
            }
        } else if up == "DATA" {
            if to.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n").await?;
                continue;
            }
            w.write_all(b"354 go\r\n").await?;
            if to.iter().any(|t| t.2 == SinkAnswer::ResetMidData) {
                let mut first = Vec::new();
                r.read_until(b'\n', &mut first).await?;
                let s = r.into_inner().reunite(w).expect("halves of one stream");
                // Linger 0: close sends RST, not FIN.
                s.set_zero_linger()?;
                drop(s);
                return Ok(());
            }
            let mut data = Vec::new();
            loop {
                let mut dl = Vec::new();
                if r.read_until(b'\n', &mut dl).await? == 0 {
                    return Ok(());
                }
                if dl == b".\r\n" {
                    break;
                }
                if dl.starts_with(b"..") {
                    dl.remove(0);
                }
                data.extend_from_slice(&dl);
            }
            let d = delay_ms.load(std::sync::atomic::Ordering::Relaxed);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
            let accepted: Vec<&(String, String, SinkAnswer)> = to
                .iter()
                .filter(|t| t.2 != SinkAnswer::FailAfterData)
                .collect();
            if !accepted.is_empty() {
                rec.lock().unwrap().push(Received {
                    from: from.clone(),
                    to: accepted.iter().map(|t| t.0.clone()).collect(),
                    mail_params: mail_params.clone(),
                    rcpt_params: accepted.iter().map(|t| t.1.clone()).collect(),
                    data,
                });
            }
            if lmtp {
                for t in &to {
                    if t.2 == SinkAnswer::FailAfterData {
                        w.write_all(b"552 5.2.2 mailbox full\r\n").await?;
                    } else {
                        w.write_all(b"250 2.0.0 delivered\r\n").await?;
                    }
                }
            } else {
                w.write_all(b"250 2.0.0 queued as SINK\r\n").await?;
            }
            to.clear();
        } else if up == "RSET" || up == "NOOP" {
            w.write_all(b"250 2.0.0 ok\r\n").await?;
        } else if up == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.1 unknown\r\n").await?;
        }
    }
    Ok(())
}

/// A loopback port that was free a moment ago (for child-process daemons).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sluice run -c cfg` as a child process (killed when dropped).
pub fn spawn_daemon(cfg: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Wait (bounded) until something listens on the port.
pub async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon did not start listening on {port}");
}

/// Poll `f` every 50 ms for at most 15 s.
pub async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Raise this process's open-file soft limit to the hard limit (children
/// spawned afterwards inherit it); returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur
}
