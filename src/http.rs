//! The HTTP endpoint on `[http] address` (off when empty): `GET /metrics`
//! (Prometheus text, no auth) and a read-only JSON API under `/api/` that
//! needs `Authorization: Bearer <[http] token>` and is refused outright while
//! the token is empty.
//!
//! | path                  | answer                                                    |
//! |-----------------------|-----------------------------------------------------------|
//! | `/metrics`            | [`crate::metrics::render`]                                |
//! | `/healthz`            | `ok`                                                      |
//! | `/api/history?…`      | history records (the `sluice history --json` array)       |
//! | `/api/queue`          | queue entries (`sluice queue list --json`; same filters)  |
//! | `/api/queue/stats`    | counts by state, transport, destination; oldest age       |
//! | `/api/queue/ID`       | one entry and its message (`sluice queue show --json`)    |
//!
//! History filters: `since`, `until` (a duration ago like `2h`, an RFC 3339
//! time, or unix seconds), `sender`, `recipient`, `domain`, `action`, `id`
//! (queue, transaction or message id), `after` (a history id, for paging),
//! `limit` (default 100, at most 10000). An unknown parameter is a 400.
//!
//! A deliberately small HTTP/1.1 server: one GET/HEAD per connection
//! (`Connection: close`), request head at most 8 KiB, no request bodies,
//! 10 s to send the request, at most 64 connections at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::HttpConfig;
use crate::control::{self, HistoryFilter};
use crate::store::Store;

/// Longest request head (request line and headers) we read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// `/api/history` and `/api/queue` return at most this many rows.
pub const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 100;

/// The running server; dropping it stops accepting.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    token: String,
    store: Store,
}

/// Bind `[http] address` and serve; `Ok(None)` when the address is empty.
pub async fn start(cfg: &HttpConfig, store: Store) -> std::io::Result<Option<HttpServer>> {
    if cfg.address.trim().is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(cfg.address.trim()).await?;
    let addr = listener.local_addr()?;
    if cfg.token.is_empty() {
        info!(address = %addr, "http listening (/metrics only: [http] token is empty, /api/ is off)");
    } else {
        info!(address = %addr, "http listening (/metrics, /api/)");
    }
    let shared = Arc::new(Shared {
        token: cfg.token.clone(),
        store,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, shared).await {
                    debug!(client = %peer, error = %e, "http connection failed");
                }
                drop(permit);
            });
        }
    });
    Ok(Some(HttpServer { addr, task }))
}

/// A parsed request: method, path, decoded query pairs, bearer token.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub bearer: Option<String>,
}

/// An answer: status, content type, body, extra headers.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    fn json(status: u16, v: &Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::json(status, &json!({"error": msg.into()}))
    }

    fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let (resp, head_only) = match head {
        Err(_) => (Response::error(408, "request timeout"), false),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => (Response::error(431, "request head too large"), false),
        Ok(Ok(Some(bytes))) => match parse_request(&bytes) {
            Err(resp) => (resp, false),
            Ok(req) => {
                let head_only = req.method == "HEAD";
                (route(&req, &shared).await, head_only)
            }
        },
    };
    write_response(&mut stream, &resp, head_only).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Read up to the blank line ending the head; `None` if it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            if end + 4 > MAX_HEAD {
                return Ok(None);
            }
            buf.truncate(end + 2);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Parse a request head (up to and including the last header's CRLF).
pub fn parse_request(head: &[u8]) -> Result<Request, Response> {
    let text =
        std::str::from_utf8(head).map_err(|_| Response::error(400, "request is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::error(400, "bad request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Response::error(505, "HTTP/1.0 or HTTP/1.1 only"));
    }
    if method != "GET" && method != "HEAD" {
        let mut r = Response::error(405, "GET or HEAD only");
        r.headers.push(("Allow", "GET, HEAD".into()));
        return Err(r);
    }
    let mut bearer = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::error(400, "bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            if let Some((scheme, tok)) = value.split_once(' ') {
                if scheme.eq_ignore_ascii_case("bearer") {
                    bearer = Some(tok.trim().to_string());
                }
            }
        } else if (name.eq_ignore_ascii_case("content-length") && value != "0")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(Response::error(413, "requests have no body"));
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut pairs = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let k = percent_decode(k).ok_or_else(|| Response::error(400, "bad query encoding"))?;
        let v = percent_decode(v).ok_or_else(|| Response::error(400, "bad query encoding"))?;
        pairs.push((k, v));
    }
    Ok(Request {
        method: method.to_string(),
        path: percent_decode(path).ok_or_else(|| Response::error(400, "bad path encoding"))?,
        query: pairs,
        bearer,
    })
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Compare without leaking how much of the token matched.
fn token_matches(given: &str, want: &str) -> bool {
    let (g, w) = (given.as_bytes(), want.as_bytes());
    let mut diff = u8::from(g.len() != w.len());
    for (i, &wb) in w.iter().enumerate() {
        diff |= wb ^ g.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

async fn route(req: &Request, shared: &Shared) -> Response {
    match req.path.as_str() {
        "/metrics" => {
            let store = shared.store.clone();
            let queue = tokio::task::spawn_blocking(move || store.count_by_state())
                .await
                .ok();
            Response::text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(queue.as_ref()),
            )
        }
        "/healthz" => Response::text(200, "text/plain; charset=utf-8", "ok\n".into()),
        p if p == "/api" || p.starts_with("/api/") => {
            if shared.token.is_empty() {
                return Response::error(403, "the API is off: set [http] token to enable it");
            }
            match &req.bearer {
                Some(t) if token_matches(t, &shared.token) => {}
                _ => {
                    let mut r = Response::error(401, "a valid bearer token is required");
                    r.headers
                        .push(("WWW-Authenticate", "Bearer realm=\"sluice\"".into()));
                    return r;
                }
            }
            api(req, shared.store.clone()).await
        }
        _ => Response::error(404, "not found"),
    }
}

/// A read of the store, run on the blocking pool.
type StoreJob = Box<dyn FnOnce(&Store) -> Result<Value, String> + Send>;

async fn api(req: &Request, store: Store) -> Response {
    let path = req.path.trim_end_matches('/');
    let job: StoreJob = match path {
        "/api/history" => match history_filter(&req.query) {
            Ok(f) => Box::new(move |s| control::history_json(s, &f)),
            Err(e) => return Response::error(400, e),
        },
        "/api/queue" => {
            let (limit, filter) = match queue_query(&req.query) {
                Ok(l) => l,
                Err(e) => return Response::error(400, e),
            };
            Box::new(move |s| {
                control::queue_list_json(s, &filter).map(|v| match v {
                    Value::Array(mut a) => {
                        a.truncate(limit);
                        Value::Array(a)
                    }
                    other => other,
                })
            })
        }
        "/api/queue/stats" => Box::new(control::queue_stats),
        p => match p.strip_prefix("/api/queue/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                let id = id.to_string();
                Box::new(move |s| control::queue_show_json(s, &id))
            }
            _ => return Response::error(404, "not found"),
        },
    };
    match tokio::task::spawn_blocking(move || job(&store)).await {
        Ok(Ok(v)) => Response::json(200, &v),
        Ok(Err(e)) if e.starts_with("no queue entry") => Response::error(404, e),
        Ok(Err(e)) => Response::error(500, e),
        Err(e) => Response::error(500, e.to_string()),
    }
}

/// `/api/queue` parameters: `limit` and the `sluice queue list` filters
/// (durations as `4h` or seconds).
fn queue_query(q: &[(String, String)]) -> Result<(usize, control::QueueFilter), String> {
    let mut limit = 1000;
    let mut f = control::QueueFilter::default();
    let secs = |v: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .or_else(|| humantime::parse_duration(v).ok().map(|d| d.as_secs_f64()))
            .ok_or_else(|| format!("{v:?} is not a duration (4h) nor seconds"))
    };
    for (k, v) in q {
        let s = Some(v.clone()).filter(|s| !s.is_empty());
        match k.as_str() {
            "limit" => limit = parse_limit(v)?,
            "sender" => f.sender = Some(v.clone()),
            "recipient" => f.recipient = s,
            "domain" => f.domain = s,
            "transport" => f.transport = s,
            "state" => f.state = s,
            "older_than" => f.older_than = Some(secs(v)?),
            "newer_than" => f.newer_than = Some(secs(v)?),
            "jobid" => f.jobid = s,
            "error" => f.error = s,
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    f.validate()?;
    Ok((limit, f))
}

fn parse_limit(v: &str) -> Result<usize, String> {
    let n: usize = v
        .parse()
        .map_err(|_| format!("limit {v:?} is not a number"))?;
    Ok(n.clamp(1, MAX_LIMIT))
}

/// The `sluice history` filters from query parameters.
pub fn history_filter(q: &[(String, String)]) -> Result<HistoryFilter, String> {
    let mut f = HistoryFilter {
        limit: Some(DEFAULT_LIMIT),
        ..Default::default()
    };
    for (k, v) in q {
        let s = Some(v.clone()).filter(|s| !s.is_empty());
        match k.as_str() {
            "since" => f.since = Some(parse_when(v)?),
            "until" => f.until = Some(parse_when(v)?),
            "sender" => f.sender = Some(v.clone()),
            "recipient" => f.recipient = s,
            "domain" => f.domain = s,
            "action" => f.action = s.map(|a| a.to_ascii_uppercase()),
            "id" => f.id = s,
            "after" => f.after = s,
            "limit" => f.limit = Some(parse_limit(v)?),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(f)
}

/// A duration ago (`2h`), an RFC 3339 time, or unix seconds.
fn parse_when(s: &str) -> Result<f64, String> {
    if let Ok(t) = s.parse::<f64>() {
        return Ok(t);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now - d.as_secs_f64());
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| {
        format!("{s:?} is neither a duration (2h), an RFC 3339 time nor unix seconds")
    })?;
    Ok(t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Request, Response> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn parses_a_get() {
        let r = req("GET /api/history?recipient=a%40b.org&action=defer&since=2h HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n").unwrap();
        assert_eq!(r.path, "/api/history");
        assert_eq!(r.bearer.as_deref(), Some("s3cret"));
        let f = history_filter(&r.query).unwrap();
        assert_eq!(f.recipient.as_deref(), Some("a@b.org"));
        assert_eq!(f.action.as_deref(), Some("DEFER"));
        assert!(f.since.is_some());
        assert_eq!(f.limit, Some(DEFAULT_LIMIT));
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(req("POST /metrics HTTP/1.1\r\n").unwrap_err().status, 405);
        assert_eq!(req("GET /metrics HTTP/2\r\n").unwrap_err().status, 505);
        assert_eq!(req("GET  /metrics HTTP/1.1\r\n").unwrap_err().status, 400);
        assert_eq!(
            req("GET / HTTP/1.1\r\nContent-Length: 5\r\n")
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(req("GET /%zz HTTP/1.1\r\n").unwrap_err().status, 400);
        let q = req("GET /api/history?limt=5 HTTP/1.1\r\n").unwrap();
        assert!(history_filter(&q.query).unwrap_err().contains("limt"));
        let q = req("GET /api/history?since=yesterday HTTP/1.1\r\n").unwrap();
        assert!(history_filter(&q.query).is_err());
    }

    #[test]
    fn limits_are_clamped() {
        let q = vec![("limit".to_string(), "99999999".to_string())];
        assert_eq!(history_filter(&q).unwrap().limit, Some(MAX_LIMIT));
        assert_eq!(queue_query(&q).unwrap().0, MAX_LIMIT);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abcd", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
