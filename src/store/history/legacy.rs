//! The JSON-era history and its one-time conversion.
//!
//! Until the block format, the history database held a `history` tree
//! (key: 13 hex digits of the record's µs time and a unique id; value: the
//! record as JSON) and an `hidx` tree (`field \0 value \0 key`, seven per
//! record) — about 3 KB per record on disk. [`migrate`] converts it on open
//! into blocks, oldest first, then drops both trees.
//!
//! The conversion is restartable: blocks are cut from the old records in
//! key order (at [`super::BLOCK_RECORDS`] records or a minute of record
//! time); a run cut short by a crash left no `legacy_done` mark in `hmeta`,
//! so the next open empties the new trees and converts again. The mark is
//! written before the old trees go.
//!
//! [`write_json_era`] is the old writer, kept so tests build a JSON-era
//! database with the code that wrote them.

use super::codec::micros;
use super::{HistoryRecord, BLOCK_RECORDS};
use crate::store::{Store, StoreError};

/// A block of converted records spans at most this much record time, which
/// bounds how far past `until` time-bounded queries look for them.
const MAX_SPAN_US: u64 = 60_000_000;

/// Convert a JSON-era history, if there is one. Returns how many records
/// were converted.
pub fn migrate(store: &Store) -> Result<usize, StoreError> {
    let hdb = store.history_db();
    let names = hdb.tree_names();
    if !names.iter().any(|n| n.as_ref() == b"history") {
        return Ok(0);
    }
    let t = store.history_trees();
    let old = hdb.open_tree("history")?;
    if t.meta.get("legacy_done")?.is_none() && !old.is_empty() {
        let started = std::time::Instant::now();
        // Blocks already there are from a conversion cut short (the only
        // writer before the old trees go): start over.
        t.clear()?;
        tracing::info!(
            records = old.len(),
            "history: converting the JSON-era history to blocks"
        );
        let mut chunk: Vec<HistoryRecord> = Vec::with_capacity(BLOCK_RECORDS);
        let mut prev_block = 0u64;
        let (mut converted, mut unreadable) = (0usize, 0usize);
        let flush = |chunk: &mut Vec<HistoryRecord>, prev: &mut u64| -> Result<(), StoreError> {
            if chunk.is_empty() {
                return Ok(());
            }
            // Block ids are never before their records' times, and rise.
            let newest = chunk.iter().map(|r| micros(r.ts)).max().unwrap_or(0);
            let id = newest.max(*prev + 1);
            let slots: Vec<Option<&HistoryRecord>> = chunk.iter().map(Some).collect();
            store.write_block(Some(id), &slots)?;
            *prev = id;
            chunk.clear();
            Ok(())
        };
        for kv in old.iter() {
            let (k, v) = kv?;
            let r: HistoryRecord = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    unreadable += 1;
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = %e,
                        "history: JSON-era record unreadable, not converted");
                    continue;
                }
            };
            let first = chunk.first().map(|f| micros(f.ts));
            if chunk.len() >= BLOCK_RECORDS
                || first.is_some_and(|f| micros(r.ts).saturating_sub(f) > MAX_SPAN_US)
            {
                flush(&mut chunk, &mut prev_block)?;
            }
            chunk.push(r);
            converted += 1;
        }
        flush(&mut chunk, &mut prev_block)?;
        let total = converted as u64;
        t.records.store(total, std::sync::atomic::Ordering::Relaxed);
        t.meta.insert("records", &total.to_be_bytes())?;
        t.meta.insert("legacy_done", &1u64.to_be_bytes())?;
        hdb.flush()?;
        tracing::info!(
            converted,
            unreadable,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "history: JSON-era history converted"
        );
        drop_old(hdb)?;
        return Ok(converted);
    }
    drop_old(hdb)?;
    Ok(0)
}

fn drop_old(hdb: &sled::Db) -> Result<(), StoreError> {
    for name in ["history", "hidx"] {
        hdb.drop_tree(name)?;
    }
    hdb.flush()?;
    Ok(())
}

/// The JSON-era writer, as it was: one JSON value per record under a
/// time-sortable key, and its index keys. For tests and fixtures only.
#[doc(hidden)]
pub fn write_json_era(hdb: &sled::Db, records: &[HistoryRecord]) -> Result<(), StoreError> {
    let history = hdb.open_tree("history")?;
    let hidx = hdb.open_tree("hidx")?;
    for r in records {
        let v = serde_json::to_vec(r).map_err(|e| StoreError::Transaction(e.to_string()))?;
        let hid = format!(
            "{:013x}{}",
            (r.ts.max(0.0) * 1_000_000.0) as u64,
            crate::ids::new_id()
        );
        let domain = r.recipient.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let fields: [(&str, &str); 7] = [
            ("rcpt", &r.recipient),
            ("domain", domain),
            ("sender", &r.sender),
            ("action", r.action.as_str()),
            ("id", &r.id),
            ("tx", &r.transaction),
            ("msgid", r.message_id.as_deref().unwrap_or("")),
        ];
        for (f, val) in fields {
            if val.is_empty() && f != "sender" {
                continue;
            }
            if (f == "rcpt" || f == "domain") && r.recipient.contains(',') {
                continue;
            }
            let mut k = Vec::new();
            k.extend_from_slice(f.as_bytes());
            k.push(0);
            k.extend_from_slice(val.to_lowercase().as_bytes());
            k.push(0);
            k.extend_from_slice(hid.as_bytes());
            hidx.insert(k, &[] as &[u8])?;
        }
        history.insert(hid.as_bytes(), v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::{HistoryAction, HistoryQuery};

    /// sled's flusher thread keeps a dropped database's lock for a moment.
    fn retry<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Ok(v) => return v,
                Err(e) if std::time::Instant::now() > until => panic!("open: {e:?}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    fn rec(i: usize, ts: f64) -> HistoryRecord {
        HistoryRecord {
            ts,
            action: HistoryAction::ALL[i % HistoryAction::ALL.len()],
            id: format!("q{i:04}"),
            transaction: format!("t{}", i / 2),
            message_id: Some(format!("<m{i}@example.net>")),
            sender: "s@example.net".into(),
            recipient: format!("user{}@example.org", i % 7),
            reason: format!("250 2.0.0 ok {i}"),
            metadata: [("decided_by".to_string(), "rcptto".to_string())].into(),
            remote_host: i.is_multiple_of(3).then(|| "mx.example.org".to_string()),
            attempt: (i % 4) as u32,
            ..Default::default()
        }
    }

    #[test]
    fn a_json_era_database_is_converted_once_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_780_000_000.0;
        // 1,300 records over ~3 minutes: blocks cut by count and by span.
        let recs: Vec<HistoryRecord> = (0..1300).map(|i| rec(i, t0 + i as f64 * 0.15)).collect();
        {
            let hdb = sled::open(dir.path().join("history")).unwrap();
            write_json_era(&hdb, &recs).unwrap();
            // And one record no reader understands.
            hdb.open_tree("history")
                .unwrap()
                .insert(format!("{:013x}zz", 1u64 << 40), &b"{not json"[..])
                .unwrap();
            hdb.flush().unwrap();
        }
        let store = retry(|| Store::open(dir.path()));
        assert_eq!(store.history_len(), 1300);
        let names = store.history_db().tree_names();
        assert!(!names
            .iter()
            .any(|n| n.as_ref() == b"history" || n.as_ref() == b"hidx"));
        let all = store.history_all().unwrap();
        assert_eq!(all, recs, "every record, in order, field for field");
        let by_rcpt = store
            .query_history(&HistoryQuery {
                recipient: Some("USER3@example.org".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            by_rcpt.len(),
            recs.iter()
                .filter(|r| r.recipient == "user3@example.org")
                .count()
        );
        let by_msgid = store
            .query_history(&HistoryQuery {
                id: Some("m77@example.net".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_msgid.len(), 1);
        assert_eq!(by_msgid[0].1, recs[77]);
        let window = store
            .query_history(&HistoryQuery {
                since: Some(t0 + 30.0),
                until: Some(t0 + 60.0),
                ..Default::default()
            })
            .unwrap();
        let want = recs
            .iter()
            .filter(|r| r.ts >= t0 + 30.0 && r.ts <= t0 + 60.0)
            .count();
        assert_eq!(window.len(), want);
        drop(store);
        // Opened again: nothing to convert, nothing doubled.
        let store = retry(|| Store::open(dir.path()));
        assert_eq!(store.history_len(), 1300);
        assert_eq!(store.history_all().unwrap().len(), 1300);
    }

    #[test]
    fn a_conversion_cut_short_is_redone_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<HistoryRecord> = (0..700)
            .map(|i| rec(i, 1_780_000_000.0 + i as f64))
            .collect();
        {
            let hdb = sled::open(dir.path().join("history")).unwrap();
            write_json_era(&hdb, &recs).unwrap();
            hdb.flush().unwrap();
        }
        // A first run that wrote its blocks but stopped before the end mark.
        {
            let store = retry(|| Store::open(dir.path()));
            drop(store);
        }
        {
            let hdb = retry(|| sled::open(dir.path().join("history")));
            hdb.open_tree("hmeta")
                .unwrap()
                .remove("legacy_done")
                .unwrap();
            write_json_era(&hdb, &recs).unwrap();
            hdb.flush().unwrap();
        }
        // Blocks of the first run and the old trees both there, no end
        // mark: as after a crash mid-conversion. Converted again from the
        // start, nothing doubled.
        let store = retry(|| Store::open(dir.path()));
        assert_eq!(store.history_len(), 700);
        assert_eq!(store.history_all().unwrap(), recs);
    }
}
