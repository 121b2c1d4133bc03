//! Sender authentication for scripts (see `crate::scan::auth`):
//!
//! - `ScanDMARC([{ip, helo, domain}])` (eod) → `{[from_domain] = "pass" |
//!   "none" | "reject" | "quarantine" | "temperror" | "policy_absent"}`, or
//!   the string `"permerror"` when the From domain cannot be extracted.
//!   `ip`, `helo` and `domain` override the SPF inputs (default: the
//!   connection's IP and HELO host, the envelope sender's domain).
//! - `spf.check([{ip, helo, sender}])` → `{result, domain, identity,
//!   explanation, reason}` (RFC 7208, [`crate::scan::spf`]); missing fields
//!   default to the connection and envelope.
//! - `dkim.verify(mail)` → list of `{domain, selector, result, error}`.
//! - `arc.verify(mail)` → `{result, instances, error}`.
//! - `arc.seal(mail[, {ip, helo, sender}])` → true, or nil and an error;
//!   adds ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results
//!   (key from `[auth]`).
//! - `auth.results(mail[, {ip, helo, sender}])` → the RFC 8601
//!   Authentication-Results value (spf, dkim, arc, dmarc) under our
//!   authserv-id; `auth.authserv_id()` → that id.
//! - `auth.stamp(mail[, {ip, helo, sender}])` → what the built-in eod does
//!   with `[auth] results` on: removes every Authentication-Results that
//!   claims our authserv-id and adds ours on top; returns the value added
//!   (nil when `[auth] results = false` or the message cannot be checked).
//!
//! `mail` is `arguments.mail` (as modified so far) or a raw message string.
//! All are async: the script yields while DNS answers.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use mlua::{Lua, ObjectLike, Table, Value};

use super::mail::MailMessage;
use super::{with_run, Shared};
use crate::scan::auth::{self, DmarcVerdict, SpfRequest};
use crate::scan::dns::Resolver;
use crate::scan::ScanContext;

fn rt(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

/// DKIM results as scripts see them: a list of `{domain, selector,
/// result, error}` (`dkim.verify`, `mail:verifyDKIM`).
pub(crate) fn sigs_to_lua(lua: &Lua, sigs: Vec<auth::DkimSig>) -> mlua::Result<Table> {
    let list = lua.create_table()?;
    for (i, s) in sigs.into_iter().enumerate() {
        let t = lua.create_table()?;
        t.set("domain", s.domain)?;
        t.set("selector", s.selector)?;
        t.set("result", s.result)?;
        t.set("error", s.error)?;
        list.raw_set(i + 1, t)?;
    }
    Ok(list)
}

/// The epoch's resolver and scanners.
pub(crate) fn scanners(lua: &Lua, what: &str) -> mlua::Result<(Arc<Resolver>, Arc<ScanContext>)> {
    let shared = lua
        .app_data_ref::<Shared>()
        .ok_or_else(|| rt(format!("{what}: no policy engine state")))?;
    let resolver = shared
        .dns
        .resolver()
        .map_err(|e| rt(format!("{what}: {e}")))?
        .clone();
    Ok((resolver, shared.scan.clone()))
}

/// The message bytes of a MailMessage or a string.
pub(crate) fn message_bytes(v: &Value, what: &str) -> mlua::Result<Bytes> {
    match v {
        Value::String(s) => Ok(Bytes::copy_from_slice(&s.as_bytes())),
        Value::UserData(ud) => {
            let mut m = ud
                .borrow_mut::<MailMessage>()
                .map_err(|_| rt(format!("{what}: expected a MailMessage or a string")))?;
            Ok(m.bytes())
        }
        other => Err(rt(format!(
            "{what}: expected a MailMessage or a string, got {}",
            other.type_name()
        ))),
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// SPF inputs: options over the connection and envelope of the running hook.
fn spf_request(lua: &Lua, opts: &Option<Table>, what: &str) -> mlua::Result<SpfRequest> {
    let (conn, txn) = with_run(lua, what, |rs| {
        (rs.connection.clone(), rs.transaction.clone())
    })
    .unwrap_or((None, None));
    let get = |k: &str| -> mlua::Result<Option<String>> {
        match opts {
            Some(t) => t.get::<Option<String>>(k),
            None => Ok(None),
        }
    };
    let ip_s = get("ip")?
        .or_else(|| conn.as_ref().map(|c| c.remoteip.clone()))
        .ok_or_else(|| rt(format!("{what}: no ip")))?;
    let ip = parse_ip(&ip_s).ok_or_else(|| rt(format!("{what}: {ip_s:?} is not an IP address")))?;
    let helo = get("helo")?
        .or_else(|| {
            conn.as_ref()
                .and_then(|c| c.helo.as_ref().map(|h| h.host.clone()))
        })
        .unwrap_or_default();
    let sender = match get("sender")? {
        Some(s) => s,
        None => txn.map(|t| t.sender).unwrap_or_default(),
    };
    Ok(SpfRequest { ip, helo, sender })
}

fn scan_dmarc_fn(lua: &Lua) -> mlua::Result<mlua::Function> {
    lua.create_async_function(|lua, opts: Option<Table>| async move {
        let (hook, message, txn) = with_run(&lua, "ScanDMARC()", |rs| {
            (rs.hook, rs.message(), rs.transaction.clone())
        })?;
        crate::policy::hooks::require_full_message(hook, "ScanDMARC()").map_err(rt)?;
        let Some(message) = message else {
            return Err(rt("ScanDMARC(): no message"));
        };
        let (resolver, scan) = scanners(&lua, "ScanDMARC()")?;
        let domain: Option<String> = match &opts {
            Some(t) => t.get("domain")?,
            None => None,
        };
        let mut req = match spf_request(&lua, &opts, "ScanDMARC()") {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("ScanDMARC: {e}");
                return Ok(Value::String(lua.create_string("permerror")?));
            }
        };
        if let Some(d) = domain {
            let local = txn
                .as_ref()
                .map(|t| t.senderaddress.localpart.clone())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "postmaster".into());
            req.sender = if d.is_empty() {
                String::new()
            } else {
                format!("{local}@{d}")
            };
        }
        let verdict = auth::scan_dmarc(&resolver, &scan.auth.hostname, &message, &req).await;
        match verdict {
            DmarcVerdict::PermError => Ok(Value::String(lua.create_string("permerror")?)),
            DmarcVerdict::Domain(d, r) => {
                let t = lua.create_table()?;
                t.set(d, r)?;
                Ok(Value::Table(t))
            }
        }
    })
}

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    g.set("ScanDMARC", scan_dmarc_fn(lua)?)?;

    let spf = lua.create_table()?;
    spf.set(
        "check",
        lua.create_async_function(|lua, opts: Option<Table>| async move {
            let req = spf_request(&lua, &opts, "spf.check")?;
            let (resolver, scan) = scanners(&lua, "spf.check")?;
            let r = auth::spf_check(&resolver, &scan.auth.hostname, &req).await;
            let t = lua.create_table()?;
            t.set("result", r.result)?;
            t.set("domain", r.domain)?;
            t.set("identity", r.identity)?;
            t.set("explanation", r.explanation)?;
            t.set("reason", r.reason)?;
            Ok(t)
        })?,
    )?;
    g.set("spf", spf)?;

    let dkim = lua.create_table()?;
    dkim.set(
        "verify",
        lua.create_async_function(|lua, mail: Value| async move {
            let raw = message_bytes(&mail, "dkim.verify")?;
            let (resolver, _) = scanners(&lua, "dkim.verify")?;
            let sigs = auth::dkim_verify(&resolver, &raw)
                .await
                .map_err(|e| rt(format!("dkim.verify: {e}")))?;
            sigs_to_lua(&lua, sigs)
        })?,
    )?;
    g.set("dkim", dkim)?;

    let arc = lua.create_table()?;
    arc.set(
        "verify",
        lua.create_async_function(|lua, mail: Value| async move {
            let raw = message_bytes(&mail, "arc.verify")?;
            let (resolver, _) = scanners(&lua, "arc.verify")?;
            let r = auth::arc_verify(&resolver, &raw)
                .await
                .map_err(|e| rt(format!("arc.verify: {e}")))?;
            let t = lua.create_table()?;
            t.set("result", r.result)?;
            t.set("instances", r.instances)?;
            t.set("error", r.error)?;
            Ok(t)
        })?,
    )?;
    arc.set(
        "seal",
        lua.create_async_function(|lua, (mail, opts): (Value, Option<Table>)| async move {
            let Value::UserData(ud) = &mail else {
                return Err(rt("arc.seal: expected a MailMessage (arguments.mail)"));
            };
            let raw = message_bytes(&mail, "arc.seal")?;
            let req = spf_request(&lua, &opts, "arc.seal")?;
            let (resolver, scan) = scanners(&lua, "arc.seal")?;
            let report = match auth::authenticate(&resolver, &scan.auth, &raw, &req, true).await {
                Ok(r) => r,
                Err(e) => {
                    return Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?)))
                }
            };
            let headers = report.arc_headers.unwrap_or_default();
            let fields = split_fields(&headers);
            let o = lua.create_table()?;
            o.set("refold", true)?;
            for (name, value) in fields.iter().rev() {
                ud.call_method::<()>("addHeader", (name.as_str(), value.as_str(), o.clone()))?;
            }
            Ok((Value::Boolean(true), Value::Nil))
        })?,
    )?;
    g.set("arc", arc)?;

    let a = lua.create_table()?;
    a.set(
        "results",
        lua.create_async_function(|lua, (mail, opts): (Value, Option<Table>)| async move {
            let raw = message_bytes(&mail, "auth.results")?;
            let req = spf_request(&lua, &opts, "auth.results")?;
            let (resolver, scan) = scanners(&lua, "auth.results")?;
            let report = auth::authenticate(&resolver, &scan.auth, &raw, &req, false)
                .await
                .map_err(|e| rt(format!("auth.results: {e}")))?;
            Ok(report.header_value)
        })?,
    )?;
    a.set(
        "stamp",
        lua.create_async_function(|lua, (mail, opts): (Value, Option<Table>)| async move {
            let Value::UserData(ud) = &mail else {
                return Err(rt("auth.stamp: expected a MailMessage (arguments.mail)"));
            };
            let (resolver, scan) = scanners(&lua, "auth.stamp")?;
            if !scan.auth.results {
                return Ok(Value::Nil);
            }
            let raw = message_bytes(&mail, "auth.stamp")?;
            let req = spf_request(&lua, &opts, "auth.stamp")?;
            let ours = auth::authenticate(&resolver, &scan.auth, &raw, &req, false)
                .await
                .ok()
                .map(|r| r.header_value);
            // Every result claiming our authserv-id goes (RFC 8601 §5).
            let values: Vec<String> =
                ud.call_method("getHeaders", ("Authentication-Results", Value::Nil))?;
            for (i, v) in values.iter().enumerate().rev() {
                if auth::claims_authserv_id(v, &scan.auth.authserv_id) {
                    let o = lua.create_table()?;
                    o.set("index", i + 1)?;
                    ud.call_method::<()>("delHeader", ("Authentication-Results", o))?;
                }
            }
            match ours {
                Some(v) => {
                    // Unfolded here, folded again by addHeader.
                    let v = v.replace("\r\n", "");
                    ud.call_method::<()>("addHeader", ("Authentication-Results", v.as_str()))?;
                    Ok(Value::String(lua.create_string(&v)?))
                }
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    a.set(
        "authserv_id",
        lua.create_function(|lua, ()| {
            let (_, scan) = scanners(lua, "auth.authserv_id")?;
            Ok(scan.auth.authserv_id.clone())
        })?,
    )?;
    g.set("auth", a)
}

/// "Name: value\r\n\tmore\r\nName2: …" → [(name, unfolded value)].
fn split_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_fields() {
        let f = super::split_fields("A: 1;\r\n\tb=2\r\nB: x\r\n");
        assert_eq!(
            f,
            vec![("A".into(), "1; b=2".into()), ("B".into(), "x".into())]
        );
    }
}
