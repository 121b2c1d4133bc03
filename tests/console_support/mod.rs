//! The console and API tests' gateway: the real `sluice run` as a child
//! process on free loopback ports, with `[http]` on, an rcptto script that
//! refuses one user, and a next hop that never answers (so accepted mail
//! stays queued, deferred, for the queue pages and actions). Plus a raw
//! HTTP/1.1 client (one request per connection, as the server speaks) and
//! the CLI over the control socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{free_port, make_cert, spawn_daemon, wait_listening, Client, STEP};

pub const TOKEN: &str = "console-t0ken";

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    child: tokio::process::Child,
}

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A header's value (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Every `Set-Cookie` value.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

impl Gateway {
    /// Start the daemon; `http_extra` is appended to its `[http]` section.
    pub async fn start(http_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make_cert(dir.path());
        let rcptto = dir.path().join("rcptto.lua");
        std::fs::write(
            &rcptto,
            "if arguments.recipient == \"blocked@example.org\" then Reject(\"no such user here\") end\nPass()\n",
        )
        .unwrap();
        let (smtp_port, http_port) = (free_port(), free_port());
        let cfg = dir.path().join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "hostname = \"mx.test.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n\
                 [[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{smtp_port}\"\ntls = \"starttls\"\n\
                 [tls]\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
                 [relay]\ndomains = [\"example.org\"]\ntrusted_networks = []\n\
                 [scripts]\nrcptto = {rcptto:?}\n\
                 [queue]\nmin_retry_delay = \"1h\"\nmax_retry_delay = \"2h\"\n\
                 [transport.default]\nhost = \"127.0.0.1:9\"\ntls = \"none\"\nconnect_timeout = \"1s\"\n\
                 [auth]\nresults = false\n\
                 [http]\naddress = \"127.0.0.1:{http_port}\"\ntoken = \"{TOKEN}\"\n{http_extra}\n",
                dir.path().join("var"),
                dir.path().join("var/control.sock"),
            ),
        )
        .unwrap();
        let child = spawn_daemon(&cfg);
        wait_listening(smtp_port).await;
        wait_listening(http_port).await;
        Gateway {
            smtp: format!("127.0.0.1:{smtp_port}").parse().unwrap(),
            http: format!("127.0.0.1:{http_port}").parse().unwrap(),
            cfg,
            dir,
            child,
        }
    }

    /// `sluice -c <cfg> ARGS` (through the daemon's control socket).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("-c")
            .arg(&self.cfg)
            .args(args)
            .output()
            .unwrap()
    }

    /// `sluice queue list --json`.
    pub fn queue_list(&self) -> Vec<Value> {
        let out = self.cli(&["queue", "list", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().cloned().unwrap()
    }

    /// The queue entry for `rcpt`, through the CLI.
    pub fn entry_for(&self, rcpt: &str) -> Option<Value> {
        self.queue_list()
            .into_iter()
            .find(|e| e["recipients"][0]["recipient"] == rcpt)
    }

    /// `sluice history --json ARGS`.
    pub fn history(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["history", "--json", "--limit", "1000"];
        a.extend_from_slice(args);
        let out = self.cli(&a);
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().cloned().unwrap()
    }

    /// One message over SMTP (STARTTLS when `tls`); returns the final reply text.
    pub async fn send(&self, from: &str, to: &[&str], subject: &str, tls: bool) -> String {
        let body = format!(
            "Subject: {subject}\r\nMessage-ID: <{}@client.example.net>\r\n\r\nhello\r\n",
            subject.replace(' ', "-")
        );
        let mut c = Client::connect(self.smtp).await;
        c.greet().await;
        if tls {
            let mut c = c.starttls(&self.dir.path().join("cert.pem")).await;
            c.cmd("EHLO client.example.net", "250").await;
            let r = c.send_message(from, to, &body, "250").await;
            c.cmd("QUIT", "221").await;
            r.text
        } else {
            let r = c.send_message(from, to, &body, "250").await;
            c.cmd("QUIT", "221").await;
            r.text
        }
    }

    /// A refused recipient (`blocked@example.org`) next to an accepted one.
    pub async fn send_with_refusal(&self, from: &str, ok: &str) {
        let mut c = Client::connect(self.smtp).await;
        c.greet().await;
        c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        c.cmd("RCPT TO:<blocked@example.org>", "550").await;
        c.cmd("RCPT TO:<someone@elsewhere.example>", "5").await;
        c.cmd(&format!("RCPT TO:<{ok}>"), "250").await;
        c.cmd("DATA", "354").await;
        c.send_raw(b"Subject: mixed\r\n\r\nhi\r\n.\r\n").await;
        c.expect("250").await;
        c.cmd("QUIT", "221").await;
    }

    /// One raw HTTP request; `headers` are extra header lines.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpReply {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.http);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                b.len()
            ));
        } else if method == "POST" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        raw(self.http, req.as_bytes()).await
    }

    /// An API request with `token` (None: no Authorization header).
    pub async fn api(&self, method: &str, path: &str, token: Option<&str>) -> HttpReply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        self.http(method, path, &headers, None).await
    }

    /// Wait until the CLI shows `n` queue entries that have been attempted.
    pub async fn wait_deferred(&self, n: usize) {
        for _ in 0..100 {
            let list = self.queue_list();
            if list.len() >= n && list.iter().all(|e| e["attempts"].as_u64() >= Some(1)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{n} deferred entries never showed: {:?}", self.queue_list());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub async fn raw(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("http reply timed out")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    HttpReply {
        status: head[9..12].parse().unwrap(),
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// `name=value` of the first `Set-Cookie` setting `name`.
pub fn cookie_pair(r: &HttpReply, name: &str) -> Option<String> {
    r.set_cookies()
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next().map(|s| s.to_string()))
}

/// The value of the hidden `csrf` field in a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().map(|s| s.to_string())
}
