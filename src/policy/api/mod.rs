//! The Lua-visible API, one file per object. Each file has a `register`
//! function that installs its globals into a fresh state; [`register_all`]
//! is the one place that lists them.
//!
//! Per-run data (which hook, the connection id, the verdict once given, what
//! was queued) lives in the state's app data as a [`RunState`] while a hook
//! runs; per-state data shared by all runs of one config epoch is [`Shared`].

pub mod auth;
pub mod base64;
pub mod directory;
pub mod dlp;
pub mod dns;
pub mod dnsbl;
pub mod envelope;
pub mod geoip;
pub mod history;
pub mod http;
pub mod ip;
pub mod json;
pub mod log;
pub mod mail;
pub mod re;
pub mod scanners;
pub mod server;
pub mod sha256;
pub mod state;
pub mod strings;
pub mod verdict;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, Table, Value};

use super::hooks::{Hook, VerdictKind};
use super::{HistoryRequest, QueueRequest};
use crate::envelope::TransactionInfo;
use crate::proto::reply::EnhancedCode;

/// Install every API object into `lua`'s globals.
pub fn register_all(lua: &Lua) -> mlua::Result<()> {
    verdict::register(lua)?;
    envelope::register(lua)?;
    history::register(lua)?;
    mail::register(lua)?;
    dns::register(lua)?;
    log::register(lua)?;
    json::register(lua)?;
    re::register(lua)?;
    ip::register(lua)?;
    sha256::register(lua)?;
    base64::register(lua)?;
    auth::register(lua)?;
    dnsbl::register(lua)?;
    geoip::register(lua)?;
    dlp::register(lua)?;
    server::register(lua)?;
    directory::register(lua)?;
    scanners::register(lua)?;
    state::register(lua)?;
    http::register(lua)?;
    #[cfg(test)]
    lua.globals().set(
        "__test_panic",
        lua.create_function(|_, ()| -> mlua::Result<()> { panic!("test panic") })?,
    )?;
    Ok(())
}

/// Build the scanners of an epoch; errors name the config key. A hook
/// script that mentions `geoip.` with no database configured is an error
/// here, at load, not at the first message.
pub fn scan_context(
    cfg: &crate::config::Config,
    extra: &[super::ScriptSource],
) -> Result<crate::scan::ScanContext, super::PolicyError> {
    let scan = crate::scan::ScanContext::from_config(cfg)
        .map_err(|e| super::PolicyError::Input(e.to_string()))?;
    if !scan.geoip.is_configured() {
        let mut sources: Vec<(String, String)> = extra
            .iter()
            .map(|x| (x.name.clone(), x.source.clone()))
            .collect();
        for spec in &super::HOOKS {
            if let Some(path) = (spec.script)(&cfg.scripts) {
                if let Ok(src) = std::fs::read_to_string(path) {
                    sources.push((path.display().to_string(), src));
                }
            }
        }
        if let Some((name, _)) = sources.iter().find(|(_, s)| geoip::mentions_geoip(s)) {
            return Err(super::PolicyError::Input(format!(
                "{name}: the script uses geoip but neither [geoip] country_db nor asn_db is set"
            )));
        }
    }
    Ok(scan)
}

/// Data of one config epoch every state of that epoch shares.
pub struct Shared {
    /// Transport ids `[transport.*]` defines.
    pub transports: BTreeSet<String>,
    pub dns: Arc<dns::Dns>,
    /// Sender checks, GeoIP and DLP of this epoch.
    pub scan: Arc<crate::scan::ScanContext>,
    /// `hostname` and `[relay]` (for `sluice.*`).
    pub hostname: String,
    pub relay: Arc<crate::config::RelayConfig>,
    /// `[recipients]` validation, when configured (`recipient.verify`).
    pub recipients: Option<Arc<crate::recipients::Validator>>,
    /// `[state]`: rate limits, memory, cache (one store for the daemon's
    /// life, shared by every epoch).
    pub state: Arc<crate::state::StateStore>,
}

/// A verdict as the script gave it, before defaults are applied.
#[derive(Debug, Clone, Default)]
pub struct ScriptVerdict {
    pub kind: Option<VerdictKind>,
    pub reason: Option<Vec<String>>,
    pub code: Option<u16>,
    /// `Some(None)`: the script asked for no enhanced code (`enhanced = false`).
    pub enhanced: Option<Option<EnhancedCode>>,
    pub disconnect: bool,
    pub next: bool,
    pub command: Option<String>,
    pub transportid: Option<String>,
    /// Accept rewrites: helo `host`, mailfrom `sender`, rcptto `recipient`.
    pub host: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    /// predelivery `Pass({host, port, tls})`.
    pub route: Option<crate::policy::Route>,
    /// postdelivery `Pass({bounce, delay, success})`.
    pub reports: Box<crate::policy::ReportWordings>,
}

/// Why a run stopped before falling off the end.
#[derive(Debug, Clone)]
pub enum Termination {
    Verdict(ScriptVerdict),
    /// Instruction budget, memory limit: nothing in the script may continue.
    Fatal(String),
}

/// App data of a state while one hook runs.
pub struct RunState {
    pub hook: Hook,
    pub conn_id: String,
    pub transaction: Option<TransactionInfo>,
    pub termination: Option<Termination>,
    pub queued: Vec<QueueRequest>,
    pub history: Vec<HistoryRequest>,
    pub instructions: u64,
    pub instruction_limit: u64,
    /// The client (defaults of ScanDMARC and spf.check).
    pub connection: Option<crate::envelope::ConnectionInfo>,
    /// Which limits / greylist entries decided (a denying `rate.check`,
    /// `state.note`), for the history record of a refusal.
    pub decided_by: Vec<String>,
    /// The connection's `context` as the hook began (scripts get a Lua
    /// copy on first read).
    pub context: serde_json::Value,
    /// The script read `context` (so `_ENV.context` is what it left).
    pub context_read: bool,
    /// The hook's arguments, for `arguments` on first read.
    pub arguments: Option<crate::policy::HookArguments>,
    /// `arguments.mail` once built: emptied when the run ends, so the
    /// message is freed even if a script kept a reference.
    pub mail: Option<mlua::AnyUserData>,
}

impl RunState {
    /// eod: the message as received (what ScanDMARC and ScanDLP scan);
    /// `None` in other hooks and for the headers-only message.
    pub fn message(&self) -> Option<bytes::Bytes> {
        match &self.arguments {
            Some(crate::policy::HookArguments::Mail {
                message,
                headers_only: false,
            }) => Some(message.clone()),
            _ => None,
        }
    }

    pub fn new(
        hook: Hook,
        conn_id: String,
        transaction: Option<TransactionInfo>,
        limit: u64,
    ) -> Self {
        RunState {
            hook,
            conn_id,
            transaction,
            termination: None,
            queued: Vec::new(),
            history: Vec::new(),
            instructions: 0,
            instruction_limit: limit,
            connection: None,
            decided_by: Vec::new(),
            context: serde_json::Value::Null,
            context_read: false,
            arguments: None,
            mail: None,
        }
    }
}

/// Run trusted host code that builds values of bounded size (the envelope
/// tables) without mlua's protected calls. Never around code that reads a
/// script's tables with `get` or calls its functions: their metamethods
/// would run unmetered (`memory_hogs_are_stopped` has that case).
///
/// With a memory limit set, mlua wraps every string and table it creates in
/// a `lua_pcall` of its own (so that an allocation failure cannot unwind
/// through Rust frames); for the envelope tables of a hook that was about a
/// third of the hook's CPU (perf over benches/policy-overhead.sh). The limit
/// is lifted while `f` runs and put back after, also on an early return or
/// a panic; what `f` allocated counts against it from then on, so a script
/// still cannot grow past the limit by itself.
pub(crate) fn unmetered<R>(lua: &Lua, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a Lua, usize);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            if self.1 != 0 {
                let _ = self.0.set_memory_limit(self.1);
            }
        }
    }
    let previous = lua.set_memory_limit(0).unwrap_or(0);
    let _restore = Restore(lua, previous);
    f()
}

/// Run `f` on the current [`RunState`]; an error if no hook is running
/// (module top level code at `require` time, for instance).
pub(crate) fn with_run<R>(
    lua: &Lua,
    what: &str,
    f: impl FnOnce(&mut RunState) -> R,
) -> mlua::Result<R> {
    match lua.app_data_mut::<RunState>() {
        Some(mut rs) => Ok(f(&mut rs)),
        None => Err(mlua::Error::runtime(format!(
            "{what} can only be used while a hook runs"
        ))),
    }
}

/// An error that stops the script; `pcall` in user code cannot swallow it
/// because the termination is recorded in the [`RunState`] first.
pub(crate) fn terminate(lua: &Lua, t: Termination) -> mlua::Error {
    mlua::Error::runtime(record_termination(lua, t))
}

/// Record the end of the run; returns the message the script ends with.
pub(crate) fn record_termination(lua: &Lua, t: Termination) -> String {
    let msg = match &t {
        Termination::Verdict(v) => format!(
            "{}() ends the script",
            v.kind.map(|k| k.function()).unwrap_or("verdict")
        ),
        Termination::Fatal(m) => m.clone(),
    };
    if let Some(mut rs) = lua.app_data_mut::<RunState>() {
        if rs.termination.is_none() {
            rs.termination = Some(t);
        }
    }
    msg
}

pub(crate) fn is_terminated(lua: &Lua) -> bool {
    lua.app_data_ref::<RunState>()
        .map(|rs| rs.termination.is_some())
        .unwrap_or(false)
}

/// Could `a` stand in an envelope (MAIL FROM / RCPT TO) as we write it
/// out: at most 320 bytes, no control characters, white space or angle
/// brackets. Used by `mail:queue` and by `Accept` rewrites.
pub(crate) fn is_envelope_address(a: &str) -> bool {
    a.len() <= 320
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

/// An address given as a string or as `{localpart = , domain = }`.
pub(crate) fn address_arg(v: &Value, what: &str) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_str()?.to_string()),
        Value::Table(t) => {
            let local: String = t.get::<Option<String>>("localpart")?.unwrap_or_default();
            let domain: String = t.get::<Option<String>>("domain")?.unwrap_or_default();
            if domain.is_empty() {
                Ok(local)
            } else {
                Ok(format!("{local}@{domain}"))
            }
        }
        other => Err(mlua::Error::runtime(format!(
            "{what}: expected an address string or {{localpart, domain}} table, got {}",
            other.type_name()
        ))),
    }
}

/// A table of string → scalar as a string map (metadata).
pub(crate) fn string_map(t: Option<Table>, what: &str) -> mlua::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(t) = t {
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair?;
            let key = scalar_string(&k)
                .ok_or_else(|| mlua::Error::runtime(format!("{what}: keys must be strings")))?;
            let val = scalar_string(&v).ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "{what}: value of {key:?} must be a string, number or boolean, got {}",
                    v.type_name()
                ))
            })?;
            out.insert(key, val);
        }
    }
    Ok(out)
}

pub(crate) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string_lossy()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Plain Lua data → JSON. Tables whose keys are exactly 1..n are arrays; an
/// empty table is an object unless it carries the array metatable.
pub(crate) fn lua_to_json(lua: &Lua, v: &Value, depth: usize) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth > 64 {
        return Err("nesting too deep (or a table refers to itself)".into());
    }
    Ok(match v {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => J::from(*i),
        Value::Number(n) => serde_json::Number::from_f64(*n)
            .map(J::Number)
            .ok_or_else(|| format!("{n} cannot be represented in JSON"))?,
        Value::String(s) => J::String(s.to_string_lossy()),
        Value::LightUserData(u) if u.0.is_null() => J::Null,
        Value::Table(t) => {
            let len = t.raw_len();
            let mut count = 0usize;
            let mut all_seq = true;
            for pair in t.clone().pairs::<Value, Value>() {
                let (k, _) = pair.map_err(|e| e.to_string())?;
                count += 1;
                match k {
                    Value::Integer(i) if i >= 1 && (i as usize) <= len => {}
                    _ => all_seq = false,
                }
            }
            let is_array = if count == 0 {
                t.metatable()
                    .map(|m| m == lua.array_metatable())
                    .unwrap_or(false)
            } else {
                all_seq && count == len
            };
            if is_array {
                let mut out = Vec::with_capacity(len);
                for i in 1..=len {
                    let item: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                    out.push(lua_to_json(lua, &item, depth + 1)?);
                }
                J::Array(out)
            } else {
                let mut out = serde_json::Map::new();
                for pair in t.clone().pairs::<Value, Value>() {
                    let (k, val) = pair.map_err(|e| e.to_string())?;
                    let key = match &k {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(i) => i.to_string(),
                        Value::Number(n) => n.to_string(),
                        Value::Boolean(b) => b.to_string(),
                        other => return Err(format!("a {} cannot be a key", other.type_name())),
                    };
                    out.insert(key, lua_to_json(lua, &val, depth + 1)?);
                }
                J::Object(out)
            }
        }
        other => return Err(format!("a {} is not plain data", other.type_name())),
    })
}

/// JSON → Lua; `null` becomes `null_value` (nil for `context`, `json.null`
/// for `json.decode`). Arrays get the array metatable so they encode back as
/// arrays even when empty.
pub(crate) fn json_to_lua(
    lua: &Lua,
    v: &serde_json::Value,
    null_value: &Value,
) -> mlua::Result<Value> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => null_value.clone(),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i)
            } else {
                Value::Number(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, item) in a.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item, null_value)?)?;
            }
            t.set_metatable(Some(lua.array_metatable()))?;
            Value::Table(t)
        }
        J::Object(o) => {
            let t = lua.create_table_with_capacity(0, o.len())?;
            for (k, item) in o {
                t.raw_set(k.as_str(), json_to_lua(lua, item, null_value)?)?;
            }
            Value::Table(t)
        }
    })
}
