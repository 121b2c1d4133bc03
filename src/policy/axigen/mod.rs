//! The Axigen policy language (issue 8): legacy `smtpFilters.script` files
//! compiled to Lua hook scripts at load time.
//!
//! Pipeline: [`lexer`] → [`parser`] (with error recovery, so every syntax
//! error is reported) → [`ast`] → [`check`] (events, methods, recursion,
//! variables per event, regexes, IP ranges, nesting) → [`codegen`] (one
//! readable Lua script per hook, each line commented with its `file:line`,
//! plus a source map); [`explain`] says in words what each event does in
//! Sluice (`sluice translate --explain`). Checks know the server through
//! [`CompileEnv`] (built from the config), so `sluice check` warns about
//! what would not work there (GeoIP without a database). The scripts
//! `require("axigen")`, the runtime in
//! `lib-lua/axigen.lua`, which computes Axigen variables from `connection`,
//! `transaction` and `arguments`, implements the predefined methods and
//! turns `smtpAction` into a verdict.
//!
//! Events → hooks: onConnect→connect, onEhlo→helo, onMailFrom→mailfrom,
//! onRcptTo→rcptto, onHeadersReceived→headers, onBodyChunk, onDataReceived
//! and onProcessing→eod (in that order; onBodyChunk runs once over the whole
//! body), onRelay→predelivery, onDeliverySuccess / onDeliveryFailure /
//! onTemporaryDeliveryFailure→postdelivery (the runtime picks the event
//! from the delivery result).
//!
//! Order with Lua scripts: a compiled hook runs before the `[scripts]` file
//! of the same hook ([`crate::policy::ScriptSource`]). When the policy
//! decides (`smtpAction` reject/tmpreject/abort/accept, a greeting, a
//! discarded recipient, a limit) the chain ends; when it leaves
//! `smtpAction` unset the Lua script runs next. The generated eod always
//! ends the chain (it queues the message, as Axigen accepts it).

pub mod ast;
pub mod check;
pub mod codegen;
pub mod explain;
pub mod lexer;
pub mod parser;
#[cfg(test)]
mod tests;
pub mod vars;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::policy::{Hook, ScriptSource};

/// What the compiler knows of the server a policy will run on, so that
/// `sluice check` and the start log can say what a construct will do
/// *there* (e.g. GeoIP without a database) instead of the first client
/// finding out. [`compile_file`] and [`translate`] work without a config
/// and assume everything is available ([`CompileEnv::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileEnv {
    /// A GeoIP country database is configured (`[geoip] country_db`).
    pub geoip: bool,
    /// `[scanners.clamd]` or `[scanners.rspamd]` is configured: an
    /// `executeFilters` before end of data may select a scanner filter,
    /// which scans at end of data (so the policy gets an eod hook).
    pub scanners: bool,
}

impl Default for CompileEnv {
    fn default() -> Self {
        CompileEnv {
            geoip: true,
            scanners: false,
        }
    }
}

impl CompileEnv {
    pub fn from_config(cfg: &crate::config::Config) -> CompileEnv {
        CompileEnv {
            geoip: cfg.geoip.country_db.is_some(),
            scanners: cfg.scanners.clamd.is_some() || cfg.scanners.rspamd.is_some(),
        }
    }
}

/// A position in a policy file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding; `Display` is `file:line:col: error: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            match self.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            self.message
        )
    }
}

/// A policy file compiled to hook scripts.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub file: PathBuf,
    pub hooks: Vec<CompiledHook>,
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct CompiledHook {
    pub hook: Hook,
    /// A complete hook script, in the same form as a user's Lua hook file.
    pub lua: String,
    /// (Lua line, Axigen line) for every generated line that has a source.
    pub source_map: Vec<(u32, u32)>,
}

impl CompiledPolicy {
    pub fn hook(&self, hook: Hook) -> Option<&CompiledHook> {
        self.hooks.iter().find(|h| h.hook == hook)
    }

    /// The hooks as engine script sources, named after the policy file (so
    /// Lua's `name:line:` positions can be rewritten by [`map_error`]).
    pub fn script_sources(&self) -> Vec<ScriptSource> {
        self.hooks
            .iter()
            .map(|h| ScriptSource {
                hook: h.hook,
                name: self.file.display().to_string(),
                source: h.lua.clone(),
            })
            .collect()
    }
}

impl CompiledHook {
    /// The Axigen line of a Lua line: the nearest mapped line at or before it.
    pub fn axigen_line(&self, lua_line: u32) -> Option<u32> {
        self.source_map
            .iter()
            .take_while(|(l, _)| *l <= lua_line)
            .last()
            .map(|(_, a)| *a)
    }
}

struct Parsed {
    items: Vec<ast::Item>,
    analysis: check::Analysis,
    diags: Vec<Diagnostic>,
}

fn parse_and_check(file: &Path, text: &str, env: CompileEnv) -> Parsed {
    let (toks, lex_errors) = lexer::lex(text);
    let mut p = parser::Parser::new(&toks);
    let items = p.file();
    let mut raw: Vec<(Pos, Severity, String)> = lex_errors
        .into_iter()
        .chain(p.errors)
        .map(|(pos, m)| (pos, Severity::Error, m))
        .collect();
    let mut c = check::Checker::new(&items).with_env(env);
    let analysis = c.run();
    raw.extend(c.diags);
    raw.sort_by_key(|(pos, _, _)| *pos);
    let diags = raw
        .into_iter()
        .map(|(pos, severity, message)| Diagnostic {
            file: file.to_path_buf(),
            line: pos.line,
            col: pos.col,
            severity,
            message,
        })
        .collect();
    Parsed {
        items,
        analysis,
        diags,
    }
}

/// Compile policy text. `Err` holds every diagnostic (errors and warnings,
/// in file order) when there is at least one error.
pub fn compile_str(file: &Path, text: &str) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    compile_str_in(file, text, CompileEnv::default())
}

/// [`compile_str`] for the server `env` describes.
pub fn compile_str_in(
    file: &Path,
    text: &str,
    env: CompileEnv,
) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    let parsed = parse_and_check(file, text, env);
    if parsed.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(parsed.diags);
    }
    let label = file.display().to_string();
    let hooks = codegen::hooks(&parsed.analysis)
        .into_iter()
        .map(|hook| {
            let (lua, source_map) =
                codegen::hook_script(&label, &parsed.items, &parsed.analysis, hook).finish();
            CompiledHook {
                hook,
                lua,
                source_map,
            }
        })
        .collect();
    Ok(CompiledPolicy {
        file: file.to_path_buf(),
        hooks,
        warnings: parsed.diags,
    })
}

fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let bytes = std::fs::read(path).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            severity: Severity::Error,
            message: format!("cannot read the policy: {e}"),
        }]
    })?;
    // Real files are sometimes Latin-1; keep them loadable.
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    })
}

pub fn compile_file(path: &Path) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    compile_file_in(path, CompileEnv::default())
}

/// [`compile_file`] for the server `env` describes.
pub fn compile_file_in(path: &Path, env: CompileEnv) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    compile_str_in(path, &read(path)?, env)
}

/// `sluice translate --explain`: what each event of the policy does in
/// Sluice (see [`explain`]).
pub fn explain_file(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let text = read(path)?;
    let parsed = parse_and_check(path, &text, CompileEnv::default());
    if parsed.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(parsed.diags);
    }
    Ok(explain::explain(
        path,
        &parsed.items,
        &parsed.analysis,
        &parsed.diags,
    ))
}

/// One readable Lua file showing every hook of the policy (for `sluice
/// translate`); each generated line ends with `-- file:line`.
pub fn translate(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let p = compile_file(path)?;
    Ok(translation(&p))
}

/// The text [`translate`] writes, from a compiled policy.
pub fn translation(p: &CompiledPolicy) -> String {
    let mut out = format!(
        "-- Lua translation of the Axigen policy {}.\n\
         -- Sluice loads each hook below as its own script (before the [scripts]\n\
         -- file of the same hook); lib-lua/axigen.lua is the runtime.\n",
        p.file.display()
    );
    for w in &p.warnings {
        out.push_str(&format!("-- {w}\n"));
    }
    for h in &p.hooks {
        out.push_str(&format!("\n-- ======== hook: {} ========\n", h.hook));
        out.push_str(&h.lua);
    }
    out
}

/// Rewrite `name:LINE:` positions of the hook's generated code in a Lua
/// error or traceback to the Axigen `file:line`. Positions in `.lua` files
/// (the runtime, user modules) are left alone.
pub fn map_error(policy: &CompiledPolicy, hook: Hook, lua_error: &str) -> String {
    let Some(h) = policy.hook(hook) else {
        return lua_error.to_string();
    };
    let re = regex::Regex::new(r#"([^\s:'"()<>]+):(\d+):"#).expect("static regex");
    re.replace_all(lua_error, |c: &regex::Captures| {
        let name = &c[1];
        let line: u32 = c[2].parse().unwrap_or(0);
        if name.ends_with(".lua") || name == "[C]" {
            return c[0].to_string();
        }
        match h.axigen_line(line) {
            Some(a) => format!("{}:{a}:", policy.file.display()),
            None => c[0].to_string(),
        }
    })
    .into_owned()
}

/// Compile every `[scripts] axigen` file for the server `env` describes:
/// the engine's extra script sources (in file order) and the warnings; or
/// every error of every file.
pub fn config_sources(
    paths: &[std::path::PathBuf],
    env: CompileEnv,
) -> Result<(Vec<ScriptSource>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut sources = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match compile_file_in(p, env) {
            Ok(c) => {
                sources.extend(c.script_sources());
                warnings.extend(c.warnings.iter().cloned());
            }
            Err(d) => errors.extend(d),
        }
    }
    if errors.iter().any(|d| d.severity == Severity::Error) {
        return Err(errors);
    }
    warnings.extend(errors);
    Ok((sources, warnings))
}

/// Diagnostics one per line, for error messages.
pub fn render_diagnostics(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
