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
        let toml = format!(
            "hostname = \"mx.test.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n{listeners}{extra}\n[tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
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
    assert!(raw.starts_with(b"Received: "), "no Received header first");
    // Our header ends at the first line that does not start with whitespace.
    let mut i = 0;
    loop {
        let e = raw[i..].windows(2).position(|w| w == b"\r\n").unwrap() + i + 2;
        if e >= raw.len() || (raw[e] != b' ' && raw[e] != b'\t') {
            return raw[e..].to_vec();
        }
        i = e;
    }
}
