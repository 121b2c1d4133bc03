//! SIGTERM with 1,000 connections open: idle sessions get `421 4.3.2` at
//! once, transactions already in DATA finish and are acknowledged, the
//! daemon exits within its grace period, and after a restart every
//! acknowledged message is queued, exactly once.

mod common;
use common::*;

use std::time::{Duration, Instant};

const IDLE: usize = 900;
const IN_DATA: usize = 100;
const GRACE_SECS: u64 = 8;

async fn queue_ids(cfg: &std::path::Path) -> Vec<String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["queue", "list", "--json", "-c"])
        .arg(cfg)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_thousand_connections_open() {
    // This process and the daemon it spawns hold a few thousand sockets.
    let nofile = raise_nofile();
    assert!(
        nofile >= 4096,
        "RLIMIT_NOFILE hard limit {nofile} is too low for 1,000 connections"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"mx.term.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{port}\"\n[limits]\nconnections = 2000\nconnections_per_ip = 2000\n[smtp]\nshutdown_grace = \"{GRACE_SECS}s\"\n[queue]\ndeliver = false\n[auth]\nresults = false\n",
            dir.path().join("var"),
            dir.path().join("var/control.sock")
        ),
    )
    .unwrap();
    let mut child = spawn_daemon(&cfg);
    wait_listening(port).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    // 900 sessions idle after EHLO.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut c = Client::connect(addr).await;
        c.greet().await;
        idle.push(c);
    }
    // 100 sessions half way through their message data.
    let mut in_data = Vec::with_capacity(IN_DATA);
    for n in 0..IN_DATA {
        let mut c = Client::connect(addr).await;
        c.greet().await;
        c.cmd("MAIL FROM:<s@example.net>", "250").await;
        c.cmd(&format!("RCPT TO:<r{n}@example.org>"), "250").await;
        c.cmd("DATA", "354").await;
        c.send_raw(
            format!("From: <s@example.net>\r\nSubject: term {n}\r\n\r\nfirst half\r\n").as_bytes(),
        )
        .await;
        in_data.push(c);
    }
    let pid = child.id().unwrap() as i32;
    let termed = Instant::now();
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }

    // Every idle session is told, with the shutdown code.
    let idle_replies = futures_util::future::join_all(idle.iter_mut().map(|c| async move {
        let r = c.try_reply().await;
        (
            r.map(|r| format!("{} {}", r.code, r.text)),
            c.closed().await,
        )
    }))
    .await;
    for (i, (r, closed)) in idle_replies.iter().enumerate() {
        assert!(
            r.as_deref().is_some_and(|r| r.starts_with("421 4.3.2")),
            "idle session {i} got {r:?}"
        );
        assert!(closed, "idle session {i} left open after its 421");
    }

    // The transactions in flight finish within the grace period.
    let mut acked = Vec::new();
    for (n, c) in in_data.iter_mut().enumerate() {
        c.send_raw(b"second half\r\n.\r\n").await;
        let r = c.reply().await;
        assert_eq!(
            r.code, 250,
            "message {n} in DATA at SIGTERM: {} {}",
            r.code, r.text
        );
        acked.push(r.text.rsplit(' ').next().unwrap().to_string());
    }

    let status = tokio::time::timeout(Duration::from_secs(GRACE_SECS + 10), child.wait())
        .await
        .expect("daemon still running long after its grace period")
        .unwrap();
    assert!(status.success(), "daemon exit status {status}");
    let took = termed.elapsed();
    println!(
        "SIGTERM with {} connections: {IDLE} idle sessions got 421 4.3.2, {IN_DATA} messages in DATA acknowledged, exit after {:.2} s",
        IDLE + IN_DATA,
        took.as_secs_f64()
    );

    // Restart: every acknowledged message, once.
    let mut child = spawn_daemon(&cfg);
    wait_listening(port).await;
    let mut ids = queue_ids(&cfg).await;
    ids.sort();
    acked.sort();
    assert_eq!(ids, acked, "queue after restart != acknowledged messages");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
