//! Virtual cards: the model, vPAN generation, the index, the limits and the ledger.
//!
//! An authorization on a vPAN goes through these files in this order:
//!
//! - [`request`]: the plain structs the switch fills from the ISO 8583 message;
//! - [`vault`]: the facade ([`Cards`]) the switch and the API call; it looks the card up in
//! - [`index`]: every vPAN ever issued, a `DashMap` of compact keys to boxed [`Card`]s
//!   ([`card`]), behind closures that cannot hold a lock across `.await`;
//! - [`limits`]: the pure decision (approve and hold, or decline with DE 39);
//! - [`ledger`]: holds, issuer answers, reversals and repeats, by transaction key;
//! - [`event`]: every change as a journal record, applied the same way live and on replay;
//! - [`history`]: each card's last decisions, for the API.
//!
//! [`requests`] keeps which card each recent `Idempotency-Key` of the API issued.
//!
//! Cards are made by [`vpan`] (generation in the real card's BIN) through
//! [`Cards::issue`]. Durability lives in [`crate::store`]; the facade's two cold rooms
//! are `vault::recovery` ([`Cards::open`]: snapshot, journal, holds left in doubt) and
//! `vault::snapshots` ([`Cards::snapshot`] and the thread that takes them).

pub mod card;
pub mod event;
pub mod history;
pub mod index;
pub mod ledger;
pub mod limits;
pub mod request;
pub mod requests;
pub mod vault;
pub mod vpan;

pub use crate::store::journal::Durable;
pub use card::{
    AcceptorId, Card, CardKey, CardSpec, Controls, Expiry, MerchantLock, Status, UnixSeconds,
    unix_now,
};
pub use history::{DecidedBy, RecentTx};
pub use ledger::{AuthCode, LedgerConfig, PartialAnswer};
pub use request::{Amounts, AuthRequest, Kind, OriginalData, ResponseCode, ReversalRequest, TxKey};
pub use vault::{
    Admit, AdviceOutcome, Approval, CardError, CardView, Cards, CardsConfig, Decision, Hold,
    IssueError, IssuerOutcome, OpenError, Recovered, Replay, ReversalOutcome, SnapshotPolicy,
    SnapshotReport, Snapshots, StatusChange,
};
