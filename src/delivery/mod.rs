//! Delivery: the scheduler that takes due entries from the queue's due
//! index, routes them (static next hops or MX, RFC 5321 §5 / RFC 7505), runs
//! the predelivery/postdelivery hooks, talks SMTP/LMTP to the next hop,
//! records every outcome in history, retries with backoff, and bounces
//! (RFC 3464). An entry leaves the queue only after the next hop accepted
//! it and the history record is written; after a crash it is retried, so a
//! message whose 250 raced the crash may be delivered twice — never lost.
//!
//! The delivery hooks talk to this code through typed verdict options, not
//! context keys (the hooks run outside any connection, so their `context`
//! starts empty and is dropped): predelivery `Pass({host, port, tls})` is a
//! [`Route`] for this attempt, laid over the transport and the entry's
//! `metadata.relayhost`; postdelivery `Pass({bounce, delay, success})` is
//! the report wording, merged into the entry's `control.reports` so a
//! report sent on a later attempt (at expiry) still uses it. An entry's
//! `control.overquota` (mail:queue `overquota`, Axigen overquotaAction)
//! decides what a next hop's X.2.2 reply means. The compiled Axigen
//! onRelay / onDelivery* events give exactly these verdicts.

pub mod client;
pub mod dsn;
pub mod route;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{Config, TransportConfig};
use crate::policy::{
    DeliveryInfo, DeliveryResult, Hook, HookArguments, HookInput, HookVerdict, PolicyEngine, Route,
};
use crate::proto::reply::SmtpReply;
use crate::store::history::{HistoryAction, HistoryRecord};
use crate::store::queue::{
    NewMessage, OverquotaAction, QueueEntry, QueuedRecipient, ReportWording,
};
use crate::store::Store;
use client::{ClientError, Envelope, SmtpClient};

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
enum Outcome {
    Delivered {
        reply: SmtpReply,
        host: String,
        ip: String,
        dsn_relayed: bool,
    },
    Deferred {
        reason: String,
        host: Option<String>,
        ip: Option<String>,
    },
    Failed {
        reply: SmtpReply,
        host: Option<String>,
        ip: Option<String>,
    },
}

struct Pooled {
    since: Instant,
    client: SmtpClient,
}

pub struct DeliveryService {
    config: Arc<Config>,
    store: Store,
    policy: Arc<PolicyEngine>,
    dns: crate::scan::dns::Dns,
    tls: HashMap<String, Arc<rustls::ClientConfig>>,
    inflight: Mutex<HashSet<String>>,
    active: Arc<Semaphore>,
    per_transport: HashMap<String, Arc<Semaphore>>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: Mutex<HashMap<String, Vec<Pooled>>>,
}

const POOL_IDLE: Duration = Duration::from_secs(30);
/// The shortest time between two scans of the due index when new entries
/// keep arriving: what a message newly queued may wait before its first
/// attempt starts.
const SCAN_GAP: Duration = Duration::from_millis(10);
const POOL_MAX_PER_KEY: usize = 16;

impl DeliveryService {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        policy: Arc<PolicyEngine>,
    ) -> Result<Arc<Self>, String> {
        let mut tls = HashMap::new();
        let mut per_transport = HashMap::new();
        for (name, t) in &config.transport {
            tls.insert(
                name.clone(),
                client::client_tls_config(t.tls, t.ca_file.as_deref())
                    .map_err(|e| format!("transport.{name}: {e}"))?,
            );
            per_transport.insert(name.clone(), Arc::new(Semaphore::new(t.concurrency)));
        }
        Ok(Arc::new(DeliveryService {
            dns: crate::scan::dns::Dns::new(&config.dns),
            active: Arc::new(Semaphore::new(config.queue.max_active.max(1))),
            config,
            store,
            policy,
            tls,
            inflight: Mutex::new(HashSet::new()),
            per_transport,
            per_destination: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
        }))
    }

    /// The scheduler loop; returns when `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // The due index was rebuilt by `Store::recover` when the daemon opened the queue.
        info!(
            entries = self.store.queue_len(),
            "delivery scheduler started"
        );
        let notify = self.store.queue_notify();
        loop {
            if *stop.borrow() {
                break;
            }
            let now = now_secs();
            let due = self.store.due_keys(now, 1000).unwrap_or_default();
            let mut started = 0;
            for due in due {
                if !self
                    .inflight
                    .lock()
                    .expect("inflight")
                    .insert(due.id.clone())
                {
                    continue;
                }
                started += 1;
                let me = self.clone();
                tokio::spawn(async move {
                    let permit = me.active.clone().acquire_owned().await;
                    let id = due.id.clone();
                    me.attempt(due).await;
                    drop(permit);
                    me.inflight.lock().expect("inflight").remove(&id);
                });
            }
            let wait = match self.store.next_due() {
                Ok(Some(t)) if t > now => Duration::from_secs_f64((t - now).min(60.0)),
                // Everything due is in flight: look again soon.
                Ok(Some(_)) => Duration::from_millis(if started > 0 { 20 } else { 200 }),
                _ => Duration::from_secs(60),
            };
            let scanned = Instant::now();
            tokio::select! {
                _ = notify.notified() => {
                    // Under load every group commit notifies: scanning the
                    // due index at most every SCAN_GAP, not per commit, cut
                    // the scheduler from 4.5% of the daemon's CPU while
                    // relaying (perf, benches/compare.sh relay row).
                    let rest = SCAN_GAP.saturating_sub(scanned.elapsed());
                    if !rest.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(rest) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        info!("delivery scheduler stopped");
    }

    fn transport(&self, id: &str) -> Option<&TransportConfig> {
        self.config.transport.get(id)
    }

    async fn run_delivery_hook(
        &self,
        hook: Hook,
        info: DeliveryInfo,
    ) -> Option<crate::policy::HookOutcome> {
        if !self.policy.has_hook(hook) {
            return None;
        }
        let input = HookInput {
            connection: Default::default(),
            transaction: None,
            arguments: HookArguments::Delivery(info),
            context: serde_json::Value::Object(Default::default()),
        };
        let out = self.policy.run(hook, input).await;
        if let Some(e) = &out.error {
            warn!(hook = hook.spec().name, error = %e, "delivery script error");
        }
        Some(out)
    }

    fn delivery_info(
        &self,
        e: &QueueEntry,
        result: Option<DeliveryResult>,
        next_hop: Option<String>,
    ) -> DeliveryInfo {
        DeliveryInfo {
            queue_id: e.id.clone(),
            transaction_id: e.transaction.clone(),
            sender: e.sender.clone(),
            recipient: e
                .recipients
                .first()
                .map(|r| r.recipient.clone())
                .unwrap_or_default(),
            transportid: e.transportid.clone(),
            metadata: e.metadata.clone(),
            attempt: e.attempts + 1,
            queued_at: e.received_at,
            next_hop,
            result,
            size: e.size,
            next_attempt: None,
            remaining_attempts: None,
        }
    }

    /// Seconds until the retry after a temporary failure of attempt number
    /// `attempts + 1`: exponential from `min_retry_delay`, capped.
    fn backoff(&self, attempts: u32) -> f64 {
        let q = &self.config.queue;
        let d = q.min_retry_delay.as_secs_f64() * 2f64.powi(attempts.min(20) as i32);
        d.min(q.max_retry_delay.as_secs_f64())
    }

    /// After a temporary failure now: (time of the next attempt, attempts
    /// left before the entry expires). The attempt after the lifetime ends
    /// is the last one (see [`Self::settle`]).
    fn retry_plan(&self, e: &QueueEntry, now: f64) -> (f64, u32) {
        let lifetime = self.config.queue.max_lifetime.as_secs_f64();
        let next = now + self.backoff(e.attempts);
        let (mut t, mut k, mut left) = (next, e.attempts, 0u32);
        while left < 10_000 {
            left += 1;
            if t - e.received_at > lifetime {
                break;
            }
            k += 1;
            t += self.backoff(k);
        }
        (next, left)
    }

    /// The transport for this attempt: the configured one, with the
    /// entry's `metadata.relayhost` (an rcptto script, Axigen's
    /// currentRcptRelayHost) and then the predelivery route over it.
    fn routed(
        t: &TransportConfig,
        relayhost: Option<&str>,
        route: Option<&Route>,
    ) -> TransportConfig {
        let mut t = t.clone();
        let port = route.and_then(|r| r.port);
        if let Some(p) = port {
            t.port = p;
        }
        let with_port = |h: &str, port: u16| -> String {
            if h.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("[{h}]:{port}")
            } else {
                format!("{h}:{port}")
            }
        };
        let host = route.and_then(|r| r.host.as_deref()).or(relayhost);
        match host {
            Some(h) => {
                // A hop with its own port keeps it unless the route names one.
                let hop = match (crate::config::split_host_port(h), port) {
                    (Some(_), None) => h.to_string(),
                    (Some((name, _)), Some(p)) => with_port(&name, p),
                    (None, _) => with_port(h, t.port),
                };
                t.host = Some(crate::config::HostList::One(hop));
            }
            None => {
                if let (Some(p), Some(hl)) = (port, &t.host) {
                    t.host = Some(crate::config::HostList::Many(
                        hl.hosts()
                            .iter()
                            .map(|h| match crate::config::split_host_port(h) {
                                Some((name, _)) => with_port(&name, p),
                                None => h.clone(),
                            })
                            .collect(),
                    ));
                }
            }
        }
        if let Some(tls) = route.and_then(|r| r.tls) {
            t.tls = tls;
        }
        t
    }

    /// One delivery attempt of the entry a due-index key names. A key that
    /// no longer matches a queued entry is dropped (see [`Store::check_due`]).
    async fn attempt(&self, due: crate::store::queue::DueKey) {
        let id = due.id.as_str();
        let mut entry = match self.store.check_due(&due) {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                warn!(queue = %id, error = %e, "cannot read queue entry");
                return;
            }
        };
        let Some(body) = self.store.get_body(&entry.body).ok().flatten() else {
            warn!(queue = %id, "queue entry without a body: dropped");
            let _ = self.store.remove_entry(id);
            return;
        };
        // predelivery may reroute, hold off or cancel.
        let mut transportid = entry.transportid.clone();
        let mut forced: Option<Outcome> = None;
        if std::mem::take(&mut entry.control.bounce_requested) {
            forced = Some(Outcome::Failed {
                reply: SmtpReply::with(550, "5.0.0", "bounced by the operator"),
                host: None,
                ip: None,
            });
        }
        let relayhost = entry
            .metadata
            .get("relayhost")
            .filter(|h| !h.is_empty())
            .cloned();
        let mut route = None;
        if self.policy.has_hook(Hook::PreDelivery) {
            // The hop the script would otherwise get (Axigen: remoteSmtpHost).
            let planned = relayhost.clone().or_else(|| {
                self.transport(&transportid)
                    .and_then(|t| t.host.as_ref())
                    .and_then(|h| h.hosts().into_iter().next())
            });
            if let Some(out) = self
                .run_delivery_hook(Hook::PreDelivery, self.delivery_info(&entry, None, planned))
                .await
            {
                if let Some(t) = out.transportid {
                    transportid = t;
                }
                route = out.route;
                match out.verdict {
                    HookVerdict::Reject { reply, .. } => {
                        forced = Some(Outcome::Failed {
                            reply,
                            host: None,
                            ip: None,
                        })
                    }
                    HookVerdict::Defer { reply, .. } => {
                        forced = Some(Outcome::Deferred {
                            reason: reply.to_string(),
                            host: None,
                            ip: None,
                        })
                    }
                    _ => {}
                }
            }
        }
        let outcomes: Vec<Outcome> = match forced {
            Some(o) => vec![o; entry.recipients.len()],
            None => match self.transport(&transportid) {
                None => vec![
                    Outcome::Failed {
                        reply: SmtpReply::with(
                            550,
                            "5.3.5",
                            format!("unknown transport {transportid:?}")
                        ),
                        host: None,
                        ip: None
                    };
                    entry.recipients.len()
                ],
                Some(t) => {
                    let _permit = match self.per_transport.get(&transportid) {
                        Some(s) => Some(s.clone().acquire_owned().await),
                        None => None,
                    };
                    if let Some(r) = &route {
                        debug!(queue = %entry.id, host = ?r.host, port = ?r.port, tls = ?r.tls, "predelivery route");
                    }
                    let t = Self::routed(t, relayhost.as_deref(), route.as_ref());
                    self.deliver(&entry, &transportid, &t, &body).await
                }
            },
        };
        let mut outcomes = outcomes;
        // An attempt past the lifetime is the last: its temporary failures
        // are final, and postdelivery sees them as failures (Axigen:
        // onDeliveryFailure words the bounce).
        let now = now_secs();
        if now - entry.received_at > self.config.queue.max_lifetime.as_secs_f64() {
            for o in outcomes.iter_mut() {
                if let Outcome::Deferred { reason, host, ip } = o {
                    *o = Outcome::Failed {
                        reply: SmtpReply::with(
                            550,
                            "5.4.7",
                            format!("delivery time expired; last error: {reason}"),
                        ),
                        host: host.take(),
                        ip: ip.take(),
                    };
                }
            }
        }
        // A delay notice the postdelivery script asked for at this attempt.
        let mut delay_now = None;
        // postdelivery sees the result and may bounce now or retry later.
        if self.policy.has_hook(Hook::PostDelivery) {
            let first = outcomes.first().cloned();
            let (result, hop) = match &first {
                Some(Outcome::Delivered { reply, host, .. })
                | Some(Outcome::Failed {
                    reply,
                    host: Some(host),
                    ..
                }) => (
                    Some(DeliveryResult {
                        code: reply.code,
                        enhanced: reply.enhanced.map(|e| e.to_string()),
                        text: reply.text(),
                        local_error: false,
                    }),
                    Some(host.clone()),
                ),
                Some(Outcome::Failed {
                    reply, host: None, ..
                }) => (
                    Some(DeliveryResult {
                        code: reply.code,
                        enhanced: reply.enhanced.map(|e| e.to_string()),
                        text: reply.text(),
                        local_error: true,
                    }),
                    None,
                ),
                Some(Outcome::Deferred { reason, host, .. }) => (
                    Some(DeliveryResult {
                        code: 451,
                        enhanced: Some("4.4.1".into()),
                        text: reason.clone(),
                        local_error: true,
                    }),
                    host.clone(),
                ),
                None => (None, None),
            };
            let mut info = self.delivery_info(&entry, result, hop);
            if matches!(first, Some(Outcome::Deferred { .. })) {
                let (next, left) = self.retry_plan(&entry, now);
                info.next_attempt = Some(next);
                info.remaining_attempts = Some(left);
            }
            if let Some(out) = self.run_delivery_hook(Hook::PostDelivery, info).await {
                let mut reports = out.reports.clone();
                // The older shorthand: context.bounce_subject / bounce_text
                // word the failure report like Pass({bounce = {subject, text}}).
                let word = |key: &str| {
                    out.context
                        .get(key)
                        .and_then(|v| v.as_str())
                        .map(String::from)
                };
                let (subject, text) = (word("bounce_subject"), word("bounce_text"));
                if subject.is_some() || text.is_some() {
                    let b = reports.bounce.get_or_insert_with(Default::default);
                    b.subject = b.subject.take().or(subject);
                    b.text = b.text.take().or(text);
                }
                if let Some(d) = reports.delay.as_mut() {
                    // "Now" is this attempt's, not the entry's.
                    delay_now = d.send.take();
                }
                entry.control.reports.merge(reports);
                for o in outcomes.iter_mut() {
                    match (&out.verdict, &o) {
                        (HookVerdict::Reject { reply, .. }, Outcome::Deferred { host, ip, .. }) => {
                            *o = Outcome::Failed {
                                reply: reply.clone(),
                                host: host.clone(),
                                ip: ip.clone(),
                            }
                        }
                        (HookVerdict::Defer { reply, .. }, Outcome::Failed { host, ip, .. }) => {
                            *o = Outcome::Deferred {
                                reason: reply.to_string(),
                                host: host.clone(),
                                ip: ip.clone(),
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        self.settle(&mut entry, &transportid, outcomes, &body, delay_now)
            .await;
    }

    /// Route and send: returns one outcome per recipient of the entry.
    async fn deliver(
        &self,
        entry: &QueueEntry,
        transportid: &str,
        t: &TransportConfig,
        body: &Bytes,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; entry.recipients.len()];
        // Static routes take everything at once; MX routing groups by domain.
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in entry.recipients.iter().enumerate() {
            let key = if t.host.is_some() {
                String::new()
            } else {
                r.recipient
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_lowercase())
                    .unwrap_or_default()
            };
            groups.entry(key).or_default().push(i);
        }
        for (domain, idxs) in groups {
            let hops = match route::next_hops(&self.dns, t, &domain).await {
                Ok(h) => h,
                Err(route::RouteError::Permanent(reply)) => {
                    for i in idxs {
                        outcomes[i] = Some(Outcome::Failed {
                            reply: reply.clone(),
                            host: None,
                            ip: None,
                        });
                    }
                    continue;
                }
                Err(route::RouteError::Temporary(reason)) => {
                    for i in idxs {
                        outcomes[i] = Some(Outcome::Deferred {
                            reason: reason.clone(),
                            host: None,
                            ip: None,
                        });
                    }
                    continue;
                }
            };
            let rcpts: Vec<&QueuedRecipient> = idxs.iter().map(|&i| &entry.recipients[i]).collect();
            let res = self
                .send_via_hops(entry, transportid, t, &hops, &rcpts, body)
                .await;
            for (k, i) in idxs.into_iter().enumerate() {
                outcomes[i] = Some(res[k].clone());
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Deferred {
                    reason: "not attempted".into(),
                    host: None,
                    ip: None,
                })
            })
            .collect()
    }

    fn destination_slot(&self, key: &str, limit: usize) -> Arc<Semaphore> {
        self.per_destination
            .lock()
            .expect("destinations")
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
            .clone()
    }

    fn take_pooled(&self, key: &str) -> Option<SmtpClient> {
        let mut pool = self.pool.lock().expect("pool");
        let list = pool.get_mut(key)?;
        while let Some(p) = list.pop() {
            if p.since.elapsed() < POOL_IDLE {
                return Some(p.client);
            }
        }
        None
    }

    fn put_pooled(&self, key: String, client: SmtpClient) {
        let mut pool = self.pool.lock().expect("pool");
        let list = pool.entry(key).or_default();
        if list.len() < POOL_MAX_PER_KEY {
            list.push(Pooled {
                since: Instant::now(),
                client,
            });
        }
    }

    async fn send_via_hops(
        &self,
        entry: &QueueEntry,
        transportid: &str,
        t: &TransportConfig,
        hops: &[(String, SocketAddr)],
        rcpts: &[&QueuedRecipient],
        body: &Bytes,
    ) -> Vec<Outcome> {
        let rcpt_params: Vec<Option<String>> = rcpts
            .iter()
            .map(|r| {
                let mut p = Vec::new();
                if !r.dsn.notify.is_empty() {
                    p.push(format!("NOTIFY={}", r.dsn.notify.join(",")));
                }
                if let Some((ty, a)) = &r.dsn.orcpt {
                    p.push(format!("ORCPT={ty};{}", client::xtext_encode(a)));
                }
                (!p.is_empty()).then(|| p.join(" "))
            })
            .collect();
        let env = Envelope {
            sender: &entry.sender,
            recipients: rcpts
                .iter()
                .zip(rcpt_params)
                .map(|(r, p)| (r.recipient.as_str(), p))
                .collect(),
            body,
            eight_bit: entry.eight_bit,
            smtputf8: entry.smtputf8,
            ret: entry.dsn.ret.as_deref(),
            envid: entry.dsn.envid.as_deref(),
        };
        let mut last_err = String::from("no next hop");
        let mut last_host = None;
        let mut last_ip = None;
        // The transport's TLS config, unless a predelivery route changed the mode.
        let configured = self.transport(transportid).map(|c| c.tls);
        let tls_cfg = match self.tls.get(transportid) {
            Some(c) if configured == Some(t.tls) => c.clone(),
            _ => match client::client_tls_config(t.tls, t.ca_file.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    warn!(queue = %entry.id, error = %e, "client TLS config");
                    client::client_tls_config(t.tls, None).expect("default tls config")
                }
            },
        };
        let overquota = entry.control.overquota;
        for (host, addr) in hops {
            // The TLS mode is part of the key: a route asking for TLS never
            // reuses a plain connection to the same address.
            let key = format!("{transportid}|{:?}|{addr}", t.tls);
            let slot = self.destination_slot(&addr.to_string(), t.connections_per_destination);
            let _permit = slot.acquire_owned().await;
            last_host = Some(host.clone());
            last_ip = Some(addr.ip().to_string());
            // A pooled connection may have been closed by the peer: one retry on a fresh one.
            let mut tries = 0;
            loop {
                tries += 1;
                let (mut c, reused) = match self.take_pooled(&key) {
                    Some(c) => (c, true),
                    None => match SmtpClient::connect(
                        *addr,
                        host,
                        t.kind,
                        t.tls,
                        tls_cfg.clone(),
                        &self.config.hostname,
                        t.connect_timeout,
                    )
                    .await
                    {
                        Ok(c) => (c, false),
                        Err(ClientError::Reply(r)) if r.is_permanent() => {
                            return rcpts
                                .iter()
                                .map(|_| Outcome::Failed {
                                    reply: r.clone(),
                                    host: Some(host.clone()),
                                    ip: Some(addr.ip().to_string()),
                                })
                                .collect();
                        }
                        Err(e) => {
                            debug!(queue = %entry.id, host = %host, error = %e, "next hop failed");
                            last_err = format!("{host} [{}]: {e}", addr.ip());
                            break;
                        }
                    },
                };
                match c.send_message(&env).await {
                    Ok(replies) => {
                        let dsn_relayed = c.has("DSN");
                        self.put_pooled(key.clone(), c);
                        return replies
                            .into_iter()
                            .map(|r| overquota_reply(r, overquota))
                            .map(|r| {
                                if r.is_positive() {
                                    Outcome::Delivered {
                                        reply: r,
                                        host: host.clone(),
                                        ip: addr.ip().to_string(),
                                        dsn_relayed,
                                    }
                                } else if r.is_permanent() && !retry_over_quota(&r, overquota) {
                                    Outcome::Failed {
                                        reply: r,
                                        host: Some(host.clone()),
                                        ip: Some(addr.ip().to_string()),
                                    }
                                } else if r.is_permanent() {
                                    Outcome::Deferred {
                                        reason: format!(
                                            "{host} [{}] said: {r} (over quota: overquotaAction tmpreject, retrying)",
                                            addr.ip()
                                        ),
                                        host: Some(host.clone()),
                                        ip: Some(addr.ip().to_string()),
                                    }
                                } else {
                                    Outcome::Deferred {
                                        reason: format!("{host} [{}] said: {r}", addr.ip()),
                                        host: Some(host.clone()),
                                        ip: Some(addr.ip().to_string()),
                                    }
                                }
                            })
                            .collect();
                    }
                    Err(ClientError::Network(e)) if reused && tries < 2 => {
                        debug!(queue = %entry.id, host = %host, error = %e, "pooled connection failed, reconnecting");
                        continue;
                    }
                    Err(ClientError::Reply(r)) | Err(ClientError::Local(r)) if r.is_permanent() => {
                        if c.rset().await {
                            self.put_pooled(key.clone(), c);
                        }
                        return rcpts
                            .iter()
                            .map(|_| Outcome::Failed {
                                reply: r.clone(),
                                host: Some(host.clone()),
                                ip: Some(addr.ip().to_string()),
                            })
                            .collect();
                    }
                    Err(e) => {
                        last_err = format!("{host} [{}]: {e}", addr.ip());
                        c.quit().await;
                        break;
                    }
                }
            }
        }
        rcpts
            .iter()
            .map(|_| Outcome::Deferred {
                reason: last_err.clone(),
                host: last_host.clone(),
                ip: last_ip.clone(),
            })
            .collect()
    }

    fn history_record(
        &self,
        e: &QueueEntry,
        r: &QueuedRecipient,
        action: HistoryAction,
        reason: String,
    ) -> HistoryRecord {
        HistoryRecord::for_entry(e, &r.recipient, action, reason)
    }

    /// Record outcomes, bounce what failed, and remove or reschedule the entry.
    async fn settle(
        &self,
        entry: &mut QueueEntry,
        transportid: &str,
        outcomes: Vec<Outcome>,
        body: &Bytes,
        delay_now: Option<bool>,
    ) {
        let now = now_secs();
        let expired = now - entry.received_at > self.config.queue.max_lifetime.as_secs_f64();
        let mut history = Vec::new();
        let mut failed: Vec<(QueuedRecipient, SmtpReply, Option<String>)> = Vec::new();
        let mut delivered_notify: Vec<(QueuedRecipient, SmtpReply, String)> = Vec::new();
        let mut remaining = Vec::new();
        let mut last_reason = None;
        let backoff = self.backoff(entry.attempts);
        for (r, o) in entry.recipients.iter().zip(outcomes) {
            match o {
                Outcome::Delivered {
                    reply,
                    host,
                    ip,
                    dsn_relayed,
                } => {
                    let mut h =
                        self.history_record(entry, r, HistoryAction::Deliver, reply.to_string());
                    h.remote_host = Some(host.clone());
                    h.remote_ip = Some(ip);
                    h.transportid = transportid.to_string();
                    history.push(h);
                    if !dsn_relayed && dsn::wants(r, "SUCCESS") {
                        delivered_notify.push((r.clone(), reply, host));
                    }
                }
                Outcome::Failed { reply, host, ip } => {
                    let mut h =
                        self.history_record(entry, r, HistoryAction::Error, reply.to_string());
                    h.remote_host = host.clone();
                    h.remote_ip = ip;
                    history.push(h);
                    failed.push((r.clone(), reply, host));
                }
                Outcome::Deferred { reason, host, ip } => {
                    if expired {
                        let reply = SmtpReply::with(
                            550,
                            "5.4.7",
                            format!("delivery time expired; last error: {reason}"),
                        );
                        let mut h =
                            self.history_record(entry, r, HistoryAction::Error, reply.to_string());
                        h.remote_host = host.clone();
                        h.remote_ip = ip;
                        history.push(h);
                        failed.push((r.clone(), reply, host));
                    } else {
                        let mut h =
                            self.history_record(entry, r, HistoryAction::Defer, reason.clone());
                        h.remote_host = host;
                        h.remote_ip = ip;
                        h.next_retry = Some(now + backoff);
                        history.push(h);
                        last_reason = Some(reason);
                        remaining.push(r.clone());
                    }
                }
            }
        }
        for h in &history {
            crate::metrics::delivery_attempt(h.action.as_str(), transportid);
            info!(
                queue = %entry.id, tx = %entry.transaction, action = %h.action, to = %h.recipient,
                relay = %h.remote_host.as_deref().unwrap_or("-"), reason = %h.reason, "delivery"
            );
        }
        // After the message's RECEIVED record (written in the background),
        // so the history lists them in the order they happened.
        self.store.received_landed(&entry.transaction).await;
        // The outcome is on disk before the entry changes or leaves the
        // queue; concurrent deliveries share the write and the fsync.
        if let Err(e) = self.store.commit_history(history).await {
            warn!(queue = %entry.id, error = %e, "history write failed");
        }
        // Reports to the sender: never to the null sender (no bounce loops),
        // and not of a kind the postdelivery script turned off.
        let off = |w: &Option<ReportWording>| w.as_ref().and_then(|w| w.send) == Some(false);
        let reports = entry.control.reports.clone();
        if !entry.sender.is_empty() && off(&reports.bounce) && !failed.is_empty() {
            info!(queue = %entry.id, to = %entry.sender, failed = failed.len(), "failure report not sent: turned off by the postdelivery policy");
        }
        if !entry.sender.is_empty() {
            let fails: Vec<dsn::DsnRecipient> = failed
                .iter()
                .filter(|(r, _, _)| dsn::wants(r, "FAILURE"))
                .map(|(r, reply, host)| dsn::DsnRecipient {
                    recipient: r,
                    action: dsn::DsnAction::Failed,
                    status: reply
                        .enhanced
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "5.0.0".into()),
                    remote_mta: host.clone(),
                    diagnostic: Some(reply.to_string()),
                })
                .collect();
            if !fails.is_empty() && !off(&reports.bounce) {
                self.queue_report(entry, body, &fails, dsn::DsnAction::Failed)
                    .await;
            }
            let oks: Vec<dsn::DsnRecipient> = delivered_notify
                .iter()
                .map(|(r, reply, host)| dsn::DsnRecipient {
                    recipient: r,
                    action: dsn::DsnAction::Delivered,
                    status: reply
                        .enhanced
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "2.0.0".into()),
                    remote_mta: Some(host.clone()),
                    diagnostic: Some(reply.to_string()),
                })
                .collect();
            if !oks.is_empty() && !off(&reports.success) {
                self.queue_report(entry, body, &oks, dsn::DsnAction::Delivered)
                    .await;
            }
        }
        if remaining.is_empty() {
            if let Err(e) = self.store.remove_entry(&entry.id) {
                warn!(queue = %entry.id, error = %e, "removing delivered entry failed");
            }
            return;
        }
        let age = now - entry.received_at;
        entry.recipients = remaining;
        entry.attempts += 1;
        entry.next_attempt = now + backoff;
        entry.last_error = last_reason;
        // A delay notice: once, at delay_warning, for NOTIFY=DELAY; or at
        // this attempt when the postdelivery script asked (Axigen sendNDR
        // in onTemporaryDeliveryFailure) — then also without NOTIFY, never
        // for NOTIFY=NEVER.
        let asked = delay_now == Some(true);
        if !entry.sender.is_empty()
            && delay_now != Some(false)
            && (asked
                || (!entry.delay_notified && age >= self.config.queue.delay_warning.as_secs_f64()))
        {
            let delayed: Vec<dsn::DsnRecipient> = entry
                .recipients
                .iter()
                .filter(|r| dsn::wants(r, "DELAY") || (asked && r.dsn.notify.is_empty()))
                .map(|r| dsn::DsnRecipient {
                    recipient: r,
                    action: dsn::DsnAction::Delayed,
                    status: "4.4.1".into(),
                    remote_mta: None,
                    diagnostic: entry.last_error.clone(),
                })
                .collect();
            if !delayed.is_empty() {
                self.queue_report(entry, body, &delayed, dsn::DsnAction::Delayed)
                    .await;
            }
            entry.delay_notified = true;
        }
        if let Err(e) = self.store.update_entry(entry) {
            warn!(queue = %entry.id, error = %e, "rescheduling failed");
        }
    }

    async fn queue_report(
        &self,
        entry: &QueueEntry,
        body: &Bytes,
        rcpts: &[dsn::DsnRecipient<'_>],
        action: dsn::DsnAction,
    ) {
        let (subject, text) = dsn::default_text(action);
        let q = &self.config.queue;
        // A postdelivery script's wording for this entry, then the config's
        // (failure reports only), then the built-in one.
        let none = ReportWording::default();
        let w = match action {
            dsn::DsnAction::Failed => entry.control.reports.bounce.as_ref(),
            dsn::DsnAction::Delayed => entry.control.reports.delay.as_ref(),
            _ => entry.control.reports.success.as_ref(),
        }
        .unwrap_or(&none);
        let failed = action == dsn::DsnAction::Failed;
        let subject = w
            .subject
            .as_deref()
            .or(q.bounce_subject.as_deref().filter(|_| failed))
            .unwrap_or(subject);
        let text = w
            .text
            .as_deref()
            .or(q.bounce_text.as_deref().filter(|_| failed))
            .unwrap_or(text);
        let lifetime = humantime::format_duration(q.max_lifetime).to_string();
        let expand = |s: &str| {
            s.replace("{hostname}", &self.config.hostname)
                .replace("{lifetime}", &lifetime)
        };
        let (subject, text) = (expand(subject), expand(text));
        let recipient_text = w.recipient_text.as_deref().map(expand);
        let footer = w.footer.as_deref().map(expand);
        let report = dsn::build(
            &self.config.hostname,
            entry,
            body,
            rcpts,
            &dsn::DsnText {
                subject: &subject,
                from: w.from.as_deref(),
                body: &text,
                recipient_text: recipient_text.as_deref(),
                footer: footer.as_deref(),
                attach: w.attach.unwrap_or(crate::store::queue::AttachSource::Full),
            },
        );
        let id = crate::ids::new_id();
        let msg = NewMessage {
            body_id: id.clone(),
            body: Bytes::from(report.clone()),
            entries: vec![{
                let mut e = QueueEntry::accepted(
                    &entry.transaction,
                    "",
                    vec![QueuedRecipient {
                        recipient: entry.sender.clone(),
                        transportid: "default".into(),
                        dsn: Default::default(),
                    }],
                    "default",
                    &id,
                    report.len() as u64,
                );
                e.id = id.clone();
                e.metadata = BTreeMap::from([("dsn_for".to_string(), entry.id.clone())]);
                e.eight_bit = true;
                e
            }],
        };
        match self.store.commit_messages(std::slice::from_ref(&msg)).await {
            Ok(()) => {
                info!(queue = %entry.id, report = %id, action = %action, to = %entry.sender, "delivery status notification queued")
            }
            Err(e) => warn!(queue = %entry.id, error = %e, "queueing the DSN failed"),
        }
    }
}

/// RFC 3463 X.2.2: mailbox full.
fn is_over_quota(r: &SmtpReply) -> bool {
    r.enhanced.is_some_and(|e| e.1 == 2 && e.2 == 2) && !r.is_positive()
}

/// `overquota = "reject"`: a temporary over-quota answer (452 4.2.2) is a
/// permanent failure, reported as 552 5.2.2 with the next hop's text.
fn overquota_reply(r: SmtpReply, action: Option<OverquotaAction>) -> SmtpReply {
    if action == Some(OverquotaAction::Reject) && is_over_quota(&r) && !r.is_permanent() {
        let mut p = SmtpReply::new(
            552,
            Some(crate::proto::reply::EnhancedCode(5, 2, 2)),
            String::new(),
        );
        p.lines = r.lines.clone();
        p.lines.push(format!(
            "(was {} {}; overquotaAction reject)",
            r.code,
            r.enhanced.map(|e| e.to_string()).unwrap_or_default()
        ));
        return p;
    }
    r
}

/// `overquota = "tmpreject"`: a permanent over-quota answer is retried.
fn retry_over_quota(r: &SmtpReply, action: Option<OverquotaAction>) -> bool {
    action == Some(OverquotaAction::Tmpreject) && is_over_quota(r) && r.is_permanent()
}
