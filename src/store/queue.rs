//! The message queue: envelopes in the `queue` tree, message bytes in body
//! segment files named by `body_loc` (or inline in `body`), shared bodies
//! tracked in `body_ref` (see the module doc of `store`).
//! An entry is written atomically with its body and is only acknowledged to
//! the client after [`Store::commit_entries`] returns (fsync done).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::bodies::BodyLoc;
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
    /// What the operator and the delivery hooks asked of this entry — kept
    /// apart from `metadata`, which is the scripts' own.
    #[serde(default, skip_serializing_if = "EntryControl::is_empty")]
    pub control: EntryControl,
}

/// Control data of a queue entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryControl {
    /// `sluice queue bounce`: fail it at the next attempt.
    pub bounce_requested: bool,
    /// A postdelivery script's wording of this entry's reports. Kept on the
    /// entry because the report may go out on a later attempt (at expiry).
    #[serde(skip_serializing_if = "ReportWordings::is_empty")]
    pub reports: ReportWordings,
    /// What an over-quota answer (enhanced code X.2.2) of the next hop means
    /// for this entry (`mail:queue({overquota = …})`, Axigen's
    /// overquotaAction); `None` = the reply's own class decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overquota: Option<OverquotaAction>,
}

/// Over-quota handling: Axigen's overquotaAction values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverquotaAction {
    /// A permanent failure (bounce), even for 452 4.2.2.
    Reject,
    /// A temporary failure (retry later), even for 552 5.2.2.
    Tmpreject,
}

impl OverquotaAction {
    pub fn parse(s: &str) -> Option<OverquotaAction> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reject" => Some(OverquotaAction::Reject),
            "tmpreject" => Some(OverquotaAction::Tmpreject),
            _ => None,
        }
    }
}

/// How much of the original message a report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachSource {
    None,
    Headers,
    Full,
}

impl AttachSource {
    pub fn parse(s: &str) -> Option<AttachSource> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Some(AttachSource::None),
            "headers" => Some(AttachSource::Headers),
            "full" => Some(AttachSource::Full),
            _ => None,
        }
    }
}

/// A script's wording of one kind of report (bounce, delay notice, success
/// notice). Absent fields keep the built-in (or `[queue]`) wording.
/// Placeholders, expanded when the report is built: `{hostname}` and
/// `{lifetime}` everywhere; `{recipient}`, `{status}` (e.g. 5.2.2) and
/// `{diagnostic}` (the next hop's reply) in `recipient_text`, once per
/// recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportWording {
    /// `Some(false)`: send no report of this kind. `Some(true)` for a delay
    /// notice: send one at this attempt (not persisted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<bool>,
    pub subject: Option<String>,
    /// The report's From: header (the envelope sender stays null).
    pub from: Option<String>,
    /// The human-readable text before the per-recipient lines.
    pub text: Option<String>,
    /// One line per recipient (template).
    pub recipient_text: Option<String>,
    /// Text after the per-recipient lines.
    pub footer: Option<String>,
    /// At most this much of the original; RET=HDRS still limits it.
    pub attach: Option<AttachSource>,
}

impl ReportWording {
    /// `other`'s fields over `self`'s.
    pub fn merge(&mut self, other: ReportWording) {
        let ReportWording {
            send,
            subject,
            from,
            text,
            recipient_text,
            footer,
            attach,
        } = other;
        self.send = send.or(self.send);
        self.subject = subject.or(self.subject.take());
        self.from = from.or(self.from.take());
        self.text = text.or(self.text.take());
        self.recipient_text = recipient_text.or(self.recipient_text.take());
        self.footer = footer.or(self.footer.take());
        self.attach = attach.or(self.attach);
    }
}

/// The wording of each kind of report for one entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportWordings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce: Option<ReportWording>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<ReportWording>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<ReportWording>,
}

impl ReportWordings {
    pub fn is_empty(&self) -> bool {
        *self == ReportWordings::default()
    }

    /// `other`'s wordings over these, field by field.
    pub fn merge(&mut self, other: ReportWordings) {
        for (mine, theirs) in [
            (&mut self.bounce, other.bounce),
            (&mut self.delay, other.delay),
            (&mut self.success, other.success),
        ] {
            if let Some(w) = theirs {
                mine.get_or_insert_with(Default::default).merge(w);
            }
        }
    }
}

impl EntryControl {
    pub fn is_empty(&self) -> bool {
        *self == EntryControl::default()
    }
}

impl QueueEntry {
    /// A new entry for a message just accepted: queued, due now, no attempts
    /// yet. The caller fills in what it knows besides (DSN, metadata, client,
    /// hold, delay) before committing it with [`Store::commit_messages`].
    pub fn accepted(
        transaction: &str,
        sender: &str,
        recipients: Vec<QueuedRecipient>,
        transportid: &str,
        body_id: &str,
        size: u64,
    ) -> QueueEntry {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        QueueEntry {
            id: crate::ids::new_id(),
            transaction: transaction.to_string(),
            state: QueueState::Queued,
            sender: sender.to_string(),
            recipients,
            transportid: transportid.to_string(),
            dsn: MessageDsn::default(),
            metadata: BTreeMap::new(),
            jobid: None,
            received_at: now,
            next_attempt: now,
            attempts: 0,
            size,
            body: body_id.to_string(),
            smtputf8: false,
            eight_bit: false,
            client: ClientInfo::default(),
            message_id: None,
            last_error: None,
            delay_notified: false,
            control: EntryControl::default(),
        }
    }

    /// Held until an operator releases it (`hold`, a milter's quarantine).
    pub fn held(mut self) -> QueueEntry {
        self.state = QueueState::Held;
        self
    }

    /// First attempt this much later.
    pub fn delayed(mut self, delay: std::time::Duration) -> QueueEntry {
        self.next_attempt = self.received_at + delay.as_secs_f64();
        self
    }
}

/// One key of the `due` index and the queue id it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueKey {
    pub id: String,
    pub key: Vec<u8>,
}

/// What [`Store::recover`] cleaned up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub incomplete_entries: usize,
    pub dangling_refs: usize,
    pub orphan_bodies: usize,
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

/// `body/`: the start of every ref key of one body.
fn ref_prefix(body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(body.len() + 1);
    k.extend_from_slice(body);
    k.push(b'/');
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

    /// Queue entries by state ("queued", "held", "active"), decoding only the
    /// state of each (a scan: run it off the async threads). For the metrics,
    /// which receive numbers and never read sled themselves.
    pub fn count_by_state(&self) -> BTreeMap<&'static str, u64> {
        #[derive(serde::Deserialize)]
        struct StateOnly {
            state: QueueState,
        }
        let mut out: BTreeMap<&'static str, u64> = [("queued", 0), ("held", 0), ("active", 0)]
            .into_iter()
            .collect();
        let (queue, _, _) = self.trees();
        for (_, v) in queue.iter().flatten() {
            if let Ok(s) = serde_json::from_slice::<StateOnly>(&v) {
                *out.entry(s.state.as_str()).or_default() += 1;
            }
        }
        out
    }

    /// The write without waiting for the flush; all or nothing per message
    /// once flushed.
    ///
    /// A message with one entry (the usual case) is written as plain inserts:
    /// body, body ref, entry, due key. The entry is the commit point: after a
    /// crash, [`Store::recover`] drops an entry whose body is missing and a
    /// body nobody refers to. A message with several entries is written in
    /// one sled transaction, so a crash never leaves some of its recipients
    /// queued. (sled transactions and batches roll the log buffer twice each,
    /// i.e. cost two extra disk writes: hence the plain path.)
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
        let (queue, _, body_ref) = self.trees();
        let (body_loc, bodies) = self.body_files();
        let due_tree = self.due_tree();
        if msgs.len() == 1 && encoded.len() == 1 {
            let (id, body_id, v, due) = &encoded[0];
            if queue.contains_key(id.as_bytes())? {
                return Err(StoreError::Transaction(format!("duplicate queue id {id}")));
            }
            let loc = bodies.append(&msgs[0].body)?;
            let written = (|| -> Result<(), StoreError> {
                body_loc.insert(msgs[0].body_id.as_bytes(), &loc.encode())?;
                body_ref.insert(ref_key(body_id, id), &[] as &[u8])?;
                queue.insert(id.as_bytes(), v.as_slice())?;
                Ok(())
            })();
            if let Err(e) = written {
                bodies.release(&loc);
                return Err(e);
            }
            if let Some(k) = due {
                due_tree.insert(k.as_slice(), &[] as &[u8])?;
            }
            return Ok(());
        }
        let mut locs = Vec::with_capacity(msgs.len());
        for m in msgs {
            match bodies.append(&m.body) {
                Ok(loc) => locs.push(loc),
                Err(e) => {
                    locs.iter().for_each(|l| bodies.release(l));
                    return Err(e.into());
                }
            }
        }
        let res = (queue, body_loc, body_ref, due_tree)
            .transaction(|(q, b, r, d)| {
                for (m, loc) in msgs.iter().zip(&locs) {
                    b.insert(m.body_id.as_bytes(), &loc.encode())?;
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
            .map_err(tx_err);
        if res.is_err() {
            locs.iter().for_each(|l| bodies.release(l));
        }
        res
    }

    pub fn get_entry(&self, id: &str) -> Result<Option<QueueEntry>, StoreError> {
        let (queue, _, _) = self.trees();
        match queue.get(id.as_bytes())? {
            Some(v) => Ok(Some(decode_entry(id, &v)?)),
            None => Ok(None),
        }
    }

    pub fn get_body(&self, body_id: &str) -> Result<Option<Bytes>, StoreError> {
        let (body_loc, bodies) = self.body_files();
        if let Some(v) = body_loc.get(body_id.as_bytes())? {
            let loc = decode_loc(body_id, &v)?;
            return Ok(Some(bodies.read(&loc)?));
        }
        let (_, body, _) = self.trees();
        Ok(body
            .get(body_id.as_bytes())?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Remove a body nobody refers to, wherever it is.
    fn remove_body(&self, body_id: &[u8]) -> Result<(), StoreError> {
        let (body_loc, bodies) = self.body_files();
        match body_loc.remove(body_id)? {
            Some(v) => {
                if let Some(loc) = BodyLoc::decode(&v) {
                    bodies.release(&loc);
                }
            }
            None => {
                self.trees().1.remove(body_id)?;
            }
        }
        Ok(())
    }

    /// Whether a body is there and whole (recovery's test).
    fn body_is_whole(&self, body_id: &str) -> Result<bool, StoreError> {
        let (body_loc, bodies) = self.body_files();
        if let Some(v) = body_loc.get(body_id.as_bytes())? {
            return Ok(BodyLoc::decode(&v).is_some_and(|l| bodies.verify(&l)));
        }
        Ok(self.trees().1.contains_key(body_id.as_bytes())?)
    }

    /// Move the bodies still left in sparse segments (see
    /// [`super::bodies::Bodies::sparse_segments`]) into the `body` tree, so
    /// the segment files can be deleted. Blocking (reads, sled writes, a
    /// flush): run it off the async threads. Returns how many moved.
    ///
    /// Each body is inserted in `body` before its location is removed
    /// (compare-and-swap, so a body removed meanwhile is not brought back),
    /// and the segment is released only after sled's flush: a crash at any
    /// point leaves each body either in its segment or in `body`.
    pub fn settle_sparse_segments(&self) -> Result<usize, StoreError> {
        let (body_loc, bodies) = self.body_files();
        let sparse = bodies.sparse_segments();
        if sparse.is_empty() {
            return Ok(0);
        }
        let (_, body, _) = self.trees();
        let mut moved = Vec::new();
        for kv in body_loc.iter() {
            let (k, v) = kv?;
            let Some(loc) = BodyLoc::decode(&v) else {
                continue;
            };
            if !sparse.contains(&loc.segment) {
                continue;
            }
            let bytes = match bodies.read(&loc) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(body = %String::from_utf8_lossy(&k), error = %e, "a body could not be moved out of its segment");
                    continue;
                }
            };
            body.insert(&k, bytes.as_ref())?;
            if body_loc
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                .is_ok()
            {
                moved.push(loc);
            } else {
                // Removed meanwhile: do not leave it behind in `body`.
                body.remove(&k)?;
            }
        }
        self.flush_queue_blocking()?;
        for loc in &moved {
            bodies.release(loc);
        }
        Ok(moved.len())
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
    /// Fails with [`StoreError::NotFound`] if the entry was removed meanwhile
    /// (compare-and-swap: a concurrent delete is never undone).
    pub fn update_entry(&self, entry: &QueueEntry) -> Result<(), StoreError> {
        let (queue, _, _) = self.trees();
        let v = serde_json::to_vec(entry).map_err(|e| StoreError::Transaction(e.to_string()))?;
        let id = entry.id.as_bytes();
        let mut old = queue.get(id)?;
        // Bounded: each retry means another writer changed the entry between
        // our read and swap; give up rather than spin.
        for _ in 0..16 {
            let Some(current) = old else {
                return Err(StoreError::NotFound(entry.id.clone()));
            };
            match queue.compare_and_swap(id, Some(&current), Some(v.as_slice()))? {
                Ok(()) => {
                    if let Ok(prev) = serde_json::from_slice::<QueueEntry>(&current) {
                        self.due_tree()
                            .remove(due_key(prev.next_attempt, &entry.id))?;
                    }
                    if entry.state == QueueState::Queued {
                        self.due_tree()
                            .insert(due_key(entry.next_attempt, &entry.id), &[] as &[u8])?;
                        self.queue_notify().notify_one();
                    }
                    return Ok(());
                }
                Err(conflict) => old = conflict.current,
            }
        }
        Err(StoreError::Transaction(format!(
            "queue entry {} kept changing while being updated",
            entry.id
        )))
    }

    /// Due-index keys at or before `now` (unix seconds), oldest first, each
    /// with the queue id it names, so the scheduler can drop a key that no
    /// longer matches its entry.
    pub fn due_keys(&self, now: f64, limit: usize) -> Result<Vec<DueKey>, StoreError> {
        let end = ((now.max(0.0) * 1_000_000.0) as u64)
            .saturating_add(1)
            .to_be_bytes();
        let mut out = Vec::new();
        for kv in self.due_tree().range(..end.as_slice()) {
            let (k, _) = kv?;
            out.push(DueKey {
                id: String::from_utf8_lossy(&k[8..]).into_owned(),
                key: k.to_vec(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Whether `due` is the index key of a queued entry; if it is not (the
    /// entry is gone, held, or due at another time), the key is removed so
    /// it can never crowd out due entries. Returns the entry when it is.
    pub fn check_due(&self, due: &DueKey) -> Result<Option<QueueEntry>, StoreError> {
        let entry = self.get_entry(&due.id)?;
        match entry {
            Some(e)
                if e.state == QueueState::Queued && due_key(e.next_attempt, &e.id) == due.key =>
            {
                Ok(Some(e))
            }
            _ => {
                self.due_tree().remove(&due.key)?;
                Ok(None)
            }
        }
    }

    /// When the next entry is due (unix seconds), if any.
    pub fn next_due(&self) -> Result<Option<f64>, StoreError> {
        Ok(self.due_tree().first()?.map(|(k, _)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[..8]);
            u64::from_be_bytes(b) as f64 / 1_000_000.0
        }))
    }

    /// Remove an entry, and its body if no other entry refers to it.
    /// The entry's removal is the atomic step; index and body clean-up after
    /// it is redone by [`Store::recover`] if a crash interrupts it.
    pub fn remove_entry(&self, id: &str) -> Result<Option<QueueEntry>, StoreError> {
        let (queue, _, body_ref) = self.trees();
        let Some(old) = queue.remove(id.as_bytes())? else {
            return Ok(None);
        };
        let entry = decode_entry(id, &old)?;
        self.due_tree().remove(due_key(entry.next_attempt, id))?;
        body_ref.remove(ref_key(&entry.body, id))?;
        if body_ref
            .scan_prefix(ref_prefix(entry.body.as_bytes()))
            .next()
            .is_none()
        {
            self.remove_body(entry.body.as_bytes())?;
        }
        Ok(Some(entry))
    }

    /// Make the queue consistent at start, whatever stopped it: entries
    /// whose body never reached the disk were never acknowledged and go;
    /// body refs whose entry is gone, and bodies nobody refers to, go too;
    /// the due index is rebuilt from the entries (an entry left active by a
    /// crash is queued again).
    pub fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let (queue, _, body_ref) = self.trees();
        let due = self.due_tree();
        let mut report = RecoveryReport::default();
        due.clear()?;
        for kv in queue.iter() {
            let (k, v) = kv?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let Ok(mut e) = decode_entry(&id, &v) else {
                continue;
            };
            if !self.body_is_whole(&e.body)? {
                queue.remove(&k)?;
                body_ref.remove(ref_key(&e.body, &id))?;
                report.incomplete_entries += 1;
                continue;
            }
            if e.state == QueueState::Active {
                e.state = QueueState::Queued;
                let v =
                    serde_json::to_vec(&e).map_err(|e| StoreError::Transaction(e.to_string()))?;
                queue.insert(&k, v)?;
            }
            if e.state == QueueState::Queued {
                due.insert(due_key(e.next_attempt, &id), &[] as &[u8])?;
            }
        }
        for kv in body_ref.iter() {
            let (k, _) = kv?;
            let Some(slash) = k.iter().rposition(|b| *b == b'/') else {
                continue;
            };
            if !queue.contains_key(&k[slash + 1..])? {
                body_ref.remove(&k)?;
                report.dangling_refs += 1;
            }
        }
        report.orphan_bodies = self.sweep_orphan_bodies()?;
        self.flush_queue_blocking()?;
        Ok(report)
    }

    /// Delete bodies no entry refers to (after a crash mid-removal).
    /// Also removes a body's copy in `body` when its location is still
    /// there (a crash in [`Store::settle_sparse_segments`]).
    fn sweep_orphan_bodies(&self) -> Result<usize, StoreError> {
        let (_, body, body_ref) = self.trees();
        let (body_loc, bodies) = self.body_files();
        let mut n = 0;
        for kv in body_loc.iter() {
            let (k, v) = kv?;
            if body_ref.scan_prefix(ref_prefix(&k)).next().is_none() {
                body_loc.remove(&k)?;
                if let Some(loc) = BodyLoc::decode(&v) {
                    bodies.release(&loc);
                }
                n += 1;
            }
        }
        for kv in body.iter() {
            let (k, _) = kv?;
            if body_ref.scan_prefix(ref_prefix(&k)).next().is_none() || body_loc.contains_key(&k)? {
                body.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn decode_loc(body_id: &str, v: &[u8]) -> Result<BodyLoc, StoreError> {
    BodyLoc::decode(v).ok_or_else(|| StoreError::Corrupt {
        key: body_id.to_string(),
        message: "not a body location".into(),
    })
}

fn decode_entry(id: &str, v: &[u8]) -> Result<QueueEntry, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: id.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(id: &str, body: &str) -> QueueEntry {
        let mut e = QueueEntry::accepted(
            "t",
            "a@b",
            vec![QueuedRecipient {
                recipient: "c@d".into(),
                transportid: "default".into(),
                dsn: Default::default(),
            }],
            "default",
            body,
            3,
        );
        e.id = id.into();
        e.received_at = 1.0;
        e.next_attempt = 1.0;
        e
    }

    /// A message with one entry `id` whose body `body_id` holds `bytes`.
    pub(crate) fn single(id: &str, body_id: &str, bytes: &'static [u8]) -> NewMessage {
        NewMessage {
            body_id: body_id.into(),
            body: Bytes::from_static(bytes),
            entries: vec![entry(id, body_id)],
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
        let m1 = single("e1", "b1", b"1");
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
            let m = single("e", "b", b"hello");
            store.commit_messages(&[m]).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_entry("e").unwrap().unwrap().sender, "a@b");
    }

    #[tokio::test]
    async fn recover_cleans_what_a_crash_can_leave() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A committed single-entry message (plain-insert path): kept.
        let ok = single("e-ok", "b-ok", b"kept");
        store.commit_messages(&[ok]).await.unwrap();
        let (queue, body, body_ref) = store.trees();
        // Crash states of the plain-insert path, built by hand:
        // body and ref written, entry not yet;
        body.insert("b-half", &b"x"[..]).unwrap();
        body_ref
            .insert(ref_key("b-half", "e-half"), &[] as &[u8])
            .unwrap();
        // an entry whose body never made it to disk;
        let lost = serde_json::to_vec(&entry("e-lost", "b-lost")).unwrap();
        queue.insert("e-lost", lost).unwrap();
        body_ref
            .insert(ref_key("b-lost", "e-lost"), &[] as &[u8])
            .unwrap();
        // a body whose last entry was removed just before the crash.
        body.insert("b-orphan", &b"y"[..]).unwrap();
        // The same in body segments: a location and ref, no entry yet;
        let (body_loc, bodies) = store.body_files();
        let half = bodies.append(b"x").unwrap();
        body_loc.insert("b-half2", &half.encode()).unwrap();
        body_ref
            .insert(ref_key("b-half2", "e-half2"), &[] as &[u8])
            .unwrap();
        // an entry whose location names bytes that never reached the disk
        // (sled flushed the location on its own, then the power went);
        let mut torn = bodies.append(b"torn").unwrap();
        torn.crc ^= 1;
        body_loc.insert("b-torn", &torn.encode()).unwrap();
        body_ref
            .insert(ref_key("b-torn", "e-torn"), &[] as &[u8])
            .unwrap();
        let e = serde_json::to_vec(&entry("e-torn", "b-torn")).unwrap();
        queue.insert("e-torn", e).unwrap();
        // a body both moved into `body` and still named by its location
        // (a crash while a sparse segment was being emptied).
        let both = bodies.append(b"both").unwrap();
        body_loc.insert("b-both", &both.encode()).unwrap();
        body.insert("b-both", &b"both"[..]).unwrap();
        body_ref
            .insert(ref_key("b-both", "e-both"), &[] as &[u8])
            .unwrap();
        let e = serde_json::to_vec(&entry("e-both", "b-both")).unwrap();
        queue.insert("e-both", e).unwrap();

        let report = store.recover().unwrap();
        assert_eq!(
            report,
            RecoveryReport {
                incomplete_entries: 2,
                dangling_refs: 2,
                orphan_bodies: 5,
            }
        );
        let ids: Vec<String> = store
            .list_entries()
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, vec!["e-both".to_string(), "e-ok".to_string()]);
        assert_eq!(store.get_body("b-ok").unwrap().unwrap(), &b"kept"[..]);
        assert_eq!(store.get_body("b-both").unwrap().unwrap(), &b"both"[..]);
        assert_eq!(body.len(), 0);
        assert_eq!(body_loc.len(), 2);
        assert_eq!(body_ref.len(), 2);
        // A second pass finds nothing more to do.
        assert_eq!(store.recover().unwrap(), RecoveryReport::default());
    }

    /// A deferred message left among delivered ones keeps no segment file
    /// alive: it moves into `body`, survives a restart, and the file goes.
    #[tokio::test]
    async fn leftovers_of_a_sparse_segment_move_into_sled() {
        let dir = tempfile::tempdir().unwrap();
        let segments = || {
            std::fs::read_dir(dir.path().join("bodies"))
                .unwrap()
                .count()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let msgs: Vec<NewMessage> = (0..10)
                .map(|i| NewMessage {
                    body_id: format!("b{i}"),
                    body: Bytes::from(vec![b'0' + i as u8; 1000]),
                    entries: vec![entry(&format!("e{i}"), &format!("b{i}"))],
                })
                .collect();
            for m in msgs {
                store.commit_messages(&[m]).await.unwrap();
            }
            let (_, bodies) = store.body_files();
            bodies.seal_current(super::super::bodies::SPARSE_AFTER);
            // Young, or mostly live: nothing moves.
            assert_eq!(store.settle_sparse_segments().unwrap(), 0);
            for i in 0..9 {
                store.remove_entry(&format!("e{i}")).unwrap();
            }
            assert_eq!(segments(), 1);
            assert_eq!(store.settle_sparse_segments().unwrap(), 1);
            assert_eq!(segments(), 0, "the emptied segment file is deleted");
            assert_eq!(store.get_body("b9").unwrap().unwrap(), &[b'9'; 1000][..]);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap(), RecoveryReport::default());
        assert_eq!(store.get_body("b9").unwrap().unwrap(), &[b'9'; 1000][..]);
        store.remove_entry("e9").unwrap();
        assert!(store.get_body("b9").unwrap().is_none());
        assert_eq!(store.trees().1.len(), 0);
    }

    #[tokio::test]
    async fn update_never_resurrects_a_removed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = single("e", "b", b"z");
        store.commit_messages(&[m]).await.unwrap();
        let mut e = store.get_entry("e").unwrap().unwrap();
        e.next_attempt = 50.0;
        store.update_entry(&e).unwrap();
        let due = |now| -> Vec<String> {
            store
                .due_keys(now, 10)
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(due(100.0), vec!["e".to_string()]);
        assert!(due(49.0).is_empty());
        store.remove_entry("e").unwrap();
        assert!(matches!(
            store.update_entry(&e),
            Err(StoreError::NotFound(_))
        ));
        assert!(store.get_entry("e").unwrap().is_none());
        assert!(due(100.0).is_empty());
        assert!(store.remove_entry("e").unwrap().is_none());
    }

    /// The due key is computed from the entry in memory when written and
    /// from the stored JSON when removed: the two must agree to the
    /// microsecond. This time does not survive serde_json's default float
    /// parsing (off by one ulp, 588 µs becomes 589 µs): `float_roundtrip`.
    #[tokio::test]
    async fn due_keys_survive_the_json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut e = entry("e", "b");
        e.next_attempt = 1763916000.0005887;
        let m = NewMessage {
            body_id: "b".into(),
            body: Bytes::from_static(b"z"),
            entries: vec![e.clone()],
        };
        store.commit_messages(&[m]).await.unwrap();
        assert_eq!(
            store.get_entry("e").unwrap().unwrap().next_attempt,
            e.next_attempt
        );
        e.next_attempt = 1763916000.0023139;
        store.update_entry(&e).unwrap();
        assert_eq!(store.due_tree().len(), 1);
        store.remove_entry("e").unwrap();
        assert_eq!(store.due_tree().len(), 0, "a stale due key was left behind");
    }

    #[tokio::test]
    async fn check_due_drops_keys_that_match_no_queued_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = single("e", "b", b"z");
        store.commit_messages(&[m]).await.unwrap();
        // A key for a vanished entry, and one at a time the entry no longer has.
        store
            .due_tree()
            .insert(due_key(0.5, "gone"), &[] as &[u8])
            .unwrap();
        store
            .due_tree()
            .insert(due_key(0.7, "e"), &[] as &[u8])
            .unwrap();
        let keys = store.due_keys(10.0, 10).unwrap();
        assert_eq!(keys.len(), 3);
        let kept: Vec<String> = keys
            .iter()
            .filter_map(|k| store.check_due(k).unwrap())
            .map(|e| e.id)
            .collect();
        assert_eq!(kept, vec!["e".to_string()]);
        assert_eq!(store.due_tree().len(), 1);
        // A held entry is not due: its key goes too.
        let mut e = store.get_entry("e").unwrap().unwrap();
        let key = store.due_keys(10.0, 10).unwrap().remove(0);
        e.state = QueueState::Held;
        // Written behind the index's back, as an interrupted update would.
        store
            .trees()
            .0
            .insert("e", serde_json::to_vec(&e).unwrap())
            .unwrap();
        assert!(store.check_due(&key).unwrap().is_none());
        assert_eq!(store.due_tree().len(), 0);
    }
}
