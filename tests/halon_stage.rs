//! Halon's stage API end to end: `Accept()` in connect, helo, mailfrom and
//! rcptto with their rewrites (the HELO name in our Received header, the
//! envelope sender and recipient in the queued entry, the transport an rcptto
//! `Accept` picks routing the delivery to an LMTP next hop), and
//! `transaction` visible from the connection's start with its id renewed
//! after each message and after RSET.

mod common;
use common::*;

const MSG: &str = "Subject: halon\r\n\r\nbody\r\n";

#[tokio::test]
async fn stage_accepts_rewrite_and_route() {
    let smtp = Sink::start(false, false).await;
    let lmtp = Sink::start(true, false).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let connect = write("connect.lua", "Accept()");
    let helo = write(
        "helo.lua",
        r#"if arguments.host == "old.example" then Accept({host = "renamed.example"}) end"#,
    );
    let mailfrom = write(
        "mailfrom.lua",
        r#"if transaction.sender == "orig@sender.example" then Accept({sender = "rewritten@sender.example"}) end"#,
    );
    let rcptto = write(
        "rcptto.lua",
        r#"if (arguments.recipient or arguments.address) == "alias@example.org" then
  Accept({recipient = "real@example.org", transportid = "mailstore"})
end"#,
    );
    let srv = TestServer::start(&format!(
        "[relay]\ndomains = [\"example.org\"]\ntrusted_networks = []\n[scripts]\nconnect = {connect:?}\nhelo = {helo:?}\nmailfrom = {mailfrom:?}\nrcptto = {rcptto:?}\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\n[transport.mailstore]\nkind = \"lmtp\"\nhost = \"{}\"\ntls = \"none\"\n",
        smtp.addr, lmtp.addr
    ))
    .await;
    let mut c = srv.client().await;
    // connect Accept(): the normal banner, the session goes on.
    c.expect("220 mx.test.example").await;
    c.cmd("EHLO old.example", "250").await;
    c.cmd("MAIL FROM:<orig@sender.example>", "250 2.1.0").await;
    c.cmd("RCPT TO:<alias@example.org>", "250 2.1.5").await;
    c.cmd("RCPT TO:<plain@example.org>", "250 2.1.5").await;
    c.cmd("DATA", "354").await;
    c.send_raw(format!("{MSG}.\r\n").as_bytes()).await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;

    // The LMTP mailstore got the rewritten recipient, the default SMTP hop the other.
    let got = lmtp.wait_for(1).await;
    assert_eq!(got[0].to, vec!["real@example.org".to_string()]);
    assert_eq!(got[0].from, "rewritten@sender.example");
    let raw = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(raw.contains("Received: from renamed.example"), "{raw}");
    let got = smtp.wait_for(1).await;
    assert_eq!(got[0].to, vec!["plain@example.org".to_string()]);
    assert_eq!(got[0].from, "rewritten@sender.example");
}

#[tokio::test]
async fn transaction_exists_from_connect_and_renews() {
    let dir = tempfile::tempdir().unwrap();
    // helo and proxy read transaction.id before any MAIL FROM; mailfrom
    // checks it is the same id; rcptto reports what it saw.
    let helo = dir.path().join("helo.lua");
    std::fs::write(
        &helo,
        r#"context.ids = context.ids or {}
table.insert(context.ids, "helo:" .. transaction.id)
assert(transaction.sender == nil, "no sender before MAIL FROM")
Reply("hello " .. transaction.id)"#,
    )
    .unwrap();
    let mailfrom = dir.path().join("mailfrom.lua");
    std::fs::write(
        &mailfrom,
        r#"Reply("tx " .. transaction.id, {reply_codes = {code = 250, enhanced = "2.1.0"}})"#,
    )
    .unwrap();
    let proxy = dir.path().join("proxy.lua");
    std::fs::write(&proxy, r#"Reply("proxy sees " .. transaction.id)"#).unwrap();
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[scripts]\nhelo = {helo:?}\nmailfrom = {mailfrom:?}\nproxy = {proxy:?}\nproxy_commands = [\"XTXID\"]\n"
    ))
    .await;
    let mut c = srv.client().await;
    c.expect("220").await;
    let h = c.cmd("HELO client.example", "250").await;
    let id0 = h.text.trim_start_matches("hello ").to_string();
    assert_eq!(id0.len(), 16, "{h:?}");
    let p = c.cmd("XTXID", "250").await;
    assert!(p.text.ends_with(&id0), "{p:?} vs {id0}");
    // MAIL FROM opens the transaction scripts already saw.
    let m = c.cmd("MAIL FROM:<s@example.net>", "250").await;
    assert!(m.text.ends_with(&id0), "{m:?}");
    // RSET: a new id.
    c.cmd("RSET", "250").await;
    let p = c.cmd("XTXID", "250").await;
    let id1 = p.text.rsplit(' ').next().unwrap().to_string();
    assert_ne!(id1, id0);
    // After a message: another new id.
    c.cmd("MAIL FROM:<s@example.net>", &format!("250 2.1.0 tx {id1}"))
        .await;
    c.cmd("RCPT TO:<a@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(format!("{MSG}.\r\n").as_bytes()).await;
    c.expect("250 2.0.0 Ok: queued as").await;
    let p = c.cmd("XTXID", "250").await;
    let id2 = p.text.rsplit(' ').next().unwrap().to_string();
    assert_ne!(id2, id1);
    assert_ne!(id2, id0);
}
