//! History query speed: fill a fresh store with N records (default
//! 1,000,000; `SLUICE_BENCH_RECORDS` to change), then time queries for one
//! recipient, one queue id and a time window — the index paths.
//!
//!     cargo bench --bench history

use std::time::Instant;

use sluice::store::history::{HistoryQuery, HistoryRecord};
use sluice::store::Store;

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run.
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 2_000 });
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let t = Instant::now();
    let batch = 1000;
    let mut i = 0;
    let mut mid_time = 0.0;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    while i < n {
        if i >= n / 2 && mid_time == 0.0 {
            mid_time = now();
        }
        let ts = now();
        let recs: Vec<HistoryRecord> = (i..(i + batch).min(n))
            .map(|k| HistoryRecord {
                ts,
                action: if k % 10 == 0 {
                    sluice::store::history::HistoryAction::Defer
                } else {
                    sluice::store::history::HistoryAction::Deliver
                },
                id: format!("q{k:010}"),
                transaction: format!("t{:010}", k / 2),
                message_id: Some(format!("m{k}@example.net")),
                sender: format!("sender{}@example.net", k % 5000),
                recipient: format!("user{}@domain{}.example", k % 200_000, k % 1000),
                transportid: "default".into(),
                reason: "250 2.0.0 ok".into(),
                ..Default::default()
            })
            .collect();
        store.append_history(&recs).expect("append");
        i += batch;
    }
    let fill = t.elapsed();
    store.flush_blocking().expect("flush");
    println!(
        "filled {n} records in {:.1}s ({:.0} records/s)",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64()
    );
    let queries: Vec<(&str, HistoryQuery)> = vec![
        (
            "one recipient",
            HistoryQuery {
                recipient: Some(format!(
                    "user{}@domain{}.example",
                    (n / 2) % 200_000,
                    (n / 2) % 1000
                )),
                ..Default::default()
            },
        ),
        (
            "one queue id",
            HistoryQuery {
                id: Some(format!("q{:010}", n / 2)),
                ..Default::default()
            },
        ),
        (
            "one message-id",
            HistoryQuery {
                id: Some(format!("m{}@example.net", n / 3)),
                ..Default::default()
            },
        ),
        (
            "sender, limit 100",
            HistoryQuery {
                sender: Some("sender7@example.net".into()),
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
    ];
    for (name, q) in queries {
        // Warm once, then take the best of 5 (the cache is what a running daemon has).
        let _ = store.query_history(&q).expect("query");
        let mut best = f64::MAX;
        let mut found = 0;
        for _ in 0..5 {
            let t = Instant::now();
            found = store.query_history(&q).expect("query").len();
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("{name:<20} {found:>6} records in {best:.2} ms");
        assert!(found > 0, "{name}: the index found nothing");
    }
}
