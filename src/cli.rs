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
    /// Run one hook of the configured scripts against a sample message and
    /// envelope, and print the verdict (and what it queued) as JSON.
    TestScript(TestScriptArgs),
}

#[derive(clap::Args, Debug)]
pub struct TestScriptArgs {
    /// Hook name: connect, helo, auth, mailfrom, rcptto, data, headers, eod, disconnect, proxy…
    pub hook: String,
    /// Message file (RFC 5322) for headers/eod.
    #[arg(long)]
    pub message: Option<PathBuf>,
    /// Envelope and arguments as JSON, e.g.
    /// '{"connection":{"remoteip":"192.0.2.1"},"transaction":{"sender":"a@b"},"arguments":{"address":"x@y"}}'
    #[arg(long, default_value = "{}")]
    pub envelope: String,
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// List queued messages.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one entry: the envelope, then the raw message as it will be relayed.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
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
    /// Give up after this long.
    #[arg(long, default_value = "10m")]
    pub timeout: humantime::Duration,
    #[arg(long)]
    pub json: bool,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(dispatch(cli))
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
            crate::policy::PolicyEngine::check(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("config OK");
            Ok(())
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
            let res = match req {
                Request::QueueList => control::queue_list_json(&store),
                Request::QueueShow { id } => control::queue_show_json(&store, &id),
                Request::Ping => Ok(Value::String("no daemon".into())),
                Request::Reload => Err("no daemon running".into()),
            };
            res.map_err(|e| anyhow::anyhow!(e))
        }
        Err(e) => Err(e.into()),
    }
}

async fn queue_cmd(cfg: &Config, action: &QueueCmd) -> anyhow::Result<()> {
    match action {
        QueueCmd::List { json } => {
            let v = ask(cfg, Request::QueueList).await?;
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
    }
}
