//! The JSON API, served under `/api/v1/` (and `/api/` as an alias). Every
//! route needs `Authorization: Bearer <[http] token>` (401 without, 403
//! while the token is empty). The handlers call the same functions as the
//! control socket ([`crate::control`]); their `#[utoipa::path]` attributes
//! are the OpenAPI document ([`super::openapi`]).
//!
//! History filters: `since`, `until` (a duration ago like `2h`, an RFC 3339
//! time, or unix seconds), `sender`, `recipient`, `domain`, `action`, `id`
//! (queue, transaction or message id), `text` (in the reason), `after` /
//! `before` (a history id, for paging), `order` (`oldest`, the default, or
//! `newest`), `limit` (default 100, at most 10000). Queue filters: those of
//! `sluice queue list`. An unknown parameter is a 400.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{blocking, token_matches, Shared, MAX_LIMIT};
use crate::control::{self, HistoryFilter, QueueFilter, QUEUE_ACTIONS};

const DEFAULT_LIMIT: usize = 100;
/// Who the API's queue actions are recorded as in history.
pub const ACTOR: &str = "api";

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A store error: "no queue entry" is a 404, anything else a 500.
    fn store(message: String) -> ApiError {
        if message.starts_with("no queue entry") {
            ApiError::new(StatusCode::NOT_FOUND, message)
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        pretty(self.status, &json!({"error": self.message}))
    }
}

/// Pretty JSON with a trailing newline (curl-friendly, as before).
fn pretty(status: StatusCode, v: &Value) -> Response {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

type ApiResult = Result<Response, ApiError>;
type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn params(q: Params) -> Result<Vec<(String, String)>, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text())))
}

fn ok(v: Value) -> ApiResult {
    Ok(pretty(StatusCode::OK, &v))
}

/// The API's routes with their OpenAPI paths (relative to the mount point).
pub fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes(routes!(queue_list))
        .routes(routes!(queue_stats))
        .routes(routes!(queue_show))
        .routes(routes!(queue_act))
        .routes(routes!(select_hold))
        .routes(routes!(select_release))
        .routes(routes!(select_retry))
        .routes(routes!(select_delete))
        .routes(routes!(select_bounce))
        .routes(routes!(reload))
        .routes(routes!(openapi_json))
}

/// The routes as a router behind the token check, with a JSON 404.
pub fn router(state: Shared) -> axum::Router<Shared> {
    let (r, _) = routes().split_for_parts();
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(state, require_token))
}

/// `Authorization: Bearer <token>`, compared in constant time.
async fn require_token(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.token.is_empty() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the API is off: set [http] token to enable it",
        )
        .into_response();
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match bearer {
        Some(t) if token_matches(t, &state.token) => next.run(req).await,
        _ => {
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
            r
        }
    }
}

/// History records, oldest first (or `order=newest`), as `sluice history --json`.
#[utoipa::path(
    get,
    path = "/history",
    tag = "history",
    params(
        ("since" = Option<String>, Query, description = "records at or after: a duration ago (2h), an RFC 3339 time or unix seconds"),
        ("until" = Option<String>, Query, description = "records at or before (same forms as since)"),
        ("sender" = Option<String>, Query, description = "envelope sender (exact, case-insensitive)"),
        ("recipient" = Option<String>, Query, description = "recipient address"),
        ("domain" = Option<String>, Query, description = "recipient domain"),
        ("action" = Option<String>, Query, description = "RECEIVED, REJECT, DEFER, DELIVER, ERROR, DELETE, HOLD, RELEASE, RETRY, BOUNCE"),
        ("id" = Option<String>, Query, description = "queue id, transaction id or Message-ID"),
        ("text" = Option<String>, Query, description = "text in the reason or the deciding hook (case-insensitive)"),
        ("after" = Option<String>, Query, description = "only records with a history id (hid) greater than this"),
        ("before" = Option<String>, Query, description = "only records with a history id less than this"),
        ("order" = Option<String>, Query, description = "oldest (default) or newest first"),
        ("limit" = Option<usize>, Query, description = "at most this many records (default 100, at most 10000)"),
        ("cluster" = Option<String>, Query, description = "1: every node's records, from the history export (ClickHouse), each with its node; 503 when the export is off or unreachable"),
    ),
    responses(
        (status = 200, description = "history records, each with its hid", body = Vec<Object>),
        (status = 503, description = "cluster=1 and the history export is off or unreachable", body = Object),
        (status = 400, description = "an unknown or malformed parameter", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn history(State(state): State<Shared>, q: Params) -> ApiResult {
    let mut p = params(q)?;
    let cluster = p.iter().any(|(k, v)| k == "cluster" && v == "1");
    p.retain(|(k, _)| k != "cluster");
    let f = history_filter(&p).map_err(ApiError::bad)?;
    if cluster {
        let Some(cfg) = &state.cluster else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster=1: [history.export] is off on this node",
            ));
        };
        let rows = crate::export::cluster_history(cfg, &f)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        return ok(Value::Array(rows));
    }
    ok(
        blocking(&state.store, move |s| control::history_json(s, &f))
            .await
            .map_err(ApiError::store)?,
    )
}

/// Queue entries (`sluice queue list --json`; the same filters).
#[utoipa::path(
    get,
    path = "/queue",
    tag = "queue",
    params(
        ("sender" = Option<String>, Query, description = "an address, a domain (example.org or @example.org), or <> for the null sender"),
        ("recipient" = Option<String>, Query, description = "any recipient: an address or a domain"),
        ("domain" = Option<String>, Query, description = "any recipient's domain"),
        ("transport" = Option<String>, Query, description = "transport id"),
        ("state" = Option<String>, Query, description = "queued, held or active"),
        ("older_than" = Option<String>, Query, description = "received longer ago than this (4h, or seconds)"),
        ("newer_than" = Option<String>, Query, description = "received more recently than this"),
        ("jobid" = Option<String>, Query, description = "job id given to mail:queue()"),
        ("error" = Option<String>, Query, description = "text in the last delivery error"),
        ("limit" = Option<usize>, Query, description = "at most this many entries (default 1000, at most 10000)"),
    ),
    responses(
        (status = 200, description = "queue entries", body = Vec<Object>),
        (status = 400, description = "an unknown or malformed parameter", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn queue_list(State(state): State<Shared>, q: Params) -> ApiResult {
    let (limit, filter, _) = queue_query(&params(q)?, false).map_err(ApiError::bad)?;
    let v = blocking(&state.store, move |s| control::queue_list_json(s, &filter))
        .await
        .map_err(ApiError::store)?;
    ok(match v {
        Value::Array(mut a) => {
            a.truncate(limit);
            Value::Array(a)
        }
        other => other,
    })
}

/// Counts by state, transport and destination; the oldest entry's age.
#[utoipa::path(
    get,
    path = "/queue/stats",
    tag = "queue",
    responses(
        (status = 200, description = "entries, by_state, by_transport, by_destination, oldest_age_seconds", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn queue_stats(State(state): State<Shared>) -> ApiResult {
    ok(blocking(&state.store, control::queue_stats)
        .await
        .map_err(ApiError::store)?)
}

/// One entry and its message (`sluice queue show --json`).
#[utoipa::path(
    get,
    path = "/queue/{id}",
    tag = "queue",
    params(("id" = String, Path, description = "queue id")),
    responses(
        (status = 200, description = "the entry, with `message` (or `message_base64`)", body = Object),
        (status = 404, description = "no such entry", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn queue_show(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult {
    ok(
        blocking(&state.store, move |s| control::queue_show_json(s, &id))
            .await
            .map_err(ApiError::store)?,
    )
}

/// Act on one entry: hold, release, retry, delete or bounce. Writes a
/// history record per recipient naming the actor "api".
#[utoipa::path(
    post,
    path = "/queue/{id}/{action}",
    tag = "queue actions",
    params(
        ("id" = String, Path, description = "queue id"),
        ("action" = String, Path, description = "hold, release, retry, delete or bounce"),
    ),
    responses(
        (status = 200, description = "{id, action, state}", body = Object),
        (status = 400, description = "an unknown action", body = Object),
        (status = 404, description = "no such entry", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn queue_act(
    State(state): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult {
    if !QUEUE_ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::bad(format!(
            "unknown queue action {action:?} (one of {})",
            QUEUE_ACTIONS.join(", ")
        )));
    }
    ok(blocking(&state.store, move |s| {
        control::queue_action(s, &action, &id, ACTOR)
    })
    .await
    .map_err(ApiError::store)?)
}

/// The by-filter action shared by the five routes below.
async fn select(state: Shared, action: &'static str, q: Params) -> ApiResult {
    let (_, filter, all) = queue_query(&params(q)?, true).map_err(ApiError::bad)?;
    if filter.is_empty() && !all {
        return Err(ApiError::bad(
            "no filter given: give queue filters as parameters, or all=true for every entry",
        ));
    }
    ok(blocking(&state.store, move |s| {
        control::queue_select(s, action, &filter, all, ACTOR)
    })
    .await
    .map_err(ApiError::store)?)
}

/// One by-filter action route per queue action (a static path each, so
/// they do not collide with `/queue/{id}`).
macro_rules! select_route {
    ($name:ident, $action:literal, $path:literal, $what:literal) => {
        #[doc = concat!("Every entry the filters select: ", $what, ". Writes history naming the actor \"api\".")]
        #[utoipa::path(
            post,
            path = $path,
            tag = "queue actions",
            params(
                ("sender" = Option<String>, Query, description = "an address, a domain, or <> for the null sender"),
                ("recipient" = Option<String>, Query, description = "any recipient: an address or a domain"),
                ("domain" = Option<String>, Query, description = "any recipient's domain"),
                ("transport" = Option<String>, Query, description = "transport id"),
                ("state" = Option<String>, Query, description = "queued, held or active"),
                ("older_than" = Option<String>, Query, description = "received longer ago than this (4h, or seconds)"),
                ("newer_than" = Option<String>, Query, description = "received more recently than this"),
                ("jobid" = Option<String>, Query, description = "job id given to mail:queue()"),
                ("error" = Option<String>, Query, description = "text in the last delivery error"),
                ("all" = Option<bool>, Query, description = "true: every entry (needed when no filter is given)"),
            ),
            responses(
                (status = 200, description = "{action, ids, skipped}", body = Object),
                (status = 400, description = "no filter, or a malformed one", body = Object),
                (status = 401, description = "no or a wrong bearer token", body = Object),
            ),
            security(("bearer" = []))
        )]
        async fn $name(State(state): State<Shared>, q: Params) -> ApiResult {
            select(state, $action, q).await
        }
    };
}

select_route!(select_hold, "hold", "/queue/hold", "hold");
select_route!(
    select_release,
    "release",
    "/queue/release",
    "release (due now)"
);
select_route!(
    select_retry,
    "retry",
    "/queue/retry",
    "attempt delivery now"
);
select_route!(
    select_delete,
    "delete",
    "/queue/delete",
    "remove without a report"
);
select_route!(
    select_bounce,
    "bounce",
    "/queue/bounce",
    "fail now with a DSN to the sender"
);

/// Reload scripts, recipient sources and the TLS certificate (`sluice reload`).
#[utoipa::path(
    post,
    path = "/reload",
    tag = "daemon",
    responses(
        (status = 200, description = "{reloaded: what was reloaded}", body = Object),
        (status = 500, description = "the reload failed; the old configuration stays", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn reload(State(state): State<Shared>) -> ApiResult {
    let Some(f) = state.reload.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no daemon to reload",
        ));
    };
    let res = tokio::task::spawn_blocking(move || f())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match res {
        Ok(m) => {
            tracing::info!(actor = ACTOR, "{m}");
            ok(json!({ "reloaded": m }))
        }
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "daemon",
    responses(
        (status = 200, description = "the OpenAPI 3 document of this API", body = Object),
        (status = 401, description = "no or a wrong bearer token", body = Object),
    ),
    security(("bearer" = []))
)]
async fn openapi_json(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

/// Queue filters from query parameters (durations as `4h` or seconds), with
/// `limit` (list) or `all` (actions).
pub fn queue_query(
    q: &[(String, String)],
    action: bool,
) -> Result<(usize, QueueFilter, bool), String> {
    let mut limit = 1000;
    let mut all = false;
    let mut f = QueueFilter::default();
    let secs = |v: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .or_else(|| humantime::parse_duration(v).ok().map(|d| d.as_secs_f64()))
            .ok_or_else(|| format!("{v:?} is not a duration (4h) nor seconds"))
    };
    for (k, v) in q {
        let s = Some(v.clone()).filter(|s| !s.is_empty());
        match k.as_str() {
            "limit" if !action => limit = parse_limit(v)?,
            "all" if action => {
                all = match v.as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" | "" => false,
                    _ => return Err(format!("all={v:?}: true or false")),
                }
            }
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
    Ok((limit, f, all))
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
            "text" => f.text = s,
            "after" => f.after = s,
            "before" => f.before = s,
            "order" => {
                f.newest_first = match v.as_str() {
                    "newest" => true,
                    "oldest" | "" => false,
                    other => return Err(format!("order {other:?}: oldest or newest")),
                }
            }
            "limit" => f.limit = Some(parse_limit(v)?),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(f)
}

/// A duration ago (`2h`), an RFC 3339 time, `YYYY-MM-DD[ HH:MM[:SS]]` (UTC;
/// also with a `T`, as a browser's datetime-local field sends), or unix seconds.
pub fn parse_when(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(t) = s.parse::<f64>() {
        return Ok(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(super::now_secs() - d.as_secs_f64());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6);
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp() as f64);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0.0, |t| t.and_utc().timestamp() as f64));
    }
    Err(format!(
        "{s:?} is neither a duration (2h), a time (2026-12-02 06:00, UTC; or RFC 3339) nor unix seconds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn history_parameters() {
        let f = history_filter(&q(
            "recipient=a@b.org&action=defer&since=2h&order=newest&text=spam",
        ))
        .unwrap();
        assert_eq!(f.recipient.as_deref(), Some("a@b.org"));
        assert_eq!(f.action.as_deref(), Some("DEFER"));
        assert!(f.since.is_some() && f.newest_first);
        assert_eq!(f.text.as_deref(), Some("spam"));
        assert_eq!(f.limit, Some(DEFAULT_LIMIT));
        assert!(history_filter(&q("limt=5")).unwrap_err().contains("limt"));
        assert!(history_filter(&q("since=yesterday")).is_err());
        assert!(history_filter(&q("order=sideways")).is_err());
    }

    #[test]
    fn times_in_every_form() {
        assert_eq!(parse_when("1000").unwrap(), 1000.0);
        assert_eq!(parse_when("2026-12-02T06:00").unwrap(), 1_796_191_200.0);
        assert_eq!(parse_when("2026-12-02 06:00:00").unwrap(), 1_796_191_200.0);
        assert_eq!(
            parse_when("2026-12-02T07:00:00+01:00").unwrap(),
            1_796_191_200.0
        );
        assert_eq!(parse_when("2026-12-02").unwrap(), 1_796_169_600.0);
        assert!((super::super::now_secs() - 3600.0 - parse_when("1h").unwrap()).abs() < 5.0);
        assert!(parse_when("soon").is_err());
    }

    #[test]
    fn limits_are_clamped_and_actions_take_all() {
        let big = q("limit=99999999");
        assert_eq!(history_filter(&big).unwrap().limit, Some(MAX_LIMIT));
        assert_eq!(queue_query(&big, false).unwrap().0, MAX_LIMIT);
        assert!(queue_query(&big, true).is_err(), "no limit on actions");
        assert!(queue_query(&q("all=true"), true).unwrap().2);
        assert!(queue_query(&q("all=true"), false).is_err());
        assert!(queue_query(&q("all=maybe"), true).is_err());
        assert!(queue_query(&q("state=frozen"), true).is_err());
    }
}
