//! The SMTP protocol as data, below everyone: replies and enhanced status
//! codes ([`reply`]), the command parser ([`command`]) with typed MAIL/RCPT
//! parameters and xtext ([`params`]). No I/O; used by the server, the delivery client and the
//! policy engine alike.

pub mod command;
pub mod params;
pub mod reply;
