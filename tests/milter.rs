//! The milter client against a scripted fake milter on loopback (the real
//! daemons are in tests/milter_daemons.rs): every stage's verdict honoured
//! at that stage (per recipient at RCPT), the end-of-message actions
//! applied to the relayed message and envelope, quarantine → held,
//! discard → nothing queued and a DELETE record, `transaction.milters` in
//! eod, and a milter that dies, never answers or answers garbage: its
//! `on_error` applies, the daemon stays up, nothing half-modified is queued.
//!
//! The fake speaks the wire format on its own (length, command byte, data),
//! written from the protocol description, not from Sluice's code.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the fake does with one command.
#[derive(Clone)]
enum Answer {
    /// These packets (code, data), in order.
    Send(Vec<(u8, Vec<u8>)>),
    /// Nothing (macros, abort, no-reply stages).
    Silent,
    /// Close the connection.
    Close,
    /// Never answer (keeps the socket open).
    Hang,
    /// These raw bytes.
    Raw(Vec<u8>),
}

/// (connection number, command, data) of everything a fake received.
type Seen = Arc<Mutex<Vec<(usize, u8, Vec<u8>)>>>;

type Rule = dyn Fn(usize, u8, &[u8]) -> Option<Answer> + Send + Sync;

struct FakeMilter {
    addr: String,
    /// (connection number, command, data) of everything received.
    seen: Seen,
}

fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut v = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(code);
    v.extend_from_slice(data);
    v
}

fn cs(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

impl FakeMilter {
    /// `rule` decides the answer; `None` = the normal one (continue, or
    /// nothing for macros/abort).
    async fn start(
        rule: impl Fn(usize, u8, &[u8]) -> Option<Answer> + Send + Sync + 'static,
    ) -> FakeMilter {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::new(rule);
        let n = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = l.accept().await else {
                    return;
                };
                let conn = n.fetch_add(1, Ordering::SeqCst);
                let rule = rule.clone();
                let seen = s2.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 4];
                        if sock.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let len = u32::from_be_bytes(len) as usize;
                        let mut buf = vec![0u8; len];
                        if sock.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let code = buf[0];
                        let data = buf[1..].to_vec();
                        seen.lock().unwrap().push((conn, code, data.clone()));
                        let answer = rule(conn, code, &data).unwrap_or_else(|| match code {
                            b'O' => {
                                let mut d = 6u32.to_be_bytes().to_vec();
                                d.extend_from_slice(&0x1ffu32.to_be_bytes());
                                d.extend_from_slice(&0u32.to_be_bytes());
                                Answer::Send(vec![(b'O', d)])
                            }
                            b'D' | b'A' => Answer::Silent,
                            b'Q' => Answer::Close,
                            _ => Answer::Send(vec![(b'c', vec![])]),
                        });
                        match answer {
                            Answer::Send(ps) => {
                                for (c, d) in ps {
                                    if sock.write_all(&packet(c, &d)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Answer::Silent => {}
                            Answer::Close => return,
                            Answer::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            Answer::Raw(b) => {
                                let _ = sock.write_all(&b).await;
                            }
                        }
                    }
                });
            }
        });
        FakeMilter { addr, seen }
    }

    fn commands(&self) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c, _)| *c)
            .collect()
    }
}

fn config(milter: &FakeMilter, sink: Option<&Sink>, extra: &str) -> String {
    let transport = match sink {
        Some(s) => format!(
            "[transport.default]\nhost = \"{}\"\ntls = \"none\"\n",
            s.addr
        ),
        None => "[queue]\ndeliver = false\n".to_string(),
    };
    format!(
        "[relay]\ndomains = [\"example.org\"]\n[[milter]]\nid = \"fake\"\naddress = \"{}\"\ntimeout = \"1s\"\n{extra}\n{transport}",
        milter.addr
    )
}

const MSG: &str =
    "From: a@example.net\r\nTo: b@example.org\r\nSubject: hello\r\nX-Drop: me\r\n\r\nbody line\r\n";

#[tokio::test]
async fn eom_actions_change_the_relayed_message_and_envelope() {
    let _g = SERIAL.lock().await;
    let milter = FakeMilter::start(|_, code, _| {
        (code == b'E').then(|| {
            let mut chg = 1u32.to_be_bytes().to_vec();
            chg.extend(cs(&["Subject", "changed by milter"]));
            let mut del = 1u32.to_be_bytes().to_vec();
            del.extend(cs(&["X-Drop", ""]));
            let mut ins = 0u32.to_be_bytes().to_vec();
            ins.extend(cs(&["X-First", "top"]));
            Answer::Send(vec![
                (b'p', vec![]),
                (b'h', cs(&["X-Milter", "yes\n\tfolded"])),
                (b'm', chg),
                (b'm', del),
                (b'i', ins),
                (b'+', cs(&["<added@example.org>"])),
                (b'-', cs(&["<gone@example.org>"])),
                (b'b', b"new body\r\n".to_vec()),
                (b'a', vec![]),
            ])
        })
    })
    .await;
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&config(&milter, Some(&sink), "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message(
        "a@example.net",
        &["b@example.org", "gone@example.org"],
        MSG,
        "250",
    )
    .await;
    let got = sink.wait_for(1).await;
    let m = &got[0];
    let text = String::from_utf8_lossy(&m.data).to_string();
    assert!(text.starts_with("X-First: top\r\n"), "{text}");
    assert!(text.contains("\r\nX-Milter: yes\r\n\tfolded\r\n"), "{text}");
    assert!(
        text.contains("\r\nSubject: changed by milter\r\n"),
        "{text}"
    );
    assert!(!text.contains("X-Drop"), "{text}");
    assert!(text.ends_with("\r\n\r\nnew body\r\n"), "{text}");
    let mut to = m.to.clone();
    to.sort();
    assert_eq!(to, vec!["added@example.org", "b@example.org"]);
    // The milter saw every stage, in order, and the macros.
    let cmds = milter.commands();
    let order: Vec<u8> = cmds.iter().copied().filter(|c| *c != b'D').collect();
    let want = b"OCHMRRTL";
    assert_eq!(
        &order[..want.len()],
        want,
        "{:?}",
        String::from_utf8_lossy(&order)
    );
    assert!(order.contains(&b'N') && order.contains(&b'B') && order.contains(&b'E'));
    let seen = milter.seen.lock().unwrap().clone();
    let macros: Vec<String> = seen
        .iter()
        .filter(|(_, c, _)| *c == b'D')
        .map(|(_, _, d)| String::from_utf8_lossy(d).to_string())
        .collect();
    assert!(
        macros
            .iter()
            .any(|m| m.contains("{client_addr}\x00127.0.0.1")),
        "{macros:?}"
    );
    assert!(
        macros
            .iter()
            .any(|m| m.starts_with('M') && m.contains("i\x00")),
        "{macros:?}"
    );
    let helo = seen.iter().find(|(_, c, _)| *c == b'H').unwrap();
    assert_eq!(helo.2, b"client.example.net\0");
    let mail = seen.iter().find(|(_, c, _)| *c == b'M').unwrap();
    assert_eq!(mail.2, b"<a@example.net>\0");
}

#[tokio::test]
async fn verdicts_at_each_stage_and_per_recipient() {
    let _g = SERIAL.lock().await;
    let milter = FakeMilter::start(|_, code, data| match code {
        b'R' if data.starts_with(b"<bad@") => Some(Answer::Send(vec![(
            b'y',
            cs(&["550 5.1.1 no such user here"]),
        )])),
        b'R' if data.starts_with(b"<later@") => Some(Answer::Send(vec![(b't', vec![])])),
        b'M' if data.starts_with(b"<spammer@") => Some(Answer::Send(vec![(b'r', vec![])])),
        _ => None,
    })
    .await;
    let srv = TestServer::start(&config(&milter, None, "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<spammer@example.net>", "550 5.7.1").await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<bad@example.org>", "550 5.1.1 no such user here")
        .await;
    c.cmd("RCPT TO:<later@example.org>", "451 4.7.1").await;
    c.cmd("RCPT TO:<good@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(format!("{MSG}.\r\n").as_bytes()).await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;
    let entries = srv.store().list_entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].recipients.len(), 1);
    assert_eq!(entries[0].recipients[0].recipient, "good@example.org");
    // The history holds the reply the client got.
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.recipient == "bad@example.org"
                && h.reason.contains("550 5.1.1 no such user here")))
        .await,
        "{:?}",
        srv.store().history_all().unwrap()
    );
    let metrics = sluice::metrics::render(None);
    assert!(
        sluice::metrics::sample(
            &metrics,
            "sluice_milter_replies_total{milter=\"fake\",stage=\"rcpt\",reply=\"replycode\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // The refused MAIL's transaction was aborted before the next MAIL? It
    // was refused at MAIL, so the milter saw MAIL twice and ABORT once.
    let cmds = milter.commands();
    assert!(cmds.contains(&b'A'), "{:?}", String::from_utf8_lossy(&cmds));
}

#[tokio::test]
async fn quarantine_holds_and_discard_deletes() {
    let _g = SERIAL.lock().await;
    let milter = FakeMilter::start(|_, code, data| {
        if code == b'L' && data.starts_with(b"Subject\0discard") {
            return Some(Answer::Send(vec![(b'd', vec![])]));
        }
        (code == b'E').then(|| Answer::Send(vec![(b'q', cs(&["looks odd"])), (b'c', vec![])]))
    })
    .await;
    let script = "local m = transaction.milters and transaction.milters.fake\n\
        if not m then Reject('no milters') end\n\
        if m.quarantine ~= 'looks odd' or m.actions[1].action ~= 'quarantine' then Reject('bad report') end\n\
        arguments.mail:queue(transaction.sender, transaction.recipients[1].recipient, 'default')\n\
        Accept()\n";
    let dir = tempfile::tempdir().unwrap();
    let eod = dir.path().join("eod.lua");
    std::fs::write(&eod, script).unwrap();
    let srv = TestServer::start(&config(
        &milter,
        None,
        &format!("[scripts]\neod = {eod:?}\n"),
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let entries = srv.store().list_entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(format!("{:?}", entries[0].state), "Held");
    // Discard: 250, nothing queued, DELETE with who discarded it.
    let body = MSG.replace("Subject: hello", "Subject: discard me");
    c.send_message("a@example.net", &["c@example.org"], &body, "250")
        .await;
    assert_eq!(srv.store().list_entries().unwrap().len(), 1);
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.recipient == "c@example.org"
                && format!("{:?}", h.action) == "Delete"
                && h.reason == "discarded by milter fake"))
        .await,
        "{:?}",
        srv.store().history_all().unwrap()
    );
}

/// One misbehaviour at end of message on the first milter connection;
/// later connections behave.
async fn failing_at_eom(answer: Answer) -> FakeMilter {
    FakeMilter::start(move |conn, code, _| (conn == 0 && code == b'E').then(|| answer.clone()))
        .await
}

#[tokio::test]
async fn a_failing_milter_tempfails_and_nothing_is_queued() {
    let _g = SERIAL.lock().await;
    let cases: Vec<(&str, Answer)> = vec![
        ("killed", Answer::Close),
        ("never answers", Answer::Hang),
        // A header change then a packet claiming 2 GiB.
        (
            "oversized",
            Answer::Raw({
                let mut v = packet(b'h', &cs(&["X-Half", "done"]));
                v.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
                v
            }),
        ),
        // An unknown reply code after a header change.
        (
            "unknown reply",
            Answer::Raw({
                let mut v = packet(b'h', &cs(&["X-Half", "done"]));
                v.extend(packet(b'Z', b""));
                v
            }),
        ),
        // Truncated SMFIR_CHGHEADER (no index).
        ("malformed", Answer::Send(vec![(b'm', vec![1])])),
    ];
    for (case, answer) in cases {
        let milter = failing_at_eom(answer).await;
        let srv = TestServer::start(&config(&milter, None, "")).await;
        let before = sluice::metrics::sample(
            &sluice::metrics::render(None),
            "sluice_scanner_errors_total{scanner=\"milter:fake\",kind=\"timeout\"}",
        )
        .unwrap_or(0.0);
        let mut c = srv.client().await;
        c.greet().await;
        let t = Instant::now();
        c.send_message("a@example.net", &["b@example.org"], MSG, "451 4.7.0")
            .await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{case}: {:?}",
            t.elapsed()
        );
        // The rest of the session: the failed milter keeps tempfailing.
        c.cmd("MAIL FROM:<a@example.net>", "451 4.7.0").await;
        assert!(srv.store().list_entries().unwrap().is_empty(), "{case}");
        // The daemon is up and a new session (a new milter connection) works.
        let mut c2 = srv.client().await;
        c2.greet().await;
        c2.send_message("a@example.net", &["b@example.org"], MSG, "250")
            .await;
        let entries = srv.store().list_entries().unwrap();
        assert_eq!(entries.len(), 1, "{case}");
        if case == "never answers" {
            let after = sluice::metrics::sample(
                &sluice::metrics::render(None),
                "sluice_scanner_errors_total{scanner=\"milter:fake\",kind=\"timeout\"}",
            )
            .unwrap_or(0.0);
            assert!(after > before, "{case}: timeout not counted");
        }
    }
}

#[tokio::test]
async fn on_error_accept_and_reject() {
    let _g = SERIAL.lock().await;
    // A milter that is not there at all.
    let port = free_port();
    let down = FakeMilter {
        addr: format!("127.0.0.1:{port}"),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&config(&down, Some(&sink), "on_error = \"accept\"\n")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let got = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: hello"));

    let srv2 = TestServer::start(&config(&down, None, "on_error = \"reject\"\n")).await;
    let mut c = srv2.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "550 5.7.0").await;
    let srv3 = TestServer::start(&config(&down, None, "")).await;
    let mut c = srv3.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "451 4.7.0").await;
    assert!(srv3.store().list_entries().unwrap().is_empty());
}

/// `sluice check`: bad `[[milter]]` / `[scanners]` values are errors naming
/// the key; an unreachable milter or scanner is only a warning.
#[test]
fn check_validates_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |body: &str| {
        let cfg = dir.path().join("check.toml");
        std::fs::write(
            &cfg,
            format!("data_dir = {:?}\n{body}", dir.path().join("var")),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "-c", cfg.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        )
    };
    let (ok, out) = run("[[milter]]\nid = \"a\"\naddress = \"127.0.0.1:1\"\n[[milter]]\nid = \"a\"\naddress = \"127.0.0.1:2\"\n");
    assert!(!ok && out.contains("milter[1].id"), "{out}");
    let (ok, out) = run("[[milter]]\nid = \"a\"\naddress = \"somewhere\"\n");
    assert!(!ok && out.contains("milter[0].address"), "{out}");
    let sock = dir.path().join("none.sock");
    let (ok, out) = run(&format!(
        "[[milter]]\nid = \"gone\"\naddress = \"127.0.0.1:{}\"\n[scanners.clamd]\naddress = \"unix:{}\"\n",
        free_port(),
        sock.display()
    ));
    assert!(ok, "{out}");
    assert!(out.contains("milter gone: cannot connect"), "{out}");
    assert!(out.contains("[scanners.clamd]: cannot connect"), "{out}");
}

/// Two milters chain as in Postfix: the second sees the message as the
/// first left it, and both edits reach the relayed message.
#[tokio::test]
async fn milters_chain_in_order() {
    let _g = SERIAL.lock().await;
    let first = FakeMilter::start(|_, code, _| {
        (code == b'E').then(|| Answer::Send(vec![(b'h', cs(&["X-One", "first"])), (b'c', vec![])]))
    })
    .await;
    let second = FakeMilter::start(|_, code, _| {
        (code == b'E').then(|| Answer::Send(vec![(b'h', cs(&["X-Two", "second"])), (b'c', vec![])]))
    })
    .await;
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&format!(
        "[relay]\ndomains = [\"example.org\"]\n[[milter]]\nid = \"one\"\naddress = \"{}\"\n[[milter]]\nid = \"two\"\naddress = \"{}\"\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\n",
        first.addr, second.addr, sink.addr
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let got = sink.wait_for(1).await;
    let t = String::from_utf8_lossy(&got[0].data).to_string();
    let (one, two) = (
        t.find("X-One: first").unwrap(),
        t.find("X-Two: second").unwrap(),
    );
    assert!(one < two, "{t}");
    let seen = second.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(_, c, d)| *c == b'L' && d.as_slice() == b"X-One\0first\0"),
        "the second milter did not see the first one's header"
    );
    assert!(!first
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, c, d)| *c == b'L' && d.starts_with(b"X-Two")));
}

/// A refusal at connect answers the greeting (554) and closes; at HELO it
/// answers HELO; SMFIR_CHGFROM changes the envelope sender that is queued.
#[tokio::test]
async fn connect_helo_verdicts_and_change_sender() {
    let _g = SERIAL.lock().await;
    let milter = FakeMilter::start(|conn, code, data| match code {
        b'C' if conn == 0 => Some(Answer::Send(vec![(b'r', vec![])])),
        b'H' if data.starts_with(b"bad.example") => Some(Answer::Send(vec![(b't', vec![])])),
        b'E' => Some(Answer::Send(vec![
            (b'e', cs(&["<bounces@example.org>"])),
            (b'c', vec![]),
        ])),
        _ => None,
    })
    .await;
    let srv = TestServer::start(&config(&milter, None, "")).await;
    let mut c = srv.client().await;
    c.expect("554 5.7.1").await;
    assert!(c.closed().await);
    let mut c = srv.client().await;
    c.expect("220").await;
    c.cmd("EHLO bad.example", "451 4.7.1").await;
    c.cmd("EHLO good.example", "250").await;
    c.send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let e = srv.store().list_entries().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].sender, "bounces@example.org");
}
