//! Delivery end to end: client → Sluice → sink over loopback. Static routes
//! and failover, per-recipient results, retries, DSNs, LMTP, hold/release,
//! and the history that records all of it.

mod common;
use common::*;

use std::time::Duration;

use sluice::control::{request, HistoryFilter, Request};

fn transport(sinks: &[&str], extra: &str) -> String {
    let hosts: Vec<String> = sinks.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[queue]\nmin_retry_delay = \"1s\"\nmax_retry_delay = \"2s\"\n{extra}\n[transport.default]\nhost = [{}]\ntls = \"none\"\nconnect_timeout = \"2s\"\n",
        hosts.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_end_to_end_with_failover_and_history() {
    let sink = Sink::start(false, false).await;
    // A dead first hop (nothing listens there), then the sink.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let srv = TestServer::start(&transport(&[&dead.to_string(), &sink.addr.to_string()], "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@example.net> RET=HDRS ENVID=env1", "250")
        .await;
    c.cmd(
        "RCPT TO:<a@example.org> NOTIFY=FAILURE ORCPT=rfc822;A@example.org",
        "250",
    )
    .await;
    c.cmd("RCPT TO:<b@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(
        b"Subject: relay\r\nMessage-ID: <relay-1@example.net>\r\n\r\n..dot line\r\nbody\r\n.\r\n",
    )
    .await;
    let r = c.expect("250").await;
    let qid = r.text.rsplit(' ').next().unwrap().to_string();
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.from, "s@example.net");
    assert_eq!(m.to, ["a@example.org", "b@example.org"]);
    assert!(
        m.mail_params.contains("RET=HDRS") && m.mail_params.contains("ENVID=env1"),
        "{}",
        m.mail_params
    );
    assert!(
        m.rcpt_params[0].contains("NOTIFY=FAILURE")
            && m.rcpt_params[0].contains("ORCPT=rfc822;A@example.org")
    );
    let stored_tail =
        b"Subject: relay\r\nMessage-ID: <relay-1@example.net>\r\n\r\n.dot line\r\nbody\r\n";
    assert!(
        m.data.ends_with(stored_tail),
        "{}",
        String::from_utf8_lossy(&m.data)
    );
    assert!(m.data.starts_with(b"Received: from client.example.net"));
    assert!(
        wait_until(|| srv.store().queue_len() == 0).await,
        "entry not removed"
    );
    // History: DELIVER per recipient, findable by queue id, message-id and recipient.
    let sock = srv.dir.path().join("var/control.sock");
    for id in [qid.as_str(), "relay-1@example.net", "<relay-1@example.net>"] {
        let v = request(
            &sock,
            &Request::History {
                query: HistoryFilter {
                    id: Some(id.into()),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 3, "by {id}: {v}");
        assert_eq!(rows[0]["action"], "RECEIVED");
        assert!(rows[1..].iter().all(|r| r["action"] == "DELIVER"));
        assert_eq!(rows[1]["remote_ip"], "127.0.0.1");
    }
    let v = request(
        &sock,
        &Request::History {
            query: HistoryFilter {
                recipient: Some("B@example.org".into()),
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let v = request(
        &sock,
        &Request::History {
            query: HistoryFilter {
                action: Some("DEFER".into()),
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        0,
        "failover happened within one attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_bounces_but_never_to_the_null_sender() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|a| {
        if a.starts_with("gone") {
            SinkAnswer::PermFail
        } else {
            SinkAnswer::Accept
        }
    });
    let srv = TestServer::start(&transport(&[&sink.addr.to_string()], "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message(
        "sender@example.net",
        &["gone@example.org", "ok@example.org"],
        MSG,
        "250",
    )
    .await;
    // The good recipient, then the bounce to the sender (same sink: default transport).
    let got = sink.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].to, ["ok@example.org"]);
    let dsn = &got[1];
    assert_eq!(dsn.from, "", "bounces come from the null sender");
    assert_eq!(dsn.to, ["sender@example.net"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(text.contains("Final-Recipient: rfc822; gone@example.org"));
    assert!(text.contains("Action: failed"));
    assert!(text.contains("Status: 5.1.1"));
    // The next hop's reply as it was sent, enhanced code included.
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
    assert!(text.contains("Content-Type: message/rfc822"));
    assert!(
        text.contains("Subject: test"),
        "original attached (RET=FULL default)"
    );
    let h = srv.store().history_all().unwrap();
    assert!(h
        .iter()
        .any(|r| r.action == "ERROR" && r.recipient == "gone@example.org"));
    // A bounce of a bounce is never sent.
    let before = sink.messages().len();
    c.send_message("", &["gone2@example.org"], MSG, "250").await;
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|r| r.recipient == "gone2@example.org"))
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.messages().len(),
        before,
        "nothing sent to the null sender"
    );
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_retries_with_backoff_then_delivers() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|_| SinkAnswer::TempFail);
    let srv = TestServer::start(&transport(&[&sink.addr.to_string()], "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message("s@example.net", &["later@example.org"], MSG, "250")
        .await;
    let qid = r.text.rsplit(' ').next().unwrap().to_string();
    assert!(
        wait_until(|| srv
            .store()
            .get_entry(&qid)
            .unwrap()
            .is_some_and(|e| e.attempts >= 1))
        .await
    );
    let e = srv.store().get_entry(&qid).unwrap().unwrap();
    assert!(
        e.next_attempt > e.received_at,
        "rescheduled into the future"
    );
    assert!(
        e.last_error.as_deref().unwrap_or("").contains("451"),
        "{:?}",
        e.last_error
    );
    let h = srv.store().history_all().unwrap();
    let defer = h
        .iter()
        .find(|r| r.action == "DEFER")
        .expect("DEFER recorded");
    assert!(defer.next_retry.is_some());
    sink.set_rule(|_| SinkAnswer::Accept);
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "delivered on a retry");
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_partial_failure_and_smtputf8_refusal() {
    let lmtp = Sink::start(true, true).await;
    lmtp.set_rule(|a| {
        if a.starts_with("full") {
            SinkAnswer::FailAfterData
        } else {
            SinkAnswer::Accept
        }
    });
    let srv = TestServer::start(&format!(
        "{}\n[transport.default]\nhost = {:?}\nkind = \"lmtp\"\ntls = \"none\"\n[relay]\ndomains = [\"example.org\", \"例子.广告\"]\n",
        "[queue]\nmin_retry_delay = \"1s\"\n",
        lmtp.addr.to_string()
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("", &["ok@example.org", "full@example.org"], MSG, "250")
        .await;
    let got = lmtp.wait_for(1).await;
    assert_eq!(got[0].to, ["ok@example.org"]);
    assert!(
        wait_until(|| {
            let h = srv.store().history_all().unwrap();
            h.iter()
                .any(|r| r.action == "DELIVER" && r.recipient == "ok@example.org")
                && h.iter().any(|r| {
                    r.action == "ERROR"
                        && r.recipient == "full@example.org"
                        && r.reason.contains("552")
                })
        })
        .await
    );
    // The peer lacks SMTPUTF8: a UTF-8 message fails permanently with 5.6.7.
    c.cmd("MAIL FROM:<> SMTPUTF8", "250").await;
    c.cmd("RCPT TO:<用户@例子.广告>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: x\r\n\r\ny\r\n.\r\n").await;
    c.expect("250").await;
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|r| r.action == "ERROR" && r.reason.contains("5.6.7")))
        .await
    );
}

/// A server whose eod script queues every recipient held, relaying to `sink`
/// once released; the scripts' directory comes back too.
async fn holding_server(sink: &Sink) -> (TestServer, tempfile::TempDir) {
    let sdir = tempfile::tempdir().unwrap();
    let eod = sdir.path().join("eod.lua");
    std::fs::write(&eod, r#"for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, "default", {hold = true}) end Accept()"#).unwrap();
    let srv = TestServer::start(&format!(
        "{}\n[scripts]\neod = {:?}\n",
        transport(&[&sink.addr.to_string()], ""),
        eod
    ))
    .await;
    (srv, sdir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_and_operator_actions() {
    let sink = Sink::start(false, false).await;
    let (srv, _sdir) = holding_server(&sink).await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message("s@example.net", &["a@example.org"], MSG, "250")
        .await;
    let qid = r.text.rsplit(' ').next().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.messages().is_empty(), "held entries are not delivered");
    let sock = srv.dir.path().join("var/control.sock");
    let stats = request(&sock, &Request::QueueStats).await.unwrap();
    assert_eq!(stats["by_state"]["held"], 1);
    request(
        &sock,
        &Request::QueueAction {
            action: "release".into(),
            id: qid.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(sink.wait_for(1).await.len(), 1);
    // delete writes DELETE history and sends nothing.
    let r = c
        .send_message("s@example.net", &["b@example.org"], MSG, "250")
        .await;
    let qid2 = r.text.rsplit(' ').next().unwrap().to_string();
    request(
        &sock,
        &Request::QueueAction {
            action: "delete".into(),
            id: qid2.clone(),
        },
    )
    .await
    .unwrap();
    assert!(srv.store().get_entry(&qid2).unwrap().is_none());
    assert!(srv
        .store()
        .history_all()
        .unwrap()
        .iter()
        .any(|h| h.action == "DELETE" && h.id == qid2));
    // bounce fails it now, with a report to the sender.
    let r = c
        .send_message("s@example.net", &["c@example.org"], MSG, "250")
        .await;
    let qid3 = r.text.rsplit(' ').next().unwrap().to_string();
    request(
        &sock,
        &Request::QueueAction {
            action: "bounce".into(),
            id: qid3.clone(),
        },
    )
    .await
    .unwrap();
    let got = sink.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].to, ["s@example.net"]);
    assert!(String::from_utf8_lossy(&got[1].data).contains("bounced by the operator"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_across_messages() {
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&transport(&[&sink.addr.to_string()], "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    for i in 0..5 {
        c.send_message("s@example.net", &[&format!("r{i}@example.org")], MSG, "250")
            .await;
        // One at a time, so each finds the previous connection idle in the pool.
        sink.wait_for(i + 1).await;
    }
    assert_eq!(sink.messages().len(), 5);
    let conns = sink.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(conns <= 2, "{conns} connections for 5 messages: no reuse");
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_without_starttls_defers_and_delay_dsn_is_sent_once() {
    let sink = Sink::start(false, false).await;
    let sdir = tempfile::tempdir().unwrap();
    let eod = sdir.path().join("eod.lua");
    // Route the user's mail through a transport that insists on TLS.
    std::fs::write(&eod, r#"for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, r.recipient:match("^secure") and "secure" or "default") end Accept()"#).unwrap();
    let srv = TestServer::start(&format!(
        "[queue]\nmin_retry_delay = \"1s\"\nmax_retry_delay = \"2s\"\ndelay_warning = \"0s\"\n[transport.default]\nhost = {:?}\ntls = \"none\"\n[transport.secure]\nhost = {:?}\ntls = \"required\"\n[scripts]\neod = {:?}\n",
        sink.addr.to_string(), sink.addr.to_string(), eod
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@example.net>", "250").await;
    c.cmd("RCPT TO:<secure@example.org> NOTIFY=DELAY,FAILURE", "250")
        .await;
    c.cmd("DATA", "354").await;
    c.send_raw(MSG.as_bytes()).await;
    c.send_raw(b".\r\n").await;
    let r = c.expect("250").await;
    let qid = r.text.rsplit(' ').next().unwrap().to_string();
    assert!(
        wait_until(|| srv
            .store()
            .get_entry(&qid)
            .unwrap()
            .is_some_and(|e| e.attempts >= 2))
        .await
    );
    let e = srv.store().get_entry(&qid).unwrap().unwrap();
    assert!(
        e.last_error.as_deref().unwrap_or("").contains("4.7.5"),
        "{:?}",
        e.last_error
    );
    assert!(e.delay_notified);
    // Exactly one delay report reached the sender (through the default transport).
    let got = sink.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reports: Vec<_> = sink
        .messages()
        .into_iter()
        .filter(|m| m.to == ["s@example.net"])
        .collect();
    assert_eq!(reports.len(), 1, "{got:?}");
    let text = String::from_utf8_lossy(&reports[0].data);
    assert!(text.contains("Action: delayed"), "{text}");
    assert!(text.contains("Final-Recipient: rfc822; secure@example.org"));
    // Nothing was sent in clear text to the TLS-only route.
    assert!(!sink
        .messages()
        .iter()
        .any(|m| m.to.contains(&"secure@example.org".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayhost_metadata_overrides_the_route() {
    let sink = Sink::start(false, false).await;
    let sdir = tempfile::tempdir().unwrap();
    let eod = sdir.path().join("eod.lua");
    std::fs::write(
        &eod,
        format!(
            r#"for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, "default", {{metadata = {{relayhost = "{}"}}}}) end Accept()"#,
            sink.addr
        ),
    )
    .unwrap();
    // The transport's own next hop is a closed port: only the override works.
    let srv = TestServer::start(&format!(
        "{}\n[scripts]\neod = {:?}\n",
        transport(&["127.0.0.1:9"], ""),
        eod
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["a@example.org"], MSG, "250")
        .await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postdelivery_bounces_now_with_its_own_wording() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|a| {
        if a.starts_with("busy") {
            SinkAnswer::TempFail
        } else {
            SinkAnswer::Accept
        }
    });
    let sdir = tempfile::tempdir().unwrap();
    let post = sdir.path().join("postdelivery.lua");
    std::fs::write(
        &post,
        r#"
        if arguments.result and arguments.result.code >= 400 and arguments.attempt == 1 then
          context.bounce_subject = "Custom: not delivered to " .. arguments.recipient
          context.bounce_text = "The mailstore is busy; we gave up at once."
          Reject("given up by policy")
        end"#,
    )
    .unwrap();
    let srv = TestServer::start(&format!(
        "{}\n[scripts]\npostdelivery = {:?}\n",
        transport(&[&sink.addr.to_string()], ""),
        post
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("s@example.net", &["busy@example.org"], MSG, "250")
        .await;
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "the bounce, not a retry");
    assert_eq!(got[0].to, ["s@example.net"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("Subject: Custom: not delivered to busy@example.org"),
        "{text}"
    );
    assert!(
        text.contains("The mailstore is busy; we gave up at once."),
        "{text}"
    );
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
}

/// `queue list` filters and actions on what a filter selects, over the
/// control socket and through the `sluice` binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_filters_select_entries_for_list_and_actions() {
    let sink = Sink::start(false, false).await;
    let (srv, sdir) = holding_server(&sink).await;
    let mut c = srv.client().await;
    c.greet().await;
    for (from, to) in [
        ("a@x.example", "r1@one.example"),
        ("b@y.example", "r2@two.example"),
        ("", "r3@two.example"),
    ] {
        c.send_message(from, &[to], MSG, "250").await;
    }
    let sock = srv.dir.path().join("var/control.sock");
    let list = |f: sluice::control::QueueFilter| {
        let sock = sock.clone();
        async move {
            let v = request(&sock, &Request::QueueList { filter: f })
                .await
                .unwrap();
            let mut ids: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    e["recipients"][0]["recipient"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            ids.sort();
            ids
        }
    };
    use sluice::control::QueueFilter;
    assert_eq!(list(QueueFilter::default()).await.len(), 3);
    let by_domain = QueueFilter {
        domain: Some("TWO.example".into()),
        ..Default::default()
    };
    assert_eq!(
        list(by_domain.clone()).await,
        ["r2@two.example", "r3@two.example"]
    );
    let null_sender = QueueFilter {
        sender: Some("<>".into()),
        ..Default::default()
    };
    assert_eq!(list(null_sender).await, ["r3@two.example"]);
    let sender_domain = QueueFilter {
        sender: Some("@x.example".into()),
        ..Default::default()
    };
    assert_eq!(list(sender_domain).await, ["r1@one.example"]);
    let rcpt = QueueFilter {
        recipient: Some("R1@One.Example".into()),
        state: Some("held".into()),
        newer_than: Some(3600.0),
        ..Default::default()
    };
    assert_eq!(list(rcpt).await, ["r1@one.example"]);
    let old = QueueFilter {
        older_than: Some(3600.0),
        ..Default::default()
    };
    assert!(list(old).await.is_empty());
    let bad_state = QueueFilter {
        state: Some("frozen".into()),
        ..Default::default()
    };
    let err = request(&sock, &Request::QueueList { filter: bad_state })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown state"), "{err}");

    // An action with neither ids nor a filter selects nothing unless --all.
    let err = request(
        &sock,
        &Request::QueueSelect {
            action: "delete".into(),
            filter: QueueFilter::default(),
            all: false,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no filter given"), "{err}");
    assert_eq!(srv.store().queue_len(), 3);

    // Release what the filter selects: exactly those two are delivered.
    let v = request(
        &sock,
        &Request::QueueSelect {
            action: "release".into(),
            filter: by_domain,
            all: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 2, "{v}");
    let got = sink.wait_for(2).await;
    let mut to: Vec<String> = got.iter().map(|m| m.to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["r2@two.example", "r3@two.example"]);
    assert!(wait_until(|| srv.store().queue_len() == 1).await);

    // The CLI: a filter without matches, then --all, through the daemon.
    let cfg = sdir.path().join("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n",
            srv.dir.path().join("var"),
            sock
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["queue", "delete"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = cli(&["queue", "list", "--domain", "one.example", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let out = cli(&["queue", "delete", "--sender", "nobody@nowhere.example"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(srv.store().queue_len(), 1);
    let out = cli(&["queue", "delete", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(srv.store().queue_len(), 0);
    assert!(srv
        .store()
        .history_all()
        .unwrap()
        .iter()
        .any(|h| h.action == "DELETE" && h.recipient == "r1@one.example"));
}

/// Index keys that name no queued entry (left by an interrupted write, or a
/// time that did not survive serialization) must not crowd out due mail: the
/// scheduler reads the due index a thousand keys at a time, so before it
/// dropped such keys, 1,500 of them stopped delivery for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_due_keys_do_not_starve_the_scheduler() {
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&transport(&[&sink.addr.to_string()], "")).await;
    let due = srv.store().db().open_tree("due").unwrap();
    for i in 0..1500u64 {
        let mut k = (1_000_000 + i).to_be_bytes().to_vec();
        k.extend_from_slice(format!("stale{i:011}").as_bytes());
        due.insert(k, &[] as &[u8]).unwrap();
    }
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "the due message was never attempted");
    assert!(
        wait_until(|| due.is_empty()).await,
        "{} keys left",
        due.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_reset_mid_data_defers_and_delivers_once_later() {
    let sink = Sink::start(false, false).await;
    sink.set_rule(|_| SinkAnswer::ResetMidData);
    let srv = TestServer::start(&transport(&[&sink.addr.to_string()], "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    // Large enough that the reset lands while Sluice is still sending.
    let body = format!(
        "From: <s@example.net>\r\nSubject: reset\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(4096)
    );
    let r = c
        .send_message("s@example.net", &["reset@example.org"], &body, "250")
        .await;
    let qid = r.text.rsplit(' ').next().unwrap().to_string();
    assert!(
        wait_until(|| srv
            .store()
            .get_entry(&qid)
            .unwrap()
            .is_some_and(|e| e.attempts >= 1))
        .await,
        "no attempt recorded"
    );
    let e = srv.store().get_entry(&qid).unwrap().unwrap();
    assert!(
        e.last_error.is_some(),
        "the reset left no error on the entry"
    );
    assert!(
        sink.messages().is_empty(),
        "a cut message counted as received"
    );
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.action == "DEFER" && h.id == qid))
        .await,
        "no DEFER in the history"
    );
    let defer = srv
        .store()
        .history_all()
        .unwrap()
        .into_iter()
        .find(|h| h.action == "DEFER" && h.id == qid)
        .unwrap();
    assert!(
        defer.reason.contains("reset") && defer.reason.contains("message data"),
        "the DEFER reason should say the connection was reset during DATA: {:?}",
        defer.reason
    );
    // The next hop recovers: the message arrives whole, exactly once.
    sink.set_rule(|_| SinkAnswer::Accept);
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert!(
        String::from_utf8_lossy(&got[0].data)
            .ends_with("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"),
        "delivered copy is cut"
    );
    assert!(wait_until(|| srv.store().queue_len() == 0).await);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(sink.messages().len(), 1, "delivered more than once");
}
