//! The `sluice` command line: run the daemon, check the config, and inspect
//! the queue (through the daemon's control socket when it runs, directly
//! from the database when it does not).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;
use crate::control::{self, ControlError, Request};
use crate::logging::{self, LogFormat};
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: inbound mail gateway (edge MX) with Lua policy"
)]
pub struct Cli {
    /// Config file (default: conf/sluice.toml if present, else built-in defaults).
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum, global = true, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the gateway in the foreground.
    Run,
    /// Validate the config (and scripts) without starting; non-zero exit on error.
    Check,
    /// Ask the running daemon to reload certificates and scripts.
    Reload,
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        action: QueueCmd,
    },
    /// SMTP load generator: msgs/s and end-of-data → 250 latency.
    Bench(BenchArgs),
    /// Compile an Axigen policy file to Lua and print (or write) it.
    Translate {
        file: PathBuf,
        /// Write the Lua here instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Instead of the Lua: per event, the hook it runs at, what it does
        /// and what Sluice approximates or does not support.
        #[arg(long)]
        explain: bool,
    },
    /// Query the delivery history.
    History(HistoryArgs),
    /// One message's whole story: every history record and its queue state.
    Trace {
        /// Queue id, transaction id or Message-ID.
        id: String,
        #[arg(long)]
        json: bool,
        /// Every node's records, from the history export (ClickHouse).
        #[arg(long)]
        cluster: bool,
    },
    /// Run one hook of the configured scripts against a sample message and
    /// envelope, and print the verdict (and what it queued) as JSON.
    TestScript(TestScriptArgs),
    /// Recipient validation (`[recipients]`).
    Recipients {
        #[command(subcommand)]
        action: RecipientsCmd,
    },
    /// Shared state (`[state]`): rate limits, greylist entries, memory, cache.
    State {
        #[command(subcommand)]
        action: StateCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum StateCmd {
    /// Show KEY as scripts name it: its memory.* value, cache entry and
    /// rate limit state, with TTLs (JSON).
    Get { key: String },
    /// Delete KEY's memory value, cache entry and rate limit state (reset a
    /// limit, forget a greylist entry).
    Del { key: String },
    /// Backend, keys, memory, operations, errors and evictions (JSON).
    Stats,
}

#[derive(Subcommand, Debug)]
pub enum RecipientsCmd {
    /// Ask every configured source about ADDRESS and show each answer.
    Test {
        address: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct TestScriptArgs {
    /// Hook name: connect, helo, auth, mailfrom, rcptto, data, headers, eod, disconnect, proxy…
    pub hook: String,
    /// Message file (RFC 5322) for headers/eod.
    #[arg(long)]
    pub message: Option<PathBuf>,
    /// Envelope and arguments as JSON, e.g.
    /// '{"connection":{"remoteip":"192.0.2.1"},"transaction":{"sender":"a@b"},"arguments":{"recipient":"x@y"}}'
    #[arg(long, default_value = "{}")]
    pub envelope: String,
}

/// Selects queue entries by their envelope instead of by id.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct QueueFilterArgs {
    /// Envelope sender: an address, a domain (example.org or @example.org), or <> for the null sender.
    #[arg(long)]
    pub sender: Option<String>,
    /// Any recipient: an address or a domain.
    #[arg(long)]
    pub recipient: Option<String>,
    /// Any recipient's domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Transport id.
    #[arg(long)]
    pub transport: Option<String>,
    /// queued, held or active.
    #[arg(long)]
    pub state: Option<String>,
    /// Received longer ago than this (e.g. 4h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Received more recently than this (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
    /// Job id given to mail:queue().
    #[arg(long)]
    pub jobid: Option<String>,
    /// Text in the last delivery error (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
}

impl QueueFilterArgs {
    fn to_filter(&self) -> control::QueueFilter {
        control::QueueFilter {
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            domain: self.domain.clone(),
            transport: self.transport.clone(),
            state: self.state.clone(),
            older_than: self.older_than.map(|d| d.as_secs_f64()),
            newer_than: self.newer_than.map(|d| d.as_secs_f64()),
            jobid: self.jobid.clone(),
            error: self.error.clone(),
        }
    }
}

/// The entries an action applies to: ids, or a filter, or --all.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueSelection {
    /// Queue ids (or give a filter instead).
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: QueueFilterArgs,
    /// Every entry in the queue (needed when neither ids nor a filter are given).
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// List queued messages (all, or those a filter selects).
    List {
        #[command(flatten)]
        filter: QueueFilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one entry: the envelope, then the raw message as it will be relayed.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Keep entries from being delivered until released.
    Hold(QueueSelection),
    /// Release held entries (due now).
    Release(QueueSelection),
    /// Attempt delivery now.
    Retry(QueueSelection),
    /// Remove entries without a report (DELETE in history).
    Delete(QueueSelection),
    /// Fail entries now and send the sender a bounce.
    Bounce(QueueSelection),
    /// Counts by state, transport and destination; oldest message age.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Only records newer than this long ago (e.g. 2h, 30m) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records older than this long ago or an RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub sender: Option<String>,
    #[arg(long)]
    pub recipient: Option<String>,
    /// Recipient domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// REJECT, DELIVER, DEFER, ERROR, DELETE…
    #[arg(long)]
    pub action: Option<String>,
    /// Queue id, transaction id or Message-ID.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    #[arg(long)]
    pub csv: bool,
    /// Keep printing new records as they arrive.
    #[arg(long)]
    pub follow: bool,
    /// Every node's records, from the history export (`[history.export]`,
    /// ClickHouse) instead of this node's history.
    #[arg(long, conflicts_with = "follow")]
    pub cluster: bool,
    /// Show the history export's cursor, lag and last error.
    #[arg(long)]
    pub export_status: bool,
    #[command(subcommand)]
    pub cmd: Option<HistoryCmd>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum HistoryCmd {
    /// Create the ClickHouse database and table `[history.export]` names.
    InitExport,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// host:port to send to.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub target: std::net::SocketAddr,
    /// Concurrent sending connections.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub connections: usize,
    /// Messages in total.
    #[arg(short = 'm', long, default_value_t = 20000)]
    pub messages: u64,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 10240)]
    pub size: usize,
    #[arg(long, default_value = "bench@example.net")]
    pub from: String,
    #[arg(long, default_value = "rcpt@example.org")]
    pub to: String,
    /// Extra idle connections to open and hold during the run.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Idle connections say EHLO first (connect and helo hooks run for them).
    #[arg(long)]
    pub idle_ehlo: bool,
    /// Give up after this long.
    #[arg(long, default_value = "10m")]
    pub timeout: humantime::Duration,
    #[arg(long)]
    pub json: bool,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Run) {
        // `sluice queue list | head`: a closed pipe ends the command quietly,
        // as with any other Unix tool. (Rust ignores SIGPIPE, which turns it
        // into a panic in println!; the daemon keeps ignoring it.)
        // SAFETY: restores the default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    logging::init(cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let res = rt.block_on(dispatch(cli));
    // A blocking task stuck in sled (a flush on a full disk) must not keep
    // the process alive after SIGTERM.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    res
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Run => {
            let cfg = load_config(&cli)?;
            let d = crate::daemon::Daemon::start(cfg).await?;
            d.run_until_signal().await
        }
        Cmd::Check => {
            let cfg = load_config(&cli)?;
            if cfg.needs_tls() {
                crate::tls::server_config(&cfg.tls).context("[tls]")?;
            }
            let warnings =
                crate::policy::PolicyEngine::check(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
            for w in warnings {
                tracing::warn!("{w}");
            }
            // Milters and scanners: reachable now? (a warning only)
            for w in crate::scan::probe(&cfg).await {
                tracing::warn!("{w}");
            }
            // Every recipient source is opened and asked to connect once.
            if let Some(v) =
                crate::recipients::Validator::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?
            {
                let failures = v.check().await;
                if !failures.is_empty() {
                    anyhow::bail!("{}", failures.join("\n"));
                }
            }
            println!("config OK");
            Ok(())
        }
        Cmd::Recipients {
            action: RecipientsCmd::Test { address, json },
        } => {
            let cfg = load_config(&cli)?;
            let Some(v) =
                crate::recipients::Validator::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?
            else {
                anyhow::bail!("[recipients] sources is empty: every local recipient is accepted");
            };
            let mut rows = Vec::new();
            for name in v.source_names() {
                let out = v.verify(address, Some(&[name.to_string()])).await;
                let answered = out.source == name;
                let (verdict, detail) = match &out.verdict {
                    _ if !answered => ("no answer".to_string(), String::new()),
                    crate::recipients::Verdict::Exists { rewrite: Some(r) } => {
                        ("exists".to_string(), format!("delivered to {r}"))
                    }
                    crate::recipients::Verdict::TempFail(e) => ("tempfail".to_string(), e.clone()),
                    other => (other.as_str().to_string(), String::new()),
                };
                rows.push((name, verdict, detail));
            }
            let overall = v.verify(address, None).await;
            if *json {
                let j = serde_json::json!({
                    "address": address,
                    "sources": rows.iter().map(|(n, v, d)| serde_json::json!({"source": n, "answer": v, "detail": d})).collect::<Vec<_>>(),
                    "verdict": overall.verdict.as_str(),
                    "answered_by": overall.source,
                });
                println!("{j}");
            } else {
                for (n, v, d) in &rows {
                    println!(
                        "{n:<8} {v}{}",
                        if d.is_empty() {
                            String::new()
                        } else {
                            format!(" ({d})")
                        }
                    );
                }
                println!(
                    "verdict  {} (from {})",
                    overall.verdict.as_str(),
                    overall.source
                );
            }
            Ok(())
        }
        Cmd::Translate {
            file,
            output,
            explain,
        } => {
            let lua = if *explain {
                crate::policy::axigen::explain_file(file)
            } else {
                crate::policy::axigen::translate(file)
            }
            .map_err(|d| anyhow::anyhow!("{}", crate::policy::axigen::render_diagnostics(&d)))?;
            match output {
                Some(o) => {
                    std::fs::write(o, lua).with_context(|| format!("writing {}", o.display()))?
                }
                None => print!("{lua}"),
            }
            Ok(())
        }
        Cmd::History(h) => {
            let cfg = load_config(&cli)?;
            history_cmd(&cfg, h).await
        }
        Cmd::Trace { id, json, cluster } => {
            let cfg = load_config(&cli)?;
            if *cluster {
                return cluster_trace_cmd(&cfg, id, *json).await;
            }
            trace_cmd(&cfg, id, *json).await
        }
        Cmd::TestScript(t) => {
            let cfg = load_config(&cli)?;
            let hook = crate::policy::Hook::from_name(&t.hook)
                .ok_or_else(|| anyhow::anyhow!("unknown hook {:?}", t.hook))?;
            let message = match &t.message {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
                None => None,
            };
            let envelope: Value =
                serde_json::from_str(&t.envelope).context("--envelope is not JSON")?;
            let out = crate::policy::test_script(&cfg, hook, message, &envelope)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::policy::outcome_json(&out))?
            );
            Ok(())
        }
        Cmd::State { action } => {
            let cfg = load_config(&cli)?;
            let req = match action {
                StateCmd::Get { key } => Request::StateGet { key: key.clone() },
                StateCmd::Del { key } => Request::StateDel { key: key.clone() },
                StateCmd::Stats => Request::StateStats,
            };
            let v = match control::request(&cfg.control_socket, &req).await {
                Ok(v) => v,
                // Redis is reachable without the daemon; the local store is not.
                Err(ControlError::NotRunning(_))
                    if cfg.state.backend == crate::config::StateBackend::Redis =>
                {
                    let st = crate::state::StateStore::new(&cfg.state)?;
                    match &req {
                        Request::StateGet { key } => st.inspect(key).await?,
                        Request::StateDel { key } => {
                            serde_json::json!({"deleted": st.delete_all(key).await?})
                        }
                        _ => st.stats().await?,
                    }
                }
                Err(ControlError::NotRunning(p)) => bail!(
                    "no daemon running ({}): the local state store lives in the daemon",
                    p.display()
                ),
                Err(e) => return Err(e.into()),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Cmd::Reload => {
            let cfg = load_config(&cli)?;
            let v = control::request(&cfg.control_socket, &Request::Reload).await?;
            println!("{}", v.as_str().unwrap_or("reloaded"));
            Ok(())
        }
        Cmd::Queue { action } => {
            let cfg = load_config(&cli)?;
            queue_cmd(&cfg, action).await
        }
        Cmd::Bench(b) => {
            let report = crate::bench::run(crate::bench::BenchOptions {
                target: b.target,
                connections: b.connections,
                messages: b.messages,
                size: b.size,
                sender: b.from.clone(),
                recipient: b.to.clone(),
                idle: b.idle,
                idle_ehlo: b.idle_ehlo,
                timeout: Duration::from(b.timeout),
            })
            .await?;
            if b.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} messages of {} bytes over {} connections in {:.2}s: {:.0} msg/s; DATA→250 p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; failed {}; idle held {}",
                    report.messages, b.size, b.connections, report.seconds, report.msgs_per_sec,
                    report.p50_ms, report.p99_ms, report.max_ms, report.failed, report.idle_held
                );
            }
            Ok(())
        }
    }
}

/// Ask the daemon; if none runs, open the database ourselves.
async fn ask(cfg: &Config, req: Request) -> anyhow::Result<Value> {
    match control::request(&cfg.control_socket, &req).await {
        Ok(v) => Ok(v),
        Err(ControlError::NotRunning(_)) => {
            let store = Store::open(&cfg.data_dir)
                .context("no daemon running, opening the database directly")?;
            control::dispatch(&store, req, None).map_err(|e| anyhow::anyhow!(e))
        }
        Err(e) => Err(e.into()),
    }
}

/// hold/release/retry/delete/bounce on ids, or on what a filter selects.
async fn queue_act(cfg: &Config, action: &str, sel: &QueueSelection) -> anyhow::Result<()> {
    let filter = sel.filter.to_filter();
    let mut failed = 0;
    if sel.ids.is_empty() {
        if filter.is_empty() && !sel.all {
            bail!("give queue ids, a filter (see --help) or --all");
        }
        let v = ask(
            cfg,
            Request::QueueSelect {
                action: action.to_string(),
                filter,
                all: sel.all,
            },
        )
        .await?;
        let ids = v["ids"].as_array().cloned().unwrap_or_default();
        for id in &ids {
            println!("{}: {action}", id.as_str().unwrap_or(""));
        }
        for s in v["skipped"].as_array().into_iter().flatten() {
            eprintln!(
                "{}: {}",
                s["id"].as_str().unwrap_or(""),
                s["error"].as_str().unwrap_or("")
            );
            failed += 1;
        }
        eprintln!(
            "-- {action}: {} entr{}",
            ids.len(),
            if ids.len() == 1 { "y" } else { "ies" }
        );
    } else {
        if !filter.is_empty() {
            bail!("give either queue ids or a filter, not both");
        }
        for id in &sel.ids {
            let req = Request::QueueAction {
                action: action.to_string(),
                id: id.clone(),
            };
            match ask(cfg, req).await {
                Ok(v) => println!(
                    "{}: {}",
                    v["id"].as_str().unwrap_or(""),
                    v["action"].as_str().unwrap_or("")
                ),
                Err(e) => {
                    eprintln!("{e:#}");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} entr{} failed",
            if failed == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

pub fn parse_when(s: &str) -> anyhow::Result<f64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now - d.as_secs_f64());
    }
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| anyhow::anyhow!("{s:?} is neither a duration (2h) nor an RFC 3339 time"))?;
    Ok(t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6)
}

fn fmt_ts(ts: f64) -> String {
    chrono::DateTime::from_timestamp(ts as i64, ((ts.fract()) * 1e9) as u32)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Rows as text or CSV; fleet rows (`--cluster`) lead with their node.
fn print_history_rows(rows: &[Value], h: &HistoryArgs, header: bool) {
    if h.json {
        return;
    }
    let node = |r: &Value, csv: bool| -> String {
        match (h.cluster, csv) {
            (false, _) => String::new(),
            (true, true) => format!("{},", csv_field(r["node"].as_str().unwrap_or(""))),
            (true, false) => format!("{:<16} ", r["node"].as_str().unwrap_or("-")),
        }
    };
    if h.csv {
        if header {
            println!(
                "{}ts,action,id,transaction,message_id,sender,recipient,transportid,remote_host,reason",
                if h.cluster { "node," } else { "" }
            );
        }
        for r in rows {
            let f = |k: &str| csv_field(r[k].as_str().unwrap_or(""));
            println!(
                "{}{},{},{},{},{},{},{},{},{},{}",
                node(r, true),
                fmt_ts(r["ts"].as_f64().unwrap_or(0.0)),
                f("action"),
                f("id"),
                f("transaction"),
                f("message_id"),
                f("sender"),
                f("recipient"),
                f("transportid"),
                f("remote_host"),
                f("reason")
            );
        }
        return;
    }
    for r in rows {
        println!(
            "{}{} {:<7} id={} tx={} from=<{}> to=<{}> transport={} relay={} {}",
            node(r, false),
            fmt_ts(r["ts"].as_f64().unwrap_or(0.0)),
            r["action"].as_str().unwrap_or(""),
            r["id"].as_str().unwrap_or("-"),
            r["transaction"].as_str().unwrap_or("-"),
            r["sender"].as_str().unwrap_or(""),
            r["recipient"].as_str().unwrap_or(""),
            r["transportid"].as_str().unwrap_or(""),
            r["remote_host"].as_str().unwrap_or("-"),
            r["reason"].as_str().unwrap_or(""),
        );
        if let Some(h) = r["metadata"]["hooks"].as_str() {
            println!("    hooks: {h}");
        }
        if let Some(d) = r["metadata"]["decided_by"].as_str() {
            println!("    decided by: {d}");
        }
    }
}

async fn history_cmd(cfg: &Config, h: &HistoryArgs) -> anyhow::Result<()> {
    if let Some(HistoryCmd::InitExport) = h.cmd {
        let stmts = crate::export::init(cfg).await?;
        for s in stmts {
            println!("{s};");
        }
        println!(
            "-- created in {} ({}.{})",
            cfg.history.export.url, cfg.history.export.database, cfg.history.export.table
        );
        return Ok(());
    }
    if h.export_status {
        let v = ask(cfg, Request::ExportStatus).await?;
        if h.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if v["kind"].as_str().unwrap_or("").is_empty() {
            println!(
                "no exporter running (daemon down, or [history.export] kind empty); cursor {}, {} records after it",
                v["cursor"].as_str().unwrap_or("-"),
                v["waiting"]
            );
        } else {
            println!(
                "export to {} as node {}: {} records waiting, {} exported since start, {} errors",
                v["url"].as_str().unwrap_or(""),
                v["node"].as_str().unwrap_or(""),
                v["waiting"],
                v["exported_total"],
                v["errors_total"]
            );
            println!("cursor: {}", v["cursor"].as_str().unwrap_or("-"));
            if let Some(t) = v["last_success"].as_f64() {
                println!("last success: {}", fmt_ts(t));
            }
            if let Some(t) = v["failing_since"].as_f64() {
                println!(
                    "FAILING since {}: {}",
                    fmt_ts(t),
                    v["last_error"].as_str().unwrap_or("")
                );
            }
        }
        return Ok(());
    }
    let mut filter = control::HistoryFilter {
        since: h.since.as_deref().map(parse_when).transpose()?,
        until: h.until.as_deref().map(parse_when).transpose()?,
        sender: h.sender.clone(),
        recipient: h.recipient.clone(),
        domain: h.domain.clone(),
        action: h.action.as_ref().map(|a| a.to_uppercase()),
        id: h.id.clone(),
        limit: Some(h.limit),
        ..Default::default()
    };
    if h.cluster {
        let rows = crate::export::cluster_history(cfg, &filter).await?;
        if h.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_history_rows(&rows, h, true);
        }
        return Ok(());
    }
    let v = ask(
        cfg,
        Request::History {
            query: filter.clone(),
        },
    )
    .await?;
    let rows = v.as_array().cloned().unwrap_or_default();
    if h.json && !h.follow {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_history_rows(&rows, h, true);
    if !h.follow {
        return Ok(());
    }
    filter.after = rows
        .last()
        .and_then(|r| r["hid"].as_str())
        .map(|s| s.to_string());
    filter.since = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v = ask(
            cfg,
            Request::History {
                query: filter.clone(),
            },
        )
        .await?;
        let rows = v.as_array().cloned().unwrap_or_default();
        if let Some(last) = rows.last().and_then(|r| r["hid"].as_str()) {
            filter.after = Some(last.to_string());
        }
        if h.json {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            print_history_rows(&rows, h, false);
        }
    }
}

async fn cluster_trace_cmd(cfg: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let rows = crate::export::cluster_trace(cfg, id).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "history": rows }))?
        );
        return Ok(());
    }
    if rows.is_empty() {
        anyhow::bail!("nothing about {id} in the fleet's history");
    }
    let mut nodes: Vec<&str> = rows.iter().filter_map(|r| r["node"].as_str()).collect();
    nodes.dedup();
    println!(
        "{id}: {} records, through {}",
        rows.len(),
        nodes.join(" → ")
    );
    for r in &rows {
        println!(
            "  {} {:<16} {:<7} to=<{}> relay={} {}",
            fmt_ts(r["ts"].as_f64().unwrap_or(0.0)),
            r["node"].as_str().unwrap_or("-"),
            r["action"].as_str().unwrap_or(""),
            r["recipient"].as_str().unwrap_or(""),
            r["remote_host"].as_str().unwrap_or("-"),
            r["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

async fn trace_cmd(cfg: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let v = ask(cfg, Request::Trace { id: id.to_string() }).await?;
    let rows = v["history"].as_array().cloned().unwrap_or_default();
    let entries = v["queue"].as_array().cloned().unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"history": rows, "queue": entries}))?
        );
        return Ok(());
    }
    if rows.is_empty() && entries.is_empty() {
        bail!("nothing known about {id}");
    }
    for e in &entries {
        println!(
            "{} RECEIVED id={} tx={} from=<{}> client={} [{}] via {} helo={} tls={}",
            fmt_ts(e["received_at"].as_f64().unwrap_or(0.0)),
            e["id"].as_str().unwrap_or(""),
            e["transaction"].as_str().unwrap_or(""),
            e["sender"].as_str().unwrap_or(""),
            e["client"]["ip"].as_str().unwrap_or(""),
            e["client"]["connection"].as_str().unwrap_or(""),
            e["client"]["serverid"].as_str().unwrap_or(""),
            e["client"]["helo"].as_str().unwrap_or("-"),
            e["client"]["tls"].as_str().unwrap_or("no"),
        );
    }
    let h = HistoryArgs {
        since: None,
        until: None,
        sender: None,
        recipient: None,
        domain: None,
        action: None,
        id: None,
        limit: 0,
        json: false,
        csv: false,
        follow: false,
        cluster: false,
        export_status: false,
        cmd: None,
    };
    print_history_rows(&rows, &h, false);
    for e in &entries {
        println!(
            "now: {} in queue, state {}, attempts {}, next attempt {}, last error: {}",
            e["id"].as_str().unwrap_or(""),
            e["state"].as_str().unwrap_or(""),
            e["attempts"].as_u64().unwrap_or(0),
            fmt_ts(e["next_attempt"].as_f64().unwrap_or(0.0)),
            e["last_error"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

async fn queue_cmd(cfg: &Config, action: &QueueCmd) -> anyhow::Result<()> {
    let selected = match action {
        QueueCmd::Hold(s) => Some(("hold", s)),
        QueueCmd::Release(s) => Some(("release", s)),
        QueueCmd::Retry(s) => Some(("retry", s)),
        QueueCmd::Delete(s) => Some(("delete", s)),
        QueueCmd::Bounce(s) => Some(("bounce", s)),
        _ => None,
    };
    if let Some((name, sel)) = selected {
        return queue_act(cfg, name, sel).await;
    }
    match action {
        QueueCmd::Stats { json } => {
            let v = ask(cfg, Request::QueueStats).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("entries: {}", v["entries"]);
                println!(
                    "oldest: {}",
                    v["oldest_age_seconds"]
                        .as_f64()
                        .map(
                            |s| humantime::format_duration(Duration::from_secs(s as u64))
                                .to_string()
                        )
                        .unwrap_or_else(|| "-".into())
                );
                for k in ["by_state", "by_transport", "by_destination"] {
                    println!("{k}:");
                    if let Some(m) = v[k].as_object() {
                        for (name, n) in m {
                            println!("  {name:<30} {n}");
                        }
                    }
                }
            }
            Ok(())
        }
        QueueCmd::List { filter, json } => {
            let v = ask(
                cfg,
                Request::QueueList {
                    filter: filter.to_filter(),
                },
            )
            .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            println!(
                "{:<17} {:>9} {:<20} {:<7} {:<10} sender -> recipients",
                "ID", "SIZE", "RECEIVED", "STATE", "TRANSPORT"
            );
            for e in &list {
                let ts = e["received_at"].as_f64().unwrap_or(0.0);
                let when = chrono::DateTime::from_timestamp(ts as i64, 0)
                    .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                let rcpts: Vec<&str> = e["recipients"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|r| r["recipient"].as_str()).collect())
                    .unwrap_or_default();
                let sender = e["sender"].as_str().unwrap_or("");
                println!(
                    "{:<17} {:>9} {:<20} {:<7} {:<10} <{}> -> {}",
                    e["id"].as_str().unwrap_or(""),
                    e["size"].as_u64().unwrap_or(0),
                    when,
                    e["state"].as_str().unwrap_or(""),
                    e["transportid"].as_str().unwrap_or(""),
                    sender,
                    rcpts.join(", ")
                );
            }
            println!(
                "-- {} entr{}",
                list.len(),
                if list.len() == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
        QueueCmd::Show { id, json } => {
            let v = ask(cfg, Request::QueueShow { id: id.clone() }).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let Some(obj) = v.as_object() else {
                bail!("unexpected answer");
            };
            for (k, val) in obj {
                if k == "message" || k == "message_base64" {
                    continue;
                }
                match val {
                    Value::String(s) => println!("{k}: {s}"),
                    other => println!("{k}: {other}"),
                }
            }
            println!();
            use std::io::Write;
            let raw = match (obj.get("message"), obj.get("message_base64")) {
                (Some(Value::String(m)), _) => m.as_bytes().to_vec(),
                (_, Some(Value::String(b))) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(b)?
                }
                _ => Vec::new(),
            };
            std::io::stdout().write_all(&raw)?;
            Ok(())
        }
        _ => unreachable!("handled above"),
    }
}
