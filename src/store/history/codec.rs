//! The on-disk encoding of history records: a compact binary record
//! (version 1) and the block that holds a run of them, compressed together.
//!
//! A record is its fields in a fixed order — integers as LEB128 varints,
//! strings as a varint length and the bytes, optional values behind a
//! presence byte — with its time stored as the (small) offset before its
//! block's id, itself a time. A block is
//! `[version][record count][raw length][zstd frame of the records]`, each
//! record behind its own length so one slot is found without decoding the
//! others. Compressing a block rather than a record is what makes repeated
//! strings (senders, transports, hosts, reply texts) nearly free.
//!
//! This module owns only bytes ⇄ records; the keys, trees and indexes are
//! the parent module's.

use std::collections::BTreeMap;

use super::{HistoryAction, HistoryRecord};

/// The block format written today. Readers refuse any other.
pub const BLOCK_VERSION: u8 = 1;
/// zstd level: 1 is within a few per cent of level 3's ratio on history
/// blocks and about twice as fast to write.
const ZSTD_LEVEL: i32 = 1;
/// A decoded block larger than this is corrupt, not history.
const MAX_RAW_BLOCK: u64 = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown block version {0}")]
    Version(u8),
    #[error("unknown action code {0}")]
    Action(u8),
    #[error("invalid UTF-8 in a text field")]
    Utf8,
    #[error("decompression: {0}")]
    Zstd(String),
    #[error("slot {0} beyond the block's {1} records")]
    Slot(usize, usize),
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over encoded bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(CodecError::Truncated(self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Truncated(self.pos))
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CodecError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(CodecError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.varint()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Utf8)
    }

    fn opt_string(&mut self) -> Result<Option<String>, CodecError> {
        match self.byte()? {
            0 => Ok(None),
            _ => Ok(Some(self.string()?)),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// An action's code on disk: its position in [`HistoryAction::ALL`].
pub fn action_code(a: HistoryAction) -> u8 {
    HistoryAction::ALL
        .iter()
        .position(|x| *x == a)
        .expect("every action is in ALL") as u8
}

/// Microseconds since the epoch (a negative or NaN time is 0).
pub fn micros(ts: f64) -> u64 {
    if ts.is_finite() && ts > 0.0 {
        (ts * 1_000_000.0).round() as u64
    } else {
        0
    }
}

/// Append the encoding of `r`, its time relative to `base` (µs): the block
/// id, never earlier than a record's time except for a clock step back,
/// hence the zigzag.
pub fn encode_record(out: &mut Vec<u8>, r: &HistoryRecord, base: u64) {
    let delta = base as i64 - micros(r.ts) as i64;
    put_varint(out, ((delta << 1) ^ (delta >> 63)) as u64);
    out.push(action_code(r.action));
    for s in [
        &r.id,
        &r.transaction,
        &r.sender,
        &r.recipient,
        &r.transportid,
        &r.client_ip,
        &r.serverid,
        &r.connection,
        &r.reason,
    ] {
        put_str(out, s);
    }
    for s in [
        &r.message_id,
        &r.remote_host,
        &r.remote_ip,
        &r.actor,
        &r.node,
    ] {
        put_opt_str(out, s);
    }
    put_varint(out, r.size);
    put_varint(out, u64::from(r.attempt));
    match r.next_retry {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_varint(out, micros(t));
        }
    }
    put_varint(out, r.metadata.len() as u64);
    for (k, v) in &r.metadata {
        put_str(out, k);
        put_str(out, v);
    }
}

pub fn decode_record(rd: &mut Reader<'_>, base: u64) -> Result<HistoryRecord, CodecError> {
    let z = rd.varint()?;
    let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
    let ts_us = (base as i64 - delta).max(0) as u64;
    let code = rd.byte()?;
    let action = *HistoryAction::ALL
        .get(code as usize)
        .ok_or(CodecError::Action(code))?;
    let mut strings: [String; 9] = Default::default();
    for s in strings.iter_mut() {
        *s = rd.string()?;
    }
    let [id, transaction, sender, recipient, transportid, client_ip, serverid, connection, reason] =
        strings;
    let message_id = rd.opt_string()?;
    let remote_host = rd.opt_string()?;
    let remote_ip = rd.opt_string()?;
    let actor = rd.opt_string()?;
    let node = rd.opt_string()?;
    let size = rd.varint()?;
    let attempt = rd.varint()? as u32;
    let next_retry = match rd.byte()? {
        0 => None,
        _ => Some(rd.varint()? as f64 / 1_000_000.0),
    };
    let n = rd.varint()? as usize;
    let mut metadata = BTreeMap::new();
    for _ in 0..n {
        let k = rd.string()?;
        let v = rd.string()?;
        metadata.insert(k, v);
    }
    Ok(HistoryRecord {
        ts: ts_us as f64 / 1_000_000.0,
        action,
        id,
        transaction,
        message_id,
        sender,
        recipient,
        transportid,
        size,
        client_ip,
        serverid,
        connection,
        reason,
        metadata,
        remote_host,
        remote_ip,
        attempt,
        next_retry,
        actor,
        node,
    })
}

/// The stored form of a block of records whose id (a time in µs) is `base`.
/// A `None` slot is a pruned record: stored as an empty record, so the
/// slots after it keep their numbers (and their records their ids).
pub fn encode_block(records: &[Option<&HistoryRecord>], base: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(records.len() * 160);
    let mut one = Vec::with_capacity(256);
    for r in records {
        one.clear();
        if let Some(r) = r {
            encode_record(&mut one, r, base);
        }
        put_varint(&mut raw, one.len() as u64);
        raw.extend_from_slice(&one);
    }
    let packed = compress(&raw);
    let mut out = Vec::with_capacity(packed.len() + 12);
    out.push(BLOCK_VERSION);
    put_varint(&mut out, records.len() as u64);
    put_varint(&mut out, raw.len() as u64);
    out.extend_from_slice(&packed);
    out
}

/// zstd at [`ZSTD_LEVEL`] with one compression context per thread: making
/// a context per block was ~2% of the daemon's CPU under intake (the
/// history writer compresses a block per batch).
fn compress(raw: &[u8]) -> Vec<u8> {
    thread_local! {
        static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        match c.as_mut().map(|z| z.compress(raw)) {
            Some(Ok(packed)) => packed,
            _ => zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd compresses any input"),
        }
    })
}

/// How many records a stored block holds, from its header alone.
pub fn block_len(stored: &[u8]) -> Result<usize, CodecError> {
    let mut rd = Reader::new(stored);
    let v = rd.byte()?;
    if v != BLOCK_VERSION {
        return Err(CodecError::Version(v));
    }
    Ok(rd.varint()? as usize)
}

/// A decompressed block: decode every record or just some slots.
pub struct Block {
    raw: Vec<u8>,
    /// Byte offset and length of each record in `raw`.
    offsets: Vec<(usize, usize)>,
    base: u64,
}

impl Block {
    pub fn open(stored: &[u8], base: u64) -> Result<Block, CodecError> {
        let mut rd = Reader::new(stored);
        let v = rd.byte()?;
        if v != BLOCK_VERSION {
            return Err(CodecError::Version(v));
        }
        let count = rd.varint()? as usize;
        let raw_len = rd.varint()?;
        if raw_len > MAX_RAW_BLOCK {
            return Err(CodecError::Zstd(format!("block claims {raw_len} bytes")));
        }
        let raw = zstd::bulk::decompress(&stored[rd.pos..], raw_len as usize)
            .map_err(|e| CodecError::Zstd(e.to_string()))?;
        let mut offsets = Vec::with_capacity(count);
        let mut rr = Reader::new(&raw);
        for _ in 0..count {
            let n = rr.varint()? as usize;
            offsets.push((rr.pos, n));
            rr.bytes(n)?;
        }
        Ok(Block { raw, offsets, base })
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The record in `slot`; `None` for a pruned one.
    pub fn record(&self, slot: usize) -> Result<Option<HistoryRecord>, CodecError> {
        let at = *self
            .offsets
            .get(slot)
            .ok_or(CodecError::Slot(slot, self.offsets.len()))?;
        let (at, len) = at;
        if len == 0 {
            return Ok(None);
        }
        decode_record(&mut Reader::new(&self.raw[at..at + len]), self.base).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(action: HistoryAction) -> HistoryRecord {
        HistoryRecord {
            ts: 1_780_000_000.123456,
            action,
            id: "0001a2b3c4d5e6f7".into(),
            transaction: "tx-1".into(),
            message_id: Some("<m1@example.net>".into()),
            sender: "s@example.net".into(),
            recipient: "Bob@Example.org".into(),
            transportid: "mx".into(),
            size: 123_456,
            client_ip: "2001:db8::1".into(),
            serverid: "inbound".into(),
            connection: "c-42".into(),
            reason: "250 2.0.0 Ok: queued as ABC — ünïcode".into(),
            metadata: [("decided_by".to_string(), "rcptto".to_string())].into(),
            remote_host: Some("mail.example.org".into()),
            remote_ip: Some("192.0.2.7".into()),
            attempt: 3,
            next_retry: Some(1_780_000_600.5),
            actor: Some("console".into()),
            node: Some("mx1".into()),
        }
    }

    #[test]
    fn every_action_round_trips_full_and_empty() {
        for action in HistoryAction::ALL {
            let base = micros(1_780_000_001.0);
            let empty = HistoryRecord {
                ts: 1_780_000_000.5,
                action,
                ..Default::default()
            };
            let recs = [full(action), empty];
            let slots = [Some(&recs[0]), None, Some(&recs[1])];
            let stored = encode_block(&slots, base);
            assert_eq!(block_len(&stored).unwrap(), 3);
            let b = Block::open(&stored, base).unwrap();
            assert_eq!(b.len(), 3);
            for (slot, want) in slots.iter().enumerate() {
                let got = b.record(slot).unwrap();
                assert_eq!(got.as_ref(), *want, "{action} slot {slot}");
            }
            assert_eq!(b.record(3), Err(CodecError::Slot(3, 3)));
        }
    }

    #[test]
    fn a_clock_step_back_and_odd_times_survive() {
        // A record "after" its block (the clock stepped back), and time 0.
        let base = micros(1000.0);
        for ts in [1000.25, 0.0, 999.999999] {
            let r = HistoryRecord {
                ts,
                ..Default::default()
            };
            let mut buf = Vec::new();
            encode_record(&mut buf, &r, base);
            let got = decode_record(&mut Reader::new(&buf), base).unwrap();
            assert_eq!(got.ts, ts);
        }
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        let rec = full(HistoryAction::Deliver);
        let stored = encode_block(&[Some(&rec)], 5);
        assert_eq!(
            Block::open(&[9, 1, 1], 0).err(),
            Some(CodecError::Version(9))
        );
        for cut in 0..stored.len() {
            let _ = Block::open(&stored[..cut], 5).and_then(|b| b.record(0));
        }
        let mut flipped = stored.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let _ = Block::open(&flipped, 5).and_then(|b| b.record(0));
        // Garbage inside a valid frame: a record that does not parse.
        let raw = [5u8, 0xff, 0xff, 0xff, 0xff, 0xff];
        let packed = zstd::bulk::compress(&raw, 1).unwrap();
        let mut forged = vec![BLOCK_VERSION, 1, raw.len() as u8];
        forged.extend_from_slice(&packed);
        assert!(Block::open(&forged, 0).and_then(|b| b.record(0)).is_err());
    }
}
