//! Listeners: bind every `[[listener]]`, accept connections, apply the
//! connection limits (total and per client IP, after the PROXY header so the
//! real client counts), and run one session task per connection. Owns
//! graceful shutdown: stop accepting, let transactions finish, 421 the rest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::io::{Conn, Stream};
use super::proxy_protocol;
use super::session::Session;
use crate::config::{Config, ListenerConfig, ListenerTls};
use crate::policy::PolicyEngine;
use crate::store::Store;
use crate::tls::TlsStore;

/// Shutdown phases, broadcast to every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Idle sessions get 421 now; transactions in flight may finish.
    Draining,
    /// Everyone gets 421 now.
    Stopping,
}

/// What every session shares.
pub struct ServerContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub policy: Arc<PolicyEngine>,
    pub tls: TlsStore,
    /// `[recipients]` validation (None: every local recipient exists).
    pub recipients: Option<Arc<crate::recipients::Validator>>,
    pub limiter: ConnLimiter,
    pub phase: watch::Receiver<Phase>,
    /// `[state]`: with Redis, `connections_per_ip` counts across the fleet.
    pub state: Arc<crate::state::StateStore>,
    /// `[limits] data_memory`: message content held while receiving.
    pub data_memory: Arc<crate::smtp::data::DataMemory>,
}

/// Counts connections in total and per client IP.
#[derive(Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

pub struct ConnSlot<'a> {
    limiter: &'a ConnLimiter,
    ip: IpAddr,
}

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.limiter.per_ip.lock().expect("limiter lock");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl ConnLimiter {
    pub fn try_acquire(
        &self,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<ConnSlot<'_>> {
        let mut m = self.per_ip.lock().expect("limiter lock");
        if self.total.load(Ordering::Acquire) >= max_total {
            return None;
        }
        let n = m.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ConnSlot { limiter: self, ip })
    }

    pub fn active(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// A running server: its bound addresses and the handle to stop it.
pub struct RunningServer {
    pub addrs: Vec<(String, SocketAddr)>,
    phase_tx: watch::Sender<Phase>,
    accept_tasks: JoinSet<()>,
    sessions: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    pub ctx: Arc<ServerContext>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {id}: cannot bind {address}: {source}")]
    Bind {
        id: String,
        address: String,
        source: std::io::Error,
    },
}

/// Bind every listener and start accepting.
pub async fn start(
    config: Arc<Config>,
    store: Store,
    tls: TlsStore,
    policy: Arc<PolicyEngine>,
    recipients: Option<Arc<crate::recipients::Validator>>,
) -> Result<RunningServer, ServerError> {
    let state = policy.state();
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let ctx = Arc::new(ServerContext {
        config: config.clone(),
        store,
        policy,
        tls,
        recipients,
        limiter: ConnLimiter::default(),
        phase: phase_rx,
        state,
        data_memory: crate::smtp::data::DataMemory::new(config.limits.data_memory),
    });
    let sessions = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    let mut accept_tasks = JoinSet::new();
    let mut addrs = Vec::new();
    for l in &config.listener {
        let listener = TcpListener::bind(&l.address)
            .await
            .map_err(|e| ServerError::Bind {
                id: l.id.clone(),
                address: l.address.clone(),
                source: e,
            })?;
        let local = listener.local_addr().map_err(|e| ServerError::Bind {
            id: l.id.clone(),
            address: l.address.clone(),
            source: e,
        })?;
        info!(listener = %l.id, address = %local, tls = ?l.tls, proxy_protocol = l.proxy_protocol, "listening");
        addrs.push((l.id.clone(), local));
        let lcfg = Arc::new(l.clone());
        let ctx2 = ctx.clone();
        let sessions2 = sessions.clone();
        accept_tasks.spawn(accept_loop(listener, lcfg, ctx2, sessions2));
    }
    Ok(RunningServer {
        addrs,
        phase_tx,
        accept_tasks,
        sessions,
        ctx,
    })
}

async fn accept_loop(
    listener: TcpListener,
    lcfg: Arc<ListenerConfig>,
    ctx: Arc<ServerContext>,
    sessions: Arc<tokio::sync::Mutex<JoinSet<()>>>,
) {
    let mut phase = ctx.phase.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = phase.wait_for(|p| *p != Phase::Running) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let lcfg = lcfg.clone();
                let mut set = sessions.lock().await;
                // Reap finished sessions so the set does not grow without bound.
                while set.try_join_next().is_some() {}
                set.spawn(handle_connection(ctx, lcfg, stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(listener = %lcfg.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_connection(
    ctx: Arc<ServerContext>,
    lcfg: Arc<ListenerConfig>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) {
    let limits = &ctx.config.limits;
    let local = tcp.local_addr().unwrap_or(peer);
    let (peer, local) = if lcfg.proxy_protocol {
        match tokio::time::timeout(
            limits.handshake_timeout,
            Box::pin(proxy_protocol::read_header(&mut tcp)),
        )
        .await
        {
            Ok(Ok(Some((src, dst)))) => (src, dst),
            Ok(Ok(None)) => (peer, local),
            Ok(Err(e)) => {
                warn!(listener = %lcfg.id, proxy = %peer, error = %e, "dropping connection");
                return;
            }
            Err(_) => {
                warn!(listener = %lcfg.id, proxy = %peer, "PROXY header timeout");
                return;
            }
        }
    } else {
        (peer, local)
    };
    let conn_id = crate::ids::new_id();
    let Some(_slot) =
        ctx.limiter
            .try_acquire(peer.ip(), limits.connections, limits.connections_per_ip)
    else {
        crate::metrics::connection_rejected();
        info!(conn = %conn_id, client = %peer, listener = %lcfg.id, "too many connections: 421");
        let msg = b"421 4.7.0 Too many connections, try again later\r\n";
        if lcfg.tls != ListenerTls::Implicit {
            let _ = tcp.write_all(msg).await;
        }
        let _ = tcp.shutdown().await;
        return;
    };
    // Fleet-wide (Redis): the same limit over every node's connections.
    let _fleet_slot = if ctx.state.counts_fleet_connections() {
        let ip = peer.ip().to_canonical().to_string();
        match Box::pin(
            ctx.state
                .conn_acquire(&ip, &conn_id, limits.connections_per_ip),
        )
        .await
        {
            Ok(Some(slot)) => Some(slot),
            Ok(None) => {
                crate::metrics::connection_rejected();
                info!(conn = %conn_id, client = %peer, listener = %lcfg.id, "too many connections across the fleet: 421");
                refuse_connection(
                    &lcfg,
                    tcp,
                    b"421 4.7.0 Too many connections, try again later\r\n",
                )
                .await;
                return;
            }
            Err(e) => match ctx.state.on_error() {
                crate::config::StateOnError::Open => {
                    crate::metrics::state_fail_open("conn");
                    warn!(conn = %conn_id, client = %peer, error = %e, "fleet connection count unavailable: on_error = open, allowing");
                    None
                }
                crate::config::StateOnError::Tempfail => {
                    warn!(conn = %conn_id, client = %peer, error = %e, "fleet connection count unavailable: on_error = tempfail, 421");
                    refuse_connection(
                        &lcfg,
                        tcp,
                        b"421 4.3.0 Temporary local problem, try again later\r\n",
                    )
                    .await;
                    return;
                }
            },
        }
    } else {
        None
    };
    let _counted = crate::metrics::connection_opened();
    let stream = if lcfg.tls == ListenerTls::Implicit {
        let Some(sc) = ctx.tls.get() else {
            warn!(conn = %conn_id, "implicit TLS listener without a certificate");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(sc);
        match tokio::time::timeout(limits.handshake_timeout, Box::pin(acceptor.accept(tcp))).await {
            Ok(Ok(s)) => Stream::Tls(Box::new(s)),
            Ok(Err(e)) => {
                info!(conn = %conn_id, client = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                info!(conn = %conn_id, client = %peer, "TLS handshake timeout");
                return;
            }
        }
    } else {
        Stream::Plain(tcp)
    };
    // The task holds this future for the connection's whole life: every
    // step above that is rare or large (PROXY header, fleet count, TLS
    // handshake) is boxed, so only the session's own state stays inline
    // (an idle connection's cost: tests/memory.rs, and the session test
    // idle_session_future_is_small).
    let session = Session::new(ctx.clone(), lcfg, Conn::new(stream), conn_id, peer, local);
    Box::new(session).run().await;
}

/// 421 before the banner (not on implicit TLS: no handshake yet), then close.
async fn refuse_connection(lcfg: &ListenerConfig, mut tcp: TcpStream, msg: &[u8]) {
    if lcfg.tls != ListenerTls::Implicit {
        let _ = tcp.write_all(msg).await;
    }
    let _ = tcp.shutdown().await;
}

impl RunningServer {
    /// Stop accepting, let transactions finish for up to `grace`, then 421
    /// everyone still connected and wait for them to go.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.phase_tx.send(Phase::Draining);
        while self.accept_tasks.join_next().await.is_some() {}
        let sessions = self.sessions.clone();
        let drained = tokio::time::timeout(grace, async {
            let mut set = sessions.lock().await;
            while set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let _ = self.phase_tx.send(Phase::Stopping);
            let mut set = self.sessions.lock().await;
            if tokio::time::timeout(Duration::from_secs(5), async {
                while set.join_next().await.is_some() {}
            })
            .await
            .is_err()
            {
                set.abort_all();
            }
        }
        if let Err(e) = self.ctx.store.flush_bounded(Duration::from_secs(3)) {
            tracing::error!(error = %e, "flush at shutdown failed");
        }
        info!("server stopped");
    }

    pub fn addr(&self, id: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(i, _)| i == id).map(|(_, a)| *a)
    }
}
