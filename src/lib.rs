//! Sluice: an inbound mail gateway. The binary (`src/main.rs`) is a thin CLI
//! over this library so that tests and benchmarks run the same code.

pub mod axigen;
pub mod config;
pub mod envelope;
pub mod ids;
pub mod policy;
pub mod scan;
pub mod smtp;
