//! The HTTP endpoint on `[http] address` (off when empty), on axum over
//! hyper: `GET /metrics` (Prometheus text, no auth), `GET /healthz`, the
//! JSON API under `/api/v1/` (bearer token, [`api`]; the same routes answer
//! under `/api/` as an alias), its OpenAPI 3 document at
//! `/api/v1/openapi.json` ([`openapi`]), and the operator console under `/`
//! (login with the token, session cookie, CSRF tokens: [`auth`], pages in
//! [`console`]).
//!
//! | path                        | answer                                              |
//! |-----------------------------|-----------------------------------------------------|
//! | `/metrics`                  | [`crate::metrics::render`]                          |
//! | `/healthz`                  | `ok`                                                |
//! | `/api/v1/…`, `/api/…`       | [`api`]: history, queue, queue actions, reload      |
//! | `/`, `/login`, `/history`…  | [`console`]                                         |
//!
//! `/metrics` stays on the crate's own registry ([`crate::metrics::render`]:
//! one scrape renders in about 12 µs, `cargo bench --bench console`) rather
//! than prometheus-client; only the serving moved to axum.
//!
//! Limits: request head at most 8 KiB (431), 10 s to send it, bodies only
//! on POST and at most 64 KiB (413), 30 s to produce an answer (408), at
//! most 64 connections at once (more wait in the kernel's backlog), one
//! request per connection (`Connection: close`, as the hand-written server
//! before it did).

pub mod api;
pub mod auth;
pub mod charts;
pub mod console;
pub mod html;
pub mod openapi;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::HttpConfig;
use crate::control::ReloadFn;
use crate::store::Store;

/// Longest request head (request line and headers) we read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a handler has to produce its answer (a streamed body may run on).
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (console forms, API POSTs).
pub const MAX_BODY: usize = 64 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Live tails (server-sent event streams) open at once.
pub const MAX_TAILS: usize = 8;
/// `/api/v1/history` and `/api/v1/queue` return at most this many rows.
pub const MAX_LIMIT: usize = 10_000;

/// The running server; dropping it stops accepting and ends open connections.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// What every handler shares.
pub struct AppState {
    pub token: String,
    pub store: Store,
    /// The daemon's reload (the control socket's `reload`); None in tools.
    pub reload: Option<ReloadFn>,
    pub sessions: auth::Sessions,
    pub logins: auth::LoginLimiter,
    pub tails: Arc<Semaphore>,
    /// The OpenAPI document, serialized once at start.
    pub openapi: String,
    /// The daemon's config when `[history.export]` is on: `cluster=1`
    /// history queries go to the export.
    pub cluster: Option<crate::config::Config>,
}

pub type Shared = Arc<AppState>;

/// Bind `[http] address` and serve; `Ok(None)` when the address is empty.
pub async fn start(
    cfg: &HttpConfig,
    store: Store,
    reload: Option<ReloadFn>,
    cluster: Option<crate::config::Config>,
) -> std::io::Result<Option<HttpServer>> {
    if cfg.address.trim().is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(cfg.address.trim()).await?;
    let addr = listener.local_addr()?;
    if cfg.token.is_empty() {
        info!(address = %addr, "http listening (/metrics only: [http] token is empty, /api/ and the console are off)");
    } else {
        info!(address = %addr, "http listening (/metrics, /api/v1/, console at /)");
    }
    let state = Arc::new(AppState {
        token: cfg.token.clone(),
        store,
        reload,
        sessions: auth::Sessions::new(cfg.session_timeout),
        logins: auth::LoginLimiter::new(auth::LOGIN_ATTEMPTS, auth::LOGIN_WINDOW),
        tails: Arc::new(Semaphore::new(MAX_TAILS)),
        openapi: serde_json::to_string_pretty(&openapi::document()).unwrap_or_default(),
        cluster,
    });
    let app = router(state);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
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
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        app.clone().oneshot(req.map(Body::new))
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .title_case_headers(true)
                    .max_header_size(MAX_HEAD)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(client = %peer, error = %e, "http connection failed");
                    },
                    _ = stop.changed() => {}
                }
                drop(permit);
            });
        }
    });
    Ok(Some(HttpServer { addr, task, stop }))
}

/// Every route: metrics, health, the API (twice: `/api/v1` and the `/api`
/// alias) and the console, under the limits of the module doc.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/api/v1", api::router(state.clone()))
        .nest("/api", api::router(state.clone()))
        .merge(console::router(state.clone()))
        .fallback(|| async { api::ApiError::new(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn(common_headers))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            HANDLER_TIMEOUT,
        ))
        .with_state(state)
}

/// No bodies but on POST (413, as before), and `Cache-Control: no-store`
/// and `nosniff` on every answer.
async fn common_headers(req: Request, next: Next) -> Response {
    let bodiless = req.method() == Method::GET || req.method() == Method::HEAD;
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = if bodiless && has_body {
        api::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "GET and HEAD requests have no body",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn metrics(State(state): State<Shared>) -> Response {
    let store = state.store.clone();
    let queue = tokio::task::spawn_blocking(move || store.count_by_state())
        .await
        .ok();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(queue.as_ref()),
    )
        .into_response()
}

/// Compare without leaking how much of the token matched.
pub fn token_matches(given: &str, want: &str) -> bool {
    let (g, w) = (given.as_bytes(), want.as_bytes());
    let mut diff = u8::from(g.len() != w.len());
    for (i, &wb) in w.iter().enumerate() {
        diff |= wb ^ g.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Unix seconds now.
pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Run a store job on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Store,
    job: impl FnOnce(&Store) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || job(&store))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abcd", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
