//! Completions (0220 and repeats whose DE 90 names an authorization): what was finally
//! spent stands in place of what the authorization took. A pre-authorization of 100.00
//! completed for 45.00 counts 45.00, not 145.00.

use super::Cards;
use crate::cards::card::{Card, CardKey, UnixSeconds};
use crate::cards::event::{self, Event};
use crate::cards::ledger::TxState;
use crate::cards::request::{AuthRequest, Kind, OriginalData};
use crate::store::journal::Durable;

/// What a completion does to the authorization it names.
#[derive(Clone, Copy, Debug)]
pub(super) enum Completed {
    /// Counted as approved, and nothing taken back since: `amount` and its use are given
    /// back.
    GiveBack { tx: OriginalData, amount: u64 },
    /// Released (vpan's 91, or the issuer's decline) and not taken back: approved after
    /// all (by a stand-in), and the completion tells what that moved. Voided, so that the
    /// stand-in's advice of it, coming later, counts nothing on top.
    Void {
        tx: OriginalData,
        mti: [u8; 4],
        at: UnixSeconds,
    },
}

impl Completed {
    /// What the card will count less once it is done: an advice of unknown size sized
    /// before it must not count this as spent.
    pub(super) fn returns(&self) -> u64 {
        match self {
            Completed::GiveBack { amount, .. } => *amount,
            Completed::Void { .. } => 0,
        }
    }
}

impl Cards {
    /// What the completion `req`, about to be recorded afresh, does to the authorization
    /// it names on this card; `None` when it is no completion, or the authorization is held
    /// or in doubt (the issuer's answer settles it), reversed in part or in full, a refund,
    /// another card's, or not known: the completion then counts on top, as any advice (the
    /// safe side for the cap). Nor is an advice under the key of a request vpan saw: that
    /// is a stand-in's advice of the request (an incremental authorization, say, which
    /// some dialects link to the first by DE 90), which takes the first back no more than
    /// the request would have; nor one under the key of a void its own reversal made
    /// before it came. (This holds while the ledger keeps that request: a decline or a
    /// release is forgotten first, and a flood of them may push it out before a stand-in's
    /// advice comes.)
    pub(super) fn completion_of(&self, card_key: CardKey, req: &AuthRequest) -> Option<Completed> {
        let own = req.key.original();
        let tx = req.completes.filter(|&tx| tx != own)?;
        // Recorded afresh over an entry of its own key: a request vpan saw (declined or
        // released), or a void its reversal made, which came first.
        let seen = self.ledger.get(&own).is_some();
        if req.kind == Kind::Refund || seen {
            return None;
        }
        let e = self
            .ledger
            .get(&tx)
            .filter(|e| e.card == card_key && !e.refund)?;
        match e.state {
            TxState::Approved if e.amount > 0 && e.amount == e.charged => {
                Some(Completed::GiveBack {
                    tx,
                    amount: e.amount,
                })
            }
            TxState::Released if !e.taken_back() => Some(Completed::Void {
                tx,
                mti: e.mti,
                at: e.at,
            }),
            _ => None,
        }
    }

    /// Does what `completed` says, under the card's lock, once the completion itself is
    /// recorded: written after it, a crash between the two leaves both counted (its resend
    /// is a repeat, which does nothing more: the safe side). `None` when the authorization
    /// changed since it was looked at. A void returns the time to file the voided entry under (see
    /// [`crate::cards::ledger::Ledger::remember`]).
    pub(super) fn complete_authorization(
        &self,
        card: &mut Card,
        card_key: CardKey,
        completed: Completed,
        req: &AuthRequest,
        now: UnixSeconds,
    ) -> Option<(Durable, Option<UnixSeconds>)> {
        match completed {
            Completed::GiveBack { tx, amount } => {
                let e = self.ledger.get(&tx).filter(|e| e.card == card_key)?;
                let use_returned = e.use_counted;
                let event = Event::Reversed {
                    lsn: self.lsn(),
                    key: card_key,
                    tx,
                    was_held: false,
                    returned: amount,
                    remaining: 0,
                    use_returned,
                    held_use_returned: false,
                    mti: req.mti,
                    at: now,
                };
                let durable = self.journal.append(event.clone());
                event::apply_card(card, &event);
                event::apply_ledger(&self.ledger, &event, false);
                Some((durable, None))
            }
            Completed::Void { tx, mti, at } => {
                let mut slot = self
                    .ledger
                    .entries
                    .get_mut(&tx)
                    .filter(|s| s.card == card_key && s.state == TxState::Released)?;
                let (durable, entry) = self.void_record(card_key, tx, mti, at);
                *slot = entry;
                Some((durable, Some(at)))
            }
        }
    }
}
