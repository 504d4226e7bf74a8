//! Virtual cards: the model, vPAN generation and the limits.
//!
//! - [`request`]: the plain structs the switch fills from the ISO 8583 message;
//! - [`card`]: the card model;
//! - [`limits`]: the pure decision (approve and hold, or decline with DE 39);
//! - [`history`]: each card's last decisions, for the API;
//! - [`vpan`]: vPAN generation in the real card's BIN.

pub mod card;
pub mod history;
pub mod limits;
pub mod request;
pub mod vpan;
