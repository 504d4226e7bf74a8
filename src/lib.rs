//! vpan: an ISO 8583 authorization switch plug-in for controlled virtual card numbers.
//!
//! A message's way through vpan, by module:
//!
//! - [`iso8583`]: the wire: framing, the dialect as data (built in or from jPOS XML), parse
//!   and pack of messages with zero-copy fields and cheap edits.
//! - [`pan`]: the one type that holds a card number and never prints it in full.
//! - [`cards`]: virtual cards: model, vPAN generation, in-memory index, the pure limits
//!   decision, holds, reversals and repeats, behind the [`cards::Cards`] facade.
//! - [`store`]: durability: the group-commit journal, snapshots, real PANs encrypted at rest.
//! - [`switch`]: the link itself: network connections, the authorization flow, the issuer link.
//! - [`api`]: the HTTPS issuance API (axum over rustls) and its client, `vpan card`.
//! - [`app`]: the running switch: build (bind, recover), addresses, run until shutdown.
//! - [`config`]: the typed configuration, file + environment, validated at start.
//! - [`logging`]: human or JSON log lines on stderr.
//! - [`metrics`]: the contract's metric names, described once, and the `/metrics` endpoint.
//! - [`tools`]: the issuer simulator, the traffic file, its generator and the load
//!   generator that test and measure the switch over real TCP, and `vpan demo`, which runs
//!   them all against the switch and its API in one process.

pub mod api;
pub mod app;
pub mod cards;
pub mod config;
pub mod iso8583;
pub mod logging;
pub mod metrics;
pub mod pan;
pub mod store;
pub mod switch;
pub mod tools;

/// The concurrent map behind the card index, the ledger and the issuer link's requests in
/// flight: a `DashMap` hashed with foldhash, seeded per process. SipHash (std's default)
/// cost 20 ns of each card lookup; a per-process random seed still keeps a network peer,
/// who chooses the PANs, STANs and DE 90s that are hashed, from aiming at collisions.
pub type ConcurrentMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;
