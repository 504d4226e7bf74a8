//! Issuance requests already served, by the client's `Idempotency-Key`: a front end whose
//! `POST /v1/cards` timed out, or was answered 503 while the disk stalled, cannot tell
//! whether the card was made. Sent again with the same key, the request gets that card,
//! not a second one on the same real account.
//!
//! A key is kept [`KEPT_FOR`] after its card was issued, and durably: the digest rides in
//! the card's issuance record and in every snapshot of the card, so a restart between
//! the two requests still finds the card.

use crate::ConcurrentMap;
use crate::cards::card::{CardKey, UnixSeconds};

/// How long a key names its card: a day, as payment APIs commonly keep theirs. After it,
/// the same key issues a new card.
pub const KEPT_FOR: UnixSeconds = 24 * 3_600;

/// The longest key taken, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// What a key may be, for the errors that refuse one.
pub fn key_shape() -> String {
    format!("1 to {MAX_KEY_BYTES} printable ASCII characters, not starting or ending with a space")
}

/// True when `key` is [`key_shape`]: a header value any client can send and log as is,
/// and that reaches the API as it was sent (HTTP drops the spaces around a header's
/// value, so ` k ` would arrive as `k` and name that key's card).
pub fn well_formed(key: &[u8]) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len())
        && key.iter().all(|b| (b' '..=b'~').contains(b))
        && key.first() != Some(&b' ')
        && key.last() != Some(&b' ')
}

/// The SHA-256 digest of a client's `Idempotency-Key`: fixed-size in records, and free of
/// whatever the client put in the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey(pub [u8; 32]);

impl RequestKey {
    /// The digest of `key` as the client sent it. The caller checks its shape.
    pub fn of(key: &[u8]) -> RequestKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        RequestKey(out)
    }
}

/// What a key stands for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Earlier {
    /// A request with this key is drawing its card at this moment.
    InFlight,
    /// The card a request with this key was issued, and when.
    Issued(CardKey, UnixSeconds),
}

/// The keys of recent issuances. Only claimed for the synchronous part of an issuance
/// (the draw and the queued record), so [`Earlier::InFlight`] is seen only by a request
/// racing its twin; from the draw on, the key names its card, durable or not yet.
#[derive(Debug, Default)]
pub struct IssuanceRequests {
    map: ConcurrentMap<RequestKey, Earlier>,
    /// Entries after the last sweep of expired ones: the next sweep runs when the map has
    /// grown past twice this, so sweeping costs O(1) per issuance, amortized.
    after_sweep: std::sync::atomic::AtomicUsize,
}

impl IssuanceRequests {
    /// What `key` stands for, unless its card was issued [`KEPT_FOR`] ago or more.
    pub fn earlier(&self, key: &RequestKey, now: UnixSeconds) -> Option<Earlier> {
        let earlier = *self.map.get(key)?;
        match earlier {
            Earlier::Issued(_, at) if expired(at, now) => None,
            _ => Some(earlier),
        }
    }

    /// Claims `key` for a request about to draw its card; `Err` with what it stands for
    /// when another request holds it (an expired entry is taken over).
    pub fn claim(&self, key: RequestKey, now: UnixSeconds) -> Result<(), Earlier> {
        match self.map.entry(key) {
            dashmap::Entry::Occupied(mut e) => match *e.get() {
                Earlier::Issued(_, at) if expired(at, now) => {
                    e.insert(Earlier::InFlight);
                    Ok(())
                }
                earlier => Err(earlier),
            },
            dashmap::Entry::Vacant(e) => {
                e.insert(Earlier::InFlight);
                Ok(())
            }
        }
    }

    /// The claimed `key` now names `card`, issued at `at`.
    pub fn settle(&self, key: RequestKey, card: CardKey, at: UnixSeconds) {
        self.map.insert(key, Earlier::Issued(card, at));
        self.sweep_when_grown(at);
    }

    /// The claimed `key` issued nothing: a request with it may try again.
    pub fn release(&self, key: &RequestKey) {
        self.map.remove_if(key, |_, e| *e == Earlier::InFlight);
    }

    /// A card issued under `key` earlier is gone (its issuance failed): the key with it.
    pub fn forget(&self, key: &RequestKey, card: CardKey) {
        self.map
            .remove_if(key, |_, e| matches!(e, Earlier::Issued(c, _) if *c == card));
    }

    /// Recovery: `key` names `card`, issued at `at`, unless that was too long ago. The
    /// first card a key named keeps it.
    pub fn recover(&self, key: RequestKey, card: CardKey, at: UnixSeconds, now: UnixSeconds) {
        if !expired(at, now) {
            self.map.entry(key).or_insert(Earlier::Issued(card, at));
        }
    }

    /// Keys held (for tests and the sweep).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn sweep_when_grown(&self, now: UnixSeconds) {
        use std::sync::atomic::Ordering::Relaxed;
        let len = self.map.len();
        if len <= 2 * self.after_sweep.load(Relaxed) + 1_024 {
            return;
        }
        self.map
            .retain(|_, e| !matches!(e, Earlier::Issued(_, at) if expired(*at, now)));
        self.after_sweep.store(self.map.len(), Relaxed);
    }
}

fn expired(at: UnixSeconds, now: UnixSeconds) -> bool {
    now.saturating_sub(at) >= KEPT_FOR
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `N` distinct cards, on generated numbers.
    fn cards<const N: usize>() -> [CardKey; N] {
        std::array::from_fn(|i| {
            let pan = crate::pan::test_pan(&format!("49701{i}"));
            CardKey::from_digits(pan.as_bytes()).unwrap()
        })
    }

    #[test]
    fn a_key_is_claimed_once_names_its_card_for_a_day_then_is_free_again() {
        let requests = IssuanceRequests::default();
        let [first] = cards();
        let key = RequestKey::of(b"order-17");
        assert_eq!(requests.claim(key, 1_000), Ok(()));
        assert_eq!(requests.claim(key, 1_000), Err(Earlier::InFlight));
        requests.settle(key, first, 1_000);
        let issued = Earlier::Issued(first, 1_000);
        assert_eq!(requests.claim(key, 1_001), Err(issued));
        assert_eq!(requests.earlier(&key, 1_000 + KEPT_FOR - 1), Some(issued));
        assert_eq!(requests.earlier(&key, 1_000 + KEPT_FOR), None);
        assert_eq!(requests.claim(key, 1_000 + KEPT_FOR), Ok(()));
    }

    #[test]
    fn a_released_or_forgotten_key_is_free_but_only_the_claim_it_names_goes() {
        let requests = IssuanceRequests::default();
        let [first, other] = cards();
        let key = RequestKey::of(b"a");
        requests.claim(key, 5).unwrap();
        requests.release(&key);
        assert_eq!(requests.earlier(&key, 5), None);
        requests.claim(key, 5).unwrap();
        requests.settle(key, first, 5);
        // A late release of an earlier claim, or the failure of another card, leaves it.
        requests.release(&key);
        requests.forget(&key, other);
        assert_eq!(requests.earlier(&key, 5), Some(Earlier::Issued(first, 5)));
        requests.forget(&key, first);
        assert!(requests.is_empty());
    }

    #[test]
    fn recovery_keeps_the_first_card_of_a_key_and_skips_expired_ones() {
        let requests = IssuanceRequests::default();
        let [old, first, second] = cards();
        let now = 10 * KEPT_FOR;
        requests.recover(RequestKey::of(b"old"), old, now - KEPT_FOR, now);
        requests.recover(RequestKey::of(b"k"), first, now - 1, now);
        requests.recover(RequestKey::of(b"k"), second, now, now);
        assert_eq!(requests.len(), 1);
        let k = RequestKey::of(b"k");
        assert_eq!(
            requests.earlier(&k, now),
            Some(Earlier::Issued(first, now - 1))
        );
    }

    #[test]
    fn expired_keys_are_swept_as_the_map_grows() {
        let requests = IssuanceRequests::default();
        let [early, late] = cards();
        for i in 0..1_024u32 {
            let key = RequestKey::of(&i.to_le_bytes());
            requests.claim(key, 0).unwrap();
            requests.settle(key, early, 0);
        }
        // The 1,025th entry sweeps: everything before it had expired.
        let key = RequestKey::of(b"late");
        requests.claim(key, KEPT_FOR).unwrap();
        requests.settle(key, late, KEPT_FOR);
        assert_eq!(requests.len(), 1);
    }

    /// Review of 522e2c5: a key with a space at either end passed `vpan card create`'s
    /// check, but HTTP drops those spaces, so ` order-17 ` reached the API as `order-17`
    /// and got that key's card, and a key of spaces only got a 400 saying it must be
    /// printable ASCII, which it was.
    #[test]
    fn a_key_is_printable_ascii_with_no_space_at_either_end() {
        for key in [&b"order-17"[..], b"a b", b"~", &[b'k'; MAX_KEY_BYTES]] {
            assert!(well_formed(key), "{key:?}");
        }
        let too_long = [b'k'; MAX_KEY_BYTES + 1];
        for key in [
            &b""[..],
            b" ",
            b"   ",
            b" order-17",
            b"order-17 ",
            b"a\tb",
            "caf\u{e9}".as_bytes(),
            &too_long,
        ] {
            assert!(!well_formed(key), "{key:?}");
        }
    }

    #[test]
    fn the_digest_is_sha_256_of_the_key_as_sent() {
        // FIPS 180-2's example: SHA-256("abc").
        let abc = RequestKey::of(b"abc");
        assert_eq!(abc.0[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(abc.0[28..], [0xf2, 0x00, 0x15, 0xad]);
    }
}
