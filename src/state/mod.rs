//! Shared state (issue 17): rate limits, greylisting, `memory.*`, `cache()`
//! and fleet-wide connection counts, in this process (`[state] backend =
//! "local"`, one node) or in Redis (`"redis"`, every node sharing it).
//!
//! [`StateStore`] is the facade everyone else uses: it adds the key prefix
//! (`[state] prefix`, default `sluice:`), bounds every operation by
//! `[state] timeout` (so no session waits on a dead Redis longer than
//! that), counts operations and errors in the metrics, and tells callers
//! what `[state] on_error` wants when the backend fails. The daemon builds
//! one store at start and hands the same `Arc` to every config epoch, so a
//! reload does not reset counters.
//!
//! Key layout under the prefix (the same on both backends):
//!
//! | key | what | value |
//! |---|---|---|
//! | `m:KEY` | `memory.*`, greylist entries | JSON text (`memory.incr`: an integer) |
//! | `c:KEY` | `cache()` results | JSON array of the function's results |
//! | `r:KEY` | `rate.*` | GCRA theoretical arrival time, µs since the epoch |
//! | `conn:IP` | fleet-wide connections per client IP (Redis only) | sorted set `node:conn` → expiry |
//!
//! Rate limits are GCRA ([`gcra`]): `limit` events per `period`, bursts up
//! to `limit`; `count` is how many of the window's `limit` are used. The
//! local backend and the Redis script compute it with the same integer
//! arithmetic, so both backends give the same answers.
//!
//! This module must not know about Lua or SMTP: values are strings the
//! API encodes; the policy API ([`crate::policy::api::state`]) and the
//! listener ([`crate::smtp::server`]) are its users.

pub mod local;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{StateBackend, StateConfig, StateOnError};

pub use local::LocalBackend;
pub use redis::RedisBackend;

/// How long a fleet connection slot lives without a heartbeat (a crashed
/// node's connections stop counting after this).
pub const CONN_SLOT_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    Config(String),
    #[error("state backend: {0}")]
    Backend(String),
    #[error("state backend: no answer within {0:?}")]
    Timeout(Duration),
    /// The stored value does not fit the operation (incr on a string).
    #[error("{0}")]
    Value(String),
}

impl StateError {
    /// A failure of the backend (on_error applies), not of the caller.
    pub fn is_backend(&self) -> bool {
        matches!(self, StateError::Backend(_) | StateError::Timeout(_))
    }
}

/// The answer of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RateAnswer {
    pub allowed: bool,
    /// Events counted in the window after this check (1..=limit when allowed).
    pub count: u64,
}

/// GCRA on the stored theoretical arrival time `tat` (µs, 0 = none):
/// returns the answer and the new `tat` to store (None: store nothing).
pub fn gcra(
    tat: u64,
    limit: u64,
    period_us: u64,
    cost: u64,
    peek: bool,
    now_us: u64,
) -> (RateAnswer, Option<u64>) {
    if limit == 0 {
        return (
            RateAnswer {
                allowed: false,
                count: 0,
            },
            None,
        );
    }
    let interval = (period_us / limit).max(1);
    let tat = tat.max(now_us);
    let new_tat = tat.saturating_add(cost.saturating_mul(interval));
    let allowed = new_tat <= now_us.saturating_add(period_us);
    let count = |x: u64| (x - now_us).div_ceil(interval);
    if peek {
        (
            RateAnswer {
                allowed,
                count: count(tat),
            },
            None,
        )
    } else if allowed {
        (
            RateAnswer {
                allowed: true,
                count: count(new_tat),
            },
            Some(new_tat),
        )
    } else {
        (
            RateAnswer {
                allowed: false,
                count: count(tat),
            },
            None,
        )
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

enum Backend {
    Local(LocalBackend),
    Redis(Box<RedisBackend>),
}

pub struct StateStore {
    backend: Backend,
    prefix: String,
    timeout: Duration,
    on_error: StateOnError,
    fleet_connections: bool,
    /// This process in connection slot members.
    node: String,
    /// Fleet connection slots this node holds: member → key.
    slots: Mutex<HashMap<String, String>>,
}

impl StateStore {
    /// Build the store; Redis is connected on first use. Spawns the local
    /// sweeper / Redis heartbeat when called inside a Tokio runtime.
    pub fn new(cfg: &StateConfig) -> Result<Arc<StateStore>, StateError> {
        let backend = match cfg.backend {
            StateBackend::Local => Backend::Local(LocalBackend::new(cfg.max_memory)),
            StateBackend::Redis => Backend::Redis(Box::new(RedisBackend::new(
                &cfg.redis_url,
                cfg.timeout,
                cfg.redis_ca_file.as_deref(),
            )?)),
        };
        let store = Arc::new(StateStore {
            backend,
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            on_error: cfg.on_error,
            fleet_connections: cfg.fleet_connections,
            node: crate::ids::new_id(),
            slots: Mutex::new(HashMap::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&store);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(CONN_SLOT_TTL / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(s) = weak.upgrade() else { return };
                    s.maintain().await;
                }
            });
        }
        Ok(store)
    }

    /// A local store with defaults (tests, `sluice test-script`).
    pub fn local() -> Arc<StateStore> {
        Self::new(&StateConfig::default()).expect("local state store")
    }

    pub fn on_error(&self) -> StateOnError {
        self.on_error
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        }
    }

    /// Periodic work: expire local keys, refresh this node's fleet slots.
    async fn maintain(&self) {
        match &self.backend {
            Backend::Local(l) => {
                l.sweep();
                crate::metrics::state_evictions(
                    l.evictions.swap(0, std::sync::atomic::Ordering::Relaxed),
                );
            }
            Backend::Redis(r) => {
                let slots: Vec<(String, String)> = self
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(m, k)| (k.clone(), m.clone()))
                    .collect();
                if let Err(e) = self
                    .bounded("conn", r.conn_refresh(&slots, CONN_SLOT_TTL))
                    .await
                {
                    tracing::warn!(error = %e, slots = slots.len(), "state: connection slot heartbeat failed");
                }
            }
        }
    }

    fn key(&self, space: &str, key: &str) -> String {
        format!("{}{space}:{key}", self.prefix)
    }

    /// Run one backend operation within the timeout, counting it.
    async fn bounded<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Timeout(self.timeout)),
        };
        crate::metrics::state_op(op, r.as_ref().err().is_some_and(|e| e.is_backend()));
        r
    }

    fn local_evictions(&self) {
        if let Backend::Local(l) = &self.backend {
            let n = l.evictions.swap(0, std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                crate::metrics::state_evictions(n);
            }
        }
    }

    /// `rate.check` (`peek = false`) and `rate.peek`.
    pub async fn rate(
        &self,
        key: &str,
        limit: u64,
        period: Duration,
        cost: u64,
        peek: bool,
    ) -> Result<RateAnswer, StateError> {
        let k = self.key("r", key);
        let period_us = (period.as_micros() as u64).max(1);
        let r = match &self.backend {
            Backend::Local(l) => Ok(l.rate(&k, limit, period_us, cost, peek, now_us())),
            Backend::Redis(r) => {
                self.bounded("rate", r.rate(&k, limit, period_us, cost, peek))
                    .await
            }
        };
        self.local_evictions();
        r
    }

    /// `memory.get` (space "m") and cache look-ups (space "c").
    pub async fn get(&self, space: &str, key: &str) -> Result<Option<String>, StateError> {
        let k = self.key(space, key);
        match &self.backend {
            Backend::Local(l) => Ok(l.get(&k)),
            Backend::Redis(r) => self.bounded("get", r.get(&k)).await,
        }
    }

    pub async fn set(
        &self,
        space: &str,
        key: &str,
        value: String,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let k = self.key(space, key);
        let r = match &self.backend {
            Backend::Local(l) => {
                l.set(&k, value, ttl);
                Ok(())
            }
            Backend::Redis(r) => self.bounded("set", r.set(&k, value, ttl)).await,
        };
        self.local_evictions();
        r
    }

    pub async fn incr(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
        let k = self.key("m", key);
        let r = match &self.backend {
            Backend::Local(l) => l.incr(&k, by, ttl),
            Backend::Redis(r) => self.bounded("incr", r.incr(&k, by, ttl)).await,
        };
        self.local_evictions();
        r
    }

    /// Delete a key of one space; true if it existed.
    pub async fn delete(&self, space: &str, key: &str) -> Result<bool, StateError> {
        let k = self.key(space, key);
        match &self.backend {
            Backend::Local(l) => Ok(l.delete(&k)),
            Backend::Redis(r) => self.bounded("delete", r.delete(&[k])).await.map(|n| n > 0),
        }
    }

    /// `sluice state get KEY`: the memory value, the cache entry and the
    /// rate limit state under that name, with their TTLs.
    pub async fn inspect(&self, key: &str) -> Result<serde_json::Value, StateError> {
        let mut out = serde_json::Map::new();
        out.insert("key".into(), key.into());
        for (space, name) in [("m", "memory"), ("c", "cache"), ("r", "rate")] {
            let k = self.key(space, key);
            let (v, ttl) = match &self.backend {
                Backend::Local(l) => (l.get(&k), l.ttl(&k)),
                Backend::Redis(r) => (
                    self.bounded("get", r.get(&k)).await?,
                    self.bounded("get", r.ttl(&k)).await?,
                ),
            };
            let Some(v) = v else { continue };
            let value = if space == "r" {
                let tat: u64 = v.parse().unwrap_or(0);
                serde_json::json!({
                    "window_used_seconds": tat.saturating_sub(now_us()) as f64 / 1e6,
                })
            } else {
                serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v))
            };
            out.insert(
                name.into(),
                serde_json::json!({
                    "value": value,
                    "ttl_seconds": ttl.flatten().map(|d| d.as_secs_f64()),
                }),
            );
        }
        Ok(serde_json::Value::Object(out))
    }

    /// `sluice state del KEY`: memory, cache and rate entries of that name.
    pub async fn delete_all(&self, key: &str) -> Result<u64, StateError> {
        let keys: Vec<String> = ["m", "c", "r"].iter().map(|s| self.key(s, key)).collect();
        match &self.backend {
            Backend::Local(l) => Ok(keys.iter().filter(|k| l.delete(k)).count() as u64),
            Backend::Redis(r) => self.bounded("delete", r.delete(&keys)).await,
        }
    }

    /// `sluice state stats`.
    pub async fn stats(&self) -> Result<serde_json::Value, StateError> {
        let m = crate::metrics::state_counts();
        let mut v = serde_json::json!({
            "backend": self.backend_name(),
            "prefix": self.prefix,
            "on_error": match self.on_error { StateOnError::Open => "open", StateOnError::Tempfail => "tempfail" },
            "operations": m.0,
            "errors": m.1,
            "evictions": m.2,
            "fleet_connection_slots": self.slots.lock().unwrap_or_else(|e| e.into_inner()).len(),
        });
        match &self.backend {
            Backend::Local(l) => {
                let (keys, bytes) = l.usage();
                v["keys"] = keys.into();
                v["bytes"] = bytes.into();
            }
            Backend::Redis(r) => {
                let (keys, dbsize, used) = self.bounded("stats", r.usage(&self.prefix)).await?;
                v["keys"] = keys.into();
                v["redis_dbsize"] = dbsize.into();
                v["redis_used_memory"] = used.into();
            }
        }
        Ok(v)
    }

    /// Does this store count connections across the fleet?
    pub fn counts_fleet_connections(&self) -> bool {
        self.fleet_connections && matches!(self.backend, Backend::Redis(_))
    }

    /// Take a fleet-wide connection slot for `ip` (Redis only; local:
    /// always true, the listener's own limiter counts). The returned guard
    /// gives it back when dropped.
    pub async fn conn_acquire(
        self: &Arc<Self>,
        ip: &str,
        conn_id: &str,
        max: usize,
    ) -> Result<Option<ConnSlotGuard>, StateError> {
        let Backend::Redis(r) = &self.backend else {
            return Ok(Some(ConnSlotGuard(None)));
        };
        if !self.fleet_connections {
            return Ok(Some(ConnSlotGuard(None)));
        }
        let key = self.key("conn", ip);
        let member = format!("{}:{conn_id}", self.node);
        let ok = self
            .bounded("conn", r.conn_acquire(&key, &member, max, CONN_SLOT_TTL))
            .await?;
        if !ok {
            return Ok(None);
        }
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(member.clone(), key.clone());
        Ok(Some(ConnSlotGuard(Some((self.clone(), key, member)))))
    }

    /// The benchmark: `n` rate checks in one Redis pipeline (local: a loop).
    pub async fn rate_batch(
        &self,
        keys: &[String],
        limit: u64,
        period: Duration,
    ) -> Result<usize, StateError> {
        let period_us = period.as_micros() as u64;
        match &self.backend {
            Backend::Local(l) => {
                for k in keys {
                    l.rate(&self.key("r", k), limit, period_us, 1, false, now_us());
                }
                Ok(keys.len())
            }
            Backend::Redis(r) => {
                let keys: Vec<String> = keys.iter().map(|k| self.key("r", k)).collect();
                r.rate_pipelined(&keys, limit, period_us).await
            }
        }
    }
}

/// A fleet connection slot; released (in the background) on drop.
pub struct ConnSlotGuard(Option<(Arc<StateStore>, String, String)>);

impl Drop for ConnSlotGuard {
    fn drop(&mut self) {
        let Some((store, key, member)) = self.0.take() else {
            return;
        };
        store
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&member);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Backend::Redis(r) = &store.backend {
                    // Failing here is harmless: the slot expires with its TTL.
                    let _ = store.bounded("conn", r.conn_release(&key, &member)).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_limit_then_denies_then_recovers() {
        let period = 60_000_000;
        let mut tat = 0;
        let mut now = 1_000_000_000;
        for i in 1..=3 {
            let (a, s) = gcra(tat, 3, period, 1, false, now);
            assert_eq!(
                a,
                RateAnswer {
                    allowed: true,
                    count: i
                }
            );
            tat = s.unwrap();
            now += 10;
        }
        let (a, s) = gcra(tat, 3, period, 1, false, now);
        assert_eq!(
            a,
            RateAnswer {
                allowed: false,
                count: 3
            }
        );
        assert!(s.is_none());
        // Peek does not count.
        let (a, s) = gcra(tat, 3, period, 1, true, now);
        assert!(!a.allowed && s.is_none() && a.count == 3);
        // One interval (20 s) later one more fits.
        let (a, _) = gcra(tat, 3, period, 1, false, now + 20_000_000);
        assert!(a.allowed, "{a:?}");
        // A cost above the limit never fits; limit 0 denies.
        assert!(!gcra(0, 3, period, 4, false, now).0.allowed);
        assert!(!gcra(0, 0, period, 1, false, now).0.allowed);
    }

    #[tokio::test]
    async fn namespaces_do_not_collide() {
        let s = StateStore::local();
        s.set("m", "k", "1".into(), None).await.unwrap();
        assert_eq!(s.get("c", "k").await.unwrap(), None);
        s.rate("k", 5, Duration::from_secs(10), 1, false)
            .await
            .unwrap();
        assert_eq!(s.get("m", "k").await.unwrap().as_deref(), Some("1"));
        let v = s.inspect("k").await.unwrap();
        assert!(v["memory"]["value"] == 1 && v["rate"].is_object(), "{v}");
        assert_eq!(s.delete_all("k").await.unwrap(), 2);
    }
}
