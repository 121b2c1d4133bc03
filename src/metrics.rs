//! Prometheus metrics: a process-wide registry of atomics that the SMTP,
//! policy, store and delivery code bump with one call each, rendered in the
//! Prometheus text exposition format (version 0.0.4) by [`render`] for
//! `GET /metrics` (see [`crate::http`]).
//!
//! Everything here is lock-free on the hot paths (replies, hook runs,
//! connections); only the delivery and DNS counters, whose labels come from
//! config (transport ids) or a small fixed set, sit behind a mutex. Queue size
//! by state is not counted at all: it is read from the store at scrape time,
//! so it is right after a restart and after `sluice queue` changes.
//!
//! Names follow Prometheus conventions: `sluice_…_total` counters, `_seconds`
//! histograms, base units.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::policy::{Hook, VerdictKind};

const RELAXED: Ordering = Ordering::Relaxed;

/// A histogram with fixed upper bounds (`le`), lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound plus `+Inf`; non-cumulative, summed when rendered.
    counts: Vec<AtomicU64>,
    /// Sum of observations in micro-units (µs for seconds, 1e-6 for sizes).
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, RELAXED);
        self.sum_micro.fetch_add((v.max(0.0) * 1e6) as u64, RELAXED);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(RELAXED)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(RELAXED);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(RELAXED);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_micro.load(RELAXED) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cum}", braces(labels));
    }
}

/// Latency buckets, seconds: 100 µs … 10 s.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Group-commit batch sizes (transactions per fsync).
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// SMTP commands a reply is counted under; anything else is `OTHER`.
/// `CONNECT` is the greeting (and refusals before any command).
pub const COMMANDS: [&str; 16] = [
    "CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
    "EXPN", "HELP", "STARTTLS", "AUTH", "OTHER",
];
const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];
const VERDICTS: [&str; 5] = ["pass", "reply", "accept", "reject", "defer"];
const NHOOKS: usize = Hook::ALL.len();

fn verdict_index(v: VerdictKind) -> usize {
    match v {
        VerdictKind::Pass => 0,
        VerdictKind::Reply => 1,
        VerdictKind::Accept => 2,
        VerdictKind::Reject => 3,
        VerdictKind::Defer => 4,
    }
}

/// The command label index for a verb (uppercase or not).
pub fn command_index(verb: &str) -> usize {
    COMMANDS[..COMMANDS.len() - 1]
        .iter()
        .position(|c| c.eq_ignore_ascii_case(verb))
        .unwrap_or(COMMANDS.len() - 1)
}

fn atomics(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// The registry. One per process ([`global`]); tests read it through
/// [`render`] and compare before/after.
pub struct Metrics {
    pub connections_current: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    /// [command][class]
    replies: Vec<AtomicU64>,
    hook_runs: Vec<AtomicU64>,
    hook_errors: Vec<AtomicU64>,
    /// [hook][verdict]
    hook_verdicts: Vec<AtomicU64>,
    hook_seconds: Vec<Histogram>,
    /// (result, transport) → count
    deliveries: Mutex<BTreeMap<(String, String), u64>>,
    /// (policy file, hook) → runtime errors a compiled policy survived
    policy_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (source or "cache", verdict) → recipient checks
    recipient_checks: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// [exists, unknown, tempfail] → callout probes
    recipient_probes: [AtomicU64; 3],
    recipient_probe_connections: AtomicU64,
    pub fsync_batches: AtomicU64,
    pub fsync_errors: AtomicU64,
    pub storage_refusals: AtomicU64,
    /// Bytes free for Sluice on the data_dir filesystem (last statvfs; -1 unknown).
    pub storage_free: std::sync::atomic::AtomicI64,
    fsync_batch_size: Histogram,
    fsync_seconds: Histogram,
    pub history_records: AtomicU64,
    /// Background history batches that failed to write (kept and retried).
    pub history_write_errors: AtomicU64,
    /// Records waiting in the background history writer (retrying or queued).
    pub history_pending: AtomicI64,
    /// Records the background writer gave up on (its backlog was full).
    pub history_dropped: AtomicU64,
    pub export_rows: AtomicU64,
    pub export_errors: AtomicU64,
    /// Control socket connections refused by SO_PEERCRED.
    pub control_refused: AtomicU64,
    /// Messages refused with 452 4.3.1: `[limits] data_memory` spent.
    pub data_memory_refusals: AtomicU64,
    /// (type, result) → count
    dns_queries: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    dns_seconds: Histogram,
    /// (milter, stage, reply) → count
    milter_replies: Mutex<BTreeMap<(String, String, String), u64>>,
    /// (scanner, kind) → count
    scanner_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// scanner → scan durations
    scan_seconds: Mutex<BTreeMap<String, Histogram>>,
    /// op → (operations, backend errors)
    state_ops: Mutex<BTreeMap<&'static str, (u64, u64)>>,
    /// op → state failures let through by `[state] on_error = "open"`
    state_fail_open: Mutex<BTreeMap<&'static str, u64>>,
    state_evictions: AtomicU64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connections_current: AtomicI64::new(0),
    connections_total: AtomicU64::new(0),
    connections_rejected: AtomicU64::new(0),
    replies: atomics(COMMANDS.len() * CLASSES.len()),
    hook_runs: atomics(NHOOKS),
    hook_errors: atomics(NHOOKS),
    hook_verdicts: atomics(NHOOKS * VERDICTS.len()),
    hook_seconds: (0..NHOOKS).map(|_| Histogram::new(LATENCY)).collect(),
    deliveries: Mutex::new(BTreeMap::new()),
    policy_errors: Mutex::new(BTreeMap::new()),
    recipient_checks: Mutex::new(BTreeMap::new()),
    recipient_probes: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
    recipient_probe_connections: AtomicU64::new(0),
    fsync_batches: AtomicU64::new(0),
    fsync_errors: AtomicU64::new(0),
    storage_refusals: AtomicU64::new(0),
    storage_free: std::sync::atomic::AtomicI64::new(-1),
    fsync_batch_size: Histogram::new(BATCH),
    fsync_seconds: Histogram::new(LATENCY),
    history_records: AtomicU64::new(0),
    history_write_errors: AtomicU64::new(0),
    history_pending: AtomicI64::new(0),
    history_dropped: AtomicU64::new(0),
    export_rows: AtomicU64::new(0),
    export_errors: AtomicU64::new(0),
    control_refused: AtomicU64::new(0),
    data_memory_refusals: AtomicU64::new(0),
    dns_queries: Mutex::new(BTreeMap::new()),
    dns_seconds: Histogram::new(LATENCY),
    milter_replies: Mutex::new(BTreeMap::new()),
    scanner_errors: Mutex::new(BTreeMap::new()),
    scan_seconds: Mutex::new(BTreeMap::new()),
    state_ops: Mutex::new(BTreeMap::new()),
    state_fail_open: Mutex::new(BTreeMap::new()),
    state_evictions: AtomicU64::new(0),
});

pub fn global() -> &'static Metrics {
    &GLOBAL
}

// ---- the one-line hooks the rest of the code calls ------------------------

/// Held for the life of an accepted SMTP connection.
pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        GLOBAL.connections_current.fetch_sub(1, RELAXED);
    }
}

/// A connection got its slot: counts it and tracks it as current until the
/// guard drops.
#[must_use]
pub fn connection_opened() -> ConnectionGuard {
    GLOBAL.connections_total.fetch_add(1, RELAXED);
    GLOBAL.connections_current.fetch_add(1, RELAXED);
    ConnectionGuard(())
}

/// A connection refused with 421 because of `[limits] connections*`.
pub fn connection_rejected() {
    GLOBAL.connections_rejected.fetch_add(1, RELAXED);
}

/// One reply (possibly multi-line) sent to the client while `command`
/// (an index from [`command_index`]) was being handled.
pub fn smtp_reply(command: usize, rendered: &str) {
    let class = match rendered.as_bytes().first() {
        Some(b @ b'2'..=b'5') => (b - b'2') as usize,
        _ => 4,
    };
    let cmd = command.min(COMMANDS.len() - 1);
    GLOBAL.replies[cmd * CLASSES.len() + class].fetch_add(1, RELAXED);
}

/// One hook run (a script chain ran): latency, verdict, script error.
pub fn hook_run(hook: Hook, elapsed: Duration, verdict: VerdictKind, error: bool) {
    let h = hook as usize;
    GLOBAL.hook_runs[h].fetch_add(1, RELAXED);
    GLOBAL.hook_seconds[h].observe(elapsed.as_secs_f64());
    GLOBAL.hook_verdicts[h * VERDICTS.len() + verdict_index(verdict)].fetch_add(1, RELAXED);
    if error {
        GLOBAL.hook_errors[h].fetch_add(1, RELAXED);
    }
}

/// One recipient's delivery attempt ended: `result` is the history action
/// (DELIVER, DEFER, ERROR).
pub fn delivery_attempt(result: &str, transport: &str) {
    let mut m = GLOBAL.deliveries.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry((result.to_ascii_lowercase(), transport.to_string()))
        .or_default() += 1;
}

/// A compiled (Axigen) policy hit a runtime error in one event and went on
/// as if the event had set no action.
pub fn policy_runtime_error(policy: &str, hook: Hook) {
    let mut m = GLOBAL
        .policy_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *m.entry((policy.to_string(), hook.name())).or_default() += 1;
}

/// One recipient validation answered: by a source, by the cache, or by
/// none ("none": no source knew the address).
pub fn recipient_check(source: &str, verdict: &'static str) {
    let mut m = GLOBAL
        .recipient_checks
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *m.entry((source.to_string(), verdict)).or_default() += 1;
}

const PROBE_RESULTS: [&str; 3] = ["exists", "unknown", "tempfail"];

/// One callout probe (RCPT at the mailstore) answered: exists, unknown,
/// tempfail.
pub fn recipient_probe(result: &str) {
    if let Some(i) = PROBE_RESULTS.iter().position(|r| *r == result) {
        GLOBAL.recipient_probes[i].fetch_add(1, RELAXED);
    }
}

/// The callout opened a connection (the others were reused from its pool).
pub fn recipient_probe_connection() {
    GLOBAL.recipient_probe_connections.fetch_add(1, RELAXED);
}

/// One group-commit flush that served `batch` waiters.
pub fn fsync_batch(batch: usize, elapsed: Duration, ok: bool) {
    GLOBAL.fsync_batches.fetch_add(1, RELAXED);
    GLOBAL.fsync_batch_size.observe(batch as f64);
    GLOBAL.fsync_seconds.observe(elapsed.as_secs_f64());
    if !ok {
        GLOBAL.fsync_errors.fetch_add(1, RELAXED);
    }
}

/// MAIL FROM refused with 452 4.3.1: free space below `[queue] min_free`.
pub fn storage_refusal() {
    GLOBAL.storage_refusals.fetch_add(1, RELAXED);
}

pub fn storage_free(bytes: u64) {
    GLOBAL
        .storage_free
        .store(bytes.min(i64::MAX as u64) as i64, RELAXED);
}

pub fn history_written(n: usize) {
    GLOBAL.history_records.fetch_add(n as u64, RELAXED);
}

/// A background history batch failed; it is kept and retried.
pub fn history_write_error() {
    GLOBAL.history_write_errors.fetch_add(1, RELAXED);
}

/// Records now waiting in the background history writer.
pub fn history_pending(n: usize) {
    GLOBAL
        .history_pending
        .store(n.min(i64::MAX as usize) as i64, RELAXED);
}

/// The background history writer dropped `n` records (backlog full).
pub fn history_dropped(n: usize) {
    GLOBAL.history_dropped.fetch_add(n as u64, RELAXED);
}

/// Rows the history exporter got into ClickHouse.
pub fn export_rows(n: usize) {
    GLOBAL.export_rows.fetch_add(n as u64, RELAXED);
}

/// A failed history export request (retried).
pub fn export_error() {
    GLOBAL.export_errors.fetch_add(1, RELAXED);
}

/// A message refused because `[limits] data_memory` was spent.
pub fn data_memory_refusal() {
    GLOBAL.data_memory_refusals.fetch_add(1, RELAXED);
}

/// A control socket connection from another user, refused.
pub fn control_refused() {
    GLOBAL.control_refused.fetch_add(1, RELAXED);
}

/// One lookup through the shared resolver (`crate::scan::dns`): `rtype`
/// ("MX", "A", "TXT", …); `ok` is false for temporary errors (timeout,
/// SERVFAIL), true for answers, NXDOMAIN and NODATA.
pub fn dns_query(rtype: &'static str, elapsed: Duration, ok: bool) {
    GLOBAL.dns_seconds.observe(elapsed.as_secs_f64());
    let mut m = GLOBAL.dns_queries.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry((rtype, if ok { "ok" } else { "error" }))
        .or_default() += 1;
}

/// One milter answer at a stage ("continue", "accept", "reject",
/// "tempfail", "replycode", "discard", "skip", "error").
pub fn milter_reply(milter: &str, stage: &str, reply: &str) {
    let mut m = GLOBAL
        .milter_replies
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *m.entry((milter.to_string(), stage.to_string(), reply.to_string()))
        .or_default() += 1;
}

/// A scanner or milter could not answer: `kind` is "connection",
/// "timeout", "protocol" or "limit".
pub fn scanner_error(scanner: &str, kind: &'static str) {
    let mut m = GLOBAL
        .scanner_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *m.entry((scanner.to_string(), kind)).or_default() += 1;
}

/// One scan by a content scanner ("clamd", "rspamd") took `elapsed`.
pub fn scan_duration(scanner: &str, elapsed: Duration) {
    let mut m = GLOBAL
        .scan_seconds
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    m.entry(scanner.to_string())
        .or_insert_with(|| Histogram::new(LATENCY))
        .observe(elapsed.as_secs_f64());
}

/// One state backend operation (`crate::state`); `error`: the backend
/// failed or timed out.
pub fn state_op(op: &'static str, error: bool) {
    let mut m = GLOBAL.state_ops.lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry(op).or_default();
    e.0 += 1;
    if error {
        e.1 += 1;
    }
}

/// A state failure `[state] on_error = "open"` let through.
pub fn state_fail_open(op: &'static str) {
    let mut m = GLOBAL
        .state_fail_open
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *m.entry(op).or_default() += 1;
}

/// Keys the local state backend evicted for its memory cap.
pub fn state_evictions(n: u64) {
    GLOBAL.state_evictions.fetch_add(n, RELAXED);
}

/// (operations, errors, evictions) so far, for `sluice state stats`.
pub fn state_counts() -> (u64, u64, u64) {
    let m = GLOBAL.state_ops.lock().unwrap_or_else(|e| e.into_inner());
    let (ops, errs) = m.values().fold((0, 0), |(a, b), (o, e)| (a + o, b + e));
    (ops, errs, GLOBAL.state_evictions.load(RELAXED))
}

// ---- exposition -------------------------------------------------------------

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole registry in Prometheus text format. `queue` is the result of
/// [`Store::count_by_state`](crate::store::Store::count_by_state) (None:
/// the queue gauge is left out).
pub fn render(queue: Option<&BTreeMap<&'static str, u64>>) -> String {
    let m = &*GLOBAL;
    let mut out = String::with_capacity(16 * 1024);

    header(
        &mut out,
        "sluice_connections",
        "gauge",
        "SMTP connections open now.",
    );
    let _ = writeln!(
        out,
        "sluice_connections {}",
        m.connections_current.load(RELAXED).max(0)
    );
    header(
        &mut out,
        "sluice_connections_total",
        "counter",
        "SMTP connections accepted (within the connection limits).",
    );
    let _ = writeln!(
        out,
        "sluice_connections_total {}",
        m.connections_total.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_connections_rejected_total",
        "counter",
        "SMTP connections refused with 421 by [limits] connections / connections_per_ip.",
    );
    let _ = writeln!(
        out,
        "sluice_connections_rejected_total{{reason=\"limit\"}} {}",
        m.connections_rejected.load(RELAXED)
    );

    header(
        &mut out,
        "sluice_smtp_replies_total",
        "counter",
        "SMTP replies sent, by the command they answer and reply code class.",
    );
    for (ci, cmd) in COMMANDS.iter().enumerate() {
        for (ki, class) in CLASSES.iter().enumerate() {
            let n = m.replies[ci * CLASSES.len() + ki].load(RELAXED);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "sluice_smtp_replies_total{{command=\"{cmd}\",class=\"{class}\"}} {n}"
                );
            }
        }
    }

    header(
        &mut out,
        "sluice_hook_runs_total",
        "counter",
        "Policy hook runs (a configured script chain ran).",
    );
    per_hook(&mut out, "sluice_hook_runs_total", &m.hook_runs);
    header(
        &mut out,
        "sluice_hook_verdicts_total",
        "counter",
        "Verdicts of policy hook runs (script errors count as their hook's error verdict).",
    );
    for h in Hook::ALL {
        for (vi, v) in VERDICTS.iter().enumerate() {
            let n = m.hook_verdicts[h as usize * VERDICTS.len() + vi].load(RELAXED);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "sluice_hook_verdicts_total{{hook=\"{}\",verdict=\"{v}\"}} {n}",
                    h.name()
                );
            }
        }
    }
    header(
        &mut out,
        "sluice_hook_errors_total",
        "counter",
        "Policy hook runs that ended in a script error (or hit a limit).",
    );
    per_hook(&mut out, "sluice_hook_errors_total", &m.hook_errors);
    header(
        &mut out,
        "sluice_hook_duration_seconds",
        "histogram",
        "Wall time of policy hook runs, including DNS and scans they wait for.",
    );
    for h in Hook::ALL {
        let hist = &m.hook_seconds[h as usize];
        if hist.count() > 0 {
            hist.render(
                &mut out,
                "sluice_hook_duration_seconds",
                &format!("hook=\"{}\"", h.name()),
            );
        }
    }

    if let Some(q) = queue {
        header(
            &mut out,
            "sluice_queue_messages",
            "gauge",
            "Queue entries by state (one entry per message and transport).",
        );
        for (state, n) in q {
            let _ = writeln!(out, "sluice_queue_messages{{state=\"{state}\"}} {n}");
        }
    }

    header(
        &mut out,
        "sluice_delivery_attempts_total",
        "counter",
        "Delivery attempts per recipient, by result (deliver, defer, error) and transport.",
    );
    {
        let d = m.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        for ((result, transport), n) in d.iter() {
            let _ = writeln!(
                out,
                "sluice_delivery_attempts_total{{result=\"{}\",transport=\"{}\"}} {n}",
                label_value(result),
                label_value(transport)
            );
        }
    }

    header(
        &mut out,
        "sluice_policy_runtime_errors_total",
        "counter",
        "Runtime errors in compiled Axigen policies, by policy file and hook; the event went on as if it had set no action.",
    );
    {
        let d = m.policy_errors.lock().unwrap_or_else(|e| e.into_inner());
        for ((policy, hook), n) in d.iter() {
            let _ = writeln!(
                out,
                "sluice_policy_runtime_errors_total{{policy=\"{}\",hook=\"{hook}\"}} {n}",
                label_value(policy)
            );
        }
    }

    header(
        &mut out,
        "sluice_recipient_checks_total",
        "counter",
        "Recipient validations at RCPT by source (\"cache\": a cached answer, \"none\": no source knew the address) and verdict (exists, unknown, tempfail).",
    );
    {
        let d = m.recipient_checks.lock().unwrap_or_else(|e| e.into_inner());
        for ((source, verdict), n) in d.iter() {
            let _ = writeln!(
                out,
                "sluice_recipient_checks_total{{source=\"{}\",verdict=\"{verdict}\"}} {n}",
                label_value(source)
            );
        }
    }

    header(
        &mut out,
        "sluice_recipient_probes_total",
        "counter",
        "Callout probes (MAIL FROM:<>, RCPT TO at the mailstore) by result (exists, unknown, tempfail); cached answers make none.",
    );
    for (i, result) in PROBE_RESULTS.iter().enumerate() {
        let _ = writeln!(
            out,
            "sluice_recipient_probes_total{{result=\"{result}\"}} {}",
            m.recipient_probes[i].load(RELAXED)
        );
    }
    header(
        &mut out,
        "sluice_recipient_probe_connections_total",
        "counter",
        "Connections the callout opened (probes reuse them while they are fresh).",
    );
    let _ = writeln!(
        out,
        "sluice_recipient_probe_connections_total {}",
        m.recipient_probe_connections.load(RELAXED)
    );

    header(
        &mut out,
        "sluice_fsync_batches_total",
        "counter",
        "Group-commit flushes (each fsync serves every commit that waited for it).",
    );
    let _ = writeln!(
        out,
        "sluice_fsync_batches_total {}",
        m.fsync_batches.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_fsync_errors_total",
        "counter",
        "Group-commit flushes that failed (the waiting transactions got 451).",
    );
    let _ = writeln!(
        out,
        "sluice_fsync_errors_total {}",
        m.fsync_errors.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_storage_refusals_total",
        "counter",
        "MAIL FROM refused with 452 4.3.1: free space on data_dir below [queue] min_free (or below the SIZE= announced).",
    );
    let _ = writeln!(
        out,
        "sluice_storage_refusals_total {}",
        m.storage_refusals.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_storage_free_bytes",
        "gauge",
        "Bytes available on the data_dir filesystem at the last check (-1: not checked yet).",
    );
    let _ = writeln!(
        out,
        "sluice_storage_free_bytes {}",
        m.storage_free.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_history_write_errors_total",
        "counter",
        "Background history batches that failed to write (kept and retried with backoff).",
    );
    let _ = writeln!(
        out,
        "sluice_history_write_errors_total {}",
        m.history_write_errors.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_history_pending_records",
        "gauge",
        "History records waiting in the background writer (queued or being retried).",
    );
    let _ = writeln!(
        out,
        "sluice_history_pending_records {}",
        m.history_pending.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_history_dropped_total",
        "counter",
        "History records given up because the writer's backlog was full while writes kept failing.",
    );
    let _ = writeln!(
        out,
        "sluice_history_dropped_total {}",
        m.history_dropped.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_history_export_rows_total",
        "counter",
        "History records exported to ClickHouse ([history.export]).",
    );
    let _ = writeln!(
        out,
        "sluice_history_export_rows_total {}",
        m.export_rows.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_history_export_errors_total",
        "counter",
        "Failed history export requests (each retried with backoff).",
    );
    let _ = writeln!(
        out,
        "sluice_history_export_errors_total {}",
        m.export_errors.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_data_memory_refusals_total",
        "counter",
        "Messages refused with 452 4.3.1 because [limits] data_memory was spent by the messages being received.",
    );
    let _ = writeln!(
        out,
        "sluice_data_memory_refusals_total {}",
        m.data_memory_refusals.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_control_refused_total",
        "counter",
        "Control socket connections refused: the peer (SO_PEERCRED) was neither the daemon's user nor root.",
    );
    let _ = writeln!(
        out,
        "sluice_control_refused_total {}",
        m.control_refused.load(RELAXED)
    );
    header(
        &mut out,
        "sluice_fsync_batch_size",
        "histogram",
        "Commits served by one group-commit flush.",
    );
    m.fsync_batch_size
        .render(&mut out, "sluice_fsync_batch_size", "");
    header(
        &mut out,
        "sluice_fsync_duration_seconds",
        "histogram",
        "Wall time of one group-commit flush.",
    );
    m.fsync_seconds
        .render(&mut out, "sluice_fsync_duration_seconds", "");

    header(
        &mut out,
        "sluice_history_records_total",
        "counter",
        "History records written (REJECT, DELIVER, DEFER, ERROR, DELETE, History()).",
    );
    let _ = writeln!(
        out,
        "sluice_history_records_total {}",
        m.history_records.load(RELAXED)
    );

    header(
        &mut out,
        "sluice_dns_queries_total",
        "counter",
        "DNS lookups through the shared resolver (delivery routing, dns.query, FCrDNS, DNSBL; cache hits included), by record type and result (error = timeout/SERVFAIL).",
    );
    {
        let d = m.dns_queries.lock().unwrap_or_else(|e| e.into_inner());
        for ((rtype, result), n) in d.iter() {
            let _ = writeln!(
                out,
                "sluice_dns_queries_total{{type=\"{rtype}\",result=\"{result}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "sluice_dns_duration_seconds",
        "histogram",
        "Wall time of DNS lookups through the shared resolver.",
    );
    m.dns_seconds
        .render(&mut out, "sluice_dns_duration_seconds", "");
    header(
        &mut out,
        "sluice_milter_replies_total",
        "counter",
        "Milter answers by milter, stage and reply (per-header and per-chunk continues are not counted).",
    );
    {
        let d = m.milter_replies.lock().unwrap_or_else(|e| e.into_inner());
        for ((milter, stage, reply), n) in d.iter() {
            let _ = writeln!(
                out,
                "sluice_milter_replies_total{{milter=\"{}\",stage=\"{stage}\",reply=\"{reply}\"}} {n}",
                label_value(milter)
            );
        }
    }
    header(
        &mut out,
        "sluice_scanner_errors_total",
        "counter",
        "Milters and content scanners that could not answer, by scanner (\"milter:ID\", \"clamd\", \"rspamd\") and kind (connection, timeout, protocol, limit).",
    );
    {
        let d = m.scanner_errors.lock().unwrap_or_else(|e| e.into_inner());
        for ((scanner, kind), n) in d.iter() {
            let _ = writeln!(
                out,
                "sluice_scanner_errors_total{{scanner=\"{}\",kind=\"{kind}\"}} {n}",
                label_value(scanner)
            );
        }
    }
    header(
        &mut out,
        "sluice_scan_duration_seconds",
        "histogram",
        "Wall time of ScanClam and ScanRspamd scans.",
    );
    {
        let d = m.scan_seconds.lock().unwrap_or_else(|e| e.into_inner());
        for (scanner, h) in d.iter() {
            h.render(
                &mut out,
                "sluice_scan_duration_seconds",
                &format!("scanner=\"{}\"", label_value(scanner)),
            );
        }
    }
    header(
        &mut out,
        "sluice_state_operations_total",
        "counter",
        "Shared-state backend operations (rate, get, set, incr, delete, conn), local ones not counted.",
    );
    header(
        &mut out,
        "sluice_state_errors_total",
        "counter",
        "Shared-state operations that failed or timed out (Redis down), by operation.",
    );
    {
        let s = m.state_ops.lock().unwrap_or_else(|e| e.into_inner());
        for (op, (n, _)) in s.iter() {
            let _ = writeln!(out, "sluice_state_operations_total{{op=\"{op}\"}} {n}");
        }
        for (op, (_, e)) in s.iter() {
            let _ = writeln!(out, "sluice_state_errors_total{{op=\"{op}\"}} {e}");
        }
    }
    header(
        &mut out,
        "sluice_state_fail_open_total",
        "counter",
        "Shared-state failures let through by [state] on_error = \"open\", by operation.",
    );
    {
        let s = m.state_fail_open.lock().unwrap_or_else(|e| e.into_inner());
        for (op, n) in s.iter() {
            let _ = writeln!(out, "sluice_state_fail_open_total{{op=\"{op}\"}} {n}");
        }
    }
    header(
        &mut out,
        "sluice_state_evictions_total",
        "counter",
        "Keys the local state backend evicted to stay under [state] max_memory.",
    );
    let _ = writeln!(
        out,
        "sluice_state_evictions_total {}",
        m.state_evictions.load(RELAXED)
    );
    out
}

/// The value of one sample line (`name{labels}` exactly as rendered) in a
/// text exposition; for tests and scripts.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let v = rest.strip_prefix(' ')?;
        v.trim().parse().ok()
    })
}

/// One sample per hook of a per-hook counter array.
fn per_hook(out: &mut String, name: &str, counters: &[AtomicU64]) {
    for h in Hook::ALL {
        let _ = writeln!(
            out,
            "{name}{{hook=\"{}\"}} {}",
            h.name(),
            counters[h as usize].load(RELAXED)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"2\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 3\n"), "{s}");
        assert_eq!(sample(&s, "x_sum{a=\"b\"}"), Some(11.0));
    }

    #[test]
    fn command_labels_are_bounded() {
        assert_eq!(COMMANDS[command_index("mail")], "MAIL");
        assert_eq!(COMMANDS[command_index("XYZZY")], "OTHER");
        smtp_reply(command_index("NOOP"), "250 2.0.0 OK\r\n");
        let text = render(None);
        assert!(
            sample(
                &text,
                "sluice_smtp_replies_total{command=\"NOOP\",class=\"2xx\"}"
            )
            .unwrap()
                >= 1.0
        );
    }

    #[test]
    fn exposition_is_well_formed() {
        delivery_attempt("DELIVER", "de\"fault");
        let q: BTreeMap<&'static str, u64> = [("queued", 3)].into_iter().collect();
        let text = render(Some(&q));
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(line.starts_with("# HELP sluice_") || line.starts_with("# TYPE sluice_"));
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(series.starts_with("sluice_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert_eq!(series.matches('{').count(), series.matches('}').count());
        }
        assert!(text.contains("transport=\"de\\\"fault\""));
        assert_eq!(
            sample(&text, "sluice_queue_messages{state=\"queued\"}"),
            Some(3.0)
        );
    }
}
