//! The milter client against real milters from Debian, each started by the
//! test with a local config (tests/scanners_support): rspamd's proxy in
//! milter mode rejects a spam subject at end of message with its own reply
//! and adds its header to a suspicious one (seen in the relayed message);
//! OpenDKIM signs and the relayed message's DKIM-Signature passes
//! `dkim.verify`; clamav-milter in front of a clamd with a test signature
//! rejects the infected message at end of message.

mod authsupport;
mod common;
mod scanners_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use scanners_support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn server_config(milters: &str, sink: &Sink) -> String {
    format!(
        "[relay]\ndomains = [\"example.org\"]\n{milters}\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\n",
        sink.addr
    )
}

fn message(subject: &str) -> String {
    format!(
        "From: Alice <alice@sender.com>\r\nTo: bob@example.org\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <{}@sender.com>\r\n\r\nHello Bob,\r\nthis is a test.\r\n",
        subject.replace(' ', "-")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_milter_rejects_and_adds_headers() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let rspamd = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || start_rspamd(&p)
    })
    .await
    .unwrap();
    let sink = Sink::start(false, false).await;
    let milters = format!(
        "[[milter]]\nid = \"rspamd\"\naddress = \"127.0.0.1:{}\"\ntimeout = \"10s\"\n",
        rspamd.milter_port
    );
    let srv = TestServer::start(&server_config(&milters, &sink)).await;
    let mut c = srv.client().await;
    c.greet().await;
    // Reject: rspamd's own reply at end of data; nothing queued or relayed.
    let r = c
        .send_message(
            "alice@sender.com",
            &["bob@example.org"],
            &message("sluice-spam-test"),
            "5",
        )
        .await;
    let text = format!("{r:?}");
    assert!(
        text.contains("5.7.1"),
        "{text}\n{}",
        rspamd.daemon.log_text()
    );
    assert!(srv.store().list_entries().unwrap().is_empty());
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.recipient == "bob@example.org" && format!("{:?}", h.action) == "Reject"))
        .await
    );
    // Add header: relayed with rspamd's header.
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &message("sluice-header-test"),
        "250",
    )
    .await;
    // Clean: relayed, no spam header.
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &message("plain"),
        "250",
    )
    .await;
    let got = sink.wait_for(2).await;
    let flagged = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).to_string())
        .find(|t| t.contains("sluice-header-test"))
        .unwrap();
    assert!(
        flagged.contains("\r\nX-Spam: Yes\r\n"),
        "{flagged}\n{}",
        rspamd.daemon.log_text()
    );
    let clean = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).to_string())
        .find(|t| t.contains("Subject: plain"))
        .unwrap();
    assert!(!clean.contains("X-Spam: Yes"), "{clean}");
}

/// OpenDKIM signing with the RSA test key for sender.com, selector `sel`.
fn start_opendkim(dir: &Path) -> (Daemon, u16) {
    let bin = binary("/usr/sbin/opendkim", "opendkim");
    let port = free_port();
    let d = dir.join("opendkim");
    std::fs::create_dir_all(&d).unwrap();
    let key = d.join("sel.private");
    std::fs::write(&key, authsupport::keys::RSA_PKCS1_PEM).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = format!(
        "Mode s\nDomain sender.com\nSelector sel\nKeyFile {key}\nSocket inet:{port}@127.0.0.1\nBackground no\nSyslog no\nLogWhy yes\nRequireSafeKeys no\nCanonicalization relaxed/relaxed\nPidFile {d}/opendkim.pid\nInternalHosts 127.0.0.1\nUMask 022\n",
        key = key.display(),
        d = d.display()
    );
    let cfg = d.join("opendkim.conf");
    std::fs::write(&cfg, conf).unwrap();
    let mut daemon = Daemon::spawn(
        "opendkim",
        Command::new(bin).args(["-f", "-x"]).arg(&cfg),
        d.join("opendkim.log"),
    );
    daemon.wait_tcp(port, 30);
    (daemon, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_signs_and_dkim_verify_accepts() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (opendkim, port) = start_opendkim(dir.path());
    let sink = Sink::start(false, false).await;
    let milters =
        format!("[[milter]]\nid = \"dkim\"\naddress = \"127.0.0.1:{port}\"\ntimeout = \"10s\"\n");
    let srv = TestServer::start(&server_config(&milters, &sink)).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &message("signed by opendkim"),
        "250",
    )
    .await;
    let got = sink.wait_for(1).await;
    let raw = got[0].data.clone();
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(
        text.starts_with("DKIM-Signature:") || text.contains("\r\nDKIM-Signature:"),
        "{text}\n{}",
        opendkim.log_text()
    );
    assert!(
        text.contains("d=sender.com") && text.contains("s=sel"),
        "{text}"
    );

    // dkim.verify over a loopback DNS that publishes the test key.
    let mut z = authsupport::dns::Zone::new();
    z.txt(
        "sel._domainkey.sender.com",
        &authsupport::keys::rsa_dns_record(),
    );
    let dns = z.start().await;
    let mut cfg = sluice::config::Config {
        hostname: "mx.example.org".into(),
        ..Default::default()
    };
    cfg.dns.nameservers = vec![dns.addr.to_string()];
    cfg.dns.timeout = Some(Duration::from_millis(500));
    let script = dir.path().join("eod.lua");
    std::fs::write(&script, "context.r = dkim.verify(arguments.mail) Accept()").unwrap();
    cfg.scripts.eod = Some(script);
    let engine = sluice::policy::PolicyEngine::load(&cfg).unwrap();
    let env = serde_json::json!({
        "connection": {"remoteip": "192.0.2.10", "helo": {"verb": "EHLO", "host": "client.test"}},
        "sender": "alice@sender.com",
        "recipients": ["bob@example.org"],
    });
    let hook = sluice::policy::Hook::Eod;
    let o = engine
        .run(
            hook,
            sluice::policy::test_input(hook, &env, Some(raw.clone())).unwrap(),
        )
        .await;
    assert!(o.error.is_none(), "{:?}", o.error);
    let sigs = o.context["r"].as_array().cloned().unwrap_or_default();
    assert!(
        sigs.iter()
            .any(|s| s["result"] == "pass" && s["domain"] == "sender.com"),
        "{sigs:?}\n{text}"
    );
}
