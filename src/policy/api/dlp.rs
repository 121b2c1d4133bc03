//! `ScanDLP([patterns[, options]])` in eod: the DLP engine built from
//! `[dlp.rules]` when the engine loaded (see `crate::scan::dlp` for the
//! arguments and the result). The scan runs on the blocking pool; the
//! script yields meanwhile.

use std::sync::Arc;

use mlua::{Lua, Value};

use super::auth::scanners;
use super::with_run;
use crate::scan::dlp::{options_from_lua, result_to_lua, selection_from_lua, Selection};

pub fn register(lua: &Lua) -> mlua::Result<()> {
    let f = lua.create_async_function(|lua, (patterns, options): (Value, Value)| async move {
        let (hook, message) = with_run(&lua, "ScanDLP()", |rs| (rs.hook, rs.message()))?;
        crate::policy::hooks::require_full_message(hook, "ScanDLP()")
            .map_err(mlua::Error::runtime)?;
        let Some(message) = message else {
            return Err(mlua::Error::runtime("ScanDLP(): no message"));
        };
        let (_, scan) = scanners(&lua, "ScanDLP()")?;
        let engine = scan.dlp.clone();
        let mut selection = selection_from_lua(patterns)?;
        let opts = options_from_lua(options)?;
        if let Selection::Custom(specs) = &selection {
            let set = engine
                .compile_custom(specs)
                .map_err(|e| mlua::Error::runtime(format!("ScanDLP: {e}")))?;
            selection = Selection::Compiled(Arc::new(set));
        }
        let scan_opts = opts.clone();
        let result =
            tokio::task::spawn_blocking(move || engine.scan(&message, &selection, &scan_opts))
                .await
                .map_err(|e| mlua::Error::runtime(format!("ScanDLP: scan failed: {e}")))?;
        result_to_lua(&lua, &result, &opts)
    })?;
    lua.globals().set("ScanDLP", f)
}
