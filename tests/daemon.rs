//! Daemon-level behaviour: graceful shutdown with a transaction in flight,
//! certificate reload, `sluice check` errors, environment overrides.

mod common;
use common::*;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_data_in_flight_finish_then_421() {
    let mut srv = TestServer::start("[smtp]\nshutdown_grace = \"10s\"\n").await;
    let mut busy = srv.client().await;
    busy.greet().await;
    busy.cmd("MAIL FROM:<a@example.net>", "250").await;
    busy.cmd("RCPT TO:<b@example.org>", "250").await;
    busy.cmd("DATA", "354").await;
    busy.send_raw(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .await;
    let mut idle = srv.client().await;
    idle.greet().await;

    let store = srv.store().clone();
    let addr = srv.addr();
    let daemon = srv.daemon.take().unwrap();
    let stopper = tokio::spawn(async move { daemon.shutdown().await });
    // The idle client is told at once.
    idle.expect("421 4.3.2").await;
    // New connections are refused once listeners are closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The transaction in flight completes and is acknowledged.
    busy.send_raw(b"second half\r\n.\r\n").await;
    busy.expect("250 2.0.0").await;
    busy.expect("421 4.3.2").await;
    tokio::time::timeout(Duration::from_secs(20), stopper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.queue_len(), 1);
}

#[tokio::test]
async fn certificate_reload_is_picked_up_by_new_sessions() {
    let srv = TestServer::start(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n",
    )
    .await;
    let old_cert = std::fs::read(srv.cert_path()).unwrap();
    // New key pair in place, then reload (what SIGHUP does).
    make_cert(srv.dir.path());
    assert_ne!(std::fs::read(srv.cert_path()).unwrap(), old_cert);
    let msg = srv.daemon.as_ref().unwrap().reload().unwrap();
    assert!(msg.contains("tls"), "{msg}");
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("STARTTLS", "220").await;
    let (tcp, _) = c.into_inner();
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&srv.cert_path()));
    // Trusting only the new certificate works.
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("new certificate served");
    // A broken certificate file is refused and the old config kept.
    std::fs::write(srv.cert_path(), b"garbage").unwrap();
    assert!(srv.daemon.as_ref().unwrap().reload().is_err());
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("STARTTLS", "220").await;
}

fn sluice(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn check_names_the_bad_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[limits]\nmessage_sise = 10\n").unwrap();
    let out = sluice(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("message_sise"), "{err}");

    std::fs::write(&cfg, "[[listener]]\nid = \"x\"\naddress = \"localhost\"\n").unwrap();
    let out = sluice(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listener[0].address"));

    std::fs::write(&cfg, "hostname = \"mx.ok.example\"\n").unwrap();
    let out = sluice(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Environment overrides the file, and bad values there are named too.
    let out = sluice(
        &["check", "-c", cfg.to_str().unwrap()],
        &[("SLUICE_LIMITS__RECIPIENTS", "0")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.recipients"));
    // A TLS listener without a readable certificate is an error at check time.
    std::fs::write(
        &cfg,
        "[[listener]]\nid = \"s\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n[tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let out = sluice(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cert.pem"));
}

#[test]
fn help_works_for_every_subcommand() {
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["queue", "--help"],
        &["queue", "show", "--help"],
        &["bench", "--help"],
        &["reload", "--help"],
    ] {
        let out = sluice(sub, &[]);
        assert!(out.status.success(), "{sub:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn queue_show_without_daemon_prints_envelope_then_raw_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg_text = format!(
        "data_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\n[queue]\ndeliver = false\n",
        data,
        data.join("control.sock")
    );
    let id = rt.block_on(async {
        let cfg = sluice::config::Config::from_toml_str(&cfg_text).unwrap();
        let d = sluice::daemon::Daemon::start(cfg).await.unwrap();
        let mut c = Client::connect(d.addr("inbound").unwrap()).await;
        c.greet().await;
        let r = c
            .send_message("a@example.net", &["b@example.org"], MSG, "250")
            .await;
        d.shutdown().await;
        r.text.rsplit(' ').next().unwrap().to_string()
    });
    drop(rt);
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let out = sluice(&["queue", "show", &id, "-c", cfg.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("attempts: 0\n") || text.contains(&format!("id: {id}\n")),
        "{text}"
    );
    assert!(text.ends_with(MSG), "{text}");
    let out = sluice(&["queue", "list", "-c", cfg.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
}

#[test]
fn test_script_shows_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mailfrom.lua");
    std::fs::write(&script, r#"if arguments.address.domain == "spam.example" then Reject("no spam", {reply_codes = {code = 554}}) end"#).unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, format!("[scripts]\nmailfrom = {script:?}\n")).unwrap();
    let out = sluice(
        &[
            "test-script",
            "mailfrom",
            "-c",
            cfg.to_str().unwrap(),
            "--envelope",
            r#"{"arguments":{"sender":"x@spam.example"}}"#,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "Reject", "{v}");
    assert!(v.to_string().contains("554"), "{v}");
    let out = sluice(
        &[
            "test-script",
            "mailfrom",
            "-c",
            cfg.to_str().unwrap(),
            "--envelope",
            r#"{"arguments":{"sender":"x@good.example"}}"#,
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "Pass", "{v}");
}

/// `sluice queue list | head -1`: a reader that goes away ends the command
/// by SIGPIPE like any Unix tool, not by a panic message.
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n",
            dir.path().join("var"),
            dir.path().join("var/control.sock")
        ),
    )
    .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["queue", "list", "-c"])
        .arg(&cfg)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}
