//! Sessions driven in memory (no socket): every verb's replies, through the
//! same `Session::run` the listener uses, over a `tokio::io::duplex` pipe.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::Session;
use crate::config::Config;
use crate::policy::PolicyEngine;
use crate::smtp::io::{Conn, Stream};
use crate::smtp::server::{ConnLimiter, Phase, ServerContext};
use crate::store::Store;
use crate::tls::TlsStore;

struct Mem {
    client: DuplexStream,
    buf: Vec<u8>,
    store: Store,
    _phase: tokio::sync::watch::Sender<Phase>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

/// A session on an in-memory pipe with `extra` TOML on a base config.
async fn session(extra: &str, scripts: &[(&str, &str)]) -> Mem {
    let dir = tempfile::tempdir().unwrap();
    // `extra` may start with `[scripts]` keys of its own: merged here.
    let (extra, scripts_extra) = match extra.strip_prefix("[scripts]\n") {
        Some(rest) => ("", rest),
        None => (extra, ""),
    };
    let mut script_toml = format!("[scripts]\n{scripts_extra}");
    for (hook, src) in scripts {
        let p = dir.path().join(format!("{hook}.lua"));
        std::fs::write(&p, src).unwrap();
        script_toml.push_str(&format!("{hook} = {p:?}\n"));
    }
    let toml = format!(
        "hostname = \"mx.mem.example\"\ndata_dir = {:?}\n[[listener]]\nid = \"mem\"\naddress = \"127.0.0.1:0\"\n[relay]\ndomains = [\"example.org\"]\ntrusted_networks = []\n[queue]\ndeliver = false\n{extra}\n{script_toml}",
        dir.path().join("var"),
    );
    let (s, client, store, phase_tx) = new_session(&toml, 64 * 1024);
    let task = tokio::spawn(Box::new(s).run());
    Mem {
        client,
        buf: Vec::new(),
        store,
        _phase: phase_tx,
        _dir: dir,
        task,
    }
}

/// A session on an in-memory pipe of `pipe` bytes, for the config `toml`;
/// returns it with the client's end, the store and the phase sender.
fn new_session(
    toml: &str,
    pipe: usize,
) -> (
    Session,
    tokio::io::DuplexStream,
    Store,
    tokio::sync::watch::Sender<Phase>,
) {
    let config = Arc::new(Config::from_toml_str(toml).unwrap());
    let store = Store::open(&config.data_dir).unwrap();
    let policy = PolicyEngine::load(&config).unwrap();
    let recipients = crate::recipients::Validator::from_config(&config).unwrap();
    policy.set_recipients(recipients.clone());
    let (phase_tx, phase) = tokio::sync::watch::channel(Phase::Running);
    let ctx = Arc::new(ServerContext {
        config: config.clone(),
        store: store.clone(),
        state: policy.state(),
        policy,
        tls: TlsStore::new(None),
        recipients,
        limiter: ConnLimiter::default(),
        phase,
        data_memory: crate::smtp::data::DataMemory::new(config.limits.data_memory),
    });
    let (client, server) = tokio::io::duplex(pipe);
    let listener = Arc::new(config.listener[0].clone());
    let s = Session::new(
        ctx,
        listener,
        Conn::new(Stream::Memory(server)),
        "memconn".into(),
        "192.0.2.7:40000".parse().unwrap(),
        "192.0.2.1:25".parse().unwrap(),
    );
    (s, client, store, phase_tx)
}

impl Mem {
    /// One whole reply (all lines), or "" at EOF.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            while let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                let line = String::from_utf8_lossy(&line[..p]).to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return lines.join("\n");
                }
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.client.read(&mut tmp))
                .await
                .expect("reply timed out")
                .unwrap_or(0);
            if n == 0 {
                return lines.join("\n");
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    async fn send(&mut self, data: &str) {
        self.client.write_all(data.as_bytes()).await.unwrap();
    }

    /// Send a line; the reply must start with `want`.
    async fn cmd(&mut self, line: &str, want: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        let r = self.reply().await;
        assert!(r.starts_with(want), "{line}: expected {want:?}, got {r:?}");
        r
    }

    async fn closed(mut self) -> bool {
        let mut tmp = [0u8; 64];
        let eof = matches!(
            tokio::time::timeout(Duration::from_secs(10), self.client.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        eof
    }
}

#[tokio::test]
async fn greeting_ehlo_helo_and_simple_verbs() {
    let mut s = session("", &[]).await;
    assert!(s.reply().await.starts_with("220 mx.mem.example"));
    let e = s
        .cmd(
            "EHLO client.example",
            "250-mx.mem.example Hello client.example",
        )
        .await;
    for ext in [
        "PIPELINING",
        "SIZE ",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(e.contains(ext), "{ext} in {e}");
    }
    assert!(!e.contains("STARTTLS"), "no TLS configured: {e}");
    assert!(!e.contains("AUTH"), "no auth script: {e}");
    s.cmd("HELO client.example", "250 mx.mem.example Hello")
        .await;
    s.cmd("NOOP", "250 2.0.0").await;
    s.cmd("RSET", "250 2.0.0").await;
    s.cmd("VRFY bob", "252 2.1.5").await;
    s.cmd("EXPN list", "502 5.5.1").await;
    s.cmd("HELP", "214 2.0.0").await;
    s.cmd("STARTTLS", "502 5.5.1").await;
    s.cmd("AUTH PLAIN AGEAYg==", "503 5.5.1").await;
    s.cmd("FOO bar", "500 5.5.1").await;
    s.cmd("QUIT", "221 2.0.0").await;
    assert!(s.closed().await);
}

#[tokio::test]
async fn mail_and_rcpt_rules() {
    let mut s = session("[limits]\nrecipients = 2\nmessage_size = 2000\n", &[]).await;
    s.reply().await;
    s.cmd("MAIL FROM:<a@example.net>", "503 5.5.1").await;
    s.cmd("RCPT TO:<b@example.org>", "503 5.5.1").await;
    s.cmd("EHLO c.example", "250").await;
    s.cmd("MAIL FROM:<a@example.net> SIZE=5000", "552 5.3.4")
        .await;
    s.cmd("MAIL FROM:<a@example.net> FOO=1", "555 5.5.4").await;
    s.cmd("MAIL FROM:<a@example.net> BODY=8BITMIME", "250 2.1.0")
        .await;
    s.cmd("MAIL FROM:<x@example.net>", "503 5.5.1 Nested").await;
    s.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER,SUCCESS", "501 5.5.4")
        .await;
    s.cmd("RCPT TO:<b@example.org> NOTIFY=FAILURE", "250 2.1.5")
        .await;
    s.cmd(
        "RCPT TO:<victim@elsewhere.example>",
        "550 5.7.1 Relaying denied",
    )
    .await;
    s.cmd("RCPT TO:<c@example.org>", "250 2.1.5").await;
    s.cmd("RCPT TO:<d@example.org>", "452 4.5.3").await;
    s.cmd("RCPT TO:<postmaster>", "452 4.5.3").await;
    s.cmd("RSET", "250").await;
    s.cmd("DATA", "503 5.5.1").await;
    s.cmd("MAIL FROM:<>", "250").await;
    s.cmd("RCPT TO:<postmaster>", "250 2.1.5").await;
    s.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn data_queues_and_bdat_queues() {
    let mut s = session("", &[]).await;
    s.reply().await;
    s.cmd("EHLO c.example", "250").await;
    s.cmd("MAIL FROM:<a@example.net>", "250").await;
    s.cmd("DATA", "554 5.5.1").await;
    s.cmd("RCPT TO:<b@example.org>", "250").await;
    s.cmd("DATA", "354").await;
    s.send("Subject: mem\r\n\r\n..dot\r\n.\r\n").await;
    let r = s.reply().await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let id = r.rsplit(' ').next().unwrap().to_string();
    let e = s.store.get_entry(&id).unwrap().unwrap();
    assert_eq!(e.sender, "a@example.net");
    let body = s.store.get_body(&e.body).unwrap().unwrap();
    let text = String::from_utf8_lossy(&body);
    // [auth] results (the default): ours on top, then our Received.
    assert!(text.starts_with("Authentication-Results: "), "{text}");
    assert!(text.contains("\r\nReceived: from c.example"), "{text}");
    assert!(text.ends_with("Subject: mem\r\n\r\n.dot\r\n"), "{text}");

    s.cmd("MAIL FROM:<a@example.net>", "250").await;
    s.cmd("RCPT TO:<c@example.org>", "250").await;
    s.send("BDAT 5\r\nabc\r\n").await;
    assert!(s.reply().await.starts_with("250 2.0.0 5 octets"));
    s.send("BDAT 5 LAST\r\ndef\r\n").await;
    let r = s.reply().await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    s.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn smuggled_dot_closes_and_is_recorded() {
    let mut s = session("", &[]).await;
    s.reply().await;
    s.cmd("EHLO c.example", "250").await;
    s.cmd("MAIL FROM:<a@example.net>", "250").await;
    s.cmd("RCPT TO:<b@example.org>", "250").await;
    s.cmd("DATA", "354").await;
    s.send("Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.net>\r\n")
        .await;
    let r = s.reply().await;
    assert!(r.starts_with("550 5.6.11"), "{r}");
    let store = s.store.clone();
    assert!(s.closed().await);
    assert!(store.list_entries().unwrap().is_empty());
}

#[tokio::test]
async fn stage_hooks_in_memory() {
    let mut s = session(
        "",
        &[
            ("helo", r#"if arguments.host == "bad.example" then Reject("go away") end"#),
            (
                "mailfrom",
                r#"if transaction.sender == "x@spam.example" then Defer("later", {reply_codes = {code = 450, enhanced = "4.7.1"}}) end"#,
            ),
            (
                "rcptto",
                r#"if transaction.recipients[1] then Accept({reason = "second ok"}) end"#,
            ),
        ],
    )
    .await;
    s.reply().await;
    s.cmd("EHLO bad.example", "550 5.7.1 go away").await;
    s.cmd("EHLO good.example", "250").await;
    s.cmd("MAIL FROM:<x@spam.example>", "450 4.7.1 later").await;
    s.cmd("MAIL FROM:<a@example.net>", "250").await;
    // The first recipient: no decision, the relay rule refuses a foreign one.
    s.cmd("RCPT TO:<v@elsewhere.example>", "550 5.7.1").await;
    s.cmd("RCPT TO:<b@example.org>", "250 2.1.5 Recipient OK")
        .await;
    // With one accepted, the script accepts explicitly: its own reply.
    s.cmd("RCPT TO:<v@elsewhere.example>", "250 2.1.5 second ok")
        .await;
    s.cmd("QUIT", "221").await;
}

#[tokio::test]
async fn proxy_rewrites_and_answers() {
    let mut s = session(
        "[scripts]\nproxy_commands = [\"XCLIENT\", \"RCPT\"]\n",
        &[(
            "proxy",
            r#"if arguments.command:match("^XCLIENT") then Reply("not here", {reply_codes = {code = 502, enhanced = "5.5.1"}}) end
if arguments.command == "RCPT TO:<alias@example.org>" then Pass({command = "RCPT TO:<victim@elsewhere.example>"}) end"#,
        )],
    )
    .await;
    s.reply().await;
    s.cmd("EHLO c.example", "250").await;
    s.cmd("XCLIENT ADDR=1.2.3.4", "502 5.5.1 not here").await;
    s.cmd("MAIL FROM:<a@example.net>", "250").await;
    // The rewritten RCPT meets the relay rule.
    s.cmd("RCPT TO:<alias@example.org>", "550 5.7.1 Relaying denied")
        .await;
    s.cmd("RCPT TO:<b@example.org>", "250").await;
    s.cmd("QUIT", "221").await;
}

/// What an idle connection's task holds is this future: it must stay
/// small (19,000 idle connections are measured by benches/compare.sh; a
/// Session passed by value used to sit in it twice, 3,272 bytes).
#[tokio::test]
async fn idle_session_future_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "hostname = \"mx.mem.example\"\ndata_dir = {:?}\n[[listener]]\nid = \"mem\"\naddress = \"127.0.0.1:0\"\n",
        dir.path().join("var"),
    );
    let (s, _client, _store, _phase) = new_session(&toml, 1024);
    let session = std::mem::size_of_val(&s);
    let run = std::mem::size_of_val(&Box::new(s).run());
    assert!(
        run < 1536 && run < session * 2,
        "Session::run future is {run} bytes (Session {session}): something large is held across an await, box it"
    );
}
