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
        self.sync().await
    }

    /// The atomic write without waiting for the flush.
    pub fn write_messages(&self, msgs: &[NewMessage]) -> Result<(), StoreError> {
        let mut encoded = Vec::new();
        for m in msgs {
            for e in &m.entries {
                let v =
                    serde_json::to_vec(e).map_err(|e| StoreError::Transaction(e.to_string()))?;
                encoded.push((e.id.clone(), e.body.clone(), v));
            }
        }
        let (queue, body, body_ref) = self.trees();
        (queue, body, body_ref)
            .transaction(|(q, b, r)| {
                for m in msgs {
                    b.insert(m.body_id.as_bytes(), m.body.as_ref())?;
                }
                for (id, body_id, v) in &encoded {
                    if q.insert(id.as_bytes(), v.as_slice())?.is_some() {
                        return Err(abort(format!("duplicate queue id {id}")));
                    }
                    r.insert(ref_key(body_id, id), &[] as &[u8])?;
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

    /// Replace an entry's envelope (state, attempts, next_attempt…).
    pub fn update_entry(&self, entry: &QueueEntry) -> Result<(), StoreError> {
        let (queue, _, _) = self.trees();
        let v = serde_json::to_vec(entry).map_err(|e| StoreError::Transaction(e.to_string()))?;
        let old = queue.fetch_and_update(entry.id.as_bytes(), |old| old.map(|_| v.clone()))?;
        if old.is_none() {
            return Err(StoreError::NotFound(entry.id.clone()));
        }
        Ok(())
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
        (queue, body_ref)
            .transaction(|(q, r)| {
                q.remove(id.as_bytes())?;
                r.remove(rk.as_slice())?;
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
