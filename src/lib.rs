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
//! - [`rekey`]: `vpan rekey`, the data directory copied under a new key for real PANs.
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
pub mod rekey;
pub mod store;
pub mod switch;
pub mod tools;

/// The concurrent map behind the card index, the ledger and the issuer link's requests in
/// flight: a `DashMap` hashed with foldhash, seeded per process. SipHash (std's default)
/// cost 20 ns of each card lookup; a per-process random seed still keeps a network peer,
/// who chooses the PANs, STANs and DE 90s that are hashed, from aiming at collisions.
pub type ConcurrentMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// Every key of `map`, copied, for a walk over all entries (a snapshot) that must not hold
/// a shard lock while it works on each one.
///
/// The vector is sized, and its memory touched, before the walk. Grown during the walk, it
/// was copied and faulted in while a shard's read lock was held, and every authorization
/// that needed that shard waited, holding its card's lock meanwhile: a snapshot of 650,000
/// ledger entries stalled both worker threads for up to 36 ms (seen as `perf`
/// context-switch stacks in `DashMap::_entry`).
pub(crate) fn copy_keys<K, V>(map: &ConcurrentMap<K, V>) -> Vec<K>
where
    K: Copy + Eq + std::hash::Hash,
{
    // Room for what arrives during the walk; beyond it the vector grows as usual.
    let len = map.len();
    let room = len + len / 8 + 1024;
    // Opaque to the optimiser, so that the allocation and the zeros are not merged into a
    // `calloc`, which would hand back pages still to be faulted in.
    let mut keys = std::hint::black_box(Vec::with_capacity(room));
    keys.spare_capacity_mut()
        .fill(std::mem::MaybeUninit::zeroed());
    keys.extend(map.iter().map(|e| *e.key()));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keys_returns_every_key_once_with_room_to_spare() {
        let map: ConcurrentMap<u64, ()> = ConcurrentMap::default();
        for k in 0..16_000u64 {
            map.insert(k * 7, ());
        }
        let mut keys = copy_keys(&map);
        // A vector grown by doubling would stop at 16,384.
        assert!(keys.capacity() >= 16_000 + 16_000 / 8);
        keys.sort_unstable();
        assert_eq!(keys, (0..16_000u64).map(|k| k * 7).collect::<Vec<_>>());
        assert!(copy_keys(&ConcurrentMap::<u64, ()>::default()).is_empty());
    }
}
