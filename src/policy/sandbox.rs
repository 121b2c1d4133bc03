//! A fresh Lua state for hook scripts: the safe standard libraries, the
//! Sluice API, and nothing that reaches the host.
//!
//! Not there: `io`, `debug`, `package.loadlib`/C modules, `dofile`,
//! `loadfile`, `os.execute`/`exit`/`remove`/`rename`/`getenv`/`tmpname`,
//! `string.dump`, `__gc` metamethods. `load` accepts only text chunks. `require` loads
//! `NAME.lua` or `NAME/init.lua` from `[scripts] lib_path` only.
//!
//! Shared tables are read-only: every table-valued global (the libraries,
//! the Sluice API, `package`), the modules `require` returns and the string
//! metatable reach scripts through proxies whose writes raise an error at
//! the script's line, and `rawset` refuses them — one script cannot change
//! what the next one sees in a pooled state. String patterns run on
//! [`super::pattern`], inside the instruction budget.
//!
//! Limits: a memory limit on the whole state and an instruction budget per
//! hook run (counted by a VM hook every [`INSTRUCTION_STEP`] instructions).
//! Exceeding either records a fatal termination, so — like verdicts — it
//! cannot be swallowed by `pcall`: the prelude wraps `pcall`, `xpcall` and
//! `coroutine.resume` to re-raise once the run is terminated.

use std::path::{Path, PathBuf};

use mlua::{ChunkMode, HookTriggers, Lua, LuaOptions, StdLib, Value, VmState};

use super::api::{self, RunState, Shared, Termination};

/// The instruction hook fires this often; the budget is counted in steps.
pub const INSTRUCTION_STEP: u32 = 1000;

/// Registry key of the prelude's function that tells `load` the running
/// hook's `_ENV`.
pub const SET_ENV_KEY: &str = "sluice.set_env";

pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 10_000_000;

/// Runs once per state, before any user code. Captures the raw functions in
/// upvalues (the user cannot reach them without `debug`).
const PRELUDE: &str = r##"
local terminated, find_module, pending, from_module = ...
local raw_pcall, raw_xpcall, raw_error, raw_load = pcall, xpcall, error, load
local raw_resume, raw_yield, raw_status = coroutine.resume, coroutine.yield, coroutine.status
local raw_collect, select, type = collectgarbage, select, type

local function check(ok, ...)
  if not ok and terminated((...)) then
    raw_error((...), 0)
  end
  return ok, ...
end

pcall = function(f, ...)
  return check(raw_pcall(f, ...))
end

xpcall = function(f, handler, ...)
  local function h(e)
    if terminated(e) then return e end
    return handler(e)
  end
  return check(raw_xpcall(f, h, ...))
end

-- An async host function (dns.query) called inside a user coroutine yields
-- mlua's "pending" signal to that coroutine: pass it up to the executor and
-- resume the coroutine when the executor polls again.
local function resume_loop(co, ok, ...)
  if ok and select("#", ...) == 1 and (...) == pending and raw_status(co) == "suspended" then
    return resume_loop(co, raw_resume(co, raw_yield(pending)))
  end
  return check(ok, ...)
end
coroutine.resume = function(co, ...)
  return resume_loop(co, raw_resume(co, ...))
end
local resume = coroutine.resume
local function unwrap(ok, ...)
  if ok then return ... end
  raw_error((...), 0)
end
coroutine.wrap = function(f)
  local co = coroutine.create(f)
  return function(...)
    return unwrap(resume(co, ...))
  end
end

-- Chunks loaded without an explicit env see the running hook's _ENV (so
-- they neither miss `connection` nor leak globals into the shared state).
local current_env
load = function(chunk, name, mode, ...)
  if mode ~= nil and mode ~= "t" then
    raw_error("load: only text chunks may be loaded", 2)
  end
  if select("#", ...) > 0 then
    return raw_load(chunk, name, "t", (...))
  end
  if current_env ~= nil then
    return raw_load(chunk, name, "t", current_env)
  end
  return raw_load(chunk, name, "t")
end

collectgarbage = function(opt, ...)
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
    return raw_collect(opt, ...)
  end
  raw_error("collectgarbage: option '" .. tostring(opt) .. "' is not allowed", 2)
end

-- Lua runs finalizers with debug hooks off: a looping __gc would escape the
-- instruction budget and hang the thread (even while the state is closed).
local raw_setmetatable, rawget = setmetatable, rawget
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    raw_error("setmetatable: __gc metamethods are not allowed", 2)
  end
  return raw_setmetatable(t, mt)
end

-- Shared tables are read-only to scripts. A pooled state runs many scripts
-- one after another, so `string.upper = nil` or
-- `rawset(getmetatable(""), "__index", {})` in one would break every later
-- one. Each table-valued global (the libraries, the Sluice API, package)
-- becomes a proxy: reads reach the real table, writes raise an error at the
-- script's line. Tables inside are proxied when read; `rawset` refuses
-- proxies; the string metatable is reached only through a proxy.
local raw_rawset, next, tostring = rawset, next, tostring
local proxies = raw_setmetatable({}, {__mode = "k"})   -- real table -> proxy
local protected = raw_setmetatable({}, {__mode = "k"}) -- proxy -> its name
local readonly
readonly = function(t, name)
  if protected[t] then return t end
  local p = proxies[t]
  if p then return p end
  local nested = false
  for _, v in next, t do
    if type(v) == "table" then nested = true break end
  end
  local index = t
  if nested then
    index = function(_, k)
      local v = t[k]
      if type(v) == "table" then return readonly(v, name .. "." .. tostring(k)) end
      return v
    end
  end
  p = {}
  raw_setmetatable(p, {
    __index = index,
    __newindex = function(_, k)
      raw_error(name .. " is read-only (assignment to '" .. tostring(k) .. "')", 2)
    end,
    __pairs = function()
      return function(_, k)
        local nk, nv = next(t, k)
        if type(nv) == "table" then nv = readonly(nv, name .. "." .. tostring(nk)) end
        return nk, nv
      end, p, nil
    end,
    __len = function() return #t end,
    __metatable = false,
  })
  proxies[t] = p
  protected[p] = name
  return p
end
rawset = function(t, k, v)
  if protected[t] then
    raw_error("rawset: " .. protected[t] .. " is read-only", 2)
  end
  return raw_rawset(t, k, v)
end
for k, v in next, _G do
  if type(v) == "table" and k ~= "_G" then
    _G[k] = readonly(v, k)
  end
end
local string_mt = getmetatable("")
string_mt.__metatable = readonly(string_mt, "the string metatable")

local loaded = {}
for _, name in ipairs({"coroutine", "table", "string", "utf8", "math", "os",
                       "json", "re", "ip", "dns", "log", "base64",
                       "spf", "dkim", "arc", "dnsbl", "rhsbl", "dnswl", "geoip"}) do
  loaded[name] = _G[name]
end
package = readonly({ loaded = loaded }, "package")
require = function(name)
  if type(name) ~= "string" then
    raw_error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
  end
  local m = loaded[name]
  if m == nil then
    local chunk, path = find_module(name)
    m = chunk(name, path)
    if m == nil then m = true end
    loaded[name] = m
  end
  -- A module's table is shared by every script: theirs to read only. The
  -- lib_path modules themselves (trusted code, such as a site's
  -- axigen_local.lua configuring the Axigen runtime) get the real table.
  if type(m) == "table" and not from_module() then return readonly(m, name) end
  return m
end

return function(env) current_env = env end
"##;

/// The lib_path of the state's epoch.
struct LibPath(Vec<PathBuf>);

pub struct Limits {
    pub memory: usize,
    pub instructions: u64,
}

/// Finished coroutines mlua keeps for reuse per state: one per hook run (a
/// state runs one at a time), and one per `cache(fn)` call in it; a few
/// spare. (Coroutines a script makes itself are Lua's, not pooled.)
const THREAD_POOL: usize = 8;

pub fn new_state(limits: &Limits, lib_path: &[PathBuf], shared: Shared) -> mlua::Result<Lua> {
    let libs = StdLib::COROUTINE
        | StdLib::TABLE
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::MATH
        | StdLib::OS;
    // Each hook runs in a coroutine (`call_async`); mlua reuses finished
    // ones only with a pool, whose default size is 0: a new Lua thread per
    // hook run was a sixth of an empty hook's cost (benches/policy.rs).
    let options = LuaOptions::new().thread_pool_size(THREAD_POOL);
    let lua = Lua::new_with(libs, options)?;
    let g = lua.globals();
    g.raw_set("dofile", Value::Nil)?;
    g.raw_set("loadfile", Value::Nil)?;
    // A new `os` with only the clock functions.
    let os_full: mlua::Table = g.get("os")?;
    let os = lua.create_table()?;
    for name in ["clock", "date", "difftime", "time"] {
        os.set(name, os_full.get::<Value>(name)?)?;
    }
    g.raw_set("os", os)?;
    let string: mlua::Table = g.get("string")?;
    string.raw_set("dump", Value::Nil)?;
    api::strings::install(&lua, &string)?;

    // Before the API: `sluice.hostname` is read from it at registration.
    lua.set_app_data(shared);
    api::register_all(&lua)?;
    lua.set_app_data(LibPath(lib_path.to_vec()));

    let terminated = lua.create_function(|lua, err: Value| Ok(check_terminated(lua, &err)))?;
    let find = lua.create_function(|lua, name: String| find_module(lua, &name))?;
    let from_module = lua.create_function(|lua, ()| Ok(called_from_module(lua)))?;
    let set_env: mlua::Function = lua
        .load(PRELUDE)
        .set_name("=sandbox")
        .set_mode(ChunkMode::Text)
        .call((
            terminated,
            find,
            Value::LightUserData(Lua::poll_pending()),
            from_module,
        ))?;
    lua.set_named_registry_value(SET_ENV_KEY, set_env)?;

    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(INSTRUCTION_STEP),
        |lua, _debug| {
            let Some(mut rs) = lua.app_data_mut::<RunState>() else {
                return Ok(VmState::Continue);
            };
            if let Some(t) = &rs.termination {
                // Terminated but still running (a handler, a __close): stop it.
                let msg = match t {
                    Termination::Fatal(m) => m.clone(),
                    Termination::Verdict(_) => "script terminated".to_string(),
                };
                return Err(mlua::Error::runtime(msg));
            }
            rs.instructions += INSTRUCTION_STEP as u64;
            if rs.instructions > rs.instruction_limit {
                let msg = format!(
                    "instruction limit exceeded ({} instructions)",
                    rs.instruction_limit
                );
                rs.termination = Some(Termination::Fatal(msg.clone()));
                return Err(mlua::Error::runtime(msg));
            }
            Ok(VmState::Continue)
        },
    )?;
    lua.set_memory_limit(limits.memory)?;
    Ok(lua)
}

/// Is the run over (verdict, budget)? A memory error seen by `pcall` ends
/// the run too: the script cannot be trusted to recover from it.
fn check_terminated(lua: &Lua, err: &Value) -> bool {
    let is_mem = match err {
        Value::Error(e) => matches!(**e, mlua::Error::MemoryError(_)),
        Value::String(s) => s.as_bytes().as_ref() == b"not enough memory",
        _ => false,
    };
    if is_mem {
        if let Some(mut rs) = lua.app_data_mut::<RunState>() {
            if rs.termination.is_none() {
                rs.termination = Some(Termination::Fatal("memory limit exceeded".into()));
            }
        }
    }
    api::is_terminated(lua)
}

/// Is the function calling `require` (stack level 2: above this function
/// and the prelude's `require`) code of a `lib_path` module?
fn called_from_module(lua: &Lua) -> bool {
    let Some(source) = lua.inspect_stack(2, |d| {
        d.source()
            .source
            .and_then(|s| s.strip_prefix('@').map(PathBuf::from))
    }) else {
        return false;
    };
    let Some(path) = source else {
        return false;
    };
    lua.app_data_ref::<LibPath>()
        .is_some_and(|l| l.0.iter().any(|dir| path.starts_with(dir)))
}

fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The `require` searcher: lib_path only, text chunks only.
fn find_module(lua: &Lua, name: &str) -> mlua::Result<(mlua::Function, String)> {
    if !valid_module_name(name) {
        return Err(mlua::Error::runtime(format!(
            "require: {name:?} is not a module name (letters, digits, '_', '-', dots)"
        )));
    }
    let dirs = lua
        .app_data_ref::<LibPath>()
        .map(|l| l.0.clone())
        .unwrap_or_default();
    let rel = name.replace('.', "/");
    for dir in &dirs {
        for cand in [
            dir.join(format!("{rel}.lua")),
            dir.join(&rel).join("init.lua"),
        ] {
            if cand.is_file() {
                let src = std::fs::read(&cand).map_err(|e| {
                    mlua::Error::runtime(format!("require: {}: {e}", cand.display()))
                })?;
                let f = lua
                    .load(&src[..])
                    .set_name(format!("@{}", cand.display()))
                    .set_mode(ChunkMode::Text)
                    .set_environment(lua.globals())
                    .into_function()?;
                return Ok((f, cand.display().to_string()));
            }
        }
    }
    Err(mlua::Error::runtime(format!(
        "require: module {name:?} not found in lib_path ({})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Wrap a hook script so each run gets its own `_ENV` (connection,
/// transaction, arguments, context, and the globals the script defines).
/// The prefix shares line 1, so line numbers in errors stay right.
pub fn wrap_source(src: &str) -> String {
    let body = if src.starts_with('#') {
        // A shebang line: Lua skips it in a main chunk; keep the line count.
        match src.find('\n') {
            Some(i) => format!("--{}", &src[i..]),
            None => String::new(),
        }
    } else {
        src.to_string()
    };
    format!("return function(_ENV, ...) {body}\nend")
}

/// Compile a script file to bytecode; errors are `file:line: message`.
pub fn compile_file(path: &Path) -> Result<Vec<u8>, super::PolicyError> {
    let src = std::fs::read_to_string(path).map_err(|e| super::PolicyError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    compile_wrapped(path, &src)
}

/// Compile a hook script wrapped by [`wrap_source`]. On a syntax error the
/// unwrapped source is compiled for the message, so errors at the end of the
/// file read exactly as Lua reports them for the file itself.
pub fn compile_wrapped(path: &Path, src: &str) -> Result<Vec<u8>, super::PolicyError> {
    match compile_source(path, &wrap_source(src)) {
        Ok(b) => Ok(b),
        Err(wrapped) => match compile_source(path, src) {
            Err(raw) => Err(raw),
            Ok(_) => Err(wrapped),
        },
    }
}

pub fn compile_source(path: &Path, src: &str) -> Result<Vec<u8>, super::PolicyError> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::new())
        .map_err(|e| super::PolicyError::State(e.to_string()))?;
    match lua
        .load(src)
        .set_name(format!("@{}", path.display()))
        .set_mode(ChunkMode::Text)
        .into_function()
    {
        Ok(f) => Ok(f.dump(false)),
        Err(e) => {
            let message = match &e {
                mlua::Error::SyntaxError { message, .. } => message.clone(),
                other => other.to_string(),
            };
            let line = message
                .strip_prefix(&format!("{}:", path.display()))
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse().ok());
            Err(super::PolicyError::Compile {
                path: path.to_path_buf(),
                line,
                message,
            })
        }
    }
}
