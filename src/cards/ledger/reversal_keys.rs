//! The keys of the reversals recently taken: a reversal under a key already taken is the
//! same reversal again (a repeat, its advice form, a resend) when it asks the same, and is
//! answered 94 when it asks otherwise, as a request under a key already used is.
//!
//! A reversal finds its original by DE 90 (or by its own key with the original's class)
//! and sets what remains of it; its own key (class 4, DE 11, DE 7, DE 32, DE 41) is not
//! the original's. Without this book, three reversals under one key naming one purchase,
//! leaving 1500, then 500, then nothing, each gave back more, and one under a key already
//! taken naming another purchase gave that one back too, where the issuer, which keys a
//! reversal by its own key, applied only the first: the card counted less than the account
//! was charged. Kept as long as the ledger keeps transactions, bounded apart (a quarter of
//! its capacity), journaled (`Event::ReversalSeen`) and in snapshots.

use std::sync::Mutex;

use crate::ConcurrentMap;
use crate::cards::card::{CardKey, UnixSeconds};
use crate::cards::request::OriginalData;

use super::{Fifo, LedgerConfig};

/// A reversal taken under its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenReversal {
    /// The card it reversed on.
    pub card: CardKey,
    /// What it asked (`ReversalRequest::fingerprint`, which covers the card too).
    pub fingerprint: u64,
    /// When it came.
    pub at: UnixSeconds,
    /// The sequence number of its record.
    pub lsn: u64,
}

/// What a reversal's key says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not taken before: now it is, under the sequence number given.
    New,
    /// Taken by a reversal that asked the same: this one is it again; `exactly` when its
    /// fingerprint is this one's (not only `same` by the caller's reading).
    Same {
        /// The two fingerprints are one.
        exactly: bool,
    },
    /// Taken by a reversal that asked otherwise (or on another card): 94.
    Other,
}

/// The reversals' keys, with their retention queue.
pub struct ReversalKeys {
    seen: ConcurrentMap<OriginalData, SeenReversal>,
    /// When each key was taken, by which taking (its record's sequence number).
    order: Mutex<Fifo<Taking>>,
}

/// A key taken at a time, by the taking numbered so: the queue's item, which forgets that
/// taking only (a key freed by a failed store and taken again in the same second stays).
type Taking = (UnixSeconds, OriginalData, u64);

impl Default for ReversalKeys {
    fn default() -> ReversalKeys {
        ReversalKeys {
            seen: ConcurrentMap::default(),
            order: Mutex::new(Fifo::default()),
        }
    }
}

impl ReversalKeys {
    /// Takes `key` for a reversal asking `fingerprint` on `card`, numbered by `lsn` when
    /// it is new (called only then, under the key's lock, so that two reversals under one
    /// key, on one card or two, are decided one after the other); `same` tells whether the
    /// fingerprint of the reversal that took it before asked the same
    /// (`ReversalRequest::is_same`).
    pub fn claim(
        &self,
        key: OriginalData,
        card: CardKey,
        fingerprint: u64,
        same: impl FnOnce(u64) -> bool,
        at: UnixSeconds,
        lsn: impl FnOnce() -> u64,
    ) -> (Claim, u64) {
        match self.seen.entry(key) {
            dashmap::Entry::Occupied(taken) => {
                let seen = taken.get();
                let same = seen.card == card && same(seen.fingerprint);
                let claim = if same {
                    Claim::Same {
                        exactly: seen.fingerprint == fingerprint,
                    }
                } else {
                    Claim::Other
                };
                (claim, seen.lsn)
            }
            dashmap::Entry::Vacant(slot) => {
                let lsn = lsn();
                slot.insert(SeenReversal {
                    card,
                    fingerprint,
                    at,
                    lsn,
                });
                (Claim::New, lsn)
            }
        }
    }

    /// Frees `key`, taken under `lsn` by a reversal whose record could not be written
    /// (answered 96: the network sends it again, perhaps otherwise).
    pub fn release(&self, key: &OriginalData, lsn: u64) {
        self.seen.remove_if(key, |_, s| s.lsn == lsn);
    }

    /// What took `key`, if anything.
    pub fn get(&self, key: &OriginalData) -> Option<SeenReversal> {
        self.seen.get(key).map(|s| *s)
    }

    /// Puts back what a snapshot or the journal says took `key`, unless something later
    /// did (the key used again after it was forgotten).
    pub(crate) fn load(&self, key: OriginalData, seen: SeenReversal) {
        match self.seen.entry(key) {
            dashmap::Entry::Occupied(mut taken) if taken.get().lsn < seen.lsn => {
                taken.insert(seen);
            }
            dashmap::Entry::Occupied(_) => {}
            dashmap::Entry::Vacant(slot) => {
                slot.insert(seen);
            }
        }
    }

    /// Notes `key`, taken at `at` by the taking numbered `lsn`, for retention, and forgets
    /// what falls out of the bounds. Never call with a guard of this map held.
    pub fn remember(
        &self,
        key: OriginalData,
        at: UnixSeconds,
        lsn: u64,
        now: UnixSeconds,
        config: &LedgerConfig,
    ) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        order.push_back((at, key, lsn));
        self.forget_beyond_bounds(&mut order, now, config);
    }

    /// Forgets, oldest first, the keys past the capacity or the retention.
    fn forget_beyond_bounds(
        &self,
        order: &mut Fifo<Taking>,
        now: UnixSeconds,
        config: &LedgerConfig,
    ) {
        let capacity = config.reversal_key_capacity();
        let horizon = now.saturating_sub(config.retention_secs);
        while let Some(&(at, key, lsn)) = order.front() {
            if order.len() <= capacity && at >= horizon {
                break;
            }
            order.pop_front();
            // Only the taking this item stands for: not the key taken again since.
            self.seen.remove_if(&key, |_, s| s.lsn == lsn);
        }
    }

    /// Rebuilds the retention queue after recovery, oldest first, and forgets what is
    /// beyond the bounds as of `now` (the newest transaction recovered).
    pub(crate) fn rebuild_order(&self, now: UnixSeconds, config: &LedgerConfig) {
        let mut all: Vec<(UnixSeconds, u64, OriginalData)> =
            self.seen.iter().map(|s| (s.at, s.lsn, *s.key())).collect();
        all.sort_unstable_by_key(|&(at, lsn, _)| (at, lsn));
        let now = all.iter().map(|&(at, _, _)| at).max().unwrap_or(0).max(now);
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        *order = Fifo::default();
        for (at, lsn, key) in all {
            order.push_back((at, key, lsn));
        }
        self.forget_beyond_bounds(&mut order, now, config);
    }

    /// Every key and what took it (a copy, for snapshots).
    pub(crate) fn entries(&self) -> Vec<(OriginalData, SeenReversal)> {
        self.seen.iter().map(|s| (*s.key(), *s.value())).collect()
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stan: u32) -> OriginalData {
        OriginalData {
            class: 4,
            stan,
            transmitted: 1_126_152_942,
            acquirer: 12345,
            terminal: *b"TERM0001",
        }
    }

    /// A card drawn afresh (a random number of the BIN): call once per card.
    fn card() -> CardKey {
        CardKey::from_digits(crate::pan::test_pan("497010").as_bytes()).expect("a card key")
    }

    #[test]
    fn a_key_taken_is_the_same_reversal_only_with_the_same_content_on_the_same_card() {
        let keys = ReversalKeys::default();
        let card = card();
        let mut next = 7;
        let mut lsn = || {
            next += 1;
            next
        };
        assert_eq!(
            keys.claim(key(1), card, 42, |f| f == 42, 100, &mut lsn),
            (Claim::New, 8)
        );
        assert_eq!(
            keys.claim(key(1), card, 42, |f| f == 42, 101, &mut lsn),
            (Claim::Same { exactly: true }, 8)
        );
        assert_eq!(
            keys.claim(key(1), card, 43, |f| f == 43, 102, &mut lsn),
            (Claim::Other, 8)
        );
        let other_card =
            CardKey::from_digits(crate::pan::test_pan("497011").as_bytes()).expect("a card key");
        assert_eq!(
            keys.claim(key(1), other_card, 42, |f| f == 42, 103, &mut lsn),
            (Claim::Other, 8)
        );
        // Another key is another reversal.
        assert_eq!(
            keys.claim(key(2), card, 43, |f| f == 43, 104, &mut lsn),
            (Claim::New, 9)
        );
        // Freed only by the taking that failed to be written.
        keys.release(&key(1), 9);
        assert!(keys.get(&key(1)).is_some());
        keys.release(&key(1), 8);
        assert_eq!(
            keys.claim(key(1), card, 43, |f| f == 43, 105, &mut lsn),
            (Claim::New, 10)
        );
    }

    #[test]
    fn keys_are_forgotten_past_the_retention_or_the_capacity_oldest_first() {
        let config = LedgerConfig {
            capacity: 8,
            retention_secs: 1000,
        };
        let keys = ReversalKeys::default();
        let card = card();
        for stan in 0..3 {
            let at = 100 + u64::from(stan);
            keys.claim(key(stan), card, 1, |f| f == 1, at, || u64::from(stan));
            keys.remember(key(stan), at, u64::from(stan), at, &config);
        }
        assert_eq!(keys.len(), 2, "a quarter of 8");
        assert!(keys.get(&key(0)).is_none());
        keys.claim(key(9), card, 1, |f| f == 1, 1102, || 9);
        keys.remember(key(9), 1102, 9, 1102, &config);
        assert_eq!(keys.get(&key(1)), None, "older than the retention");
        assert!(keys.get(&key(2)).is_some());
        assert!(keys.get(&key(9)).is_some());
    }

    #[test]
    fn a_key_kept_takes_64_bytes_in_the_map_and_48_in_the_queue_as_the_readme_says() {
        assert_eq!(size_of::<(OriginalData, SeenReversal)>(), 64);
        assert_eq!(size_of::<Taking>(), 48);
    }

    #[test]
    fn a_key_freed_and_taken_again_in_the_same_second_outlives_its_first_taking() {
        // Room for two keys.
        let config = LedgerConfig {
            capacity: 8,
            retention_secs: 1000,
        };
        let keys = ReversalKeys::default();
        let card = card();
        keys.claim(key(1), card, 1, |f| f == 1, 100, || 5);
        keys.remember(key(1), 100, 5, 100, &config);
        keys.release(&key(1), 5);
        keys.claim(key(1), card, 2, |f| f == 2, 100, || 6);
        keys.remember(key(1), 100, 6, 100, &config);
        // The first taking's item goes for room: the second taking stays.
        keys.claim(key(2), card, 1, |f| f == 1, 101, || 7);
        keys.remember(key(2), 101, 7, 101, &config);
        assert_eq!(keys.get(&key(1)).map(|s| s.lsn), Some(6));
    }

    #[test]
    fn a_load_keeps_the_later_taking_of_a_key() {
        let keys = ReversalKeys::default();
        let card = card();
        let seen = |lsn, fingerprint| SeenReversal {
            card,
            fingerprint,
            at: 100,
            lsn,
        };
        keys.load(key(1), seen(5, 1));
        keys.load(key(1), seen(3, 2));
        assert_eq!(keys.get(&key(1)), Some(seen(5, 1)));
        keys.load(key(1), seen(6, 3));
        assert_eq!(keys.get(&key(1)), Some(seen(6, 3)));
    }
}
