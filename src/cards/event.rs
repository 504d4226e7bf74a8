//! Journal records: every change to a card, as data, applied the same way live and on replay.
//!
//! The live path decides, builds an [`Event`], applies it with [`apply_card`] and
//! [`apply_ledger`], and appends it to the journal, all under the card's lock. Recovery
//! reads the same events back and applies them with the same two functions, so the state
//! after a restart is the state before it by construction. Events carry their effects
//! explicitly (the amount to release, whether a use is returned): replay never re-decides.
//!
//! Every event has a log sequence number (LSN), and every card and ledger entry remembers
//! the LSN of the last event applied to it; replay skips events already contained in a
//! snapshot. The encoding (`encoding.rs`, and `snapshot.rs` for a snapshot's records) is a
//! hand-written little-endian layout with a tag byte: small, fast, and with no format crate
//! to track (records are CRC-framed by the journal).

use super::card::{AcceptorId, Card, CardKey, Controls, Expiry, LockKind, Status, UnixSeconds};
use super::history::{self, DecidedBy, RecentTx};
use super::ledger::{AuthCode, Ledger, PartialAnswer, TxEntry, TxState, advice_mti, ceil_ratio};
use super::request::{OriginalData, ResponseCode};
use super::requests::RequestKey;

mod encoding;
mod snapshot;

pub(crate) use encoding::{
    Get, TAG_REVERSAL_SEEN, TAG_SNAP_CARD, TAG_SNAP_END, TAG_SNAP_HEADER, TAG_SNAP_TX,
};
pub(crate) use snapshot::{
    SnapCard, SnapEnd, SnapHeader, SnapTx, decode_snap_card, decode_snap_end, decode_snap_tx,
};

/// A card was issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Sequence number.
    pub lsn: u64,
    /// The vPAN.
    pub key: CardKey,
    /// The real PAN, AES-256-GCM sealed with the vPAN as associated data.
    pub sealed_pan: Vec<u8>,
    /// The real expiry.
    pub real_expiry: Expiry,
    /// The controls.
    pub controls: Controls,
    /// When.
    pub created_at: UnixSeconds,
    /// The digest of the `Idempotency-Key` it was asked under, if any.
    pub request_key: Option<RequestKey>,
}

/// A transaction's effect on a card: a hold placed, answered, or an advice recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxEvent {
    /// Sequence number.
    pub lsn: u64,
    /// The card.
    pub key: CardKey,
    /// The transaction.
    pub tx: OriginalData,
    /// Its content fingerprint.
    pub fingerprint: u64,
    /// Amount held, answered or spent, card currency.
    pub amount: u64,
    /// DE 4 of the request.
    pub original_amount: u64,
    /// Whether it counts a use when approved.
    pub counts_use: bool,
    /// Whether it binds (or bound) a first-use merchant lock.
    pub binds_merchant: bool,
    /// A refund or another credit (DE 3 from 20): a purchase under its key is another
    /// transaction.
    pub refund: bool,
    /// DE 42.
    pub acceptor: Option<AcceptorId>,
    /// The request's MTI.
    pub mti: [u8; 4],
    /// When.
    pub at: UnixSeconds,
}

/// What a partial approval (DE 39 10, a smaller DE 4 in the answer) spent of its hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovedPart {
    /// Spent, card currency: the hold's proportion of the approved DE 4, rounded up, or
    /// the answer's DE 6 when in the card's currency and more; never more than the hold
    /// (the rest of it is given back).
    pub spent: u64,
    /// What the transaction counts from then on, card currency: what still stood of it
    /// (a reversal in part may have come first) at the answer's rate, never more than
    /// `spent` (see [`stands_after_part`]). `None` in records written before 2026-12-07,
    /// which counted the least of what stood, at the request's rate, and `spent`.
    pub stands: Option<u64>,
    /// The answer's amounts. The transaction stands for its DE 4 from then on (what a
    /// partial reversal takes its proportion of, and the card's history shows), and a
    /// repeat is told them again.
    pub answer: PartialAnswer,
}

/// Everything the journal records.
#[derive(Clone, Debug)]
pub enum Event {
    /// A card was issued.
    Issued(Box<Issued>),
    /// The holder paused, resumed or closed a card.
    Status {
        /// Sequence number.
        lsn: u64,
        /// The card.
        key: CardKey,
        /// The new status.
        status: Status,
    },
    /// vpan approved and holds the amount while the issuer is asked.
    Held(TxEvent),
    /// The issuer answered (or timed out, or the store failed): spent or released.
    Outcome {
        /// The hold being answered (`lsn` and `at` are the answer's).
        hold: TxEvent,
        /// Approved: the hold becomes spent; else it is released.
        approved: bool,
        /// The hold was in doubt (see `InDoubt`), so counted as spent already: the
        /// issuer's answer to its repeat keeps it spent, or gives back what is left of it
        /// (`hold.amount`, and the use when `hold.counts_use`).
        in_doubt: bool,
        /// DE 39 of the answer.
        code: ResponseCode,
        /// DE 38 of an approval, when it has one (for replays).
        auth: Option<AuthCode>,
        /// Who gave the answer: the switch for its own 91 and 96 (no answer in time, the
        /// store failing), else the issuer, whatever its code (an issuer's own 96 too).
        decided_by: DecidedBy,
        /// A partial approval (DE 39 10), `approved` then: of the hold (or of a hold in
        /// doubt, counted whole), only this part is spent, the rest given back.
        part: Option<ApprovedPart>,
    },
    /// A reversal gave (part of) a transaction back, or a completion gave back, whole, the
    /// authorization it completes.
    Reversed {
        /// Sequence number.
        lsn: u64,
        /// The card.
        key: CardKey,
        /// The original.
        tx: OriginalData,
        /// The original was still held (else it was spent).
        was_held: bool,
        /// Amount given back, card currency.
        returned: u64,
        /// What remains of the original.
        remaining: u64,
        /// A use is given back too (full reversal of a counted use).
        use_returned: bool,
        /// The use a held original took is given back (full reversal of a hold that
        /// counts a use). A flag of its own, in a bit an older vpan ignores: it keeps no
        /// held uses, and reads `use_returned` as a counted use given back.
        held_use_returned: bool,
        /// The reversal's MTI; or a completion's (0220 or 0221), when it gave back the
        /// authorization it completes, which adds no line to the card's history (the
        /// completion's own line tells what was spent).
        mti: [u8; 4],
        /// When.
        at: UnixSeconds,
    },
    /// An advice (0120/0220) reported an approval made elsewhere: spent at once.
    Advised(TxEvent),
    /// An advice restated a transaction this card counted (held, in doubt or approved
    /// under its key, not reversed) with more money, or a use, than was counted: `amount`
    /// more is spent and added to the transaction's entry, which is marked restated and
    /// stands for the advice's DE 4 (when not 0); and a use when `counts_use` (none was
    /// counted for it). Written as an `Advised` record with a flag bit an older vpan
    /// ignores: it counts the card the same, but replaces the transaction's entry with one
    /// of `amount` alone (a full reversal after a downgrade gives back only that part).
    Restated(TxEvent),
    /// A hold the issuer had when vpan stopped, found open at the next start: its answer
    /// is unknown, so it counts as spent (the safe side for the cap), and a repeat of it is
    /// asked of the issuer rather than answered here.
    InDoubt(TxEvent),
    /// A decline that moved no money: vpan's own (kept in the ledger too, so a repeat gets
    /// the same answer), or a stand-in's reported by an advice (the card's history only).
    /// Journaled so that the card's recent decisions, and the replay of its repeats, are
    /// the same after a restart; not waited for, since nothing was held.
    Declined {
        /// The request (`amount` 0: nothing held).
        tx: TxEvent,
        /// DE 39 of the answer.
        code: ResponseCode,
        /// The switch for its own declines, the issuer for a stand-in's.
        decided_by: DecidedBy,
    },
    /// A full reversal named an original this card has not seen (or only saw declined or
    /// released): the network has given up on it, so should it arrive late (from another
    /// connection, say) it is declined (94) rather than approved and charged after its own
    /// reversal, and a stand-in's advice of it counts nothing. A completion voids an
    /// authorization it finds released the same way: the completion counts what the
    /// stand-in's approval of it moved.
    Voided {
        /// Sequence number.
        lsn: u64,
        /// The card.
        key: CardKey,
        /// The original the reversal named.
        tx: OriginalData,
        /// The reversal's MTI; the purchase's when it voids one vpan saw and released (so
        /// that a repeat of the reversal still names it toward the issuer).
        mti: [u8; 4],
        /// When the reversal came; when the purchase was decided, for one vpan saw and
        /// released (the ledger forgets the void when it would have forgotten that).
        at: UnixSeconds,
    },
    /// A reversal took its own key (see [`super::ledger::ReversalKeys`]): the same
    /// reversal again is replayed, another under that key answered 94. Written before
    /// what the reversal did, so that a journal that keeps that keeps this too.
    ReversalSeen {
        /// Sequence number.
        lsn: u64,
        /// The card it reversed on.
        key: CardKey,
        /// The reversal's own key (class 4).
        reversal: OriginalData,
        /// What it asked (`ReversalRequest::fingerprint`).
        fingerprint: u64,
        /// When it came.
        at: UnixSeconds,
    },
}

impl Event {
    /// The event's sequence number.
    pub fn lsn(&self) -> u64 {
        match self {
            Event::Issued(i) => i.lsn,
            Event::Status { lsn, .. }
            | Event::Reversed { lsn, .. }
            | Event::Voided { lsn, .. }
            | Event::ReversalSeen { lsn, .. } => *lsn,
            Event::Held(t) | Event::Advised(t) | Event::Restated(t) | Event::InDoubt(t) => t.lsn,
            Event::Outcome { hold, .. } | Event::Declined { tx: hold, .. } => hold.lsn,
        }
    }

    /// The card it changes.
    pub fn key(&self) -> CardKey {
        match self {
            Event::Issued(i) => i.key,
            Event::Status { key, .. }
            | Event::Reversed { key, .. }
            | Event::Voided { key, .. }
            | Event::ReversalSeen { key, .. } => *key,
            Event::Held(t) | Event::Advised(t) | Event::Restated(t) | Event::InDoubt(t) => t.key,
            Event::Outcome { hold, .. } | Event::Declined { tx: hold, .. } => hold.key,
        }
    }
}

/// Applies an event's effect on its card (not `Issued`, which makes the card).
pub fn apply_card(card: &mut Card, event: &Event) {
    match event {
        // A voided original, a reversal's key, change only the ledger.
        Event::Issued(_) | Event::Voided { .. } | Event::ReversalSeen { .. } => {}
        Event::Status { status, .. } => card.set_status = *status,
        Event::Held(t) => {
            card.held = card.held.saturating_add(t.amount);
            if t.counts_use {
                card.held_uses = card.held_uses.saturating_add(1);
            }
            bind_merchant(card, t, LockKind::FirstUseHeld);
        }
        // Counted as spent, but the issuer's answer is still to come: a first-use lock
        // that holds alone bound stays so (see `confirm_binding`).
        Event::InDoubt(hold) => spend_hold(card, hold),
        Event::Outcome {
            hold,
            approved,
            in_doubt,
            code,
            decided_by,
            part,
            ..
        } => {
            match (*in_doubt, *approved) {
                (false, true) => {
                    spend_hold(card, hold);
                    confirm_binding(card, hold);
                }
                (false, false) => release_hold(card, hold),
                (true, true) => confirm_binding(card, hold),
                (true, false) => unspend(card, hold),
            }
            if let Some(part) = part {
                // Spent whole above (or counted whole while in doubt): it counts what
                // stands of it now. Mostly less (what the issuer did not approve goes
                // back); more when a reversal in part came first and the issuer's DE 6
                // bills above the request's rate: what the issuer keeps, cap or not.
                let stands = part.stands_after(hold.amount);
                card.spent = if stands <= hold.amount {
                    card.spent.saturating_sub(hold.amount - stands)
                } else {
                    card.spent.saturating_add(stands - hold.amount)
                };
            }
            // Nothing was approved at the merchant the holds bound the card to: freed once
            // no hold there is open or in doubt any more (another may have been answered
            // first, or be waiting still: then the last answer frees it). In the held state
            // nothing else counts as spent or as a use: money that moved binds for good. A
            // lock bound for good stays so, even once what bound it is reversed.
            if !*approved
                && card.lock == LockKind::FirstUseHeld
                && card.uses == 0
                && card.held == 0
                && card.spent == 0
            {
                card.lock = LockKind::FirstUseUnbound;
            }
            history::record(
                &mut card.history,
                RecentTx {
                    at: hold.at,
                    mti: hold.mti,
                    amount: part.map_or(hold.original_amount, |p| p.answer.transaction),
                    code: *code,
                    decided_by: *decided_by,
                    merchant: hold.acceptor,
                    refund: hold.refund,
                },
            );
        }
        Event::Reversed {
            was_held,
            returned,
            use_returned,
            held_use_returned,
            mti,
            at,
            ..
        } => {
            if *was_held {
                card.held = card.held.saturating_sub(*returned);
            } else {
                card.spent = card.spent.saturating_sub(*returned);
            }
            if *use_returned {
                card.uses = card.uses.saturating_sub(1);
            }
            if *held_use_returned {
                card.held_uses = card.held_uses.saturating_sub(1);
            }
            // A completion's give-back (MTI x2xx) adds no line: the completion's own line
            // tells what was spent.
            if mti[1] == b'4' {
                history::record(
                    &mut card.history,
                    RecentTx {
                        at: *at,
                        mti: *mti,
                        amount: *returned,
                        code: ResponseCode::APPROVED,
                        decided_by: DecidedBy::Switch,
                        merchant: None,
                        // The reversal's line: its MTI says what it is.
                        refund: false,
                    },
                );
            }
        }
        Event::Advised(t) | Event::Restated(t) => {
            card.spent = card.spent.saturating_add(t.amount);
            if t.counts_use {
                card.uses = card.uses.saturating_add(1);
            }
            // Money moved: bound for good, where it moved.
            bind_merchant(card, t, LockKind::FirstUseBound);
            confirm_binding(card, t);
            history::record(
                &mut card.history,
                RecentTx {
                    at: t.at,
                    mti: t.mti,
                    amount: t.original_amount,
                    code: ResponseCode::APPROVED,
                    decided_by: DecidedBy::Issuer,
                    merchant: t.acceptor,
                    refund: t.refund,
                },
            );
        }
        Event::Declined {
            tx,
            code,
            decided_by,
        } => history::record(
            &mut card.history,
            RecentTx {
                at: tx.at,
                mti: tx.mti,
                amount: tx.original_amount,
                code: *code,
                decided_by: *decided_by,
                merchant: tx.acceptor,
                refund: tx.refund,
            },
        ),
    }
    card.lsn = event.lsn();
}

/// A hold leaves `held` for `spent`, and the use it took is counted.
fn spend_hold(card: &mut Card, hold: &TxEvent) {
    release_hold(card, hold);
    card.spent = card.spent.saturating_add(hold.amount);
    if hold.counts_use {
        card.uses = card.uses.saturating_add(1);
    }
}

/// A first-use lock binds to the merchant of the request that asks it to: `as_lock` says
/// how, [`LockKind::FirstUseHeld`] for a hold, [`LockKind::FirstUseBound`] for an advice.
/// An advice that moved money also binds over holds elsewhere the issuer has not
/// approved: its merchant, not theirs, is where the card was first used.
fn bind_merchant(card: &mut Card, t: &TxEvent, as_lock: LockKind) {
    let free = card.lock == LockKind::FirstUseUnbound
        || (card.lock == LockKind::FirstUseHeld
            && as_lock == LockKind::FirstUseBound
            && moved_money(t));
    if t.binds_merchant
        && free
        && let Some(a) = t.acceptor
    {
        card.lock = as_lock;
        card.acceptor = a;
    }
}

/// A first-use lock bound by holds alone is bound for good once the card is used at its
/// merchant (`t` there): the issuer approved one of them (a zero-amount verification too,
/// and one the acquirer reversed while it waited: the card was used there either way), or
/// a stand-in's advice reports it (asked of the record, not of what `t` said it binds: a
/// journal written before the held state had an advice there bind nothing). Not by a
/// refund, which any merchant may make, nor on a hold a restart left in doubt, whose
/// answer is still to come: the issuer may decline it and every other hold there.
fn confirm_binding(card: &mut Card, t: &TxEvent) {
    if card.lock == LockKind::FirstUseHeld && !t.refund && t.acceptor == Some(card.acceptor) {
        card.lock = LockKind::FirstUseBound;
    }
}

/// Whether `t` moved money onto the card, enough to take a lock held elsewhere: not a
/// refund, which any merchant may make and which spends nothing, nor a zero-amount
/// verification.
fn moved_money(t: &TxEvent) -> bool {
    !t.refund && t.amount > 0
}

/// What was counted as spent (a hold in doubt) is given back, and its use.
fn unspend(card: &mut Card, hold: &TxEvent) {
    card.spent = card.spent.saturating_sub(hold.amount);
    if hold.counts_use {
        card.uses = card.uses.saturating_sub(1);
    }
}

/// A hold leaves `held`, and gives back the use it took.
fn release_hold(card: &mut Card, hold: &TxEvent) {
    card.held = card.held.saturating_sub(hold.amount);
    if hold.counts_use {
        // Saturating: after a restart, holds from before the snapshot were never counted
        // in `held_uses` (see `Card::held_uses`).
        card.held_uses = card.held_uses.saturating_sub(1);
    }
}

/// Who answered an outcome recorded before the journal and snapshots said so: the issuer,
/// unless the code is one the switch gives for it (91 when it did not answer in time, 96
/// when the hold could not be made durable). An issuer's own 91 or 96 reads as the switch's.
fn legacy_decided_by(code: ResponseCode) -> DecidedBy {
    if code == ResponseCode::ISSUER_UNAVAILABLE || code == ResponseCode::SYSTEM_ERROR {
        DecidedBy::Switch
    } else {
        DecidedBy::Issuer
    }
}

/// The hold a ledger entry stands for, as an event at `lsn` and `at` (its answer, or the
/// verdict on it): the inverse of [`entry_of`].
pub(crate) fn hold_of(tx: OriginalData, e: &TxEntry, lsn: u64, at: UnixSeconds) -> TxEvent {
    TxEvent {
        lsn,
        key: e.card,
        tx,
        fingerprint: e.fingerprint,
        amount: e.amount,
        original_amount: e.original_amount,
        counts_use: e.counts_use,
        binds_merchant: e.binds_merchant,
        refund: e.refund,
        acceptor: e.acceptor,
        mti: e.mti,
        at,
    }
}

pub(crate) fn entry_of(t: &TxEvent, state: TxState, code: ResponseCode) -> TxEntry {
    TxEntry {
        card: t.key,
        fingerprint: t.fingerprint,
        state,
        code,
        charged: t.amount,
        amount: t.amount,
        original_amount: t.original_amount,
        counts_use: t.counts_use,
        use_counted: state == TxState::Approved && t.counts_use,
        binds_merchant: t.binds_merchant,
        refund: t.refund,
        at: t.at,
        lsn: t.lsn,
        mti: t.mti,
        acceptor: t.acceptor,
        auth: None,
        decided_by: if state == TxState::Declined {
            DecidedBy::Switch
        } else {
            DecidedBy::Issuer
        },
        asking: false,
        acknowledged: false,
        restated: false,
        partly_approved: false,
    }
}

/// Applies an event's effect on the ledger; returns the key of a new entry (to be
/// remembered for retention by the caller, outside any ledger guard).
pub fn apply_ledger(
    ledger: &Ledger,
    event: &Event,
    replaying: bool,
) -> Option<(OriginalData, UnixSeconds)> {
    let lsn = event.lsn();
    let newer = |e: &TxEntry| !replaying || e.lsn < lsn;
    match event {
        Event::Issued(_) | Event::Status { .. } => None,
        Event::Held(t) => {
            if replaying && ledger.entries.get(&t.tx).is_some_and(|e| e.lsn >= lsn) {
                return None;
            }
            ledger.put(t.tx, entry_of(t, TxState::Held, ResponseCode::APPROVED));
            Some((t.tx, t.at))
        }
        Event::Advised(t) => {
            if replaying && ledger.entries.get(&t.tx).is_some_and(|e| e.lsn >= lsn) {
                return None;
            }
            // Remembered again when new here, over a decline or a release (their queue is
            // not the money one: a stand-in's advice after vpan's 91), or later than the
            // entry it replaces: the old queue item, older than the entry now, forgets
            // nothing when it comes up, and the entry would stay outside every bound.
            let replaced = ledger.put(t.tx, entry_of(t, TxState::Approved, ResponseCode::APPROVED));
            replaced
                .is_none_or(|e| {
                    matches!(e.state, TxState::Declined | TxState::Released) || e.at < t.at
                })
                .then_some((t.tx, t.at))
        }
        Event::Restated(t) => {
            // Added to the entry it restates; one the ledger no longer holds has nothing to
            // add to (the card's counters have it all the same).
            if let Some(mut e) = ledger.entries.get_mut(&t.tx)
                && newer(&e)
            {
                // Counted at what the advice says moved (a resend of it adds nothing), of
                // its DE 4 when it has one (what a partial reversal then takes its
                // proportion of); news to the issuer until it acknowledges an advice of
                // that much. A part the issuer approved of the request is reversed there
                // in its place (`AdviceOutcome::InPlaceOfPart`): the issuer books the
                // advice, which a reversal is to name from then on.
                if e.issuers_part() {
                    e.mti = advice_mti(e.mti);
                }
                e.amount = e.amount.saturating_add(t.amount);
                e.charged = e.charged.saturating_add(t.amount);
                if t.original_amount > 0 {
                    e.original_amount = t.original_amount;
                }
                e.acknowledged = false;
                e.restated = true;
                if t.counts_use {
                    e.counts_use = true;
                    e.use_counted = true;
                }
                e.lsn = lsn;
            }
            None
        }
        Event::Outcome {
            hold,
            approved,
            in_doubt,
            code,
            auth,
            decided_by,
            part,
        } => {
            if let Some(mut e) = ledger.entries.get_mut(&hold.tx)
                && newer(&e)
            {
                mark_outcome(&mut e, *approved, *code, *auth, *decided_by, lsn);
                if told_as_advice(*in_doubt, *approved, *decided_by, hold.mti) {
                    e.mti = hold.mti;
                }
                if let Some(part) = part {
                    narrow_to_part(ledger, hold.tx, &mut e, *part, *in_doubt);
                }
            }
            None
        }
        Event::Declined {
            tx: t,
            code,
            decided_by: DecidedBy::Switch,
        } => {
            if replaying && ledger.entries.get(&t.tx).is_some_and(|e| e.lsn >= lsn) {
                return None;
            }
            let entry = entry_of(t, TxState::Declined, *code);
            let fresh = ledger.put(t.tx, entry).is_none();
            fresh.then_some((t.tx, t.at))
        }
        // A stand-in's decline reported by an advice: in the card's history only.
        Event::Declined { .. } => None,
        Event::ReversalSeen {
            key,
            reversal,
            fingerprint,
            at,
            ..
        } => {
            // Live, taken already (`ReversalKeys::claim`); replaying, unless taken later.
            let seen = super::ledger::SeenReversal {
                card: *key,
                fingerprint: *fingerprint,
                at: *at,
                lsn,
            };
            ledger.reversal_keys.load(*reversal, seen);
            None
        }
        Event::Voided {
            key, tx, mti, at, ..
        } => {
            // Live, the original came after all. Replaying, an entry from before the void
            // (in the snapshot, then dropped for room before the void) gives way to it.
            if ledger
                .entries
                .get(tx)
                .is_some_and(|e| !replaying || e.lsn >= lsn)
            {
                return None;
            }
            ledger.put(*tx, voided_entry(*key, *tx, *mti, *at, lsn));
            Some((*tx, *at))
        }
        Event::InDoubt(hold) => {
            if let Some(mut e) = ledger.entries.get_mut(&hold.tx)
                && newer(&e)
            {
                e.state = TxState::InDoubt;
                e.use_counted = e.counts_use;
                e.lsn = lsn;
            }
            None
        }
        Event::Reversed { tx, remaining, .. } => {
            if let Some(mut e) = ledger.entries.get_mut(tx)
                && newer(&e)
            {
                e.amount = *remaining;
                if *remaining == 0 {
                    e.counts_use = false;
                    e.use_counted = false;
                }
                e.lsn = lsn;
            }
            None
        }
    }
}

/// The ledger entry that stands for a voided original: a decline (94) whose fingerprint
/// no request has, so the original, whatever its content, is refused as a conflicting
/// repeat, and a repeat of the reversal finds it with nothing left to give back.
pub(crate) fn voided_entry(
    key: CardKey,
    tx: OriginalData,
    mti: [u8; 4],
    at: UnixSeconds,
    lsn: u64,
) -> TxEntry {
    let t = TxEvent {
        lsn,
        key,
        tx,
        fingerprint: VOIDED_FINGERPRINT,
        amount: 0,
        original_amount: 0,
        counts_use: false,
        binds_merchant: false,
        refund: false,
        acceptor: None,
        mti,
        at,
    };
    entry_of(&t, TxState::Declined, ResponseCode::DUPLICATE)
}

/// The fingerprint of a voided original's entry. A request's is a hash: one equal to
/// this by chance would be replayed the same 94.
pub(crate) const VOIDED_FINGERPRINT: u64 = 0;

/// A partial approval's entry `e`, under `key` in `ledger`: it charged, and spends, only its
/// part, stands for the approved DE 4, and keeps the answer's amounts for its repeats.
pub(crate) fn narrow_to_part(
    ledger: &Ledger,
    key: OriginalData,
    e: &mut TxEntry,
    part: ApprovedPart,
    in_doubt: bool,
) {
    let stood = e.amount;
    let (original, approved) = (e.original_amount, part.answer.transaction);
    if in_doubt && e.reversed_in_part() && approved > 0 {
        // A purchase in doubt reversed in part before the issuer answered its repeat (told
        // what stands): it still stands for the network's DE 4, which the acquirer's
        // reversals and a stand-in's advice of it speak in, so that such an advice is the
        // request the issuer approved in part, not a restatement of the whole that forgets
        // the part reversed. What it charged is put at the answer's rate (its DE 6 may
        // bill above the request's, or a share rounded up), what a further reversal takes
        // its share of, else rounded below what the issuer keeps; at the same rate it is
        // what it was. Records from before 2026-12-07 did so only when the answer narrowed
        // it (what stood at least the part's share), and are replayed as they were.
        if part.stands.is_some() || stood >= e.share_of(approved) {
            e.charged = ceil_ratio(part.spent, original, approved);
        }
    } else {
        // As any partial approval: it stands for the approved DE 4. So does a live hold
        // reversed in part while with the issuer: its reversal spoke of what the network
        // had approved.
        e.charged = part.spent;
        e.original_amount = approved;
    }
    e.amount = part.stands_after(stood);
    ledger.set_partial(key, e, part.answer);
}

/// What a transaction counts once the issuer approved `approved` DE 4 of it in part,
/// billed `spent` (card currency): what stood of it, `stood` of `charged` for its DE 4
/// `original` at the request's rate, put at the answer's rate, and never more than `spent`.
pub(crate) fn stands_after_part(
    stood: u64,
    charged: u64,
    original: u64,
    spent: u64,
    approved: u64,
) -> u64 {
    if stood >= charged || approved == 0 {
        // Nothing reversed (the part is at most the whole), or no rate to take.
        return stood.min(spent);
    }
    // The DE 4 that stood, as an advice of it is told (`Cards::standing`), rounded down;
    // its share of the part, rounded up: the issuer keeps the exact share. Put at the
    // answer's rate from `stood` itself, already rounded up, it would be rounded up twice,
    // a unit above that share, and a repeat of the reversal that left it would find that
    // unit to give back.
    let de4_stood = u128::from(stood) * u128::from(original) / u128::from(charged);
    let at_answers_rate = (u128::from(spent) * de4_stood).div_ceil(u128::from(approved));
    u64::try_from(at_answers_rate).map_or(spent, |n| n.min(spent))
}

impl ApprovedPart {
    /// What stands of a transaction that counted `stood` before this answer: as recorded,
    /// or, for records from before 2026-12-07, the least of `stood` and what was spent.
    fn stands_after(&self, stood: u64) -> u64 {
        self.stands.unwrap_or(stood.min(self.spent))
    }
}

/// Whether an `Outcome` settles a purchase in doubt as the stand-in's approval whose
/// advice is news to the issuer (its ask declined there, or reversed by the issuer link):
/// its hold then carries the advice's MTI (x120, x220), which is what the issuer books, and
/// what a reversal is to name from then on, after a restart too.
pub(crate) fn told_as_advice(
    in_doubt: bool,
    approved: bool,
    decided_by: DecidedBy,
    mti: [u8; 4],
) -> bool {
    in_doubt && approved && decided_by == DecidedBy::Switch && mti[2] == b'2'
}

/// The ledger side of an issuer's answer (shared by the live path and replay).
pub(crate) fn mark_outcome(
    e: &mut TxEntry,
    approved: bool,
    code: ResponseCode,
    auth: Option<AuthCode>,
    decided_by: DecidedBy,
    lsn: u64,
) {
    e.state = if approved {
        TxState::Approved
    } else {
        TxState::Released
    };
    e.code = code;
    e.auth = auth;
    e.decided_by = decided_by;
    e.use_counted = approved && e.counts_use;
    e.lsn = lsn;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::LedgerConfig;
    use crate::cards::ledger::test_entry;

    /// A purchase of USD 100.00 (DE 4) billed EUR 90.00 that EUR `stood` still counts of.
    fn dollars(stood: u64) -> (u64, u64, u64) {
        (stood, 9_000, 10_000)
    }

    #[test]
    fn what_stands_after_a_partial_approval_is_what_stood_at_the_answers_rate_at_most_the_part() {
        let stands = |(stood, charged, original), spent, approved| {
            stands_after_part(stood, charged, original, spent, approved)
        };
        // Nothing reversed: the part, USD 60.00 billed EUR 57.00.
        assert_eq!(stands(dollars(9_000), 5_700, 6_000), 5_700);
        // Reversed to USD 30.00 (27.00 at the request's rate): 30.00 at the answer's 0.95.
        assert_eq!(stands(dollars(2_700), 5_700, 6_000), 2_850);
        // At the request's own rate: what stood.
        assert_eq!(stands(dollars(2_700), 5_400, 6_000), 2_700);
        // At a lower rate: less than stood, rounded up (30 * 0.8 = 24.00).
        assert_eq!(stands(dollars(2_700), 4_800, 6_000), 2_400);
        // Reversed to USD 61.00, above the part: the part.
        assert_eq!(stands(dollars(5_490), 5_700, 6_000), 5_700);
        // No approved DE 4 to take a rate of: the least of the two.
        assert_eq!(stands(dollars(2_700), 5_700, 0), 2_700);
        // Reversed to USD 30.01 (27.01, 27.009 rounded up): 30.01 at 0.95 is 28.5095,
        // 28.51, not 28.52 (27.01 put at the answer's rate, rounded up again).
        assert_eq!(stands(dollars(2_701), 5_700, 6_000), 2_851);
        // Amounts past any real one: never more than the part.
        assert_eq!(stands((u64::MAX - 1, u64::MAX, u64::MAX), 5, 6), 5);
    }

    /// A purchase in doubt reversed to USD 30.00 and approved in part for USD 60.00 billed
    /// EUR 57.00, in the ledger: as recorded now (28.50 stands, charged put at the
    /// answer's rate), and as a record from before what stands was kept is replayed (27.00,
    /// charged at the request's, as that version counted it on the card too).
    #[test]
    fn a_partial_approvals_record_from_before_what_stands_was_kept_replays_as_it_counted() {
        let ledger = Ledger::new(LedgerConfig::default());
        let key = OriginalData {
            class: 1,
            stan: 3,
            transmitted: 1,
            acquirer: 1,
            terminal: *b"T1      ",
        };
        let held = || {
            let mut e = test_entry(1, TxState::Approved);
            (e.amount, e.charged, e.original_amount) = dollars(2_700);
            e
        };
        let part = |stands| ApprovedPart {
            spent: 5_700,
            stands,
            answer: PartialAnswer {
                transaction: 6_000,
                billing: Some(5_700),
            },
        };
        let mut now = held();
        narrow_to_part(&ledger, key, &mut now, part(Some(2_850)), true);
        assert_eq!(
            (now.amount, now.charged, now.original_amount),
            (2_850, 9_500, 10_000)
        );
        let mut before = held();
        narrow_to_part(&ledger, key, &mut before, part(None), true);
        assert_eq!((before.amount, before.charged), (2_700, 9_000));
        assert_eq!(
            part(None).stands_after(2_700),
            2_700,
            "what the card counts"
        );
    }
}
