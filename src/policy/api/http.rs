//! `http(url[, {method, headers, body, timeout, max_size, tls_verify}])` →
//! `{status, headers, body}` or `nil, error` (Halon's `http()`).
//!
//! One reqwest client per process and `tls_verify` setting (built by
//! [`crate::http_client`], rustls with ring), so connections are reused
//! across runs and states. Redirects are not followed (the 30x is the
//! answer); the whole exchange is bounded by `timeout` (default 5 s) and
//! the body by `max_size` (default 1 MiB; a larger body is an error, not a
//! truncation). Response header names are lower-case; repeated headers are
//! joined with ", ". Only http:// and https:// URLs.

use std::sync::LazyLock;
use std::time::Duration;

use mlua::{Lua, Table, Value};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_SIZE: usize = 1 << 20;

static CLIENTS: LazyLock<[Result<reqwest::Client, String>; 2]> = LazyLock::new(|| {
    let mk = |verify: bool| {
        crate::http_client::client(&crate::http_client::ClientOptions {
            tls_verify: verify,
            ..Default::default()
        })
    };
    [mk(true), mk(false)]
});

struct Request {
    method: reqwest::Method,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
    max_size: usize,
    tls_verify: bool,
}

fn options(o: Option<Table>) -> mlua::Result<Request> {
    let mut r = Request {
        method: reqwest::Method::GET,
        headers: Vec::new(),
        body: None,
        timeout: DEFAULT_TIMEOUT,
        max_size: DEFAULT_MAX_SIZE,
        tls_verify: true,
    };
    let bad = |k: &str, want: &str, v: &Value| {
        mlua::Error::runtime(format!("http: {k} must be {want}, got {}", v.type_name()))
    };
    let Some(o) = o else { return Ok(r) };
    for pair in o.pairs::<String, Value>() {
        let (k, v) = pair?;
        match k.as_str() {
            "method" => match &v {
                Value::String(s) => {
                    r.method = reqwest::Method::from_bytes(s.to_str()?.to_ascii_uppercase().as_bytes())
                        .map_err(|_| mlua::Error::runtime("http: method is not a valid HTTP method"))?
                }
                _ => return Err(bad("method", "a string", &v)),
            },
            "headers" => match &v {
                Value::Table(t) => {
                    for p in t.pairs::<String, Value>() {
                        let (name, val) = p?;
                        let val = super::scalar_string(&val)
                            .ok_or_else(|| bad(&format!("headers.{name}"), "a string", &val))?;
                        r.headers.push((name, val));
                    }
                }
                _ => return Err(bad("headers", "a table", &v)),
            },
            "body" => match &v {
                Value::String(s) => r.body = Some(s.as_bytes().to_vec()),
                _ => return Err(bad("body", "a string", &v)),
            },
            "timeout" => {
                r.timeout = match &v {
                    Value::Integer(i) if *i > 0 => Duration::from_secs(*i as u64),
                    Value::Number(n) if *n > 0.0 && n.is_finite() => Duration::from_secs_f64(*n),
                    _ => return Err(bad("timeout", "a positive number of seconds", &v)),
                }
                .min(Duration::from_secs(60))
            }
            "max_size" => match &v {
                Value::Integer(i) if *i >= 0 => r.max_size = *i as usize,
                _ => return Err(bad("max_size", "a non-negative integer", &v)),
            },
            "tls_verify" => match &v {
                Value::Boolean(b) => r.tls_verify = *b,
                _ => return Err(bad("tls_verify", "a boolean", &v)),
            },
            other => {
                return Err(mlua::Error::runtime(format!(
                    "http: unknown option {other:?} (known: method, headers, body, timeout, max_size, tls_verify)"
                )))
            }
        }
    }
    Ok(r)
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn fetch(url: &str, r: Request) -> Result<Response, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("unsupported URL scheme {:?}", parsed.scheme()));
    }
    let client = CLIENTS[if r.tls_verify { 0 } else { 1 }]
        .as_ref()
        .map_err(|e| e.clone())?;
    let max = r.max_size;
    let timeout = r.timeout;
    let exchange = async move {
        let mut req = client.request(r.method, parsed);
        for (k, v) in &r.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = r.body {
            req = req.body(b);
        }
        let mut resp = req.send().await.map_err(describe)?;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(format!("response body larger than max_size ({max} bytes)"));
        }
        let status = resp.status().as_u16();
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in resp.headers() {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.iter_mut().find(|(n, _)| n == name.as_str()) {
                Some((_, old)) => {
                    old.push_str(", ");
                    old.push_str(&v);
                }
                None => headers.push((name.as_str().to_string(), v)),
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > max {
                return Err(format!("response body larger than max_size ({max} bytes)"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

/// The error with its causes (reqwest's top level says little).
fn describe(e: reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    lua.globals().set(
        "http",
        lua.create_async_function(|lua, (url, o): (String, Option<Table>)| async move {
            let req = options(o)?;
            match fetch(&url, req).await {
                Ok(r) => {
                    let t = lua.create_table()?;
                    t.set("status", r.status)?;
                    let h = lua.create_table()?;
                    for (k, v) in r.headers {
                        h.set(k, v)?;
                    }
                    t.set("headers", h)?;
                    t.set("body", lua.create_string(&r.body)?)?;
                    Ok((Value::Table(t), Value::Nil))
                }
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(&e)?))),
            }
        })?,
    )
}
