//! The SMTP protocol as data, below everyone: replies and enhanced status
//! codes ([`reply`]), the command parser with its parameters and xtext
//! ([`command`]). No I/O; used by the server, the delivery client and the
//! policy engine alike.

pub mod command;
pub mod reply;
