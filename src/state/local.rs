//! The "local" backend: every key in this process, in 16 shards of a hash
//! map behind their own mutex. Owns TTL expiry (lazy on access, plus a
//! sweep [`LocalBackend::sweep`] the store runs every few seconds) and the
//! memory cap (`[state] max_memory`): past it, expired keys go first, then
//! the least recently used, each eviction counted in
//! `sluice_state_evictions_total`.
//!
//! It must not know about Lua or SMTP; values are opaque strings (JSON text
//! from the API) and counters, exactly as the Redis backend stores them, so
//! both answer alike.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{gcra, RateAnswer, StateError};

const SHARDS: usize = 16;
/// Bookkeeping bytes counted per key besides its key and value.
const OVERHEAD: usize = 64;

struct Entry {
    value: String,
    expires: Option<Instant>,
    last_used: u64,
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        key.len() + self.value.len() + OVERHEAD
    }
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    bytes: usize,
}

pub struct LocalBackend {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    cap_per_shard: usize,
    clock: AtomicU64,
    pub(super) evictions: AtomicU64,
}

impl LocalBackend {
    pub fn new(max_memory: usize) -> LocalBackend {
        LocalBackend {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            cap_per_shard: (max_memory / SHARDS).max(1024),
            clock: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The live entry of `key` (an expired one is removed).
    fn live<'a>(shard: &'a mut Shard, key: &str, now: Instant) -> Option<&'a mut Entry> {
        if shard.map.get(key).is_some_and(|e| !e.live(now)) {
            if let Some(e) = shard.map.remove(key) {
                shard.bytes -= e.size(key);
            }
            return None;
        }
        shard.map.get_mut(key)
    }

    fn put(&self, shard: &mut Shard, key: &str, value: String, expires: Option<Instant>) {
        let last_used = self.tick();
        let e = Entry {
            value,
            expires,
            last_used,
        };
        shard.bytes += e.size(key);
        if let Some(old) = shard.map.insert(key.to_string(), e) {
            shard.bytes -= old.size(key);
        }
        if shard.bytes > self.cap_per_shard {
            self.evict(shard, key);
        }
    }

    /// Over the cap: drop expired keys, then the least recently used down
    /// to 90 % of the cap (never `keep`, the key just written).
    fn evict(&self, shard: &mut Shard, keep: &str) {
        let now = Instant::now();
        let before = shard.map.len();
        shard.map.retain(|_, e| e.live(now));
        let mut evicted = before - shard.map.len();
        shard.bytes = shard.map.iter().map(|(k, e)| e.size(k)).sum();
        if shard.bytes > self.cap_per_shard {
            let target = self.cap_per_shard / 10 * 9;
            let mut by_age: Vec<(u64, String)> = shard
                .map
                .iter()
                .filter(|(k, _)| k.as_str() != keep)
                .map(|(k, e)| (e.last_used, k.clone()))
                .collect();
            by_age.sort_unstable();
            for (_, k) in by_age {
                if shard.bytes <= target {
                    break;
                }
                if let Some(e) = shard.map.remove(&k) {
                    shard.bytes -= e.size(&k);
                    evicted += 1;
                }
            }
        }
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    /// Remove every expired key; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut n = 0;
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let before = s.map.len();
            s.map.retain(|_, e| e.live(now));
            n += before - s.map.len();
            s.bytes = s.map.iter().map(|(k, e)| e.size(k)).sum();
        }
        n
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        let t = self.tick();
        let mut s = self.shard(key);
        let e = Self::live(&mut s, key, now)?;
        e.last_used = t;
        Some(e.value.clone())
    }

    pub fn set(&self, key: &str, value: String, ttl: Option<Duration>) {
        let expires = ttl.map(|t| Instant::now() + t);
        let mut s = self.shard(key);
        self.put(&mut s, key, value, expires);
    }

    /// Like Redis INCRBY, plus: a TTL given is set when the key has none.
    pub fn incr(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
        let now = Instant::now();
        let mut s = self.shard(key);
        let (cur, expires) = match Self::live(&mut s, key, now) {
            Some(e) => (
                e.value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| StateError::Value(format!("{key}: value is not an integer")))?,
                e.expires,
            ),
            None => (0, None),
        };
        let n = cur
            .checked_add(by)
            .ok_or_else(|| StateError::Value(format!("{key}: increment overflows")))?;
        let expires = expires.or(ttl.map(|t| now + t));
        self.put(&mut s, key, n.to_string(), expires);
        Ok(n)
    }

    pub fn delete(&self, key: &str) -> bool {
        let mut s = self.shard(key);
        match s.map.remove(key) {
            Some(e) => {
                s.bytes -= e.size(key);
                e.live(Instant::now())
            }
            None => false,
        }
    }

    /// Remaining TTL of a live key: `Some(None)` = no expiry.
    pub fn ttl(&self, key: &str) -> Option<Option<Duration>> {
        let now = Instant::now();
        let mut s = self.shard(key);
        let e = Self::live(&mut s, key, now)?;
        Some(e.expires.map(|x| x - now))
    }

    /// GCRA in one critical section; the same arithmetic as the Redis script.
    pub fn rate(
        &self,
        key: &str,
        limit: u64,
        period_us: u64,
        cost: u64,
        peek: bool,
        now_us: u64,
    ) -> RateAnswer {
        let now = Instant::now();
        let mut s = self.shard(key);
        let tat = Self::live(&mut s, key, now)
            .and_then(|e| e.value.parse::<u64>().ok())
            .unwrap_or(0);
        let (answer, store) = gcra(tat, limit, period_us, cost, peek, now_us);
        if let Some(new_tat) = store {
            let ttl = Duration::from_micros(new_tat.saturating_sub(now_us) + 1000);
            self.put(&mut s, key, new_tat.to_string(), Some(now + ttl));
        }
        answer
    }

    /// (keys, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(k, b), s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            (k + s.map.len(), b + s.bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_keys_are_gone() {
        let b = LocalBackend::new(1 << 20);
        b.set("a", "1".into(), Some(Duration::from_millis(20)));
        assert_eq!(b.get("a").as_deref(), Some("1"));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.get("a"), None);
        assert_eq!(b.incr("a", 2, None).unwrap(), 2);
    }

    #[test]
    fn the_cap_evicts_least_recently_used_and_counts_it() {
        let b = LocalBackend::new(16 * 4096);
        for i in 0..2000 {
            b.set(&format!("k{i}"), "x".repeat(100), None);
            // Keep k0 hot.
            assert!(b.get("k0").is_some(), "k0 evicted at {i}");
        }
        let (_, bytes) = b.usage();
        assert!(bytes <= 16 * 4096, "{bytes}");
        assert!(b.evictions.load(Ordering::Relaxed) > 1000);
        assert!(b.get("k1").is_none());
    }

    #[test]
    fn incr_keeps_the_first_ttl() {
        let b = LocalBackend::new(1 << 20);
        b.incr("c", 1, Some(Duration::from_secs(10))).unwrap();
        b.incr("c", 1, Some(Duration::from_secs(1000))).unwrap();
        let ttl = b.ttl("c").unwrap().unwrap();
        assert!(ttl <= Duration::from_secs(10));
        b.set("s", "\"x\"".into(), None);
        assert!(b.incr("s", 1, None).is_err());
    }
}
