//! The operator console: server-rendered pages that work without
//! JavaScript (a small vendored script only adds the live tail's stream and
//! select-all). Before login every page but the login form redirects to it.
//!
//! | page                 | what                                                          |
//! |----------------------|---------------------------------------------------------------|
//! | `GET /login`, `POST /login`, `POST /logout` | the session ([`super::auth`])          |
//! | `GET /history`       | search: time range, sender, recipient, domain, action, id, text; newest first, paged |
//! | `GET /message?id=`   | one message's timeline (`sluice trace`)                       |
//! | `GET /queue`         | counts by state, transport, destination; the oldest entries   |
//! | `POST /queue/confirm`, `POST /queue/act` | hold/release/retry/delete/bounce, confirmed first |
//! | `GET /charts?range=hour\|day` | SVG charts from the history ([`super::charts`])      |
//! | `GET /tail`, `GET /tail/events` | live tail: a refreshing page, or server-sent events |
//!
//! Every value shown goes through [`esc`]; every form carries the session's
//! CSRF token and every POST checks it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::auth::{self, cookie, csrf_ok, set_cookie, Session, LOGIN_COOKIE, SESSION_COOKIE};
use super::html::{self, action_label, csrf_field, esc, page, time, url};
use super::{blocking, charts, token_matches, Shared};
use crate::control::{self, HistoryFilter, QueueFilter, QUEUE_ACTIONS};

/// Who the console's queue actions are recorded as in history.
pub const ACTOR: &str = "console";
/// History rows per page.
pub const PAGE_SIZE: usize = 50;
/// Records one search page examines at most (a free-text search over a
/// large history); the page then offers to search on from there.
pub const MAX_SCAN: usize = 200_000;
/// Queue entries listed on the queue page (oldest first).
const QUEUE_ROWS: usize = 200;

type Pairs = Vec<(String, String)>;

pub fn router(_state: Shared) -> Router<Shared> {
    Router::new()
        .route("/", get(root))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/history", get(history))
        .route("/message", get(message))
        .route("/queue", get(queue))
        .route("/queue/confirm", post(queue_confirm))
        .route("/queue/act", post(queue_act))
        .route("/charts", get(charts_page))
        .route("/tail", get(tail))
        .route("/tail/events", get(tail_events))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
}

/// Security headers of every console page: nothing from elsewhere, no
/// framing, no referrer.
fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// The live session of this request, if any.
fn session(state: &Shared, headers: &HeaderMap) -> Option<(String, Session)> {
    if state.token.is_empty() {
        return None;
    }
    let id = cookie(headers, SESSION_COOKIE)?;
    state.sessions.touch(&id).map(|s| (id, s))
}

fn get_param<'a>(q: &'a Pairs, name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

/// A POST's session and CSRF check: the session, or the refusal.
fn check_post(state: &Shared, headers: &HeaderMap, form: &Pairs) -> Result<Session, Box<Response>> {
    let Some((_, s)) = session(state, headers) else {
        return Err(Box::new(html_response(
            StatusCode::FORBIDDEN,
            page(
                "Session expired",
                None,
                "<p class=\"error\">Your session has expired or you are not logged in.</p><p><a href=\"/login\">Log in</a></p>",
            ),
        )));
    };
    if !csrf_ok(get_param(form, "csrf"), &s.csrf) {
        return Err(Box::new(html_response(
            StatusCode::FORBIDDEN,
            page(
                "Refused",
                Some(&s.csrf),
                "<p class=\"error\">The form's CSRF token is missing or wrong; nothing was done. Reload the page and try again.</p>",
            ),
        )));
    }
    Ok(s)
}

async fn root(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match session(&state, &headers) {
        Some(_) => Redirect::to("/history").into_response(),
        None => to_login(),
    }
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        html::JS,
    )
        .into_response()
}

/// The page shown for everything while `[http] token` is empty.
fn console_off() -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        page(
            "Console off",
            None,
            "<p class=\"error\">The console is off: set [http] token to enable it.</p>",
        ),
    )
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let pre = auth::random_token();
    let body = format!(
        "{}<form method=\"post\" action=\"/login\" class=\"login\">{}\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" autocomplete=\"current-password\" autofocus required></label>\
         <button type=\"submit\" id=\"login\">Log in</button></form>\
         <p class=\"hint\">The password is the <code>[http] token</code> of this Sluice.</p>",
        if message.is_empty() {
            String::new()
        } else {
            format!("<p class=\"error\">{}</p>", esc(message))
        },
        csrf_field(&pre)
    );
    let mut r = html_response(status, page("Log in", None, &body));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &pre)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_form(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if state.token.is_empty() {
        return console_off();
    }
    if session(&state, &headers).is_some() {
        return Redirect::to("/history").into_response();
    }
    // A session cookie the table no longer knows: it expired (or the
    // daemon restarted). Say so, and drop the cookie.
    if cookie(&headers, SESSION_COOKIE).is_some_and(|c| !c.is_empty()) {
        let mut r = login_page(StatusCode::OK, "Your session has expired; log in again.");
        if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "")) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        return r;
    }
    login_page(StatusCode::OK, "")
}

async fn login(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    if state.token.is_empty() {
        return console_off();
    }
    if let Err(wait) = state.logins.attempt(peer.ip()) {
        tracing::warn!(client = %peer.ip(), "console login rate limit");
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many login attempts; try again in {wait} s."),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let pre = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !csrf_ok(get_param(&form, "csrf"), &pre) {
        return login_page(
            StatusCode::FORBIDDEN,
            "The login form expired (CSRF token missing or wrong); try again.",
        );
    }
    let password = form
        .iter()
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !token_matches(password, &state.token) {
        tracing::warn!(client = %peer.ip(), "console login failed");
        return login_page(StatusCode::UNAUTHORIZED, "Wrong password.");
    }
    let (id, _) = state.sessions.create();
    tracing::info!(client = %peer.ip(), "console login");
    let mut r = Redirect::to("/history").into_response();
    for c in [
        set_cookie(SESSION_COOKIE, &id),
        set_cookie(LOGIN_COOKIE, ""),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn logout(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    if let Err(r) = check_post(&state, &headers, &form) {
        return *r;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.remove(&id);
    }
    let mut r = to_login();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The search form's fields, in order: (name, label, placeholder).
const SEARCH_FIELDS: [(&str, &str, &str); 8] = [
    ("since", "From", "2h, 2026-12-02 06:00 (UTC)"),
    ("until", "To", "now"),
    ("sender", "Sender", "a@example.net"),
    ("recipient", "Recipient", "b@example.org"),
    ("domain", "Domain", "example.org"),
    (
        "id",
        "Queue id / Message-ID",
        "queue, transaction or message id",
    ),
    ("text", "Text in reason", "spam"),
    ("action", "Action", ""),
];

/// The history filter the search form asks for (newest first, one page).
fn search_filter(q: &Pairs) -> Result<HistoryFilter, String> {
    let mut f = HistoryFilter {
        newest_first: true,
        limit: Some(PAGE_SIZE),
        max_scan: Some(MAX_SCAN),
        ..Default::default()
    };
    let s = |n: &str| get_param(q, n).map(|v| v.trim().to_string());
    f.since = s("since").map(|v| super::api::parse_when(&v)).transpose()?;
    f.until = s("until").map(|v| super::api::parse_when(&v)).transpose()?;
    f.sender = s("sender");
    f.recipient = s("recipient");
    f.domain = s("domain").map(|d| d.trim_start_matches('@').to_string());
    f.id = s("id");
    f.text = s("text");
    f.action = s("action").map(|a| a.to_ascii_uppercase());
    f.before = s("before");
    Ok(f)
}

fn search_form(q: &Pairs) -> String {
    let mut out = String::from("<form method=\"get\" action=\"/history\" class=\"search\">");
    for (name, label, hint) in SEARCH_FIELDS {
        let v = get_param(q, name).unwrap_or("");
        if name == "action" {
            let _ = write!(
                out,
                "<label>{label} <select name=\"action\" id=\"f-action\"><option value=\"\">any</option>"
            );
            for a in crate::store::history::HistoryAction::ALL {
                let sel = if v.eq_ignore_ascii_case(a.as_str()) {
                    " selected"
                } else {
                    ""
                };
                let _ = write!(out, "<option{sel}>{}</option>", a.as_str());
            }
            out.push_str("</select></label>");
        } else {
            let _ = write!(
                out,
                "<label>{label} <input name=\"{name}\" id=\"f-{name}\" value=\"{}\" placeholder=\"{}\"></label>",
                esc(v),
                esc(hint)
            );
        }
    }
    out.push_str("<button type=\"submit\" id=\"search\">Search</button> <a href=\"/history\">Clear</a></form>");
    out
}

/// The id a history row's link names: its queue id, else its transaction.
fn message_link(r: &Value) -> String {
    let id = r["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or(r["transaction"].as_str())
        .unwrap_or("");
    format!("/message?id={}", url(id))
}

fn history_rows(rows: &[Value]) -> String {
    let mut out = String::from(
        "<table class=\"history\"><thead><tr><th>Time (UTC)</th><th>Action</th><th>Sender</th>\
         <th>Recipient</th><th>Id</th><th>Reason</th></tr></thead><tbody id=\"rows\">",
    );
    for r in rows {
        out.push_str(&history_row(r));
    }
    out.push_str("</tbody></table>");
    out
}

fn history_row(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("");
    let id = if s("id").is_empty() {
        s("transaction")
    } else {
        s("id")
    };
    let mut reason = s("reason").to_string();
    if let Some(host) = r["remote_host"].as_str().filter(|h| !reason.contains(h)) {
        reason = format!("{reason} [{host}]");
    }
    format!(
        "<tr><td class=\"ts\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td><a class=\"msg\" href=\"{}\">{}</a></td><td class=\"reason\">{}</td></tr>",
        esc(&time(r["ts"].as_f64().unwrap_or(0.0))),
        action_label(s("action")),
        esc(if s("sender").is_empty() {
            "<>"
        } else {
            s("sender")
        }),
        esc(s("recipient")),
        esc(&message_link(r)),
        esc(id),
        esc(&reason),
    )
}

async fn history(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Pairs>,
) -> Response {
    let Some((_, sess)) = session(&state, &headers) else {
        return to_login();
    };
    let mut body = search_form(&q);
    let filter = match search_filter(&q) {
        Ok(f) => f,
        Err(e) => {
            let _ = write!(body, "<p class=\"error\">{}</p>", esc(&e));
            return html_response(
                StatusCode::BAD_REQUEST,
                page("History", Some(&sess.csrf), &body),
            );
        }
    };
    let started = std::time::Instant::now();
    let (rows, stopped) = match blocking(&state.store, move |s| {
        control::history_scan_json(s, &filter)
    })
    .await
    {
        Ok((Value::Array(a), stopped)) => (a, stopped),
        Ok((_, stopped)) => (Vec::new(), stopped),
        Err(e) => {
            let _ = write!(body, "<p class=\"error\">{}</p>", esc(&e));
            return html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                page("History", Some(&sess.csrf), &body),
            );
        }
    };
    let _ = write!(
        body,
        "<p class=\"meta\" id=\"count\">{} record{}{}, newest first ({} ms)</p>",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if get_param(&q, "before").is_some() {
            " (older page)"
        } else {
            ""
        },
        started.elapsed().as_millis()
    );
    if rows.is_empty() {
        body.push_str("<p class=\"empty\">No history records match.</p>");
    } else {
        body.push_str(&history_rows(&rows));
    }
    // Paging: the same search, before the last row shown.
    let keep: String = q
        .iter()
        .filter(|(k, v)| k != "before" && !v.is_empty())
        .map(|(k, v)| format!("{}={}&", url(k), url(v)))
        .collect();
    body.push_str("<p class=\"pager\">");
    if get_param(&q, "before").is_some() {
        let _ = write!(
            body,
            "<a href=\"/history?{}\">« Newest</a> ",
            esc(keep.trim_end_matches('&'))
        );
    }
    if let Some(at) = &stopped {
        let _ = write!(
            body,
            "<span class=\"meta\" id=\"stopped\">Searched {MAX_SCAN} records, back to {} UTC. </span>\
             <a id=\"search-on\" href=\"/history?{}\">Search older records »</a>",
            esc(&hid_time(at)),
            esc(&format!("{keep}before={}", url(at)))
        );
    } else if rows.len() == PAGE_SIZE {
        if let Some(last) = rows.last().and_then(|r| r["hid"].as_str()) {
            let _ = write!(
                body,
                "<a id=\"older\" href=\"/history?{}\">Older »</a>",
                esc(&format!("{keep}before={}", url(last)))
            );
        }
    }
    body.push_str("</p>");
    html_response(StatusCode::OK, page("History", Some(&sess.csrf), &body))
}

/// The time a history id starts with (13 hex digits of µs).
fn hid_time(hid: &str) -> String {
    hid.get(..13)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(|us| time(us as f64 / 1e6))
        .unwrap_or_default()
}

/// A definition list of the non-empty (label, value) pairs.
fn facts(items: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"facts\">");
    for (k, v) in items {
        if !v.is_empty() {
            let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
        }
    }
    out.push_str("</dl>");
    out
}

/// The action buttons of queue entries `ids` (they lead to the confirmation).
fn action_form(csrf: &str, ids: &[&str]) -> String {
    let mut out = format!(
        "<form method=\"post\" action=\"/queue/confirm\" class=\"actions\">{}",
        csrf_field(csrf)
    );
    for id in ids {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"id\" value=\"{}\">",
            esc(id)
        );
    }
    for a in QUEUE_ACTIONS {
        let _ = write!(
            out,
            "<button type=\"submit\" name=\"action\" value=\"{a}\" class=\"btn-{a}\">{}</button>",
            capitalize(a)
        );
    }
    out.push_str("</form>");
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

async fn message(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Pairs>,
) -> Response {
    let Some((_, sess)) = session(&state, &headers) else {
        return to_login();
    };
    let Some(id) = get_param(&q, "id").map(|s| s.trim().to_string()) else {
        return Redirect::to("/history").into_response();
    };
    let lookup = id.clone();
    let v = match blocking(&state.store, move |s| control::trace_json(s, &lookup)).await {
        Ok(v) => v,
        Err(e) => {
            return html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                page(
                    "Message",
                    Some(&sess.csrf),
                    &format!("<p class=\"error\">{}</p>", esc(&e)),
                ),
            )
        }
    };
    let rows = v["history"].as_array().cloned().unwrap_or_default();
    let entries = v["queue"].as_array().cloned().unwrap_or_default();
    let title = format!("Message {id}");
    if rows.is_empty() && entries.is_empty() {
        return html_response(
            StatusCode::NOT_FOUND,
            page(
                &title,
                Some(&sess.csrf),
                &format!("<p class=\"empty\">Nothing known about {}.</p>", esc(&id)),
            ),
        );
    }
    html_response(
        StatusCode::OK,
        page(
            &title,
            Some(&sess.csrf),
            &timeline(&sess.csrf, &rows, &entries),
        ),
    )
}

/// `sluice trace` as HTML: envelope, client and TLS, the hooks' verdicts,
/// then every event, then what the queue holds now.
fn timeline(csrf: &str, rows: &[Value], entries: &[Value]) -> String {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let received = rows.iter().find(|r| r["action"] == "RECEIVED");
    let first = received.or(rows.first()).or(entries.first());
    let mut out = String::new();
    if let Some(f) = first {
        let md = &f["metadata"];
        let entry = entries.first();
        let client = entry.map(|e| &e["client"]);
        let pick = |hist: String, queued: Option<String>| {
            if hist.is_empty() {
                queued.unwrap_or_default()
            } else {
                hist
            }
        };
        out.push_str("<section class=\"card\" id=\"envelope\"><h2>Envelope and client</h2>");
        out.push_str(&facts(&[
            ("Message-ID", s(f, "message_id")),
            ("Transaction", s(f, "transaction")),
            ("Sender", {
                let v = s(f, "sender");
                if v.is_empty() {
                    "<>".into()
                } else {
                    v
                }
            }),
            ("Recipients", s(f, "recipient")),
            (
                "Size",
                f["size"]
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(|n| format!("{n} bytes"))
                    .unwrap_or_default(),
            ),
            (
                "Client",
                pick(s(f, "client_ip"), client.map(|c| s(c, "ip"))),
            ),
            ("PTR", client.map(|c| s(c, "ptr")).unwrap_or_default()),
            (
                "HELO",
                pick(
                    md["helo"].as_str().unwrap_or("").into(),
                    client.map(|c| s(c, "helo")),
                ),
            ),
            (
                "TLS",
                pick(
                    md["tls"].as_str().unwrap_or("").into(),
                    client.map(|c| s(c, "tls")),
                ),
            ),
            (
                "Authenticated",
                pick(
                    md["auth"].as_str().unwrap_or("").into(),
                    client.map(|c| s(c, "auth")),
                ),
            ),
            ("Listener", s(f, "serverid")),
            ("Connection", s(f, "connection")),
        ]));
        if md["tls"].as_str().unwrap_or("").is_empty() && client.is_none_or(|c| c["tls"].is_null())
        {
            out.push_str("<p class=\"meta\" id=\"no-tls\">TLS: none (plain SMTP)</p>");
        }
        out.push_str("</section>");
    }
    // Hook verdicts: the RECEIVED record's trace, and each refusal's decider.
    let mut hooks: Vec<String> = Vec::new();
    for r in rows {
        if let Some(h) = r["metadata"]["hooks"].as_str() {
            hooks.extend(h.split("; ").map(|x| x.to_string()));
        }
        if let Some(d) = r["metadata"]["decided_by"].as_str() {
            hooks.push(format!("{d} → {} ({})", s(r, "reason"), s(r, "recipient")));
        }
    }
    out.push_str("<section class=\"card\" id=\"hooks\"><h2>Policy hooks</h2>");
    if hooks.is_empty() {
        out.push_str("<p class=\"empty\">No hook ran a verdict for this message (the built-in rules decided).</p>");
    } else {
        out.push_str("<ol class=\"hooks\">");
        for h in &hooks {
            let _ = write!(out, "<li>{}</li>", esc(h));
        }
        out.push_str("</ol>");
    }
    out.push_str("</section>");
    out.push_str("<section class=\"card\" id=\"events\"><h2>Timeline</h2><ol class=\"timeline\">");
    for r in rows {
        let action = s(r, "action");
        let mut detail = Vec::new();
        if !s(r, "recipient").is_empty() {
            detail.push(format!("to <{}>", s(r, "recipient")));
        }
        if let (Some(h), ip) = (r["remote_host"].as_str(), s(r, "remote_ip")) {
            detail.push(if ip.is_empty() || ip == h {
                format!("via {h}")
            } else {
                format!("via {h} [{ip}]")
            });
        }
        if r["attempt"].as_u64().unwrap_or(0) > 0
            && ["DELIVER", "DEFER", "ERROR"].contains(&action.as_str())
        {
            detail.push(format!("attempt {}", r["attempt"]));
        }
        if let Some(t) = r["next_retry"].as_f64() {
            detail.push(format!("next retry {}", time(t)));
        }
        if let Some(a) = r["actor"].as_str() {
            detail.push(format!("by {a}"));
        }
        if !s(r, "id").is_empty() && action != "RECEIVED" {
            detail.push(format!("queue id {}", s(r, "id")));
        }
        let _ = write!(
            out,
            "<li class=\"ev ev-{}\"><span class=\"ts\">{}</span> {} <span class=\"detail\">{}</span><div class=\"reply\">{}</div></li>",
            esc(&action.to_ascii_lowercase()),
            esc(&time(r["ts"].as_f64().unwrap_or(0.0))),
            action_label(&action),
            esc(&detail.join(", ")),
            esc(&s(r, "reason")),
        );
    }
    out.push_str("</ol></section>");
    if !entries.is_empty() {
        out.push_str("<section class=\"card\" id=\"queued\"><h2>In the queue now</h2>");
        for e in entries {
            let rcpts: Vec<&str> = e["recipients"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["recipient"].as_str()).collect())
                .unwrap_or_default();
            out.push_str(&facts(&[
                ("Queue id", s(e, "id")),
                ("State", s(e, "state")),
                ("Transport", s(e, "transportid")),
                ("Recipients", rcpts.join(", ")),
                ("Attempts", e["attempts"].to_string()),
                (
                    "Next attempt",
                    time(e["next_attempt"].as_f64().unwrap_or(0.0)),
                ),
                ("Last error", s(e, "last_error")),
            ]));
            let id = s(e, "id");
            out.push_str(&action_form(csrf, &[id.as_str()]));
        }
        out.push_str("</section>");
    }
    out
}

fn count_table(title: &str, id: &str, v: &Value) -> String {
    let mut out = format!(
        "<table class=\"counts\" id=\"{id}\"><thead><tr><th>{}</th><th>Entries</th></tr></thead><tbody>",
        esc(title)
    );
    if let Some(m) = v.as_object() {
        if m.is_empty() {
            out.push_str("<tr><td colspan=\"2\" class=\"empty\">none</td></tr>");
        }
        for (k, n) in m {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                esc(if k.is_empty() { "(none)" } else { k }),
                n
            );
        }
    }
    out.push_str("</tbody></table>");
    out
}

async fn queue(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Pairs>,
) -> Response {
    let Some((_, sess)) = session(&state, &headers) else {
        return to_login();
    };
    let filter = QueueFilter {
        state: get_param(&q, "state").map(|s| s.to_string()),
        domain: get_param(&q, "domain").map(|s| s.to_string()),
        ..Default::default()
    };
    let res = blocking(&state.store, move |s| {
        Ok((
            control::queue_stats(s)?,
            control::queue_list_json(s, &filter)?,
        ))
    })
    .await;
    let (stats, list) = match res {
        Ok(x) => x,
        Err(e) => {
            return html_response(
                StatusCode::BAD_REQUEST,
                page(
                    "Queue",
                    Some(&sess.csrf),
                    &format!("<p class=\"error\">{}</p>", esc(&e)),
                ),
            )
        }
    };
    let mut body = String::new();
    if let Some(done) = get_param(&q, "done") {
        let _ = write!(
            body,
            "<p class=\"flash\" id=\"flash\">{}: {} entr{}{}</p>",
            esc(done),
            esc(get_param(&q, "n").unwrap_or("0")),
            if get_param(&q, "n") == Some("1") {
                "y"
            } else {
                "ies"
            },
            get_param(&q, "failed")
                .map(|f| format!(", {} failed", esc(f)))
                .unwrap_or_default()
        );
    }
    let _ = write!(
        body,
        "<p class=\"meta\" id=\"summary\">{} entr{} in the queue; oldest {}</p>",
        stats["entries"],
        if stats["entries"] == 1 { "y" } else { "ies" },
        stats["oldest_age_seconds"]
            .as_f64()
            .map(|s| humantime::format_duration(Duration::from_secs(s as u64)).to_string() + " old")
            .unwrap_or_else(|| "-".into())
    );
    body.push_str("<div class=\"grid\">");
    body.push_str(&count_table("State", "by-state", &stats["by_state"]));
    body.push_str(&count_table(
        "Transport",
        "by-transport",
        &stats["by_transport"],
    ));
    body.push_str(&count_table(
        "Destination",
        "by-destination",
        &stats["by_destination"],
    ));
    body.push_str("</div>");
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/queue\" class=\"search\"><label>State <select name=\"state\"><option value=\"\">any</option>{}</select></label>\
         <label>Domain <input name=\"domain\" value=\"{}\"></label><button type=\"submit\">Filter</button></form>",
        ["queued", "held", "active"]
            .iter()
            .map(|s| format!(
                "<option{}>{s}</option>",
                if get_param(&q, "state") == Some(s) { " selected" } else { "" }
            ))
            .collect::<String>(),
        esc(get_param(&q, "domain").unwrap_or(""))
    );
    let mut entries = list.as_array().cloned().unwrap_or_default();
    entries.sort_by(|a, b| {
        a["received_at"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b["received_at"].as_f64().unwrap_or(0.0))
    });
    let shown = entries.len().min(QUEUE_ROWS);
    let _ = write!(
        body,
        "<h2>Oldest entries</h2><form method=\"post\" action=\"/queue/confirm\" class=\"queue\">{}\
         <table class=\"queue\"><thead><tr><th><input type=\"checkbox\" id=\"select-all\" title=\"select all\"></th>\
         <th>Received (UTC)</th><th>Id</th><th>State</th><th>Sender</th><th>Recipients</th><th>Attempts</th><th>Last error</th></tr></thead><tbody>",
        csrf_field(&sess.csrf)
    );
    for e in entries.iter().take(shown) {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
        let rcpts: Vec<&str> = e["recipients"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["recipient"].as_str()).collect())
            .unwrap_or_default();
        let id = s("id");
        let _ = write!(
            body,
            "<tr><td><input type=\"checkbox\" name=\"id\" value=\"{id}\" class=\"pick\"></td><td class=\"ts\">{}</td>\
             <td><a href=\"/message?id={}\">{id}</a></td><td class=\"state state-{st}\">{st}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"reason\">{}</td></tr>",
            esc(&time(e["received_at"].as_f64().unwrap_or(0.0))),
            esc(&url(&id)),
            esc(if s("sender").is_empty() { "<>".to_string() } else { s("sender") }.as_str()),
            esc(&rcpts.join(", ")),
            e["attempts"],
            esc(&s("last_error")),
            id = esc(&id),
            st = esc(&s("state")),
        );
    }
    if shown == 0 {
        body.push_str("<tr><td colspan=\"8\" class=\"empty\">The queue is empty.</td></tr>");
    }
    body.push_str("</tbody></table><p class=\"actions\">Selected: ");
    for a in QUEUE_ACTIONS {
        let _ = write!(
            body,
            "<button type=\"submit\" name=\"action\" value=\"{a}\" class=\"btn-{a}\">{}</button> ",
            capitalize(a)
        );
    }
    body.push_str("</p></form>");
    if entries.len() > shown {
        let _ = write!(
            body,
            "<p class=\"meta\">{} more not shown; filter, or use <code>sluice queue</code>.</p>",
            entries.len() - shown
        );
    }
    html_response(StatusCode::OK, page("Queue", Some(&sess.csrf), &body))
}

/// The chosen action and ids of a queue form.
fn picked(form: &Pairs) -> Result<(&'static str, Vec<String>), String> {
    let action = get_param(form, "action").unwrap_or("");
    let action = QUEUE_ACTIONS
        .into_iter()
        .find(|a| *a == action)
        .ok_or_else(|| format!("unknown queue action {action:?}"))?;
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, v)| k == "id" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect();
    if ids.is_empty() {
        return Err("no entries selected".into());
    }
    Ok((action, ids))
}

async fn queue_confirm(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    let sess = match check_post(&state, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (action, ids) = match picked(&form) {
        Ok(x) => x,
        Err(e) => {
            return html_response(
                StatusCode::BAD_REQUEST,
                page(
                    "Queue",
                    Some(&sess.csrf),
                    &format!(
                        "<p class=\"error\">{}</p><p><a href=\"/queue\">Back to the queue</a></p>",
                        esc(&e)
                    ),
                ),
            )
        }
    };
    let lookup = ids.clone();
    let entries = blocking(&state.store, move |s| {
        let mut out = BTreeMap::new();
        for id in &lookup {
            out.insert(id.clone(), s.get_entry(id).map_err(|e| e.to_string())?);
        }
        Ok(out)
    })
    .await
    .unwrap_or_default();
    let mut body = format!(
        "<p class=\"confirm\" id=\"confirm-text\">{} {} entr{}?{}</p><ul class=\"picked\">",
        capitalize(action),
        ids.len(),
        if ids.len() == 1 { "y" } else { "ies" },
        match action {
            "delete" => " They are removed without a report to the sender.",
            "bounce" => " Each sender gets a delivery failure report.",
            _ => "",
        }
    );
    for id in &ids {
        let what = match entries.get(id) {
            Some(Some(e)) => format!(
                "{id} — {} from <{}> to {}",
                e.state.as_str(),
                e.sender,
                e.recipients
                    .iter()
                    .map(|r| r.recipient.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => format!("{id} — no longer in the queue"),
        };
        let _ = write!(body, "<li>{}</li>", esc(&what));
    }
    let _ = write!(
        body,
        "</ul><form method=\"post\" action=\"/queue/act\">{}<input type=\"hidden\" name=\"action\" value=\"{action}\">",
        csrf_field(&sess.csrf)
    );
    for id in &ids {
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"id\" value=\"{}\">",
            esc(id)
        );
    }
    let _ = write!(
        body,
        "<button type=\"submit\" id=\"confirm\" class=\"btn-{action}\">Yes, {action}</button> <a href=\"/queue\">Cancel</a></form>"
    );
    html_response(
        StatusCode::OK,
        page("Confirm queue action", Some(&sess.csrf), &body),
    )
}

async fn queue_act(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    let sess = match check_post(&state, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (action, ids) = match picked(&form) {
        Ok(x) => x,
        Err(e) => {
            return html_response(
                StatusCode::BAD_REQUEST,
                page(
                    "Queue",
                    Some(&sess.csrf),
                    &format!("<p class=\"error\">{}</p>", esc(&e)),
                ),
            )
        }
    };
    let res = blocking(&state.store, move |s| {
        let (mut done, mut failed) = (0, 0);
        for id in &ids {
            match control::queue_action(s, action, id, ACTOR) {
                Ok(_) => done += 1,
                Err(e) => {
                    tracing::warn!(id = %id, action, error = %e, "console queue action failed");
                    failed += 1;
                }
            }
        }
        Ok((done, failed))
    })
    .await;
    let (done, failed) = res.unwrap_or((0, 0));
    let mut to = format!("/queue?done={action}&n={done}");
    if failed > 0 {
        let _ = write!(to, "&failed={failed}");
    }
    Redirect::to(&to).into_response()
}

async fn charts_page(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Pairs>,
) -> Response {
    let Some((_, sess)) = session(&state, &headers) else {
        return to_login();
    };
    let range = charts::Range::parse(get_param(&q, "range").unwrap_or("hour"));
    let now = super::now_secs();
    let c = match blocking(&state.store, move |s| charts::compute(s, range, now)).await {
        Ok(c) => c,
        Err(e) => {
            return html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                page(
                    "Charts",
                    Some(&sess.csrf),
                    &format!("<p class=\"error\">{}</p>", esc(&e)),
                ),
            )
        }
    };
    let mut body = String::from("<p class=\"ranges\">");
    for r in [charts::Range::Hour, charts::Range::Day] {
        if r == range {
            let _ = write!(body, "<b>Last {}</b> ", r.name());
        } else {
            let _ = write!(
                body,
                "<a href=\"/charts?range={n}\" id=\"range-{n}\">Last {n}</a> ",
                n = r.name()
            );
        }
    }
    body.push_str("</p><h2>Messages</h2>");
    body.push_str(&charts::line_svg(&c));
    body.push_str(&charts::legend(&c));
    body.push_str("<h2>Refusals by hook or reply</h2>");
    body.push_str(&charts::refusals_svg(&c));
    html_response(StatusCode::OK, page("Charts", Some(&sess.csrf), &body))
}

/// Rows the live tail page starts with.
const TAIL_ROWS: usize = 50;

async fn tail(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let Some((_, sess)) = session(&state, &headers) else {
        return to_login();
    };
    let filter = HistoryFilter {
        newest_first: true,
        limit: Some(TAIL_ROWS),
        ..Default::default()
    };
    let rows = match blocking(&state.store, move |s| control::history_json(s, &filter)).await {
        Ok(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let newest = rows
        .first()
        .and_then(|r| r["hid"].as_str())
        .unwrap_or("")
        .to_string();
    let mut body = format!(
        "<p class=\"meta\" id=\"tail-status\" data-after=\"{}\">The newest {TAIL_ROWS} records, newest first. \
         This page refreshes every 5 s; with JavaScript new records stream in as they are written.</p>",
        esc(&newest)
    );
    body.push_str(&history_rows(&rows));
    let html = page("Live tail", Some(&sess.csrf), &body).replacen(
        "</head>",
        "<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript></head>",
        1,
    );
    html_response(StatusCode::OK, html)
}

/// Server-sent events: each new history record as one `message` event
/// whose data is the table row's HTML (escaped here, like every page),
/// polled from the store every second after the `after` history id.
async fn tail_events(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<Pairs>,
) -> Response {
    let Some((id, _)) = session(&state, &headers) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let Ok(permit) = state.tails.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live tails open").into_response();
    };
    let after = get_param(&q, "after").map(|s| s.to_string()).or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_string())
    });
    let init = (state, id, after, permit);
    let stream = futures_util::stream::unfold(init, |(state, id, after, permit)| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The stream ends with the session (logout or expiry).
        if !state.sessions.alive(&id) {
            return None;
        }
        let filter = HistoryFilter {
            after: after.clone(),
            limit: Some(200),
            since: if after.is_none() {
                Some(super::now_secs() - 2.0)
            } else {
                None
            },
            ..Default::default()
        };
        let rows = match blocking(&state.store, move |s| control::history_json(s, &filter)).await {
            Ok(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let mut next = after;
        let mut events: Vec<Result<Event, Infallible>> = Vec::new();
        for r in &rows {
            let hid = r["hid"].as_str().unwrap_or("").to_string();
            events.push(Ok(Event::default().id(hid.clone()).data(history_row(r))));
            next = Some(hid);
        }
        Some((
            futures_util::stream::iter(events),
            (state, id, next, permit),
        ))
    });
    use futures_util::StreamExt;
    Sse::new(stream.flatten())
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Pairs {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn search_form_keeps_and_escapes_values() {
        let q = pairs(&[("recipient", "\"><script>x</script>"), ("action", "defer")]);
        let f = search_form(&q);
        assert!(f.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
        assert!(f.contains("<option selected>DEFER</option>"));
        let filter = search_filter(&q).unwrap();
        assert!(filter.newest_first);
        assert_eq!(filter.action.as_deref(), Some("DEFER"));
        assert_eq!(filter.limit, Some(PAGE_SIZE));
        assert!(search_filter(&pairs(&[("since", "last tuesday")])).is_err());
    }

    #[test]
    fn rows_link_to_the_message_and_escape() {
        let r = serde_json::json!({
            "ts": 0.0, "action": "REJECT", "id": "", "transaction": "tx<1>",
            "sender": "", "recipient": "a@b", "reason": "550 <bad>"
        });
        let row = history_row(&r);
        assert!(row.contains("href=\"/message?id=tx%3C1%3E\""), "{row}");
        assert!(row.contains("550 &lt;bad&gt;") && row.contains("&lt;&gt;"));
    }

    #[test]
    fn history_ids_tell_their_time() {
        assert_eq!(hid_time("000003b9aca00abcdef"), "1970-01-01 00:16:40");
        assert_eq!(hid_time("zz"), "");
    }

    #[test]
    fn queue_forms_need_an_action_and_ids() {
        assert!(picked(&pairs(&[("action", "hold")])).is_err());
        assert!(picked(&pairs(&[("action", "melt"), ("id", "x")])).is_err());
        let (a, ids) = picked(&pairs(&[("action", "hold"), ("id", "a"), ("id", "b")])).unwrap();
        assert_eq!((a, ids.len()), ("hold", 2));
    }
}
