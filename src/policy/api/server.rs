//! `sluice`: facts about this server a script may ask, and the channel a
//! compiled policy's runtime reports its own errors through.
//!
//! - `sluice.hostname` — `hostname` from the config.
//! - `sluice.is_local_domain(domain)` → boolean: is the domain one of
//!   `relay.domains` (a leading dot there covers subdomains)? The same test
//!   the built-in relay rule makes; Axigen's `isRcptDomainLocal` reads it.
//! - `sluice.policy_error{policy = "file", line = 12, event = "onRcptTo",
//!   message = "…"}` — a compiled policy hit a runtime error and goes on as
//!   if the event had set no action: one error log line naming
//!   `file:line`, counted in `sluice_policy_runtime_errors_total`.
//! - `recipient.verify(address[, {sources = {"map", …}}])` →
//!   `"exists" | "unknown" | "tempfail"`, the source that answered, and the
//!   address to deliver to when the source rewrote it (an alias); the
//!   `[recipients]` sources, their cache when all are asked. Without
//!   `[recipients] sources` every address exists (source "none").

use mlua::{Lua, Table};

use super::{RunState, Shared};

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let hostname = lua
        .app_data_ref::<Shared>()
        .map(|s| s.hostname.clone())
        .unwrap_or_default();
    t.set("hostname", hostname)?;
    // What Axigen's addFilter can name: `[[milter]]` ids → addresses, and
    // the configured content scanners.
    let (milters, scanners) = (lua.create_table()?, lua.create_table()?);
    if let Some(s) = lua.app_data_ref::<Shared>() {
        for (id, addr) in &s.scan.milters {
            milters.set(id.as_str(), addr.as_str())?;
        }
        scanners.set("clamd", s.scan.clamd.is_some())?;
        scanners.set("rspamd", s.scan.rspamd.is_some())?;
    }
    t.set("milters", milters)?;
    t.set("scanners", scanners)?;
    t.set(
        "is_local_domain",
        lua.create_function(|lua, domain: String| {
            let shared = lua
                .app_data_ref::<Shared>()
                .ok_or_else(|| mlua::Error::runtime("sluice.is_local_domain: no engine state"))?;
            Ok(shared.relay.is_local_domain(&domain))
        })?,
    )?;
    t.set(
        "policy_error",
        lua.create_function(|lua, e: Table| {
            let policy: String = e.get::<Option<String>>("policy")?.unwrap_or_default();
            let line: u32 = e.get::<Option<u32>>("line")?.unwrap_or(0);
            let event: String = e.get::<Option<String>>("event")?.unwrap_or_default();
            let message: String = e.get::<Option<String>>("message")?.unwrap_or_default();
            let (conn, hook) = lua
                .app_data_ref::<RunState>()
                .map(|rs| (rs.conn_id.clone(), Some(rs.hook)))
                .unwrap_or_default();
            tracing::error!(
                target: "sluice::script",
                conn = %conn,
                hook = hook.map(|h| h.name()).unwrap_or("-"),
                policy = %format!("{policy}:{line}"),
                event = %event,
                "policy runtime error, the event counts as setting no action: {message}"
            );
            if let Some(h) = hook {
                crate::metrics::policy_runtime_error(&policy, h);
            }
            Ok(())
        })?,
    )?;
    lua.globals().set("sluice", t)?;

    let r = lua.create_table()?;
    r.set(
        "verify",
        lua.create_async_function(|lua, (address, o): (String, Option<Table>)| async move {
            let only: Option<Vec<String>> = match &o {
                Some(t) => t.get::<Option<Vec<String>>>("sources")?,
                None => None,
            };
            let v = lua
                .app_data_ref::<Shared>()
                .and_then(|s| s.recipients.clone());
            let Some(v) = v else {
                return Ok(("exists".to_string(), "none".to_string(), None));
            };
            let out = v.verify(&address, only.as_deref()).await;
            let rewrite = match &out.verdict {
                crate::recipients::Verdict::Exists { rewrite } => rewrite.clone(),
                _ => None,
            };
            Ok((out.verdict.as_str().to_string(), out.source, rewrite))
        })?,
    )?;
    lua.globals().set("recipient", r)
}
