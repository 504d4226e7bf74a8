//! vpan: an ISO 8583 authorization switch plug-in for controlled virtual card numbers.
//!
//! A message's way through vpan, by module:
//!
//! - [`pan`]: the one type that holds a card number and never prints it in full.
//! - [`cards`]: virtual cards: model, vPAN generation, in-memory index, the pure limits
//!   decision, holds, reversals and repeats, behind the [`cards::Cards`] facade.
//! - [`store`]: durability: the group-commit journal, snapshots, real PANs encrypted at rest.

pub mod cards;
pub mod pan;
pub mod store;
