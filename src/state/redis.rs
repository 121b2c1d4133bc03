//! The "redis" backend: one [`ConnectionManager`] (multiplexed, reconnects
//! by itself) per process, connected on first use so a Redis that is down
//! at start does not stop the daemon. Every operation is one round trip;
//! the read-modify-write ones (rate, incr with TTL, connection slots) are
//! server-side Lua scripts (EVALSHA, EVAL after a Redis restart), so they
//! are atomic across every node sharing the database, and rate limits use
//! the Redis server's clock (`TIME`), not each node's.
//!
//! Owns the Redis wire format only; the caller ([`super::StateStore`])
//! adds the key prefix, the timeout and the `on_error` policy.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::OnceCell;

use super::{RateAnswer, StateError};

/// GCRA, the same arithmetic as [`super::gcra`] (integers in µs; Lua's
/// numbers are doubles, exact below 2^53). Returns {allowed, count}.
const RATE_LUA: &str = r#"
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local peek = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if limit <= 0 then return {0, 0} end
local interval = math.floor(period / limit)
if interval < 1 then interval = 1 end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allowed = new_tat <= now + period
local function count(x) return math.floor((x - now + interval - 1) / interval) end
if peek then return {allowed and 1 or 0, count(tat)} end
if not allowed then return {0, count(tat)} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return {1, count(new_tat)}
"#;

/// INCRBY, and a TTL (ms) set when the key has none.
const INCR_LUA: &str = r#"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return v
"#;

/// A connection slot: a sorted set per client IP, members "node:conn",
/// scores = expiry (ms, server clock). Expired members (a crashed node's)
/// drop out; below the limit the member is added. Returns 1 or 0.
const CONN_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// Heartbeat: push the expiry of live members (only those still present).
const CONN_REFRESH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[i - 1], 'XX', now + ttl, ARGV[i]) end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return #KEYS
"#;

pub struct RedisBackend {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    rate: Script,
    incr: Script,
    conn_acquire: Script,
    conn_refresh: Script,
}

fn err(e: redis::RedisError) -> StateError {
    StateError::Backend(e.to_string())
}

impl RedisBackend {
    /// `ca_file`: PEM roots for rediss:// (else the Mozilla roots). TLS is
    /// rustls; its provider is the only one compiled in (ring), which
    /// rustls installs as the process default on first use.
    pub fn new(
        url: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<RedisBackend, StateError> {
        let client = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    StateError::Config(format!("state.redis_ca_file: {}: {e}", path.display()))
                })?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(url),
        }
        .map_err(|e| StateError::Config(format!("state.redis_url: {e}")))?;
        Ok(RedisBackend {
            client,
            conn: OnceCell::new(),
            timeout,
            rate: Script::new(RATE_LUA),
            incr: Script::new(INCR_LUA),
            conn_acquire: Script::new(CONN_LUA),
            conn_refresh: Script::new(CONN_REFRESH_LUA),
        })
    }

    /// The shared connection; connects on first use (and after a failed
    /// first attempt, on the next call).
    async fn conn(&self) -> Result<ConnectionManager, StateError> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        self.conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), cfg))
            .await
            .cloned()
            .map_err(err)
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn().await?.get(key).await.map_err(err)
    }

    pub async fn set(
        &self,
        key: &str,
        value: String,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        match ttl {
            Some(t) => c
                .pset_ex::<_, _, ()>(key, value, (t.as_millis() as u64).max(1))
                .await
                .map_err(err),
            None => c.set::<_, _, ()>(key, value).await.map_err(err),
        }
    }

    pub async fn incr(&self, key: &str, by: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
        let mut c = self.conn().await?;
        self.incr
            .key(key)
            .arg(by)
            .arg(ttl.map(|t| (t.as_millis() as u64).max(1)).unwrap_or(0))
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) {
                    StateError::Value(format!("{key}: {e}"))
                } else {
                    err(e)
                }
            })
    }

    pub async fn delete(&self, keys: &[String]) -> Result<u64, StateError> {
        self.conn().await?.del(keys).await.map_err(err)
    }

    /// Remaining TTL: None = no key, Some(None) = no expiry.
    pub async fn ttl(&self, key: &str) -> Result<Option<Option<Duration>>, StateError> {
        let ms: i64 = self.conn().await?.pttl(key).await.map_err(err)?;
        Ok(match ms {
            -2 => None,
            -1 => Some(None),
            ms => Some(Some(Duration::from_millis(ms.max(0) as u64))),
        })
    }

    pub async fn rate(
        &self,
        key: &str,
        limit: u64,
        period_us: u64,
        cost: u64,
        peek: bool,
    ) -> Result<RateAnswer, StateError> {
        let mut c = self.conn().await?;
        let (allowed, count): (i64, i64) = self
            .rate
            .key(key)
            .arg(limit)
            .arg(period_us)
            .arg(cost)
            .arg(if peek { "1" } else { "0" })
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(RateAnswer {
            allowed: allowed == 1,
            count: count.max(0) as u64,
        })
    }

    /// Many rate checks in one pipeline (the benchmark).
    pub async fn rate_pipelined(
        &self,
        keys: &[String],
        limit: u64,
        period_us: u64,
    ) -> Result<usize, StateError> {
        let mut c = self.conn().await?;
        // Load once so the pipeline can use EVALSHA.
        let _: (i64, i64) = self
            .rate
            .key(&keys[0])
            .arg(limit)
            .arg(period_us)
            .arg(1)
            .arg("1")
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        let mut p = redis::pipe();
        for k in keys {
            p.cmd("EVALSHA")
                .arg(self.rate.get_hash())
                .arg(1)
                .arg(k)
                .arg(limit)
                .arg(period_us)
                .arg(1)
                .arg("0");
        }
        let r: Vec<(i64, i64)> = p.query_async(&mut c).await.map_err(err)?;
        Ok(r.len())
    }

    pub async fn conn_acquire(
        &self,
        key: &str,
        member: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let mut c = self.conn().await?;
        let ok: i64 = self
            .conn_acquire
            .key(key)
            .arg(member)
            .arg(max)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(ok == 1)
    }

    pub async fn conn_release(&self, key: &str, member: &str) -> Result<(), StateError> {
        self.conn()
            .await?
            .zrem::<_, _, ()>(key, member)
            .await
            .map_err(err)
    }

    pub async fn conn_refresh(
        &self,
        slots: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StateError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut inv = self.conn_refresh.prepare_invoke();
        inv.arg(ttl.as_millis() as u64);
        for (k, m) in slots {
            inv.key(k).arg(m);
        }
        inv.invoke_async::<i64>(&mut c).await.map_err(err)?;
        Ok(())
    }

    /// Keys under `prefix` (SCAN, bounded) and the server's memory use.
    pub async fn usage(&self, prefix: &str) -> Result<(u64, u64, u64), StateError> {
        let mut c = self.conn().await?;
        let mut cursor: u64 = 0;
        let mut keys = 0u64;
        for _ in 0..1000 {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            keys += batch.len() as u64;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let dbsize: u64 = redis::cmd("DBSIZE")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok((keys, dbsize, used))
    }
}
