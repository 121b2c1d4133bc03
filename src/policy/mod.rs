//! Lua policy engine (issue 4): state pool, sandbox, hook dispatch.
