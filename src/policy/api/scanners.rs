//! `ScanClam([opts])` and `ScanRspamd([opts])` in eod (see
//! `crate::scan::clamd` and `crate::scan::rspamd`), and nothing else:
//! `transaction.milters` is part of `transaction` (the session fills it).
//!
//! - `ScanClam({timeout = seconds, max_size = bytes})` → `{}` when clean,
//!   the list of signature names found, or `nil, error` (clamd down,
//!   timeout, protocol error, the message over `max_size` or clamd's
//!   StreamMaxLength).
//! - `ScanRspamd({timeout, ip, helo, hostname, from, rcpt, user})` →
//!   `{action, score, required_score, symbols = {NAME = score}, messages,
//!   milter = {add_headers, remove_headers}, skipped}` or `nil, error`. The
//!   envelope defaults to the connection's and the transaction's.
//!
//! A failure is a value, never a script error: the script chooses (the
//! example scripts Defer()); it is logged with the connection id and
//! counted in `sluice_scanner_errors_total`.

use std::time::{Duration, Instant};

use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value};
use tracing::warn;

use super::auth::scanners;
use super::envelope::to_lua;
use super::with_run;

fn check_keys(opts: &Option<Table>, what: &str, allowed: &[&str]) -> mlua::Result<()> {
    if let Some(t) = opts {
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair?;
            let name = match &k {
                Value::String(s) => s.to_str()?.to_string(),
                other => format!("{other:?}"),
            };
            if !allowed.contains(&name.as_str()) {
                return Err(mlua::Error::runtime(format!(
                    "{what}: unknown option {name:?} (allowed: {})",
                    allowed.join(", ")
                )));
            }
        }
    }
    Ok(())
}

fn timeout_opt(opts: &Option<Table>, default: Duration) -> mlua::Result<Duration> {
    match opts {
        Some(t) => match t.get::<Option<f64>>("timeout")? {
            Some(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            Some(_) => Err(mlua::Error::runtime(
                "timeout must be a positive number of seconds",
            )),
            None => Ok(default),
        },
        None => Ok(default),
    }
}

fn failure(
    lua: &Lua,
    conn: &str,
    scanner: &'static str,
    kind: &'static str,
    e: String,
) -> mlua::Result<MultiValue> {
    warn!(conn = %conn, scanner, kind, error = %e, "scanner failed");
    crate::metrics::scanner_error(scanner, kind);
    Ok(MultiValue::from_vec(vec![
        Value::Nil,
        Value::String(lua.create_string(&e)?),
    ]))
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let clam = lua.create_async_function(|lua, opts: Option<Table>| async move {
        check_keys(&opts, "ScanClam", &["timeout", "max_size"])?;
        let (hook, message, conn) = with_run(&lua, "ScanClam()", |rs| {
            (rs.hook, rs.message(), rs.conn_id.clone())
        })?;
        crate::policy::hooks::require_full_message(hook, "ScanClam()")
            .map_err(mlua::Error::runtime)?;
        let Some(message) = message else {
            return Err(mlua::Error::runtime("ScanClam(): no message"));
        };
        let (_, scan) = scanners(&lua, "ScanClam()")?;
        let Some(cfg) = scan.clamd.clone() else {
            return Err(mlua::Error::runtime(
                "ScanClam(): [scanners.clamd] is not configured",
            ));
        };
        let timeout = timeout_opt(&opts, cfg.timeout)?;
        let max_size = match &opts {
            Some(t) => t.get::<Option<u64>>("max_size")?.unwrap_or(cfg.max_size),
            None => cfg.max_size,
        }
        .min(cfg.max_size);
        let started = Instant::now();
        let r = crate::scan::clamd::scan(&cfg, &message, timeout, max_size).await;
        crate::metrics::scan_duration("clamd", started.elapsed());
        match r {
            Ok(found) => {
                let t = lua.create_sequence_from(found)?;
                t.set_metatable(Some(lua.array_metatable()))?;
                Ok(MultiValue::from_vec(vec![Value::Table(t)]))
            }
            Err(e) => failure(&lua, &conn, "clamd", e.kind(), e.to_string()),
        }
    })?;
    lua.globals().set("ScanClam", clam)?;

    let rspamd = lua.create_async_function(|lua, opts: Option<Table>| async move {
        check_keys(
            &opts,
            "ScanRspamd",
            &["timeout", "ip", "helo", "hostname", "from", "rcpt", "user"],
        )?;
        let (hook, message, conn, connection, tx) = with_run(&lua, "ScanRspamd()", |rs| {
            (
                rs.hook,
                rs.message(),
                rs.conn_id.clone(),
                rs.connection.clone(),
                rs.transaction.clone(),
            )
        })?;
        crate::policy::hooks::require_full_message(hook, "ScanRspamd()")
            .map_err(mlua::Error::runtime)?;
        let Some(message) = message else {
            return Err(mlua::Error::runtime("ScanRspamd(): no message"));
        };
        let (_, scan) = scanners(&lua, "ScanRspamd()")?;
        let Some(client) = scan.rspamd.clone() else {
            return Err(mlua::Error::runtime(
                "ScanRspamd(): [scanners.rspamd] is not configured",
            ));
        };
        let timeout = timeout_opt(&opts, client.timeout())?;
        let mut env = crate::scan::rspamd::Envelope::default();
        if let Some(c) = &connection {
            env.ip = Some(c.remoteip.clone());
            env.helo = c.helo.as_ref().map(|h| h.host.clone());
            env.hostname = c.remoteptr.clone();
            env.user = c.auth.as_ref().map(|a| a.username.clone());
        }
        if let Some(t) = &tx {
            env.from = Some(t.sender.clone());
            env.rcpts = t.recipient_list();
            env.queue_id = Some(t.id.clone());
        }
        if let Some(o) = &opts {
            for (k, slot) in [
                ("ip", &mut env.ip),
                ("helo", &mut env.helo),
                ("hostname", &mut env.hostname),
                ("from", &mut env.from),
                ("user", &mut env.user),
            ] {
                if let Some(v) = o.get::<Option<String>>(k)? {
                    *slot = Some(v);
                }
            }
            match o.get::<Value>("rcpt")? {
                Value::Nil => {}
                Value::String(s) => env.rcpts = vec![s.to_str()?.to_string()],
                Value::Table(t) => {
                    env.rcpts = t.sequence_values::<String>().collect::<mlua::Result<_>>()?
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "ScanRspamd: rcpt must be a string or a list, got {}",
                        other.type_name()
                    )))
                }
            }
        }
        let started = Instant::now();
        let r = client.check(message, &env, timeout).await;
        crate::metrics::scan_duration("rspamd", started.elapsed());
        match r {
            Ok(res) => {
                let t = lua.create_table()?;
                t.set("action", res.action.as_str())?;
                t.set("score", res.score)?;
                t.set("required_score", res.required_score)?;
                let syms = lua.create_table()?;
                for (name, s) in &res.symbols {
                    syms.set(name.as_str(), s.score)?;
                }
                t.set("symbols", syms)?;
                t.set("messages", to_lua(&lua, &res.messages)?)?;
                if let Some(m) = &res.milter {
                    t.set("milter", to_lua(&lua, m)?)?;
                }
                t.set("skipped", res.is_skipped)?;
                Ok(MultiValue::from_vec(vec![Value::Table(t)]))
            }
            Err(e) => failure(&lua, &conn, "rspamd", e.kind(), e.to_string()),
        }
    })?;
    lua.globals().set("ScanRspamd", rspamd)
}
