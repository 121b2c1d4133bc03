//! The inbound ESMTP server: listeners, the per-connection state machine,
//! command parsing, DATA/BDAT reading and replies. It asks `policy` for
//! verdicts and `store` to keep messages; it never calls Lua or sled itself.

pub mod command;
pub mod data;
pub mod io;
pub mod proxy_protocol;
pub mod reply;
pub mod server;
pub mod session;
