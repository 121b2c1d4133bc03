//! `rate.check` per second on one core: the local backend (the store
//! directly, and through a Lua hook), and Redis (one round trip per check,
//! and pipelined). Redis is a `redis-server` the bench starts on a free
//! loopback port; without the binary that part is skipped with a message
//! (benches are not CI tests).
//!
//!     cargo bench --bench state
//!
//! `SLUICE_BENCH_CHECKS` sets the number of checks (default 200,000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::policy::{test_input, Hook, PolicyEngine, ScriptSource};
use sluice::state::StateStore;

fn report(what: &str, n: usize, t: Duration) {
    println!(
        "{what:<44} {:>10.0} checks/s  ({n} in {:.2} s)",
        n as f64 / t.as_secs_f64(),
        t.as_secs_f64()
    );
}

async fn lua_loop(store: std::sync::Arc<StateStore>, what: &str, n: usize) {
    let per_run = 1000;
    let engine = PolicyEngine::load_with(
        &Config::default(),
        &[ScriptSource {
            hook: Hook::RcptTo,
            name: "bench.lua".into(),
            source: format!(
                "for i = 1, {per_run} do rate.check(\"bench:\" .. (i % 500), 1000000, 60) end"
            ),
        }],
    )
    .expect("engine");
    engine.set_state(store);
    let input = test_input(Hook::RcptTo, &serde_json::json!({}), None).expect("input");
    let runs = n.div_ceil(per_run);
    let t = Instant::now();
    for _ in 0..runs {
        let out = engine.run(Hook::RcptTo, input.clone()).await;
        assert!(out.error.is_none(), "{:?}", out.error);
    }
    report(what, runs * per_run, t.elapsed());
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("SLUICE_BENCH_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 200_000 } else { 2_000 });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let keys: Vec<String> = (0..n).map(|i| format!("bench:{}", i % 10_000)).collect();
        let local = StateStore::local();
        let t = Instant::now();
        for k in &keys {
            local
                .rate(k, 1_000_000, Duration::from_secs(60), 1, false)
                .await
                .expect("local");
        }
        report("local, StateStore::rate", n, t.elapsed());
        lua_loop(StateStore::local(), "local, rate.check in a Lua hook", n).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            println!("redis: skipped (no redis-server binary)");
            return;
        };
        let cfg = Config::from_toml_str(&format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"5s\"\n"
        ))
        .expect("config");
        let redis = StateStore::new(&cfg.state).expect("redis store");
        let mut up = false;
        for _ in 0..200 {
            if redis.get("m", "ping").await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if up {
            let seq = n / 10;
            let t = Instant::now();
            for k in &keys[..seq] {
                redis
                    .rate(k, 1_000_000, Duration::from_secs(60), 1, false)
                    .await
                    .expect("redis");
            }
            report("redis, one round trip per check", seq, t.elapsed());
            let t = Instant::now();
            let mut done = 0;
            for chunk in keys.chunks(1000) {
                done += redis
                    .rate_batch(chunk, 1_000_000, Duration::from_secs(60))
                    .await
                    .expect("pipeline");
            }
            report("redis, pipelined (1000 per batch)", done, t.elapsed());
            // Concurrent sessions share the multiplexed connection.
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for c in 0..64 {
                let r = redis.clone();
                let ks: Vec<String> = keys[..seq].iter().skip(c).step_by(64).cloned().collect();
                set.spawn(async move {
                    for k in &ks {
                        r.rate(k, 1_000_000, Duration::from_secs(60), 1, false)
                            .await
                            .expect("redis");
                    }
                    ks.len()
                });
            }
            let mut total = 0;
            while let Some(r) = set.join_next().await {
                total += r.expect("task");
            }
            report("redis, 64 concurrent callers", total, t.elapsed());
            lua_loop(redis, "redis, rate.check in a Lua hook", seq).await;
        } else {
            println!("redis: skipped (redis-server did not answer)");
        }
        let _ = child.kill();
        let _ = child.wait();
    });
}
