//! The switch: vpan on the ISO 8583 link, between the network and the issuer host.
//!
//! A request's way through, by file:
//!
//! - [`server`]: accepts network connections (or dials the network), within
//!   `max_connections`;
//! - [`connection`]: one connection's frames in and answers out, many in flight, answered
//!   in whatever order they are decided;
//! - [`flow`]: what each message type means: decide on the card, forward, answer;
//! - [`issuer`]: the persistent connections to the issuer host, STAN re-stamping, timeouts
//!   and the reversal of late approvals;
//! - [`mac`]: the optional MAC (DE 64/128) on the network link, checked before anything
//!   else is done with a message and put on every answer.

pub mod connection;
pub mod flow;
pub mod issuer;
pub mod mac;
pub mod server;

pub use connection::ConnectionLimits;
pub use flow::Flow;
pub use issuer::{IssuerError, IssuerLink, IssuerSettings};
