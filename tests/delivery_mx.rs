//! MX routing against a real DNS server on 127.0.0.1: preference order,
//! failover to the next MX, implicit MX, null MX (RFC 7505) and NXDOMAIN.

mod common;
#[path = "authsupport/dns.rs"]
mod dns;
use common::*;

/// Two sinks on 127.0.0.2 and 127.0.0.3 sharing one port (the MX port).
async fn two_sinks() -> (Sink, Sink, u16) {
    for _ in 0..50 {
        let a = Sink::start_on("127.0.0.2:0".parse().unwrap(), false, false)
            .await
            .unwrap();
        let port = a.addr.port();
        if let Ok(b) =
            Sink::start_on(format!("127.0.0.3:{port}").parse().unwrap(), false, false).await
        {
            return (a, b, port);
        }
    }
    panic!("no common free port on 127.0.0.2/3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_order_failover_implicit_null_and_nxdomain() {
    let (mx1, mx2, port) = two_sinks().await;
    let mut zone = dns::Zone::new();
    zone.mx("pref.example", 20, "mx2.pref.example")
        .mx("pref.example", 10, "mx1.pref.example")
        .a("mx1.pref.example", "127.0.0.2")
        .a("mx2.pref.example", "127.0.0.3")
        // Failover: the best MX has nothing listening.
        .mx("fail.example", 5, "dead.fail.example")
        .mx("fail.example", 50, "backup.fail.example")
        .a("dead.fail.example", "127.0.0.4")
        .a("backup.fail.example", "127.0.0.3")
        // No MX: the domain's own address (implicit MX).
        .a("implicit.example", "127.0.0.2")
        // Null MX.
        .mx("nomail.example", 0, ".")
        // The sender's domain, for bounces.
        .mx("sender.example", 10, "mx1.pref.example");
    let server = zone.start().await;
    let srv = TestServer::start(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n[queue]\nmin_retry_delay = \"30s\"\n[transport.default]\nport = {port}\ntls = \"none\"\nconnect_timeout = \"1s\"\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
        server.addr
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@sender.example", &["a@pref.example"], MSG, "250")
        .await;
    let got = mx1.wait_for(1).await;
    assert_eq!(got[0].to, ["a@pref.example"], "lowest preference first");
    c.send_message("s@sender.example", &["b@fail.example"], MSG, "250")
        .await;
    let got = mx2.wait_for(1).await;
    assert_eq!(got[0].to, ["b@fail.example"], "failover to the next MX");
    c.send_message("s@sender.example", &["c@implicit.example"], MSG, "250")
        .await;
    let got = mx1.wait_for(2).await;
    assert_eq!(got[1].to, ["c@implicit.example"], "implicit MX");
    c.send_message(
        "s@sender.example",
        &["d@nomail.example", "e@nxdomain.example"],
        MSG,
        "250",
    )
    .await;
    assert!(
        wait_until(|| {
            let h = srv.store().history_all().unwrap();
            h.iter().any(|r| {
                r.action == "ERROR"
                    && r.recipient == "d@nomail.example"
                    && r.reason.contains("5.1.10")
            }) && h.iter().any(|r| {
                r.action == "ERROR"
                    && r.recipient == "e@nxdomain.example"
                    && r.reason.contains("5.1.2")
            })
        })
        .await,
        "{:?}",
        srv.store().history_all().unwrap()
    );
    // One bounce for both, to the sender's MX.
    let got = mx1.wait_for(3).await;
    let bounce = got
        .iter()
        .find(|m| m.to == ["s@sender.example"])
        .expect("bounce delivered by MX");
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(
        text.contains("Final-Recipient: rfc822; d@nomail.example")
            && text.contains("Final-Recipient: rfc822; e@nxdomain.example")
    );
}
