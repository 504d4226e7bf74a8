//! Reversals (0400/0420 and repeats): finding the original, by DE 90 or by the
//! reversal's own key, and giving back what it holds, or voiding one not seen yet.

use super::{Cards, ReversalOutcome};
use crate::cards::card::{CardKey, UnixSeconds};
use crate::cards::event::{self, Event};
use crate::cards::ledger::{Claim, TxEntry, TxState};
use crate::cards::request::{OriginalData, ReversalRequest};
use crate::store::StoreError;
use crate::store::journal::Durable;

impl Cards {
    /// The MTI of the original that `req`, a reversal without DE 90, names by its own key
    /// on this card (the one [`Cards::reverse`] takes back), for naming it toward the
    /// issuer.
    pub fn original_mti(&self, card_key: CardKey, req: &ReversalRequest) -> Option<[u8; 4]> {
        // Asked before `Cards::reverse` takes the key: taken now, by this reversal before.
        let again = self
            .ledger
            .reversal_keys
            .get(&req.own_key())
            .is_some_and(|seen| {
                seen.card == card_key && req.is_same(card_key.raw(), seen.fingerprint)
            });
        self.under_own_key(card_key, req, again)
            .into_iter()
            // Not a void made before the original came, which records the reversal that
            // made it; one that replaced a purchase vpan saw keeps the purchase's MTI.
            .find(|(_, e)| !e.is_void() || e.voided_a_purchase())
            .map(|(_, e)| e.booked_as())
    }

    /// The MTI under which the issuer booked the transaction that `req`'s DE 90 names on
    /// this card ([`TxEntry::booked_as`]): the request, or a stand-in's advice vpan
    /// recorded after its 91 or the issuer's decline of the request, or one the issuer
    /// acknowledged of a purchase in doubt. A reversal naming the other of the two would
    /// not find it there.
    pub fn booked_as(&self, card_key: CardKey, req: &ReversalRequest) -> Option<[u8; 4]> {
        let e = self.ledger.get(&req.original?)?;
        (e.card == card_key && !e.is_void()).then(|| e.booked_as())
    }

    /// Applies a reversal (0400/0420 and repeats): finds the original by DE 90, else by the
    /// reversal's own key with MTI class 1 then 2, and gives back what it holds beyond the
    /// remaining amount (DE 95; none: everything), once. A full reversal of an original
    /// this card has not seen (yet: held up on another connection, say) voids it, so that
    /// were it to come after all it is declined, not approved after the acquirer took it
    /// back. A partial one says the original happened, in part: it may yet come as an
    /// advice from a stand-in, which must then be counted, not refused.
    ///
    /// First, its own key is taken (see [`crate::cards::ledger::ReversalKeys`]): under a
    /// key another reversal took asking otherwise, nothing is given back
    /// ([`ReversalOutcome::KeyTaken`]); the same reversal again goes on as above, and finds
    /// what it gave back given.
    pub fn reverse(
        &self,
        card_key: CardKey,
        req: &ReversalRequest,
        now: UnixSeconds,
    ) -> ReversalOutcome {
        let (claim, lsn) = match self.take_reversal_key(card_key, req, now) {
            Ok(taken) => taken,
            Err(refused) => return refused,
        };
        // The same reversal again (its key taken by it before): by its own key, it acts on
        // what it took back, as a repeat does, not on another purchase under that key.
        let again = claim != Claim::New;
        // Again, now with a DE 90, where the first named its original by its own key (the
        // DE 90 matched what it asked only by leaving out the class): the first may have
        // taken back the other of an 0100 and an 0200 under that key, and the issuer gives
        // nothing more back for it, so it is done as the first was, by its own key.
        let first_had_no_de90 = claim == (Claim::Same { exactly: false }) && req.original.is_some();
        let outcome = if first_had_no_de90 {
            let by_own_key = ReversalRequest {
                original: None,
                ..req.clone()
            };
            self.reverse_under_its_key(card_key, &by_own_key, now, again)
        } else {
            self.reverse_under_its_key(card_key, req, now, again)
        };
        if let (ReversalOutcome::NotRecorded(_), Claim::New) = (&outcome, claim) {
            // Answered 96: the network sends it again, and the key is free for it.
            self.ledger.reversal_keys.release(&req.own_key(), lsn);
        }
        outcome
    }

    /// Takes `req`'s own key on this card, journaling it (before what the reversal does,
    /// so that a journal that keeps that keeps this), under the card's lock: `Ok` with
    /// [`Claim::New`] and the sequence number of its record, or [`Claim::Same`] when the
    /// same reversal took it before; else what to answer.
    fn take_reversal_key(
        &self,
        card_key: CardKey,
        req: &ReversalRequest,
        now: UnixSeconds,
    ) -> Result<(Claim, u64), ReversalOutcome> {
        let reversal = req.own_key();
        let fingerprint = req.fingerprint(card_key.raw());
        let taken = self.index.update(card_key, |_| {
            if self.journal.is_failed() {
                return Err(ReversalOutcome::NotRecorded(StoreError::Failed));
            }
            let (claim, lsn) = self.ledger.reversal_keys.claim(
                reversal,
                card_key,
                fingerprint,
                |f| req.is_same(card_key.raw(), f),
                now,
                || self.lsn(),
            );
            match claim {
                Claim::Same { .. } => Ok((claim, lsn)),
                Claim::Other => Err(ReversalOutcome::KeyTaken),
                Claim::New => {
                    // Its durability is the outcome's (a later record) or, for a reversal
                    // that finds nothing left, what the switch waits for before answering.
                    self.journal.append_detached(Event::ReversalSeen {
                        lsn,
                        key: card_key,
                        reversal,
                        fingerprint,
                        at: now,
                    });
                    Ok((claim, lsn))
                }
            }
        });
        let (claim, lsn) = taken.unwrap_or(Err(ReversalOutcome::NotFound))?;
        if claim == Claim::New {
            self.ledger.remember_reversal_key(reversal, now, lsn, now);
        }
        Ok((claim, lsn))
    }

    /// [`Cards::reverse`] once its key is taken; `again` when this reversal took it before.
    fn reverse_under_its_key(
        &self,
        card_key: CardKey,
        req: &ReversalRequest,
        now: UnixSeconds,
        again: bool,
    ) -> ReversalOutcome {
        let Some(original) = req.original else {
            return self.reverse_by_own_key(card_key, req, now, again);
        };
        if self
            .ledger
            .get(&original)
            .is_some_and(|e| e.card == card_key)
        {
            self.give_back(card_key, original, req, now)
        } else if req.remaining.unwrap_or(0) == 0 {
            self.void(card_key, original, req, now)
        } else {
            ReversalOutcome::NotFound
        }
    }

    /// A reversal without DE 90, which names its original by its own key (DE 11, 7, 32,
    /// 41): an 0100's or an 0200's alike; `again` when it took its key before.
    fn reverse_by_own_key(
        &self,
        card_key: CardKey,
        req: &ReversalRequest,
        now: UnixSeconds,
        again: bool,
    ) -> ReversalOutcome {
        let found = self.under_own_key(card_key, req, again);
        match found.first() {
            Some((tx, e)) if !e.is_void() => return self.give_back(card_key, *tx, req, now),
            // A purchase this reversal (or its first) voided: done already.
            Some((_, e)) if e.voided_a_purchase() => {
                return ReversalOutcome::NothingLeft {
                    original_stands: false,
                };
            }
            // Only voids made before their originals came (or nothing): voided below.
            _ => {}
        }
        if req.remaining.unwrap_or(0) != 0 {
            // Only voids under its key: nothing of them stands.
            return if found.is_empty() {
                ReversalOutcome::NotFound
            } else {
                ReversalOutcome::NothingLeft {
                    original_stands: false,
                }
            };
        }
        // Both voided, each in a record of its own: a repeat after a crash that kept only
        // the first voids the second then.
        let [auth, financial] =
            [1, 2].map(|class| self.void(card_key, req.key.with_class(class).original(), req, now));
        both(auth, financial)
    }

    /// This card's entries under a reversal's own key, as an 0100's and as an 0200's, the
    /// one it acts on first. Two transactions under one key are told apart only by DE 90,
    /// so the order guesses as an acquirer means it: a reversal takes back a purchase that
    /// stands (holds or spends something, or counts a use), before one a reversal took
    /// back already, the latest first (one another reversal took back, by DE 90); a repeat
    /// (0401, 0421), or the same reversal again (`again`: its key taken by it before,
    /// whatever its MTI), acts on what a reversal took back, the latest first, before one
    /// that stands, so that it never takes back a second purchase. Then, for
    /// both, one that never stood (declined or released), then a void made before its
    /// original came; an 0100 before an 0200 among equals. The same order for what is
    /// given back and for what is named to the issuer.
    fn under_own_key(
        &self,
        card_key: CardKey,
        req: &ReversalRequest,
        again: bool,
    ) -> Vec<(OriginalData, TxEntry)> {
        let repeat = again || crate::iso8583::message::is_repeat_mti(&req.mti);
        let order = |e: &TxEntry| {
            let rank = if e.taken_back() {
                u8::from(!repeat)
            } else if e.stands() {
                u8::from(repeat)
            } else if !e.is_void() {
                2
            } else {
                3
            };
            // The latest taken back first: what the reversal now repeated acted on.
            let latest = if e.taken_back() { e.lsn } else { 0 };
            (rank, std::cmp::Reverse(latest))
        };
        let mut found: Vec<_> = [1, 2]
            .into_iter()
            .map(|class| req.key.with_class(class).original())
            .filter_map(|k| {
                self.ledger
                    .get(&k)
                    .filter(|e| e.card == card_key)
                    .map(|e| (k, e))
            })
            .collect();
        // Stable: the 0100 stays first among equals.
        found.sort_by_key(|(_, e)| order(e));
        found
    }

    /// Gives back what `tx`, this card's, holds beyond the reversal's remaining amount.
    fn give_back(
        &self,
        card_key: CardKey,
        tx: OriginalData,
        req: &ReversalRequest,
        now: UnixSeconds,
    ) -> ReversalOutcome {
        let mut voided_at = None;
        let outcome = self
            .index
            .update(card_key, |card| {
                if self.journal.is_failed() {
                    // Given back in memory only, a repeat would find nothing left and be
                    // acknowledged, and a restart would count the amount spent for good.
                    return ReversalOutcome::NotRecorded(StoreError::Failed);
                }
                // Found on this card before its lock was taken; forgotten since, its key
                // may be another card's now.
                let Some(e) = self.ledger.get(&tx).filter(|e| e.card == card_key) else {
                    return ReversalOutcome::NotFound;
                };
                if e.state == TxState::Released && req.remaining.unwrap_or(0) == 0 {
                    // Declined by the issuer, or released on its 91, and now taken back by
                    // the acquirer: a stand-in that approved it meanwhile may yet advise it.
                    // Voided, that advice counts nothing, as it would had this reversal
                    // come before the purchase. The void keeps the purchase's MTI, which
                    // the issuer knows it by, for a repeat of this reversal to name it.
                    let Some(durable) = self.void_released(card_key, tx, e.mti, e.at) else {
                        return ReversalOutcome::NotFound;
                    };
                    voided_at = Some(e.at);
                    return ReversalOutcome::Voided { durable };
                }
                if !matches!(
                    e.state,
                    TxState::Held | TxState::Approved | TxState::InDoubt
                ) {
                    return ReversalOutcome::NothingLeft {
                        original_stands: false,
                    };
                }
                let remaining = match req.remaining {
                    None => 0,
                    // No proportion to take of an original of DE 4 0 (counted on its DE 6):
                    // a DE 95 that leaves 0 is a full reversal, any other gives nothing
                    // back rather than everything.
                    Some(0) if e.original_amount == 0 => 0,
                    Some(_) if e.original_amount == 0 => e.amount,
                    // Rounded up: never gives back more than the reversal says.
                    Some(r) => e.share_of(r).min(e.amount),
                };
                // Nothing of it stands after this reversal. An advice counted as what was
                // left of the cap when nothing was holds 0 and a use: only a full reversal
                // leaves nothing of that, and gives the use back.
                let leaves_nothing =
                    remaining == 0 && (e.charged > 0 || req.remaining.unwrap_or(0) == 0);
                if remaining >= e.amount && !(leaves_nothing && e.use_counted) {
                    return ReversalOutcome::NothingLeft {
                        original_stands: true,
                    };
                }
                let returned = e.amount - remaining;
                let event = Event::Reversed {
                    lsn: self.lsn(),
                    key: card_key,
                    tx,
                    was_held: e.state == TxState::Held,
                    returned,
                    remaining,
                    use_returned: leaves_nothing && e.use_counted,
                    held_use_returned: leaves_nothing && e.state == TxState::Held && e.counts_use,
                    mti: req.mti,
                    at: now,
                };
                let durable = self.journal.append(event.clone());
                event::apply_card(card, &event);
                event::apply_ledger(&self.ledger, &event, false);
                ReversalOutcome::Reversed { returned, durable }
            })
            .unwrap_or(ReversalOutcome::NotFound);
        if let Some(at) = voided_at {
            // See `void_released`.
            self.ledger.remember(tx, at, now);
        }
        outcome
    }

    /// Replaces `tx`, this card's purchase released and not taken back, with its void
    /// (keeping the purchase's `mti`, and its time `at`, so that it is forgotten when the
    /// purchase would have been), under the entry's own lock and only while it is still
    /// this card's release: retention does not take the card's lock. `None` when it is no
    /// longer. A void guards money (a late advice of the purchase counts nothing), and the
    /// releases' queue never forgets one: file it again afterwards, after the card's lock,
    /// with what moves money (`Ledger::remember`), from the purchase's time.
    pub(super) fn void_released(
        &self,
        card_key: CardKey,
        tx: OriginalData,
        mti: [u8; 4],
        at: UnixSeconds,
    ) -> Option<Durable> {
        let mut slot = self
            .ledger
            .entries
            .get_mut(&tx)
            .filter(|s| s.card == card_key && s.state == TxState::Released)?;
        let (durable, entry) = self.void_record(card_key, tx, mti, at);
        *slot = entry;
        Some(durable)
    }

    /// Voids `original`, which a reversal named before this card saw it (see
    /// [`Event::Voided`]).
    fn void(
        &self,
        card_key: CardKey,
        original: OriginalData,
        req: &ReversalRequest,
        now: UnixSeconds,
    ) -> ReversalOutcome {
        let mut inserted = false;
        let voided = self.index.update(card_key, |_| {
            if self.journal.is_failed() {
                return Some(Err(StoreError::Failed));
            }
            let dashmap::Entry::Vacant(slot) = self.ledger.entries.entry(original) else {
                // The original arrived meanwhile: reversed as usual, below.
                return None;
            };
            let (durable, entry) = self.void_record(card_key, original, req.mti, now);
            slot.insert(entry);
            inserted = true;
            Some(Ok(durable))
        });
        if inserted {
            self.ledger.remember_unseen_void(original, now, now);
        }
        match voided {
            None => ReversalOutcome::NotFound,
            Some(Some(Ok(durable))) => ReversalOutcome::Voided { durable },
            Some(Some(Err(e))) => ReversalOutcome::NotRecorded(e),
            Some(None) => match self.ledger.get(&original) {
                // Voided already: a repeat of the reversal.
                Some(e) if e.card == card_key && e.is_void() => ReversalOutcome::NothingLeft {
                    original_stands: false,
                },
                // The original arrived meanwhile: given back as usual.
                Some(e) if e.card == card_key => self.give_back(card_key, original, req, now),
                _ => ReversalOutcome::NotFound,
            },
        }
    }

    /// Journals the void of `tx` on this card (`mti` and `at`: see [`Event::Voided`]), under
    /// the card's lock; the entry to put in the ledger for it.
    fn void_record(
        &self,
        card_key: CardKey,
        tx: OriginalData,
        mti: [u8; 4],
        at: UnixSeconds,
    ) -> (Durable, TxEntry) {
        let lsn = self.lsn();
        let durable = self.journal.append(Event::Voided {
            lsn,
            key: card_key,
            tx,
            mti,
            at,
        });
        (durable, event::voided_entry(card_key, tx, mti, at, lsn))
    }
}

/// What voiding both keys of a reversal by its own key did, as one outcome: a purchase
/// given back (one that arrived meanwhile) before a void, a void before nothing. Durable
/// once the later record is: the journal makes records durable in the order they came.
fn both(first: ReversalOutcome, second: ReversalOutcome) -> ReversalOutcome {
    use ReversalOutcome as R;
    match (first, second) {
        (R::NotRecorded(e), _) | (_, R::NotRecorded(e)) => R::NotRecorded(e),
        // Voids take no key (`Cards::reverse` took it before): never here.
        (R::KeyTaken, _) | (_, R::KeyTaken) => R::KeyTaken,
        (
            R::Reversed { returned: a, .. },
            R::Reversed {
                returned: b,
                durable,
            },
        ) => R::Reversed {
            returned: a + b,
            durable,
        },
        (R::Reversed { returned, .. }, R::Voided { durable }) => R::Reversed { returned, durable },
        (
            R::Voided { .. } | R::NothingLeft { .. } | R::NotFound,
            later @ (R::Reversed { .. } | R::Voided { .. }),
        ) => later,
        (
            earlier @ (R::Reversed { .. } | R::Voided { .. }),
            R::NothingLeft { .. } | R::NotFound,
        ) => earlier,
        (R::NothingLeft { original_stands: a }, R::NothingLeft { original_stands: b }) => {
            R::NothingLeft {
                original_stands: a || b,
            }
        }
        (left @ R::NothingLeft { .. }, R::NotFound)
        | (R::NotFound, left @ R::NothingLeft { .. }) => left,
        (R::NotFound, R::NotFound) => R::NotFound,
    }
}
