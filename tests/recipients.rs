//! Recipient validation at RCPT through the real daemon over loopback: the
//! "map" source, the 550 5.1.1 reply and its history record, what is not
//! validated (relayed recipients, postmaster), an explicit rcptto Accept,
//! `recipient.verify` in a script, reload on SIGHUP (`sluice reload`), the
//! `sluice recipients test` command, and the dialogue from Python smtplib.

mod common;
use common::*;

const MAP: &str = "# mailboxes\nbob@example.org\nCarol@Example.org\n@catchall.example\n!noreply@catchall.example\n";

fn config(dir: &std::path::Path, extra: &str) -> String {
    let map = dir.join("recipients");
    if !map.exists() {
        std::fs::write(&map, MAP).unwrap();
    }
    format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\", \"catchall.example\"]\ntrusted_networks = [\"127.0.0.0/8\"]\n[recipients]\nsources = [\"map\"]\nmap = {map:?}\n{extra}"
    )
}

async fn rcpt(c: &mut Client<tokio::net::TcpStream>, to: &str) -> String {
    c.send_raw(format!("RCPT TO:<{to}>\r\n").as_bytes()).await;
    let r = c.reply().await;
    format!("{} {}", r.code, r.text)
}

async fn sluice(srv: &TestServer, args: &[&str], cfg_text: &str) -> (bool, String) {
    let cfg = srv.dir.path().join("cli.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("-c")
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn unknown_local_recipients_are_refused_at_rcpt() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(&config(dir.path(), "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "CAROL@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "anyone@catchall.example")
        .await
        .starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org").await,
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    assert!(rcpt(&mut c, "noreply@catchall.example")
        .await
        .starts_with("550 5.1.1"));
    // postmaster is always accepted (RFC 5321 §4.5.1); a relayed recipient
    // (trusted client, another domain) is not the map's to judge.
    assert!(rcpt(&mut c, "postmaster@example.org")
        .await
        .starts_with("250"));
    assert!(rcpt(&mut c, "x@elsewhere.example").await.starts_with("250"));
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: v\r\n\r\nhi\r\n.\r\n").await;
    let r = c.expect("250").await;
    let id = r.text.rsplit(' ').next().unwrap().to_string();
    let e = srv.store().get_entry(&id).unwrap().unwrap();
    let mut got: Vec<String> = e.recipients.iter().map(|r| r.recipient.clone()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "anyone@catchall.example",
            "bob@example.org",
            "carol@example.org",
            "postmaster@example.org",
            "x@elsewhere.example"
        ]
    );
    // The refusal is in the history with the reply the client got.
    // History is written behind the replies: wait (bounded) for it.
    let refused = |srv: &TestServer| {
        srv.store()
            .history_all()
            .unwrap()
            .into_iter()
            .find(|h| h.recipient == "nobody@example.org")
    };
    assert!(wait_until(|| refused(&srv).is_some()).await);
    let h = refused(&srv).expect("history of the refused recipient");
    assert_eq!(h.action.as_str(), "REJECT");
    assert!(
        h.reason
            .contains("550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"),
        "{h:?}"
    );
    // Cached: the second ask is answered by the cache.
    let before = sluice::metrics::sample(
        &sluice::metrics::render(None),
        "sluice_recipient_checks_total{source=\"cache\",verdict=\"unknown\"}",
    )
    .unwrap_or(0.0);
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "nobody@example.org")
        .await
        .starts_with("550 5.1.1"));
    let after = sluice::metrics::sample(
        &sluice::metrics::render(None),
        "sluice_recipient_checks_total{source=\"cache\",verdict=\"unknown\"}",
    )
    .unwrap_or(0.0);
    assert!(after >= before + 1.0, "{before} → {after}");
}

#[tokio::test]
async fn reload_rereads_the_map_and_the_cli_answers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(&config(dir.path(), "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "dave@example.org")
        .await
        .starts_with("550 5.1.1"));
    std::fs::write(
        dir.path().join("recipients"),
        format!("{MAP}dave@example.org\n"),
    )
    .unwrap();
    let ctl = format!(
        "control_socket = {:?}\n",
        srv.dir.path().join("var/control.sock")
    );
    let (ok, out) = sluice(&srv, &["reload"], &ctl).await;
    assert!(ok && out.contains("recipient sources"), "{out}");
    // The cache is emptied with the reload.
    assert!(rcpt(&mut c, "dave@example.org").await.starts_with("250"));
    // `sluice recipients test` asks the sources itself.
    let cli = config(dir.path(), "");
    let (ok, out) = sluice(&srv, &["recipients", "test", "dave@example.org"], &cli).await;
    assert!(ok, "{out}");
    assert!(out.contains("map      exists"), "{out}");
    assert!(out.contains("verdict  exists (from map)"), "{out}");
    let (_, out) = sluice(&srv, &["recipients", "test", "zed@example.org"], &cli).await;
    assert!(
        out.contains("map      no answer") && out.contains("verdict  unknown (from none)"),
        "{out}"
    );
    // check names a missing map.
    let bad = cli.replace("recipients\"", "missing\"");
    let (ok, out) = sluice(&srv, &["check"], &bad).await;
    assert!(
        !ok && out.contains("[recipients] map") && out.contains("missing"),
        "{out}"
    );
}

/// Only an explicit Accept() of an rcptto script takes a recipient the
/// validation refuses; `recipient.verify` gives scripts the same answer.
#[tokio::test]
async fn scripts_see_the_validation_and_only_accept_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rcptto.lua");
    std::fs::write(
        &script,
        r#"local verdict, source = recipient.verify(arguments.recipient)
if arguments.recipient == "vip@example.org" then Accept() end
if arguments.recipient == "tagged@example.org" then
  Reply("fine by me", {reply_codes = {code = 250, enhanced = "2.1.5"}})
end
if arguments.recipient:match("^probe") then
  Reject("verify says " .. verdict .. " from " .. source)
end"#,
    )
    .unwrap();
    let srv = TestServer::start(&config(
        dir.path(),
        &format!("[scripts]\nrcptto = {script:?}\n"),
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "vip@example.org").await.starts_with("250"));
    // A positive Reply is not an acceptance: the validation still refuses.
    let r = rcpt(&mut c, "tagged@example.org").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "probe@example.org").await,
        "550 5.7.1 verify says unknown from none"
    );
    assert!(rcpt(&mut c, "probe@catchall.example")
        .await
        .ends_with("verify says exists from map"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_dialogue() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(&config(dir.path(), "")).await;
    let addr = srv.addr();
    let py = r#"
import smtplib, sys, json
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
s.ehlo("py.example")
s.mail("a@sender.example")
out = {"bob": s.rcpt("bob@example.org"), "nobody": s.rcpt("nobody@example.org")}
code, _ = s.data(b"Subject: py\r\n\r\nhi\r\n")
out["data"] = code
s.quit()
print(json.dumps({k: (v if isinstance(v, int) else [v[0], v[1].decode()]) for k, v in out.items()}))
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", py, &addr.ip().to_string(), &addr.port().to_string()])
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("python timed out")
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["bob"][0], 250);
    assert_eq!(v["nobody"][0], 550);
    assert_eq!(
        v["nobody"][1],
        "5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    assert_eq!(v["data"], 250);
}

/// Axigen's isRcptLocal asks the validation: a mailbox the sources do not
/// know is not local, one they know is (isRcptDomainLocal stays the domain).
#[tokio::test]
async fn axigen_is_rcpt_local_asks_the_validation() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("local.axigen");
    std::fs::write(
        &policy,
        "event onRcptTo {\n\tif (allOf (is (isRcptDomainLocal, \"yes\"), is (isRcptLocal, \"no\"))) {\n\t\tset (smtpAction, \"reject\");\n\t\tset (smtpExplanation, \"no mailbox for %currentRcpt% here\");\n\t}\n}\n",
    )
    .unwrap();
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");
    let srv = TestServer::start(&config(
        dir.path(),
        &format!("[scripts]\nlib_path = [{lib:?}]\naxigen = [{policy:?}]\n"),
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    let r = rcpt(&mut c, "ghost@example.org").await;
    assert!(
        r.starts_with("550") && r.contains("no mailbox for ghost@example.org here"),
        "{r}"
    );
}
