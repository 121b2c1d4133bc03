//! Axigen delivery events acting on real deliveries: the corpus policies in
//! tests/axigen/ (routing_*, processing) loaded by the daemon
//! (`[scripts] axigen`), mail sent over loopback, next hops and the
//! sender's mailbox played by sinks. onRelay routes the attempt (the
//! predelivery `Pass({host, port, tls})`), currentRcptRelayHost routes one
//! recipient, onDelivery* word the reports (the postdelivery
//! `Pass({bounce|delay|success = …})`), overquotaAction decides what a full
//! mailbox means.

mod common;
use common::*;

use sluice::store::history::HistoryAction;

const MSG: &str = "Subject: quarterly report\r\nFrom: s@example.net\r\n\r\nthe secret body\r\n";

/// The daemon with one corpus policy (its @PLACEHOLDERS@ filled in), the
/// default transport at `default_hop`, retries after 1-2 s.
async fn server(
    policy: &str,
    fill: &[(&str, String)],
    default_hop: &str,
) -> (TestServer, tempfile::TempDir) {
    server_with(policy, fill, default_hop, "").await
}

async fn server_with(
    policy: &str,
    fill: &[(&str, String)],
    default_hop: &str,
    queue: &str,
) -> (TestServer, tempfile::TempDir) {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut text = std::fs::read_to_string(format!("{root}/tests/axigen/{policy}.axigen")).unwrap();
    for (k, v) in fill {
        text = text.replace(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtpFilters.script");
    std::fs::write(&path, text).unwrap();
    let lib = format!("{root}/lib-lua");
    let srv = TestServer::start(&format!(
        "[queue]\nmin_retry_delay = \"1s\"\nmax_retry_delay = \"2s\"\n{queue}\n\
         [transport.default]\nhost = [{default_hop:?}]\ntls = \"none\"\nconnect_timeout = \"2s\"\n\
         [scripts]\nlib_path = [{lib:?}]\naxigen = [{path:?}]\n"
    ))
    .await;
    (srv, dir)
}

fn history(
    srv: &TestServer,
    rcpt: &str,
    action: HistoryAction,
) -> Vec<sluice::store::history::HistoryRecord> {
    srv.store()
        .history_all()
        .unwrap()
        .into_iter()
        .filter(|h| h.recipient == rcpt && h.action == action)
        .collect()
}

/// Messages the sink got for `to` whose text contains `needle`.
fn reports(sink: &Sink, to: &str, needle: &str) -> Vec<String> {
    sink.messages()
        .into_iter()
        .filter(|m| m.to == [to] && m.from.is_empty())
        .map(|m| String::from_utf8_lossy(&m.data).to_string())
        .filter(|t| t.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_relay_sends_everything_through_the_smarthost() {
    let default_hop = Sink::start(false, false).await;
    let smarthost = Sink::start(false, false).await;
    let (srv, _d) = server(
        "routing_smarthost",
        &[("@SMARTHOST_PORT@", smarthost.addr.port().to_string())],
        &default_hop.addr.to_string(),
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["a@example.org"], MSG, "250")
        .await;
    let got = smarthost.wait_for(1).await;
    assert_eq!(got.len(), 1, "the smarthost got the message");
    assert_eq!(got[0].to, ["a@example.org"]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("the secret body"));
    assert!(
        wait_until(|| !history(&srv, "a@example.org", HistoryAction::Deliver).is_empty()).await
    );
    let h = history(&srv, "a@example.org", HistoryAction::Deliver);
    assert_eq!(h[0].remote_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        default_hop.messages().is_empty(),
        "the transport's own hop is bypassed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_relay_ssl_enabled_requires_tls_to_the_smarthost() {
    let default_hop = Sink::start(false, false).await;
    let smarthost = Sink::start(false, false).await;
    // The same policy with sslEnabled "yes": the smarthost (a sink without
    // STARTTLS) must not get the message in the clear.
    let (srv, _d) = server(
        "routing_smarthost",
        &[
            ("@SMARTHOST_PORT@", smarthost.addr.port().to_string()),
            (
                "set (sslEnabled, \"no\")",
                "set (sslEnabled, \"yes\")".to_string(),
            ),
        ],
        &default_hop.addr.to_string(),
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["a@example.org"], MSG, "250")
        .await;
    assert!(wait_until(|| !history(&srv, "a@example.org", HistoryAction::Defer).is_empty()).await);
    let h = history(&srv, "a@example.org", HistoryAction::Defer);
    assert!(h[0].reason.contains("does not offer STARTTLS"), "{h:?}");
    assert!(smarthost.messages().is_empty());
    assert!(default_hop.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_rcpt_relay_host_routes_one_recipient() {
    let default_hop = Sink::start(false, false).await;
    let branch = Sink::start(false, false).await;
    let (srv, _d) = server(
        "routing_rcpt",
        &[("@BRANCH_PORT@", branch.addr.port().to_string())],
        &default_hop.addr.to_string(),
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message(
        "s@example.net",
        &["bob@branch.example.org", "ann@example.org"],
        MSG,
        "250",
    )
    .await;
    let b = branch.wait_for(1).await;
    let d = default_hop.wait_for(1).await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].to, ["bob@branch.example.org"]);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].to, ["ann@example.org"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_bounce_is_worded_by_on_delivery_failure() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|a| {
        if a.starts_with("gone") || a.starts_with("left") {
            SinkAnswer::PermFail
        } else {
            SinkAnswer::Accept
        }
    });
    let (srv, _d) = server("processing", &[], &sink.addr.to_string()).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["gone@example.org"], MSG, "250")
        .await;
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "one bounce");
    assert_eq!(got[0].to, ["s@example.net"]);
    assert_eq!(got[0].from, "", "bounces come from the null sender");
    let t = String::from_utf8_lossy(&got[0].data).to_string();
    for want in [
        "From: Mail Delivery System <postmaster@example.org>\r\n",
        "Subject: Undeliverable: your message to gone@example.org\r\n",
        "Hello s,\r\n\r\nyour message could not be delivered to the recipients below.\r\n",
        "Recipient: gone@example.org - Reason: 550 5.1.1 no such user\r\n",
        "-- The Example.org mail team\r\n",
        "Action: failed\r\nStatus: 5.1.1\r\n",
        // ndrAttachSource "header": the headers come back, the body does not.
        "Content-Type: text/rfc822-headers",
        "Subject: quarterly report",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert!(!t.contains("the secret body"), "{t}");
    // Two recipients of one message (queued as one entry each by the
    // Axigen runtime): each report names its own recipient and reason.
    c.send_message(
        "s@example.net",
        &["gone@example.org", "left@example.org"],
        MSG,
        "250",
    )
    .await;
    assert!(wait_until(|| reports(&sink, "s@example.net", "Action: failed").len() >= 3).await);
    let all = reports(&sink, "s@example.net", "left@example.org");
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].contains("Recipient: left@example.org - Reason: 550 5.1.1 no such user\r\n"),
        "{}",
        all[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_ndr_no_suppresses_the_bounce_but_history_keeps_the_failure() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|a| {
        if a.starts_with("gone") {
            SinkAnswer::PermFail
        } else {
            SinkAnswer::Accept
        }
    });
    let (srv, _d) = server("processing", &[], &sink.addr.to_string()).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("noreply@example.net", &["gone@example.org"], MSG, "250")
        .await;
    assert!(
        wait_until(|| !history(&srv, "gone@example.org", HistoryAction::Error).is_empty()).await
    );
    let h = history(&srv, "gone@example.org", HistoryAction::Error);
    assert!(h[0].reason.contains("550 5.1.1 no such user"), "{h:?}");
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
    // A control message afterwards: once it is delivered, a bounce for the
    // first (queued before it) would have been delivered too.
    c.send_message("s@example.net", &["ok@example.org"], MSG, "250")
        .await;
    assert!(
        wait_until(|| !history(&srv, "ok@example.org", HistoryAction::Deliver).is_empty()).await
    );
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
    let got = sink.messages();
    assert_eq!(got.len(), 1, "only the control message: {got:?}");
    assert_eq!(got[0].to, ["ok@example.org"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_with_send_ndr_yes_sends_one_delay_notice() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|a| {
        if a.starts_with("busy") {
            SinkAnswer::TempFail
        } else {
            SinkAnswer::Accept
        }
    });
    let (srv, _d) = server("processing", &[], &sink.addr.to_string()).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["busy@example.org"], MSG, "250")
        .await;
    assert!(wait_until(|| !reports(&sink, "s@example.net", "Action: delayed").is_empty()).await);
    let n = reports(&sink, "s@example.net", "Action: delayed");
    let t = &n[0];
    for want in [
        "Subject: Delayed: still trying busy@example.org\r\n",
        "Attempt 1, ",
        " more before we give up.\r\n",
        "Still trying busy@example.org: ",
        "451 4.2.0 try later",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert!(
        !t.contains("Attempt 1,  more"),
        "ndrRemainingRetryCount is known: {t}"
    );
    // The policy asks for a notice on the first temporary failure only.
    assert!(
        wait_until(|| history(&srv, "busy@example.org", HistoryAction::Defer).len() >= 2).await,
        "retried"
    );
    assert_eq!(reports(&sink, "s@example.net", "Action: delayed").len(), 1);
    assert_eq!(srv.store().queue_len(), 1, "still queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_success_gets_the_dsn_wording_of_on_delivery_success() {
    let sink = Sink::start(false, false).await;
    // A next hop without DSN: the success report is ours to send.
    sink.set_dsn(false);
    let (srv, _d) = server("processing", &[], &sink.addr.to_string()).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@example.net>", "250").await;
    c.cmd("RCPT TO:<happy@example.org> NOTIFY=SUCCESS", "250")
        .await;
    c.cmd("DATA", "354").await;
    c.send_raw(format!("{MSG}.\r\n").as_bytes()).await;
    c.expect("250").await;
    assert!(wait_until(|| !reports(&sink, "s@example.net", "Action: delivered").is_empty()).await);
    let n = reports(&sink, "s@example.net", "Action: delivered");
    let t = &n[0];
    for want in [
        "From: Mail Delivery System <postmaster@example.org>\r\n",
        "Subject: Delivered: your message to happy@example.org\r\n",
        "Good news, s.\r\n",
        "Delivered to happy@example.org: 250 2.0.0 queued as SINK\r\n",
        "-- The Example.org mail team\r\n",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let _ = srv;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overquota_action_reject_bounces_and_tmpreject_retries() {
    let sink = Sink::start(false, false).await;
    let full_until_released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = full_until_released.clone();
    sink.set_rule(move |a| {
        if a.starts_with("full") {
            // Temporary over-quota, but the policy says "reject".
            SinkAnswer::OverQuotaTemp
        } else if a.starts_with("patient") && f.load(std::sync::atomic::Ordering::SeqCst) {
            // Permanent over-quota, but the policy says "tmpreject".
            SinkAnswer::OverQuota
        } else {
            SinkAnswer::Accept
        }
    });
    let (srv, _d) = server("processing", &[], &sink.addr.to_string()).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["full@example.org"], MSG, "250")
        .await;
    c.send_message("s@example.net", &["patient@example.org"], MSG, "250")
        .await;
    // reject: a 452 4.2.2 fails at once and bounces as 5.2.2.
    assert!(wait_until(|| !reports(&sink, "s@example.net", "Action: failed").is_empty()).await);
    let b = reports(&sink, "s@example.net", "Action: failed");
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].contains(
            "Final-Recipient: rfc822; full@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        ),
        "{}",
        b[0]
    );
    assert!(
        b[0].contains("Recipient: full@example.org - Reason: 552 5.2.2 mailbox full, try later"),
        "{}",
        b[0]
    );
    assert_eq!(
        history(&srv, "full@example.org", HistoryAction::Error).len(),
        1
    );
    assert!(history(&srv, "full@example.org", HistoryAction::Defer).is_empty());
    // tmpreject: a 552 5.2.2 is retried.
    assert!(
        wait_until(|| history(&srv, "patient@example.org", HistoryAction::Defer).len() >= 2).await,
        "retried"
    );
    let d = history(&srv, "patient@example.org", HistoryAction::Defer);
    assert!(d[0].reason.contains("552 5.2.2 mailbox full"), "{d:?}");
    assert!(history(&srv, "patient@example.org", HistoryAction::Error).is_empty());
    // The mailbox has room again: the next retry delivers.
    full_until_released.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(|| !history(&srv, "patient@example.org", HistoryAction::Deliver).is_empty())
            .await
    );
    assert_eq!(
        reports(&sink, "s@example.net", "Action: failed").len(),
        1,
        "no bounce for the patient one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounce_is_worded_by_on_delivery_failure() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|a| {
        if a.starts_with("busy") {
            SinkAnswer::TempFail
        } else {
            SinkAnswer::Accept
        }
    });
    // The retry after a second is past the lifetime: its temporary failure
    // is final, and onDeliveryFailure (not onTemporaryDeliveryFailure)
    // words the bounce.
    let (srv, _d) = server_with(
        "processing",
        &[],
        &sink.addr.to_string(),
        "max_lifetime = \"1s\"",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["busy@example.org"], MSG, "250")
        .await;
    assert!(wait_until(|| !reports(&sink, "s@example.net", "Action: failed").is_empty()).await);
    let b = reports(&sink, "s@example.net", "Action: failed");
    let t = &b[0];
    for want in [
        "Subject: Undeliverable: your message to busy@example.org\r\n",
        "Recipient: busy@example.org - Reason: 550 5.4.7 delivery time expired; last error: ",
        "451 4.2.0 try later",
        "Status: 5.4.7\r\n",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert_eq!(
        history(&srv, "busy@example.org", HistoryAction::Error).len(),
        1
    );
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
}
