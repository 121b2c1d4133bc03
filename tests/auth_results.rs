//! The built-in eod's Authentication-Results (`[auth] results`, on by
//! default), through the real daemon over loopback with a real DNS server:
//! our header on top with spf, dkim and dmarc; every incoming one claiming
//! our authserv-id removed, other hosts' kept; nothing changed when off.

mod authsupport;
mod common;

use authsupport::keys::{message, Key};
use authsupport::standard_zone;
use common::*;

/// A DKIM-signed message from sender.com carrying a forged result of ours
/// and a foreign one.
fn forged_message(dkim: &Key) -> String {
    let signed = dkim.sign("sender.com", "sel", &message("a@sender.com", "hi", 200));
    let mut m = String::from(
        "Authentication-Results: MX.TEST.EXAMPLE; dmarc=pass (forged)\r\n\
         Authentication-Results: other.example; spf=fail\r\n",
    );
    m.push_str(&String::from_utf8_lossy(&signed));
    m
}

async fn queued_body(srv: &TestServer, reply: &Reply) -> String {
    let id = reply.text.rsplit(' ').next().unwrap();
    let e = srv.store().get_entry(id).unwrap().expect("queued");
    String::from_utf8_lossy(&srv.store().get_body(&e.body).unwrap().unwrap()).into_owned()
}

async fn send(extra: &str) -> String {
    let dkim = Key::generate();
    let arc = Key::generate();
    let dns = standard_zone(&dkim, &arc).start().await;
    // 127.0.0.1 is the client: let sender.com's SPF authorise it.
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n{extra}",
        dns.addr
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message(
            "a@sender.com",
            &["rcpt@example.org"],
            &forged_message(&dkim),
            "250",
        )
        .await;
    queued_body(&srv, &r).await
}

#[tokio::test]
async fn default_adds_ours_and_removes_forged_results() {
    let out = send("").await;
    let headers = out.split("\r\n\r\n").next().unwrap().to_string();
    assert!(
        headers.starts_with("Authentication-Results: mx.test.example;"),
        "ours on top:\n{headers}"
    );
    let ours: String = {
        let mut lines = headers.split("\r\n");
        let mut v = lines.next().unwrap().to_string();
        for l in lines {
            if l.starts_with(' ') || l.starts_with('\t') {
                v.push_str(l);
            } else {
                break;
            }
        }
        v
    };
    // 127.0.0.1 is not in sender.com's SPF: a fail, but the aligned DKIM
    // signature passes DMARC.
    assert!(ours.contains("dkim=pass"), "{ours}");
    assert!(ours.contains("spf=fail"), "{ours}");
    assert!(ours.contains("smtp.mailfrom=a@sender.com"), "{ours}");
    assert!(ours.contains("dmarc=pass"), "{ours}");
    assert!(ours.contains("header.from=sender.com"), "{ours}");
    assert!(
        !out.contains("(forged)"),
        "the forged result is gone:\n{headers}"
    );
    assert!(
        headers.contains("Authentication-Results: other.example; spf=fail"),
        "another host's result stays:\n{headers}"
    );
    assert_eq!(headers.matches("Authentication-Results:").count(), 2);
}

#[tokio::test]
async fn switched_off_the_message_is_unchanged() {
    let out = send("[auth]\nresults = false\n").await;
    let headers = out.split("\r\n\r\n").next().unwrap();
    assert!(headers.starts_with("Received: "), "{headers}");
    assert!(headers.contains("dmarc=pass (forged)"), "{headers}");
    assert_eq!(headers.matches("Authentication-Results:").count(), 2);
}
