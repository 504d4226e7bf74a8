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
//! snapshot. The encoding is a hand-written little-endian layout with a tag byte: small,
//! fast, and with no format crate to track (records are CRC-framed by the journal).

use std::num::{NonZeroU32, NonZeroU64};

use super::card::{
    AcceptorId, Card, CardKey, Controls, Expiry, LockKind, MccRules, Status, UnixSeconds,
};
use super::history::{self, DecidedBy, HISTORY_LEN, History, RecentTx};
use super::ledger::{AuthCode, Ledger, TxEntry, TxState};
use super::request::{OriginalData, ResponseCode};
use crate::store::StoreError;
use crate::store::journal::Encode;

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
    /// DE 42.
    pub acceptor: Option<AcceptorId>,
    /// The request's MTI.
    pub mti: [u8; 4],
    /// When.
    pub at: UnixSeconds,
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
    },
    /// A reversal gave (part of) a transaction back.
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
        /// The reversal's MTI.
        mti: [u8; 4],
        /// When.
        at: UnixSeconds,
    },
    /// An advice (0120/0220) reported an approval made elsewhere: spent at once.
    Advised(TxEvent),
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
    /// A reversal named (in DE 90) an original this card has not seen: the network has
    /// given up on it, so should it arrive late (from another connection, say) it is
    /// declined (94) rather than approved and charged after its own reversal.
    Voided {
        /// Sequence number.
        lsn: u64,
        /// The card.
        key: CardKey,
        /// The original the reversal named.
        tx: OriginalData,
        /// The reversal's MTI.
        mti: [u8; 4],
        /// When.
        at: UnixSeconds,
    },
}

impl Event {
    /// The event's sequence number.
    pub fn lsn(&self) -> u64 {
        match self {
            Event::Issued(i) => i.lsn,
            Event::Status { lsn, .. } | Event::Reversed { lsn, .. } | Event::Voided { lsn, .. } => {
                *lsn
            }
            Event::Held(t) | Event::Advised(t) | Event::InDoubt(t) => t.lsn,
            Event::Outcome { hold, .. } | Event::Declined { tx: hold, .. } => hold.lsn,
        }
    }

    /// The card it changes.
    pub fn key(&self) -> CardKey {
        match self {
            Event::Issued(i) => i.key,
            Event::Status { key, .. } | Event::Reversed { key, .. } | Event::Voided { key, .. } => {
                *key
            }
            Event::Held(t) | Event::Advised(t) | Event::InDoubt(t) => t.key,
            Event::Outcome { hold, .. } | Event::Declined { tx: hold, .. } => hold.key,
        }
    }
}

/// Applies an event's effect on its card (not `Issued`, which makes the card).
pub fn apply_card(card: &mut Card, event: &Event) {
    match event {
        // A voided original changes only the ledger.
        Event::Issued(_) | Event::Voided { .. } => {}
        Event::Status { status, .. } => card.set_status = *status,
        Event::Held(t) => {
            card.held = card.held.saturating_add(t.amount);
            if t.counts_use {
                card.held_uses = card.held_uses.saturating_add(1);
            }
            bind_merchant(card, t);
        }
        Event::InDoubt(hold) => spend_hold(card, hold),
        Event::Outcome {
            hold,
            approved,
            in_doubt,
            code,
            decided_by,
            ..
        } => {
            match (*in_doubt, *approved) {
                (false, true) => spend_hold(card, hold),
                (false, false) => release_hold(card, hold),
                (true, true) => {}
                (true, false) => unspend(card, hold),
            }
            if !*approved
                && hold.binds_merchant
                && card.lock == LockKind::FirstUseBound
                && card.uses == 0
                && card.held == 0
                && card.spent == 0
            {
                // The approval that bound the merchant did not happen after all.
                card.lock = LockKind::FirstUseUnbound;
            }
            history::record(
                &mut card.history,
                RecentTx {
                    at: hold.at,
                    mti: hold.mti,
                    amount: hold.original_amount,
                    code: *code,
                    decided_by: *decided_by,
                    merchant: hold.acceptor,
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
            history::record(
                &mut card.history,
                RecentTx {
                    at: *at,
                    mti: *mti,
                    amount: *returned,
                    code: ResponseCode::APPROVED,
                    decided_by: DecidedBy::Switch,
                    merchant: None,
                },
            );
        }
        Event::Advised(t) => {
            card.spent = card.spent.saturating_add(t.amount);
            if t.counts_use {
                card.uses = card.uses.saturating_add(1);
            }
            bind_merchant(card, t);
            history::record(
                &mut card.history,
                RecentTx {
                    at: t.at,
                    mti: t.mti,
                    amount: t.original_amount,
                    code: ResponseCode::APPROVED,
                    decided_by: DecidedBy::Issuer,
                    merchant: t.acceptor,
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

/// A first-use lock binds to the merchant of the approval that asks it to.
fn bind_merchant(card: &mut Card, t: &TxEvent) {
    if t.binds_merchant
        && card.lock == LockKind::FirstUseUnbound
        && let Some(a) = t.acceptor
    {
        card.lock = LockKind::FirstUseBound;
        card.acceptor = a;
    }
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
            ledger
                .entries
                .insert(t.tx, entry_of(t, TxState::Held, ResponseCode::APPROVED));
            Some((t.tx, t.at))
        }
        Event::Advised(t) => {
            if replaying && ledger.entries.get(&t.tx).is_some_and(|e| e.lsn >= lsn) {
                return None;
            }
            let fresh = ledger
                .entries
                .insert(t.tx, entry_of(t, TxState::Approved, ResponseCode::APPROVED))
                .is_none();
            fresh.then_some((t.tx, t.at))
        }
        Event::Outcome {
            hold,
            approved,
            code,
            auth,
            decided_by,
            ..
        } => {
            if let Some(mut e) = ledger.entries.get_mut(&hold.tx)
                && newer(&e)
            {
                mark_outcome(&mut e, *approved, *code, *auth, *decided_by, lsn);
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
            let fresh = ledger.entries.insert(t.tx, entry).is_none();
            fresh.then_some((t.tx, t.at))
        }
        // A stand-in's decline reported by an advice: in the card's history only.
        Event::Declined { .. } => None,
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
            ledger
                .entries
                .insert(*tx, voided_entry(*key, *tx, *mti, *at, lsn));
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
        acceptor: None,
        mti,
        at,
    };
    entry_of(&t, TxState::Declined, ResponseCode::DUPLICATE)
}

/// The fingerprint of a voided original's entry. A request's is a hash: one equal to
/// this by chance would be replayed the same 94.
const VOIDED_FINGERPRINT: u64 = 0;

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

// ---- encoding ----

const TAG_ISSUED: u8 = 1;
const TAG_STATUS: u8 = 2;
const TAG_HELD: u8 = 3;
const TAG_OUTCOME: u8 = 4;
const TAG_REVERSED: u8 = 5;
const TAG_ADVISED: u8 = 6;
const TAG_IN_DOUBT: u8 = 7;
const TAG_DECLINED: u8 = 8;
const TAG_VOIDED: u8 = 9;
/// Snapshot records.
pub(crate) const TAG_SNAP_HEADER: u8 = 10;
pub(crate) const TAG_SNAP_CARD: u8 = 11;
pub(crate) const TAG_SNAP_TX: u8 = 12;

/// Little-endian writer helpers.
pub(crate) trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn bytes(&mut self, v: &[u8]);
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u16(v.len() as u16);
        self.extend_from_slice(v);
    }
}

/// Little-endian reader: every read is checked, a short record is `None`.
pub(crate) struct Get<'a>(pub &'a [u8]);

impl<'a> Get<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    pub(crate) fn key(&mut self) -> Option<CardKey> {
        CardKey::from_raw(self.u64()?)
    }
    pub(crate) fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    /// A field added at the end of a record after records without it were written:
    /// `Some(None)` when nothing is left, `None` (damage) when something other than it is.
    pub(crate) fn optional_tail<const N: usize>(&mut self) -> Option<Option<[u8; N]>> {
        if self.0.is_empty() {
            return Some(None);
        }
        self.array().map(Some)
    }
}

pub(crate) fn put_tx(out: &mut Vec<u8>, tx: &OriginalData) {
    out.u8(tx.class);
    out.u32(tx.stan);
    out.u32(tx.transmitted);
    out.u64(tx.acquirer);
    out.extend_from_slice(&tx.terminal);
}

pub(crate) fn get_tx(g: &mut Get<'_>) -> Option<OriginalData> {
    Some(OriginalData {
        class: g.u8()?,
        stan: g.u32()?,
        transmitted: g.u32()?,
        acquirer: g.u64()?,
        terminal: g.array()?,
    })
}

pub(crate) fn put_acceptor(out: &mut Vec<u8>, a: Option<AcceptorId>) {
    match a {
        Some(a) => {
            out.u8(1);
            out.extend_from_slice(&a.0);
        }
        None => out.u8(0),
    }
}

pub(crate) fn get_acceptor(g: &mut Get<'_>) -> Option<Option<AcceptorId>> {
    Some(match g.u8()? {
        0 => None,
        1 => Some(AcceptorId(g.array()?)),
        _ => return None,
    })
}

fn put_txevent(out: &mut Vec<u8>, t: &TxEvent) {
    out.u64(t.lsn);
    out.u64(t.key.raw());
    put_tx(out, &t.tx);
    out.u64(t.fingerprint);
    out.u64(t.amount);
    out.u64(t.original_amount);
    out.u8(u8::from(t.counts_use) | u8::from(t.binds_merchant) << 1);
    put_acceptor(out, t.acceptor);
    out.extend_from_slice(&t.mti);
    out.u64(t.at);
}

fn get_txevent(g: &mut Get<'_>) -> Option<TxEvent> {
    let lsn = g.u64()?;
    let key = g.key()?;
    let tx = get_tx(g)?;
    let fingerprint = g.u64()?;
    let amount = g.u64()?;
    let original_amount = g.u64()?;
    let flags = g.u8()?;
    Some(TxEvent {
        lsn,
        key,
        tx,
        fingerprint,
        amount,
        original_amount,
        counts_use: flags & 1 != 0,
        binds_merchant: flags & 2 != 0,
        acceptor: get_acceptor(g)?,
        mti: g.array()?,
        at: g.u64()?,
    })
}

pub(crate) fn put_controls(out: &mut Vec<u8>, c: &Controls) {
    out.u16(c.currency);
    out.u64(c.amount_limit);
    out.u64(c.per_transaction_limit.map_or(0, NonZeroU64::get));
    out.u32(c.max_uses.map_or(0, NonZeroU32::get));
    out.u64(c.valid_until);
    match c.merchant_lock {
        super::card::MerchantLock::None => out.u8(0),
        super::card::MerchantLock::FirstUse => out.u8(1),
        super::card::MerchantLock::Acceptor(a) => {
            out.u8(2);
            out.extend_from_slice(&a.0);
        }
    }
    put_mccs(out, &c.mcc_allow);
    put_mccs(out, &c.mcc_block);
}

pub(crate) fn get_controls(g: &mut Get<'_>) -> Option<Controls> {
    Some(Controls {
        currency: g.u16()?,
        amount_limit: g.u64()?,
        per_transaction_limit: NonZeroU64::new(g.u64()?),
        max_uses: NonZeroU32::new(g.u32()?),
        valid_until: g.u64()?,
        merchant_lock: match g.u8()? {
            0 => super::card::MerchantLock::None,
            1 => super::card::MerchantLock::FirstUse,
            2 => super::card::MerchantLock::Acceptor(AcceptorId(g.array()?)),
            _ => return None,
        },
        mcc_allow: get_mccs(g)?,
        mcc_block: get_mccs(g)?,
    })
}

fn put_mccs(out: &mut Vec<u8>, list: &[u16]) {
    out.u16(list.len() as u16);
    for &m in list {
        out.u16(m);
    }
}

fn get_mccs(g: &mut Get<'_>) -> Option<Vec<u16>> {
    let n = usize::from(g.u16()?);
    (0..n).map(|_| g.u16()).collect()
}

impl Encode for Event {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Event::Issued(i) => {
                out.u8(TAG_ISSUED);
                out.u64(i.lsn);
                out.u64(i.key.raw());
                out.bytes(&i.sealed_pan);
                out.extend_from_slice(&i.real_expiry.0);
                put_controls(out, &i.controls);
                out.u64(i.created_at);
            }
            Event::Status { lsn, key, status } => {
                out.u8(TAG_STATUS);
                out.u64(*lsn);
                out.u64(key.raw());
                out.u8(status.to_u8());
            }
            Event::Held(t) => {
                out.u8(TAG_HELD);
                put_txevent(out, t);
            }
            Event::Outcome {
                hold,
                approved,
                in_doubt,
                code,
                auth,
                decided_by,
            } => {
                out.u8(TAG_OUTCOME);
                put_txevent(out, hold);
                // Each in a bit of its own: records from before `in_doubt` read as not in
                // doubt; those from before `decided_by` (no `DECIDED_BY_RECORDED`) read it
                // from the code.
                out.u8(u8::from(*approved)
                    | u8::from(*in_doubt) << 1
                    | u8::from(*decided_by == DecidedBy::Switch) << 2
                    | OUTCOME_DECIDED_BY_RECORDED);
                out.extend_from_slice(&code.0);
                // Last, and only when there is one: records written before DE 38 was kept
                // end at the code, and read the same.
                if let Some(auth) = auth {
                    out.extend_from_slice(auth);
                }
            }
            Event::Reversed {
                lsn,
                key,
                tx,
                was_held,
                returned,
                remaining,
                use_returned,
                held_use_returned,
                mti,
                at,
            } => {
                out.u8(TAG_REVERSED);
                out.u64(*lsn);
                out.u64(key.raw());
                put_tx(out, tx);
                out.u8(u8::from(*was_held)
                    | u8::from(*use_returned) << 1
                    | u8::from(*held_use_returned) << 2);
                out.u64(*returned);
                out.u64(*remaining);
                out.extend_from_slice(mti);
                out.u64(*at);
            }
            Event::Advised(t) => {
                out.u8(TAG_ADVISED);
                put_txevent(out, t);
            }
            Event::InDoubt(t) => {
                out.u8(TAG_IN_DOUBT);
                put_txevent(out, t);
            }
            Event::Voided {
                lsn,
                key,
                tx,
                mti,
                at,
            } => {
                out.u8(TAG_VOIDED);
                out.u64(*lsn);
                out.u64(key.raw());
                put_tx(out, tx);
                out.extend_from_slice(mti);
                out.u64(*at);
            }
            Event::Declined {
                tx,
                code,
                decided_by,
            } => {
                out.u8(TAG_DECLINED);
                put_txevent(out, tx);
                out.u8(u8::from(*decided_by == DecidedBy::Switch));
                out.extend_from_slice(&code.0);
            }
        }
    }
}

impl Event {
    /// Decodes one journal record.
    pub fn decode(payload: &[u8]) -> Result<Event, StoreError> {
        Event::try_decode(payload).ok_or(StoreError::Corrupt("journal"))
    }

    fn try_decode(payload: &[u8]) -> Option<Event> {
        let mut g = Get(payload);
        let event = match g.u8()? {
            TAG_ISSUED => Event::Issued(Box::new(Issued {
                lsn: g.u64()?,
                key: g.key()?,
                sealed_pan: g.bytes()?.to_vec(),
                real_expiry: Expiry(g.array()?),
                controls: get_controls(&mut g)?,
                created_at: g.u64()?,
            })),
            TAG_STATUS => Event::Status {
                lsn: g.u64()?,
                key: g.key()?,
                status: Status::from_u8(g.u8()?)?,
            },
            TAG_HELD => Event::Held(get_txevent(&mut g)?),
            TAG_OUTCOME => {
                let hold = get_txevent(&mut g)?;
                let flags = g.u8()?;
                if flags > 15 {
                    return None;
                }
                let code = ResponseCode(g.array()?);
                Event::Outcome {
                    hold,
                    approved: flags & 1 != 0,
                    in_doubt: flags & 2 != 0,
                    code,
                    auth: g.optional_tail()?,
                    decided_by: recorded_decided_by(flags, 2, OUTCOME_DECIDED_BY_RECORDED)
                        .unwrap_or_else(|| legacy_decided_by(code)),
                }
            }
            TAG_REVERSED => {
                let lsn = g.u64()?;
                let key = g.key()?;
                let tx = get_tx(&mut g)?;
                let flags = g.u8()?;
                Event::Reversed {
                    lsn,
                    key,
                    tx,
                    was_held: flags & 1 != 0,
                    use_returned: flags & 2 != 0,
                    held_use_returned: flags & 4 != 0,
                    returned: g.u64()?,
                    remaining: g.u64()?,
                    mti: g.array()?,
                    at: g.u64()?,
                }
            }
            TAG_ADVISED => Event::Advised(get_txevent(&mut g)?),
            TAG_IN_DOUBT => Event::InDoubt(get_txevent(&mut g)?),
            TAG_VOIDED => Event::Voided {
                lsn: g.u64()?,
                key: g.key()?,
                tx: get_tx(&mut g)?,
                mti: g.array()?,
                at: g.u64()?,
            },
            TAG_DECLINED => {
                let tx = get_txevent(&mut g)?;
                let decided_by = match g.u8()? {
                    0 => DecidedBy::Issuer,
                    1 => DecidedBy::Switch,
                    _ => return None,
                };
                Event::Declined {
                    tx,
                    decided_by,
                    code: ResponseCode(g.array()?),
                }
            }
            _ => return None,
        };
        g.0.is_empty().then_some(event)
    }
}

// ---- snapshot records ----

/// The first record of a snapshot.
pub(crate) struct SnapHeader {
    /// Format version.
    pub version: u8,
    /// First journal segment not contained in the snapshot.
    pub from_segment: u64,
    /// Next LSN to hand out.
    pub next_lsn: u64,
    /// Cards that follow (to pre-size the index).
    pub cards: u64,
}

impl Encode for SnapHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.u8(TAG_SNAP_HEADER);
        out.u8(self.version);
        out.u64(self.from_segment);
        out.u64(self.next_lsn);
        out.u64(self.cards);
    }
}

/// A card in a snapshot, with its real PAN sealed.
pub(crate) struct SnapCard<'a> {
    pub key: CardKey,
    pub sealed_pan: &'a [u8],
    pub card: &'a Card,
}

impl Encode for SnapCard<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let c = self.card;
        out.u8(TAG_SNAP_CARD);
        out.u64(self.key.raw());
        out.u64(c.lsn);
        out.bytes(self.sealed_pan);
        out.extend_from_slice(&c.real_expiry.0);
        out.u16(c.currency);
        out.u8(c.set_status.to_u8());
        out.u8(c.lock.to_u8());
        out.extend_from_slice(&c.acceptor.0);
        out.u32(c.uses);
        out.u32(c.max_uses.map_or(0, NonZeroU32::get));
        out.u64(c.amount_limit);
        out.u64(c.per_transaction_limit.map_or(0, NonZeroU64::get));
        out.u64(c.spent);
        out.u64(c.held);
        out.u64(c.valid_until);
        out.u64(c.created_at);
        let (allow, block) = c
            .mcc
            .as_ref()
            .map_or((&[][..], &[][..]), |m| (&m.allow[..], &m.block[..]));
        put_mccs(out, allow);
        put_mccs(out, block);
        let hist = &c.history.entries[..];
        out.u8(hist.len() as u8);
        for h in hist {
            out.u64(h.at);
            out.extend_from_slice(&h.mti);
            out.u64(h.amount);
            out.extend_from_slice(&h.code.0);
            out.u8(u8::from(h.decided_by == DecidedBy::Issuer));
            put_acceptor(out, h.merchant);
        }
    }
}

/// Decodes a snapshot card: key, sealed PAN, and the card with a placeholder real PAN
/// the caller replaces after decryption.
pub(crate) fn decode_snap_card(
    g: &mut Get<'_>,
    open: impl FnOnce(CardKey, &[u8]) -> Result<crate::pan::Pan, StoreError>,
) -> Result<(CardKey, Card), StoreError> {
    let bad = || StoreError::Corrupt("snapshot card");
    let key = g.key().ok_or_else(bad)?;
    let lsn = g.u64().ok_or_else(bad)?;
    let sealed = g.bytes().ok_or_else(bad)?;
    let real_pan = open(key, sealed)?;
    let card = (|| {
        let real_expiry = Expiry(g.array()?);
        let currency = g.u16()?;
        let set_status = Status::from_u8(g.u8()?)?;
        let lock = LockKind::from_u8(g.u8()?)?;
        let acceptor = AcceptorId(g.array()?);
        let uses = g.u32()?;
        let max_uses = NonZeroU32::new(g.u32()?);
        let amount_limit = g.u64()?;
        let per_transaction_limit = NonZeroU64::new(g.u64()?);
        let spent = g.u64()?;
        let held = g.u64()?;
        let valid_until = g.u64()?;
        let created_at = g.u64()?;
        let allow = get_mccs(g)?;
        let block = get_mccs(g)?;
        let n = usize::from(g.u8()?);
        if n > HISTORY_LEN {
            return None;
        }
        // One allocation for the whole history, not one per entry.
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let tx = RecentTx {
                at: g.u64()?,
                mti: g.array()?,
                amount: g.u64()?,
                code: ResponseCode(g.array()?),
                decided_by: if g.bool()? {
                    DecidedBy::Issuer
                } else {
                    DecidedBy::Switch
                },
                merchant: get_acceptor(g)?,
            };
            entries.push(tx);
        }
        let history = History::from_oldest_first(entries);
        let mcc = (!allow.is_empty() || !block.is_empty()).then(|| {
            Box::new(MccRules {
                allow: allow.into(),
                block: block.into(),
            })
        });
        Some(Card {
            real_pan: real_pan.clone(),
            pan_nonce: crate::store::crypto::nonce_of(sealed),
            real_expiry,
            currency,
            set_status,
            lock,
            acceptor,
            uses,
            held_uses: 0,
            max_uses,
            amount_limit,
            per_transaction_limit,
            spent,
            held,
            valid_until,
            created_at,
            lsn,
            mcc,
            history,
        })
    })()
    .ok_or_else(bad)?;
    Ok((key, card))
}

/// A ledger entry in a snapshot.
pub(crate) struct SnapTx(pub OriginalData, pub TxEntry);

impl Encode for SnapTx {
    fn encode(&self, out: &mut Vec<u8>) {
        let e = &self.1;
        out.u8(TAG_SNAP_TX);
        put_tx(out, &self.0);
        out.u64(e.card.raw());
        out.u64(e.fingerprint);
        out.u8(e.state.to_u8());
        out.extend_from_slice(&e.code.0);
        out.u64(e.charged);
        out.u64(e.amount);
        out.u64(e.original_amount);
        out.u8(u8::from(e.counts_use)
            | u8::from(e.use_counted) << 1
            | u8::from(e.binds_merchant) << 2
            | u8::from(e.decided_by == DecidedBy::Switch) << 3
            | SNAP_TX_DECIDED_BY_RECORDED);
        out.u64(e.at);
        out.u64(e.lsn);
        out.extend_from_slice(&e.mti);
        put_acceptor(out, e.acceptor);
        // Last, and only when there is one, as in an outcome record: snapshots written
        // before DE 38 was kept read the same.
        if let Some(auth) = e.auth {
            out.extend_from_slice(&auth);
        }
    }
}

pub(crate) fn decode_snap_tx(g: &mut Get<'_>) -> Option<(OriginalData, TxEntry)> {
    let tx = get_tx(g)?;
    let card = g.key()?;
    let fingerprint = g.u64()?;
    let state = TxState::from_u8(g.u8()?)?;
    let code = ResponseCode(g.array()?);
    let charged = g.u64()?;
    let amount = g.u64()?;
    let original_amount = g.u64()?;
    let flags = g.u8()?;
    Some((
        tx,
        TxEntry {
            card,
            fingerprint,
            state,
            code,
            charged,
            amount,
            original_amount,
            counts_use: flags & 1 != 0,
            use_counted: flags & 2 != 0,
            binds_merchant: flags & 4 != 0,
            at: g.u64()?,
            lsn: g.u64()?,
            mti: g.array()?,
            acceptor: get_acceptor(g)?,
            auth: g.optional_tail()?,
            decided_by: recorded_decided_by(flags, 3, SNAP_TX_DECIDED_BY_RECORDED).unwrap_or(
                if state == TxState::Declined {
                    DecidedBy::Switch
                } else {
                    legacy_decided_by(code)
                },
            ),
            asking: false,
        },
    ))
}

/// Set in an outcome record's flags (and a snapshot's ledger entry's) when the bit before
/// it says who decided.
const OUTCOME_DECIDED_BY_RECORDED: u8 = 1 << 3;
const SNAP_TX_DECIDED_BY_RECORDED: u8 = 1 << 4;

/// Who decided, from bit `bit` of `flags`, when `recorded` says the record has it.
fn recorded_decided_by(flags: u8, bit: u8, recorded: u8) -> Option<DecidedBy> {
    (flags & recorded != 0).then_some(if flags & (1 << bit) != 0 {
        DecidedBy::Switch
    } else {
        DecidedBy::Issuer
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One made-up card for the module's tests.
    fn key() -> CardKey {
        static DIGITS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let digits = DIGITS.get_or_init(|| crate::pan::test_pan("497010"));
        CardKey::from_digits(digits.as_bytes()).unwrap()
    }

    fn tx_event() -> TxEvent {
        TxEvent {
            lsn: 7,
            key: key(),
            tx: OriginalData {
                class: 1,
                stan: 42,
                transmitted: 1_126_152_942,
                acquirer: 12_345,
                terminal: *b"TERM0001",
            },
            fingerprint: 0xdead_beef,
            amount: 930,
            original_amount: 1_000,
            counts_use: true,
            binds_merchant: true,
            acceptor: AcceptorId::new(b"SHOP-A"),
            mti: *b"0100",
            at: 1_795_706_982,
        }
    }

    #[test]
    fn every_event_decodes_to_what_was_encoded() {
        let events = vec![
            Event::Held(tx_event()),
            Event::Advised(tx_event()),
            Event::Outcome {
                hold: tx_event(),
                approved: true,
                in_doubt: false,
                code: ResponseCode::APPROVED,
                auth: Some(*b"A1B2C3"),
                decided_by: DecidedBy::Issuer,
            },
            Event::Outcome {
                hold: tx_event(),
                approved: false,
                in_doubt: false,
                code: ResponseCode(*b"05"),
                auth: None,
                decided_by: DecidedBy::Issuer,
            },
            Event::Outcome {
                hold: tx_event(),
                approved: false,
                in_doubt: true,
                code: ResponseCode(*b"51"),
                auth: None,
                decided_by: DecidedBy::Issuer,
            },
            Event::Outcome {
                hold: tx_event(),
                approved: false,
                in_doubt: false,
                code: ResponseCode::ISSUER_UNAVAILABLE,
                auth: None,
                decided_by: DecidedBy::Switch,
            },
            Event::InDoubt(tx_event()),
            Event::Reversed {
                lsn: 9,
                key: key(),
                tx: tx_event().tx,
                was_held: false,
                returned: 500,
                remaining: 430,
                use_returned: true,
                held_use_returned: false,
                mti: *b"0400",
                at: 5,
            },
            Event::Reversed {
                lsn: 10,
                key: key(),
                tx: tx_event().tx,
                was_held: true,
                returned: 930,
                remaining: 0,
                use_returned: false,
                held_use_returned: true,
                mti: *b"0420",
                at: 6,
            },
            Event::Status {
                lsn: 3,
                key: key(),
                status: Status::Paused,
            },
        ];
        for e in events {
            let mut buf = Vec::new();
            e.encode(&mut buf);
            let back = Event::decode(&buf).unwrap();
            let mut again = Vec::new();
            back.encode(&mut again);
            assert_eq!(buf, again);
            assert_eq!(back.lsn(), e.lsn());
        }
    }

    #[test]
    fn an_outcome_written_before_de38_was_kept_reads_without_it_and_a_torn_one_is_refused() {
        let outcome = |auth| Event::Outcome {
            hold: tx_event(),
            approved: true,
            in_doubt: false,
            code: ResponseCode::APPROVED,
            auth,
            decided_by: DecidedBy::Issuer,
        };
        let mut old = Vec::new();
        outcome(None).encode(&mut old);
        let mut new = Vec::new();
        outcome(Some(*b"A1B2C3")).encode(&mut new);
        assert_eq!(
            new.len(),
            old.len() + 6,
            "the code is only added at the end"
        );
        assert!(matches!(
            Event::decode(&old).unwrap(),
            Event::Outcome { auth: None, .. }
        ));
        assert!(Event::decode(&new[..old.len() + 3]).is_err());
    }

    #[test]
    fn a_snapshots_ledger_entry_keeps_who_decided_and_an_older_one_reads_it_from_the_code() {
        let tx = tx_event();
        for (state, code, by) in [
            (
                TxState::Released,
                ResponseCode::SYSTEM_ERROR,
                DecidedBy::Issuer,
            ),
            (
                TxState::Released,
                ResponseCode::ISSUER_UNAVAILABLE,
                DecidedBy::Switch,
            ),
            (TxState::Declined, ResponseCode(*b"61"), DecidedBy::Switch),
            (TxState::Approved, ResponseCode::APPROVED, DecidedBy::Issuer),
        ] {
            let mut entry = entry_of(&tx, state, code);
            entry.decided_by = by;
            let mut buf = Vec::new();
            SnapTx(tx.tx, entry).encode(&mut buf);
            let read = |buf: &[u8]| {
                let mut g = Get(&buf[1..]);
                let (_, e) = decode_snap_tx(&mut g).unwrap();
                assert!(g.0.is_empty());
                e.decided_by
            };
            assert_eq!(read(&buf), by, "{code:?}");
            // As written before the flag: the tag, the key (25 bytes), card, fingerprint,
            // state, code and three amounts, then the flags.
            let flags = 1 + 25 + 8 + 8 + 1 + 2 + 3 * 8;
            assert_ne!(buf[flags] & SNAP_TX_DECIDED_BY_RECORDED, 0);
            buf[flags] &= 7;
            let legacy = if code == ResponseCode::SYSTEM_ERROR || state == TxState::Declined {
                DecidedBy::Switch
            } else {
                by
            };
            assert_eq!(read(&buf), legacy, "{code:?} before the flag");
        }
    }

    #[test]
    fn a_truncated_or_padded_event_is_refused() {
        let mut buf = Vec::new();
        Event::Held(tx_event()).encode(&mut buf);
        assert!(Event::decode(&buf[..buf.len() - 1]).is_err());
        buf.push(0);
        assert!(Event::decode(&buf).is_err());
        assert!(Event::decode(&[99]).is_err());
        // An outcome's flags: approved, in doubt, and nothing else.
        let mut outcome = Vec::new();
        Event::Outcome {
            hold: tx_event(),
            approved: true,
            in_doubt: true,
            code: ResponseCode::APPROVED,
            auth: None,
            decided_by: DecidedBy::Issuer,
        }
        .encode(&mut outcome);
        let flags = outcome.len() - 3;
        assert_eq!(outcome[flags], 3 | OUTCOME_DECIDED_BY_RECORDED);
        outcome[flags] = 16;
        assert!(Event::decode(&outcome).is_err());
    }

    #[test]
    fn an_issuers_own_96_stays_the_issuers_and_older_records_read_who_decided_from_the_code() {
        let outcome = |code, decided_by| Event::Outcome {
            hold: tx_event(),
            approved: false,
            in_doubt: false,
            code,
            auth: None,
            decided_by,
        };
        let decided_by = |buf: &[u8]| match Event::decode(buf).unwrap() {
            Event::Outcome { decided_by, .. } => decided_by,
            other => panic!("{other:?}"),
        };
        for (code, by) in [
            (ResponseCode::SYSTEM_ERROR, DecidedBy::Issuer),
            (ResponseCode::SYSTEM_ERROR, DecidedBy::Switch),
            (ResponseCode::ISSUER_UNAVAILABLE, DecidedBy::Issuer),
            (ResponseCode(*b"05"), DecidedBy::Issuer),
        ] {
            let mut buf = Vec::new();
            outcome(code, by).encode(&mut buf);
            assert_eq!(decided_by(&buf), by, "{code:?}");
            // As written before the flag: approved and in doubt only.
            let flags = buf.len() - 3;
            buf[flags] &= 3;
            let legacy = if code == ResponseCode(*b"05") {
                DecidedBy::Issuer
            } else {
                DecidedBy::Switch
            };
            assert_eq!(decided_by(&buf), legacy, "{code:?} before the flag");
        }
    }
}
