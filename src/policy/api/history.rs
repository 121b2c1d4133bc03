//! `History(action, recipient[, {sender, metadata, transportid, reason}])`:
//! ask the caller to write a history record. Kept whatever the verdict.

use mlua::{Lua, Table, Value};

use super::{address_arg, string_map, with_run};
use crate::policy::HistoryRequest;
use crate::store::history::HistoryAction;

pub const ACTIONS: [&str; 5] = ["REJECT", "DELETE", "DELIVER", "DEFER", "ERROR"];

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let f = lua.create_function(
        |lua, (action, recipient, opts): (String, Value, Option<Table>)| -> mlua::Result<bool> {
            let action = match HistoryAction::parse(&action) {
                Some(a) if ACTIONS.contains(&a.as_str()) => a,
                _ => {
                    return Err(mlua::Error::runtime(format!(
                        "History(): action {action:?} is not one of {}",
                        ACTIONS.join(", ")
                    )))
                }
            };
            let recipient = address_arg(&recipient, "History(): recipient")?;
            let mut req = HistoryRequest {
                action,
                recipient,
                sender: None,
                metadata: Default::default(),
                transportid: None,
                reason: None,
            };
            if let Some(o) = &opts {
                match o.get::<Value>("sender")? {
                    Value::Nil => {}
                    v => req.sender = Some(address_arg(&v, "History(): sender")?),
                }
                req.metadata = string_map(o.get("metadata")?, "History(): metadata")?;
                req.transportid = o.get("transportid")?;
                req.reason = o.get("reason")?;
            }
            with_run(lua, "History()", |rs| {
                if req.sender.is_none() {
                    req.sender = rs.transaction.as_ref().map(|t| t.sender.clone());
                }
                rs.history.push(req);
            })?;
            Ok(true)
        },
    )?;
    lua.globals().set("History", f)
}
