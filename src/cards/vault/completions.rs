//! Completions (0220 and its repeat 0221, whose DE 90 names an authorization): what was
//! finally spent stands in place of what the authorization took. A pre-authorization of
//! 100.00 completed for 45.00 counts 45.00, not 145.00.

use super::Cards;
use crate::cards::card::{Card, CardKey, UnixSeconds};
use crate::cards::event::{self, Event};
use crate::cards::ledger::TxState;
use crate::cards::request::{AuthRequest, OriginalData};
use crate::store::journal::Durable;

/// What a completion does to the authorization it names.
#[derive(Clone, Copy, Debug)]
pub(super) enum Completion {
    /// Counted as approved, and nothing taken back since: given back, its use too.
    GiveBack {
        /// The authorization.
        tx: OriginalData,
        /// What it counts now, given back whole.
        amount: u64,
    },
    /// Released (vpan's 91, or the issuer's decline) and not taken back: approved after
    /// all (by a stand-in), and the completion tells what that moved. Voided, so that the
    /// stand-in's advice of it, coming later, counts nothing on top.
    Void {
        /// The authorization.
        tx: OriginalData,
        /// Its MTI and its time, kept in its void (see [`Event::Voided`]).
        mti: [u8; 4],
        at: UnixSeconds,
    },
}

impl Completion {
    /// What the card will count less once it is done: an advice of unknown size, sized
    /// before, must not count this as spent.
    pub(super) fn gives_back(&self) -> u64 {
        match self {
            Completion::GiveBack { amount, .. } => *amount,
            Completion::Void { .. } => 0,
        }
    }
}

impl Cards {
    /// What the completion `req`, about to be recorded afresh, does to the authorization
    /// it names on this card ([`AuthRequest::completes`]); `None` when it is no
    /// completion, or the authorization is held or in doubt (the issuer's answer settles
    /// it), reversed in part or in full, a refund, another card's, or not known: the
    /// completion then counts on top, as any advice (the safe side for the cap).
    ///
    /// Nor when an entry stands under the advice's own key: a request vpan saw (declined
    /// or released), of which the advice is a stand-in's (an incremental authorization,
    /// say, which some dialects link to the first by DE 90, and which no more replaces the
    /// first than the request itself would), or a void its own reversal made before it
    /// came. This holds while the ledger keeps that request: a decline or a release is
    /// forgotten first, and a flood of them may push it out before a stand-in's advice.
    pub(super) fn completion_of(&self, card_key: CardKey, req: &AuthRequest) -> Option<Completion> {
        let tx = req.completes?;
        if self.ledger.get(&req.key.original()).is_some() {
            return None;
        }
        let e = self
            .ledger
            .get(&tx)
            .filter(|e| e.card == card_key && !e.refund)?;
        match e.state {
            TxState::Approved if e.amount > 0 && e.amount == e.charged => {
                Some(Completion::GiveBack {
                    tx,
                    amount: e.amount,
                })
            }
            TxState::Released if !e.taken_back() => Some(Completion::Void {
                tx,
                mti: e.mti,
                at: e.at,
            }),
            _ => None,
        }
    }

    /// Does what `completion` says, under the card's lock, once the completion itself is
    /// recorded: written after it, a crash between the two leaves both counted (its resend
    /// is a repeat, which does nothing more: the safe side). `None` when the authorization
    /// changed since it was looked at. A void is to be filed again after the lock (see
    /// [`Cards::void_released`]).
    pub(super) fn complete_authorization(
        &self,
        card: &mut Card,
        card_key: CardKey,
        completion: Completion,
        req: &AuthRequest,
        now: UnixSeconds,
    ) -> Option<Durable> {
        match completion {
            Completion::GiveBack { tx, amount } => {
                let e = self.ledger.get(&tx).filter(|e| e.card == card_key)?;
                let event = Event::Reversed {
                    lsn: self.lsn(),
                    key: card_key,
                    tx,
                    was_held: false,
                    returned: amount,
                    remaining: 0,
                    use_returned: e.use_counted,
                    held_use_returned: false,
                    mti: req.mti,
                    at: now,
                };
                let durable = self.journal.append(event.clone());
                event::apply_card(card, &event);
                event::apply_ledger(&self.ledger, &event, false);
                Some(durable)
            }
            Completion::Void { tx, mti, at } => self.void_released(card_key, tx, mti, at),
        }
    }
}
