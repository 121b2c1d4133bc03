//! Sluice: an inbound mail gateway. The binary (`src/main.rs`) is a thin CLI
//! over this library so that tests and benchmarks run the same code.

pub mod bench;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod envelope;
pub mod export;
pub mod http;
pub mod http_client;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod recipients;
pub mod scan;
pub mod smtp;
pub mod state;
pub mod store;
pub mod tls;
