//! `sluice bench`: an SMTP load generator. N connections each send their
//! share of M messages of S bytes (MAIL/RCPT/DATA pipelined as RFC 2920
//! allows), and it reports messages per second and the latency of the step
//! that matters for durability: end of data → 250.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub target: SocketAddr,
    pub connections: usize,
    pub messages: u64,
    pub size: usize,
    pub sender: String,
    pub recipient: String,
    /// Open this many extra idle connections and hold them (memory test).
    pub idle: usize,
    /// Idle connections first say EHLO (so connect and helo hooks ran).
    pub idle_ehlo: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub messages: u64,
    pub failed: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub idle_held: usize,
}

fn message_body(size: usize, n: u64) -> Vec<u8> {
    let mut m = format!(
        "From: <bench@example.net>\r\nTo: <rcpt@example.org>\r\nSubject: bench {n}\r\nMessage-ID: <bench-{n}@example.net>\r\n\r\n"
    )
    .into_bytes();
    let line =
        b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvwxyz\r\n";
    while m.len() < size {
        let take = (size - m.len()).min(line.len());
        if take < 2 {
            break;
        }
        if take < line.len() {
            m.extend_from_slice(&line[..take - 2]);
            m.extend_from_slice(b"\r\n");
        } else {
            m.extend_from_slice(line);
        }
    }
    m
}

async fn read_reply<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    line: &mut String,
) -> anyhow::Result<u16> {
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            bail!("connection closed");
        }
        if line.len() < 4 {
            bail!("short reply {line:?}");
        }
        if line.as_bytes()[3] == b' ' {
            return Ok(line[..3].parse()?);
        }
    }
}

async fn one_connection(
    opts: Arc<BenchOptions>,
    next: Arc<AtomicU64>,
    lat: &mut Vec<u32>,
    failed: &AtomicU64,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(opts.target).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    if read_reply(&mut r, &mut line).await? != 220 {
        bail!("banner: {line}");
    }
    w.write_all(b"EHLO bench.example.net\r\n").await?;
    if read_reply(&mut r, &mut line).await? != 250 {
        bail!("EHLO: {line}");
    }
    let cmds = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        opts.sender, opts.recipient
    );
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.messages {
            break;
        }
        let mut body = message_body(opts.size, n);
        body.extend_from_slice(b".\r\n");
        w.write_all(cmds.as_bytes()).await?;
        let m = read_reply(&mut r, &mut line).await?;
        let rc = read_reply(&mut r, &mut line).await?;
        let d = read_reply(&mut r, &mut line).await?;
        if m != 250 || rc != 250 || d != 354 {
            failed.fetch_add(1, Ordering::Relaxed);
            if d == 354 {
                w.write_all(b".\r\n").await?;
                read_reply(&mut r, &mut line).await?;
            }
            w.write_all(b"RSET\r\n").await?;
            read_reply(&mut r, &mut line).await?;
            continue;
        }
        w.write_all(&body).await?;
        let t = Instant::now();
        let code = read_reply(&mut r, &mut line).await?;
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if code != 250 {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    w.write_all(b"QUIT\r\n").await?;
    let _ = read_reply(&mut r, &mut line).await;
    Ok(())
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let opts = Arc::new(opts);
    // Idle connections first, so the load runs with them held.
    let mut idle = Vec::new();
    for _ in 0..opts.idle {
        match TcpStream::connect(opts.target).await {
            Ok(s) if opts.idle_ehlo => {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                read_reply(&mut r, &mut line).await.context("idle banner")?;
                r.get_mut().write_all(b"EHLO idle.example.net\r\n").await?;
                read_reply(&mut r, &mut line).await.context("idle EHLO")?;
                idle.push(r.into_inner());
            }
            Ok(s) => idle.push(s),
            Err(e) => bail!("idle connection {}: {e}", idle.len()),
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.connections {
        let opts = opts.clone();
        let next = next.clone();
        let failed = failed.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let res = tokio::time::timeout(
                opts.timeout,
                one_connection(opts.clone(), next, &mut lat, &failed),
            )
            .await;
            match res {
                Ok(Ok(())) => Ok(lat),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow::anyhow!("timed out")),
            }
        });
    }
    let mut lats = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(l) => lats.extend(l),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if !errors.is_empty() {
        eprintln!(
            "{} connection(s) failed, first: {}",
            errors.len(),
            errors[0]
        );
    }
    lats.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lats.is_empty() {
            return 0.0;
        }
        let i = ((lats.len() as f64 - 1.0) * p).round() as usize;
        lats[i] as f64 / 1000.0
    };
    let ok = lats.len() as u64 - failed.load(Ordering::Relaxed).min(lats.len() as u64);
    Ok(BenchReport {
        messages: ok,
        failed: failed.load(Ordering::Relaxed),
        seconds: secs,
        msgs_per_sec: ok as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: lats.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        idle_held: idle.len(),
    })
}
