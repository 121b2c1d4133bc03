//! History at scale: fill a fresh store with N realistic records (default
//! 10,000,000; `SLUICE_BENCH_RECORDS` to change) as a gateway writes them —
//! RECEIVED, sometimes DEFER, then DELIVER per message, in the history
//! writer's batches — then:
//! - bytes per record on disk right after the fill and at steady state:
//!   `SLUICE_BENCH_CYCLES` (default 5) rounds of writing a fifth more and
//!   pruning back to N (what retention does every day);
//! - fill rate (records/s);
//! - query latencies: one recipient, one queue id, one message-id, a
//!   sender (limit 100), a 50 ms time window, a free-text search;
//! - pruning rate.
//!
//!     cargo bench --bench history

use std::time::Instant;

use sluice::store::history::{HistoryAction, HistoryQuery, HistoryRecord};
use sluice::store::Store;

const USERS: usize = 200_000;
const DOMAINS: usize = 1000;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn recipient(m: usize) -> String {
    format!("user{}@domain{}.example", m % USERS, m % DOMAINS)
}

/// The records of message `m` (2 or 3).
fn message(m: usize, ts: f64, out: &mut Vec<HistoryRecord>) {
    let qid = format!("{:016x}", 0x0001_9000_0000_0000u64 + m as u64 * 7919);
    let base = HistoryRecord {
        ts,
        action: HistoryAction::Received,
        id: qid.clone(),
        transaction: format!("{:016x}", 0x0002_9000_0000_0000u64 + m as u64 * 104_729),
        message_id: Some(format!("<{:x}.{m}@mail{}.example.net>", m * 31, m % 300)),
        sender: format!("sender{}@example{}.net", m % 5000, m % 50),
        recipient: recipient(m),
        transportid: "mailstore".into(),
        size: 2_000 + (m * 37 % 60_000) as u64,
        client_ip: format!("198.51.{}.{}", m % 200, m % 250),
        serverid: "inbound".into(),
        connection: format!("{:016x}", 0x0003_9000_0000_0000u64 + (m / 3) as u64),
        reason: format!("queued as {qid}"),
        metadata: [
            ("decided_by".to_string(), "eodrcpt".to_string()),
            ("spf".to_string(), "pass".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    out.push(base.clone());
    if m.is_multiple_of(10) {
        out.push(HistoryRecord {
            action: HistoryAction::Defer,
            reason: "451 4.3.0 mailstore busy, try again".into(),
            remote_host: Some("store1.example.org".into()),
            remote_ip: Some("10.0.0.25".into()),
            attempt: 1,
            next_retry: Some(ts + 300.0),
            ..base.clone()
        });
    }
    out.push(HistoryRecord {
        action: HistoryAction::Deliver,
        reason: format!("250 2.0.0 Ok: queued as {:X}", m * 2654435761 % 0xffff_ffff),
        remote_host: Some("store1.example.org".into()),
        remote_ip: Some("10.0.0.25".into()),
        attempt: 1 + m.is_multiple_of(10) as u32,
        ..base
    });
}

fn du(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if md.is_dir() {
                du(&e.path())
            } else {
                // Allocated blocks, not the apparent size: sparse regions
                // sled punched out are space given back.
                std::os::unix::fs::MetadataExt::blocks(&md) * 512
            };
        }
    }
    total
}

/// Write `count` records' worth of messages starting at message `m`;
/// returns the next message number and how many records went in.
fn fill(store: &Store, mut m: usize, count: usize) -> (usize, usize) {
    let mut written = 0;
    let mut batch = Vec::with_capacity(1100);
    while written < count {
        batch.clear();
        let ts = now();
        while batch.len() < 1024 {
            message(m, ts, &mut batch);
            m += 1;
        }
        store.append_history(&batch).expect("append");
        written += batch.len();
    }
    (m, written)
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run.
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env(
        "SLUICE_BENCH_RECORDS",
        if benching { 10_000_000 } else { 20_000 },
    );
    let cycles = env("SLUICE_BENCH_CYCLES", if benching { 5 } else { 2 });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let hdir = dir.path().join("history");

    let t = Instant::now();
    let (half, _) = fill(&store, 0, n / 2);
    let mid_time = now();
    let (mut next, _) = fill(&store, half, n - store.history_len() as usize);
    let fill_s = t.elapsed().as_secs_f64();
    store.flush_blocking().expect("flush");
    let len = store.history_len();
    println!(
        "fill: {len} records in {fill_s:.1} s = {:.0} records/s",
        len as f64 / fill_s
    );
    let after_fill = du(&hdir);
    println!(
        "size after the fill: {:.1} MB = {:.0} bytes/record",
        after_fill as f64 / 1e6,
        after_fill as f64 / len as f64
    );

    // Steady state: write a fifth more, prune back to n, repeatedly.
    for c in 1..=cycles {
        let (m, wrote) = fill(&store, next, n / 5);
        next = m;
        let t = Instant::now();
        let pruned = store.prune_history(0.0, n as u64).expect("prune");
        let prune_s = t.elapsed().as_secs_f64();
        store.flush_blocking().expect("flush");
        let size = du(&hdir);
        println!(
            "cycle {c}: +{wrote} -{pruned} ({:.0} records/s pruned) → {} records, {:.1} MB = {:.0} bytes/record",
            pruned as f64 / prune_s.max(1e-9),
            store.history_len(),
            size as f64 / 1e6,
            size as f64 / store.history_len() as f64
        );
    }

    // The oldest half was pruned by the cycles when there were any: query
    // what is still there.
    let probe = next - n / 8;
    let queries: Vec<(&str, HistoryQuery)> = vec![
        (
            "one recipient",
            HistoryQuery {
                recipient: Some(recipient(probe)),
                ..Default::default()
            },
        ),
        (
            "one recipient, newest 50",
            HistoryQuery {
                recipient: Some(recipient(probe)),
                newest_first: true,
                limit: Some(50),
                ..Default::default()
            },
        ),
        (
            "one queue id",
            HistoryQuery {
                id: Some(format!(
                    "{:016x}",
                    0x0001_9000_0000_0000u64 + probe as u64 * 7919
                )),
                ..Default::default()
            },
        ),
        (
            "one message-id",
            HistoryQuery {
                id: Some(format!(
                    "{:x}.{probe}@mail{}.example.net",
                    probe * 31,
                    probe % 300
                )),
                ..Default::default()
            },
        ),
        (
            "sender, limit 100",
            HistoryQuery {
                sender: Some(format!("sender{}@example{}.net", probe % 5000, probe % 50)),
                limit: Some(100),
                ..Default::default()
            },
        ),
        (
            "50 ms time window",
            HistoryQuery {
                since: Some(mid_time),
                until: Some(mid_time + 0.05),
                ..Default::default()
            },
        ),
        (
            "text, newest 20",
            HistoryQuery {
                text: Some("mailstore busy".into()),
                newest_first: true,
                limit: Some(20),
                ..Default::default()
            },
        ),
    ];
    for (name, q) in queries {
        if cycles > 0 && name == "50 ms time window" {
            // mid_time's records were pruned by the cycles.
            continue;
        }
        // Warm once, then take the best of 5 (the cache is what a running daemon has).
        let _ = store.query_history(&q).expect("query");
        let mut best = f64::MAX;
        let mut found = 0;
        for _ in 0..5 {
            let t = Instant::now();
            found = store.query_history(&q).expect("query").len();
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("{name:<26} {found:>6} records in {best:.2} ms");
        assert!(found > 0, "{name}: the index found nothing");
    }
    // The delivery path appends each outcome on its own (one record, one
    // block): what that costs, on top of the store as it is.
    let singles = (n / 20).max(1000);
    let before = du(&hdir);
    let t = Instant::now();
    let mut batch = Vec::new();
    let mut wrote = 0;
    while wrote < singles {
        batch.clear();
        message(next, now(), &mut batch);
        next += 1;
        for r in &batch {
            store
                .append_history(std::slice::from_ref(r))
                .expect("append");
        }
        wrote += batch.len();
    }
    let single_s = t.elapsed().as_secs_f64();
    store.flush_blocking().expect("flush");
    let grown = du(&hdir).saturating_sub(before);
    println!(
        "one record per append (delivery path): {wrote} records in {single_s:.1} s = {:.0} records/s, +{:.1} MB = {:.0} bytes/record",
        wrote as f64 / single_s,
        grown as f64 / 1e6,
        grown as f64 / wrote as f64
    );

    let t = Instant::now();
    let times = store
        .history_times(HistoryAction::Deliver, 0.0)
        .expect("times");
    println!(
        "chart source: {} DELIVER times from the index in {:.0} ms",
        times.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}
