//! vpan: an ISO 8583 authorization switch plug-in for controlled virtual card numbers.
//!
//! A message's way through vpan, by module:
//!
//! - [`config`]: the typed configuration, file + environment, validated at start.
//! - [`logging`]: human or JSON log lines on stderr.
//! - [`metrics`]: the contract's metric names, described once, and the `/metrics` endpoint.
//! - [`pan`]: the one type that holds a card number and never prints it in full.

pub mod config;
pub mod logging;
pub mod metrics;
pub mod pan;
