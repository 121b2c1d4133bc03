//! The "sql" source (PostgreSQL): an address exists when
//! `[recipients.sql] query`, with `$1` bound to the address (a parameter,
//! never formatted into the text), returns a row; a first column of a text
//! type, when not empty, is the address to deliver to (an alias). No row is
//! unknown; a server that cannot be reached or a failing query is a
//! tempfail.
//!
//! A small pool of connections (at most [`MAX_CONNECTIONS`] open; a
//! look-up beyond waits for one, within its timeout), each with
//! the lookup statement prepared once. A connection the server closed
//! (restart) is noticed and dropped before use; one that fails during a
//! query is dropped, so the next lookup connects again. Every wait is
//! bounded by `timeout`. The connections are plain TCP (`NoTls`): meant for
//! a database on loopback or a trusted network — a url asking for TLS
//! (`sslmode=require`) fails to connect rather than going in clear.
//!
//! It also serves `sql.query` for scripts ([`SqlSource::query`]), on the
//! same pool, inside a READ ONLY transaction. It owns the pool; it must not
//! write to the database nor cache answers (the validator caches).

use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::TryStreamExt;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::{BoxFuture, RecipientSource, SourceAnswer};
use crate::config::SqlSourceConfig;

/// Connections open at most (in use or idle between uses).
pub const MAX_CONNECTIONS: usize = 4;

/// A parameter of `sql.query`, converted to the type the server infers
/// for its placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// A value of a result column; SQL NULL is `Null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// NULL for a placeholder of any type.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

struct Conn {
    client: Client,
    /// The lookup query, prepared on this connection at its first lookup.
    lookup: Option<Statement>,
}

pub struct SqlSource {
    cfg: SqlSourceConfig,
    pg: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    /// One permit per connection in use: a burst of RCPTs does not open a
    /// connection each.
    permits: tokio::sync::Semaphore,
}

/// The server's message ("ERROR: relation … does not exist"), not only
/// "db error".
fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => e.to_string(),
    }
}

fn is_text(t: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(t)
        || t.name() == "citext"
}

/// What `p` becomes for a placeholder of type `t`; an error names it.
fn bind(n: usize, p: &Param, t: &Type) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    let bad = || {
        format!(
            "parameter ${} ({p:?}) does not fit type {}",
            n + 1,
            t.name()
        )
    };
    Ok(match p {
        Param::Null => Box::new(Null),
        Param::Bool(b) if *t == Type::BOOL => Box::new(*b),
        Param::Int(i) if *t == Type::INT2 => Box::new(i16::try_from(*i).map_err(|_| bad())?),
        Param::Int(i) if *t == Type::INT4 => Box::new(i32::try_from(*i).map_err(|_| bad())?),
        Param::Int(i) if *t == Type::INT8 => Box::new(*i),
        Param::Int(i) if *t == Type::FLOAT8 => Box::new(*i as f64),
        Param::Float(f) if *t == Type::FLOAT8 => Box::new(*f),
        Param::Float(f) if *t == Type::FLOAT4 => Box::new(*f as f32),
        Param::Text(s) if is_text(t) => Box::new(s.clone()),
        Param::Int(i) if is_text(t) => Box::new(i.to_string()),
        _ => return Err(bad()),
    })
}

fn column(row: &Row, i: usize) -> Result<Value, String> {
    let t = row.columns()[i].type_();
    let e = |e: tokio_postgres::Error| format!("column {}: {e}", row.columns()[i].name());
    let v = if *t == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)
            .map_err(e)?
            .map(Value::Bool)
    } else if *t == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)
            .map_err(e)?
            .map(|v| Value::Int(v.into()))
    } else if *t == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map_err(e)?
            .map(|v| Value::Int(v.into()))
    } else if *t == Type::INT8 {
        row.try_get::<_, Option<i64>>(i).map_err(e)?.map(Value::Int)
    } else if *t == Type::FLOAT4 {
        row.try_get::<_, Option<f32>>(i)
            .map_err(e)?
            .map(|v| Value::Float(v.into()))
    } else if *t == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(i)
            .map_err(e)?
            .map(Value::Float)
    } else if is_text(t) {
        row.try_get::<_, Option<String>>(i)
            .map_err(e)?
            .map(Value::Text)
    } else {
        return Err(format!(
            "column {} has type {}: cast it in the query (::text)",
            row.columns()[i].name(),
            t.name()
        ));
    };
    Ok(v.unwrap_or(Value::Null))
}

impl SqlSource {
    pub fn new(cfg: &SqlSourceConfig) -> Result<SqlSource, String> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|e| format!("url {:?}: {e}", cfg.url))?;
        if cfg.timeout.is_zero() {
            return Err("timeout must be more than 0".into());
        }
        if !cfg.query.contains("$1") {
            return Err(format!("query {:?} has no $1 (the address)", cfg.query));
        }
        pg.connect_timeout(cfg.timeout);
        Ok(SqlSource {
            cfg: cfg.clone(),
            pg,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(MAX_CONNECTIONS),
        })
    }

    /// An idle connection the server has not closed, or a new one.
    async fn take(&self) -> Result<Conn, String> {
        loop {
            let c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match c {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => return Ok(c),
                None => break,
            }
        }
        let (client, conn) = self.pg.connect(NoTls).await.map_err(pg_err)?;
        // The connection task ends when the server goes away; the client
        // then reports closed and is not reused.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "sluice::recipients", "sql connection ended: {e}");
            }
        });
        Ok(Conn {
            client,
            lookup: None,
        })
    }

    fn give_back(&self, c: Conn) {
        if c.client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_CONNECTIONS {
            idle.push(c);
        }
    }

    async fn lookup_rows(&self, address: &str) -> Result<Option<Row>, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let mut c = self.take().await?;
        let stmt = match &c.lookup {
            Some(s) => s.clone(),
            None => {
                let s = c
                    .client
                    .prepare(&self.cfg.query)
                    .await
                    .map_err(|e| format!("query {:?}: {}", self.cfg.query, pg_err(e)))?;
                c.lookup = Some(s.clone());
                s
            }
        };
        // A failing query drops the connection (`c` is not given back).
        let rows = c.client.query(&stmt, &[&address]).await.map_err(pg_err)?;
        self.give_back(c);
        Ok(rows.into_iter().next())
    }

    async fn answer(&self, address: &str) -> SourceAnswer {
        let t = self.cfg.timeout;
        match tokio::time::timeout(t, self.lookup_rows(address)).await {
            Err(_) => SourceAnswer::TempFail(format!("sql: no answer within {t:?}")),
            Ok(Err(e)) => SourceAnswer::TempFail(format!("sql: {e}")),
            Ok(Ok(None)) => SourceAnswer::Unknown,
            Ok(Ok(Some(row))) => {
                let rewrite = match row.columns().first() {
                    Some(c) if is_text(c.type_()) => row
                        .try_get::<_, Option<String>>(0)
                        .ok()
                        .flatten()
                        .map(|v| v.trim().to_ascii_lowercase())
                        .filter(|v| !v.is_empty() && v != address),
                    _ => None,
                };
                SourceAnswer::Exists { rewrite }
            }
        }
    }

    /// `query` with `params` bound, in a READ ONLY transaction, bounded by
    /// `timeout`; at most `limit` rows, more is an error. Columns by name.
    pub async fn query(
        &self,
        query: &str,
        params: &[Param],
        limit: usize,
    ) -> Result<Vec<Vec<(String, Value)>>, String> {
        let t = self.cfg.timeout;
        tokio::time::timeout(t, self.query_inner(query, params, limit))
            .await
            .map_err(|_| format!("no answer within {t:?}"))?
    }

    async fn query_inner(
        &self,
        query: &str,
        params: &[Param],
        limit: usize,
    ) -> Result<Vec<Vec<(String, Value)>>, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let mut c = self.take().await?;
        let mut out = Vec::new();
        {
            let tx = c
                .client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(pg_err)?;
            let stmt = tx.prepare(query).await.map_err(pg_err)?;
            if stmt.params().len() != params.len() {
                return Err(format!(
                    "the query has {} parameters, {} given",
                    stmt.params().len(),
                    params.len()
                ));
            }
            let bound = params
                .iter()
                .zip(stmt.params())
                .enumerate()
                .map(|(n, (p, t))| bind(n, p, t))
                .collect::<Result<Vec<_>, _>>()?;
            let stream = tx
                .query_raw(
                    &stmt,
                    bound.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)),
                )
                .await
                .map_err(pg_err)?;
            let mut stream = std::pin::pin!(stream);
            while let Some(row) = stream.try_next().await.map_err(pg_err)? {
                if out.len() == limit {
                    return Err(format!("more than {limit} rows (narrow the query)"));
                }
                let mut cols = Vec::with_capacity(row.len());
                for (i, col) in row.columns().iter().enumerate() {
                    cols.push((col.name().to_string(), column(&row, i)?));
                }
                out.push(cols);
            }
            tx.commit().await.map_err(pg_err)?;
        }
        self.give_back(c);
        Ok(out)
    }

    pub fn timeout(&self) -> Duration {
        self.cfg.timeout
    }
}

impl RecipientSource for SqlSource {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, SourceAnswer> {
        Box::pin(self.answer(address))
    }

    /// Connect and prepare the lookup query: a wrong url, password, table
    /// or column shows here, not at the first RCPT.
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let t = self.cfg.timeout;
            let r = tokio::time::timeout(t, async {
                let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
                let c = self.take().await?;
                c.client
                    .prepare(&self.cfg.query)
                    .await
                    .map_err(|e| format!("query {:?}: {}", self.cfg.query, pg_err(e)))?;
                self.give_back(c);
                Ok::<_, String>(())
            })
            .await;
            match r {
                Err(_) => Err(format!("no answer within {t:?}")),
                Ok(r) => r,
            }
        })
    }

    fn as_any(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_problem() {
        let mut c = SqlSourceConfig::default();
        assert!(SqlSource::new(&c).is_ok());
        c.query = "SELECT 1 FROM mailbox WHERE address = 'x'".into();
        assert!(SqlSource::new(&c).err().unwrap().contains("$1"));
        c = SqlSourceConfig {
            url: "postgresql://a:b@host:notaport/x".into(),
            ..Default::default()
        };
        assert!(SqlSource::new(&c).err().unwrap().contains("url"));
    }

    #[test]
    fn parameters_bind_to_the_placeholder_type() {
        assert!(bind(0, &Param::Int(7), &Type::INT4).is_ok());
        assert!(bind(0, &Param::Int(1 << 40), &Type::INT4).is_err());
        assert!(bind(0, &Param::Text("x".into()), &Type::TEXT).is_ok());
        assert!(bind(0, &Param::Null, &Type::TIMESTAMP).is_ok());
        let e = bind(1, &Param::Text("x".into()), &Type::INT8)
            .err()
            .unwrap();
        assert!(e.contains("$2"), "{e}");
    }
}
