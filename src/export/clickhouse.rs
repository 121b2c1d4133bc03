//! ClickHouse over its HTTP interface: the table schema, rows as
//! `JSONEachRow`, INSERTs and fleet queries.
//!
//! Kept to what ClickHouse 18.16 (Debian's package, the minimum) speaks: no
//! table TTL (retention drops day partitions instead), no query parameters
//! (values are quoted here, [`quote`]), `ReplacingMergeTree` ordered by
//! `(recipient, ts, node, hid)` so a row sent twice (a crash between an
//! INSERT and the cursor write) is one row after merges and is read once
//! before them (`LIMIT 1 BY node, hid`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::ExportConfig;
use crate::store::history::{HistoryQuery, HistoryRecord};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("ClickHouse at {url}: {message}")]
    Http { url: String, message: String },
    #[error("ClickHouse answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("ClickHouse row: {0}")]
    Row(String),
    #[error("history export is off ([history.export] kind is empty)")]
    Off,
}

/// A string literal for ClickHouse SQL: quoted, `\` and `'` escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The `CREATE` statements `sluice history init-export` runs.
pub fn schema(cfg: &ExportConfig) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database),
        format!(
            "CREATE TABLE IF NOT EXISTS {}.{} (\n\
             \x20 node String, hid String, ts Float64, day Date,\n\
             \x20 action String, id String, transaction String, message_id String,\n\
             \x20 sender String, recipient String, recipient_domain String,\n\
             \x20 transportid String, size UInt64, client_ip String, serverid String,\n\
             \x20 connection String, reason String, metadata String,\n\
             \x20 remote_host String, remote_ip String, attempt UInt32,\n\
             \x20 next_retry Float64, actor String\n\
             ) ENGINE = ReplacingMergeTree()\n\
             PARTITION BY toYYYYMMDD(day)\n\
             ORDER BY (recipient, ts, node, hid)",
            cfg.database, cfg.table
        ),
    ]
}

/// One history record as a `JSONEachRow` line.
pub fn row(node: &str, hid: &str, r: &HistoryRecord) -> Value {
    let day = chrono_day(r.ts);
    json!({
        "node": node,
        "hid": hid,
        "ts": r.ts,
        "day": day,
        "action": r.action.as_str(),
        "id": r.id,
        "transaction": r.transaction,
        "message_id": r.message_id.as_deref().unwrap_or(""),
        "sender": r.sender,
        "recipient": r.recipient.to_lowercase(),
        "recipient_domain": r.recipient.rsplit_once('@').map(|(_, d)| d.to_lowercase()).unwrap_or_default(),
        "transportid": r.transportid,
        "size": r.size,
        "client_ip": r.client_ip,
        "serverid": r.serverid,
        "connection": r.connection,
        "reason": r.reason,
        "metadata": serde_json::to_string(&r.metadata).unwrap_or_default(),
        "remote_host": r.remote_host.as_deref().unwrap_or(""),
        "remote_ip": r.remote_ip.as_deref().unwrap_or(""),
        "attempt": r.attempt,
        "next_retry": r.next_retry.unwrap_or(0.0),
        "actor": r.actor.as_deref().unwrap_or(""),
    })
}

/// The partition number (`toYYYYMMDD`) of a unix time's UTC day.
pub fn day_number(ts: f64) -> u32 {
    chrono_day(ts).replace('-', "").parse().unwrap_or(0)
}

/// `YYYY-MM-DD` (UTC) of a unix time.
fn chrono_day(ts: f64) -> String {
    let days = (ts.max(0.0) / 86400.0).floor() as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A row read back from ClickHouse, as the local history's JSON (with
/// `node` and `hid`).
pub fn record_json(v: &Value) -> Result<Value, ExportError> {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let opt = |k: &str| Some(s(k)).filter(|x| !x.is_empty());
    let num = |k: &str| {
        v[k].as_f64()
            .or_else(|| v[k].as_str().and_then(|x| x.parse().ok()))
            .unwrap_or(0.0)
    };
    let action = crate::store::history::HistoryAction::parse(&s("action"))
        .ok_or_else(|| ExportError::Row(format!("unknown action {:?}", s("action"))))?;
    let r = HistoryRecord {
        ts: num("ts"),
        action,
        id: s("id"),
        transaction: s("transaction"),
        message_id: opt("message_id"),
        sender: s("sender"),
        recipient: s("recipient"),
        transportid: s("transportid"),
        size: num("size") as u64,
        client_ip: s("client_ip"),
        serverid: s("serverid"),
        connection: s("connection"),
        reason: s("reason"),
        metadata: serde_json::from_str(&s("metadata")).unwrap_or_default(),
        remote_host: opt("remote_host"),
        remote_ip: opt("remote_ip"),
        attempt: num("attempt") as u32,
        next_retry: Some(num("next_retry")).filter(|t| *t > 0.0),
        actor: opt("actor"),
        node: opt("node"),
    };
    let mut out = serde_json::to_value(&r).map_err(|e| ExportError::Row(e.to_string()))?;
    out["hid"] = Value::String(s("hid"));
    Ok(out)
}

/// The SELECT for a fleet query: the same filters as the local history.
pub fn select(cfg: &ExportConfig, q: &HistoryQuery) -> String {
    let mut w: Vec<String> = Vec::new();
    if let Some(t) = q.since {
        w.push(format!("ts >= {t}"));
        w.push(format!("day >= toDate({})", quote(&chrono_day(t))));
    }
    if let Some(t) = q.until {
        w.push(format!("ts <= {t}"));
    }
    if let Some(r) = &q.recipient {
        w.push(format!("recipient = {}", quote(&r.to_lowercase())));
    }
    if let Some(d) = &q.domain {
        w.push(format!("recipient_domain = {}", quote(&d.to_lowercase())));
    }
    if let Some(s) = &q.sender {
        w.push(format!("lower(sender) = {}", quote(&s.to_lowercase())));
    }
    if let Some(a) = &q.action {
        w.push(format!("action = {}", quote(&a.to_uppercase())));
    }
    if let Some(id) = &q.id {
        let bare = id.trim_matches(['<', '>']);
        w.push(format!(
            "(id = {0} OR transaction = {0} OR message_id IN ({1}, {2}))",
            quote(id),
            quote(bare),
            quote(&format!("<{bare}>"))
        ));
    }
    if let Some(t) = &q.text {
        w.push(format!("positionCaseInsensitive(reason, {}) > 0", quote(t)));
    }
    let order = if q.newest_first { "DESC" } else { "ASC" };
    let limit = q.limit.unwrap_or(100).min(100_000);
    format!(
        "SELECT * FROM {}.{}{} ORDER BY ts {order}, node, hid LIMIT 1 BY node, hid LIMIT {limit} FORMAT JSONEachRow",
        cfg.database,
        cfg.table,
        if w.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", w.join(" AND "))
        }
    )
}

/// Talks to one ClickHouse server.
pub struct Client {
    http: reqwest::Client,
    cfg: ExportConfig,
}

impl Client {
    pub fn new(cfg: &ExportConfig) -> Result<Client, ExportError> {
        let http = crate::http_client::client(&crate::http_client::ClientOptions {
            connect_timeout: cfg.timeout.min(Duration::from_secs(5)),
            ..Default::default()
        })
        .map_err(|e| ExportError::Http {
            url: cfg.url.clone(),
            message: e,
        })?;
        Ok(Client {
            http,
            cfg: cfg.clone(),
        })
    }

    /// Run one statement with `body` after it (INSERT data), or a query
    /// as the body; returns the answer's text.
    pub async fn run(&self, query: Option<&str>, body: String) -> Result<String, ExportError> {
        let mut req = self
            .http
            .post(&self.cfg.url)
            .timeout(self.cfg.timeout)
            .header("X-ClickHouse-User", &self.cfg.user)
            .body(body);
        if !self.cfg.password.is_empty() {
            req = req.header("X-ClickHouse-Key", &self.cfg.password);
        }
        if let Some(q) = query {
            req = req.query(&[("query", q)]);
        }
        let resp = req.send().await.map_err(|e| ExportError::Http {
            url: self.cfg.url.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| ExportError::Http {
            url: self.cfg.url.clone(),
            message: e.to_string(),
        })?;
        if status != 200 {
            return Err(ExportError::Server {
                status,
                body: text.trim().chars().take(500).collect(),
            });
        }
        Ok(text)
    }

    /// INSERT rows (each a JSON object) in one request.
    pub async fn insert(&self, rows: &[Value]) -> Result<(), ExportError> {
        let mut body = String::with_capacity(rows.len() * 600);
        for r in rows {
            body.push_str(&r.to_string());
            body.push('\n');
        }
        let q = format!(
            "INSERT INTO {}.{} FORMAT JSONEachRow",
            self.cfg.database, self.cfg.table
        );
        self.run(Some(&q), body).await.map(|_| ())
    }

    /// Rows matching `q` from every node.
    pub async fn query(&self, q: &HistoryQuery) -> Result<Vec<Value>, ExportError> {
        let text = self.run(None, select(&self.cfg, q)).await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .map_err(|e| ExportError::Row(e.to_string()))
                    .and_then(|v| record_json(&v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_any_value_inside_its_literal() {
        assert_eq!(quote("bob@example.org"), "'bob@example.org'");
        assert_eq!(quote("o'brien\\x"), "'o\\'brien\\\\x'");
        assert_eq!(quote("a\0b"), "'a\\0b'");
        let cfg = ExportConfig::default();
        let sql = select(
            &cfg,
            &HistoryQuery {
                recipient: Some("x' OR 1=1 --@e".into()),
                ..Default::default()
            },
        );
        assert!(sql.contains("recipient = 'x\\' or 1=1 --@e'"), "{sql}");
    }

    #[test]
    fn rows_round_trip_to_the_history_json() {
        let r = HistoryRecord {
            ts: 1_796_200_000.25,
            action: crate::store::history::HistoryAction::Deliver,
            id: "q1".into(),
            message_id: Some("<m@x>".into()),
            recipient: "Bob@Example.org".into(),
            remote_host: Some("mx.example.org".into()),
            attempt: 2,
            metadata: [("decided_by".to_string(), "rcptto".to_string())].into(),
            ..Default::default()
        };
        let row = row("mx1", "00abc0001", &r);
        assert_eq!(row["day"], "2026-12-02");
        assert_eq!(row["recipient_domain"], "example.org");
        let back = record_json(&row).unwrap();
        assert_eq!(back["node"], "mx1");
        assert_eq!(back["hid"], "00abc0001");
        assert_eq!(back["message_id"], "<m@x>");
        assert_eq!(back["metadata"]["decided_by"], "rcptto");
        assert_eq!(back["attempt"], 2);
        assert_eq!(chrono_day(0.0), "1970-01-01");
        assert_eq!(chrono_day(951_782_400.0), "2000-02-29");
        assert_eq!(day_number(951_782_400.0), 20000229);
    }
}
