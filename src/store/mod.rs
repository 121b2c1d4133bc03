//! Durable storage: the only code that touches sled. `queue` keeps accepted
//! messages until delivery; `history` keeps what happened to them.
//!
//! One sled database lives in `<data_dir>/db`. Trees and key layout:
//!
//! | tree       | key                               | value                         |
//! |------------|-----------------------------------|-------------------------------|
//! | `queue`    | queue id (16 hex, time-sortable)  | JSON [`queue::QueueEntry`]    |
//! | `body`     | body id (a queue id)              | raw message bytes as relayed  |
//! | `body_ref` | body id `/` queue id              | empty (who still needs a body)|
//! | `due`      | next attempt (u64 BE µs) ++ id    | empty (the scheduler's index) |
//! | `history`  | record time (13 hex µs) ++ unique id | JSON history record        |
//! | `hidx`     | field `\0` value `\0` history id  | empty (history query indexes) |
//!
//! Several queue entries (one per recipient or per transport) may share one
//! body; the body is removed with its last reference.
//!
//! Hot-path writes are plain sled inserts, ordered so that the last one is
//! the commit point (see [`Store::write_messages`]); sled transactions and
//! batches are kept for multi-entry messages only, because each one rolls
//! the log buffer twice (two more disk writes per message). After an unclean
//! stop, [`Store::recover`] removes what an interrupted write or removal left
//! behind, and the scheduler rebuilds `due` from the entries.
//!
//! Writes that must survive a crash go through [`Store::commit`], which waits
//! for an fsync'd flush. One flush serves every commit that arrived while the
//! previous flush ran (group commit), so fsync cost is shared by concurrent
//! transactions.

pub mod history;
pub mod queue;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("database: {0}")]
    Sled(#[from] sled::Error),
    #[error("database transaction: {0}")]
    Transaction(String),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("no such queue entry {0}")]
    NotFound(String),
    #[error("flush task stopped")]
    FlusherGone,
}

type FlushWaiter = oneshot::Sender<Result<(), String>>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    db: sled::Db,
    queue: sled::Tree,
    body: sled::Tree,
    body_ref: sled::Tree,
    due: sled::Tree,
    history: sled::Tree,
    hidx: sled::Tree,
    notify: Arc<tokio::sync::Notify>,
    history_tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<Vec<history::HistoryRecord>>>>,
    flush_tx: std::sync::Mutex<Option<mpsc::UnboundedSender<FlushWaiter>>>,
}

impl Store {
    /// Open (or create) the database under `data_dir`. Fails if another
    /// process holds it: sled allows one process per database.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let path = data_dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: e,
            })?;
        let inner = StoreInner {
            queue: db.open_tree("queue")?,
            body: db.open_tree("body")?,
            body_ref: db.open_tree("body_ref")?,
            due: db.open_tree("due")?,
            history: db.open_tree("history")?,
            hidx: db.open_tree("hidx")?,
            notify: Arc::new(tokio::sync::Notify::new()),
            history_tx: std::sync::Mutex::new(None),
            db,
            flush_tx: std::sync::Mutex::new(None),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Wait until everything written so far is on disk. Concurrent callers
    /// share one fsync. Works without a tokio runtime's flusher too (CLI).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let tx = {
            let mut guard = self.inner.flush_tx.lock().expect("flush lock");
            if guard.is_none() {
                if tokio::runtime::Handle::try_current().is_err() {
                    drop(guard);
                    self.inner.db.flush()?;
                    return Ok(());
                }
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(flusher(Arc::downgrade(&self.inner), rx));
                *guard = Some(tx);
            }
            guard.as_ref().expect("set above").clone()
        };
        let (wtx, wrx) = oneshot::channel();
        tx.send(wtx).map_err(|_| StoreError::FlusherGone)?;
        match wrx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Transaction(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::FlusherGone),
        }
    }

    /// Synchronous flush, for shutdown and the CLI.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    pub(crate) fn trees(&self) -> (&sled::Tree, &sled::Tree, &sled::Tree) {
        (&self.inner.queue, &self.inner.body, &self.inner.body_ref)
    }

    pub(crate) fn due_tree(&self) -> &sled::Tree {
        &self.inner.due
    }

    pub fn history_tree(&self) -> &sled::Tree {
        &self.inner.history
    }

    pub(crate) fn hidx_tree(&self) -> &sled::Tree {
        &self.inner.hidx
    }

    pub(crate) fn history_writer(
        &self,
    ) -> &std::sync::Mutex<Option<std::sync::mpsc::Sender<Vec<history::HistoryRecord>>>> {
        &self.inner.history_tx
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<StoreInner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(w: &std::sync::Weak<StoreInner>) -> Option<Store> {
        w.upgrade().map(|inner| Store { inner })
    }

    /// Woken whenever new entries are committed or rescheduled to now.
    pub fn queue_notify(&self) -> Arc<tokio::sync::Notify> {
        self.inner.notify.clone()
    }

    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }
}

/// Holds only a weak reference, so dropping the last `Store` closes the
/// database (and releases sled's lock) even while this task is parked.
async fn flusher(inner: std::sync::Weak<StoreInner>, mut rx: mpsc::UnboundedReceiver<FlushWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let db2 = strong.db.clone();
        drop(strong);
        let started = std::time::Instant::now();
        let res = match tokio::task::spawn_blocking(move || db2.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        crate::metrics::fsync_batch(waiters.len(), started.elapsed(), res.is_ok());
        for w in waiters {
            let _ = w.send(res.clone());
        }
    }
}
