//! The index: every vPAN ever issued, in memory, behind short synchronous closures.
//!
//! A `DashMap` sharded by key, with a compact 8-byte [`CardKey`] (not a `String`) and a boxed
//! [`Card`] as value, so a table slot is 16 bytes and hashbrown's power-of-two capacity
//! rounding costs little (a card inline would double ~130 bytes per empty slot). Closed cards
//! stay forever: a vPAN is never issued twice.
//!
//! The API hands out no guard. Callers pass a synchronous closure that runs under the
//! shard's lock and returns an owned value, so no lock can be held across an `.await` (a
//! DashMap guard held across `.await` deadlocks the runtime), and the decision plus the
//! hold of an authorization happen atomically under the card's (shard's) write lock.

use crate::ConcurrentMap;
use dashmap::mapref::entry::Entry;

use super::card::{Card, CardKey, Status, UnixSeconds};

/// The map of all cards.
pub struct CardIndex {
    /// vPAN key → card.
    map: ConcurrentMap<CardKey, Box<Card>>,
}

impl CardIndex {
    /// An empty index sized for `capacity` cards (pre-sizing avoids rehashing pauses).
    pub fn with_capacity(capacity: usize) -> CardIndex {
        CardIndex {
            // Many small shards: a shard is rehashed under its write lock when it grows,
            // so the smaller each one, the shorter the stall of the lookups behind it.
            map: ConcurrentMap::with_capacity_and_hasher_and_shard_amount(
                capacity,
                Default::default(),
                128,
            ),
        }
    }

    /// Inserts `card` under `key` unless the key is taken; true when inserted.
    pub fn insert_new(&self, key: CardKey, card: impl FnOnce() -> Card) -> bool {
        match self.map.entry(key) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Box::new(card()));
                true
            }
        }
    }

    /// Inserts or replaces (used by recovery).
    pub fn put(&self, key: CardKey, card: Card) {
        self.map.insert(key, Box::new(card));
    }

    /// Removes a card (only for an issuance whose journal write failed: never acknowledged).
    pub(crate) fn remove(&self, key: CardKey) {
        self.map.remove(&key);
    }

    /// Runs `f` on the card under a read lock; `None` when the key is unknown.
    pub fn read<R>(&self, key: CardKey, f: impl FnOnce(&Card) -> R) -> Option<R> {
        self.map.get(&key).map(|c| f(&c))
    }

    /// Runs `f` on the card under the write lock; `None` when the key is unknown.
    pub fn update<R>(&self, key: CardKey, f: impl FnOnce(&mut Card) -> R) -> Option<R> {
        self.map.get_mut(&key).map(|mut c| f(&mut c))
    }

    /// Runs `f` on every card, each under its shard's write lock: for recovery, before
    /// anything is served (it would stall authorizations on the shard it walks).
    pub(crate) fn for_each_mut(&self, mut f: impl FnMut(CardKey, &mut Card)) {
        for mut c in self.map.iter_mut() {
            let key = *c.key();
            f(key, &mut c);
        }
    }

    /// True when the key was ever issued.
    pub fn contains(&self, key: CardKey) -> bool {
        self.map.contains_key(&key)
    }

    /// Number of cards.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no card was ever issued.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key (a copy, so that walking all cards holds each lock only briefly).
    pub fn keys(&self) -> Vec<CardKey> {
        crate::copy_keys(&self.map)
    }

    /// Up to `limit` keys greater than `after`, in key order: one page of a listing. One
    /// pass over the map with a bounded heap, so a page costs O(n log limit) time and
    /// O(limit) memory, and each shard lock is held only while it is walked.
    pub fn page(&self, after: Option<CardKey>, limit: usize) -> Vec<CardKey> {
        self.page_where(after, limit, |_| true)
    }

    /// [`CardIndex::page`] of the cards `keep` keeps.
    pub fn page_where(
        &self,
        after: Option<CardKey>,
        limit: usize,
        keep: impl Fn(&Card) -> bool,
    ) -> Vec<CardKey> {
        let mut smallest = std::collections::BinaryHeap::with_capacity(limit.saturating_add(1));
        for e in self.map.iter() {
            let key = *e.key();
            if after.is_some_and(|a| key <= a) || !keep(e.value()) {
                continue;
            }
            if smallest.len() < limit {
                smallest.push(key);
            } else if smallest.peek().is_some_and(|&top| key < top) {
                smallest.pop();
                smallest.push(key);
            }
        }
        smallest.into_sorted_vec()
    }

    /// Cards by effective status at `now`, by the names of `vpan_cards{status}`: `active`,
    /// `paused`, `closed`, and `expired` for a card not closed whose `valid_until` has
    /// passed (the API still shows it active or paused; it approves nothing more), so that
    /// short-lived cards do not swell the active count for ever.
    pub fn counts_by_status(&self, now: UnixSeconds) -> [(&'static str, u64); 4] {
        let mut n = [0u64; 4];
        for e in self.map.iter() {
            let status = e.status();
            let slot = if status != Status::Closed && now >= e.valid_until {
                3
            } else {
                usize::from(status.to_u8())
            };
            n[slot] += 1;
        }
        [
            (Status::Active.as_str(), n[0]),
            (Status::Paused.as_str(), n[1]),
            (Status::Closed.as_str(), n[2]),
            ("expired", n[3]),
        ]
    }
}
