//! The history export against a private clickhouse-server (Debian's 18.16):
//! - export rate: a store of N records (`SLUICE_BENCH_RECORDS`, default
//!   200,000) copied by the exporter, rows/s from start to the last cursor;
//! - fleet query latency: one recipient and one Message-ID among M rows
//!   (`SLUICE_BENCH_CH_ROWS`, default 100,000,000) generated inside
//!   ClickHouse with `numbers()`, through `sluice::export::cluster_history`.
//!
//!     cargo bench --bench export
//!
//! Without `--bench` (`cargo test --all-targets`) a small smoke run; skipped
//! when clickhouse-server is not installed.

use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::export::test_server::{self, ClickHouse};
use sluice::store::history::{HistoryAction, HistoryQuery, HistoryRecord};
use sluice::store::Store;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    if !test_server::available() {
        println!("clickhouse-server not installed: export bench skipped");
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env(
        "SLUICE_BENCH_RECORDS",
        if benching { 200_000 } else { 2_000 },
    );
    let m = env(
        "SLUICE_BENCH_CH_ROWS",
        if benching { 100_000_000 } else { 10_000 },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = ClickHouse::start(&dir.path().join("clickhouse"));
    let mut cfg = Config {
        hostname: "bench-node".into(),
        ..Default::default()
    };
    cfg.history.export.kind = "clickhouse".into();
    cfg.history.export.url = format!("http://127.0.0.1:{}", ch.http);
    cfg.history.export.flush_interval = Duration::from_millis(50);
    cfg.history.export.timeout = Duration::from_secs(600);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sluice::export::init(&cfg).await.expect("init-export");
        let store = Store::open(&dir.path().join("var")).expect("store");
        let ts = now();
        let recs: Vec<HistoryRecord> = (0..n)
            .map(|k| HistoryRecord {
                ts,
                action: HistoryAction::Deliver,
                id: format!("{k:016x}"),
                transaction: format!("t{k:015x}"),
                message_id: Some(format!("<{k}@bench.example>")),
                sender: format!("sender{}@example.net", k % 5000),
                recipient: format!("user{}@domain{}.example", k % 200_000, k % 1000),
                transportid: "mailstore".into(),
                size: 10_240,
                client_ip: "198.51.100.7".into(),
                serverid: "inbound".into(),
                connection: format!("{:016x}", k / 3),
                reason: format!("250 2.0.0 Ok: queued as {k:X}"),
                remote_host: Some("store1.example.org".into()),
                remote_ip: Some("10.0.0.25".into()),
                attempt: 1,
                ..Default::default()
            })
            .collect();
        for chunk in recs.chunks(1024) {
            store.append_history(chunk).expect("append");
        }
        let last = store
            .query_history(&HistoryQuery {
                newest_first: true,
                limit: Some(1),
                ..Default::default()
            })
            .expect("last")[0]
            .0
            .clone();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let t = Instant::now();
        let task = tokio::spawn(sluice::export::run(
            store.clone(),
            cfg.history.export.clone(),
            cfg.hostname.clone(),
            cfg.history.retention,
            stop_rx,
        ));
        let deadline = Instant::now() + Duration::from_secs(900);
        while sluice::export::cursor(&store).expect("cursor").as_deref() != Some(last.as_str()) {
            assert!(Instant::now() < deadline, "export did not finish in 15 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let _ = stop.send(true);
        let _ = task.await;
        println!(
            "export: {n} records into ClickHouse in {secs:.2} s = {:.0} rows/s (batch {})",
            n as f64 / secs,
            cfg.history.export.batch
        );

        let t = Instant::now();
        ch.sql(&format!(
            "INSERT INTO sluice.history (node, hid, ts, day, action, id, transaction, message_id, \
             sender, recipient, recipient_domain, reason) \
             SELECT concat('gen-', toString(number % 8)), toString(number), {ts} - (number % 2592000), \
             toDate({ts} - (number % 2592000)), 'DELIVER', hex(number), hex(number + 1), \
             concat('<', toString(number), '@gen.example>'), concat('s', toString(number % 5000), '@example.net'), \
             concat('g', toString(number % 1000000), '@d', toString(number % 1000), '.example'), \
             concat('d', toString(number % 1000), '.example'), '250 2.0.0 Ok' FROM numbers({m})"
        ))
        .expect("generate rows");
        println!(
            "generated {m} rows with numbers() in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let probe = m / 2;
        for (name, q) in [
            (
                "one recipient",
                HistoryQuery {
                    recipient: Some(format!("g{}@d{}.example", probe % 1_000_000, probe % 1000)),
                    limit: Some(1000),
                    ..Default::default()
                },
            ),
            (
                "one message-id",
                HistoryQuery {
                    id: Some(format!("<{probe}@gen.example>")),
                    ..Default::default()
                },
            ),
        ] {
            let mut best = f64::MAX;
            let mut found = 0;
            for _ in 0..3 {
                let t = Instant::now();
                found = sluice::export::cluster_history(&cfg, &q)
                    .await
                    .expect("cluster query")
                    .len();
                best = best.min(t.elapsed().as_secs_f64() * 1000.0);
            }
            println!("fleet query, {name} among {m} rows: {found} rows in {best:.0} ms");
            assert!(found > 0, "{name}: nothing found");
        }
    });
}
