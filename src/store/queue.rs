//! The message queue: envelopes in the `queue` tree, message bytes in `body`,
//! shared bodies tracked in `body_ref` (see the module doc of `store`).
//! An entry is written atomically with its body and is only acknowledged to
//! the client after [`Store::commit_entries`] returns (fsync done).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{Store, StoreError};
use crate::envelope::{MessageDsn, RecipientDsn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// Waiting for its next delivery attempt.
    Queued,
    /// Held by a script or an operator; not delivered until released.
    Held,
    /// Being delivered right now (re-queued on restart).
    Active,
}

impl QueueState {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueState::Queued => "queued",
            QueueState::Held => "held",
            QueueState::Active => "active",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecipient {
    pub recipient: String,
    pub transportid: String,
    #[serde(default)]
    pub dsn: RecipientDsn,
}

/// Who handed us the message; kept for Received-based tracing and history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub ip: String,
    pub port: u16,
    pub ptr: Option<String>,
    pub helo: Option<String>,
    pub serverid: String,
    pub tls: Option<String>,
    pub auth: Option<String>,
    pub connection: String,
}

/// One queued message for one or more recipients of one transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: String,
    /// SMTP transaction that produced it.
    pub transaction: String,
    pub state: QueueState,
    /// Envelope sender; "" for the null sender.
    pub sender: String,
    pub recipients: Vec<QueuedRecipient>,
    pub transportid: String,
    #[serde(default)]
    pub dsn: MessageDsn,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub jobid: Option<String>,
    /// Unix seconds.
    pub received_at: f64,
    /// Unix seconds of the next delivery attempt.
    pub next_attempt: f64,
    #[serde(default)]
    pub attempts: u32,
    pub size: u64,
    /// Key of the message bytes in the `body` tree.
    pub body: String,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub eight_bit: bool,
    #[serde(default)]
    pub client: ClientInfo,
    /// Message-ID header, if any (for history queries).
    #[serde(default)]
    pub message_id: Option<String>,
    /// Why the last attempt failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
    /// A delay DSN was already sent (NOTIFY=DELAY is honoured once).
    #[serde(default)]
    pub delay_notified: bool,
}

/// A body and the entries that use it, committed together.
pub struct NewMessage {
    pub body_id: String,
    pub body: Bytes,
    pub entries: Vec<QueueEntry>,
}

fn abort(e: String) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e)
}

fn tx_err(e: TransactionError<String>) -> StoreError {
    match e {
        TransactionError::Abort(s) => StoreError::Transaction(s),
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// Key in the `due` tree: when, then which.
pub(crate) fn due_key(next_attempt: f64, id: &str) -> Vec<u8> {
    let micros = (next_attempt.max(0.0) * 1_000_000.0) as u64;
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&micros.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn ref_key(body: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(body.len() + id.len() + 1);
    k.extend_from_slice(body.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

impl Store {
    /// Write messages and their entries atomically, then wait for the
    /// group-committed fsync. Only after this returns may the server say 250.
    pub async fn commit_messages(&self, msgs: &[NewMessage]) -> Result<(), StoreError> {
        self.write_messages(msgs)?;
        self.sync().await?;
        self.queue_notify().notify_one();
        Ok(())
    }

    /// The atomic write without waiting for the flush.
    pub fn write_messages(&self, msgs: &[NewMessage]) -> Result<(), StoreError> {
        let mut encoded = Vec::new();
        for m in msgs {
            for e in &m.entries {
                let v =
                    serde_json::to_vec(e).map_err(|e| StoreError::Transaction(e.to_string()))?;
                let due = (e.state == QueueState::Queued).then(|| due_key(e.next_attempt, &e.id));
                encoded.push((e.id.clone(), e.body.clone(), v, due));
            }
        }
        let (queue, body, body_ref) = self.trees();
        let due_tree = self.due_tree();
        (queue, body, body_ref, due_tree)
            .transaction(|(q, b, r, d)| {
                for m in msgs {
                    b.insert(m.body_id.as_bytes(), m.body.as_ref())?;
                }
                for (id, body_id, v, due) in &encoded {
                    if q.insert(id.as_bytes(), v.as_slice())?.is_some() {
                        return Err(abort(format!("duplicate queue id {id}")));
                    }
                    r.insert(ref_key(body_id, id), &[] as &[u8])?;
                    if let Some(k) = due {
                        d.insert(k.as_slice(), &[] as &[u8])?;
                    }
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    pub fn get_entry(&self, id: &str) -> Result<Option<QueueEntry>, StoreError> {
        let (queue, _, _) = self.trees();
        match queue.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode_entry(id, &v)?)),
            None => Ok(None),
        }
    }

    pub fn get_body(&self, body_id: &str) -> Result<Option<Bytes>, StoreError> {
        let (_, body, _) = self.trees();
        Ok(body
            .get(body_id.as_bytes())?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    /// All entries in id (= arrival) order.
    pub fn list_entries(&self) -> Result<Vec<QueueEntry>, StoreError> {
        let (queue, _, _) = self.trees();
        let mut out = Vec::new();
        for kv in queue.iter() {
            let (k, v) = kv?;
            out.push(decode_entry(&String::from_utf8_lossy(&k), &v)?);
        }
        Ok(out)
    }

    pub fn queue_len(&self) -> usize {
        self.trees().0.len()
    }

    /// Replace an entry's envelope (state, attempts, next_attempt…), keeping
    /// the due index in step: queued entries are due at `next_attempt`.
    pub fn update_entry(&self, entry: &QueueEntry) -> Result<(), StoreError> {
        let (queue, _, _) = self.trees();
        let v = serde_json::to_vec(entry).map_err(|e| StoreError::Transaction(e.to_string()))?;
        let id = entry.id.clone();
        let new_due = (entry.state == QueueState::Queued).then(|| due_key(entry.next_attempt, &id));
        (queue, self.due_tree())
            .transaction(|(q, d)| {
                let Some(old) = q.get(id.as_bytes())? else {
                    return Err(abort(format!("no such queue entry {id}")));
                };
                if let Ok(old) = serde_json::from_slice::<QueueEntry>(&old) {
                    d.remove(due_key(old.next_attempt, &id))?;
                }
                q.insert(id.as_bytes(), v.as_slice())?;
                if let Some(k) = &new_due {
                    d.insert(k.as_slice(), &[] as &[u8])?;
                }
                Ok(())
            })
            .map_err(|e| match tx_err(e) {
                StoreError::Transaction(m) if m.starts_with("no such") => {
                    StoreError::NotFound(entry.id.clone())
                }
                other => other,
            })?;
        if entry.state == QueueState::Queued {
            self.queue_notify().notify_one();
        }
        Ok(())
    }

    /// Queue ids due at or before `now` (unix seconds), oldest first.
    pub fn due_ids(&self, now: f64, limit: usize) -> Result<Vec<String>, StoreError> {
        let end = ((now.max(0.0) * 1_000_000.0) as u64)
            .saturating_add(1)
            .to_be_bytes();
        let mut out = Vec::new();
        for kv in self.due_tree().range(..end.as_slice()) {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[8..]).into_owned());
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the next entry is due (unix seconds), if any.
    pub fn next_due(&self) -> Result<Option<f64>, StoreError> {
        Ok(self.due_tree().first()?.map(|(k, _)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[..8]);
            u64::from_be_bytes(b) as f64 / 1_000_000.0
        }))
    }

    /// Rebuild the due index from the entries (startup after a crash, or
    /// an index from an older version).
    pub fn rebuild_due_index(&self) -> Result<usize, StoreError> {
        self.due_tree().clear()?;
        let mut n = 0;
        for e in self.list_entries()? {
            let mut e = e;
            if e.state == QueueState::Active {
                e.state = QueueState::Queued;
                self.update_entry(&e)?;
            } else if e.state == QueueState::Queued {
                self.due_tree()
                    .insert(due_key(e.next_attempt, &e.id), &[] as &[u8])?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Remove an entry, and its body if no other entry refers to it.
    pub fn remove_entry(&self, id: &str) -> Result<Option<QueueEntry>, StoreError> {
        let Some(entry) = self.get_entry(id)? else {
            return Ok(None);
        };
        let (queue, body, body_ref) = self.trees();
        let prefix = {
            let mut p = entry.body.as_bytes().to_vec();
            p.push(b'/');
            p
        };
        let rk = ref_key(&entry.body, id);
        let dk = due_key(entry.next_attempt, id);
        (queue, body_ref, self.due_tree())
            .transaction(|(q, r, d)| {
                q.remove(id.as_bytes())?;
                r.remove(rk.as_slice())?;
                d.remove(dk.as_slice())?;
                Ok(())
            })
            .map_err(tx_err)?;
        // Body removal is a separate step: a crash between the two leaves an
        // orphan body (reclaimed by `sweep_orphan_bodies`), never a dangling ref.
        if body_ref.scan_prefix(&prefix).next().is_none() {
            body.remove(entry.body.as_bytes())?;
        }
        Ok(Some(entry))
    }

    /// Delete bodies no entry refers to (after a crash mid-removal).
    pub fn sweep_orphan_bodies(&self) -> Result<usize, StoreError> {
        let (_, body, body_ref) = self.trees();
        let mut n = 0;
        for kv in body.iter() {
            let (k, _) = kv?;
            let mut prefix = k.to_vec();
            prefix.push(b'/');
            if body_ref.scan_prefix(&prefix).next().is_none() {
                body.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn decode_entry(id: &str, v: &[u8]) -> Result<QueueEntry, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: id.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, body: &str) -> QueueEntry {
        QueueEntry {
            id: id.into(),
            transaction: "t".into(),
            state: QueueState::Queued,
            sender: "a@b".into(),
            recipients: vec![QueuedRecipient {
                recipient: "c@d".into(),
                transportid: "default".into(),
                dsn: Default::default(),
            }],
            transportid: "default".into(),
            dsn: Default::default(),
            metadata: Default::default(),
            jobid: None,
            received_at: 1.0,
            next_attempt: 1.0,
            attempts: 0,
            size: 3,
            body: body.into(),
            smtputf8: false,
            eight_bit: false,
            client: Default::default(),
            message_id: None,
            last_error: None,
            delay_notified: false,
        }
    }

    #[tokio::test]
    async fn commit_list_remove_shared_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let msg = NewMessage {
            body_id: "b1".into(),
            body: Bytes::from_static(b"abc"),
            entries: vec![entry("e1", "b1"), entry("e2", "b1")],
        };
        store.commit_messages(&[msg]).await.unwrap();
        assert_eq!(store.list_entries().unwrap().len(), 2);
        store.remove_entry("e1").unwrap();
        assert_eq!(store.get_body("b1").unwrap().unwrap(), &b"abc"[..]);
        store.remove_entry("e2").unwrap();
        assert!(store.get_body("b1").unwrap().is_none());
        assert_eq!(store.queue_len(), 0);
    }

    #[tokio::test]
    async fn duplicate_id_aborts_whole_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m1 = NewMessage {
            body_id: "b1".into(),
            body: Bytes::from_static(b"1"),
            entries: vec![entry("e1", "b1")],
        };
        store.commit_messages(&[m1]).await.unwrap();
        let m2 = NewMessage {
            body_id: "b2".into(),
            body: Bytes::from_static(b"2"),
            entries: vec![entry("e2", "b2"), entry("e1", "b2")],
        };
        assert!(store.commit_messages(&[m2]).await.is_err());
        assert!(store.get_entry("e2").unwrap().is_none());
        assert!(store.get_body("b2").unwrap().is_none());
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let m = NewMessage {
                body_id: "b".into(),
                body: Bytes::from_static(b"hello"),
                entries: vec![entry("e", "b")],
            };
            store.commit_messages(&[m]).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_entry("e").unwrap().unwrap().sender, "a@b");
    }
}
