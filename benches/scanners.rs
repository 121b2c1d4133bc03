//! Messages/s through SMTP intake (the daemon in-process, queue on disk,
//! delivery off) with no scanner, with one rspamd milter (rspamd's proxy
//! in milter mode, self-scanning) and with `ScanClam()` in an eod script
//! (clamd on a unix socket, a one-signature database), at 10 KiB and 1 MiB.
//! rspamd and clamd are the Debian packages, started here with the same
//! local configs the tests use (tests/scanners_support).
//!
//! `CARGO_TARGET_DIR=… cargo bench --bench scanners`
//! (`SCAN_BENCH_CLIENTS`, default 4 concurrent sessions;
//! `SCAN_BENCH_SMALL` / `SCAN_BENCH_LARGE`: messages per run, default 400 / 40)

#[path = "../tests/scanners_support/mod.rs"]
mod scanners_support;

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use sluice::config::Config;
use sluice::daemon::Daemon;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn message(size: usize) -> String {
    let mut m = String::from(
        "From: alice@sender.com\r\nTo: bob@example.org\r\nSubject: benchmark\r\nMessage-ID: <bench@sender.com>\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() < size {
        m.push_str(line);
    }
    m
}

async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: &str) {
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed waiting for {code}");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            return;
        }
    }
}

/// One session sending `n` messages.
async fn session(addr: SocketAddr, n: usize, body: std::sync::Arc<String>) {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    expect(&mut rd, "220").await;
    wr.write_all(b"EHLO bench.example\r\n").await.unwrap();
    expect(&mut rd, "250").await;
    for _ in 0..n {
        wr.write_all(b"MAIL FROM:<alice@sender.com>\r\n")
            .await
            .unwrap();
        expect(&mut rd, "250").await;
        wr.write_all(b"RCPT TO:<bob@example.org>\r\n")
            .await
            .unwrap();
        expect(&mut rd, "250").await;
        wr.write_all(b"DATA\r\n").await.unwrap();
        expect(&mut rd, "354").await;
        wr.write_all(body.as_bytes()).await.unwrap();
        wr.write_all(b".\r\n").await.unwrap();
        expect(&mut rd, "250").await;
    }
    wr.write_all(b"QUIT\r\n").await.unwrap();
}

async fn run(name: &str, extra: &str, size: usize, total: usize, clients: usize) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "hostname = \"mx.bench.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\n[relay]\ndomains = [\"example.org\"]\n[queue]\ndeliver = false\n[auth]\nresults = false\n[limits]\nmessage_size = 10485760\n{extra}\n",
        dir.path().join("var"),
        dir.path().join("var/control.sock"),
    );
    let cfg = Config::from_toml_str(&toml).unwrap();
    let daemon = Daemon::start(cfg).await.unwrap();
    let addr = daemon.addr("inbound").unwrap();
    let body = std::sync::Arc::new(message(size));
    // Warm up (connections, Lua states, the scanners' first scan).
    session(addr, 2, body.clone()).await;
    let per = total.div_ceil(clients);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(session(addr, per, body.clone())));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let n = per * clients;
    println!(
        "{name:<16} {:>8} {n:>6} msgs {secs:>8.2} s {:>9.1} msgs/s {:>8.1} MiB/s",
        if size >= 1 << 20 { "1 MiB" } else { "10 KiB" },
        n as f64 / secs,
        (n * size) as f64 / secs / (1 << 20) as f64
    );
    daemon.shutdown().await;
}

fn main() {
    let clients = env_usize("SCAN_BENCH_CLIENTS", 4);
    let small = env_usize("SCAN_BENCH_SMALL", 400);
    let large = env_usize("SCAN_BENCH_LARGE", 40);
    let dir = tempfile::tempdir().unwrap();
    let rspamd = scanners_support::start_rspamd(dir.path());
    let clamd = scanners_support::start_clamd(
        dir.path(),
        &[(
            "test.hdb",
            "0123456789abcdef0123456789abcdef:51:Sluice.Bench.Sig\n".to_string(),
        )],
    );
    let script = dir.path().join("clam.lua");
    std::fs::write(
        &script,
        "local v, e = ScanClam()\n\
         if v == nil then Defer('clamd: ' .. e) end\n\
         if #v > 0 then Reject('virus') end\n\
         for _, r in ipairs(transaction.recipients) do\n\
           arguments.mail:queue(transaction.sender, r.recipient, r.transportid)\n\
         end\n\
         Accept()\n",
    )
    .unwrap();
    let milter = format!(
        "[[milter]]\nid = \"rspamd\"\naddress = \"127.0.0.1:{}\"\n",
        rspamd.milter_port
    );
    let clam = format!(
        "[scripts]\neod = {script:?}\n[scanners.clamd]\naddress = \"unix:{}\"\n",
        clamd.socket.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("{clients} concurrent sessions, one recipient per message, fsync on");
    rt.block_on(async {
        for (size, total) in [(10 * 1024, small), (1 << 20, large)] {
            run("no scanner", "", size, total, clients).await;
            run("rspamd milter", &milter, size, total, clients).await;
            run("ScanClam", &clam, size, total, clients).await;
        }
    });
    drop(rspamd);
    drop(clamd);
}
