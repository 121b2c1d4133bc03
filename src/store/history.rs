//! The history table: one record per outcome (REJECT at SMTP time, DELIVER,
//! DEFER, ERROR, DELETE, and what scripts write with `History()`), keyed by a
//! time-sortable id (the record's time, then a unique id) in the `history`
//! tree so a time range is a key range.
//! The `hidx` tree indexes records by recipient, recipient domain, sender,
//! action, queue id, transaction id and message-id: `field \0 value \0 hid`,
//! so a query reads only the matching records.

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

/// Index fields: (name, value) pairs a record is findable by.
fn index_keys(hid: &str, r: &HistoryRecord) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
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
    for (f, v) in fields {
        if v.is_empty() && f != "sender" {
            continue;
        }
        // A RECEIVED record lists all recipients in one field: not an index key.
        if (f == "rcpt" || f == "domain") && r.recipient.contains(',') {
            continue;
        }
        out.push(index_key(f, &v.to_lowercase(), hid));
    }
    out
}

fn index_key(field: &str, value: &str, hid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(field.len() + value.len() + hid.len() + 2);
    k.extend_from_slice(field.as_bytes());
    k.push(0);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k.extend_from_slice(hid.as_bytes());
    k
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

/// History ids start with the record's own time (13 hex digits of µs), so a
/// time range is a key range even for records written late; a unique id follows.
fn hid_for_time(ts: f64) -> String {
    format!("{:013x}", (ts.max(0.0) * 1_000_000.0) as u64)
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

impl Store {
    /// Queue records for a background writer that commits many sessions'
    /// records in one transaction — for records nothing waits on (RECEIVED,
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
    /// acknowledgement), with their index entries.
    pub fn append_history(&self, records: &[HistoryRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            let v = serde_json::to_vec(r).map_err(|e| StoreError::Transaction(e.to_string()))?;
            let hid = format!("{}{}", hid_for_time(r.ts), crate::ids::new_id());
            let idx = index_keys(&hid, r);
            rows.push((hid, v, idx));
        }
        // Plain inserts, not a transaction or batch (each of those rolls
        // sled's log buffer twice, i.e. costs extra disk writes). Index
        // entries go first: after a crash an index entry may point at no
        // record (queries skip it), but no record is missing from its indexes.
        for (hid, v, idx) in &rows {
            for k in idx {
                self.hidx_tree().insert(k.as_slice(), &[] as &[u8])?;
            }
            self.history_tree().insert(hid.as_bytes(), v.as_slice())?;
        }
        crate::metrics::history_written(rows.len());
        Ok(())
    }

    fn decode_history(k: &[u8], v: &[u8]) -> Result<HistoryRecord, StoreError> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            message: e.to_string(),
        })
    }

    /// Records matching `q`, oldest first (or newest first), with their
    /// history ids. Uses an index when a field filter is given, else the
    /// time-ordered key range; either way only the query's time range is read.
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
    pub fn query_history_scan(
        &self,
        q: &HistoryQuery,
    ) -> Result<(Vec<HistoryRow>, Option<String>), StoreError> {
        let limit = q.limit.unwrap_or(usize::MAX);
        let budget = q.max_scan.unwrap_or(usize::MAX).max(1);
        let lo = match (&q.after, q.since) {
            (Some(a), _) => a.clone(),
            (None, Some(t)) => hid_for_time(t),
            (None, None) => String::new(),
        };
        let hi = match (q.until.map(|t| hid_for_time(t + 1e-6)), &q.before) {
            (Some(u), Some(b)) => Some(u.min(b.clone())),
            (u, b) => u.or_else(|| b.clone()),
        };
        let index: Option<(&str, String)> = if let Some(id) = &q.id {
            Some(("id", id.clone()))
        } else if let Some(r) = &q.recipient {
            Some(("rcpt", r.to_lowercase()))
        } else if let Some(s) = &q.sender {
            Some(("sender", s.to_lowercase()))
        } else if let Some(d) = &q.domain {
            Some(("domain", d.to_lowercase()))
        } else {
            q.action.as_ref().map(|a| ("action", a.to_lowercase()))
        };
        let mut out = Vec::new();
        let mut stopped = None;
        let mut scanned = 0usize;
        // Look at one record; true when the search is over.
        let mut take = |hid: String, v: &[u8]| -> Result<bool, StoreError> {
            let r = Self::decode_history(hid.as_bytes(), v)?;
            scanned += 1;
            if q.matches(&hid, &r) {
                out.push((hid.clone(), r));
                if out.len() >= limit {
                    return Ok(true);
                }
            }
            if scanned >= budget {
                stopped = Some(hid);
                return Ok(true);
            }
            Ok(false)
        };
        // The index keys of `prefix` within the query's time range.
        let bounded = |prefix: &[u8]| {
            let mut start = prefix.to_vec();
            start.extend_from_slice(lo.as_bytes());
            let mut end = prefix.to_vec();
            match &hi {
                Some(h) => end.extend_from_slice(h.as_bytes()),
                None => end.push(0xff),
            }
            self.hidx_tree().range(start..end)
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
            // An id may be a queue id, a transaction id or a message-id: the
            // (few) hids of the three indexes, merged.
            Some(("id", value)) => {
                let mut hids: Vec<String> = Vec::new();
                for f in ["id", "tx", "msgid"] {
                    let v = if f == "msgid" {
                        value.trim_matches(['<', '>']).to_lowercase()
                    } else {
                        value.to_lowercase()
                    };
                    let prefix = index_key(f, &v, "");
                    for kv in bounded(&prefix) {
                        let (k, _) = kv?;
                        hids.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
                    }
                }
                hids.sort();
                hids.dedup();
                if q.newest_first {
                    hids.reverse();
                }
                for hid in hids {
                    if let Some(v) = self.history_tree().get(hid.as_bytes())? {
                        if take(hid, &v)? {
                            break;
                        }
                    }
                }
            }
            // One index, read in order: stops at the limit.
            Some((field, value)) => {
                let prefix = index_key(field, &value, "");
                for kv in ordered(bounded(&prefix)) {
                    let (k, _) = kv?;
                    let hid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                    // After a crash an index entry may point at no record.
                    if let Some(v) = self.history_tree().get(hid.as_bytes())? {
                        if take(hid, &v)? {
                            break;
                        }
                    }
                }
            }
            None => {
                let start = lo.as_bytes().to_vec();
                let iter = match &hi {
                    Some(h) => self.history_tree().range(start..h.as_bytes().to_vec()),
                    None => self.history_tree().range(start..),
                };
                for kv in ordered(iter) {
                    let (k, v) = kv?;
                    let hid = String::from_utf8_lossy(&k).into_owned();
                    if take(hid, &v)? {
                        break;
                    }
                }
            }
        }
        Ok((out, stopped))
    }

    /// Up to `limit` records written after the one with history id `cursor`
    /// (from the first when `None`), in the order they were written: what
    /// an exporter reads to copy the history elsewhere. A record written
    /// late (older time than records already written) still comes after
    /// the cursor, so nothing is skipped.
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

    /// The times (unix seconds) of every `action` record since `since`, read
    /// from the action index alone (a history id starts with its record's
    /// time): what the console's charts count, without decoding records.
    pub fn history_times(&self, action: HistoryAction, since: f64) -> Result<Vec<f64>, StoreError> {
        let prefix = index_key("action", &action.as_str().to_lowercase(), "");
        let mut start = prefix.clone();
        start.extend_from_slice(hid_for_time(since).as_bytes());
        let mut end = prefix.clone();
        end.push(0xff);
        let mut out = Vec::new();
        for kv in self.hidx_tree().range(start..end) {
            let (k, _) = kv?;
            let hex = k.get(prefix.len()..prefix.len() + 13).unwrap_or_default();
            if let Some(us) = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            {
                out.push(us as f64 / 1_000_000.0);
            }
        }
        Ok(out)
    }

    /// All records, oldest first.
    pub fn history_all(&self) -> Result<Vec<HistoryRecord>, StoreError> {
        Ok(self
            .query_history(&HistoryQuery::default())?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Delete records older than `before` (unix seconds) and, if `max` is
    /// non-zero, the oldest beyond `max` records. Returns how many went.
    pub fn prune_history(&self, before: f64, max: u64) -> Result<usize, StoreError> {
        let cutoff = hid_for_time(before);
        let excess = if max > 0 {
            (self.history_tree().len() as u64).saturating_sub(max) as usize
        } else {
            0
        };
        let mut n = 0;
        for kv in self.history_tree().iter() {
            let (k, v) = kv?;
            if k.as_ref() >= cutoff.as_bytes() && n >= excess {
                break;
            }
            let hid = String::from_utf8_lossy(&k).into_owned();
            if let Ok(r) = Self::decode_history(&k, &v) {
                for ik in index_keys(&hid, &r) {
                    self.hidx_tree().remove(ik)?;
                }
            }
            self.history_tree().remove(&k)?;
            n += 1;
        }
        Ok(n)
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
        let idx_left = store.hidx_tree().len();
        assert_eq!(
            idx_left,
            2 * 7,
            "index entries of the pruned record removed"
        );
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
        let delivered = store
            .history_times(HistoryAction::Deliver, now - 95.5)
            .unwrap();
        assert_eq!(delivered.len(), 5, "q5..q9: {delivered:?}");
        assert!(delivered.iter().all(|t| (now - 96.0..=now).contains(t)));
        assert_eq!(
            store
                .history_times(HistoryAction::Reject, 0.0)
                .unwrap()
                .len(),
            1
        );
    }
}
