//! Bounded memory: header bombs are refused at `[limits] header_size` /
//! `header_lines` without being kept, the session stays in sync after them,
//! the refusal is the history record, and many clients at once — sending the
//! worst message the limits allow, or trickling bytes — keep the daemon's
//! peak RSS (VmHWM of the child `sluice run`) bounded.

mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// The CPU-heavy tests run one at a time (timings and VmHWM stay readable
/// on a 2-core CI machine).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Peak resident set of a process, from /proc/PID/status (bytes).
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// A child daemon on a free port; killed when the guard drops.
struct Daemon {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("sluice.toml");
        write_config(&cfg, dir.path(), port, extra);
        let child = spawn_daemon(&cfg);
        wait_listening(port).await;
        Daemon {
            child,
            port,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("daemon running")
    }

    async fn client(&self) -> Client<tokio::net::TcpStream> {
        Client::connect(([127, 0, 0, 1], self.port).into()).await
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn write_config(cfg: &Path, dir: &Path, port: u16, extra: &str) {
    std::fs::write(
        cfg,
        format!(
            "hostname = \"mx.memory.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n\
             [[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{port}\"\n\
             [queue]\ndeliver = false\n[auth]\nresults = false\n[relay]\ndomains = [\"example.org\"]\n{extra}",
            dir.join("var"),
            dir.join("var/control.sock")
        ),
    )
    .unwrap();
}

/// `count` short header lines, then a body; dot-terminated.
fn many_header_lines(count: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(count * 14 + 64);
    for i in 0..count {
        m.extend_from_slice(format!("X-H: {:07}\r\n", i % 10_000_000).as_bytes());
    }
    m.extend_from_slice(b"\r\nbody\r\n.\r\n");
    m
}

/// One header folded over `bytes` bytes of continuation lines.
fn one_folded_header(bytes: usize) -> Vec<u8> {
    // Long continuation lines: the size limit comes before the line limit.
    let fold = format!("\t{}\r\n", "folded continuation ".repeat(45));
    let fold = fold.as_bytes();
    let mut m = b"Subject: start\r\n".to_vec();
    m.reserve(bytes + 64);
    while m.len() < bytes {
        m.extend_from_slice(fold);
    }
    m.extend_from_slice(b"\r\nbody\r\n.\r\n");
    m
}

async fn open_data(c: &mut Client<tokio::net::TcpStream>) {
    c.cmd("MAIL FROM:<bomb@example.net>", "250").await;
    c.cmd("RCPT TO:<victim@example.org>", "250").await;
    c.cmd("DATA", "354").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bombs_are_refused_without_being_buffered() {
    let d = Daemon::start("").await;
    let base = vm_rss(d.pid());
    let mut c = d.client().await;
    c.greet().await;

    // 600,000 short header lines (8.4 MB): the issue's 147 MB case.
    open_data(&mut c).await;
    c.send_raw(&many_header_lines(600_000)).await;
    c.expect("554 5.6.0 Too many header lines").await;

    // A 36 MB single folded header (under message_size): the 225 MB case.
    open_data(&mut c).await;
    c.send_raw(&one_folded_header(36 * MIB as usize)).await;
    c.expect("552 5.3.4 Message header too large").await;

    // The session is in sync: the next message is taken.
    c.send_message(
        "ok@example.net",
        &["victim@example.org"],
        "Subject: fine\r\n\r\nbody\r\n",
        "250 2.0.0",
    )
    .await;
    c.cmd("QUIT", "221").await;

    let peak = vm_hwm(d.pid());
    println!(
        "header bombs: baseline RSS {} KiB, VmHWM {} KiB",
        base / 1024,
        peak / 1024
    );
    assert!(
        peak < base + 48 * MIB,
        "VmHWM {} KiB (baseline {} KiB): a header bomb was buffered",
        peak / 1024,
        base / 1024
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_header_bomb_is_refused_at_the_chunk() {
    let d = Daemon::start("").await;
    let mut c = d.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<bomb@example.net>", "250").await;
    c.cmd("RCPT TO:<victim@example.org>", "250").await;
    let mut chunk = many_header_lines(20_000);
    chunk.truncate(chunk.len() - 3); // BDAT carries no dot terminator
    c.send_raw(format!("BDAT {}\r\n", chunk.len()).as_bytes())
        .await;
    c.send_raw(&chunk).await;
    c.expect("554 5.6.0 Too many header lines").await;
    // The next chunk of the refused message is read and refused, in sync.
    c.send_raw(b"BDAT 6 LAST\r\nbody\r\n").await;
    c.expect("503").await;
    c.cmd("NOOP", "250").await;
    d.stop().await;
}

#[tokio::test]
async fn header_limit_refusal_is_the_history_record() {
    let mut srv = TestServer::start(
        "[queue]\ndeliver = false\n[limits]\nheader_size = 4096\nheader_lines = 50\n",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<bomb@example.net>", "250").await;
    c.cmd("RCPT TO:<a@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(&one_folded_header(8192)).await;
    let r = c.expect("552 5.3.4").await;
    let sent = format!("{} {}", r.code, r.text);
    let ok = wait_until(|| {
        srv.store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.recipient == "a@example.org" && h.action == "REJECT" && h.reason == sent)
    })
    .await;
    assert!(ok, "no REJECT record with {sent:?}");
    srv.stop().await;
}

/// The goal: 100 clients at once, each sending the worst message the limits
/// allow (a header section at both header limits, the rest body up to
/// message_size), keep the daemon under 1 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_with_worst_allowed_messages_stay_under_1_gib() {
    use tokio::io::AsyncWriteExt;
    let _heavy = HEAVY.lock().await;
    let message_size = 2 * MIB;
    let d = Daemon::start(&format!(
        "[limits]\nmessage_size = {message_size}\nconnections_per_ip = 200\n"
    ))
    .await;
    // 10,000 header lines filling 1 MiB (~104 bytes each), then body.
    let mut msg = Vec::with_capacity(message_size as usize);
    let line_body = "x".repeat(90);
    for i in 0..10_000 {
        msg.extend_from_slice(format!("X-{i:05}: {line_body}\r\n").as_bytes());
    }
    msg.extend_from_slice(b"\r\n");
    assert!(msg.len() as u64 <= MIB, "{}", msg.len());
    let body_line = format!("{}\r\n", "b".repeat(76));
    while (msg.len() + body_line.len() + 4096) as u64 <= message_size {
        msg.extend_from_slice(body_line.as_bytes());
    }
    msg.extend_from_slice(b".\r\n");
    let msg = std::sync::Arc::new(msg);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..100 {
        let msg = msg.clone();
        let port = d.port;
        tasks.spawn(async move {
            let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
            c.greet().await;
            c.cmd("MAIL FROM:<big@example.net>", "250").await;
            c.cmd(&format!("RCPT TO:<r{n}@example.org>"), "250").await;
            c.cmd("DATA", "354").await;
            // Longer than a test step: 100 of them share two cores.
            tokio::time::timeout(Duration::from_secs(120), c.s.write_all(&msg))
                .await
                .expect("message sent within 120 s")
                .unwrap();
            c.reply().await.code
        });
    }
    let mut accepted = 0;
    while let Some(r) = tasks.join_next().await {
        if r.unwrap() == 250 {
            accepted += 1;
        }
    }
    let peak = vm_hwm(d.pid());
    println!(
        "100 clients x {} KiB (header 10,000 lines / {} KiB): {accepted} accepted in {:?}, VmHWM {} MiB",
        msg.len() / 1024,
        MIB / 1024,
        started.elapsed(),
        peak / MIB
    );
    assert_eq!(accepted, 100, "every message within the limits is taken");
    assert!(peak < 1024 * MIB, "VmHWM {} MiB", peak / MIB);
    d.stop().await;
}

/// Past what the limits allow per message, memory across messages:
/// `[limits] data_memory` bounds what all the sessions receiving at once
/// hold. 100 clients send 4 MiB each at the same time into a 128 MiB
/// budget: the ones that find it spent are read to the end and refused with
/// 452 4.3.1 (they retry), the others are queued, and the daemon's peak
/// stays near the budget instead of 100 x 4 MiB (x2 for Vec growth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_memory_bounds_what_concurrent_messages_hold() {
    use tokio::io::AsyncWriteExt;
    let _heavy = HEAVY.lock().await;
    let message_size = 4 * MIB;
    let budget = 128 * MIB;
    let d = Daemon::start(&format!(
        "[limits]\nmessage_size = {message_size}\ndata_memory = {budget}\nconnections_per_ip = 200\n"
    ))
    .await;
    let baseline = vm_hwm(d.pid());
    let body_line = format!("{}\r\n", "m".repeat(76));
    let mut msg = b"Subject: memory\r\n\r\n".to_vec();
    while (msg.len() + body_line.len() + 8192) as u64 <= message_size {
        msg.extend_from_slice(body_line.as_bytes());
    }
    msg.extend_from_slice(b".\r\n");
    let msg = std::sync::Arc::new(msg);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..100 {
        let msg = msg.clone();
        let port = d.port;
        tasks.spawn(async move {
            let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
            c.greet().await;
            c.cmd("MAIL FROM:<big@example.net>", "250").await;
            c.cmd(&format!("RCPT TO:<r{n}@example.org>"), "250").await;
            c.cmd("DATA", "354").await;
            tokio::time::timeout(Duration::from_secs(120), c.s.write_all(&msg))
                .await
                .expect("message sent within 120 s")
                .unwrap();
            // The reply line, waited for longer than a test step: 100
            // messages of 4 MiB queue up behind fsync on two cores.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(120), async {
                use tokio::io::AsyncReadExt;
                while !line.ends_with(b"\r\n") {
                    assert_eq!(c.s.read(&mut byte).await.unwrap(), 1, "closed");
                    line.push(byte[0]);
                }
            })
            .await
            .expect("reply within 120 s");
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            (line[..3].parse::<u16>().unwrap(), line[4..].to_string())
        });
    }
    let (mut accepted, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (code, text) = r.unwrap();
        match code {
            250 => accepted.push(text.rsplit(' ').next().unwrap().to_string()),
            452 => {
                assert!(text.starts_with("4.3.1"), "{text}");
                refused += 1;
            }
            other => panic!("unexpected {other} {text}"),
        }
    }
    let peak = vm_hwm(d.pid());
    println!(
        "100 clients x {} KiB into data_memory {} MiB: {} accepted, {refused} refused 452 4.3.1 in {:?}; VmHWM {} MiB (baseline {} MiB)",
        msg.len() / 1024,
        budget / MIB,
        accepted.len(),
        started.elapsed(),
        peak / MIB,
        baseline / MIB
    );
    // Whether the budget bites depends on how many arrive at once, which
    // the scheduler decides; the refusal path is the unit test's
    // (`smtp::data::tests::the_memory_budget_is_shared_and_given_back`).
    assert!(accepted.len() >= 10, "only {} accepted", accepted.len());
    // The issue's goal. The budget bounds the receive buffers, not the
    // copies on the way into sled (measured: ~666 MiB peak for 100 x 4 MiB
    // with a 128 MiB budget), so the bound asserted is the 1 GiB goal.
    assert!(
        peak < 1024 * MIB,
        "VmHWM {} MiB over a {} MiB budget (baseline {} MiB)",
        peak / MIB,
        budget / MIB,
        baseline / MIB
    );
    // Every accepted message is queued whole.
    // (stop() would drop the temp dir with the daemon: keep it.)
    let Daemon {
        mut child, _dir, ..
    } = d;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let store_dir = _dir.path().join("var");
    let store = sluice::store::Store::open(&store_dir).unwrap();
    let entries = store.list_entries().unwrap();
    assert_eq!(entries.len(), accepted.len());
    for e in &entries {
        assert!(accepted.contains(&e.id));
        let body = store.get_body(&e.body).unwrap().unwrap();
        assert!(body.len() as u64 >= msg.len() as u64 - 3, "{} cut", e.id);
    }
}

/// Slow clients: connected, greeted, then one byte per second of a command
/// line that never ends. They cost little memory each, and
/// `[limits] command_timeout` (RFC 5321 §4.5.3.2.7: 5 minutes; shortened
/// here) bounds the whole line, so the trickle does not keep them alive:
/// 421 4.4.2. `benches/slow-clients.sh` runs the 10,000-client case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_clients_cost_little_and_time_out() {
    // 20 s: a loaded 2-core CI machine took 6.5 s to greet 2,000 clients
    // of a debug build, and the trickle must start before the first timeout.
    slow_clients(2_000, 20 * MIB, 20).await;
}

/// The goal's case; `benches/slow-clients.sh` runs it (release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10,000 connections: run by benches/slow-clients.sh"]
async fn ten_thousand_slow_clients() {
    slow_clients(10_000, 100 * MIB, 15).await;
}

async fn slow_clients(clients: usize, budget: u64, timeout: u64) {
    use tokio::io::AsyncWriteExt;
    let _heavy = HEAVY.lock().await;
    let nofile = raise_nofile();
    if nofile < clients as u64 + 200 {
        println!("skipped: RLIMIT_NOFILE {nofile} is below {}", clients + 200);
        return;
    }
    let d = Daemon::start(&format!(
        "[limits]\nconnections = 20000\nconnections_per_ip = 20000\ncommand_timeout = \"{timeout}s\"\n"
    ))
    .await;
    let base = vm_rss(d.pid());
    let started = Instant::now();
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Client::connect(([127, 0, 0, 1], d.port).into()).await);
    }
    for c in conns.iter_mut() {
        c.expect("220").await;
    }
    let greeted = started.elapsed();
    assert!(
        greeted < Duration::from_secs(timeout),
        "connecting took {greeted:?}: the timeout would fire first"
    );
    // One byte per second each, never a line end, for longer than the timeout.
    let mut all_open = 0;
    for second in 0..timeout + 3 {
        for c in conns.iter_mut() {
            let _ = c.s.write_all(b"x").await;
        }
        if second == 1 {
            all_open = vm_rss(d.pid());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut timed_out = 0;
    for c in conns.iter_mut() {
        if let Some(r) = c.try_reply().await {
            if r.code == 421 && r.text.starts_with("4.4.2") {
                timed_out += 1;
            }
        }
    }
    let peak = vm_hwm(d.pid());
    println!(
        "{clients} slow clients: RSS {} KiB idle, {} KiB all connected ({} B per client), VmHWM {} KiB; {timed_out} got 421 4.4.2 within {:?}",
        base / 1024,
        all_open / 1024,
        all_open.saturating_sub(base) / clients as u64,
        peak / 1024,
        started.elapsed()
    );
    assert_eq!(timed_out, clients, "every trickling client gets 421 4.4.2");
    assert!(
        peak.saturating_sub(base) < budget,
        "{clients} slow clients took {} KiB",
        peak.saturating_sub(base) / 1024
    );
    drop(conns);
    d.stop().await;
}

/// Parsing cost is linear in the header section: an eod script walking and
/// editing every header of a message at the line limit takes about ten
/// times what it takes for a tenth of the lines, not a hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_access_in_eod_is_linear() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("eod.lua");
    std::fs::write(
        &script,
        r#"
local mail = arguments.mail
local n = 0
for _, name in ipairs(mail:getHeaderNames()) do n = n + 1 end
local last = mail:getHeader("X-H") or ""
mail:addHeader("X-Count", tostring(n))
for _, rcpt in ipairs(transaction.recipients) do
  mail:queue(transaction.sender, rcpt.recipient, "default")
end
Accept({reason = "headers " .. n})
"#,
    )
    .unwrap();
    let d = Daemon::start(&format!("[scripts]\neod = {script:?}\n")).await;
    let mut c = d.client().await;
    c.greet().await;
    let mut took = Vec::new();
    for lines in [1_000, 10_000] {
        open_data(&mut c).await;
        let t = Instant::now();
        c.send_raw(&many_header_lines(lines)).await;
        let r = c.expect("250").await;
        took.push(t.elapsed());
        // The script saw every header (ours, Received, first).
        assert!(r.text.contains(&format!("headers {}", lines + 1)), "{r:?}");
    }
    let ratio = took[1].as_secs_f64() / took[0].as_secs_f64().max(1e-3);
    println!(
        "eod header walk: 1,000 lines {:?}, 10,000 lines {:?} (x{ratio:.1})",
        took[0], took[1]
    );
    assert!(
        ratio < 40.0,
        "10x the header lines took x{ratio:.1} the time"
    );
    d.stop().await;
}
