//! Sender-authentication throughput against a DNS server on 127.0.0.1:
//!
//! 1. ScanDMARC on a DKIM-signed 10 KiB message with a warm DNS cache, on a
//!    single-threaded runtime (checks/s per core), both the Rust check alone
//!    and through `PolicyEngine::run` with a Lua eod script.
//! 2. SPF (`sluice::scan::spf::verify_mail_from`, RFC 7208) of a typical
//!    record set — include + a + mx + ip4, 5 DNS lookups, the client
//!    matching the last term — with a warm cache, on a single-threaded
//!    runtime (checks/s per core).
//! 3. `dnsbl.check` of one address against 4 zones with a cold cache
//!    (every address new), p50/p99 latency; half the addresses are listed
//!    (A + TXT), half are not (NXDOMAIN).
//!
//! `CARGO_TARGET_DIR=… cargo bench --bench auth`

#[path = "../tests/authsupport/mod.rs"]
mod authsupport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use authsupport::keys::{message, Key};
use authsupport::{standard_zone, GOOD_IP};
use bytes::Bytes;
use sluice::config::{Config, DnsConfig};
use sluice::envelope::{Address, ConnectionInfo, HeloInfo, RecipientInfo, TransactionInfo};
use sluice::policy::{Hook, HookArguments, HookInput, PolicyEngine};
use sluice::scan::auth::{scan_dmarc, DmarcVerdict, SpfRequest};
use sluice::scan::dns::Resolver;
use sluice::scan::dnsbl;
use sluice::scan::spf::{self, SpfResult};

const LISTED: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // The DNS server gets its own thread so it does not share the measured core.
    let dkim = Key::generate();
    let arc = Key::generate();
    let mut zone = standard_zone(&dkim, &arc);
    for i in 0..LISTED {
        for k in 0..4 {
            let name = format!("{}.{}.0.10.zone{k}.test", i % 250, 1 + i / 250);
            zone.a(&name, "127.0.0.2")
                .txt(&name, "listed for the benchmark");
        }
    }
    // SPF: TXT spfbench.example, TXT _spf.spfbench.example, A spfbench.example,
    // MX spfbench.example, A mx1.spfbench.example; GOOD_IP matches ip4 last.
    zone.txt(
        "spfbench.example",
        "v=spf1 include:_spf.spfbench.example a mx ip4:192.0.2.10 -all",
    )
    .txt(
        "_spf.spfbench.example",
        "v=spf1 ip4:198.51.100.0/28 ip6:2001:db8:5::/48 ~all",
    )
    .a("spfbench.example", "198.51.100.200")
    .mx("spfbench.example", 10, "mx1.spfbench.example")
    .a("mx1.spfbench.example", "198.51.100.201");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dns = zone.start().await;
            tx.send(dns.addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addr = rx.recv().unwrap();
    let dns_cfg = DnsConfig {
        nameservers: vec![addr.to_string()],
        timeout: Some(Duration::from_secs(2)),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // ---- ScanDMARC, warm cache
    let msg = dkim.sign(
        "sender.com",
        "sel",
        &message("a@sender.com", "benchmark", 10 * 1024),
    );
    let req = SpfRequest {
        ip: GOOD_IP.parse().unwrap(),
        helo: "mail.sender.com".into(),
        sender: "bounce@sender.com".into(),
    };
    let resolver = Resolver::new(&dns_cfg).unwrap();
    rt.block_on(async {
        let v = scan_dmarc(&resolver, "mx.example.org", &msg, &req).await;
        assert_eq!(v, DmarcVerdict::Domain("sender.com".into(), "pass"));
        let n = 20_000;
        let started = Instant::now();
        for _ in 0..n {
            let v = scan_dmarc(&resolver, "mx.example.org", &msg, &req).await;
            std::hint::black_box(v);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "ScanDMARC (Rust), signed {} byte message, warm cache: {:.0} checks/s on one core ({:.1} µs each)",
            msg.len(),
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    });

    // Through the policy engine: Lua eod script calling ScanDMARC().
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("eod.lua");
    std::fs::write(
        &script,
        "local r = ScanDMARC() if r['sender.com'] ~= 'pass' then Reject() end Accept()",
    )
    .unwrap();
    let mut cfg = Config {
        hostname: "mx.example.org".into(),
        dns: dns_cfg.clone(),
        ..Default::default()
    };
    cfg.scripts.eod = Some(script);
    cfg.scripts.lib_path = vec![dir.path().to_path_buf()];
    let engine = PolicyEngine::load(&cfg).unwrap();
    let input = HookInput {
        connection: ConnectionInfo {
            id: "bench".into(),
            remoteip: GOOD_IP.into(),
            helo: Some(HeloInfo {
                verb: "EHLO".into(),
                host: "mail.sender.com".into(),
            }),
            ..Default::default()
        },
        transaction: Some(TransactionInfo {
            id: "t".into(),
            sender: "bounce@sender.com".into(),
            senderaddress: Address::split("bounce@sender.com"),
            recipients: vec![RecipientInfo {
                recipient: "r@example.org".into(),
                address: Address::split("r@example.org"),
                transportid: "default".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        arguments: HookArguments::Mail {
            message: Bytes::from(msg.clone()),
            headers_only: false,
        },
        context: serde_json::Value::Null,
    };
    rt.block_on(async {
        let o = engine.run(Hook::Eod, input.clone()).await;
        assert!(o.error.is_none(), "{:?}", o.error);
        let n = 10_000;
        let started = Instant::now();
        for _ in 0..n {
            let o = engine.run(Hook::Eod, input.clone()).await;
            std::hint::black_box(o);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "ScanDMARC via eod script (PolicyEngine::run), warm cache: {:.0} runs/s on one core ({:.1} µs each)",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    });

    // ---- SPF, typical record set, warm cache
    let resolver = Resolver::new(&dns_cfg).unwrap();
    let ip = GOOD_IP.parse().unwrap();
    rt.block_on(async {
        let check = || {
            spf::verify_mail_from(
                &resolver,
                ip,
                "mail.sender.com",
                "bounce@spfbench.example",
                "mx.example.org",
            )
        };
        let o = check().await;
        assert_eq!(o.result, SpfResult::Pass, "{}", o.reason);
        let n = 50_000;
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(check().await);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "SPF verify_mail_from (include + a + mx + ip4, 5 lookups), warm cache: {:.0} checks/s on one core ({:.1} µs each)",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    });

    // ---- DNSBL, 4 zones, cold cache
    let resolver = Arc::new(Resolver::new(&dns_cfg).unwrap());
    let zones: Vec<String> = (0..4).map(|k| format!("zone{k}.test")).collect();
    rt.block_on(async {
        let mut times = Vec::new();
        let mut listed = 0;
        for i in 0..(2 * LISTED) {
            // first half listed (10.0.1.0 – 10.0.2.249), second half not (10.9.x.y)
            let ip = if i < LISTED {
                format!("10.0.{}.{}", 1 + i / 250, i % 250)
            } else {
                format!("10.9.{}.{}", i / 250, i % 250)
            };
            let started = Instant::now();
            let r = dnsbl::check_ip(&resolver, &ip, &zones).await.unwrap();
            times.push(started.elapsed());
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            if !r.listed.is_empty() {
                assert_eq!(r.listed.len(), 4);
                listed += 1;
            }
        }
        assert_eq!(listed, LISTED);
        times.sort();
        println!(
            "dnsbl.check, 4 zones, cold cache, {} addresses ({} listed: A + TXT): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            times.len(),
            listed,
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
            times.last().unwrap().as_secs_f64() * 1e6,
        );
    });

    dkim_sign_rate();
}

/// DKIM signs/s of a 10 KiB message, RSA-2048 and Ed25519, relaxed/relaxed
/// and the default headers: `scan::dkim::sign` alone, then an eod script
/// calling `mail:signDKIM` with a `[dkim.keys]` id (what an operator runs).
/// Single-threaded runtime: signatures per core. Kept apart from the rest
/// of `main` so edits there and here do not meet.
fn dkim_sign_rate() {
    use authsupport::keys::RSA_PKCS8_PEM;
    use sluice::scan::dkim::{self, PrivateKey, SignOptions};

    let ed = Key::generate();
    let msg = message("a@sender.com", "benchmark", 10 * 1024);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, pem, n) in [
        ("rsa-2048", RSA_PKCS8_PEM.to_string(), 2_000),
        ("ed25519", ed.pem(), 20_000),
    ] {
        let key = PrivateKey::from_pem(pem.as_bytes()).unwrap();
        let opts = SignOptions::new("sel", "sender.com");
        let field = dkim::sign(&key, &msg, &opts).unwrap();
        assert!(field.starts_with(b"DKIM-Signature: v=1; "));
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(dkim::sign(&key, &msg, &opts).unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "DKIM sign (Rust), {name}, {} byte message: {:.0} signs/s on one core ({:.1} µs each)",
            msg.len(),
            n as f64 / secs,
            secs * 1e6 / n as f64
        );

        let key_file = dir.path().join(format!("{name}.pem"));
        std::fs::write(&key_file, &pem).unwrap();
        let script = dir.path().join(format!("{name}.lua"));
        std::fs::write(
            &script,
            "assert(arguments.mail:signDKIM('sel', 'sender.com', 'k')) Accept()",
        )
        .unwrap();
        let mut cfg = Config {
            hostname: "mx.example.org".into(),
            ..Default::default()
        };
        cfg.scripts.eod = Some(script);
        cfg.scripts.lib_path = vec![dir.path().to_path_buf()];
        cfg.dkim.keys.insert("k".into(), key_file);
        let engine = PolicyEngine::load(&cfg).unwrap();
        let input = HookInput {
            connection: ConnectionInfo {
                id: "bench".into(),
                remoteip: GOOD_IP.into(),
                ..Default::default()
            },
            transaction: None,
            arguments: HookArguments::Mail {
                message: Bytes::from(msg.clone()),
                headers_only: false,
            },
            context: serde_json::Value::Null,
        };
        rt.block_on(async {
            let o = engine.run(Hook::Eod, input.clone()).await;
            assert!(o.error.is_none(), "{:?}", o.error);
            let started = Instant::now();
            for _ in 0..n {
                std::hint::black_box(engine.run(Hook::Eod, input.clone()).await);
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "mail:signDKIM via eod script, {name}: {:.0} runs/s on one core ({:.1} µs each)",
                n as f64 / secs,
                secs * 1e6 / n as f64
            );
        });
    }
}
