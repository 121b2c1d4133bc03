//! Durable storage: the only code that touches sled. `queue` keeps accepted
//! messages until delivery; `history` keeps what happened to them.
//!
//! Two sled databases: the queue in `<data_dir>/db`, the history in
//! `<data_dir>/history`. They are apart because sled reclaims a log segment
//! only once nothing in it is live: with long-lived history records written
//! between short-lived message bodies, nearly every segment kept a few live
//! records and the file grew by about twice the relayed volume, for good
//! (measured: +400 MB per 20,000 relayed 10 KiB messages, queue empty).
//! Apart, the queue file stays at its peak backlog size and the history
//! file grows with the history alone, shrinking back as retention prunes.
//!
//! | database | tree       | key                               | value                         |
//! |----------|------------|-----------------------------------|-------------------------------|
//! | db       | `queue`    | queue id (16 hex, time-sortable)  | JSON [`queue::QueueEntry`]    |
//! | db       | `body_loc` | body id (a queue id)              | where the bytes are: [`bodies::BodyLoc`] |
//! | db       | `body`     | body id                           | raw message bytes (moved out of a sparse segment, or written by an older version) |
//! | db       | `body_ref` | body id `/` queue id              | empty (who still needs a body)|
//! | db       | `due`      | next attempt (u64 BE µs) ++ id    | empty (the scheduler's index) |
//! | history  | `hblock`, `hseg`, `hmeta` | see [`history::Trees`] | records in blocks, segment indexes |
//!
//! Message bytes live in segment files under `<data_dir>/bodies/` (see
//! [`bodies`]), synced by the same group commit, alongside sled's flush.
//!
//! Several queue entries (one per recipient or per transport) may share one
//! body; the body is removed with its last reference.
//!
//! Hot-path writes are plain sled inserts, ordered so that the last one is
//! the commit point (see [`Store::write_messages`]); sled transactions and
//! batches are kept for multi-entry messages only, because each one rolls
//! the log buffer twice (two more disk writes per message). After an unclean
//! stop, [`Store::recover`] removes what an interrupted write or removal left
//! behind and rebuilds `due` from the entries. A one-entry
//! message is whole after a crash whatever sled recovers (an entry without
//! its body is dropped; it was never acknowledged, since the 250 waits for
//! the flush of both). The history's open index segment lives in memory
//! and is rebuilt from the blocks at open, so a crash cannot leave a record
//! its indexes miss.
//!
//! Writes that must survive a crash wait for an fsync'd flush
//! ([`Store::sync`], [`Store::sync_history`], [`Store::commit_history`]). One
//! flush serves every caller that arrived while the previous flush ran (group
//! commit), so fsync cost is shared by concurrent transactions; delivery
//! outcomes handed to [`Store::commit_history`] are also appended together,
//! in that round, so concurrent deliveries share history blocks.

pub mod bodies;
pub mod history;
mod history_writer;
pub mod queue;
pub mod space;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("database: {0}")]
    Sled(#[from] sled::Error),
    #[error("message body file: {0}")]
    Body(#[from] std::io::Error),
    #[error("database transaction: {0}")]
    Transaction(String),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("no such queue entry {0}")]
    NotFound(String),
    #[error("flush task stopped")]
    FlusherGone,
    #[error(
        "no space left on the filesystem of {path} to open the queue ({avail} bytes free, \
         the space reserve already used): free some space there and start again; \
         {path}/history holds only the delivery history and can be removed without losing mail"
    )]
    DiskFull { path: String, avail: u64 },
}

impl StoreError {
    /// ENOSPC (or EDQUOT) underneath.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::Open {
                source: sled::Error::Io(e),
                ..
            }
            | StoreError::Sled(sled::Error::Io(e))
            | StoreError::Body(e) => e,
            StoreError::DiskFull { .. } => return true,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull
            || io.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            || io.to_string().contains("No space left on device")
    }
}

type FlushWaiter = oneshot::Sender<Result<(), String>>;

/// One caller of a group flush: history records to append first (only for
/// the history database; empty for a plain sync) and who to tell.
struct FlushRequest {
    records: Vec<history::HistoryRecord>,
    done: FlushWaiter,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    db: sled::Db,
    /// The history database (see the module doc for why it is separate).
    hdb: sled::Db,
    queue: sled::Tree,
    body: sled::Tree,
    body_loc: sled::Tree,
    body_ref: sled::Tree,
    due: sled::Tree,
    bodies: Arc<bodies::Bodies>,
    /// The databases' log files, opened by us only to fdatasync them after
    /// sled's flush (see [`Which::flush`]).
    db_file: Arc<std::fs::File>,
    hdb_file: Arc<std::fs::File>,
    history: history::Trees,
    notify: Arc<tokio::sync::Notify>,
    history_tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<Vec<history::HistoryRecord>>>>,
    /// Transactions queued whose RECEIVED record has not landed yet (see
    /// [`Store::expect_received`]).
    received_pending: std::sync::Mutex<std::collections::HashSet<String>>,
    flush_tx: std::sync::Mutex<Option<mpsc::UnboundedSender<FlushRequest>>>,
    hflush_tx: std::sync::Mutex<Option<mpsc::UnboundedSender<FlushRequest>>>,
    space: space::SpaceProbe,
    /// A bounded flush timed out: the next one fails at once.
    flush_stuck: std::sync::atomic::AtomicBool,
    /// Free bytes below which the background history writer holds its
    /// records instead of writing (0: no floor); see `history_writer`.
    history_floor: std::sync::atomic::AtomicU64,
    /// The space reserve was given up to open the databases and is not back
    /// yet: intake refuses until it is (see `space`).
    reserve_in_use: std::sync::atomic::AtomicBool,
}

fn open_db(path: &Path, cache: u64) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(1000))
        .open()
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        })
}

/// Open the queue and history databases; on a full filesystem give up the
/// space reserve (see [`space`]) and try once more, and if that is not
/// enough say what to do.
/// The flag says whether the reserve was given up to open them.
fn open_both(data_dir: &Path) -> Result<(sled::Db, sled::Db, bool), StoreError> {
    let open = || -> Result<(sled::Db, sled::Db), StoreError> {
        let db = open_db(&data_dir.join("db"), 64 * 1024 * 1024)?;
        let hdb = open_db(&data_dir.join("history"), 32 * 1024 * 1024)?;
        Ok((db, hdb))
    };
    let low = |d: &Path| space::statvfs(d).is_some_and(|s| s.avail < space::RESERVE_BYTES);
    // sled may also stall rather than fail when it cannot write: give the
    // reserve up before trying when the disk is already that full.
    let mut released = false;
    if low(data_dir) && space::release_reserve(data_dir) {
        released = true;
        tracing::warn!(
            data_dir = %data_dir.display(),
            reserve = space::RESERVE_BYTES,
            "data_dir filesystem is full: released the space reserve so the queue can be opened"
        );
    }
    match open() {
        Err(e) if e.is_disk_full() => {
            if space::release_reserve(data_dir) {
                tracing::warn!(
                    data_dir = %data_dir.display(),
                    reserve = space::RESERVE_BYTES,
                    "no space to open the queue: released the space reserve and trying again"
                );
                if let Ok((db, hdb)) = open() {
                    return Ok((db, hdb, true));
                }
            }
            Err(StoreError::DiskFull {
                path: data_dir.display().to_string(),
                avail: space::statvfs(data_dir).map_or(0, |s| s.avail),
            })
        }
        other => other.map(|(db, hdb)| (db, hdb, released)),
    }
}

impl Store {
    /// Open (or create) the database under `data_dir`. Fails if another
    /// process holds it: sled allows one process per database.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let (db, hdb, reserve_released) = open_both(data_dir)?;
        let body_loc = db.open_tree("body_loc")?;
        let mut locations = Vec::new();
        for kv in body_loc.iter() {
            let (k, v) = kv?;
            let loc = bodies::BodyLoc::decode(&v).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: "not a body location".into(),
            })?;
            locations.push(loc);
        }
        let bodies = bodies::Bodies::open(&data_dir.join("bodies"), &locations)?;
        let log_file = |dir: &str| std::fs::File::open(data_dir.join(dir).join("db")).map(Arc::new);
        let inner = StoreInner {
            queue: db.open_tree("queue")?,
            body: db.open_tree("body")?,
            body_loc,
            bodies: Arc::new(bodies),
            db_file: log_file("db")?,
            hdb_file: log_file("history")?,
            body_ref: db.open_tree("body_ref")?,
            due: db.open_tree("due")?,
            history: history::Trees::open(&hdb)?,
            notify: Arc::new(tokio::sync::Notify::new()),
            history_tx: std::sync::Mutex::new(None),
            received_pending: std::sync::Mutex::new(std::collections::HashSet::new()),
            db,
            hdb,
            flush_tx: std::sync::Mutex::new(None),
            hflush_tx: std::sync::Mutex::new(None),
            space: space::SpaceProbe::new(data_dir),
            flush_stuck: std::sync::atomic::AtomicBool::new(false),
            history_floor: std::sync::atomic::AtomicU64::new(0),
            reserve_in_use: std::sync::atomic::AtomicBool::new(reserve_released),
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        store.move_history_out_of_queue_db()?;
        history::legacy::migrate(&store)?;
        Ok(store)
    }

    /// Databases written before the history had its own kept it in the
    /// queue database: move it over once (into the JSON-era trees the
    /// migration then converts), then drop the old trees.
    fn move_history_out_of_queue_db(&self) -> Result<(), StoreError> {
        let names = self.inner.db.tree_names();
        for name in [&b"history"[..], &b"hidx"[..]] {
            if !names.iter().any(|n| n.as_ref() == name) {
                continue;
            }
            let dest = self.inner.hdb.open_tree(name)?;
            let old = self.inner.db.open_tree(name)?;
            for kv in old.iter() {
                let (k, v) = kv?;
                dest.insert(k, v)?;
            }
            self.inner.hdb.flush()?;
            self.inner.db.drop_tree(name)?;
        }
        Ok(())
    }

    /// Wait until everything written to the queue so far is on disk.
    /// Concurrent callers share one fsync. Works without a tokio runtime's
    /// flusher too (CLI).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.group_flush(Which::Queue, Vec::new()).await
    }

    /// The same for the history database.
    pub async fn sync_history(&self) -> Result<(), StoreError> {
        self.group_flush(Which::History, Vec::new()).await
    }

    /// Append history records and wait until they are on disk: delivery
    /// outcomes, which must land before their entry leaves the queue.
    /// Callers that arrive while a round runs share the next one: their
    /// records go into the same blocks (one sled insert and one compression
    /// per block of up to 512 records, not per delivery) and one fsync.
    pub async fn commit_history(
        &self,
        records: Vec<history::HistoryRecord>,
    ) -> Result<(), StoreError> {
        self.group_flush(Which::History, records).await
    }

    async fn group_flush(
        &self,
        which: Which,
        records: Vec<history::HistoryRecord>,
    ) -> Result<(), StoreError> {
        let slot = match which {
            Which::Queue => &self.inner.flush_tx,
            Which::History => &self.inner.hflush_tx,
        };
        let tx = {
            let mut guard = slot.lock().expect("flush lock");
            if guard.is_none() {
                if tokio::runtime::Handle::try_current().is_err() {
                    drop(guard);
                    if !records.is_empty() {
                        self.append_history(&records)?;
                    }
                    which.flush(&FlushTarget::of(&self.inner, which))?;
                    return Ok(());
                }
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(flusher(Arc::downgrade(&self.inner), which, rx));
                *guard = Some(tx);
            }
            guard.as_ref().expect("set above").clone()
        };
        let (done, wrx) = oneshot::channel();
        tx.send(FlushRequest { records, done })
            .map_err(|_| StoreError::FlusherGone)?;
        match wrx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Transaction(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::FlusherGone),
        }
    }

    /// Below `bytes` free on data_dir the background history writer holds
    /// records (and retries) instead of writing: the daemon sets half of
    /// `[queue] min_free`, so history outlives intake but never runs the
    /// history database into ENOSPC.
    pub fn set_history_floor(&self, bytes: u64) {
        self.inner
            .history_floor
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The data_dir the databases live in.
    pub fn data_dir(&self) -> &Path {
        self.inner.space.path()
    }

    /// True while the space reserve is given up (the disk was full at open).
    pub fn reserve_in_use(&self) -> bool {
        self.inner
            .reserve_in_use
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The space reserve is back (or given up again).
    pub fn set_reserve_in_use(&self, used: bool) {
        self.inner
            .reserve_in_use
            .store(used, std::sync::atomic::Ordering::Relaxed);
    }

    /// Free space on the data_dir filesystem (cached ≤100 ms); `None` when
    /// statvfs fails (intake then goes ahead: the write itself will tell).
    pub fn free_space(&self) -> Option<space::Space> {
        self.inner.space.get()
    }

    /// [`Store::flush_blocking`] bounded in time, for shutdown: on a full
    /// disk sled 0.34 reports `StorageFull` from its log writer and a flush
    /// then waits forever for a buffer that is never written. The flush runs
    /// on its own thread, so a stuck one is left behind (the process is
    /// about to exit) instead of hanging shutdown.
    pub fn flush_bounded(&self, limit: std::time::Duration) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        if self.inner.flush_stuck.load(Ordering::Acquire) {
            return Err("an earlier flush is still stuck (disk full?)".into());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let store = self.clone();
        std::thread::Builder::new()
            .name("sluice-final-flush".into())
            .spawn(move || {
                let _ = tx.send(store.flush_blocking().map_err(|e| e.to_string()));
            })
            .map_err(|e| e.to_string())?;
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(_) => {
                self.inner.flush_stuck.store(true, Ordering::Release);
                Err(format!(
                    "flush did not finish within {limit:?} (disk full?)"
                ))
            }
        }
    }

    /// Synchronous, durable flush of the queue (with its body segments).
    pub(crate) fn flush_queue_blocking(&self) -> Result<(), StoreError> {
        Which::Queue.flush(&FlushTarget::of(&self.inner, Which::Queue))
    }

    /// Synchronous flush of both databases, for shutdown and the CLI.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.flush_queue_blocking()?;
        Which::History.flush(&FlushTarget::of(&self.inner, Which::History))?;
        Ok(())
    }

    pub(crate) fn trees(&self) -> (&sled::Tree, &sled::Tree, &sled::Tree) {
        (&self.inner.queue, &self.inner.body, &self.inner.body_ref)
    }

    pub(crate) fn due_tree(&self) -> &sled::Tree {
        &self.inner.due
    }

    /// The `body_loc` tree and the segment files it points into.
    pub(crate) fn body_files(&self) -> (&sled::Tree, &bodies::Bodies) {
        (&self.inner.body_loc, &self.inner.bodies)
    }

    pub(crate) fn history_trees(&self) -> &history::Trees {
        &self.inner.history
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

    /// The queue database.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// The history database.
    pub fn history_db(&self) -> &sled::Db {
        &self.inner.hdb
    }
}

#[derive(Clone, Copy)]
enum Which {
    Queue,
    History,
}

impl Which {
    /// A blocking, durable flush of one database.
    ///
    /// sled 0.34's flush ends in `sync_file_range`, which neither flushes the
    /// drive's write cache nor the file's size: after a power cut the last
    /// writes may be gone, acknowledged mail with them. So the log file is
    /// fdatasync'd after it (fsync acts on the file, whichever descriptor).
    ///
    /// For the queue, the body segments are synced at the same time on a
    /// second thread: a 250 waits for both, so the two fsyncs overlap instead
    /// of adding up. Which lands first does not matter: a location whose body
    /// did not is dropped by its CRC at recovery.
    fn flush(self, t: &FlushTarget) -> Result<(), StoreError> {
        let sled_durably = || -> Result<(), StoreError> {
            t.db.flush()?;
            t.file
                .sync_data()
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
            Ok(())
        };
        let Some(bodies) = &t.bodies else {
            return sled_durably();
        };
        std::thread::scope(|scope| {
            let segments = std::thread::Builder::new()
                .name("sluice-body-sync".into())
                .spawn_scoped(scope, || bodies.sync_dirty());
            let flushed = sled_durably();
            match segments {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("body sync panicked")))?,
                // No thread to be had: sync here, after the flush.
                Err(_) => bodies.sync_dirty()?,
            }
            flushed
        })
    }
}

/// What one flush needs, taken from the store so the flusher task can run
/// it without holding the store open.
struct FlushTarget {
    db: sled::Db,
    file: Arc<std::fs::File>,
    /// The queue's body segments (`None` for the history).
    bodies: Option<Arc<bodies::Bodies>>,
}

impl FlushTarget {
    fn of(inner: &StoreInner, which: Which) -> FlushTarget {
        match which {
            Which::Queue => FlushTarget {
                db: inner.db.clone(),
                file: inner.db_file.clone(),
                bodies: Some(inner.bodies.clone()),
            },
            Which::History => FlushTarget {
                db: inner.hdb.clone(),
                file: inner.hdb_file.clone(),
                bodies: None,
            },
        }
    }
}

/// Longest a group-commit flush may take before its waiters are failed.
const FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds only a weak reference, so dropping the last `Store` closes the
/// database (and releases sled's lock) even while this task is parked.
///
/// One round at a time. (Measured: letting a second round start while the
/// first waits on the disk gained 1-3% msg/s, within the noise, and each
/// round took longer: the drive serialises the flushes.)
async fn flusher(
    inner: std::sync::Weak<StoreInner>,
    which: Which,
    mut rx: mpsc::UnboundedReceiver<FlushRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut requests = vec![first];
        while let Ok(r) = rx.try_recv() {
            requests.push(r);
        }
        let mut records = Vec::new();
        let mut waiters = Vec::with_capacity(requests.len());
        for r in requests {
            records.extend(r.records);
            waiters.push(r.done);
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let target = FlushTarget::of(&strong, which);
        // Kept for the round only when it has records to append.
        let store = (!records.is_empty()).then(|| Store { inner: strong });
        let started = std::time::Instant::now();
        // Bounded: a flush stuck on a full disk (see `flush_bounded`) must
        // fail its waiters (451 to the client), not leave them hanging.
        let round = move || -> Result<(), StoreError> {
            if let Some(store) = store {
                store.append_history(&records)?;
            }
            which.flush(&target)
        };
        let res = match tokio::time::timeout(FLUSH_LIMIT, tokio::task::spawn_blocking(round)).await
        {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("flush did not finish within {FLUSH_LIMIT:?}")),
        };
        if matches!(which, Which::Queue) {
            crate::metrics::fsync_batch(waiters.len(), started.elapsed(), res.is_ok());
        }
        for w in waiters {
            let _ = w.send(res.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::history::{HistoryQuery, HistoryRecord};
    use super::queue::tests::entry;
    use super::queue::NewMessage;
    use super::*;

    fn record(action: &str, id: &str) -> HistoryRecord {
        HistoryRecord {
            ts: 1_700_000_000.0,
            action: super::history::HistoryAction::parse(action).unwrap(),
            id: id.into(),
            transaction: format!("t{id}"),
            sender: "a@example.net".into(),
            recipient: "b@example.org".into(),
            reason: "250 2.0.0 ok".into(),
            ..Default::default()
        }
    }

    /// Relaying must not make the queue database grow: after the queue is
    /// drained, its space is reused by the next burst, whatever the history
    /// keeps. (With history in the same sled log, each round of 2,000
    /// messages left the file ~25 MB bigger, for good.)
    #[tokio::test]
    async fn relaying_reuses_queue_space_while_history_grows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = bytes::Bytes::from(vec![b'x'; 10 * 1024]);
        let file = |name: &str| {
            std::fs::metadata(dir.path().join(name).join("db"))
                .unwrap()
                .len()
        };
        let mut sizes = Vec::new();
        let mut n = 0u32;
        for _round in 0..4 {
            let ids: Vec<String> = (0..2000)
                .map(|_| {
                    n += 1;
                    format!("{n:016x}")
                })
                .collect();
            for id in &ids {
                let m = NewMessage {
                    body_id: id.clone(),
                    body: body.clone(),
                    entries: vec![entry(id, id)],
                };
                store.write_messages(&[m]).unwrap();
                store.append_history(&[record("RECEIVED", id)]).unwrap();
            }
            store.sync().await.unwrap();
            for id in &ids {
                store.append_history(&[record("DELIVER", id)]).unwrap();
                store.remove_entry(id).unwrap();
            }
            store.flush_blocking().unwrap();
            sizes.push(file("db"));
        }
        assert_eq!(store.queue_len(), 0);
        assert_eq!(store.history_len(), 16_000);
        // The bodies went with their segments: only the one taking appends
        // is left.
        let (segments, _) = store.body_files().1.usage();
        assert_eq!(segments, 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join("bodies"))
                .unwrap()
                .count(),
            1
        );
        let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
        assert!(
            last < first + first / 2,
            "queue database grew with relayed mail: {sizes:?}"
        );
        assert!(file("history") > 0);
    }

    /// A database from before the split keeps its history: moved on open.
    #[test]
    fn history_in_the_queue_database_is_moved_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = sled::open(dir.path().join("db")).unwrap();
            let h = old.open_tree("history").unwrap();
            let rec = record("DELIVER", "0000000000000001");
            h.insert("0190000000000aaaa", serde_json::to_vec(&rec).unwrap())
                .unwrap();
            old.open_tree("hidx")
                .unwrap()
                .insert(b"id\x000000000000000001\x000190000000000aaaa", &[] as &[u8])
                .unwrap();
            old.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let found = store
            .query_history(&HistoryQuery {
                id: Some("0000000000000001".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.action, "DELIVER");
        let names = store.db().tree_names();
        assert!(!names
            .iter()
            .any(|n| n.as_ref() == b"history" || n.as_ref() == b"hidx"));
    }
}
