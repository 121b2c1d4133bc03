//! The history export against a real ClickHouse (Debian's
//! clickhouse-server, 18.16, started here on loopback): two Sluice nodes
//! export into one table; `sluice history --cluster` and `sluice trace
//! --cluster` find both nodes' records; ClickHouse killed and restarted →
//! every record arrives exactly once; a node killed with -9 mid-export →
//! nothing lost, nothing doubled.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::export::test_server::ClickHouse;

use serde_json::Value;

const RCPT: &str = "shared@example.org";

struct Node {
    name: String,
    cfg: PathBuf,
    port: u16,
    http: u16,
    child: Option<tokio::process::Child>,
}

impl Node {
    fn new(root: &Path, name: &str, ch_port: u16) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let http = free_port();
        let cfg = dir.join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "hostname = \"{name}\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n\
                 [[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{port}\"\n\
                 [queue]\ndeliver = false\n[auth]\nresults = false\n\
                 [history.export]\nkind = \"clickhouse\"\nurl = \"http://127.0.0.1:{ch_port}\"\n\
                 flush_interval = \"200ms\"\nbatch = 50\ntimeout = \"3s\"\n\
                 [http]\naddress = \"127.0.0.1:{http}\"\ntoken = \"export-test-token\"\n",
                dir.join("var"),
                dir.join("control.sock")
            ),
        )
        .unwrap();
        Node {
            name: name.into(),
            cfg,
            port,
            http,
            child: None,
        }
    }

    async fn start(&mut self) {
        self.child = Some(spawn_daemon(&self.cfg));
        wait_listening(self.port).await;
    }

    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().unwrap();
            c.wait().await.unwrap();
        }
    }

    async fn send(&self, n: usize, msgid: &str) {
        let mut c = Client::connect(([127, 0, 0, 1], self.port).into()).await;
        c.greet().await;
        for i in 0..n {
            c.send_message(
                "sender@example.net",
                &[RCPT],
                &format!("Message-ID: <{msgid}.{i}@example.net>\r\nSubject: {i}\r\n\r\nbody\r\n"),
                "250",
            )
            .await;
        }
    }

    async fn sluice(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .arg("-c")
            .arg(&self.cfg)
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// This node's own records for RCPT (its local history).
    async fn local_hids(&self) -> BTreeSet<String> {
        let (ok, out, err) = self
            .sluice(&["history", "--json", "--recipient", RCPT, "--limit", "10000"])
            .await;
        assert!(ok, "local history on {}: {err}", self.name);
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["hid"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Fleet rows for RCPT as (node, hid) with how often each came back.
async fn cluster(node: &Node) -> Result<BTreeMap<(String, String), usize>, String> {
    let (ok, out, err) = node
        .sluice(&[
            "history",
            "--cluster",
            "--json",
            "--recipient",
            RCPT,
            "--limit",
            "10000",
        ])
        .await;
    if !ok {
        return Err(err);
    }
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    let mut seen = BTreeMap::new();
    for r in v.as_array().unwrap() {
        assert_eq!(r["recipient"], RCPT);
        let key = (
            r["node"].as_str().unwrap_or("").to_string(),
            r["hid"].as_str().unwrap_or("").to_string(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Wait until the fleet holds exactly the nodes' local records, once each.
async fn converges(nodes: &[&Node], what: &str) -> BTreeMap<(String, String), usize> {
    let mut want = BTreeSet::new();
    for n in nodes {
        for h in n.local_hids().await {
            want.insert((n.name.clone(), h));
        }
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cluster(nodes[0]).await;
        if let Ok(g) = &got {
            let keys: BTreeSet<(String, String)> = g.keys().cloned().collect();
            if keys == want {
                assert!(
                    g.values().all(|n| *n == 1),
                    "{what}: a record came back twice: {g:?}"
                );
                return g.clone();
            }
            assert!(
                keys.is_subset(&want),
                "{what}: rows nobody wrote: {:?}",
                keys.difference(&want)
            );
        }
        assert!(
            Instant::now() < until,
            "{what}: the fleet never matched the nodes' {} records: {got:?}",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_export_through_an_outage_and_a_kill() {
    let root = tempfile::tempdir().unwrap();
    let mut ch = ClickHouse::start(&root.path().join("clickhouse"));
    let mut a = Node::new(root.path(), "mx-a", ch.http);
    let mut b = Node::new(root.path(), "mx-b", ch.http);

    let (ok, out, err) = a.sluice(&["history", "init-export"]).await;
    assert!(ok, "init-export: {err}");
    assert!(out.contains("ReplacingMergeTree"), "{out}");
    let cols = ch.sql("DESCRIBE TABLE sluice.history").unwrap();
    for col in ["node", "hid", "recipient", "day"] {
        assert!(
            cols.lines().any(|l| l.starts_with(col)),
            "no {col} column: {cols}"
        );
    }
    // Twice is fine (IF NOT EXISTS).
    assert!(a.sluice(&["history", "init-export"]).await.0);

    a.start().await;
    b.start().await;
    a.send(3, "same").await;
    b.send(2, "same").await;
    let fleet = converges(&[&a, &b], "first export").await;
    let nodes: BTreeSet<&str> = fleet.keys().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["mx-a", "mx-b"]));
    assert_eq!(fleet.len(), 5);

    // Text and CSV lead with the node.
    let (ok, out, err) = a
        .sluice(&["history", "--cluster", "--recipient", RCPT])
        .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        out.lines()
            .all(|l| l.starts_with("mx-a ") || l.starts_with("mx-b ")),
        "{out}"
    );
    let (_, csv, _) = a
        .sluice(&["history", "--cluster", "--csv", "--recipient", RCPT])
        .await;
    assert!(csv.starts_with("node,ts,action"), "{csv}");

    // The API's cluster=1: the same rows, with their nodes.
    let api = std::process::Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-H",
            "Authorization: Bearer export-test-token",
        ])
        .arg(format!(
            "http://127.0.0.1:{}/api/v1/history?recipient={}&cluster=1&limit=1000",
            b.http,
            RCPT.replace('@', "%40")
        ))
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&api.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&api.stdout)));
    let api_keys: BTreeSet<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_string(),
                r["hid"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(api_keys, fleet.keys().cloned().collect::<BTreeSet<_>>());

    // The message that "passed through" both nodes, traced across them.
    let (ok, out, err) = b
        .sluice(&["trace", "--cluster", "--json", "<same.0@example.net>"])
        .await;
    assert!(ok, "trace --cluster: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let traced: BTreeSet<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(traced, BTreeSet::from(["mx-a", "mx-b"]), "{out}");
    let (ok, out, _) = a
        .sluice(&["trace", "--cluster", "<same.0@example.net>"])
        .await;
    assert!(ok && out.contains("mx-a") && out.contains("mx-b"), "{out}");

    // ClickHouse down: mail keeps coming, the lag shows, nothing is lost.
    ch.kill();
    a.send(4, "outage").await;
    let mut status = Value::Null;
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let (ok, out, err) = a.sluice(&["history", "--export-status", "--json"]).await;
        assert!(ok, "export-status: {err}");
        status = serde_json::from_str(&out).unwrap();
        if status["waiting"].as_u64().unwrap_or(0) >= 4 && status["failing_since"].is_number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        status["waiting"].as_u64().unwrap_or(0) >= 4 && status["failing_since"].is_number(),
        "the outage does not show: {status}"
    );
    assert!(
        cluster(&a).await.is_err(),
        "--cluster with ClickHouse down must fail"
    );
    ch.spawn();
    let fleet = converges(&[&a, &b], "after the outage").await;
    assert_eq!(fleet.len(), 9);
    let (_, out, _) = a.sluice(&["history", "--export-status"]).await;
    assert!(out.contains("0 records waiting"), "{out}");

    // kill -9 while records are being exported, then restart.
    let sending = {
        let port = a.port;
        tokio::spawn(async move {
            let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
            c.greet().await;
            let mut acked = 0;
            for i in 0..200 {
                let r = c
                    .send_message(
                        "sender@example.net",
                        &[RCPT],
                        &format!("Message-ID: <kill.{i}@example.net>\r\n\r\nx\r\n"),
                        "",
                    )
                    .await;
                if !r.text.starts_with("250") {
                    break;
                }
                acked += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill9().await;
    let _ = sending.await;
    a.start().await;
    let fleet = converges(&[&a, &b], "after kill -9").await;
    assert!(fleet.len() > 9, "nothing sent before the kill?");
    // And in ClickHouse itself, before any merge: each (node, hid) once
    // through the query path, whatever the raw table holds.
    let distinct = ch
        .sql("SELECT count() FROM (SELECT node, hid FROM sluice.history GROUP BY node, hid)")
        .unwrap();
    assert_eq!(distinct.trim().parse::<usize>().unwrap(), fleet.len());

    // Retention: 18.16 has no TTL; the exporter drops expired days.
    ch.sql(
        "INSERT INTO sluice.history (node, hid, ts, day, action, recipient) \
         VALUES ('mx-old', 'x', 1000000000, toDate('2001-09-09'), 'DELIVER', 'old@example.org')",
    )
    .unwrap();
    let export = sluice::config::ExportConfig {
        kind: "clickhouse".into(),
        url: format!("http://127.0.0.1:{}", ch.http),
        ..Default::default()
    };
    let dropped = sluice::export::drop_expired(&export, Duration::from_secs(30 * 86400))
        .await
        .unwrap();
    assert_eq!(dropped, ["20010909"]);
    let left = ch
        .sql("SELECT count() FROM sluice.history WHERE node = 'mx-old'")
        .unwrap();
    assert_eq!(left.trim(), "0");
    assert_eq!(
        cluster(&a).await.unwrap().len(),
        fleet.len(),
        "today's rows kept"
    );

    a.kill9().await;
    b.kill9().await;
    ch.kill();
}
