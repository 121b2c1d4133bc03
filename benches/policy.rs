//! CPU per policy hook run, in-process: the scripts of
//! benches/policy-overhead.sh (benches/scripts/*.lua) through
//! `PolicyEngine::run` with the inputs a 10 KiB message to one recipient
//! gives them, and an empty script (the engine's own cost). Steadier than
//! the SMTP bench for before/after figures of the engine alone (it measures
//! this thread's CPU time, not the wall clock).
//!
//!     cargo bench --bench policy

use serde_json::json;
use sluice::config::Config;
use sluice::policy::{test_input, Hook, PolicyEngine, ScriptSource};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::thread_cpu_secs;

fn message() -> Vec<u8> {
    let mut m = String::from(
        "From: a@example.net\r\nTo: b@example.org\r\nSubject: bench\r\n\
         Message-ID: <bench@example.net>\r\nDate: Thu, 3 Dec 2026 09:00:00 +0000\r\n\r\n",
    );
    while m.len() < 10_240 {
        m.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    m.into_bytes()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let runs: usize = if benching { 50_000 } else { 500 };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scripts");
    let hooks = [
        (Hook::Connect, "connect.lua"),
        (Hook::Helo, "helo.lua"),
        (Hook::MailFrom, "mailfrom.lua"),
        (Hook::RcptTo, "rcptto.lua"),
        (Hook::Eod, "eod.lua"),
    ];
    let sources: Vec<ScriptSource> = hooks
        .iter()
        .map(|(hook, file)| ScriptSource {
            hook: *hook,
            name: file.to_string(),
            source: std::fs::read_to_string(dir.join(file)).expect("bench script"),
        })
        .collect();
    let engine = PolicyEngine::load_with(&Config::default(), &sources).expect("engine");
    let envelope = json!({
        "sender": "a@example.net",
        "recipients": ["b@example.org"],
        "arguments": {"host": "client.example.net"},
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut total = 0.0;
    // `cargo bench --bench policy -- empty`: only the empty script (to profile).
    let only_empty = std::env::args().any(|a| a == "empty");
    rt.block_on(async {
        for (hook, file) in hooks.into_iter().filter(|_| !only_empty) {
            let msg = matches!(hook, Hook::Eod).then(message);
            let mut input = test_input(hook, &envelope, msg).expect("input");
            input.context = json!({"seen": 1, "helo": "client.example.net"});
            // Warm up (the pooled state, its compiled chunk), then measure.
            for _ in 0..100 {
                engine.run(hook, input.clone()).await;
            }
            let cpu0 = thread_cpu_secs();
            for _ in 0..runs {
                let out = engine.run(hook, input.clone()).await;
                assert!(out.error.is_none(), "{file}: {:?}", out.error);
            }
            let us = (thread_cpu_secs() - cpu0) * 1e6 / runs as f64;
            total += us;
            println!(
                "{:<10} {file:<14} {us:>7.2} µs CPU per run",
                hook.spec().name
            );
        }
    });
    // The engine's own cost per run: an empty script.
    let empty = PolicyEngine::load_with(
        &Config::default(),
        &[ScriptSource {
            hook: Hook::RcptTo,
            name: "empty.lua".into(),
            source: String::new(),
        }],
    )
    .expect("engine");
    rt.block_on(async {
        let input = test_input(Hook::RcptTo, &envelope, None).expect("input");
        for _ in 0..100 {
            empty.run(Hook::RcptTo, input.clone()).await;
        }
        let cpu0 = thread_cpu_secs();
        for _ in 0..runs {
            empty.run(Hook::RcptTo, input.clone()).await;
        }
        let us = (thread_cpu_secs() - cpu0) * 1e6 / runs as f64;
        println!(
            "{:<10} {:<14} {us:>7.2} µs CPU per run",
            "rcptto", "(empty)"
        );
    });
    println!(
        "per message (mailfrom + rcptto + eod, as in policy-overhead.sh): see the three rows; \
         all five: {total:.2} µs"
    );
}
