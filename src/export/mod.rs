//! Copying the history to a fleet-wide store (`[history.export]`), and
//! querying it there (`sluice history --cluster`).
//!
//! The exporter reads records in write order after a durable cursor (the
//! last exported history id, in the history database's `export` tree),
//! INSERTs them in batches and moves the cursor only once the server said
//! yes: an outage or a crash loses nothing, and what a crash between the
//! INSERT and the cursor write sends twice, the table collapses
//! ([`clickhouse`]). Errors back off from 1 s to 60 s, with one log line
//! when the outage starts and one, with how many rows waited, when it ends.
//!
//! This module owns the cursor and the export loop; the rows, SQL and HTTP
//! are [`clickhouse`]'s, the records the store's.

pub mod clickhouse;
#[doc(hidden)]
pub mod test_server;

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

pub use clickhouse::ExportError;

use crate::config::{Config, ExportConfig};
use crate::store::history::HistoryQuery;
use crate::store::Store;

const CURSOR_KEY: &str = "cursor";
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What `sluice history --export-status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportStatus {
    pub kind: String,
    pub url: String,
    pub node: String,
    /// The last history id ClickHouse has.
    pub cursor: Option<String>,
    /// Records written locally and not exported yet.
    pub waiting: usize,
    pub exported_total: u64,
    pub errors_total: u64,
    pub last_success: Option<f64>,
    pub last_error: Option<String>,
    /// Unix time the current outage began.
    pub failing_since: Option<f64>,
}

static STATUS: Mutex<Option<ExportStatus>> = Mutex::new(None);

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn update(f: impl FnOnce(&mut ExportStatus)) {
    let mut g = STATUS.lock().expect("export status lock");
    f(g.get_or_insert_with(Default::default));
}

/// The durable cursor.
pub fn cursor(store: &Store) -> Result<Option<String>, crate::store::StoreError> {
    let t = store.history_db().open_tree("export")?;
    Ok(t.get(CURSOR_KEY)?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

fn set_cursor(store: &Store, hid: &str) -> Result<(), crate::store::StoreError> {
    let t = store.history_db().open_tree("export")?;
    t.insert(CURSOR_KEY, hid.as_bytes())?;
    // ClickHouse has the rows: flushed so a restart does not send them
    // again (if it does, the table collapses them).
    t.flush()?;
    Ok(())
}

/// The export status, for the control socket: the running exporter's
/// figures (`kind` empty when no exporter runs in this process) and the
/// records waiting now.
pub fn status(store: &Store) -> Value {
    let mut s = STATUS
        .lock()
        .expect("export status lock")
        .clone()
        .unwrap_or_default();
    s.cursor = cursor(store).ok().flatten();
    s.waiting = store.history_count_after(s.cursor.as_deref()).unwrap_or(0);
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// How often the exporter drops expired day partitions.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Drop the table's day partitions older than `retention` (ClickHouse
/// 18.16 has no table TTL). Every node may do it: dropping a partition
/// that is gone already is a no-op. Returns the partitions dropped.
pub async fn drop_expired(
    cfg: &ExportConfig,
    retention: Duration,
) -> Result<Vec<String>, ExportError> {
    let c = clickhouse::Client::new(cfg)?;
    let cutoff = clickhouse::day_number(now() - retention.as_secs_f64());
    let parts = c
        .run(
            None,
            format!(
                "SELECT DISTINCT partition FROM system.parts WHERE database = {} AND table = {} AND active FORMAT TabSeparated",
                clickhouse::quote(&cfg.database),
                clickhouse::quote(&cfg.table)
            ),
        )
        .await?;
    let mut dropped = Vec::new();
    for p in parts.lines().map(str::trim) {
        // Partitions are toYYYYMMDD(day): plain numbers.
        let Ok(day) = p.parse::<u32>() else { continue };
        if day < cutoff {
            c.run(
                None,
                format!(
                    "ALTER TABLE {}.{} DROP PARTITION {day}",
                    cfg.database, cfg.table
                ),
            )
            .await?;
            info!(
                partition = day,
                "history export: dropped an expired day partition"
            );
            dropped.push(p.to_string());
        }
    }
    Ok(dropped)
}

/// The export loop; returns when `stop` turns true. Once an hour it also
/// drops the table's partitions older than `retention`.
pub async fn run(
    store: Store,
    cfg: ExportConfig,
    node: String,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match clickhouse::Client::new(&cfg) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "history export not started");
            return;
        }
    };
    update(|s| {
        s.kind = cfg.kind.clone();
        s.url = cfg.url.clone();
        s.node = node.clone();
    });
    info!(url = %cfg.url, table = %format!("{}.{}", cfg.database, cfg.table), node = %node, "history export started");
    let mut backoff = FIRST_BACKOFF;
    let mut outage: Option<(f64, u64)> = None;
    let mut retention_due = std::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if outage.is_none() && std::time::Instant::now() >= retention_due {
            retention_due = std::time::Instant::now() + RETENTION_EVERY;
            if let Err(e) = drop_expired(&cfg, retention).await {
                warn!(error = %e, "history export: dropping expired partitions failed");
            }
        }
        let st = store.clone();
        let batch = cfg.batch;
        let read = tokio::task::spawn_blocking(move || {
            let c = cursor(&st)?;
            let rows = st.history_after(c.as_deref(), batch)?;
            // What ClickHouse gets must be on disk here first: a crash
            // must not leave the fleet with records this node lost.
            if !rows.is_empty() {
                st.history_db().flush()?;
            }
            Ok::<_, crate::store::StoreError>(rows)
        })
        .await;
        let rows = match read {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                warn!(error = %e, "history export: reading the history failed");
                Vec::new()
            }
            Err(_) => return,
        };
        let mut wait = cfg.flush_interval;
        if !rows.is_empty() {
            let lines: Vec<Value> = rows
                .iter()
                .map(|(hid, r)| clickhouse::row(&node, hid, r))
                .collect();
            match client.insert(&lines).await {
                Ok(()) => {
                    let last = rows.last().map(|(h, _)| h.clone()).unwrap_or_default();
                    let st = store.clone();
                    let saved = tokio::task::spawn_blocking(move || set_cursor(&st, &last)).await;
                    if let Ok(Err(e)) = saved {
                        warn!(error = %e, "history export: cursor not saved (rows may be sent again)");
                    }
                    crate::metrics::export_rows(rows.len());
                    if let Some((since, failures)) = outage.take() {
                        info!(
                            down_s = (now() - since).round() as u64,
                            failures, "history export: ClickHouse reachable again"
                        );
                    }
                    update(|s| {
                        s.exported_total += rows.len() as u64;
                        s.last_success = Some(now());
                        s.failing_since = None;
                    });
                    backoff = FIRST_BACKOFF;
                    if rows.len() == cfg.batch {
                        wait = Duration::ZERO;
                    }
                }
                Err(e) => {
                    crate::metrics::export_error();
                    match &mut outage {
                        None => {
                            warn!(error = %e, waiting = rows.len(), "history export: INSERT failed, retrying with backoff");
                            outage = Some((now(), 1));
                        }
                        Some((_, n)) => *n += 1,
                    }
                    update(|s| {
                        s.errors_total += 1;
                        s.last_error = Some(e.to_string());
                        s.failing_since.get_or_insert(now());
                    });
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// `sluice history --cluster` and the API's `cluster=1`: matching records
/// from every node, from ClickHouse.
pub async fn cluster_history(cfg: &Config, q: &HistoryQuery) -> Result<Vec<Value>, ExportError> {
    if !cfg.history.export.enabled() {
        return Err(ExportError::Off);
    }
    clickhouse::Client::new(&cfg.history.export)?.query(q).await
}

/// `sluice trace ID --cluster`: one message's records from every node it
/// passed through, oldest first.
pub async fn cluster_trace(cfg: &Config, id: &str) -> Result<Vec<Value>, ExportError> {
    cluster_history(
        cfg,
        &HistoryQuery {
            id: Some(id.to_string()),
            limit: Some(10_000),
            ..Default::default()
        },
    )
    .await
}

/// `sluice history init-export`: create the database and the table.
pub async fn init(cfg: &Config) -> Result<Vec<String>, ExportError> {
    if !cfg.history.export.enabled() {
        return Err(ExportError::Off);
    }
    let c = clickhouse::Client::new(&cfg.history.export)?;
    let stmts = clickhouse::schema(&cfg.history.export);
    for s in &stmts {
        c.run(None, s.clone()).await?;
    }
    Ok(stmts)
}
