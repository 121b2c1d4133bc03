//! Operations: `/metrics` counters move when mail flows, and the JSON API
//! under `/api/` (the alias of `/api/v1/`) answers with the bearer token and
//! refuses without. `tests/console_api.rs` covers `/api/v1/` and the console.
//! The daemon runs in-process with `[http] address = "127.0.0.1:0"`.
//!
//! Metrics are process-wide, and tests in this file run in parallel, so every
//! assertion compares a scrape before with a scrape after (a delta, at least).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sluice::metrics::sample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-token";

struct HttpReply {
    status: u16,
    headers: String,
    body: String,
}

impl HttpReply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("http reply timed out")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let status = head[9..12].parse().unwrap();
    HttpReply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").as_bytes(),
    )
    .await
}

async fn scrape(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("text/plain; version=0.0.4"));
    r.body
}

fn val(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or(0.0)
}

fn http_addr(srv: &TestServer) -> SocketAddr {
    srv.daemon.as_ref().unwrap().http.as_ref().unwrap().addr
}

async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A daemon relaying to a sink, with an rcptto script that refuses one user.
async fn start_with_http(token: &str) -> (TestServer, Sink, tempfile::TempDir) {
    let sink = Sink::start(false, false).await;
    let scripts = tempfile::tempdir().unwrap();
    let rcptto = scripts.path().join("rcptto.lua");
    std::fs::write(
        &rcptto,
        "if arguments.recipient == \"blocked@example.org\" then Reject(\"no such user\") end\nPass()\n",
    )
    .unwrap();
    let srv = TestServer::start(&format!(
        "[http]\naddress = \"127.0.0.1:0\"\ntoken = {token:?}\n[scripts]\nrcptto = {rcptto:?}\n[queue]\nmin_retry_delay = \"1s\"\nmax_retry_delay = \"2s\"\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\nconnect_timeout = \"2s\"\n",
        sink.addr
    ))
    .await;
    (srv, sink, scripts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_mail_flows() {
    let (srv, sink, _scripts) = start_with_http(TOKEN).await;
    let http = http_addr(&srv);
    let before = scrape(http).await;

    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@example.net>", "250").await;
    c.cmd("RCPT TO:<blocked@example.org>", "550").await;
    c.cmd("RCPT TO:<ok@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: metrics\r\n\r\nhello\r\n.\r\n").await;
    c.expect("250").await;
    c.cmd("QUIT", "221").await;
    assert_eq!(sink.wait_for(1).await.len(), 1);
    let store = srv.store().clone();
    assert!(
        wait_until(|| store
            .history_all()
            .unwrap()
            .iter()
            .any(|r| r.action == "DELIVER"))
        .await
    );
    assert!(wait_until(|| store.queue_len() == 0).await);

    let after = scrape(http).await;
    let delta = |s: &str| val(&after, s) - val(&before, s);
    assert!(delta("sluice_connections_total") >= 1.0, "{after}");
    assert!(
        delta("sluice_smtp_replies_total{command=\"CONNECT\",class=\"2xx\"}") >= 1.0,
        "{after}"
    );
    assert!(delta("sluice_smtp_replies_total{command=\"RCPT\",class=\"5xx\"}") >= 1.0);
    assert!(delta("sluice_smtp_replies_total{command=\"RCPT\",class=\"2xx\"}") >= 1.0);
    assert!(delta("sluice_smtp_replies_total{command=\"DATA\",class=\"3xx\"}") >= 1.0);
    assert!(delta("sluice_smtp_replies_total{command=\"DATA\",class=\"2xx\"}") >= 1.0);
    assert!(delta("sluice_smtp_replies_total{command=\"QUIT\",class=\"2xx\"}") >= 1.0);
    assert!(delta("sluice_hook_runs_total{hook=\"rcptto\"}") >= 2.0);
    assert!(delta("sluice_hook_verdicts_total{hook=\"rcptto\",verdict=\"reject\"}") >= 1.0);
    assert!(delta("sluice_hook_verdicts_total{hook=\"rcptto\",verdict=\"pass\"}") >= 1.0);
    assert!(delta("sluice_hook_duration_seconds_count{hook=\"rcptto\"}") >= 2.0);
    assert!(delta("sluice_fsync_batches_total") >= 1.0);
    assert!(delta("sluice_fsync_batch_size_count") >= 1.0);
    // REJECT at RCPT, DELIVER after relaying.
    assert!(delta("sluice_history_records_total") >= 2.0);
    assert!(
        delta("sluice_delivery_attempts_total{result=\"deliver\",transport=\"default\"}") >= 1.0,
        "{after}"
    );
    // Queue gauge read from the store at scrape time: delivered, so empty.
    assert_eq!(
        sample(&after, "sluice_queue_messages{state=\"queued\"}"),
        Some(0.0)
    );
    assert!(after.contains("# TYPE sluice_hook_duration_seconds histogram"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_queue_api_need_the_token() {
    let (srv, sink, _scripts) = start_with_http(TOKEN).await;
    let http = http_addr(&srv);
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<api@example.net>", "250").await;
    c.cmd("RCPT TO:<blocked@example.org>", "550").await;
    c.cmd("RCPT TO:<apiuser@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: api\r\nMessage-ID: <api-1@example.net>\r\n\r\nhi\r\n.\r\n")
        .await;
    c.expect("250").await;
    sink.wait_for(1).await;
    let store = srv.store().clone();
    assert!(
        wait_until(|| store
            .history_all()
            .unwrap()
            .iter()
            .any(|r| r.action == "DELIVER"))
        .await
    );

    // No token, a wrong one, another scheme: 401 with a challenge.
    for tok in [None, Some("wrong"), Some("s3cret-toke")] {
        let r = get(http, "/api/history", tok).await;
        assert_eq!(r.status, 401, "{tok:?}: {}", r.body);
        // Header names are case-insensitive (hyper writes Www-Authenticate).
        assert!(r
            .headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"));
    }
    let r = http_raw(
        http,
        format!("GET /api/history HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(get(http, "/api/queue", None).await.status, 401);

    // With the token: the same records `sluice history --json` shows.
    let r = get(http, "/api/history", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("application/json"));
    let all = r.json();
    let rows = all.as_array().unwrap();
    let actions: Vec<&str> = rows.iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"REJECT") && actions.contains(&"DELIVER"),
        "{actions:?}"
    );
    for row in rows {
        for key in [
            "ts",
            "action",
            "id",
            "transaction",
            "sender",
            "recipient",
            "transportid",
            "reason",
            "hid",
        ] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
    }

    // Filters: the same names as the CLI's.
    let r = get(http, "/api/history?action=reject", Some(TOKEN))
        .await
        .json();
    let r = r.as_array().unwrap();
    assert!(!r.is_empty());
    assert!(r.iter().all(|v| v["action"] == "REJECT"));
    assert!(r.iter().all(|v| v["recipient"] == "blocked@example.org"));
    let r = get(
        http,
        "/api/history?recipient=apiuser%40example.org&since=1h",
        Some(TOKEN),
    )
    .await
    .json();
    let r = r.as_array().unwrap();
    assert!(!r.is_empty() && r.iter().all(|v| v["recipient"] == "apiuser@example.org"));
    let r = get(http, "/api/history?id=api-1@example.net", Some(TOKEN))
        .await
        .json();
    assert!(r
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["action"] == "DELIVER"));
    let r = get(http, "/api/history?domain=example.org&limit=1", Some(TOKEN))
        .await
        .json();
    assert_eq!(r.as_array().unwrap().len(), 1);
    let r = get(http, "/api/history?until=1000", Some(TOKEN))
        .await
        .json();
    assert!(r.as_array().unwrap().is_empty());
    let r = get(
        http,
        "/api/history?sender=nobody%40example.net",
        Some(TOKEN),
    )
    .await
    .json();
    assert!(r.as_array().unwrap().is_empty());
    // Mistakes are 400s that say what was wrong.
    let r = get(http, "/api/history?recipent=x", Some(TOKEN)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("recipent"));
    assert_eq!(
        get(http, "/api/history?since=whenever", Some(TOKEN))
            .await
            .status,
        400
    );

    // Queue: list, stats, one entry, an unknown one.
    let r = get(http, "/api/queue", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(r.json().is_array());
    let r = get(http, "/api/queue/stats", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["by_state"].is_object());
    assert_eq!(
        get(http, "/api/queue/0123456789abcdef", Some(TOKEN))
            .await
            .status,
        404
    );
    assert_eq!(get(http, "/api/nothing", Some(TOKEN)).await.status, 404);

    // /metrics and /healthz need no token; unknown paths are 404, and the
    // console at / shows nothing but its login page before login.
    assert_eq!(get(http, "/healthz", None).await.status, 200);
    assert_eq!(get(http, "/nothing", None).await.status, 404);
    let r = get(http, "/", None).await;
    assert_eq!(r.status, 303);
    assert!(r.headers.contains("Location: /login"), "{}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_api_shows_held_mail() {
    let scripts = tempfile::tempdir().unwrap();
    let eod = scripts.path().join("eod.lua");
    std::fs::write(
        &eod,
        "for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, \"default\", {hold = true}) end\nAccept()\n",
    )
    .unwrap();
    let srv = TestServer::start(&format!(
        "[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[scripts]\neod = {eod:?}\n"
    ))
    .await;
    let http = http_addr(&srv);
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message(
        "h@example.net",
        &["held@example.org"],
        "Subject: held\r\n\r\nx\r\n",
        "250",
    )
    .await;
    let list = get(http, "/api/queue", Some(TOKEN)).await.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "held");
    let id = list[0]["id"].as_str().unwrap();
    // The queue list filters as parameters.
    let only = |q: &'static str| async move {
        let r = get(http, q, Some(TOKEN)).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json().as_array().unwrap().len()
    };
    assert_eq!(only("/api/queue?domain=example.org&state=held").await, 1);
    assert_eq!(only("/api/queue?sender=@example.net&older_than=0").await, 1);
    assert_eq!(only("/api/queue?recipient=other@example.org").await, 0);
    assert_eq!(only("/api/queue?newer_than=1h&transport=default").await, 1);
    for bad in [
        "/api/queue?state=frozen",
        "/api/queue?older_than=soon",
        "/api/queue?colour=red",
    ] {
        assert_eq!(get(http, bad, Some(TOKEN)).await.status, 400, "{bad}");
    }
    let one = get(http, &format!("/api/queue/{id}"), Some(TOKEN)).await;
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    assert_eq!(one["sender"], "h@example.net");
    assert!(one["message"].as_str().unwrap().contains("Subject: held"));
    let metrics = scrape(http).await;
    assert!(
        val(&metrics, "sluice_queue_messages{state=\"held\"}") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn api_is_off_while_the_token_is_empty() {
    let srv = TestServer::start("[http]\naddress = \"127.0.0.1:0\"\ntoken = \"\"\n").await;
    let http = http_addr(&srv);
    let r = get(http, "/api/history", Some("")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(get(http, "/api/queue", Some("anything")).await.status, 403);
    assert_eq!(get(http, "/metrics", None).await.status, 200);
}

#[tokio::test]
async fn http_is_off_by_default() {
    let srv = TestServer::start("").await;
    assert!(srv.daemon.as_ref().unwrap().http.is_none());
}

#[tokio::test]
async fn requests_are_bounded() {
    let srv = TestServer::start("[http]\naddress = \"127.0.0.1:0\"\n").await;
    let http = http_addr(&srv);
    // A head over 8 KiB.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(http_raw(http, big.as_bytes()).await.status, 431);
    // Only GET and HEAD, no bodies, HTTP/1.x only.
    let r = http_raw(http, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(r.status, 405);
    let r = http_raw(
        http,
        b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(http_raw(http, b"garbage\r\n\r\n").await.status, 400);
    // HEAD: headers only.
    let r = http_raw(http, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refused_by_the_limit_are_counted() {
    let srv =
        TestServer::start("[http]\naddress = \"127.0.0.1:0\"\n[limits]\nconnections_per_ip = 1\n")
            .await;
    let http = http_addr(&srv);
    let before = scrape(http).await;
    let mut first = srv.client().await;
    first.expect("220").await;
    let mut second = srv.client().await;
    second.expect("421 4.7.0").await;
    let after = scrape(http).await;
    let series = "sluice_connections_rejected_total{reason=\"limit\"}";
    assert!(val(&after, series) - val(&before, series) >= 1.0, "{after}");
    assert!(val(&after, "sluice_connections") >= 1.0);
}
