//! kill -9 during history pruning: the daemon prunes expired records at
//! start; killed half way through, the restarted daemon finishes the job,
//! every record still within retention is intact and found through its
//! indexes, no query trips over a half-removed record, and the queue is
//! untouched.

mod common;
use common::*;

use std::time::Duration;

use sluice::store::history::{HistoryAction, HistoryQuery, HistoryRecord};

const OLD: usize = 300_000;
const FRESH: usize = 200;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn record(rcpt: String, ts: f64) -> HistoryRecord {
    HistoryRecord {
        ts,
        action: HistoryAction::Deliver,
        id: format!("q-{rcpt}"),
        sender: "s@example.net".into(),
        recipient: rcpt,
        transportid: "default".into(),
        reason: "250 2.0.0 ok".into(),
        ..Default::default()
    }
}

fn count(store: &sluice::store::Store, rcpt: &str) -> usize {
    store
        .query_history(&HistoryQuery {
            recipient: Some(rcpt.into()),
            ..Default::default()
        })
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_history_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    {
        let store = sluice::store::Store::open(&data).unwrap();
        let old = now() - 40.0 * 86400.0;
        let batch: Vec<HistoryRecord> = (0..OLD)
            .map(|n| record(format!("old{n}@example.org"), old + n as f64 * 0.001))
            .collect();
        for chunk in batch.chunks(5000) {
            store.append_history(chunk).unwrap();
        }
        let fresh: Vec<HistoryRecord> = (0..FRESH)
            .map(|n| record(format!("new{n}@example.org"), now() - 60.0))
            .collect();
        store.append_history(&fresh).unwrap();
        store.flush_blocking().unwrap();
    }
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"mx.prune.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{port}\"\n[queue]\ndeliver = false\n[history]\nretention = \"30d\"\n[auth]\nresults = false\n",
            data,
            dir.path().join("var/control.sock")
        ),
    )
    .unwrap();

    // Kill at a point inside the prune: try later and later until a kill
    // lands with some but not all expired records gone (bounded tries).
    let mut killed_mid_prune = false;
    let mut acked = Vec::new();
    let mut delay = Duration::from_millis(150);
    for _ in 0..8 {
        let mut child = spawn_daemon(&cfg);
        wait_listening(port).await;
        // A message queued while pruning runs: it must survive the kill.
        let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
        c.greet().await;
        let r = c
            .send_message(
                "s@example.net",
                &["queued@example.org"],
                "Subject: kept\r\n\r\nbody\r\n",
                "250",
            )
            .await;
        acked.push(r.text.rsplit(' ').next().unwrap().to_string());
        tokio::time::sleep(delay).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        let store = sluice::store::Store::open(&data).unwrap();
        let left = store.history_all().unwrap().len();
        let entries = store.list_entries().unwrap().len();
        drop(store);
        assert_eq!(entries, acked.len(), "queued messages lost by the kill");
        println!(
            "kill after {delay:?}: {left} history records left of {}",
            OLD + FRESH
        );
        if left > FRESH && left < OLD + FRESH {
            killed_mid_prune = true;
            break;
        }
        if left <= FRESH {
            // The prune had finished: nothing left to kill it in.
            break;
        }
        delay *= 2;
    }
    assert!(
        killed_mid_prune,
        "no kill landed inside the prune (make OLD larger)"
    );

    // Restart: pruning completes; what is within retention is all there.
    let mut child = spawn_daemon(&cfg);
    wait_listening(port).await;
    let mut queued = Vec::new();
    for _ in 0..300 {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["history", "--json", "--recipient", "new7@example.org", "-c"])
            .arg(&cfg)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "history query failed after the kill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        queued = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        if !queued.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued.len(), 1, "a fresh record is not found by recipient");
    // Wait for the restarted daemon's prune to finish, then look inside.
    tokio::time::sleep(Duration::from_secs(2)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let store = sluice::store::Store::open(&data).unwrap();
    let all = store.history_all().unwrap();
    let old_left = all
        .iter()
        .filter(|r| r.recipient.starts_with("old"))
        .count();
    let fresh_left = all
        .iter()
        .filter(|r| r.recipient.starts_with("new"))
        .count();
    assert_eq!(fresh_left, FRESH, "records within retention lost");
    assert!(
        old_left < OLD,
        "the restarted daemon did not go on pruning ({old_left} expired left)"
    );
    for n in (0..FRESH).step_by(37) {
        assert_eq!(count(&store, &format!("new{n}@example.org")), 1, "new{n}");
    }
    // Half-removed expired records must not surface through their indexes.
    for n in (0..OLD).step_by(997) {
        let c = count(&store, &format!("old{n}@example.org"));
        let there = all
            .iter()
            .any(|r| r.recipient == format!("old{n}@example.org"));
        assert_eq!(c, usize::from(there), "old{n}: index and records disagree");
    }
    let mut ids: Vec<String> = store
        .list_entries()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    acked.sort();
    assert_eq!(ids, acked, "queue changed by pruning and kills");
}
