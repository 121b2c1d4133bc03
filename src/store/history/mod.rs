//! The history table: one record per outcome (REJECT at SMTP time, DELIVER,
//! DEFER, ERROR, DELETE, operator actions, and what scripts write with
//! `History()`).
//!
//! Records are stored in blocks of up to [`BLOCK_RECORDS`] written together
//! ([`codec`]: binary, compressed per block), keyed by the block's write
//! time, so the history is in write order and a time range is a key range.
//! The indexes ([`index`]) say which slots of which blocks hold a recipient,
//! domain, sender, action or id; they are built in memory per segment of
//! blocks and written once when it is full. A record's history id is its
//! block and slot. A JSON-era history (one JSON value and
//! seven index keys per record) is converted on open ([`legacy`]). The
//! JSON shape seen by the API and the CLI is [`HistoryRecord`]'s serde form.
//!
//! Measured (`cargo bench --bench history`, figures in docs/operations.md):
//! ~130 bytes per record on disk against ~3 KB in the JSON era.

pub mod codec;
mod index;
pub mod legacy;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// What a history record says happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HistoryAction {
    /// The message was accepted and queued (one record, all recipients).
    #[default]
    Received,
    /// Refused for good: a 5xx at SMTP time, or by a script.
    Reject,
    /// Refused for now: a 4xx at SMTP time, or a delivery attempt to retry.
    Defer,
    /// Handed to the next hop.
    Deliver,
    /// Delivery failed for good (bounced).
    Error,
    /// Removed by an operator (or a script).
    Delete,
    /// An operator held the entry (`actor` says who: cli, api, console).
    Hold,
    /// An operator released a held entry.
    Release,
    /// An operator asked for a delivery attempt now.
    Retry,
    /// An operator asked for a bounce (the ERROR record and the DSN follow
    /// at the next attempt).
    Bounce,
}

impl HistoryAction {
    /// Every action. The position is the action's code on disk
    /// ([`codec`]): append new actions, never reorder.
    pub const ALL: [HistoryAction; 10] = [
        HistoryAction::Received,
        HistoryAction::Reject,
        HistoryAction::Defer,
        HistoryAction::Deliver,
        HistoryAction::Error,
        HistoryAction::Delete,
        HistoryAction::Hold,
        HistoryAction::Release,
        HistoryAction::Retry,
        HistoryAction::Bounce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryAction::Received => "RECEIVED",
            HistoryAction::Reject => "REJECT",
            HistoryAction::Defer => "DEFER",
            HistoryAction::Deliver => "DELIVER",
            HistoryAction::Error => "ERROR",
            HistoryAction::Delete => "DELETE",
            HistoryAction::Hold => "HOLD",
            HistoryAction::Release => "RELEASE",
            HistoryAction::Retry => "RETRY",
            HistoryAction::Bounce => "BOUNCE",
        }
    }

    /// "reject" → `Reject` (case-insensitive).
    pub fn parse(s: &str) -> Option<HistoryAction> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for HistoryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for HistoryAction {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HistoryAction {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What happened to one recipient of one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Unix seconds.
    pub ts: f64,
    pub action: HistoryAction,
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
    /// Delivery records: the next hop's name and address, attempt number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    /// DEFER: when the next attempt is due (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<f64>,
    /// Operator actions (DELETE, HOLD, RELEASE, RETRY, BOUNCE): who asked —
    /// "cli" (the control socket), "api" (the JSON API), "console".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The node (its `hostname`) whose history holds the record: set on
    /// records read from the fleet's export (`--cluster`), absent locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Where an SMTP-time record comes from: the client and the connection.
#[derive(Debug, Clone, Default)]
pub struct SmtpOrigin {
    pub client_ip: String,
    pub serverid: String,
    pub connection: String,
}

impl HistoryRecord {
    fn from_smtp(origin: &SmtpOrigin, action: HistoryAction) -> HistoryRecord {
        HistoryRecord {
            ts: now_secs(),
            action,
            client_ip: origin.client_ip.clone(),
            serverid: origin.serverid.clone(),
            connection: origin.connection.clone(),
            ..Default::default()
        }
    }

    /// A recipient refused during the SMTP dialogue: REJECT for a 5xx reply,
    /// DEFER for a 4xx one, and `reason` is exactly the reply the client got
    /// ("451 4.7.1 greylisted, come back").
    pub fn refused(
        origin: &SmtpOrigin,
        transaction: &str,
        sender: &str,
        recipient: &str,
        size: u64,
        reply: &crate::proto::reply::SmtpReply,
    ) -> HistoryRecord {
        let action = if reply.is_permanent() {
            HistoryAction::Reject
        } else {
            HistoryAction::Defer
        };
        HistoryRecord {
            transaction: transaction.to_string(),
            sender: sender.to_string(),
            recipient: recipient.to_string(),
            size,
            reason: reply.to_string(),
            ..Self::from_smtp(origin, action)
        }
    }

    /// One RECEIVED record per accepted message (all recipients in one field).
    #[allow(clippy::too_many_arguments)]
    pub fn received(
        origin: &SmtpOrigin,
        transaction: &str,
        sender: &str,
        recipients: &[&str],
        queue_ids: &[String],
        message_id: Option<String>,
        size: u64,
        metadata: BTreeMap<String, String>,
    ) -> HistoryRecord {
        HistoryRecord {
            id: queue_ids.first().cloned().unwrap_or_default(),
            transaction: transaction.to_string(),
            message_id,
            sender: sender.to_string(),
            recipient: recipients.join(","),
            size,
            reason: format!("queued as {}", queue_ids.join(",")),
            metadata,
            ..Self::from_smtp(origin, HistoryAction::Received)
        }
    }

    /// What a script wrote with `History(action, recipient, {…})`.
    #[allow(clippy::too_many_arguments)]
    pub fn scripted(
        origin: &SmtpOrigin,
        transaction: &str,
        sender: &str,
        action: HistoryAction,
        recipient: &str,
        transportid: &str,
        reason: &str,
        metadata: BTreeMap<String, String>,
    ) -> HistoryRecord {
        HistoryRecord {
            transaction: transaction.to_string(),
            sender: sender.to_string(),
            recipient: recipient.to_string(),
            transportid: transportid.to_string(),
            reason: reason.to_string(),
            metadata,
            ..Self::from_smtp(origin, action)
        }
    }
}

impl HistoryRecord {
    /// An outcome for one recipient of a queued entry (delivery, an
    /// operator's delete): the entry's envelope and client, attempt number
    /// `attempts + 1`.
    pub fn for_entry(
        e: &super::queue::QueueEntry,
        recipient: &str,
        action: HistoryAction,
        reason: String,
    ) -> HistoryRecord {
        HistoryRecord {
            ts: now_secs(),
            action,
            id: e.id.clone(),
            transaction: e.transaction.clone(),
            message_id: e.message_id.clone(),
            sender: e.sender.clone(),
            recipient: recipient.to_string(),
            transportid: e.transportid.clone(),
            size: e.size,
            client_ip: e.client.ip.clone(),
            serverid: e.client.serverid.clone(),
            connection: e.client.connection.clone(),
            reason,
            metadata: e.metadata.clone(),
            attempt: e.attempts + 1,
            ..Default::default()
        }
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A history record with its history id.
pub type HistoryRow = (String, HistoryRecord);

/// What to look for; all given filters must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    pub since: Option<f64>,
    pub until: Option<f64>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub domain: Option<String>,
    pub action: Option<String>,
    /// A queue id, transaction id or message-id.
    pub id: Option<String>,
    /// Only records with a history id greater than this (for --follow).
    pub after: Option<String>,
    /// Only records with a history id less than this (paging newest first).
    pub before: Option<String>,
    /// Case-insensitive text in the reason (or the deciding hook).
    pub text: Option<String>,
    /// Newest first (the console, paging with `before`); else oldest first.
    pub newest_first: bool,
    /// Examine at most this many records (the console's free-text search);
    /// see [`Store::query_history_scan`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_scan: Option<usize>,
    pub limit: Option<usize>,
}

impl HistoryQuery {
    fn matches(&self, hid: &str, r: &HistoryRecord) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        let domain = r.recipient.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.since.is_none_or(|t| r.ts >= t)
            && self.until.is_none_or(|t| r.ts <= t)
            && self.after.as_ref().is_none_or(|a| hid > a.as_str())
            && self.before.as_ref().is_none_or(|b| hid < b.as_str())
            && self.text.as_ref().is_none_or(|t| {
                let t = t.to_lowercase();
                r.reason.to_lowercase().contains(&t)
                    || r.metadata
                        .get("decided_by")
                        .is_some_and(|d| d.to_lowercase().contains(&t))
            })
            && eq(&self.sender, &r.sender)
            && eq(&self.recipient, &r.recipient)
            && eq(&self.domain, domain)
            && eq(&self.action, r.action.as_str())
            && self.id.as_ref().is_none_or(|id| {
                r.id == *id
                    || r.transaction == *id
                    || r.message_id.as_deref().map(|m| m.trim_matches(['<', '>']))
                        == Some(id.trim_matches(['<', '>']))
            })
    }
}

/// Records per block: large enough that repeated strings compress away and
/// a repeated value costs one index entry per block, small enough that
/// finding one record decompresses little (~80 KB).
pub const BLOCK_RECORDS: usize = 512;

/// A history id: the block id (13 hex digits of µs: the write time, so the
/// id still starts with a time) and the slot in the block (4 hex digits).
pub fn hid(block: u64, slot: usize) -> String {
    format!("{block:013x}{slot:04x}")
}

/// (block, slot) of a history id; an id of another shape (an older format,
/// a bare time) gives the time its first 13 hex digits say, slot 0.
pub fn parse_hid(h: &str) -> (u64, usize) {
    let block = h
        .get(..13)
        .and_then(|b| u64::from_str_radix(b, 16).ok())
        .unwrap_or(0);
    let slot = h
        .get(13..17)
        .filter(|_| h.len() == 17)
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    (block, slot)
}

/// The history's sled trees and the state kept beside them.
///
/// | tree     | key                                   | value                  |
/// |----------|---------------------------------------|------------------------|
/// | `hblock` | block id (u64 BE µs, write order)     | [`codec`] block        |
/// | `hseg`   | segment's first block id, bucket      | [`index`] entries      |
/// | `hmeta`  | `records`, `late_us`, `legacy_done`   | u64 BE                 |
pub(crate) struct Trees {
    blocks: sled::Tree,
    segs: sled::Tree,
    meta: sled::Tree,
    /// Held while a block is allocated and written: block ids become
    /// visible in order, so a reader that saw block N never later finds a
    /// block below N appear (the exporter's cursor relies on it).
    write: std::sync::Mutex<Writer>,
    records: std::sync::atomic::AtomicU64,
    /// The largest (block id − oldest record time in it) written: how far
    /// past `until` a time-bounded query must look.
    late_us: std::sync::atomic::AtomicU64,
}

/// What the writer keeps in memory: the last block id, the closed
/// segments' (first, last) block ids, the segment being filled.
#[derive(Default)]
pub(crate) struct Writer {
    last: u64,
    segments: Vec<(u64, u64)>,
    open: index::OpenSegment,
}

fn meta_u64(meta: &sled::Tree, key: &str) -> Result<u64, StoreError> {
    Ok(meta
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

fn block_id(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().unwrap_or([0; 8]))
}

impl Trees {
    pub(crate) fn open(hdb: &sled::Db) -> Result<Trees, StoreError> {
        let t = Trees {
            blocks: hdb.open_tree("hblock")?,
            segs: hdb.open_tree("hseg")?,
            records: 0.into(),
            late_us: 0.into(),
            meta: hdb.open_tree("hmeta")?,
            write: Default::default(),
        };
        t.records.store(
            meta_u64(&t.meta, "records")?,
            std::sync::atomic::Ordering::Relaxed,
        );
        t.late_us.store(
            meta_u64(&t.meta, "late_us")?,
            std::sync::atomic::Ordering::Relaxed,
        );
        t.reload()?;
        Ok(t)
    }

    /// Read the segment list and rebuild the open segment from the blocks
    /// written after the last closed one.
    fn reload(&self) -> Result<(), StoreError> {
        let mut w = self.write.lock().expect("history write lock");
        *w = Writer::default();
        w.last = self.blocks.last()?.map_or(0, |(k, _)| block_id(&k));
        for kv in self.segs.iter() {
            let (k, v) = kv?;
            if k.len() == 10 && k[8..] == index::META.to_be_bytes() {
                match index::decode_meta(&v) {
                    Ok(blocks) if !blocks.is_empty() => {
                        w.segments.push((blocks[0].id, blocks[blocks.len() - 1].id))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "history: unreadable segment table skipped")
                    }
                }
            }
        }
        let from = w.segments.last().map_or(0, |s| s.1.saturating_add(1));
        for kv in self.blocks.range(from.to_be_bytes()..) {
            let (k, v) = kv?;
            let id = block_id(&k);
            let Ok(b) = codec::Block::open(&v, id) else {
                tracing::warn!(block = %hid(id, 0), "history: unreadable block not indexed");
                continue;
            };
            let recs: Vec<Option<HistoryRecord>> =
                (0..b.len()).map(|s| b.record(s).ok().flatten()).collect();
            let slots: Vec<Option<&HistoryRecord>> = recs.iter().map(Option::as_ref).collect();
            w.open.add_block(id, &slots);
        }
        Ok(())
    }

    /// Empty every history tree (a conversion starting over).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.blocks.clear()?;
        self.segs.clear()?;
        self.meta.clear()?;
        self.records.store(0, std::sync::atomic::Ordering::Relaxed);
        self.late_us.store(0, std::sync::atomic::Ordering::Relaxed);
        *self.write.lock().expect("history write lock") = Writer::default();
        Ok(())
    }

    /// Store the open segment and start a new one.
    fn close_segment(&self, w: &mut Writer) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (w.open.first(), w.open.last()) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for (k, v) in w.open.encode() {
            batch.insert(&k[..], v);
        }
        self.segs.apply_batch(batch)?;
        w.segments.push((first, last));
        w.open = index::OpenSegment::default();
        Ok(())
    }
}

/// The records of one block with their slots (pruned slots left out).
type Slotted = Vec<(usize, HistoryRecord)>;

impl Store {
    /// Queue records for a background writer that commits many sessions'
    /// records together — for records nothing waits on (RECEIVED,
    /// SMTP-time REJECT). Delivery outcomes use [`Store::append_history`].
    pub fn append_history_background(&self, records: Vec<HistoryRecord>) {
        if records.is_empty() {
            return;
        }
        let tx = {
            let mut guard = self.history_writer().lock().expect("history writer lock");
            if guard.is_none() {
                let (tx, rx) = std::sync::mpsc::channel::<Vec<HistoryRecord>>();
                let weak = self.downgrade();
                let spawned = std::thread::Builder::new()
                    .name("sluice-history".into())
                    .spawn(move || super::history_writer::run(rx, weak));
                if spawned.is_err() {
                    drop(guard);
                    let _ = self.append_history(&records);
                    return;
                }
                *guard = Some(tx);
            }
            guard.as_ref().expect("set above").clone()
        };
        if let Err(e) = tx.send(records) {
            let _ = self.append_history(&e.0);
        }
    }

    /// Append records (not waiting for fsync: history is not an
    /// acknowledgement) in blocks of up to [`BLOCK_RECORDS`], with their
    /// index entries. Returns their history ids.
    pub fn append_history(&self, records: &[HistoryRecord]) -> Result<Vec<String>, StoreError> {
        let mut hids = Vec::with_capacity(records.len());
        for chunk in records.chunks(BLOCK_RECORDS) {
            let slots: Vec<Option<&HistoryRecord>> = chunk.iter().map(Some).collect();
            let block = self.write_block(None, &slots)?;
            hids.extend((0..chunk.len()).map(|s| hid(block, s)));
        }
        self.received_gone_all(records);
        crate::metrics::history_written(records.len());
        Ok(hids)
    }

    /// Write one block and index it: under `id` (the conversion), else
    /// under a new id — the current time in µs, above every id before.
    /// The block goes first and its index entries later (in memory until
    /// the segment closes, rebuilt from the blocks after a restart).
    pub(super) fn write_block(
        &self,
        id: Option<u64>,
        slots: &[Option<&HistoryRecord>],
    ) -> Result<u64, StoreError> {
        let t = self.history_trees();
        let mut w = t.write.lock().expect("history write lock");
        let block = match id {
            Some(id) => id,
            None => codec::micros(now_secs()).max(w.last + 1),
        };
        t.blocks
            .insert(block.to_be_bytes(), codec::encode_block(slots, block))?;
        w.last = w.last.max(block);
        w.open.add_block(block, slots);
        if w.open.is_full() {
            t.close_segment(&mut w)?;
        }
        if id.is_none() {
            let n = slots.iter().flatten().count() as u64;
            let total = t.records.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            t.meta.insert("records", &total.to_be_bytes())?;
        }
        let oldest = slots
            .iter()
            .flatten()
            .map(|r| codec::micros(r.ts))
            .min()
            .unwrap_or(block);
        let late = block.saturating_sub(oldest);
        if late > t.late_us.load(std::sync::atomic::Ordering::Relaxed) {
            t.late_us.store(late, std::sync::atomic::Ordering::Relaxed);
            t.meta.insert("late_us", &late.to_be_bytes())?;
        }
        Ok(block)
    }

    /// The (block, slot) pairs the indexes list for `field = value` among
    /// blocks `lo..=hi`, in block order; [`index::ALL_SLOTS`] for "read
    /// the whole block".
    fn index_candidates(
        &self,
        field: index::Field,
        value: &str,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, u16)>, StoreError> {
        let t = self.history_trees();
        let h = index::hash(field, value);
        let (segments, open) = {
            let w = t.write.lock().expect("history write lock");
            (w.segments.clone(), w.open.lookup(h))
        };
        let mut out = Vec::new();
        for (first, last) in segments {
            if last < lo || first > hi {
                continue;
            }
            let Some(bucket) = t.segs.get(index::bucket_key(first, h))? else {
                continue;
            };
            let found = index::lookup_stored(&bucket, h);
            if found.is_empty() {
                continue;
            }
            let Some(meta) = t.segs.get(index::seg_key(first, index::META))? else {
                continue;
            };
            let blocks = index::decode_meta(&meta).map_err(|e| StoreError::Corrupt {
                key: format!("history segment {}", hid(first, 0)),
                message: e.to_string(),
            })?;
            for (pos, slot) in found {
                if let Some(b) = blocks.get(pos as usize) {
                    out.push((b.id, slot));
                }
            }
        }
        out.extend(open);
        out.retain(|(b, _)| (lo..=hi).contains(b));
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// How many records the history holds (kept as a counter; after a
    /// crash it may be off by the last few blocks until pruning).
    pub fn history_len(&self) -> u64 {
        self.history_trees()
            .records
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn open_block(&self, block: u64, stored: &[u8]) -> Result<codec::Block, StoreError> {
        codec::Block::open(stored, block).map_err(|e| StoreError::Corrupt {
            key: format!("history block {}", hid(block, 0)),
            message: e.to_string(),
        })
    }

    /// Every live record of a stored block, with its slot.
    fn block_records(&self, block: u64, stored: &[u8]) -> Result<Slotted, StoreError> {
        let b = self.open_block(block, stored)?;
        let mut out = Vec::with_capacity(b.len());
        for slot in 0..b.len() {
            if let Some(r) = self.block_record(&b, block, slot)? {
                out.push((slot, r));
            }
        }
        Ok(out)
    }

    fn block_record(
        &self,
        b: &codec::Block,
        block: u64,
        slot: usize,
    ) -> Result<Option<HistoryRecord>, StoreError> {
        b.record(slot).map_err(|e| StoreError::Corrupt {
            key: hid(block, slot),
            message: e.to_string(),
        })
    }

    /// Records matching `q`, oldest first (or newest first), with their
    /// history ids. Uses an index when a field filter is given, else the
    /// blocks in order; either way only the query's time range is read.
    pub fn query_history(
        &self,
        q: &HistoryQuery,
    ) -> Result<Vec<(String, HistoryRecord)>, StoreError> {
        Ok(self.query_history_scan(q)?.0)
    }

    /// [`Store::query_history`], and — when `q.max_scan` ended the search
    /// before the range did — the history id of the last record examined,
    /// from which a caller continues (`before` it newest first, `after` it
    /// oldest first).
    ///
    /// "Oldest first" is history-id order: write order, which is time
    /// order except for records written late (after a history outage).
    pub fn query_history_scan(
        &self,
        q: &HistoryQuery,
    ) -> Result<(Vec<HistoryRow>, Option<String>), StoreError> {
        let t = self.history_trees();
        let limit = q.limit.unwrap_or(usize::MAX);
        let budget = q.max_scan.unwrap_or(usize::MAX).max(1);
        // Block ids are write times, never before the times of the records
        // inside: records since S are in blocks from S on, and records
        // until U in blocks up to U plus the worst lateness seen.
        let mut lo = q.since.map_or(0, codec::micros);
        if let Some(a) = &q.after {
            lo = lo.max(parse_hid(a).0);
        }
        let mut hi = u64::MAX;
        if let Some(u) = q.until {
            let late = t.late_us.load(std::sync::atomic::Ordering::Relaxed);
            hi = codec::micros(u).saturating_add(late).saturating_add(1);
        }
        if let Some(b) = &q.before {
            hi = hi.min(parse_hid(b).0);
        }
        if lo > hi {
            return Ok((Vec::new(), None));
        }
        let index: Option<(index::Field, String)> = if let Some(id) = &q.id {
            Some((index::Field::Id, id.trim_matches(['<', '>']).to_string()))
        } else if let Some(r) = &q.recipient {
            Some((index::Field::Recipient, r.clone()))
        } else if let Some(s) = &q.sender {
            Some((index::Field::Sender, s.clone()))
        } else if let Some(d) = &q.domain {
            Some((index::Field::Domain, d.clone()))
        } else {
            q.action
                .as_ref()
                .map(|a| (index::Field::Action, a.to_uppercase()))
        };
        let after = q.after.as_deref().map(parse_hid);
        let before = q.before.as_deref().map(parse_hid);
        let mut out = Vec::new();
        let mut stopped = None;
        let mut scanned = 0usize;
        // Look at the given slots of one block; true when the search is over.
        let mut visit = |block: u64, stored: &[u8], slots: Option<Vec<usize>>| {
            let b = self.open_block(block, stored)?;
            let mut slots = slots.unwrap_or_else(|| (0..b.len()).collect());
            slots.retain(|s| *s < b.len());
            if q.newest_first {
                slots.reverse();
            }
            for slot in slots {
                // Outside the paging bounds: not examined, not counted.
                if after.is_some_and(|a| (block, slot) <= a)
                    || before.is_some_and(|b| (block, slot) >= b)
                {
                    continue;
                }
                let Some(r) = self.block_record(&b, block, slot)? else {
                    continue;
                };
                let id = hid(block, slot);
                scanned += 1;
                if q.matches(&id, &r) {
                    out.push((id.clone(), r));
                    if out.len() >= limit {
                        return Ok::<bool, StoreError>(true);
                    }
                }
                if scanned >= budget {
                    stopped = Some(id);
                    return Ok(true);
                }
            }
            Ok(false)
        };
        type Rows<'a> = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a>;
        let ordered = |iter: sled::Iter| -> Rows<'_> {
            if q.newest_first {
                Box::new(iter.rev())
            } else {
                Box::new(iter)
            }
        };
        match index {
            Some((field, value)) => {
                let mut found = self.index_candidates(field, &value, lo, hi)?;
                if q.newest_first {
                    found.reverse();
                }
                // Group the slots of each block, in the order found.
                let mut i = 0;
                while i < found.len() {
                    let block = found[i].0;
                    let mut slots = Vec::new();
                    let mut all = false;
                    while i < found.len() && found[i].0 == block {
                        all |= found[i].1 == index::ALL_SLOTS;
                        slots.push(found[i].1 as usize);
                        i += 1;
                    }
                    slots.sort_unstable();
                    // After a crash or a prune an entry may point at no block.
                    if let Some(stored) = t.blocks.get(block.to_be_bytes())? {
                        if visit(block, &stored, (!all).then_some(slots))? {
                            break;
                        }
                    }
                }
            }
            None => {
                let range = lo.to_be_bytes()..=hi.to_be_bytes();
                for kv in ordered(t.blocks.range(range)) {
                    let (k, v) = kv?;
                    let block = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                    if visit(block, &v, None)? {
                        break;
                    }
                }
            }
        }
        Ok((out, stopped))
    }

    /// Up to `limit` records written after the one with history id `cursor`
    /// (from the first when `None`), in the order they were written: what
    /// an exporter reads to copy the history elsewhere. Blocks appear in id
    /// order (see [`Trees`]), so a record written late still comes after
    /// the cursor and nothing is skipped.
    pub fn history_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        self.query_history(&HistoryQuery {
            after: cursor.map(str::to_string),
            limit: Some(limit),
            ..Default::default()
        })
    }

    /// How many records were written after the one with history id
    /// `cursor` (all when `None`): an exporter's lag, counted from the
    /// block headers without decoding records. Slots pruned by
    /// `max_records` in a block still count until the block goes.
    pub fn history_count_after(&self, cursor: Option<&str>) -> Result<usize, StoreError> {
        let (block, slot) = cursor.map_or((0, None), |c| {
            let (b, s) = parse_hid(c);
            (b, Some(s))
        });
        let mut n = 0;
        for kv in self.history_trees().blocks.range(block.to_be_bytes()..) {
            let (k, v) = kv?;
            let len = codec::block_len(&v).unwrap_or(0);
            n += match slot {
                Some(s) if block_id(&k) == block => len.saturating_sub(s + 1),
                _ => len,
            };
        }
        Ok(n)
    }

    /// The times (unix seconds) of every `action` record written since
    /// `since`, from the segments' block tables alone: what the console's
    /// charts count, without decoding records. A record counts at its
    /// block's time — its write time, within milliseconds of its own
    /// unless the history writer was held up.
    pub fn history_times(&self, action: HistoryAction, since: f64) -> Result<Vec<f64>, StoreError> {
        let t = self.history_trees();
        let from = codec::micros(since);
        let (segments, open) = {
            let w = t.write.lock().expect("history write lock");
            (w.segments.clone(), w.open.blocks.clone())
        };
        let mut out = Vec::new();
        let mut count = |blocks: &[index::BlockInfo]| {
            for b in blocks.iter().filter(|b| b.id >= from) {
                for (a, n) in &b.actions {
                    if *a == action {
                        let at = b.id as f64 / 1_000_000.0;
                        out.extend(std::iter::repeat_n(at, *n as usize));
                    }
                }
            }
        };
        for (first, last) in segments {
            if last < from {
                continue;
            }
            if let Some(meta) = t.segs.get(index::seg_key(first, index::META))? {
                if let Ok(blocks) = index::decode_meta(&meta) {
                    count(&blocks);
                }
            }
        }
        count(&open);
        Ok(out)
    }

    /// A block removed whole: take its live records off the count.
    fn count_gone(&self, block: u64, stored: &[u8]) -> usize {
        let n = self
            .block_records(block, stored)
            .map_or_else(|_| codec::block_len(stored).unwrap_or(0), |l| l.len());
        self.forget_records(n);
        n
    }

    fn forget_records(&self, n: usize) {
        let t = self.history_trees();
        let n = n as u64;
        let left = t
            .records
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |c| Some(c.saturating_sub(n)),
            )
            .unwrap_or(0)
            .saturating_sub(n);
        let _ = t.meta.insert("records", &left.to_be_bytes());
    }

    /// All records, oldest first.
    pub fn history_all(&self) -> Result<Vec<HistoryRecord>, StoreError> {
        Ok(self
            .query_history(&HistoryQuery::default())?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Delete the blocks whose records are all older than `before` (unix
    /// seconds) and, if `max` is non-zero, the oldest records beyond `max`
    /// — a partly pruned block is rewritten with the pruned slots empty,
    /// so history ids and index entries stay right. Returns how many
    /// records went.
    pub fn prune_history(&self, before: f64, max: u64) -> Result<usize, StoreError> {
        let t = self.history_trees();
        let cutoff = codec::micros(before);
        let mut gone = 0usize;
        // Which blocks hold nothing as new as the cutoff: from the block
        // tables, without reading the blocks.
        let (segments, open) = {
            let w = t.write.lock().expect("history write lock");
            (w.segments.clone(), w.open.blocks.clone())
        };
        let mut expired: Vec<u64> = open
            .iter()
            .filter(|b| b.newest < cutoff)
            .map(|b| b.id)
            .collect();
        for (first, _) in &segments {
            if let Some(meta) = t.segs.get(index::seg_key(*first, index::META))? {
                if let Ok(blocks) = index::decode_meta(&meta) {
                    expired.extend(blocks.iter().filter(|b| b.newest < cutoff).map(|b| b.id));
                }
            }
        }
        expired.sort_unstable();
        for block in expired {
            if let Some(v) = t.blocks.remove(block.to_be_bytes())? {
                gone += self.count_gone(block, &v);
            }
        }
        let mut excess = if max > 0 {
            self.history_len().saturating_sub(max) as usize
        } else {
            0
        };
        while excess > 0 {
            let Some((k, v)) = t.blocks.first()? else {
                break;
            };
            let block = block_id(&k);
            let live = match self.block_records(block, &v) {
                Ok(live) => live,
                Err(e) => {
                    // An unreadable block cannot be kept forever either.
                    tracing::warn!(block = %hid(block, 0), error = %e, "history: removing an unreadable block");
                    t.blocks.remove(&k)?;
                    continue;
                }
            };
            let drop_n = excess.min(live.len());
            if drop_n == live.len() {
                t.blocks.remove(&k)?;
            } else {
                // Pruned slots become empty ones: the others keep their
                // slots, so their ids and index entries stay right.
                let mut slots: Vec<Option<&HistoryRecord>> = Vec::new();
                for (s, r) in live.iter().skip(drop_n) {
                    if slots.len() <= *s {
                        slots.resize(*s + 1, None);
                    }
                    slots[*s] = Some(r);
                }
                t.blocks
                    .insert(block.to_be_bytes(), codec::encode_block(&slots, block))?;
            }
            self.forget_records(drop_n);
            gone += drop_n;
            excess -= drop_n;
        }
        // Segments none of whose blocks are left: their entries point at
        // nothing now.
        let mut dead: Vec<u64> = Vec::new();
        for (first, last) in &segments {
            let range = first.to_be_bytes()..=last.to_be_bytes();
            if t.blocks.range(range).next().is_none() {
                dead.push(*first);
            }
        }
        let mut w = t.write.lock().expect("history write lock");
        for first in &dead {
            let mut batch = sled::Batch::default();
            for kv in t
                .segs
                .range(index::seg_key(*first, 0)..=index::seg_key(*first, index::META))
            {
                batch.remove(kv?.0);
            }
            t.segs.apply_batch(batch)?;
        }
        w.segments.retain(|(first, _)| !dead.contains(first));
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: &str, rcpt: &str, id: &str, ts: f64) -> HistoryRecord {
        HistoryRecord {
            ts,
            action: HistoryAction::parse(action).unwrap(),
            id: id.into(),
            transaction: format!("tx-{id}"),
            message_id: Some(format!("{id}@example.net")),
            sender: "s@example.net".into(),
            recipient: rcpt.into(),
            ..Default::default()
        }
    }

    #[test]
    fn queries_use_every_filter_and_pruning_cleans_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        store
            .append_history(&[
                rec("DELIVER", "a@x.example", "q1", now - 100.0),
                rec("DEFER", "b@y.example", "q2", now - 50.0),
                rec("DELIVER", "B@y.example", "q3", now),
            ])
            .unwrap();
        let q = |q: HistoryQuery| store.query_history(&q).unwrap().len();
        assert_eq!(q(HistoryQuery::default()), 3);
        assert_eq!(
            q(HistoryQuery {
                recipient: Some("b@y.example".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(HistoryQuery {
                domain: Some("Y.EXAMPLE".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(HistoryQuery {
                action: Some("DEFER".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(HistoryQuery {
                id: Some("tx-q2".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(HistoryQuery {
                id: Some("<q3@example.net>".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(HistoryQuery {
                sender: Some("s@example.net".into()),
                action: Some("DELIVER".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(HistoryQuery {
                since: Some(now - 60.0),
                recipient: Some("b@y.example".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            q(HistoryQuery {
                until: Some(now - 60.0),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            q(HistoryQuery {
                limit: Some(2),
                ..Default::default()
            }),
            2
        );
        // Only keep two: the oldest goes, with its index entries.
        assert_eq!(store.prune_history(0.0, 2).unwrap(), 1);
        assert_eq!(q(HistoryQuery::default()), 2);
        assert_eq!(
            q(HistoryQuery {
                recipient: Some("a@x.example".into()),
                ..Default::default()
            }),
            0
        );
        // The survivors keep their history ids (slots 1 and 2).
        let hids: Vec<String> = store
            .query_history(&HistoryQuery::default())
            .unwrap()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        assert!(
            hids[0].ends_with("0001") && hids[1].ends_with("0002"),
            "{hids:?}"
        );
        assert_eq!(store.history_len(), 2);
    }

    #[test]
    fn newest_first_paging_text_and_action_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = now_secs();
        let mut recs: Vec<HistoryRecord> = (0..10)
            .map(|i| {
                rec(
                    "DELIVER",
                    "p@x.example",
                    &format!("q{i}"),
                    now - 100.0 + i as f64,
                )
            })
            .collect();
        recs[3].reason = "550 5.7.1 Spam Detected".into();
        recs[3].action = HistoryAction::Reject;
        store.append_history(&recs).unwrap();
        let page = |q: HistoryQuery| -> Vec<String> {
            store
                .query_history(&q)
                .unwrap()
                .into_iter()
                .map(|(_, r)| r.id)
                .collect()
        };
        for rcpt in [None, Some("p@x.example".to_string())] {
            let first = store
                .query_history(&HistoryQuery {
                    recipient: rcpt.clone(),
                    newest_first: true,
                    limit: Some(4),
                    ..Default::default()
                })
                .unwrap();
            let ids: Vec<&str> = first.iter().map(|(_, r)| r.id.as_str()).collect();
            assert_eq!(ids, ["q9", "q8", "q7", "q6"], "{rcpt:?}");
            let next = page(HistoryQuery {
                recipient: rcpt.clone(),
                newest_first: true,
                before: Some(first[3].0.clone()),
                limit: Some(4),
                ..Default::default()
            });
            assert_eq!(next, ["q5", "q4", "q3", "q2"], "{rcpt:?}");
        }
        assert_eq!(
            page(HistoryQuery {
                text: Some("spam detected".into()),
                ..Default::default()
            }),
            ["q3"]
        );
        // A scan budget ends the search early and says where it stopped.
        let q = HistoryQuery {
            text: Some("spam detected".into()),
            newest_first: true,
            max_scan: Some(4),
            ..Default::default()
        };
        let (rows, stopped) = store.query_history_scan(&q).unwrap();
        assert!(rows.is_empty(), "q9..q6 examined, no match");
        let stopped = stopped.expect("stopped early");
        let (rows, _) = store
            .query_history_scan(&HistoryQuery {
                before: Some(stopped),
                ..q.clone()
            })
            .unwrap();
        assert_eq!(rows.len(), 1, "found continuing from where it stopped");
        assert_eq!(rows[0].1.id, "q3");
        // Indexed queries read only the time range asked for.
        let mid = now - 95.5;
        assert_eq!(
            page(HistoryQuery {
                recipient: Some("p@x.example".into()),
                since: Some(mid),
                newest_first: true,
                ..Default::default()
            }),
            ["q9", "q8", "q7", "q6", "q5"]
        );
        assert_eq!(
            page(HistoryQuery {
                action: Some("DELIVER".into()),
                until: Some(mid),
                ..Default::default()
            }),
            ["q0", "q1", "q2", "q4"]
        );
        // Chart times are write times: these ten were written together,
        // just now, whatever their own times say.
        let delivered = store
            .history_times(HistoryAction::Deliver, now - 95.5)
            .unwrap();
        assert_eq!(delivered.len(), 9, "all but the REJECT: {delivered:?}");
        assert!(delivered.iter().all(|t| (now..now + 60.0).contains(t)));
        assert!(store
            .history_times(HistoryAction::Deliver, now + 60.0)
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .history_times(HistoryAction::Reject, 0.0)
                .unwrap()
                .len(),
            1
        );
    }

    /// More than a segment: closed segments are found from disk, the open
    /// one is rebuilt on open, retention goes by the records' own times
    /// (late-written old records go too) and dead segments are dropped.
    #[test]
    fn segments_survive_reopen_and_retention_uses_record_times() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_secs();
        let n = index::SEG_MAX_RECORDS * 2 + 1000;
        let recs: Vec<HistoryRecord> = (0..n)
            .map(|i| {
                // The first segment's worth: 40 days old, written now.
                let ts = if i < index::SEG_MAX_RECORDS {
                    now - 40.0 * 86400.0
                } else {
                    now
                };
                rec(
                    "DELIVER",
                    &format!("u{}@x.example", i % 5000),
                    &format!("q{i}"),
                    ts,
                )
            })
            .collect();
        let want = |store: &Store, rcpt: &str| {
            store
                .query_history(&HistoryQuery {
                    recipient: Some(rcpt.into()),
                    ..Default::default()
                })
                .unwrap()
                .len()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.append_history(&recs).unwrap();
            assert_eq!(
                store.history_trees().write.lock().unwrap().segments.len(),
                2
            );
            assert_eq!(
                want(&store, "u7@x.example"),
                recs.iter()
                    .filter(|r| r.recipient == "u7@x.example")
                    .count()
            );
            store.flush_blocking().unwrap();
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > until => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        assert_eq!(store.history_len(), n as u64);
        let u7 = recs
            .iter()
            .filter(|r| r.recipient == "u7@x.example")
            .count();
        assert_eq!(want(&store, "u7@x.example"), u7, "after reopen");
        let last = format!("q{}", n - 1);
        let found = store
            .query_history(&HistoryQuery {
                id: Some(last.clone()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1, "a record of the open segment, rebuilt");
        assert_eq!(store.history_count_after(None).unwrap(), n);
        let after_first = store.history_after(None, 1).unwrap()[0].0.clone();
        assert_eq!(
            store.history_count_after(Some(&after_first)).unwrap(),
            n - 1
        );
        assert_eq!(store.history_count_after(Some(&found[0].0)).unwrap(), 0);
        let pruned = store.prune_history(now - 30.0 * 86400.0, 0).unwrap();
        assert_eq!(pruned, index::SEG_MAX_RECORDS);
        assert_eq!(store.history_len(), (n - pruned) as u64);
        let u7_fresh = recs[index::SEG_MAX_RECORDS..]
            .iter()
            .filter(|r| r.recipient == "u7@x.example")
            .count();
        assert_eq!(want(&store, "u7@x.example"), u7_fresh);
        assert_eq!(
            store.history_trees().write.lock().unwrap().segments.len(),
            1,
            "the first segment dropped"
        );
        assert_eq!(
            store
                .history_times(HistoryAction::Deliver, 0.0)
                .unwrap()
                .len(),
            n - pruned
        );
    }
}
