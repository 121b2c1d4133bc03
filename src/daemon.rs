//! `sluice run`: wires config, store, TLS, listeners and the control socket
//! together, and handles signals (SIGHUP reload, SIGTERM/SIGINT graceful stop).
//! Tests start the same [`Daemon`] in-process.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::control::{self, ReloadFn};
use crate::policy::PolicyEngine;
use crate::smtp::server::{self, RunningServer};
use crate::store::Store;
use crate::tls::{self, TlsStore};

pub struct Daemon {
    pub server: RunningServer,
    delivery_stop: tokio::sync::watch::Sender<bool>,
    delivery: Option<tokio::task::JoinHandle<()>>,
    pub store: Store,
    pub config: Arc<Config>,
    reload: ReloadFn,
    control: Option<tokio::task::JoinHandle<()>>,
    /// `[http]`: /metrics and the JSON API (None when the address is empty).
    pub http: Option<crate::http::HttpServer>,
}

impl Daemon {
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let config = Arc::new(config);
        let store = Store::open(&config.data_dir).context("opening the queue database")?;
        let recovered = store.recover().context("recovering the queue")?;
        info!(
            queued = store.queue_len(),
            incomplete_entries_removed = recovered.incomplete_entries,
            dangling_refs_removed = recovered.dangling_refs,
            orphan_bodies_removed = recovered.orphan_bodies,
            data_dir = %config.data_dir.display(),
            "queue opened"
        );
        let intake_reserve = store.free_space().map_or(0, |space| {
            crate::config::MinFree::reserve(config.queue.min_free, space.total)
        });
        store.set_history_floor(intake_reserve / 2);
        let space_reserve = tokio::spawn(keep_space_reserve(store.clone(), intake_reserve));
        drop(space_reserve);
        drop(tokio::spawn(settle_body_segments(store.clone())));
        let tls_store = if config.needs_tls() {
            TlsStore::new(Some(
                tls::server_config(&config.tls).context("loading [tls]")?,
            ))
        } else {
            // Optional: STARTTLS is simply not offered without a certificate.
            TlsStore::new(tls::server_config(&config.tls).ok())
        };
        let policy = PolicyEngine::load(&config).context("loading scripts")?;
        // One store for the daemon's life: reloads keep counters.
        let state = crate::state::StateStore::new(&config.state).context("[state]")?;
        info!(backend = state.backend_name(), "state store ready");
        policy.set_state(state.clone());
        let recipients =
            crate::recipients::Validator::from_config(&config).map_err(|e| anyhow::anyhow!(e))?;
        policy.set_recipients(recipients.clone());
        let reload: ReloadFn = {
            let recipients = recipients.clone();
            let config = config.clone();
            let tls_store = tls_store.clone();
            let policy = policy.clone();
            Arc::new(move || {
                let mut done = Vec::new();
                // Scripts first: a broken script keeps the old ones (and says where).
                policy
                    .reload(&config)
                    .map_err(|e| format!("scripts: {e}"))?;
                done.push(policy.sources().summary());
                if let Some(r) = &recipients {
                    r.reload().map_err(|e| format!("recipients: {e}"))?;
                    done.push("recipient sources".into());
                }
                if config.tls.certificate.exists() {
                    let sc = tls::server_config(&config.tls).map_err(|e| e.to_string())?;
                    tls_store.set(sc);
                    done.push("tls certificate".into());
                }
                Ok(format!(
                    "reloaded: {}",
                    if done.is_empty() {
                        "nothing".into()
                    } else {
                        done.join(", ")
                    }
                ))
            })
        };
        let server = server::start(
            config.clone(),
            store.clone(),
            tls_store,
            policy.clone(),
            recipients,
        )
        .await
        .context("starting listeners")?;
        let (delivery_stop, stop_rx) = tokio::sync::watch::channel(false);
        let delivery = if config.queue.deliver {
            let svc = crate::delivery::DeliveryService::new(
                config.clone(),
                store.clone(),
                policy.clone(),
            )
            .map_err(|e| anyhow::anyhow!(e))
            .context("starting delivery")?;
            Some(tokio::spawn(svc.run(stop_rx)))
        } else {
            None
        };
        let history_pruner = {
            let store = store.clone();
            let h = config.history.clone();
            tokio::spawn(async move {
                loop {
                    let cutoff = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0)
                        - h.retention.as_secs_f64();
                    let st = store.clone();
                    let max = h.max_records;
                    match tokio::task::spawn_blocking(move || st.prune_history(cutoff, max)).await {
                        Ok(Ok(n)) if n > 0 => info!(records = n, "history pruned"),
                        Ok(Err(e)) => warn!(error = %e, "history pruning failed"),
                        _ => {}
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
                }
            })
        };
        drop(history_pruner);
        if config.history.export.enabled() {
            tokio::spawn(crate::export::run(
                store.clone(),
                config.history.export.clone(),
                config.hostname.clone(),
                config.history.retention,
                delivery_stop.subscribe(),
            ));
        }
        let control = match control::serve(
            config.control_socket.clone(),
            store.clone(),
            reload.clone(),
            Some(state),
        )
        .await
        {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(path = %config.control_socket.display(), error = %e, "control socket unavailable");
                None
            }
        };
        let cluster = config
            .history
            .export
            .enabled()
            .then(|| config.as_ref().clone());
        let http = crate::http::start(&config.http, store.clone(), Some(reload.clone()), cluster)
            .await
            .with_context(|| format!("starting [http] on {:?}", config.http.address))?;
        Ok(Daemon {
            http,
            server,
            delivery_stop,
            delivery,
            store,
            config,
            reload,
            control,
        })
    }

    pub fn addr(&self, listener_id: &str) -> Option<SocketAddr> {
        self.server.addr(listener_id)
    }

    pub fn reload(&self) -> Result<String, String> {
        (self.reload)()
    }

    /// Run until SIGTERM/SIGINT; SIGHUP reloads.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => match self.reload() {
                    Ok(m) => info!("SIGHUP: {m}"),
                    Err(e) => error!(error = %e, "SIGHUP: reload failed, keeping the old configuration"),
                },
            }
        }
        self.shutdown().await;
        Ok(())
    }

    pub async fn shutdown(self) {
        let grace = self.config.smtp.shutdown_grace;
        if let Some(c) = self.control {
            c.abort();
        }
        let _ = std::fs::remove_file(&self.config.control_socket);
        self.server.shutdown(grace).await;
        let _ = self.delivery_stop.send(true);
        if let Some(d) = self.delivery {
            // Attempts in flight are simply retried after restart.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), d).await;
        }
        if let Err(e) = self.store.flush_bounded(std::time::Duration::from_secs(3)) {
            error!(error = %e, "final flush failed");
        }
    }
}

/// Keep the space reserve file in data_dir (see `store::space`): put it
/// there at start and, if it was used, again as soon as the filesystem has
/// room for it above the intake reserve (checked every 5 s); intake, which
/// refuses while the reserve is in use, then resumes.
/// Every 10 s, move the bodies left in sparse body segments into sled so
/// the files can go (see `store::bodies`): bounds the disk a few deferred
/// messages can hold.
async fn settle_body_segments(store: Store) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.settle_sparse_segments()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(moved)) => {
                info!(moved, "moved bodies out of sparse body segments")
            }
            Ok(Err(e)) => warn!(error = %e, "moving bodies out of sparse body segments failed"),
            Err(_) => {}
        }
    }
}

async fn keep_space_reserve(store: Store, headroom: u64) {
    use crate::store::space::{ensure_reserve, Reserve};
    let data_dir = store.data_dir().to_path_buf();
    let mut told_no_room = false;
    loop {
        let dir = data_dir.clone();
        match tokio::task::spawn_blocking(move || ensure_reserve(&dir, headroom)).await {
            Ok(Ok(Reserve::Created)) => {
                told_no_room = false;
                if store.reserve_in_use() {
                    store.set_reserve_in_use(false);
                    info!(data_dir = %data_dir.display(), "space reserve restored: intake resumes");
                } else {
                    info!(data_dir = %data_dir.display(), "space reserve created");
                }
            }
            Ok(Ok(Reserve::Present)) if store.reserve_in_use() => store.set_reserve_in_use(false),
            Ok(Ok(Reserve::NoRoom { avail })) if !told_no_room => {
                told_no_room = true;
                warn!(data_dir = %data_dir.display(), free = avail, "no room for the space reserve; it is put back once space is freed");
            }
            Ok(Err(e)) => {
                warn!(data_dir = %data_dir.display(), error = %e, "writing the space reserve failed")
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}
