//! The history indexes: which slots of which blocks hold a value.
//!
//! One sled key per (field, value, block) — not per record — so a value
//! repeated in a block (a sender, a domain, an action) costs one entry:
//!
//! `[field][64-bit hash of the lowercased value][block id, u64 BE]`
//! → the slots, as varints (gaps between ascending slots). Action entries
//! also carry each record's time, as milliseconds before the block's id,
//! so the console's charts count records by time from the index alone.
//!
//! A hash, not the value, keeps the keys short and fixed in size; a
//! collision only makes a query read a block it then filters out (every
//! query checks the decoded records). The id field holds the queue id, the
//! transaction id and the message-id (without `<>`) of a record, since a
//! lookup by "an id" means any of them.
//!
//! This module owns only the key layout and the entries of one block.

use std::collections::BTreeMap;

use super::codec::{put_varint, CodecError, Reader};
use super::HistoryRecord;

/// The indexed fields; the byte is the key's first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Field {
    Recipient = b'r',
    Domain = b'd',
    Sender = b's',
    Action = b'a',
    Id = b'i',
}

/// FNV-1a, 64 bits: stable across builds and versions (the keys are on disk).
pub fn hash(value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The key prefix of every entry for `value` in `field`.
pub fn prefix(field: Field, value: &str) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = field as u8;
    k[1..].copy_from_slice(&hash(value).to_be_bytes());
    k
}

pub fn key(prefix: &[u8; 9], block: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(prefix);
    k[9..].copy_from_slice(&block.to_be_bytes());
    k
}

/// The block id at the end of an index key.
pub fn block_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(9..17)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// What a record is findable by. A RECEIVED record lists every recipient
/// in one field: it is found by its ids, not by recipient.
pub fn values(r: &HistoryRecord) -> Vec<(Field, &str)> {
    let mut out = Vec::with_capacity(7);
    if !r.recipient.contains(',') && !r.recipient.is_empty() {
        out.push((Field::Recipient, r.recipient.as_str()));
        if let Some((_, d)) = r.recipient.rsplit_once('@') {
            out.push((Field::Domain, d));
        }
    }
    // The null sender is a value too ("bounces"): indexed as "".
    out.push((Field::Sender, r.sender.as_str()));
    out.push((Field::Action, r.action.as_str()));
    for id in [
        r.id.as_str(),
        r.transaction.as_str(),
        r.message_id
            .as_deref()
            .unwrap_or("")
            .trim_matches(['<', '>']),
    ] {
        if !id.is_empty() {
            out.push((Field::Id, id));
        }
    }
    out
}

/// The index entries of one block: key → encoded slot list.
/// `None` slots (pruned records) have none.
pub fn entries(block: u64, records: &[Option<&HistoryRecord>]) -> Vec<([u8; 17], Vec<u8>)> {
    let mut slots: BTreeMap<[u8; 9], Vec<usize>> = BTreeMap::new();
    let late_ms = |slot: usize| {
        records[slot].map_or(0, |r| {
            block.saturating_sub(super::codec::micros(r.ts)) / 1000
        })
    };
    for (slot, r) in records.iter().enumerate() {
        let Some(r) = r else { continue };
        for (field, v) in values(r) {
            let s = slots.entry(prefix(field, v)).or_default();
            // A record's ids may coincide (a queue id used as transaction).
            if s.last() != Some(&slot) {
                s.push(slot);
            }
        }
    }
    slots
        .into_iter()
        .map(|(p, s)| {
            let timed = p[0] == Field::Action as u8;
            let mut v = Vec::with_capacity(s.len() * if timed { 2 } else { 1 } + 1);
            let mut prev = 0usize;
            for slot in s {
                // Ascending: store the gaps, mostly one byte each.
                put_varint(&mut v, (slot - prev) as u64);
                if timed {
                    put_varint(&mut v, late_ms(slot));
                }
                prev = slot;
            }
            (key(&p, block), v)
        })
        .collect()
}

/// The slots the entry under `key` lists, each with its record's time as
/// milliseconds before the block id (0 where the entry does not say).
pub fn timed_slots(key: &[u8], value: &[u8]) -> Result<Vec<(usize, u64)>, CodecError> {
    let timed = key.first() == Some(&(Field::Action as u8));
    let mut rd = Reader::new(value);
    let mut out = Vec::new();
    let mut at = 0usize;
    while !rd.at_end() {
        at += rd.varint()? as usize;
        let late = if timed { rd.varint()? } else { 0 };
        out.push((at, late));
    }
    Ok(out)
}

/// The slots the entry under `key` lists.
pub fn slots(key: &[u8], value: &[u8]) -> Result<Vec<usize>, CodecError> {
    Ok(timed_slots(key, value)?
        .into_iter()
        .map(|(s, _)| s)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::HistoryAction;

    #[test]
    fn one_entry_per_value_per_block_with_its_slots() {
        let r = |rcpt: &str, id: &str| HistoryRecord {
            action: HistoryAction::Deliver,
            recipient: rcpt.into(),
            sender: "s@example.net".into(),
            id: id.into(),
            transaction: id.into(),
            message_id: Some(format!("<{id}@m>")),
            ..Default::default()
        };
        let recs = [
            r("a@x.example", "q1"),
            r("B@X.example", "q2"),
            r("b@x.example", "q3"),
        ];
        let refs: Vec<Option<&HistoryRecord>> = recs.iter().map(Some).collect();
        let e = entries(7, &refs);
        let find = |f: Field, v: &str| {
            let k = key(&prefix(f, v), 7);
            e.iter()
                .find(|(ek, _)| *ek == k)
                .map(|(ek, s)| slots(ek, s).unwrap())
        };
        assert_eq!(find(Field::Recipient, "b@x.example"), Some(vec![1, 2]));
        assert_eq!(find(Field::Domain, "X.EXAMPLE"), Some(vec![0, 1, 2]));
        assert_eq!(find(Field::Sender, "s@example.net"), Some(vec![0, 1, 2]));
        assert_eq!(find(Field::Action, "DELIVER"), Some(vec![0, 1, 2]));
        assert_eq!(
            find(Field::Id, "q2"),
            Some(vec![1]),
            "queue id = tx: one slot"
        );
        assert_eq!(find(Field::Id, "q3@m"), Some(vec![2]));
        // rcpt ×2, domain, sender, action, q1..q3, three message-ids.
        assert_eq!(e.len(), 11);
        assert_eq!(block_of(&e[0].0), Some(7));
    }
}
