//! The engine: scripts compiled once per config "epoch", a pool of Lua states
//! (KumoMTA style: taken for one run, returned explicitly, dropped when they
//! belong to an older epoch, have served too many runs, or hit a limit), and
//! the dispatch that turns a run into a [`HookOutcome`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use mlua::{AnyUserData, ChunkMode, Function, Lua, Table, Value};

use super::api::mail::MailMessage;
use super::api::{self, dns::Dns, envelope, RunState, ScriptVerdict, Shared, Termination};
use super::hooks::{Fallback, Hook, HookSpec, VerdictKind, HOOKS, HOOK_COUNT};
use super::sandbox::{self, Limits, DEFAULT_INSTRUCTION_LIMIT, DEFAULT_MEMORY_LIMIT};
use super::{build_reply, HookInput, HookOutcome, HookVerdict, PolicyError, Rewrite};
use crate::config::Config;

/// A state serves at most this many runs before it is replaced.
const MAX_USES: u32 = 10_000;
/// ... or once it is this old (module caches and globals scripts changed).
const MAX_AGE: Duration = Duration::from_secs(300);
/// Idle states kept for reuse.
const MAX_IDLE: usize = 128;
/// Wall-clock bound on one run (a script waiting on DNS forever, say).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

struct Script {
    path: PathBuf,
    bytecode: Vec<u8>,
}

/// Everything compiled from one config.
struct Epoch {
    id: u64,
    /// Per hook, the scripts that run in order (Axigen hooks, extra sources, then the file).
    scripts: [Vec<Arc<Script>>; HOOK_COUNT],
    /// The configured files `scripts` came from.
    sources: LoadedSources,
    lib_path: Vec<PathBuf>,
    limits: Limits,
    /// Uppercase verbs the proxy hook wants; empty = the ones the server does not know.
    proxy_commands: Vec<String>,
    transports: BTreeSet<String>,
    dns: Arc<Dns>,
    scan: Arc<crate::scan::ScanContext>,
    hostname: String,
    relay: Arc<crate::config::RelayConfig>,
}

struct PooledState {
    lua: Lua,
    epoch: u64,
    uses: u32,
    created: Instant,
    /// Tells the sandbox's `load` which `_ENV` is running.
    set_env: Function,
    /// Makes a run's `_ENV` and tells the sandbox's `load` about it (see
    /// [`NEW_ENV`]).
    new_env: Function,
    /// The loaded hook functions (from bytecode), per hook and chain position.
    hooks: HashMap<(Hook, usize), Function>,
}

pub struct PolicyEngine {
    current: RwLock<Arc<Epoch>>,
    pool: Mutex<Vec<PooledState>>,
    next_epoch: AtomicU64,
    /// `[recipients]` validation, for `recipient.verify` (the daemon builds
    /// it once and shares it with the sessions).
    recipients: RwLock<Option<Arc<crate::recipients::Validator>>>,
    /// `[state]` store: made once by the daemon, kept across reloads.
    state: RwLock<Arc<crate::state::StateStore>>,
}

/// A hook script that does not come from a `[scripts]` file: an Axigen
/// policy translated to Lua, say. It runs before the configured file of its
/// hook; the first script of a chain that gives a verdict ends the run.
#[derive(Debug, Clone)]
pub struct ScriptSource {
    pub hook: Hook,
    /// Shown in errors and tracebacks, e.g. "policy.axigen".
    pub name: String,
    pub source: String,
}

/// What an epoch was compiled from (`sluice reload` reports it): the paths
/// a reload compiles again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedSources {
    /// The `[scripts]` Lua files with their hooks, in hook-table order.
    pub lua: Vec<(Hook, PathBuf)>,
    /// The `[scripts] axigen` policies, in config order.
    pub axigen: Vec<PathBuf>,
}

impl LoadedSources {
    /// "3 scripts, 1 axigen policy".
    pub fn summary(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{}, {}",
            plural(self.lua.len(), "script", "scripts"),
            plural(self.axigen.len(), "axigen policy", "axigen policies")
        )
    }
}

/// Compile one config: the `[scripts] axigen` policies, then `extra`, then
/// the `[scripts]` Lua files. Every error of every file is reported (one
/// [`PolicyError`] when there is one, [`PolicyError::Many`] otherwise);
/// on success, the Axigen warnings come with the epoch.
fn compile(
    cfg: &Config,
    extra: &[ScriptSource],
    id: u64,
) -> Result<(Epoch, Vec<crate::policy::axigen::Diagnostic>), PolicyError> {
    let mut errors = Vec::new();
    let env = crate::policy::axigen::CompileEnv::from_config(cfg);
    let (mut sources, warnings) =
        match crate::policy::axigen::config_sources(&cfg.scripts.axigen, env) {
            Ok(x) => x,
            Err(diags) => {
                errors.push(PolicyError::Axigen(
                    crate::policy::axigen::render_diagnostics(&diags),
                ));
                (Vec::new(), Vec::new())
            }
        };
    // Compiled Axigen policies never call geoip.lookup without a database
    // (the runtime asks geoip.available()), so only the other scripts are
    // held to "uses geoip, so needs a database" — a policy's text that
    // merely contains "geoip." must not fail to load.
    let axigen_count = sources.len();
    sources.extend(extra.iter().cloned());
    let mut scripts: [Vec<Arc<Script>>; HOOK_COUNT] = Default::default();
    for x in &sources {
        let path = PathBuf::from(&x.name);
        match sandbox::compile_wrapped(&path, &x.source) {
            Ok(bytecode) => scripts[x.hook.index()].push(Arc::new(Script { path, bytecode })),
            Err(e) => errors.push(e),
        }
    }
    let mut loaded = LoadedSources {
        lua: Vec::new(),
        axigen: cfg.scripts.axigen.clone(),
    };
    for spec in &HOOKS {
        if let Some(path) = (spec.script)(&cfg.scripts) {
            match sandbox::compile_file(path) {
                Ok(bytecode) => scripts[spec.hook.index()].push(Arc::new(Script {
                    path: path.to_path_buf(),
                    bytecode,
                })),
                Err(e) => errors.push(e),
            }
            loaded.lua.push((spec.hook, path.to_path_buf()));
        }
    }
    if !errors.is_empty() {
        return Err(if errors.len() == 1 {
            errors.remove(0)
        } else {
            PolicyError::Many(errors)
        });
    }
    let s = &cfg.scripts;
    let lib_path = if s.lib_path.is_empty() {
        vec![PathBuf::from("lib-lua")]
    } else {
        s.lib_path.clone()
    };
    let epoch = Epoch {
        id,
        scripts,
        sources: loaded,
        lib_path,
        limits: Limits {
            memory: if s.memory_limit == 0 {
                DEFAULT_MEMORY_LIMIT
            } else {
                s.memory_limit
            },
            instructions: if s.instruction_limit == 0 {
                DEFAULT_INSTRUCTION_LIMIT
            } else {
                s.instruction_limit
            },
        },
        proxy_commands: s
            .proxy_commands
            .iter()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())
            .collect(),
        transports: cfg.transport.keys().cloned().collect(),
        dns: Arc::new(Dns::new(&cfg.dns)),
        scan: Arc::new(api::scan_context(cfg, &sources[axigen_count..])?),
        hostname: cfg.hostname.clone(),
        relay: Arc::new(cfg.relay.clone()),
    };
    Ok((epoch, warnings))
}

fn log_warnings(warnings: &[crate::policy::axigen::Diagnostic]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

impl PolicyEngine {
    /// Compile every configured script: the `[scripts]` Lua files and the
    /// `[scripts] axigen` policies (their warnings are logged). Errors name
    /// `file:line: message` (Axigen: `file:line:col`), all of them.
    pub fn load(cfg: &Config) -> Result<Arc<PolicyEngine>, PolicyError> {
        Self::load_with(cfg, &[])
    }

    /// [`load`](Self::load) plus scripts that are neither `[scripts]` files
    /// nor Axigen policies (tests inject hand-made sources). A reload
    /// recompiles the configured files only and drops these.
    pub fn load_with(
        cfg: &Config,
        extra: &[ScriptSource],
    ) -> Result<Arc<PolicyEngine>, PolicyError> {
        let (epoch, warnings) = compile(cfg, extra, 1)?;
        log_warnings(&warnings);
        Ok(Arc::new(PolicyEngine {
            current: RwLock::new(Arc::new(epoch)),
            pool: Mutex::new(Vec::new()),
            next_epoch: AtomicU64::new(2),
            recipients: RwLock::new(None),
            state: RwLock::new(crate::state::StateStore::local()),
        }))
    }

    /// `sluice check`: compile the hook scripts, the Axigen policies and
    /// every module under lib_path, and try building a state. Returns the
    /// Axigen warnings (for the caller to print).
    pub fn check(cfg: &Config) -> Result<Vec<crate::policy::axigen::Diagnostic>, PolicyError> {
        let (epoch, warnings) = compile(cfg, &[], 0)?;
        for dir in &epoch.lib_path {
            check_modules(dir)?;
        }
        new_pooled(&epoch, None, crate::state::StateStore::local())?;
        Ok(warnings)
    }

    /// Recompile every configured Lua file and Axigen policy and swap them
    /// all in; on any error the old ones all stay, and the error names every
    /// problem.
    pub fn reload(&self, cfg: &Config) -> Result<(), PolicyError> {
        let id = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let (epoch, warnings) = compile(cfg, &[], id)?;
        log_warnings(&warnings);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(epoch);
        let old: Vec<PooledState> =
            std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
        drop(old);
        Ok(())
    }

    /// The files the current scripts were compiled from.
    pub fn sources(&self) -> LoadedSources {
        self.epoch().sources.clone()
    }

    fn epoch(&self) -> Arc<Epoch> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Does any script (Lua file or compiled Axigen hook) run for `hook`?
    /// Without an eod script the session's built-in eod queues every
    /// recipient to its transport.
    pub fn has_hook(&self, hook: Hook) -> bool {
        !self.epoch().scripts[hook.index()].is_empty()
    }

    /// Should the proxy hook see this command line?
    pub fn proxy_wants(&self, verb_uppercase: &str, server_knows_verb: bool) -> bool {
        let e = self.epoch();
        if e.scripts[Hook::Proxy.index()].is_empty() {
            return false;
        }
        if e.proxy_commands.is_empty() {
            !server_knows_verb
        } else {
            e.proxy_commands
                .iter()
                .any(|c| c.eq_ignore_ascii_case(verb_uppercase))
        }
    }

    /// The scripts (file paths or source names) a hook runs, in order.
    pub fn scripts(&self, hook: Hook) -> Vec<PathBuf> {
        self.epoch().scripts[hook.index()]
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    /// Run a hook. Never panics; a script error becomes the hook's error verdict.
    pub async fn run(&self, hook: Hook, input: HookInput) -> HookOutcome {
        let epoch = self.epoch();
        let spec = hook.spec();
        let chain = &epoch.scripts[hook.index()];
        if chain.is_empty() {
            return fallback_outcome(spec.fallthrough, input.context, None);
        }
        let mut st = match self.take_state(&epoch) {
            Ok(st) => st,
            Err(e) => {
                let msg = format!("{}: {e}", chain[0].path.display());
                return fallback_outcome(spec.on_error, input.context, Some(msg));
            }
        };
        let started = Instant::now();
        let conn = input.connection.id.clone();
        let context = input.context.clone();
        let run = CatchUnwind(Box::pin(run_in_state(&mut st, &epoch, hook, input)));
        let (outcome, healthy) = match run.await {
            Ok(r) => r,
            Err(msg) => {
                // A bug on the Rust side of the API: answer like a script
                // error and never reuse the state.
                let msg = format!("panic in a policy host function: {msg}");
                tracing::error!(conn = %conn, hook = spec.name, "{msg}");
                (fallback_outcome(spec.on_error, context, Some(msg)), false)
            }
        };
        tracing::debug!(
            conn = %conn,
            hook = spec.name,
            verdict = ?outcome.verdict.kind(),
            error = outcome.error.is_some(),
            queued = outcome.queued.len(),
            micros = started.elapsed().as_micros() as u64,
            "policy hook ran"
        );
        crate::metrics::hook_run(
            hook,
            started.elapsed(),
            outcome.verdict.kind(),
            outcome.error.is_some(),
        );
        st.uses += 1;
        if healthy {
            self.give_back(st);
        }
        outcome
    }

    fn take_state(&self, epoch: &Epoch) -> Result<PooledState, PolicyError> {
        let mut stale = Vec::new();
        let found = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(st) = pool.pop() {
                if st.epoch == epoch.id {
                    found = Some(st);
                    break;
                }
                stale.push(st);
            }
            found
        };
        drop(stale);
        match found {
            Some(st) => Ok(st),
            None => new_pooled(epoch, self.recipients(), self.state()),
        }
    }

    /// Give scripts the daemon's recipient validation (`recipient.verify`).
    pub fn set_recipients(&self, v: Option<Arc<crate::recipients::Validator>>) {
        *self.recipients.write().unwrap_or_else(|e| e.into_inner()) = v;
        // States made before have none.
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Give scripts the daemon's state store (`rate`, `memory`, `cache`):
    /// one for the daemon's life, so reloads keep counters.
    pub fn set_state(&self, s: Arc<crate::state::StateStore>) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = s;
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn state(&self) -> Arc<crate::state::StateStore> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn recipients(&self) -> Option<Arc<crate::recipients::Validator>> {
        self.recipients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn give_back(&self, st: PooledState) {
        if st.uses >= MAX_USES || st.created.elapsed() > MAX_AGE || st.epoch != self.epoch().id {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE {
            pool.push(st);
        }
    }

    /// Forward-confirmed reverse DNS of a client (for `connection.remoteptr`),
    /// with the resolver built from `[dns]`.
    pub async fn fcrdns(&self, ip: std::net::IpAddr) -> Option<String> {
        let dns = self.epoch().dns.clone();
        dns.fcrdns(ip).await
    }

    /// Our Authentication-Results value for a message (SPF, DKIM, ARC,
    /// DMARC with this epoch's resolver and `[auth]`), for the built-in eod.
    pub async fn authentication_results(
        &self,
        raw: &[u8],
        spf: &crate::scan::auth::SpfRequest,
    ) -> Result<String, String> {
        let epoch = self.epoch();
        let resolver = epoch.dns.resolver()?.clone();
        crate::scan::auth::authenticate(&resolver, &epoch.scan.auth, raw, spf, false)
            .await
            .map(|r| r.header_value)
            .map_err(|e| e.to_string())
    }

    /// The authserv-id of this epoch (`[auth] authserv_id`, else the hostname).
    pub fn authserv_id(&self) -> String {
        self.epoch().scan.auth.authserv_id.clone()
    }

    /// Idle states in the pool (tests, metrics).
    pub fn idle_states(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn new_pooled(
    epoch: &Epoch,
    recipients: Option<Arc<crate::recipients::Validator>>,
    state: Arc<crate::state::StateStore>,
) -> Result<PooledState, PolicyError> {
    let shared = Shared {
        transports: epoch.transports.clone(),
        dns: epoch.dns.clone(),
        scan: epoch.scan.clone(),
        hostname: epoch.hostname.clone(),
        relay: epoch.relay.clone(),
        recipients,
        state,
    };
    let lua = sandbox::new_state(&epoch.limits, &epoch.lib_path, shared)
        .map_err(|e| PolicyError::State(e.to_string()))?;
    let env_mt = env_metatable(&lua).map_err(|e| PolicyError::State(e.to_string()))?;
    let set_env: Function = lua
        .named_registry_value(sandbox::SET_ENV_KEY)
        .map_err(|e| PolicyError::State(e.to_string()))?;
    let new_env =
        new_env_function(&lua, &env_mt, &set_env).map_err(|e| PolicyError::State(e.to_string()))?;
    Ok(PooledState {
        lua,
        epoch: epoch.id,
        uses: 0,
        created: Instant::now(),
        set_env,
        new_env,
        hooks: HashMap::new(),
    })
}

fn check_modules(dir: &std::path::Path) -> Result<(), PolicyError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            check_modules(&p)?;
        } else if p.extension().is_some_and(|e| e == "lua") {
            let src = std::fs::read_to_string(&p).map_err(|e| PolicyError::Read {
                path: p.clone(),
                source: e,
            })?;
            sandbox::compile_source(&p, &src)?;
        }
    }
    Ok(())
}

fn hook_function(
    st: &mut PooledState,
    hook: Hook,
    pos: usize,
    script: &Script,
) -> mlua::Result<Function> {
    if let Some(f) = st.hooks.get(&(hook, pos)) {
        return Ok(f.clone());
    }
    let outer = st
        .lua
        .load(&script.bytecode[..])
        .set_name(format!("@{}", script.path.display()))
        .set_mode(ChunkMode::Binary)
        .into_function()?;
    let f: Function = outer.call(())?;
    st.hooks.insert((hook, pos), f.clone());
    Ok(f)
}

/// `__index` of every run's `_ENV`: `connection`, `transaction`,
/// `arguments` and `context`, built from the run state on first read and
/// kept in `_ENV` (so a script's changes to them stick for the run; they
/// shadow any global of the same name, as when they were set up front);
/// then the globals. Most scripts read one or two of the four; building all
/// of them for every hook was about 45% of a hook's CPU (perf over
/// benches/policy-overhead.sh).
const ENV_INDEX: &str = r#"
local globals, build, rawset = ...
return function(env, k)
  if k == "connection" or k == "transaction" or k == "context" or k == "arguments" then
    local v = build(k)
    rawset(env, k, v)
    return v
  end
  return globals[k]
end
"#;

/// Build from a field of the run state without copying it: the field is
/// taken out while `f` runs and put back after (also when `f` fails), since
/// nothing may hold the run state's borrow while Lua runs (the instruction
/// hook borrows it). A second read of the same name (after the script set
/// it to nil) builds from the same data again.
fn with_taken<T, R>(
    lua: &Lua,
    field: impl Fn(&mut RunState) -> &mut Option<T>,
    f: impl FnOnce(Option<&T>) -> R,
) -> R {
    let taken = lua
        .app_data_mut::<RunState>()
        .and_then(|mut rs| field(&mut rs).take());
    let r = f(taken.as_ref());
    if let Some(v) = taken {
        if let Some(mut rs) = lua.app_data_mut::<RunState>() {
            *field(&mut rs) = Some(v);
        }
    }
    r
}

/// [`with_taken`] for the run state's `context` (`Null` when none).
fn with_taken_value<R>(lua: &Lua, f: impl FnOnce(&serde_json::Value) -> R) -> R {
    let taken = lua
        .app_data_mut::<RunState>()
        .map(|mut rs| std::mem::take(&mut rs.context))
        .unwrap_or_default();
    let r = f(&taken);
    if let Some(mut rs) = lua.app_data_mut::<RunState>() {
        rs.context = taken;
    }
    r
}

fn env_metatable(lua: &Lua) -> mlua::Result<Table> {
    let build = lua.create_function(|lua, name: mlua::String| {
        let name = name.to_str()?;
        api::unmetered(lua, || match &*name {
            "connection" => with_taken(
                lua,
                |rs| &mut rs.connection,
                |c| match c {
                    Some(c) => envelope::connection(lua, c),
                    None => Ok(Value::Nil),
                },
            ),
            "transaction" => with_taken(
                lua,
                |rs| &mut rs.transaction,
                |t| envelope::transaction(lua, t),
            ),
            "arguments" => {
                let txn_id = match lua.app_data_ref::<RunState>() {
                    Some(rs) => rs.transaction.as_ref().map(|t| t.id.clone()),
                    None => return Ok(Value::Nil),
                };
                let t = with_taken(
                    lua,
                    |rs| &mut rs.arguments,
                    |args| match args {
                        Some(args) => envelope::arguments(lua, args, txn_id.as_deref()).map(Some),
                        None => Ok(None),
                    },
                )?;
                let Some(t) = t else {
                    return Ok(Value::Nil);
                };
                // Emptied when the run ends (see run_in_state).
                if let Ok(ud) = t.raw_get::<AnyUserData>("mail") {
                    if let Some(mut rs) = lua.app_data_mut::<RunState>() {
                        rs.mail = Some(ud);
                    }
                }
                Ok(Value::Table(t))
            }
            "context" => {
                if let Some(mut rs) = lua.app_data_mut::<RunState>() {
                    rs.context_read = true;
                }
                with_taken_value(lua, |c| envelope::context(lua, c))
            }
            _ => Ok(Value::Nil),
        })
    })?;
    let raw_rawset: Function = lua.globals().raw_get("rawset")?;
    let index: Function = lua
        .load(ENV_INDEX)
        .set_name("=sluice env")
        .set_mode(ChunkMode::Text)
        .call((lua.globals(), build, raw_rawset))?;
    let mt = lua.create_table()?;
    mt.raw_set("__index", index)?;
    // getmetatable(_ENV) must not hand out the shared globals.
    mt.raw_set("__metatable", false)?;
    Ok(mt)
}

/// A run's `_ENV` (`_G` only; the rest is built on first read, see
/// [`env_metatable`]), made and handed to the sandbox's `set_env` by one
/// Lua call: four mlua calls (table, metatable, `_G`, `set_env`) cost
/// about as much as the rest of an empty hook's setup (benches/policy.rs).
const NEW_ENV: &str = r#"
local setmetatable, set_env, mt = ...
return function()
  local env = {_G = false}
  env._G = env
  setmetatable(env, mt)
  set_env(env)
  return env
end
"#;

fn new_env_function(lua: &Lua, env_mt: &Table, set_env: &Function) -> mlua::Result<Function> {
    let setmetatable: Function = lua.globals().raw_get("setmetatable")?;
    lua.load(NEW_ENV)
        .set_name("=sluice env")
        .set_mode(ChunkMode::Text)
        .call((setmetatable, set_env.clone(), env_mt.clone()))
}

/// The run's `_ENV`, already the one the sandbox's `load` uses. Trusted
/// code of bounded size: not counted against the memory limit, as when it
/// was built from Rust.
fn build_env(st: &PooledState) -> mlua::Result<Table> {
    api::unmetered(&st.lua, || st.new_env.call::<Table>(()))
}

/// Run one hook in a pooled state. Returns the outcome and whether the state
/// may be reused.
async fn run_in_state(
    st: &mut PooledState,
    epoch: &Epoch,
    hook: Hook,
    input: HookInput,
) -> (HookOutcome, bool) {
    let spec = hook.spec();
    let chain = &epoch.scripts[hook.index()];
    let lua = st.lua.clone();
    let mut healthy_hint = true;
    let txn_id = input.transaction.as_ref().map(|t| t.id.clone());
    let HookInput {
        connection,
        transaction,
        arguments,
        context: input_context,
    } = input;
    let conn_id = connection.id.clone();
    let mut rs = RunState::new(hook, conn_id, transaction, epoch.limits.instructions);
    rs.connection = Some(connection);
    rs.context = input_context;
    rs.arguments = Some(arguments);
    lua.set_app_data(rs);
    // Which script of the chain is running (for error messages).
    let current = AtomicUsize::new(0);
    let prepared = build_env(st);
    let (env, result) = match prepared {
        Ok(env) => {
            let run_chain = async {
                for (pos, script) in chain.iter().enumerate() {
                    current.store(pos, Ordering::Relaxed);
                    let f = hook_function(st, hook, pos, script)?;
                    let mut call = std::pin::pin!(f.call_async::<()>(env.clone()));
                    // A verdict suspends the script for good (see
                    // api::verdict): done once the run is terminated.
                    std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
                        Poll::Pending if api::is_terminated(&lua) => Poll::Ready(Ok(())),
                        other => other,
                    })
                    .await?;
                    if api::is_terminated(&lua) {
                        break;
                    }
                }
                Ok(())
            };
            let r = tokio::time::timeout(RUN_TIMEOUT, run_chain).await;
            (Some(env), r)
        }
        Err(e) => (None, Ok(Err(e))),
    };
    let script = &chain[current.load(Ordering::Relaxed).min(chain.len() - 1)];
    let mut rs = lua.remove_app_data::<RunState>();
    if st.set_env.call::<()>(Value::Nil).is_err() {
        healthy_hint = false;
    }
    // A script may have kept a reference to the message; empty it so the
    // message bytes are freed now, not at the state's next GC cycle.
    if let Some(ud) = rs.as_mut().and_then(|rs| rs.mail.take()) {
        let _ = ud.take::<MailMessage>();
    }
    let mut healthy = healthy_hint;
    // Nil in `_ENV` and never read: the script left `context` as it was
    // (read and then set to nil: it cleared it).
    let context_read = rs.as_ref().is_some_and(|rs| rs.context_read);
    // The context as the hook began (the run state held it, not a copy).
    let previous = rs
        .as_mut()
        .map(|rs| std::mem::take(&mut rs.context))
        .unwrap_or_default();
    let context = match env.as_ref().map(|e| e.raw_get::<Value>("context")) {
        Some(Ok(v)) if context_read || !v.is_nil() => match api::lua_to_json(&lua, &v, 0) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(conn = %rs.as_ref().map(|rs| rs.conn_id.as_str()).unwrap_or_default(),
                    hook = spec.name, "context is not plain data, keeping the previous one: {e}");
                previous
            }
        },
        _ => previous,
    };
    let Some(rs) = rs else {
        return (
            fallback_outcome(spec.on_error, context, Some("run state lost".into())),
            false,
        );
    };
    let path = script.path.display();
    let mut outcome = match (rs.termination, result) {
        (Some(Termination::Verdict(v)), _) => HookOutcome {
            transportid: if matches!(v.kind, Some(VerdictKind::Pass | VerdictKind::Accept)) {
                v.transportid.clone()
            } else {
                None
            },
            route: v.route.clone(),
            reports: (*v.reports).clone(),
            verdict: resolve(spec, v, txn_id.as_deref()),
            context,
            queued: rs.queued,
            history: Vec::new(),
            error: None,
            decided_by: Vec::new(),
        },
        (Some(Termination::Fatal(m)), r) => {
            healthy = false;
            let detail = match r {
                Ok(Err(e)) => traceback_of(&e),
                _ => String::new(),
            };
            fallback_outcome(spec.on_error, context, Some(format!("{path}: {m}{detail}")))
        }
        (None, Ok(Ok(()))) => fallback_outcome(spec.fallthrough, context, None),
        (None, Ok(Err(e))) => {
            if matches!(e, mlua::Error::MemoryError(_)) {
                healthy = false;
            }
            fallback_outcome(spec.on_error, context, Some(format_error(&e)))
        }
        (None, Err(_elapsed)) => {
            healthy = false;
            fallback_outcome(
                spec.on_error,
                context,
                Some(format!(
                    "{path}: timed out after {}s",
                    RUN_TIMEOUT.as_secs()
                )),
            )
        }
    };
    if !matches!(outcome.verdict, HookVerdict::Accept { .. }) {
        outcome.queued.clear();
    }
    outcome.history = rs.history;
    outcome.decided_by = rs.decided_by;
    (outcome, healthy)
}

fn format_error(e: &mlua::Error) -> String {
    match e {
        mlua::Error::MemoryError(_) => "memory limit exceeded".to_string(),
        other => other.to_string(),
    }
}

fn traceback_of(e: &mlua::Error) -> String {
    let s = e.to_string();
    match s.find("stack traceback:") {
        Some(i) => format!("\n{}", &s[i..]),
        None => String::new(),
    }
}

fn resolve(spec: &HookSpec, v: ScriptVerdict, txn_id: Option<&str>) -> HookVerdict {
    let kind = v.kind.unwrap_or(VerdictKind::Pass);
    let default = spec.default_reply(kind);
    let custom = v.code.is_some() || v.enhanced.is_some() || v.reason.is_some();
    let mut reason = v.reason;
    if kind == VerdictKind::Accept && spec.hook == Hook::Eod && reason.is_none() {
        if let Some(id) = txn_id {
            reason = Some(vec![format!("{} as {id}", default.text)]);
        }
    }
    let reply = || build_reply(default, v.code, v.enhanced, reason.clone());
    match kind {
        VerdictKind::Pass => HookVerdict::Pass {
            command: v.command,
            next: v.next,
        },
        VerdictKind::Reply => {
            let reply = reply();
            HookVerdict::Reply {
                disconnect: v.disconnect || reply.code == 421,
                reply,
                next: v.next,
            }
        }
        VerdictKind::Accept => HookVerdict::Accept {
            custom,
            reply: reply(),
            rewrite: Rewrite {
                host: v.host,
                sender: v.sender,
                recipient: v.recipient,
                transportid: v.transportid,
            },
        },
        VerdictKind::Reject => {
            let reply = reply();
            HookVerdict::Reject {
                disconnect: v.disconnect || reply.code == 421,
                reply,
            }
        }
        VerdictKind::Defer => {
            let reply = reply();
            HookVerdict::Defer {
                disconnect: v.disconnect || reply.code == 421,
                reply,
            }
        }
    }
}

fn fallback_verdict(f: Fallback) -> HookVerdict {
    match f {
        Fallback::Pass => HookVerdict::pass(),
        Fallback::Reply(d, disconnect) => HookVerdict::Reply {
            reply: d.reply(),
            disconnect,
            next: false,
        },
        Fallback::Reject(d, disconnect) => HookVerdict::Reject {
            reply: d.reply(),
            disconnect,
        },
        Fallback::Defer(d, disconnect) => HookVerdict::Defer {
            reply: d.reply(),
            disconnect,
        },
    }
}

fn fallback_outcome(f: Fallback, context: serde_json::Value, error: Option<String>) -> HookOutcome {
    HookOutcome {
        verdict: fallback_verdict(f),
        context,
        queued: Vec::new(),
        history: Vec::new(),
        transportid: None,
        route: None,
        reports: Default::default(),
        error,
        decided_by: Vec::new(),
    }
}

/// Poll a future, turning a panic into an error (the engine never panics).
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => std::task::Poll::Ready(Err(p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into()))),
        }
    }
}
