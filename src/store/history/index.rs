//! The history indexes: which slots of which blocks hold a recipient,
//! domain, sender, action or id.
//!
//! Indexes are built per *segment* — a run of consecutive blocks (up to
//! [`SEG_MAX_RECORDS`] records or [`SEG_MAX_BLOCKS`] blocks) — and written
//! once, when the segment is full, as 256 sorted arrays plus a table of the
//! segment's blocks, under keys that start with the segment's first block
//! id. Keys written in rising order and never updated are what sled stores
//! compactly; one small key per record per field, hashed into random places
//! of a tree, cost about ten times the bytes (measured: 784 bytes/record).
//!
//! `hseg` keys: `[first block id, u64 BE][bucket, u16 BE]`, bucket 0–255
//! an array of entries, [`META`] the block table. An entry is 8 bytes:
//! the low 32 bits of the value's 64-bit hash (whose top 8 bits chose the
//! bucket), the block's position in the segment (u16) and the slot (u16,
//! or [`ALL_SLOTS`]: a value in many slots of a block is one entry and the
//! query reads the whole block). A hash collision only makes a query read
//! a block it then filters out: every query checks the decoded records.
//!
//! The segment being filled lives in memory ([`OpenSegment`]) and is
//! rebuilt from its blocks when the database is opened.
//!
//! This module owns only the index layout; trees and locking are the
//! parent's.

use std::collections::BTreeMap;

use super::codec::{put_varint, CodecError, Reader};
use super::{HistoryAction, HistoryRecord};

/// The indexed fields, mixed into the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Field {
    Recipient = b'r',
    Domain = b'd',
    Sender = b's',
    Action = b'a',
    Id = b'i',
}

pub const SEG_MAX_RECORDS: usize = 32_768;
pub const SEG_MAX_BLOCKS: usize = 1024;
/// The bucket key of a segment's block table.
pub const META: u16 = 0xffff;
/// An entry meaning "several slots of this block: read it all".
pub const ALL_SLOTS: u16 = 0xffff;
/// A value in at least this many slots of a block gets one entry.
const SHARED_AT: usize = 3;
const META_VERSION: u8 = 1;

/// FNV-1a, 64 bits, of the field and the lowercased value: stable across
/// builds and versions (it is on disk).
pub fn hash(field: Field, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(field as u8).chain(value.bytes().map(|b| b.to_ascii_lowercase())) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn bucket(h: u64) -> u16 {
    (h >> 56) as u16
}

pub fn seg_key(first: u64, bucket: u16) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..8].copy_from_slice(&first.to_be_bytes());
    k[8..].copy_from_slice(&bucket.to_be_bytes());
    k
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

/// One block in a segment's table: its id and how many records of each
/// action it holds (what the console's charts count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockInfo {
    pub id: u64,
    /// The newest record's time (µs): retention removes the block once
    /// this is past, whatever the block's own (write) time.
    pub newest: u64,
    pub actions: Vec<(HistoryAction, u32)>,
}

/// The segment being filled: its blocks and entries, in memory.
#[derive(Debug, Default)]
pub struct OpenSegment {
    pub blocks: Vec<BlockInfo>,
    pub records: usize,
    /// (hash, block position, slot).
    entries: Vec<(u64, u16, u16)>,
}

impl OpenSegment {
    pub fn first(&self) -> Option<u64> {
        self.blocks.first().map(|b| b.id)
    }

    pub fn last(&self) -> Option<u64> {
        self.blocks.last().map(|b| b.id)
    }

    pub fn is_full(&self) -> bool {
        self.records >= SEG_MAX_RECORDS || self.blocks.len() >= SEG_MAX_BLOCKS
    }

    /// Index a block (`None` slots are pruned records).
    pub fn add_block(&mut self, id: u64, slots: &[Option<&HistoryRecord>]) {
        let pos = self.blocks.len() as u16;
        let mut by_value: BTreeMap<u64, Vec<u16>> = BTreeMap::new();
        let mut actions: BTreeMap<u8, (HistoryAction, u32)> = BTreeMap::new();
        let mut newest = 0u64;
        for (slot, r) in slots.iter().enumerate() {
            let Some(r) = r else { continue };
            self.records += 1;
            newest = newest.max(super::codec::micros(r.ts));
            actions
                .entry(super::codec::action_code(r.action))
                .or_insert((r.action, 0))
                .1 += 1;
            for (field, v) in values(r) {
                let s = by_value.entry(hash(field, v)).or_default();
                // A record's ids may coincide (a queue id used as transaction).
                if s.last() != Some(&(slot as u16)) {
                    s.push(slot as u16);
                }
            }
        }
        for (h, s) in by_value {
            if s.len() >= SHARED_AT {
                self.entries.push((h, pos, ALL_SLOTS));
            } else {
                self.entries
                    .extend(s.into_iter().map(|slot| (h, pos, slot)));
            }
        }
        self.blocks.push(BlockInfo {
            id,
            newest,
            actions: actions.into_values().collect(),
        });
    }

    /// The (block id, slot) pairs listed for hash `h`, in order.
    pub fn lookup(&self, h: u64) -> Vec<(u64, u16)> {
        self.entries
            .iter()
            .filter(|(eh, _, _)| *eh == h)
            .map(|(_, pos, slot)| (self.blocks[*pos as usize].id, *slot))
            .collect()
    }

    /// The keys and values that store this segment.
    pub fn encode(&mut self) -> Vec<([u8; 10], Vec<u8>)> {
        let first = self.first().unwrap_or(0);
        self.entries
            .sort_unstable_by_key(|(h, pos, slot)| (bucket(*h), *h as u32, *pos, *slot));
        let mut out: Vec<([u8; 10], Vec<u8>)> = Vec::new();
        for (h, pos, slot) in &self.entries {
            let b = bucket(*h);
            if out.last().is_none_or(|(k, _)| k[8..] != b.to_be_bytes()) {
                out.push((seg_key(first, b), Vec::new()));
            }
            let v = &mut out.last_mut().expect("pushed above").1;
            v.extend_from_slice(&(*h as u32).to_be_bytes());
            v.extend_from_slice(&pos.to_be_bytes());
            v.extend_from_slice(&slot.to_be_bytes());
        }
        out.push((seg_key(first, META), encode_meta(&self.blocks)));
        out
    }
}

fn encode_meta(blocks: &[BlockInfo]) -> Vec<u8> {
    let mut v = vec![META_VERSION];
    put_varint(&mut v, blocks.len() as u64);
    let mut prev = 0u64;
    for b in blocks {
        put_varint(&mut v, b.id - prev);
        prev = b.id;
        // Zigzag: a clock step back can put a record after its block.
        let d = b.id as i64 - b.newest as i64;
        put_varint(&mut v, ((d << 1) ^ (d >> 63)) as u64);
        put_varint(&mut v, b.actions.len() as u64);
        for (a, n) in &b.actions {
            v.push(super::codec::action_code(*a));
            put_varint(&mut v, u64::from(*n));
        }
    }
    v
}

/// A stored segment's block table.
pub fn decode_meta(v: &[u8]) -> Result<Vec<BlockInfo>, CodecError> {
    let mut rd = Reader::new(v);
    let ver = rd.varint()? as u8;
    if ver != META_VERSION {
        return Err(CodecError::Version(ver));
    }
    let n = rd.varint()? as usize;
    let mut out = Vec::with_capacity(n.min(SEG_MAX_BLOCKS));
    let mut prev = 0u64;
    for _ in 0..n {
        prev += rd.varint()?;
        let z = rd.varint()?;
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let newest = (prev as i64 - d).max(0) as u64;
        let k = rd.varint()? as usize;
        let mut actions = Vec::with_capacity(k.min(16));
        for _ in 0..k {
            let code = rd.varint()? as u8;
            let a = *HistoryAction::ALL
                .get(code as usize)
                .ok_or(CodecError::Action(code))?;
            actions.push((a, rd.varint()? as u32));
        }
        out.push(BlockInfo {
            id: prev,
            newest,
            actions,
        });
    }
    Ok(out)
}

/// The bucket key to read for hash `h` in the segment starting at `first`.
pub fn bucket_key(first: u64, h: u64) -> [u8; 10] {
    seg_key(first, bucket(h))
}

/// The (block position, slot) entries for hash `h` in a stored bucket.
pub fn lookup_stored(v: &[u8], h: u64) -> Vec<(u16, u16)> {
    let want = h as u32;
    let n = v.len() / 8;
    let at = |i: usize| u32::from_be_bytes(v[i * 8..i * 8 + 4].try_into().expect("4 bytes"));
    // First entry not below `want`.
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if at(mid) < want {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut out = Vec::new();
    while lo < n && at(lo) == want {
        let e = &v[lo * 8..lo * 8 + 8];
        out.push((
            u16::from_be_bytes([e[4], e[5]]),
            u16::from_be_bytes([e[6], e[7]]),
        ));
        lo += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_finds_every_value_stored_and_in_memory() {
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
        let slots: Vec<Option<&HistoryRecord>> =
            vec![Some(&recs[0]), None, Some(&recs[1]), Some(&recs[2])];
        let mut seg = OpenSegment::default();
        seg.add_block(100, &slots[..2]);
        seg.add_block(200, &slots[2..]);
        assert_eq!(seg.records, 3);
        let b = hash(Field::Recipient, "b@x.example");
        assert_eq!(seg.lookup(b), vec![(200, 0), (200, 1)]);
        // In three slots of no block, in one each of two: entries per slot.
        assert_eq!(
            seg.lookup(hash(Field::Domain, "X.EXAMPLE")),
            vec![(100, 0), (200, 0), (200, 1)]
        );
        assert_eq!(seg.lookup(hash(Field::Id, "q3@m")), vec![(200, 1)]);
        assert_eq!(
            seg.lookup(hash(Field::Id, "q2")),
            vec![(200, 0)],
            "id = tx: one"
        );
        let stored = seg.encode();
        let get = |k: [u8; 10]| {
            stored
                .iter()
                .find(|(sk, _)| *sk == k)
                .map(|(_, v)| v.clone())
        };
        let meta = decode_meta(&get(seg_key(100, META)).unwrap()).unwrap();
        assert_eq!(meta.iter().map(|b| b.id).collect::<Vec<_>>(), [100, 200]);
        assert_eq!(meta[1].actions, vec![(HistoryAction::Deliver, 2)]);
        let found = lookup_stored(&get(bucket_key(100, b)).unwrap(), b);
        assert_eq!(found, vec![(1, 0), (1, 1)]);
        assert!(lookup_stored(&get(bucket_key(100, b)).unwrap(), b ^ 1).is_empty());
    }

    #[test]
    fn many_slots_of_one_value_are_one_entry() {
        let recs: Vec<HistoryRecord> = (0..50)
            .map(|i| HistoryRecord {
                recipient: format!("u{i}@same.example"),
                ..Default::default()
            })
            .collect();
        let slots: Vec<Option<&HistoryRecord>> = recs.iter().map(Some).collect();
        let mut seg = OpenSegment::default();
        seg.add_block(7, &slots);
        assert_eq!(
            seg.lookup(hash(Field::Domain, "same.example")),
            vec![(7, ALL_SLOTS)]
        );
        assert_eq!(
            seg.lookup(hash(Field::Recipient, "u9@same.example")),
            vec![(7, 9)]
        );
    }
}
