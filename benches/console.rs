//! Console page load time: fill a fresh store with N history records
//! (default 1,000,000, spread over the last 24 hours; `SLUICE_BENCH_RECORDS`
//! to change) through the store API, serve it with the real HTTP server
//! ([`sluice::http::start`]), log in like a browser, then time the HTTP GET
//! of history search pages (first page, by recipient, domain, action, time
//! range, free text), the charts page and the API's history; and what
//! rendering one `/metrics` scrape costs.
//!
//!     cargo bench --bench console

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice::store::history::{HistoryAction, HistoryRecord};
use sluice::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "bench-token";

struct Reply {
    status: u16,
    head: String,
    body: String,
}

async fn http(addr: SocketAddr, req: String) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    Reply {
        status: head[9..12].parse().expect("status"),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn set_cookie(r: &Reply, name: &str) -> String {
    r.head
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap_or("").to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
        .expect("cookie")
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("SLUICE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 2_000 });
    let rounds = if benching { 5 } else { 1 };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let t = Instant::now();
    let batch = 1000;
    let mut i = 0;
    while i < n {
        let recs: Vec<HistoryRecord> = (i..(i + batch).min(n))
            .map(|k| {
                let (action, reason) = match k % 20 {
                    0..=1 => (
                        HistoryAction::Defer,
                        "451 4.7.1 greylisted, come back later",
                    ),
                    2..=4 => (
                        HistoryAction::Reject,
                        if k % 7 == 0 {
                            "550 5.7.1 spam detected"
                        } else {
                            "550 5.1.1 no such user"
                        },
                    ),
                    5 => (HistoryAction::Received, "queued"),
                    _ => (HistoryAction::Deliver, "250 2.0.0 Ok: queued as ABC123"),
                };
                HistoryRecord {
                    ts: now - 86_400.0 * (n - k) as f64 / n as f64,
                    action,
                    id: format!("q{k:015x}"),
                    transaction: format!("t{:015x}", k / 2),
                    message_id: Some(format!("m{k}@example.net")),
                    sender: format!("sender{}@example.net", k % 5000),
                    recipient: format!("user{}@domain{}.example", k % 200_000, k % 1000),
                    transportid: "default".into(),
                    client_ip: "192.0.2.1".into(),
                    reason: reason.into(),
                    ..Default::default()
                }
            })
            .collect();
        store.append_history(&recs).expect("append");
        i += batch;
    }
    store.flush_blocking().expect("flush");
    println!(
        "filled {n} history records in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = sluice::config::HttpConfig {
            address: "127.0.0.1:0".into(),
            token: TOKEN.into(),
            session_timeout: Duration::from_secs(3600),
        };
        let server = sluice::http::start(&cfg, store, None, None)
            .await
            .expect("http")
            .expect("address set");
        let addr = server.addr;
        // Log in as a browser does.
        let login = http(addr, "GET /login HTTP/1.1\r\n\r\n".into()).await;
        let pre = set_cookie(&login, "sluice_login");
        let csrf = pre.split_once('=').expect("cookie value").1.to_string();
        let body = format!("password={TOKEN}&csrf={csrf}");
        let r = http(
            addr,
            format!(
                "POST /login HTTP/1.1\r\nCookie: {pre}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert_eq!(r.status, 303, "login: {}", r.body);
        let session = set_cookie(&r, "sluice_session");
        let pages = [
            ("history, first page (newest 50)", "/history".to_string()),
            (
                "history, by recipient",
                "/history?recipient=user4242%40domain242.example".to_string(),
            ),
            ("history, by domain", "/history?domain=domain7.example".to_string()),
            ("history, action=REJECT", "/history?action=REJECT".to_string()),
            ("history, last hour", "/history?since=1h".to_string()),
            (
                "history, recipient + text",
                "/history?recipient=user4242%40domain242.example&text=no+such".to_string(),
            ),
            ("history, free text (matches 2%)", "/history?text=spam+detected".to_string()),
            ("history, free text, no match (full scan)", "/history?text=nowhere-to-be-found".to_string()),
            ("history, older page (before=…)", String::new()),
            ("charts, last day", "/charts?range=day".to_string()),
            ("charts, last hour", "/charts?range=hour".to_string()),
        ];
        println!("{:<44} {:>9} {:>9} {:>6}", "page", "median", "min", "rows");
        let mut older = String::new();
        for (name, path) in pages {
            let path = if path.is_empty() { older.clone() } else { path };
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..rounds {
                let t = Instant::now();
                let r = http(
                    addr,
                    format!("GET {path} HTTP/1.1\r\nCookie: {session}\r\n\r\n"),
                )
                .await;
                times.push(t.elapsed());
                assert_eq!(r.status, 200, "{path}: {}", &r.body[..r.body.len().min(500)]);
                rows = r.body.matches("<tr><td class=\"ts\">").count();
                if path == "/history" {
                    assert!(rows > 0, "no rows on the first page");
                    if let Some(at) = r.body.find("id=\"older\" href=\"") {
                        let rest = &r.body[at + 17..];
                        older = rest[..rest.find('"').expect("href end")].replace("&amp;", "&");
                    }
                }
            }
            times.sort();
            println!(
                "{name:<44} {:>7.1}ms {:>7.1}ms {rows:>6}",
                times[times.len() / 2].as_secs_f64() * 1e3,
                times[0].as_secs_f64() * 1e3
            );
        }
        let t = Instant::now();
        let r = http(
            addr,
            format!("GET /api/v1/history?order=newest&limit=100 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200);
        println!(
            "{:<44} {:>7.1}ms",
            "api: /api/v1/history?order=newest&limit=100",
            t.elapsed().as_secs_f64() * 1e3
        );
        // /metrics stays on crate::metrics::render (no prometheus-client):
        // what one scrape's rendering costs.
        let queue = std::collections::BTreeMap::from([("queued", 3u64), ("held", 1)]);
        let t = Instant::now();
        let k = 1000;
        let mut bytes = 0;
        for _ in 0..k {
            bytes += std::hint::black_box(sluice::metrics::render(Some(&queue))).len();
        }
        println!(
            "{:<44} {:>7.1}µs ({} bytes)",
            "metrics::render, one scrape",
            t.elapsed().as_secs_f64() * 1e6 / k as f64,
            bytes / k
        );
        let t = Instant::now();
        let r = http(addr, "GET /metrics HTTP/1.1\r\n\r\n".into()).await;
        assert_eq!(r.status, 200);
        println!(
            "{:<44} {:>7.1}ms",
            "GET /metrics",
            t.elapsed().as_secs_f64() * 1e3
        );
    });
}
