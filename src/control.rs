//! The control socket: a Unix socket (mode 0600) on which a running daemon
//! answers the CLI, since sled lets only one process open the database.
//! Protocol: one JSON request line, one JSON response line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::store::Store;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    QueueList {
        #[serde(default)]
        filter: QueueFilter,
    },
    QueueShow {
        id: String,
    },
    /// hold | release | retry | delete | bounce
    QueueAction {
        action: String,
        id: String,
    },
    /// The same actions on every entry the filter selects; an empty filter
    /// selects nothing unless `all` is set.
    QueueSelect {
        action: String,
        filter: QueueFilter,
        #[serde(default)]
        all: bool,
    },
    QueueStats,
    History {
        query: HistoryFilter,
    },
    /// `sluice trace ID`: the history and the queue entries of one message.
    Trace {
        id: String,
    },
    Reload,
    /// `sluice state get KEY`
    StateGet {
        key: String,
    },
    /// `sluice state del KEY`
    StateDel {
        key: String,
    },
    StateStats,
    /// `sluice history --export-status`
    ExportStatus,
}

/// `sluice history` filters, as sent over the socket: the store's query.
pub type HistoryFilter = crate::store::history::HistoryQuery;

/// Which queue entries `queue list` shows and `queue hold|release|retry|
/// delete|bounce` acts on without ids. Every given field must match.
///
/// Addresses compare case-insensitively; a value without a local part
/// (`example.org` or `@example.org`) matches the domain; `<>` is the null
/// sender.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueFilter {
    pub sender: Option<String>,
    /// Any of the entry's recipients.
    pub recipient: Option<String>,
    /// Any recipient's domain.
    pub domain: Option<String>,
    pub transport: Option<String>,
    /// queued | held | active
    pub state: Option<String>,
    /// Received at least this many seconds ago.
    pub older_than: Option<f64>,
    /// Received at most this many seconds ago.
    pub newer_than: Option<f64>,
    pub jobid: Option<String>,
    /// Case-insensitive substring of the last delivery error.
    pub error: Option<String>,
}

fn address_matches(pattern: &str, address: &str) -> bool {
    let pattern = pattern.trim();
    if pattern == "<>" {
        return address.is_empty();
    }
    match pattern.rsplit_once('@') {
        Some((local, _)) if !local.is_empty() => address.eq_ignore_ascii_case(pattern),
        Some((_, domain)) => domain_of(address).eq_ignore_ascii_case(domain),
        None => domain_of(address).eq_ignore_ascii_case(pattern),
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

impl QueueFilter {
    pub fn is_empty(&self) -> bool {
        *self == QueueFilter::default()
    }

    /// Checks the values an operator typed before anything is selected.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.state {
            if !["queued", "held", "active"].contains(&s.to_ascii_lowercase().as_str()) {
                return Err(format!("unknown state {s:?} (queued, held or active)"));
            }
        }
        for (name, v) in [
            ("older_than", self.older_than),
            ("newer_than", self.newer_than),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(format!("{name} must be a non-negative number of seconds"));
            }
        }
        Ok(())
    }

    pub fn matches(&self, e: &crate::store::queue::QueueEntry, now: f64) -> bool {
        let age = now - e.received_at;
        self.sender
            .as_deref()
            .is_none_or(|p| address_matches(p, &e.sender))
            && self.recipient.as_deref().is_none_or(|p| {
                e.recipients
                    .iter()
                    .any(|r| address_matches(p, &r.recipient))
            })
            && self.domain.as_deref().is_none_or(|d| {
                let d = d.trim().trim_start_matches('@');
                e.recipients
                    .iter()
                    .any(|r| domain_of(&r.recipient).eq_ignore_ascii_case(d))
            })
            && self.transport.as_deref().is_none_or(|t| e.transportid == t)
            && self
                .state
                .as_deref()
                .is_none_or(|s| e.state.as_str().eq_ignore_ascii_case(s))
            && self.older_than.is_none_or(|s| age >= s)
            && self.newer_than.is_none_or(|s| age <= s)
            && self
                .jobid
                .as_deref()
                .is_none_or(|j| e.jobid.as_deref() == Some(j))
            && self.error.as_deref().is_none_or(|needle| {
                e.last_error
                    .as_deref()
                    .is_some_and(|t| t.to_lowercase().contains(&needle.to_lowercase()))
            })
    }
}

/// Apply one queue action to every entry `filter` selects. Returns the ids
/// acted on and, for entries that changed under us, why they were skipped.
pub fn queue_select(
    store: &Store,
    action: &str,
    filter: &QueueFilter,
    all: bool,
    actor: &str,
) -> Result<Value, String> {
    filter.validate()?;
    if !["hold", "release", "retry", "delete", "bounce"].contains(&action) {
        return Err(format!("unknown queue action {action:?}"));
    }
    if filter.is_empty() && !all {
        return Err("no filter given: name ids, a filter, or --all for every entry".into());
    }
    let now = now_secs();
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    for e in store.list_entries().map_err(|e| e.to_string())? {
        if !filter.matches(&e, now) {
            continue;
        }
        match queue_action(store, action, &e.id, actor) {
            Ok(_) => done.push(Value::String(e.id)),
            Err(why) => skipped.push(json!({"id": e.id, "error": why})),
        }
    }
    Ok(json!({"action": action, "ids": done, "skipped": skipped}))
}

/// Who the control socket's (and the CLI's own) queue actions are recorded as.
pub const CLI_ACTOR: &str = "cli";

/// Answer one request against the store; `reload` is None without a daemon.
pub fn dispatch(store: &Store, req: Request, reload: Option<&ReloadFn>) -> Result<Value, String> {
    match req {
        Request::Ping => Ok(Value::String(
            if reload.is_some() {
                "pong"
            } else {
                "no daemon"
            }
            .into(),
        )),
        Request::QueueList { filter } => queue_list_json(store, &filter),
        Request::QueueShow { id } => queue_show_json(store, &id),
        Request::QueueAction { action, id } => queue_action(store, &action, &id, CLI_ACTOR),
        Request::QueueSelect {
            action,
            filter,
            all,
        } => queue_select(store, &action, &filter, all, CLI_ACTOR),
        Request::QueueStats => queue_stats(store),
        Request::History { query } => history_json(store, &query),
        Request::Trace { id } => trace_json(store, &id),
        Request::Reload => match reload {
            Some(f) => f().map(Value::String),
            None => Err("no daemon running".into()),
        },
        Request::ExportStatus => Ok(crate::export::status(store)),
        Request::StateGet { .. } | Request::StateDel { .. } | Request::StateStats => {
            Err("the state store lives in the running daemon".into())
        }
    }
}

pub fn history_json(store: &Store, f: &HistoryFilter) -> Result<Value, String> {
    Ok(history_scan_json(store, f)?.0)
}

/// [`history_json`], and where a `max_scan` budget stopped the search.
pub fn history_scan_json(
    store: &Store,
    f: &HistoryFilter,
) -> Result<(Value, Option<String>), String> {
    let (rows, stopped) = store.query_history_scan(f).map_err(|e| e.to_string())?;
    let rows = rows
        .into_iter()
        .map(|(hid, r)| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["hid"] = Value::String(hid);
            v
        })
        .collect();
    Ok((Value::Array(rows), stopped))
}

/// One message's story: its history records (oldest first) and the queue
/// entries still holding it, found by queue id, transaction id or
/// Message-ID — `sluice trace` and the console's timeline.
pub fn trace_json(store: &Store, id: &str) -> Result<Value, String> {
    let filter = HistoryFilter {
        id: Some(id.to_string()),
        ..Default::default()
    };
    let rows = history_json(store, &filter)?;
    let mut rows = rows.as_array().cloned().unwrap_or_default();
    // The history is in write order: a delivery outcome (written at once)
    // can precede the RECEIVED record the background writer had in hand.
    // A message's story reads in time order.
    rows.sort_by(|a, b| {
        let t = |r: &Value| r["ts"].as_f64().unwrap_or(0.0);
        t(a).total_cmp(&t(b))
    });
    // Queue entries of this message: by queue id, transaction id or Message-ID.
    let txs: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["transaction"].as_str())
        .chain(std::iter::once(id))
        .collect();
    let bare = id.trim_matches(['<', '>']);
    let entries: Vec<Value> = store
        .list_entries()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|e| {
            e.id == id
                || txs.contains(e.transaction.as_str())
                || e.message_id.as_deref().map(|m| m.trim_matches(['<', '>'])) == Some(bare)
        })
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    Ok(json!({"history": rows, "queue": entries}))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The queue actions, by the names the CLI, the API and the console use.
pub const QUEUE_ACTIONS: [&str; 5] = ["hold", "release", "retry", "delete", "bounce"];

/// hold, release, retry (now), delete (no report), bounce (the scheduler
/// fails it at once: ERROR history and a DSN to the sender). Each writes one
/// history record per recipient (HOLD, RELEASE, RETRY, DELETE, BOUNCE) naming
/// `actor` — "cli", "api" or "console".
pub fn queue_action(store: &Store, action: &str, id: &str, actor: &str) -> Result<Value, String> {
    use crate::store::history::{HistoryAction, HistoryRecord};
    use crate::store::queue::QueueState;
    let (kind, reason) = match action {
        "hold" => (HistoryAction::Hold, "held by operator"),
        "release" => (HistoryAction::Release, "released by operator"),
        "retry" => (HistoryAction::Retry, "retry now, asked by operator"),
        "bounce" => (HistoryAction::Bounce, "bounce asked by operator"),
        "delete" => (HistoryAction::Delete, "deleted by operator"),
        other => return Err(format!("unknown queue action {other:?}")),
    };
    let Some(mut e) = store.get_entry(id).map_err(|e| e.to_string())? else {
        return Err(format!("no queue entry {id}"));
    };
    let recs: Vec<_> = e
        .recipients
        .iter()
        .map(|r| {
            let mut h =
                HistoryRecord::for_entry(&e, &r.recipient, kind, format!("{reason} ({actor})"));
            h.attempt = e.attempts;
            h.actor = Some(actor.to_string());
            h
        })
        .collect();
    match kind {
        HistoryAction::Hold => e.state = QueueState::Held,
        HistoryAction::Bounce => {
            e.state = QueueState::Queued;
            e.next_attempt = now_secs();
            e.control.bounce_requested = true;
        }
        HistoryAction::Delete => {
            store.append_history(&recs).map_err(|e| e.to_string())?;
            store.history_db().flush().map_err(|e| e.to_string())?;
            store.remove_entry(id).map_err(|e| e.to_string())?;
            return Ok(json!({"id": id, "action": action}));
        }
        _ => {
            e.state = QueueState::Queued;
            e.next_attempt = now_secs();
        }
    }
    store.update_entry(&e).map_err(|e| e.to_string())?;
    store.append_history(&recs).map_err(|e| e.to_string())?;
    Ok(json!({"id": id, "action": action, "state": e.state.as_str()}))
}

pub fn queue_stats(store: &Store) -> Result<Value, String> {
    let entries = store.list_entries().map_err(|e| e.to_string())?;
    let mut by_state = std::collections::BTreeMap::<String, u64>::new();
    let mut by_transport = std::collections::BTreeMap::<String, u64>::new();
    let mut by_domain = std::collections::BTreeMap::<String, u64>::new();
    let mut oldest: Option<f64> = None;
    for e in &entries {
        *by_state.entry(e.state.as_str().into()).or_default() += 1;
        *by_transport.entry(e.transportid.clone()).or_default() += 1;
        for r in &e.recipients {
            let d = r
                .recipient
                .rsplit_once('@')
                .map(|(_, d)| d)
                .unwrap_or("")
                .to_string();
            *by_domain.entry(d).or_default() += 1;
        }
        oldest = Some(oldest.map_or(e.received_at, |o: f64| o.min(e.received_at)));
    }
    Ok(json!({
        "entries": entries.len(),
        "by_state": by_state,
        "by_transport": by_transport,
        "by_destination": by_domain,
        "oldest_age_seconds": oldest.map(|o| (now_secs() - o).max(0.0)),
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon is listening on {0}")]
    NotRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("daemon answered: {0}")]
    Remote(String),
    #[error("bad answer from daemon: {0}")]
    Protocol(String),
}

/// What the daemon does on `reload`: returns a description or an error text.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Queue entries as the CLI shows them, shared by socket and direct access.
pub fn queue_list_json(store: &Store, filter: &QueueFilter) -> Result<Value, String> {
    filter.validate()?;
    let now = now_secs();
    let entries = store.list_entries().map_err(|e| e.to_string())?;
    Ok(Value::Array(
        entries
            .into_iter()
            .filter(|e| filter.matches(e, now))
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
            .collect(),
    ))
}

pub fn queue_show_json(store: &Store, id: &str) -> Result<Value, String> {
    let Some(entry) = store.get_entry(id).map_err(|e| e.to_string())? else {
        return Err(format!("no queue entry {id}"));
    };
    let body = store
        .get_body(&entry.body)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let mut v = serde_json::to_value(&entry).map_err(|e| e.to_string())?;
    match std::str::from_utf8(&body) {
        Ok(text) => v["message"] = Value::String(text.to_string()),
        Err(_) => {
            use base64::Engine;
            v["message_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body));
        }
    }
    Ok(v)
}

pub async fn serve(
    path: PathBuf,
    store: Store,
    reload: ReloadFn,
    state: Option<Arc<crate::state::StateStore>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket from a crashed daemon; sled's lock already proves we are alone.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    info!(path = %path.display(), "control socket listening");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // The socket is 0600, but its mode is only as good as the
            // directory it sits in and the moment between bind and chmod:
            // the kernel's word on who connected is what counts.
            if let Err(refused) = peer_allowed(&stream) {
                warn!(path = %path.display(), "control connection refused: {refused}");
                crate::metrics::control_refused();
                drop(stream);
                continue;
            }
            let store = store.clone();
            let reload = reload.clone();
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, store, reload, state).await {
                    warn!(error = %e, "control connection failed");
                }
            });
        }
    }))
}

/// Only the daemon's own user and root may use the control socket: it can
/// delete and bounce mail and read every history record.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials (SO_PEERCRED): {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = unsafe { libc::geteuid() };
    if cred.uid() == ours || cred.uid() == 0 {
        return Ok(());
    }
    Err(format!(
        "peer uid {} (pid {}) is neither the daemon's uid {ours} nor root",
        cred.uid(),
        cred.pid()
            .map_or_else(|| "?".to_string(), |p| p.to_string())
    ))
}

/// `sluice state …`: answered by the daemon's store (async; the local
/// backend lives only in the daemon).
async fn state_request(
    state: Option<&crate::state::StateStore>,
    req: &Request,
) -> Result<Value, String> {
    let st = state.ok_or("no state store")?;
    match req {
        Request::StateGet { key } => st.inspect(key).await.map_err(|e| e.to_string()),
        Request::StateDel { key } => st
            .delete_all(key)
            .await
            .map(|n| json!({"deleted": n}))
            .map_err(|e| e.to_string()),
        _ => st.stats().await.map_err(|e| e.to_string()),
    }
}

async fn handle(
    stream: UnixStream,
    store: Store,
    reload: ReloadFn,
    state: Option<Arc<crate::state::StateStore>>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(
                req @ (Request::StateGet { .. } | Request::StateDel { .. } | Request::StateStats),
            ) => match state_request(state.as_deref(), &req).await {
                Ok(v) => json!({"ok": true, "result": v}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            Ok(req) => {
                let store = store.clone();
                let reload = reload.clone();
                let res = tokio::task::spawn_blocking(move || dispatch(&store, req, Some(&reload)))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match res {
                    Ok(v) => json!({"ok": true, "result": v}),
                    Err(e) => json!({"ok": false, "error": e}),
                }
            }
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Send one request to a running daemon.
pub async fn request(path: &Path, req: &Request) -> Result<Value, ControlError> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path.to_path_buf()))
        }
        Err(e) => {
            return Err(ControlError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let io_err = |e| ControlError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(io_err)?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines
        .next_line()
        .await
        .map_err(io_err)?
        .ok_or_else(|| ControlError::Protocol("connection closed".into()))?;
    let v: Value =
        serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(ControlError::Remote(
            v["error"].as_str().unwrap_or("unknown error").to_string(),
        ))
    }
}
