//! The SMTP server through real sockets: every command path and reply code,
//! the extensions, and bad input. Each test is a short dialogue.

mod common;
use common::*;

use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn full_transaction_is_queued_byte_identical() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    let banner = c.expect("220 mx.test.example").await;
    assert!(
        !banner.text.contains("2.0.0"),
        "no enhanced code on the greeting"
    );
    let ehlo = c.cmd("EHLO client.example.net", "250").await;
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(
            ehlo.text.lines().any(|l| l == ext),
            "missing {ext} in {:?}",
            ehlo.text
        );
    }
    assert!(
        !ehlo.text.contains("STARTTLS"),
        "plain listener must not offer STARTTLS"
    );
    c.cmd(
        "MAIL FROM:<Sender@Example.NET> BODY=8BITMIME SIZE=100",
        "250 2.1.0",
    )
    .await;
    c.cmd("RCPT TO:<User@example.org>", "250 2.1.5").await;
    c.cmd(
        "RCPT TO:<other@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Other+40example.org",
        "250 2.1.5",
    )
    .await;
    c.cmd("DATA", "354").await;
    let body = "From: <a@example.net>\r\nSubject: dots\r\n\r\n..leading dot\r\n.\r\n";
    // Sent dot-stuffed by hand: "..leading dot" is stored as ".leading dot".
    c.send_raw(body.as_bytes()).await;
    let r = c.expect("250 2.0.0 Ok: queued as ").await;
    let id = r.text.rsplit(' ').next().unwrap().to_string();
    c.cmd("QUIT", "221 2.0.0").await;
    assert!(c.closed().await);

    let e = srv.store().get_entry(&id).unwrap().expect("queued entry");
    assert_eq!(e.sender, "sender@example.net");
    assert_eq!(e.recipients.len(), 2);
    assert_eq!(e.recipients[1].dsn.notify, vec!["SUCCESS", "FAILURE"]);
    assert_eq!(
        e.recipients[1].dsn.orcpt,
        Some(("rfc822".into(), "Other@example.org".into()))
    );
    assert!(e.eight_bit);
    assert_eq!(e.client.ip, "127.0.0.1");
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    assert_eq!(
        stored_without_received(&raw),
        b"From: <a@example.net>\r\nSubject: dots\r\n\r\n.leading dot\r\n"
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("Received: from client.example.net (unknown [127.0.0.1])\r\n\tby mx.test.example (Sluice) with ESMTP id "));
    assert_eq!(e.size, 54);
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.expect("220").await;
    c.cmd("MAIL FROM:<a@example.net>", "503 5.5.1").await;
    c.cmd("FOO bar", "500 5.5.1").await;
    c.cmd("EHLO", "501 5.5.4").await;
    c.cmd("HELO client.example.net", "250 mx.test.example")
        .await;
    c.cmd("RCPT TO:<b@example.org>", "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("MAIL FROM:<a@example.net> SIZE=10", "555 5.5.4")
        .await; // no ESMTP params after HELO
    c.cmd("EHLO client.example.net", "250").await;
    c.cmd("MAIL FROM:a@example.net", "501 5.5.4").await;
    c.cmd("MAIL FROM:<a@@example.net>", "501 5.1.7").await;
    c.cmd("MAIL FROM:<a@example.net> FOO=bar", "555 5.5.4")
        .await;
    c.cmd("MAIL FROM:<a@example.net> BODY=BINARYMIME", "555 5.5.4")
        .await;
    c.cmd("MAIL FROM:<a@example.net> RET=MAYBE", "501 5.5.4")
        .await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("MAIL FROM:<a@example.net>", "503 5.5.1").await;
    c.cmd("RCPT TO:<>", "501 5.1.3").await;
    c.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER,SUCCESS", "501 5.5.4")
        .await;
    c.cmd("RCPT TO:<b@example.org> ORCPT=foo", "501 5.5.4")
        .await;
    c.cmd("DATA", "554 5.5.1").await;
    c.cmd("RCPT TO:<postmaster>", "250 2.1.5").await;
    c.cmd("RSET", "250 2.0.0").await;
    c.cmd("DATA", "503 5.5.1").await;
    c.cmd("VRFY someone", "252 2.1.5").await;
    c.cmd("EXPN list", "502 5.5.1").await;
    c.cmd("HELP", "214 2.0.0").await;
    c.cmd("NOOP anything", "250 2.0.0").await;
    c.cmd("RSET now", "501 5.5.4").await;
    c.cmd("STARTTLS", "502 5.5.1").await;
    c.cmd("QUIT", "221").await;
    assert_eq!(srv.store().queue_len(), 0);
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.greet().await;
    // One write, several transactions, garbage in between (RFC 2920).
    let mut batch = String::new();
    for i in 0..3 {
        batch.push_str(&format!(
            "MAIL FROM:<a{i}@example.net>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<x@elsewhere.invalid>\r\nBOGUS\r\nDATA\r\n"
        ));
        batch.push_str(&format!("Subject: {i}\r\n\r\nbody {i}\r\n.\r\n"));
    }
    batch.push_str("QUIT\r\n");
    c.send_raw(batch.as_bytes()).await;
    for _ in 0..3 {
        c.expect("250 2.1.0").await;
        c.expect("250 2.1.5").await;
        c.expect("250 2.1.5").await; // loopback is a trusted network
        c.expect("500 5.5.1").await;
        c.expect("354").await;
        c.expect("250 2.0.0").await;
    }
    c.expect("221").await;
    assert_eq!(srv.store().queue_len(), 3);
}

#[tokio::test]
async fn size_limits() {
    let srv = TestServer::start("[limits]\nmessage_size = 2000\n").await;
    let mut c = srv.client().await;
    let ehlo = {
        c.expect("220").await;
        c.cmd("EHLO x.example", "250").await
    };
    assert!(ehlo.text.contains("SIZE 2000"));
    c.cmd("MAIL FROM:<a@example.net> SIZE=2001", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<a@example.net> SIZE=1999", "250").await;
    c.cmd("RCPT TO:<b@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    let big = format!("Subject: big\r\n\r\n{}.\r\n", "xxxxxxxxx\r\n".repeat(300));
    c.send_raw(big.as_bytes()).await;
    c.expect("552 5.3.4").await;
    // The session goes on.
    c.send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    assert_eq!(srv.store().queue_len(), 1);
}

#[tokio::test]
async fn smtputf8_addresses_need_the_parameter() {
    let srv = TestServer::start("[relay]\ndomains = [\"例子.广告\", \"example.org\"]\n").await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<用户@例子.广告>", "553 5.6.7").await;
    c.cmd("MAIL FROM:<用户@例子.广告> SMTPUTF8", "250").await;
    c.cmd("RCPT TO:<收件人@例子.广告>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw("Subject: ünïcödé\r\n\r\nhi\r\n.\r\n".as_bytes())
        .await;
    let r = c.expect("250").await;
    let id = r.text.rsplit(' ').next().unwrap();
    let e = srv.store().get_entry(id).unwrap().unwrap();
    assert!(e.smtputf8);
    assert_eq!(e.recipients[0].recipient, "收件人@例子.广告");
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("with UTF8SMTP id"));
}

#[tokio::test]
async fn dsn_parameters_are_stored() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd(
        "MAIL FROM:<a@example.net> RET=HDRS ENVID=QQ314159+2Bx",
        "250",
    )
    .await;
    c.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: x\r\n\r\ny\r\n.\r\n").await;
    let r = c.expect("250").await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(e.dsn.ret.as_deref(), Some("HDRS"));
    assert_eq!(e.dsn.envid.as_deref(), Some("QQ314159+x"));
    assert_eq!(e.recipients[0].dsn.notify, vec!["NEVER"]);
    c.cmd("MAIL FROM:<a@example.net> ENVID=bad+zz", "501 5.5.4")
        .await;
}

#[tokio::test]
async fn bdat_chunking() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.greet().await;
    // BDAT without a transaction: the chunk is consumed, then 503.
    c.send_raw(b"BDAT 12\r\nRSET\r\nNOOP\r\n").await;
    c.expect("503 5.5.1").await;
    c.cmd("NOOP", "250").await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<b@example.org>", "250").await;
    // Chunks split a CRLF and contain a lone "." line, which BDAT does not interpret.
    c.send_raw(b"BDAT 16\r\nSubject: c\r\n\r\n.\r").await;
    c.expect("250 2.0.0 16 octets").await;
    c.cmd("DATA", "503 5.5.1").await; // no mixing
    c.cmd("RCPT TO:<c@example.org>", "503 5.5.1").await;
    c.send_raw(b"BDAT 6 LAST\r\n\nend\r\n").await;
    let r = c.expect("250 2.0.0 Ok: queued as").await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    assert_eq!(
        stored_without_received(&raw),
        b"Subject: c\r\n\r\n.\r\nend\r\n"
    );
    // BDAT 0 LAST ends a message; pipelined BDAT with following commands.
    c.send_raw(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nBDAT 11\r\nSubject: \r\nBDAT 0 LAST\r\nNOOP\r\n").await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("250 2.0.0 11 octets").await;
    c.expect("250 2.0.0 Ok: queued").await;
    c.expect("250 2.0.0").await;
    assert_eq!(srv.store().queue_len(), 2);
    // BDAT after HELO is refused, but the chunk is still consumed.
    c.cmd("HELO x.example", "250").await;
    c.send_raw(b"BDAT 4 LAST\r\nQUITNOOP\r\n").await;
    c.expect("503 5.5.1").await;
    c.expect("250").await;
}

#[tokio::test]
async fn bare_lf_nul_and_smuggling_are_rejected() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.greet().await;
    let start = "MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";
    // Bare LF inside a line ending.
    c.send_raw(format!("{start}Subject: x\r\n\r\nline\nmore\r\n.\r\n").as_bytes())
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.expect("550 5.6.11").await;
    // NUL byte.
    c.send_raw(format!("{start}Subject: x\r\n\r\nnul\0here\r\n.\r\n").as_bytes())
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.expect("550 5.6.0").await;
    // Overlong text line.
    c.send_raw(format!("{start}Subject: x\r\n\r\n{}\r\n.\r\n", "a".repeat(1200)).as_bytes())
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.expect("550 5.6.0").await;
    assert_eq!(srv.store().queue_len(), 0);
    // Smuggling: <LF>.<CRLF> followed by a second transaction. Not a terminator:
    // the server rejects and hangs up, the smuggled MAIL is never executed.
    c.send_raw(
        format!("{start}Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n").as_bytes(),
    )
    .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    c.expect("550 5.6.11").await;
    assert!(
        c.try_reply().await.is_none(),
        "no reply to the smuggled commands"
    );
    assert_eq!(srv.store().queue_len(), 0);
}

#[tokio::test]
async fn bare_lf_normalized_when_configured() {
    let srv = TestServer::start("[smtp]\nbare_line_ending = \"normalize\"\n").await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_raw(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        .await;
    c.expect("250").await;
    c.expect("250").await;
    c.expect("354").await;
    // <LF>.<LF> does not end data even here; only <CRLF>.<CRLF> does.
    c.send_raw(b"Subject: x\n\nline\n.\nstill data\r\n.\r\n")
        .await;
    let r = c.expect("250 2.0.0").await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    assert_eq!(
        stored_without_received(&raw),
        b"Subject: x\r\n\r\nline\r\n\r\nstill data\r\n"
    );
}

#[tokio::test]
async fn too_many_recipients_and_loops() {
    let srv = TestServer::start("[limits]\nrecipients = 3\nreceived_headers = 5\n").await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<r{i}@example.org>"), "250").await;
    }
    c.cmd("RCPT TO:<r9@example.org>", "452 4.5.3").await;
    c.cmd("DATA", "354").await;
    let mut m = String::new();
    for i in 0..6 {
        m.push_str(&format!(
            "Received: from hop{i}.example by x; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        ));
    }
    m.push_str("Subject: loop\r\n\r\nbody\r\n.\r\n");
    c.send_raw(m.as_bytes()).await;
    c.expect("554 5.4.6").await;
    assert_eq!(srv.store().queue_len(), 0);
}

#[tokio::test]
async fn overlong_command_line_and_error_limit() {
    let srv = TestServer::start("[limits]\nerrors = 3\n").await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd(&format!("NOOP {}", "x".repeat(600)), "500 5.5.2")
        .await;
    c.cmd("NOOP", "250").await; // still in sync
    c.cmd("XYZZY", "500 5.5.1").await;
    c.send_raw(b"PLUGH\r\n").await;
    c.expect("500 5.5.1").await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn relay_protection_by_domain_and_network() {
    // The PROXY header makes the client an outside address, not loopback.
    let srv = TestServer::start(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n[relay]\ndomains = [\"example.org\", \".sub.example.com\"]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
    )
    .await;
    let mut c = srv.client().await;
    c.send_raw(b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 25\r\n")
        .await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<b@example.org>", "250").await;
    c.cmd("RCPT TO:<b@EXAMPLE.ORG>", "250").await;
    c.cmd("RCPT TO:<b@deep.sub.example.com>", "250").await;
    c.cmd("RCPT TO:<b@sub.example.com>", "550 5.7.1").await;
    c.cmd("RCPT TO:<b@elsewhere.example>", "550 5.7.1").await;
    c.cmd("RCPT TO:<postmaster>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: x\r\n\r\ny\r\n.\r\n").await;
    let r = c.expect("250").await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(e.client.ip, "203.0.113.5");
    let got: Vec<_> = e.recipients.iter().map(|r| r.recipient.as_str()).collect();
    assert_eq!(
        got,
        ["b@example.org", "b@deep.sub.example.com", "postmaster"]
    );

    // A trusted network relays anywhere (PROXY v2 this time).
    let mut c = srv.client().await;
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 10, 1, 2, 3, 127, 0, 0, 1, 0x9c, 0x40, 0, 25,
    ]);
    c.send_raw(&v2).await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<b@elsewhere.example>", "250").await;
}

#[tokio::test]
async fn idle_client_times_out() {
    let srv =
        TestServer::start("[limits]\ncommand_timeout = \"300ms\"\ndata_timeout = \"300ms\"\n")
            .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.expect("421 4.4.2").await;
    assert!(c.closed().await);
    // The same during DATA.
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<b@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: slow\r\n").await;
    c.expect("421 4.4.2").await;
    assert_eq!(srv.store().queue_len(), 0);
}

#[tokio::test]
async fn connection_limits() {
    let srv = TestServer::start("[limits]\nconnections_per_ip = 2\nconnections = 3\n").await;
    let mut a = srv.client().await;
    a.expect("220").await;
    let mut b = srv.client().await;
    b.expect("220").await;
    let mut c = srv.client().await;
    c.expect("421 4.7.0").await;
    assert!(c.closed().await);
    // A different client address (via a PROXY listener would do; here: free a slot).
    a.cmd("QUIT", "221").await;
    assert!(a.closed().await);
    // The slot is released when the session ends.
    let mut ok = None;
    for _ in 0..50 {
        let mut d = srv.client().await;
        let r = d.reply().await;
        if r.code == 220 {
            ok = Some(d);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "slot was not released");
    b.cmd("NOOP", "250").await;
}

#[tokio::test]
async fn starttls_discards_injected_commands_and_resets_state() {
    let srv = TestServer::start(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n",
    )
    .await;
    let mut c = srv.client().await;
    c.expect("220").await;
    let ehlo = c.cmd("EHLO client.example.net", "250").await;
    assert!(ehlo.text.lines().any(|l| l == "STARTTLS"));
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    // Injection attempt: commands after STARTTLS in the same packet.
    c.send_raw(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.net>\r\n")
        .await;
    c.expect("220 2.0.0").await;
    let (tcp, leftover) = c.into_inner();
    assert!(leftover.is_empty());
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&srv.cert_path()));
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    let (_, conn) = tls.get_ref();
    assert!(matches!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3) | Some(rustls::ProtocolVersion::TLSv1_2)
    ));
    let mut c = Client::new(tls);
    // State was reset: MAIL needs a new EHLO. The injected commands got no replies.
    c.cmd("MAIL FROM:<a@example.net>", "503 5.5.1").await;
    let ehlo = c.cmd("EHLO client.example.net", "250").await;
    assert!(!ehlo.text.contains("STARTTLS"));
    c.cmd("STARTTLS", "503 5.5.1").await;
    let r = c
        .send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("(using TLSv1."), "{text}");
    assert!(e.client.tls.is_some());
    assert_eq!(srv.store().queue_len(), 1);
}

#[tokio::test]
async fn implicit_tls_listener() {
    let srv = TestServer::start(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\n[[listener]]\nid = \"smtps\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(srv.addr_of("smtps"))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&srv.cert_path()));
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    c.greet().await;
    let r = c
        .send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(e.client.serverid, "smtps");
    // A plain-text client on the TLS port gets nothing useful and is dropped.
    let mut p = tokio::net::TcpStream::connect(srv.addr_of("smtps"))
        .await
        .unwrap();
    p.write_all(b"EHLO x\r\n").await.unwrap();
    let mut c = Client::new(p);
    assert!(c.closed().await);
}

#[tokio::test]
async fn graceful_shutdown_answers_421_to_idle_clients() {
    let mut srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.greet().await;
    srv.stop().await;
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn queue_cli_over_control_socket() {
    let srv = TestServer::start("").await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let id = r.text.rsplit(' ').next().unwrap().to_string();
    let sock = srv.dir.path().join("var/control.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let list = sluice::control::request(
        &sock,
        &sluice::control::Request::QueueList {
            filter: Default::default(),
        },
    )
    .await
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "queued");
    let show = sluice::control::request(
        &sock,
        &sluice::control::Request::QueueShow { id: id.clone() },
    )
    .await
    .unwrap();
    assert!(show["message"].as_str().unwrap().ends_with(MSG));
    let err = sluice::control::request(
        &sock,
        &sluice::control::Request::QueueShow { id: "nope".into() },
    )
    .await;
    assert!(err.is_err());
}
