//! The inbound ESMTP server: listeners, the per-connection state machine and
//! DATA/BDAT reading (the protocol types are in `proto`). It asks `policy` for
//! verdicts and `store` to keep messages; it never calls Lua or sled itself.

pub mod data;
pub mod io;
pub mod proxy_protocol;
pub mod server;
pub mod session;
