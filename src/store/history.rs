//! The history table: one record per outcome (REJECT at SMTP time, DELIVER,
//! DEFER, ERROR, DELETE, and what scripts write with `History()`), keyed by a
//! time-sortable id in the `history` tree so a time range is a key range.
//! Secondary indexes and queries come with the delivery/history work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// What happened to one recipient of one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Unix seconds.
    pub ts: f64,
    /// REJECT | DELETE | DELIVER | DEFER | ERROR
    pub action: String,
    /// Queue id, when the message was queued.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub transaction: String,
    #[serde(default)]
    pub message_id: Option<String>,
    pub sender: String,
    pub recipient: String,
    #[serde(default)]
    pub transportid: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub client_ip: String,
    #[serde(default)]
    pub serverid: String,
    #[serde(default)]
    pub connection: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Store {
    /// Append records (not waiting for fsync: history is not an acknowledgement).
    pub fn append_history(&self, records: &[HistoryRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for r in records {
            let v = serde_json::to_vec(r).map_err(|e| StoreError::Transaction(e.to_string()))?;
            batch.insert(crate::ids::new_id().as_bytes(), v);
        }
        self.history_tree().apply_batch(batch)?;
        Ok(())
    }

    /// All records, oldest first (small tables and tests; queries come later).
    pub fn history_all(&self) -> Result<Vec<HistoryRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.history_tree().iter() {
            let (k, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }
}
