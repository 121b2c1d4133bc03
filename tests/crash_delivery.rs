//! kill -9 during delivery: after a restart everything that was queued is
//! delivered; only messages whose 250 from the next hop raced the crash may
//! arrive twice; every message ends with a DELIVER record.

mod common;
use common::*;

use std::collections::HashMap;
use std::time::Duration;

fn subject_numbers(msgs: &[Received]) -> HashMap<usize, usize> {
    let mut seen = HashMap::new();
    for m in msgs {
        let t = String::from_utf8_lossy(&m.data);
        if let Some(n) = t
            .split("Subject: crash-delivery ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .and_then(|n| n.parse().ok())
        {
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_nothing() {
    const N: usize = 200;
    let sink = Sink::start(false, false).await;
    sink.delay_ms
        .store(40, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"mx.crash.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{port}\"\n[queue]\nmin_retry_delay = \"1s\"\nmax_active = 8\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\nconcurrency = 4\nconnections_per_destination = 4\n",
            dir.path().join("var"),
            dir.path().join("var/control.sock"),
            sink.addr
        ),
    )
    .unwrap();
    let mut child = spawn_daemon(&cfg);
    wait_listening(port).await;
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    c.greet().await;
    for n in 0..N {
        c.send_message(
            "s@example.net",
            &["r@example.org"],
            &format!("Subject: crash-delivery {n}\r\n\r\nbody {n}\r\n"),
            "250",
        )
        .await;
    }
    // Kill while delivery is under way.
    for _ in 0..400 {
        if sink.messages().len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let at_kill = sink.messages().len();
    assert!(
        at_kill < N,
        "delivery finished before the kill; the test proves nothing"
    );

    let mut child = spawn_daemon(&cfg);
    wait_listening(port).await;
    // Bounded wait for everything to arrive.
    for _ in 0..600 {
        if subject_numbers(&sink.messages()).len() == N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = subject_numbers(&sink.messages());
    assert_eq!(
        seen.len(),
        N,
        "lost messages: {:?}",
        (0..N).filter(|n| !seen.contains_key(n)).collect::<Vec<_>>()
    );
    let dups: usize = seen.values().map(|v| v - 1).sum();
    assert!(
        dups <= 8,
        "{dups} duplicates: more than the attempts in flight at the kill"
    );
    // Drained, and the history tells the story.
    let mut drained = false;
    for _ in 0..200 {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["queue", "list", "--json", "-c"])
            .arg(&cfg)
            .output()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v.as_array().is_some_and(|a| a.is_empty()) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(drained, "queue not drained after restart");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "history", "--action", "DELIVER", "--limit", "100000", "--json", "-c",
        ])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v.as_array().unwrap().len() >= N,
        "every message has a DELIVER record"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
