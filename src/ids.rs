//! Unique, time-sortable identifiers for connections, transactions and queue
//! entries: 16 lowercase hex digits of microseconds since the epoch shifted
//! left 8 bits plus a per-process sequence, kept strictly increasing, so ids
//! sort by creation time as strings and as bytes and never repeat across
//! restarts (the clock moves on).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST: AtomicU64 = AtomicU64::new(0);

fn next_raw() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
        << 8;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = if now > last { now } else { last + 1 };
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(cur) => last = cur,
        }
    }
}

/// A new id, e.g. "0641a2b3c4d5e600".
pub fn new_id() -> String {
    format!("{:016x}", next_raw())
}

/// Microseconds since the epoch encoded in an id, if it is one of ours.
pub fn id_time_micros(id: &str) -> Option<u64> {
    if id.len() != 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok().map(|v| v >> 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_are_unique() {
        let mut prev = new_id();
        for _ in 0..10_000 {
            let id = new_id();
            assert!(id > prev, "{id} <= {prev}");
            prev = id;
        }
        assert!(id_time_micros(&prev).unwrap() > 1_600_000_000_000_000);
    }
}
