//! Advices (0120/0220 and repeats): the money a stand-in approved, counted even over the
//! cap; an advice that restates a transaction vpan counted in another amount, which counts
//! what moved beyond it; the issuer's acknowledgement of an advice, after which its repeats
//! are answered here; and the advices of declines, which count nothing.

use super::completions::Completion;
use super::{AdviceOutcome, Cards, Hold, IssuerOutcome, tx_event};
use crate::cards::card::{Card, CardKey, LockKind, UnixSeconds};
use crate::cards::event::{self, Event};
use crate::cards::history::DecidedBy;
use crate::cards::ledger::{TxEntry, TxState};
use crate::cards::request::{AuthRequest, Kind, OriginalData, ResponseCode};
use crate::store::StoreError;
use crate::store::journal::Durable;

impl Cards {
    /// Records an advice (0120/0220 and repeats): the approval it reports is spent, even
    /// over the cap. An advice for a transaction whose request is with the issuer is
    /// [`AdviceOutcome::Pending`]; one of a transaction held in doubt is
    /// [`AdviceOutcome::AskIssuer`] (the issuer is asked whether it approved the request
    /// first), but one in another amount completes that hold and restates it; one for a
    /// transaction vpan counted, in another amount, restates it
    /// ([`Cards::restate`]). An amount the card's currency cannot size counts as what the
    /// cap had left, and a use (with a warning). A completion stands in place of the
    /// authorization it names ([`Cards::completion_of`]).
    pub fn advice(&self, card_key: CardKey, req: &AuthRequest, now: UnixSeconds) -> AdviceOutcome {
        let tx = req.key.original();
        // Its entry (new, or moved to another retention queue) is to be filed again.
        let mut file_again = false;
        // An authorization a completion voided, and its time: filed again below.
        let mut voided = None;
        let outcome = self.index.update(card_key, |card| {
            if self.journal.is_failed() {
                // Nothing can be recorded: fail closed (96) before changing anything.
                return AdviceOutcome::Recorded(Durable::ready(Err(StoreError::Failed)));
            }
            if let Some(e) = self.ledger.get(&tx)
                && let Some(outcome) =
                    self.advice_of_known(card, card_key, e, req, now, &mut file_again)
            {
                return outcome;
            }
            // Recorded afresh: a completion, only now (its resends are repeats, whatever
            // their DE 90 says).
            let completion = self.completion_of(card_key, req);
            let given_back = completion.map_or(0, |c| c.gives_back());
            let (durable, fresh) = self.record_advice(card, card_key, req, given_back, now);
            file_again = fresh;
            let Some(c) = completion else {
                return AdviceOutcome::Recorded(durable);
            };
            match self.complete_authorization(card, card_key, c, req, now) {
                // Durable once the later record is: the journal writes records in order.
                Some(later) => {
                    if let Completion::Void { tx, at, .. } = c {
                        voided = Some((tx, at));
                    }
                    AdviceOutcome::Recorded(later)
                }
                None => AdviceOutcome::Recorded(durable),
            }
        });
        if file_again {
            self.ledger.remember_answered(tx, now, now);
        }
        if let Some((authorization, at)) = voided {
            // See `void_released`.
            self.ledger.remember(authorization, at, now);
        }
        outcome.unwrap_or(AdviceOutcome::Unknown)
    }

    /// An advice under the key of a transaction `e` this card's ledger holds, under the
    /// card's lock: a repeat, a completion of its hold, a restatement, or a conflict;
    /// `None` when it is to be recorded afresh (over a decline or a release of vpan's).
    fn advice_of_known(
        &self,
        card: &mut Card,
        card_key: CardKey,
        e: TxEntry,
        req: &AuthRequest,
        now: UnixSeconds,
        file_again: &mut bool,
    ) -> Option<AdviceOutcome> {
        let tx = req.key.original();
        // Taken back in full by the acquirer while it was held, then released, or while in
        // doubt: a stand-in's advice of it counts nothing, as after a void, and is not sent
        // (the issuer heard the reversal, and has nothing of it to keep).
        if e.card == card_key
            && matches!(e.state, TxState::Released | TxState::InDoubt)
            && e.taken_back()
        {
            return Some(AdviceOutcome::Conflict);
        }
        // An advice tells of money that moved: the request vpan saw under its key may have
        // carried what the advice leaves out or restates (DE 14, DE 18, DE 42, DE 6 at
        // another rate), and a 94 would leave it uncounted. Another card makes it another
        // transaction; so does another amount, unless it restates one vpan counted (below).
        // A refund and a purchase of one amount under one key are still two. vpan declines
        // no refund: what it declined was not one (a decline recorded before the flag was
        // kept may read as one).
        let was_refund = e.refund && e.state != TxState::Declined;
        let same_money = e.card == card_key
            && e.original_amount == req.amounts.transaction
            && was_refund == (req.kind == Kind::Refund);
        // Counted here (held, in doubt or approved) and not reversed since, in part or in
        // full: an advice of it in another amount restates how much moved, which may be more
        // than was counted; a 94 would leave that uncounted, and the cap open to it. After a
        // reversal, what the advice restates cannot be told from what was taken back.
        let restatable = e.card == card_key
            && matches!(
                e.state,
                TxState::Approved | TxState::Held | TxState::InDoubt
            )
            && e.amount == e.charged
            && was_refund == (req.kind == Kind::Refund);
        // A request the issuer approved in part stands for the approved DE 4: an advice with
        // its very content (the whole amount asked, from a stand-in that approved it all)
        // says more moved than was counted.
        let other_content = e.fingerprint != req.fingerprint(card_key.raw())
            || (e.partly_approved && e.original_amount != req.amounts.transaction);
        // Released on the issuer's decline or vpan's 91 (and not taken back, above): nothing
        // counted, and a stand-in's advice of it, in any amount, is the money that moved:
        // recorded afresh, as one of the request's very content is.
        let released = e.card == card_key
            && e.state == TxState::Released
            && was_refund == (req.kind == Kind::Refund);
        if other_content && !same_money && !restatable && !released {
            return Some(AdviceOutcome::Conflict);
        }
        if e.card == card_key && e.awaits_issuer() {
            // Its request is with the issuer. Should the issuer approve it, the advice is no
            // news there, and told of it, an issuer that books advices would charge the
            // account twice; should the issuer decline it, or its timeout release the hold,
            // the advice is news. Decided once it has answered.
            return Some(AdviceOutcome::Pending);
        }
        // (One in doubt reversed in full is a conflict, above.)
        if e.state == TxState::InDoubt
            && e.card == card_key
            && same_money
            && let Some(hold) = self.ask_issuer(tx, card_key)
        {
            // The advice reports the request itself (its money: it may leave out or restate
            // DE 14, DE 18, DE 42 or DE 6's rate). The issuer may have approved it before
            // vpan stopped (the advice then is no news to it, and told of it, an issuer that
            // books advices would charge the account twice), or never had it: asked with
            // the request's repeat, it answers which, or decides it now.
            return Some(AdviceOutcome::AskIssuer(hold));
        }
        let mut completed = None;
        if e.state == TxState::InDoubt && e.card == card_key {
            // The advice restates the approval vpan holds in doubt (its issuer answer lost
            // in a stop), in another amount, which a repeat of the request cannot ask about:
            // it completes the hold, here under the card's lock, as the switch's (the issuer
            // has not approved it that vpan knows), and restates it below. The hold is in its
            // retention queue already.
            let hold = Hold { card: card_key, tx };
            completed = self
                .complete_locked(card, &hold, e.state, IssuerOutcome::Advised, now)
                .map(|(durable, _)| durable);
        }
        if other_content && restatable {
            let queue_before = e.retention_queue();
            let in_place_of_part = e.issuers_part();
            let more = self.restate(card, card_key, tx, req, now);
            // A verification that moved money after all is the money queue's now.
            *file_again |= more.is_some()
                && self
                    .ledger
                    .get(&tx)
                    .is_some_and(|now| now.retention_queue() != queue_before);
            match (more, completed) {
                (Some(durable), _) if in_place_of_part => {
                    return Some(AdviceOutcome::InPlaceOfPart(durable));
                }
                // The later record is durable only after the earlier one.
                (Some(durable), _) | (None, Some(durable)) => {
                    return Some(AdviceOutcome::Recorded(durable));
                }
                // Nothing more to count: what it says moved counts already (it restates
                // less, or it is a resend of one that restated more). A repeat, as far as
                // the card goes: acknowledged here once the issuer has answered an advice
                // of it since its last restatement, or when the issuer approved the request
                // itself (it holds more than an advice of less says: told it, it would book
                // the advice beside its approval), else told again marked as one.
                (None, None) if !same_money => {
                    return Some(AdviceOutcome::Repeat {
                        issuer_has_it: e.acknowledged || e.issuer_approved_it(),
                    });
                }
                (None, None) => {}
            }
        } else if let Some(durable) = completed {
            return Some(AdviceOutcome::Recorded(durable));
        }
        matches!(
            e.state,
            TxState::Approved | TxState::Held | TxState::InDoubt
        )
        .then_some(AdviceOutcome::Repeat {
            // The issuer approved this very request itself, or answered an advice of it.
            // Taken back in full since, it is no news either: the issuer has nothing of it
            // to keep, whether or not it heard an advice of it.
            issuer_has_it: e.acknowledged || e.taken_back() || e.issuer_approved_it(),
        })
    }

    /// Marks `tx`, held in doubt on this card, as being asked of the issuer (its repeats and
    /// advices wait for the answer): its hold, unless it is not so or asked already.
    fn ask_issuer(&self, tx: OriginalData, card_key: CardKey) -> Option<Hold> {
        let mut e = self.ledger.entries.get_mut(&tx)?;
        (e.card == card_key && e.state == TxState::InDoubt && !e.asking).then(|| {
            e.asking = true;
            Hold { card: card_key, tx }
        })
    }

    /// Records the advice `req` afresh, spent at once, under the card's lock; and whether
    /// its ledger entry is new (to be filed for retention). `given_back` is what the card
    /// counts less once the authorization it completes is given back, which an amount of
    /// unknown size is not to leave out of what the cap had left.
    fn record_advice(
        &self,
        card: &mut Card,
        card_key: CardKey,
        req: &AuthRequest,
        given_back: u64,
        now: UnixSeconds,
    ) -> (Durable, bool) {
        let (amount, counts_use) = match (req.kind, req.amounts.counted_in(card.currency)) {
            (Kind::Refund, _) => (0, false),
            // DE 4 of 0: nothing moved, whatever the currency.
            (Kind::Verification, counted) => {
                let amount = counted.unwrap_or(0);
                (amount, amount > 0)
            }
            (Kind::Purchase, Some(amount)) if amount > 0 => (amount, true),
            (Kind::Purchase, _) => (unsized_advice(card, card_key, given_back), true),
        };
        // As a request: a refund binds no first-use merchant. Money that moved binds it
        // where it moved, also over holds elsewhere that the issuer has yet to approve.
        let binds = req.kind != Kind::Refund
            && matches!(
                card.lock,
                LockKind::FirstUseUnbound | LockKind::FirstUseHeld
            )
            && req.acceptor.is_some();
        let event = Event::Advised(tx_event(
            self.lsn(),
            card_key,
            req.key.original(),
            req.fingerprint(card_key.raw()),
            amount,
            counts_use,
            binds,
            req,
            now,
        ));
        let durable = self.journal.append(event.clone());
        event::apply_card(card, &event);
        let fresh = event::apply_ledger(&self.ledger, &event, false).is_some();
        (durable, fresh)
    }

    /// Spends what the advice `req` says moved beyond what its transaction `tx` was counted
    /// at (and a use, when none is counted for it and money moved, or it is a purchase of a
    /// size the card's currency cannot tell), under the card's lock; `None` when there is
    /// nothing more to count. An amount the card's currency cannot tell is counted as a
    /// fresh advice's is: all the cap had left ([`unsized_advice`]).
    fn restate(
        &self,
        card: &mut Card,
        card_key: CardKey,
        tx: OriginalData,
        req: &AuthRequest,
        now: UnixSeconds,
    ) -> Option<Durable> {
        let e = self.ledger.get(&tx)?;
        let more = match (req.kind, req.amounts.counted_in(card.currency)) {
            (Kind::Refund, _) => return None,
            (Kind::Verification, counted) => counted.unwrap_or(0).saturating_sub(e.charged),
            (Kind::Purchase, Some(moved)) if moved > 0 => moved.saturating_sub(e.charged),
            // Restated so once already (what the cap had left then): not again.
            (Kind::Purchase, _) if e.restated => return None,
            // Never a completion: nothing about to be given back.
            (Kind::Purchase, _) => unsized_advice(card, card_key, 0),
        };
        // A use, as for a fresh advice: when money moved, or a purchase of a size unknown.
        let use_due = !e.use_counted && !e.counts_use && (more > 0 || req.kind == Kind::Purchase);
        if more == 0 && !use_due {
            return None;
        }
        let t = tx_event(
            self.lsn(),
            card_key,
            tx,
            e.fingerprint,
            more,
            use_due,
            false,
            req,
            now,
        );
        let event = Event::Restated(t);
        let durable = self.journal.append(event.clone());
        event::apply_card(card, &event);
        event::apply_ledger(&self.ledger, &event, false);
        Some(durable)
    }

    /// What stands of the transaction the advice `req` reports, when the acquirer has
    /// reversed part of it and the issuer has not answered an advice of it 00: its DE 4 and,
    /// when the advice's DE 51 is the card's currency, its DE 6, each the advice's own in
    /// the proportion the card still counts (never what the card counts itself, which for
    /// an advice it could not size is all its cap had left); what the issuer is to be told
    /// (or asked about) in its place. An issuer that booked the whole heard the partial
    /// reversal, and drops the resend by its key (or answers the ask as it did the first
    /// time); one that never had it, which could not apply the reversal, books what stands
    /// rather than the whole.
    pub fn standing(&self, card_key: CardKey, req: &AuthRequest) -> Option<(u64, Option<u64>)> {
        let e = self.ledger.get(&req.key.original())?;
        if e.card != card_key || !e.reversed_in_part() || e.acknowledged {
            return None;
        }
        let currency = self.index.read(card_key, |card| card.currency)?;
        let standing = |told: u64| {
            let part = u128::from(told) * u128::from(e.amount) / u128::from(e.charged);
            u64::try_from(part).unwrap_or(u64::MAX)
        };
        let de6 = req
            .amounts
            .billing
            .filter(|&(_, billed_in)| billed_in == currency)
            .map(|(billed, _)| standing(billed));
        Some((standing(e.original_amount), de6))
    }

    /// Whether the advice `req` reports a transaction on this card whose issuer's partial
    /// approval an advice replaces ([`TxEntry::replaces_part`]): its part is to be
    /// reversed at the issuer before it is told.
    pub fn replaces_part(&self, card_key: CardKey, req: &AuthRequest) -> bool {
        self.ledger
            .get(&req.key.original())
            .is_some_and(|e| e.card == card_key && e.replaces_part())
    }

    /// The issuer answered the advice `req` 00: its repeats are acknowledged here from now
    /// on (in memory: after a restart one goes to the issuer again, marked as a repeat).
    pub fn advice_acknowledged(&self, card_key: CardKey, req: &AuthRequest) {
        // Under the card's lock, as a restatement is made: the issuer's answer to an
        // earlier advice of less must not acknowledge one that restated it since.
        self.index.update(card_key, |card| {
            // What stands under its key on this card is what the advice was recorded as,
            // completed, or restated (one of another card is refused before it is sent).
            if let Some(mut e) = self.ledger.entries.get_mut(&req.key.original())
                && e.card == card_key
                && (!e.restated
                    || req
                        .amounts
                        .counted_in(card.currency)
                        .is_some_and(|told| told >= e.charged))
            {
                e.acknowledged = true;
            }
        });
    }

    /// An advice that reports a decline (a stand-in's DE 39 that is no approval): it moved
    /// no money, so nothing is counted, and it is kept among the card's recent decisions
    /// (journaled, not waited for, as vpan's own declines). False when no card has this
    /// vPAN.
    pub fn advice_of_decline(
        &self,
        card_key: CardKey,
        req: &AuthRequest,
        code: ResponseCode,
        now: UnixSeconds,
    ) -> bool {
        self.index
            .update(card_key, |card| {
                self.record_decline(card, card_key, req, code, DecidedBy::Issuer, now);
            })
            .is_some()
    }
}

/// What an advice of money moved counts when the card's currency cannot tell its size (no
/// amount in it, or one of 0 beside a DE 4 that is not, which as a request would be
/// declined 30): it may have passed the cap, so all the card had left (the safe side),
/// with a warning. `given_back`: spent now, but about to be given back.
fn unsized_advice(card: &Card, card_key: CardKey, given_back: u64) -> u64 {
    crate::logging::throttled!(warn, card = ?card_key, "advice of an amount the card's currency cannot tell; recorded as what was left of its cap");
    // Not `available()`: holds released later must not make room again.
    card.amount_limit
        .saturating_sub(card.spent.saturating_sub(given_back))
}
