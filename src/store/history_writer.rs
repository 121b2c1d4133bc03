//! The background history writer: one thread that commits the records
//! nothing waits on (RECEIVED, SMTP-time REJECT) in batches, for every
//! session at once ([`Store::append_history_background`]).
//!
//! A failed batch is kept, not dropped: the writer retries it with
//! exponential backoff (100 ms doubling to 30 s) and keeps taking new
//! records into a bounded backlog meanwhile. It also pauses on its own when
//! the data_dir filesystem is below the history floor (half of `[queue]
//! min_free`, set by the daemon): intake has stopped by then, and sled 0.34
//! poisons a whole database at its first ENOSPC until it is reopened, so the
//! history must never write its way into one. Writes resume when space or
//! the database comes back, with a log line saying how many records waited.
//!
//! Because RECEIVED records are written late, a delivery attempt can finish
//! before its message's RECEIVED record has landed, and the history (in
//! write order) would show the DEFER before the RECEIVED. So the session
//! marks its transaction pending before it commits the queue entries
//! ([`Store::expect_received`]), the record landing clears the mark, and a
//! delivery waits for the mark (bounded) before writing its outcome
//! ([`Store::received_landed`]).
//!
//! This module owns only the thread, its backlog and that ordering; the
//! record encoding and indexes are [`Store::append_history`]'s.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::history::{HistoryAction, HistoryRecord};
use super::{Store, StoreInner};

/// Records held while writes fail; past this the oldest are given up (and
/// counted in `sluice_history_dropped_total`). About 1 KB each in memory.
pub const MAX_BACKLOG: usize = 100_000;
/// Records written per `append_history` call.
const BATCH: usize = 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Transactions marked pending at most; past this no more are marked (the
/// order then goes back to write order, nothing else changes).
const MAX_PENDING: usize = 100_000;
/// How long a delivery waits for its message's RECEIVED record.
const RECEIVED_WAIT: Duration = Duration::from_secs(1);

impl Store {
    /// A transaction's RECEIVED record will come through the background
    /// writer: deliveries of its entries wait for it (call before the queue
    /// commit makes them visible; [`Store::received_gone`] if it fails).
    pub fn expect_received(&self, transaction: &str) {
        let mut pending = self.inner.received_pending.lock().expect("pending lock");
        if pending.len() < MAX_PENDING {
            pending.insert(transaction.to_string());
        }
    }

    /// No RECEIVED record is coming (or it has landed, or was given up).
    pub fn received_gone(&self, transaction: &str) {
        self.inner
            .received_pending
            .lock()
            .expect("pending lock")
            .remove(transaction);
    }

    /// Clear the marks of the RECEIVED records among `records`.
    pub(super) fn received_gone_all(&self, records: &[HistoryRecord]) {
        let mut pending = self.inner.received_pending.lock().expect("pending lock");
        if pending.is_empty() {
            return;
        }
        for r in records {
            if r.action == HistoryAction::Received {
                pending.remove(&r.transaction);
            }
        }
    }

    /// Wait until the transaction's RECEIVED record has landed, at most
    /// [`RECEIVED_WAIT`] (a stalled writer must not stall deliveries).
    pub async fn received_landed(&self, transaction: &str) {
        let start = std::time::Instant::now();
        loop {
            let waiting = self
                .inner
                .received_pending
                .lock()
                .expect("pending lock")
                .contains(transaction);
            if !waiting {
                return;
            }
            if start.elapsed() >= RECEIVED_WAIT {
                tracing::debug!(
                    tx = transaction,
                    "RECEIVED record still unwritten: delivery outcome written first"
                );
                self.received_gone(transaction);
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Why a write was not attempted or failed, for the log line.
enum Stall {
    LowSpace { avail: u64, floor: u64 },
    Failed(String),
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::LowSpace { avail, floor } => write!(
                f,
                "{avail} bytes free on data_dir, below the history floor of {floor} bytes"
            ),
            Stall::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The thread's body: runs until every sender is gone (or the store is),
/// writing what is left first.
pub(super) fn run(rx: Receiver<Vec<HistoryRecord>>, weak: std::sync::Weak<StoreInner>) {
    let mut backlog: VecDeque<HistoryRecord> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    // (first stall reason, failed attempts) while writes are stalled.
    let mut stalled: Option<(String, u64)> = None;
    let mut open = true;
    loop {
        // Wait for records: forever when there is nothing to retry, the
        // backoff when there is.
        if open {
            let got = if backlog.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(backoff)
            };
            match got {
                Ok(more) => backlog.extend(more),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            while let Ok(more) = rx.try_recv() {
                backlog.extend(more);
            }
        }
        if backlog.len() > MAX_BACKLOG {
            let excess = backlog.len() - MAX_BACKLOG;
            let given_up: Vec<HistoryRecord> = backlog.drain(..excess).collect();
            if let Some(store) = Store::upgrade(&weak) {
                store.received_gone_all(&given_up);
            }
            crate::metrics::history_dropped(excess);
            tracing::error!(
                dropped = excess,
                kept = MAX_BACKLOG,
                "history writer backlog full: oldest records given up"
            );
        }
        crate::metrics::history_pending(backlog.len());
        if backlog.is_empty() {
            if !open {
                return;
            }
            continue;
        }
        let Some(store) = Store::upgrade(&weak) else {
            return;
        };
        match write_some(&store, &mut backlog) {
            Ok(()) => {
                if let Some((reason, attempts)) = stalled.take() {
                    tracing::info!(
                        attempts,
                        waiting = backlog.len(),
                        "history writes resumed (they had stalled: {reason})"
                    );
                }
                backoff = FIRST_BACKOFF;
            }
            Err(stall) => {
                if let Stall::Failed(_) = stall {
                    crate::metrics::history_write_error();
                }
                match &mut stalled {
                    None => {
                        tracing::warn!(
                            waiting = backlog.len(),
                            retry_in_ms = backoff.as_millis() as u64,
                            "history writes stalled, records kept and retried: {stall}"
                        );
                        stalled = Some((stall.to_string(), 1));
                    }
                    Some((_, attempts)) => {
                        *attempts += 1;
                        tracing::debug!(
                            attempts = *attempts,
                            "history write retry failed: {stall}"
                        );
                    }
                }
                if !open {
                    // Shutting down with the disk still refusing: the
                    // records cannot be kept anywhere, say how many.
                    tracing::error!(
                        lost = backlog.len(),
                        "history writer stopping with unwritten records: {stall}"
                    );
                    crate::metrics::history_dropped(backlog.len());
                    let given_up: Vec<HistoryRecord> = backlog.drain(..).collect();
                    store.received_gone_all(&given_up);
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        crate::metrics::history_pending(backlog.len());
    }
}

/// Write the backlog in batches; stop at the first stall, leaving what was
/// not written (a failed batch stays whole at the front).
fn write_some(store: &Store, backlog: &mut VecDeque<HistoryRecord>) -> Result<(), Stall> {
    while !backlog.is_empty() {
        let floor = store.inner.history_floor.load(Ordering::Relaxed);
        if floor > 0 {
            if let Some(space) = store.free_space() {
                if space.avail < floor {
                    return Err(Stall::LowSpace {
                        avail: space.avail,
                        floor,
                    });
                }
            }
        }
        let n = backlog.len().min(BATCH);
        let batch: Vec<HistoryRecord> = backlog.range(..n).cloned().collect();
        store
            .append_history(&batch)
            .map_err(|e| Stall::Failed(e.to_string()))?;
        backlog.drain(..n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::HistoryAction;

    fn record(rcpt: &str) -> HistoryRecord {
        HistoryRecord {
            action: HistoryAction::Reject,
            recipient: rcpt.to_string(),
            ..Default::default()
        }
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    #[test]
    fn below_the_floor_records_wait_and_then_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A floor no filesystem here can meet: the writer must hold.
        store.set_history_floor(u64::MAX);
        store.append_history_background(vec![record("a@x.example"), record("b@x.example")]);
        store.append_history_background(vec![record("c@x.example")]);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            store.history_all().unwrap().len(),
            0,
            "written below the floor"
        );
        // Space is back: the held records arrive, each once.
        store.set_history_floor(0);
        assert!(
            wait_for(|| store.history_all().unwrap().len() == 3),
            "held records never written: {:?}",
            store.history_all().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut got: Vec<String> = store
            .history_all()
            .unwrap()
            .into_iter()
            .map(|r| r.recipient)
            .collect();
        got.sort();
        assert_eq!(got, ["a@x.example", "b@x.example", "c@x.example"]);
    }

    /// A delivery outcome waits for its message's RECEIVED record: with the
    /// writer held (a floor no disk meets), the wait ends only at its bound;
    /// once the record lands, at once.
    #[tokio::test]
    async fn a_delivery_outcome_waits_for_its_received_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_history_floor(u64::MAX);
        store.expect_received("tx1");
        let received = HistoryRecord {
            action: HistoryAction::Received,
            transaction: "tx1".into(),
            ..Default::default()
        };
        store.append_history_background(vec![received]);
        let start = std::time::Instant::now();
        store.received_landed("tx1").await;
        assert!(start.elapsed() >= RECEIVED_WAIT, "{:?}", start.elapsed());

        store.expect_received("tx2");
        let s2 = store.clone();
        let landed = tokio::spawn(async move {
            let start = std::time::Instant::now();
            s2.received_landed("tx2").await;
            start.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!landed.is_finished(), "returned before the record landed");
        store.set_history_floor(0);
        store.append_history_background(vec![HistoryRecord {
            action: HistoryAction::Received,
            transaction: "tx2".into(),
            ..Default::default()
        }]);
        let waited = landed.await.unwrap();
        assert!(waited < RECEIVED_WAIT, "{waited:?}");
        // A transaction nobody marked does not wait.
        let start = std::time::Instant::now();
        store.received_landed("tx3").await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
