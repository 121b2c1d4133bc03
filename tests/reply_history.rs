//! The reply sent is the reply recorded: for every hook that can refuse a
//! recipient and every refusing verdict with custom codes, the history
//! record of each refused recipient holds exactly the code, enhanced code and
//! text the client received — action REJECT for a 5xx, DEFER for a 4xx. And
//! for the hooks before any recipient, the client gets exactly what the
//! script chose. Real SMTP over loopback; the history read from the store.

mod common;
use common::*;

const MSG: &str = "Subject: t\r\n\r\nbody\r\n";
const RCPTS: [&str; 2] = ["a@example.org", "b@example.org"];

/// (verdict call, the reply line the client must get, history action)
const VERDICTS: &[(&str, &str, &str)] = &[
    (
        r#"Defer("greylisted, come back", {reply_codes = {code = 451, enhanced = "4.7.1"}})"#,
        "451 4.7.1 greylisted, come back",
        "DEFER",
    ),
    (
        r#"Reject("no such user here", {reply_codes = {code = 554, enhanced = "5.7.9"}})"#,
        "554 5.7.9 no such user here",
        "REJECT",
    ),
    (
        r#"Reject("spam", {reply_codes = {code = 550, enhanced = false}})"#,
        "550 spam",
        "REJECT",
    ),
    (
        r#"Defer()"#,
        "451 4.7.1 Deferred by policy, try again later",
        "DEFER",
    ),
    (r#"Reject()"#, "550 5.7.1 Rejected by policy", "REJECT"),
];

/// `Reply()` with a negative code is a refusal too (stage hooks).
const REPLIES: &[(&str, &str, &str)] = &[
    (
        r#"Reply("mailbox busy", {reply_codes = {code = 450, enhanced = "4.2.1"}})"#,
        "450 4.2.1 mailbox busy",
        "DEFER",
    ),
    (
        r#"Reply("unknown user", {reply_codes = {code = 550, enhanced = "5.1.1"}})"#,
        "550 5.1.1 unknown user",
        "REJECT",
    ),
];

async fn server(hook: &str, script: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(format!("{hook}.lua"));
    std::fs::write(&p, script).unwrap();
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[scripts]\n{hook} = {p:?}\n"
    ))
    .await;
    (srv, dir)
}

/// Send a two-recipient message; returns the refusal line the client got.
async fn refused_line(srv: &TestServer, hook: &str) -> String {
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@sender.example>", "250").await;
    let line = |r: Reply| format!("{} {}", r.code, r.text);
    if hook == "rcptto" {
        // Both recipients refused, each with the same reply.
        let mut got = Vec::new();
        for r in RCPTS {
            c.send_raw(format!("RCPT TO:<{r}>\r\n").as_bytes()).await;
            got.push(line(c.reply().await));
        }
        assert_eq!(got[0], got[1]);
        return got.remove(0);
    }
    for r in RCPTS {
        c.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    c.send_raw(b"DATA\r\n").await;
    let r = c.reply().await;
    if hook == "data" {
        return line(r);
    }
    assert_eq!(r.code, 354);
    c.send_raw(format!("{MSG}.\r\n").as_bytes()).await;
    line(c.reply().await)
}

async fn assert_recorded(srv: &TestServer, sent: &str, action: &str, case: &str) {
    let ok = wait_until(|| {
        let h = srv.store().history_all().unwrap();
        RCPTS.iter().all(|r| {
            h.iter()
                .any(|x| x.recipient == *r && x.action == action && x.reason == sent)
        })
    })
    .await;
    assert!(
        ok,
        "{case}: client got {sent:?}, history has {:?}",
        srv.store()
            .history_all()
            .unwrap()
            .iter()
            .map(|h| format!("{} {} {}", h.action, h.recipient, h.reason))
            .collect::<Vec<_>>()
    );
    // And nothing else claims a different outcome for them.
    let h = srv.store().history_all().unwrap();
    assert!(
        !h.iter()
            .any(|x| RCPTS.contains(&x.recipient.as_str()) && x.reason != sent),
        "{case}: {h:?}"
    );
    assert!(
        srv.store().list_entries().unwrap().is_empty(),
        "{case}: queued"
    );
}

#[tokio::test]
async fn refusal_reply_equals_history_record() {
    for hook in ["rcptto", "data", "headers", "eod"] {
        let mut verdicts: Vec<&(&str, &str, &str)> = VERDICTS.iter().collect();
        if hook == "rcptto" {
            verdicts.extend(REPLIES.iter());
        }
        for (call, want, action) in verdicts {
            let (srv, _dir) = server(hook, call).await;
            let case = format!("{hook}: {call}");
            let got = refused_line(&srv, hook).await;
            assert_eq!(&got, want, "{case}");
            assert_recorded(&srv, &got, action, &case).await;
        }
    }
}

/// A multi-line reason: the client gets every line, the history the lines
/// joined, with the same code and enhanced code.
#[tokio::test]
async fn multiline_refusal_is_recorded_whole() {
    let (srv, _dir) = server(
        "rcptto",
        r#"Defer({"come back later", "see https://example.org/greylist"}, {reply_codes = {code = 450, enhanced = "4.7.1"}})"#,
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@sender.example>", "250").await;
    c.send_raw(b"RCPT TO:<a@example.org>\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 450);
    assert_eq!(
        r.text,
        "4.7.1 come back later\n4.7.1 see https://example.org/greylist"
    );
    let ok = wait_until(|| {
        srv.store().history_all().unwrap().iter().any(|h| {
            h.action == "DEFER"
                && h.reason == "450 4.7.1 come back later see https://example.org/greylist"
        })
    })
    .await;
    assert!(ok, "{:?}", srv.store().history_all().unwrap());
}

/// Built-in refusals go through the same path: the relay rule and the
/// recipient limit.
#[tokio::test]
async fn builtin_refusals_are_recorded_as_sent() {
    let srv = TestServer::start(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\ntrusted_networks = []\n[limits]\nrecipients = 1\n",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@sender.example>", "250").await;
    c.cmd("RCPT TO:<x@elsewhere.example>", "550 5.7.1 Relaying denied")
        .await;
    c.cmd("RCPT TO:<a@example.org>", "250").await;
    c.cmd("RCPT TO:<b@example.org>", "452 4.5.3 Too many recipients")
        .await;
    let ok = wait_until(|| {
        let h = srv.store().history_all().unwrap();
        h.iter().any(|x| {
            x.recipient == "x@elsewhere.example"
                && x.action == "REJECT"
                && x.reason == "550 5.7.1 Relaying denied"
        }) && h.iter().any(|x| {
            x.recipient == "b@example.org"
                && x.action == "DEFER"
                && x.reason == "452 4.5.3 Too many recipients"
        })
    })
    .await;
    assert!(ok, "{:?}", srv.store().history_all().unwrap());
}

/// Before any recipient (connect, helo, mailfrom) the client gets exactly
/// the script's reply.
#[tokio::test]
async fn stage_refusals_reach_the_client_as_chosen() {
    for (hook, call, want) in [
        (
            "helo",
            r#"Reject("bad helo", {reply_codes = {code = 554, enhanced = "5.7.1"}})"#,
            "554 5.7.1 bad helo",
        ),
        (
            "mailfrom",
            r#"Defer("sender verification pending", {reply_codes = {code = 451, enhanced = "4.7.26"}})"#,
            "451 4.7.26 sender verification pending",
        ),
    ] {
        let (srv, _dir) = server(hook, call).await;
        let mut c = srv.client().await;
        c.expect("220").await;
        if hook == "mailfrom" {
            c.cmd("EHLO client.example.net", "250").await;
            c.cmd("MAIL FROM:<s@sender.example>", want).await;
        } else {
            c.cmd("EHLO client.example.net", want).await;
        }
    }
    let (srv, _dir) = server(
        "connect",
        r#"Defer("too busy", {reply_codes = {code = 421, enhanced = "4.7.0"}})"#,
    )
    .await;
    let mut c = srv.client().await;
    c.expect("421 4.7.0 too busy").await;
    assert!(c.closed().await);
}
