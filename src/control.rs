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
    QueueList,
    QueueShow { id: String },
    Reload,
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
pub fn queue_list_json(store: &Store) -> Result<Value, String> {
    let entries = store.list_entries().map_err(|e| e.to_string())?;
    Ok(Value::Array(
        entries
            .into_iter()
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
            let store = store.clone();
            let reload = reload.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, store, reload).await {
                    warn!(error = %e, "control connection failed");
                }
            });
        }
    }))
}

async fn handle(stream: UnixStream, store: Store, reload: ReloadFn) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) => {
                let store = store.clone();
                let reload = reload.clone();
                let res = tokio::task::spawn_blocking(move || match req {
                    Request::Ping => Ok(json!("pong")),
                    Request::QueueList => queue_list_json(&store),
                    Request::QueueShow { id } => queue_show_json(&store, &id),
                    Request::Reload => reload().map(Value::String),
                })
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
