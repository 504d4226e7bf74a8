//! The ledger: every recent transaction by its key, for holds, reversals and repeats.
//!
//! An approval's amount is *held* on the card until the issuer answers; the entry here
//! remembers how much, so that the answer turns it into spent (and a use) or releases it,
//! exactly once. Reversals find their original here by DE 90 (or by the transaction key)
//! and give back what it still holds, once: a reversal sets what *remains* of the original
//! (zero for a full reversal, DE 95 for a partial one), so a repeat finds nothing more to
//! give. A request whose key is here already is a repeat: same content, the first answer
//! is replayed; other content, 94.
//!
//! Entries are keyed by what DE 90 can name (MTI class, DE 11, DE 7, DE 32) with DE 41 in
//! the content fingerprint: ISO 8583 itself identifies an original by those fields, so two
//! transactions sharing them cannot both be reversed unambiguously anyway.
//!
//! The ledger is bounded: entries older than [`LedgerConfig::retention_secs`] or beyond
//! [`LedgerConfig::capacity`] (oldest first) are forgotten. A forgotten transaction can no
//! longer be reversed through vpan (its amount stays spent: the safe side) and a repeat of
//! it is decided afresh. Entries still waiting for the issuer are never forgotten (a hold
//! joins a queue once answered). Declines, vpan's own and the issuer's, and holds released
//! on a 91 or a failure move no money and are kept apart, within a quarter of the capacity
//! of their own: a flood of them (card testing, an issuer down) would otherwise push out
//! the approvals that reversals and repeats must still find. Voids made by reversals of
//! originals vpan never saw are kept apart too, within a sixteenth of the capacity, for
//! the same reason: a link that sends reversals of what it never sent cannot push
//! approvals out either.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::ConcurrentMap;

use super::card::{AcceptorId, CardKey, UnixSeconds};
use super::history::DecidedBy;
use super::request::{OriginalData, ResponseCode};

mod reversal_keys;

pub use reversal_keys::{Claim, ReversalKeys, SeenReversal};

/// Bounds of the ledger (`cards.ledger_capacity`, `cards.ledger_retention_hours`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Most transactions that moved money remembered (about 250 bytes each); declines and
    /// releases have a quarter of this again, apart.
    pub capacity: usize,
    /// How long a transaction can be reversed or repeated, seconds.
    pub retention_secs: u64,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            capacity: 1_000_000,
            retention_secs: 7 * 86_400,
        }
    }
}

impl LedgerConfig {
    /// A ledger that forgets nothing, by count or by age, and sizes its table by what it
    /// is given rather than ahead: for copying a store whole (`vpan rekey`), whatever
    /// bounds the switch that wrote it had. Not for serving.
    pub fn unbounded() -> LedgerConfig {
        LedgerConfig {
            capacity: usize::MAX,
            retention_secs: u64::MAX,
        }
    }

    /// Most declines and releases remembered, apart from the rest.
    pub fn decline_capacity(&self) -> usize {
        self.capacity / 4
    }

    /// Most voids of originals never seen remembered, apart from the rest. Few links
    /// reverse what they did not send (an original lost on its way), so a sixteenth.
    pub fn void_capacity(&self) -> usize {
        self.capacity.div_ceil(16)
    }

    /// Most reversals' own keys remembered (see [`ReversalKeys`]): a quarter of the
    /// capacity, as few purchases are reversed.
    pub fn reversal_key_capacity(&self) -> usize {
        self.capacity / 4
    }

    /// What the table is sized for at start: the entries the ledger holds at most, its
    /// queues full; nothing ahead for an [`LedgerConfig::unbounded`] one.
    fn table_size(&self) -> usize {
        if self.capacity == usize::MAX {
            return 0;
        }
        self.capacity
            .saturating_add(self.decline_capacity())
            .saturating_add(self.void_capacity())
    }
}

/// Where a transaction stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TxState {
    /// Approved by vpan, amount held, waiting for the issuer.
    Held,
    /// Approved by the issuer (or reported by an advice): the amount is spent.
    Approved,
    /// Declined by the issuer, timed out or failed: the hold was released.
    Released,
    /// Declined by vpan itself (kept for replays; its record is not waited for).
    Declined,
    /// Held when vpan stopped, its issuer answer lost: counted as spent, and a repeat of it
    /// is asked of the issuer (see `Event::InDoubt`).
    InDoubt,
}

impl TxState {
    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Option<TxState> {
        [
            TxState::Held,
            TxState::Approved,
            TxState::Released,
            TxState::Declined,
            TxState::InDoubt,
        ]
        .get(usize::from(v))
        .copied()
    }
}

/// `amount * num / den`, rounded up (saturating).
///
/// # Panics
/// When `den` is 0.
pub(crate) fn ceil_ratio(amount: u64, num: u64, den: u64) -> u64 {
    let n = u128::from(amount) * u128::from(num);
    u64::try_from(n.div_ceil(u128::from(den))).unwrap_or(u64::MAX)
}

/// One remembered transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TxEntry {
    /// The card it is on.
    pub card: CardKey,
    /// What it asked (see `AuthRequest::fingerprint`), to tell repeats from conflicts.
    pub fingerprint: u64,
    /// Where it stands.
    pub state: TxState,
    /// The answer given (issuer's or vpan's), for replays.
    pub code: ResponseCode,
    /// Amount charged at approval, card currency.
    pub charged: u64,
    /// What it still holds or spends now (after partial reversals), card currency.
    pub amount: u64,
    /// DE 4 of the original, for proportional partial reversals and the history.
    pub original_amount: u64,
    /// Whether its approval counts (or counted) a use.
    pub counts_use: bool,
    /// Whether a use is counted on the card now.
    pub use_counted: bool,
    /// Whether its hold bound a first-use merchant lock.
    pub binds_merchant: bool,
    /// A refund or another credit, as recorded (see [`crate::cards::event::TxEvent`]).
    pub refund: bool,
    /// When it was decided.
    pub at: UnixSeconds,
    /// Journal sequence number of its last change (replay skips older records).
    pub lsn: u64,
    /// The request's MTI.
    pub mti: [u8; 4],
    /// DE 42.
    pub acceptor: Option<AcceptorId>,
    /// DE 38 of the issuer's approval, given again with its DE 39 to a repeat.
    pub auth: Option<AuthCode>,
    /// Who gave `code`, given again to a repeat (and its metric label).
    pub decided_by: DecidedBy,
    /// In doubt, and a repeat of it is with the issuer now: further repeats wait for that
    /// answer rather than ask again (in memory only; a restart asks afresh).
    pub asking: bool,
    /// An advice the issuer has answered 00: a repeat of it is acknowledged here rather
    /// than told again (in memory only; after a restart a repeat goes to the issuer,
    /// marked as one).
    pub acknowledged: bool,
    /// An advice restated it, counting more money or a use (`Event::Restated`): the
    /// request's own approval by the issuer no longer covers it, and `original_amount` is
    /// the advice's DE 4 when that is not 0.
    pub restated: bool,
    /// The issuer approved it in part (DE 39 10): what it answered is in
    /// [`Ledger::partial`], for its repeats. A flag here and the amounts apart, so that the
    /// rare partial approval does not make every entry of the table larger.
    pub partly_approved: bool,
}

/// The amounts of an issuer's partial approval (DE 39 10), as it answered them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PartialAnswer {
    /// DE 4: approved, less than the request's, in its currency.
    pub transaction: u64,
    /// DE 6, when the answer had one.
    pub billing: Option<u64>,
}

impl TxEntry {
    /// One of vpan's own declines (not a voided original, which is kept as a decline too
    /// but guards money: a late original under its key must not be approved).
    fn is_own_decline(&self) -> bool {
        self.state == TxState::Declined && self.fingerprint != super::event::VOIDED_FINGERPRINT
    }

    /// Moves no money, and guards none: one of vpan's own declines, a hold released (the
    /// issuer's decline, its 91, a failure) that no reversal took back first, or an
    /// approved zero-amount verification (no use, no merchant bound). What the retention
    /// keeps apart from the rest. Not a void, nor a purchase reversed while held (both
    /// turn a stand-in's later advice of it away), nor a refund (a purchase advice under
    /// its key is refused).
    fn moves_no_money(&self) -> bool {
        match self.state {
            TxState::Declined => self.is_own_decline(),
            TxState::Released => !self.taken_back(),
            // DE 4 of 0 too: an advice counted as 0 and a use, reversed, loses its use, but
            // keeps the amount it reported, and must still turn its resend away.
            TxState::Approved => {
                self.original_amount == 0
                    && self.charged == 0
                    && self.amount == 0
                    && !self.use_counted
                    && !self.counts_use
                    && !self.binds_merchant
                    && !self.refund
            }
            TxState::Held | TxState::InDoubt => false,
        }
    }

    /// A void: an original a reversal named before this card saw it (or a released one a
    /// reversal or a completion took back), kept as a decline so that it is declined should
    /// it come, and a stand-in's advice of it counts nothing.
    pub fn is_void(&self) -> bool {
        self.state == TxState::Declined && self.fingerprint == super::event::VOIDED_FINGERPRINT
    }

    /// A void that replaced a purchase vpan saw and released: it keeps the purchase's
    /// MTI, where one made before its original came has the reversal's (04x0).
    pub fn voided_a_purchase(&self) -> bool {
        self.is_void() && self.mti[1] != b'4'
    }

    /// The retention queue this entry belongs in now (see [`Queue`]).
    pub(crate) fn retention_queue(&self) -> Queue {
        if self.moves_no_money() {
            Queue::Declines
        } else if self.is_void() && !self.voided_a_purchase() {
            Queue::UnseenVoids
        } else {
            Queue::Money
        }
    }

    /// The acquirer has reversed part of it: it still counts something, less than it did.
    pub fn reversed_in_part(&self) -> bool {
        self.amount > 0 && self.amount < self.charged
    }

    /// Taken back by a reversal: it charged something once and holds nothing now, which
    /// only a reversal does (a refund never holds anything; an advice counted as 0 and a
    /// use, its use gone back, cannot be told from one that never stood), or a void that
    /// replaced a purchase.
    pub fn taken_back(&self) -> bool {
        if self.is_void() {
            self.voided_a_purchase()
        } else {
            self.charged > 0 && self.amount == 0 && self.state != TxState::Declined
        }
    }

    /// What it charged in the card's currency, in the proportion of `de4` to its DE 4,
    /// rounded up: what stays of it when a partial reversal leaves `de4`, or what a partial
    /// approval of `de4` spends.
    ///
    /// # Panics
    /// When its DE 4 (`original_amount`) is 0: callers take no proportion of that.
    pub fn share_of(&self, de4: u64) -> u64 {
        ceil_ratio(self.charged, de4, self.original_amount)
    }

    /// The issuer approved the request itself, and no advice has restated it since. Approved
    /// in part, it approved what the transaction stands for (its DE 4 then); but not a 10
    /// vpan counted whole (amounts it could not take), which approved some part of the
    /// request only.
    pub fn issuer_approved_it(&self) -> bool {
        self.state == TxState::Approved
            && self.mti[2] == b'0'
            && self.decided_by == DecidedBy::Issuer
            && (self.code != ResponseCode::PARTIAL_APPROVAL || self.partly_approved)
            && !self.restated
    }

    /// The issuer's own partial approval (10) of the request, which no advice has restated
    /// yet: an advice of more (a stand-in's, which approved the whole) replaces it at the
    /// issuer.
    pub fn issuers_part(&self) -> bool {
        self.partly_approved && self.issuer_approved_it()
    }

    /// An advice restated the issuer's own partial approval, which was reversed there for
    /// the advice to be booked in its place ([`TxEntry::issuers_part`] before), and the
    /// issuer has not answered an advice of it 00 since (as far as vpan remembers).
    pub fn replaces_part(&self) -> bool {
        self.state == TxState::Approved
            && self.partly_approved
            && self.decided_by == DecidedBy::Issuer
            && self.restated
            && self.mti[2] == b'2'
            && !self.acknowledged
    }

    /// Still holds or spends something, or counts a use.
    pub fn stands(&self) -> bool {
        matches!(
            self.state,
            TxState::Held | TxState::Approved | TxState::InDoubt
        ) && (self.amount > 0 || self.use_counted)
    }

    /// The MTI under which the issuer books it, as far as vpan knows: an advice's own; a
    /// request's, but for one held in doubt that a stand-in's advice then completed
    /// (approved, decided by the switch: `IssuerOutcome::Advised`) and the issuer answered
    /// that advice 00 since, which is then what it booked. Whether the request reached it
    /// before the stop is unknown; the issuer's 00 to the advice is kept in memory only, so
    /// after a restart the request is named again.
    pub fn booked_as(&self) -> [u8; 4] {
        let advised = self.state == TxState::Approved && self.decided_by == DecidedBy::Switch;
        if advised && self.acknowledged {
            advice_mti(self.mti)
        } else {
            self.mti
        }
    }

    /// Waiting for an issuer's answer (held, or in doubt and being asked): kept in the
    /// ledger whatever its age, so that answer finds it.
    pub fn awaits_issuer(&self) -> bool {
        self.state == TxState::Held || (self.state == TxState::InDoubt && self.asking)
    }
}

/// The MTI of an advice of the request `mti` names (x100 and x101: x120; x200: x220).
pub fn advice_mti(mut mti: [u8; 4]) -> [u8; 4] {
    mti[2] = b'2';
    mti[3] = b'0';
    mti
}

/// DE 38, the issuer's authorization code: six characters.
pub type AuthCode = [u8; 6];

/// The transactions, with their retention queue.
pub struct Ledger {
    /// Key → transaction.
    pub(crate) entries: ConcurrentMap<OriginalData, TxEntry>,
    /// Insertion order, for retention: transactions that move (or may move) money.
    order: Mutex<Fifo<(UnixSeconds, OriginalData)>>,
    /// The same for what moves no money (declines, releases), bounded apart.
    declines: Mutex<Fifo<(UnixSeconds, OriginalData)>>,
    /// The same for voids of originals never seen, bounded apart.
    unseen_voids: Mutex<Fifo<(UnixSeconds, OriginalData)>>,
    /// What the issuer answered to the transactions it approved in part
    /// (`TxEntry::partly_approved`), forgotten with them.
    partials: ConcurrentMap<OriginalData, PartialAnswer>,
    /// The reversals' own keys, to tell a reversal again from another under its key.
    pub(crate) reversal_keys: ReversalKeys,
    /// Transactions that moved money forgotten for room before their retention.
    forgotten_young: AtomicU64,
    /// Bounds.
    config: LedgerConfig,
    /// While a start replays the journal: each queue holds [`REPLAY_SLACK`] more than its
    /// capacity (see [`Ledger::replaying`]).
    replaying: AtomicBool,
}

/// What a queue may hold beyond its capacity while the journal is replayed. Two threads
/// replay it, card by card, and file what they apply as they go, so the queues' order
/// then is theirs, not serving's, by up to what the threads hold between them (a few
/// batches of records); `rebuild_order` then forgets down to the capacity in serving's
/// order.
const REPLAY_SLACK: usize = 65_536;

impl Ledger {
    /// An empty ledger.
    pub fn new(config: LedgerConfig) -> Ledger {
        Ledger {
            // Sized for its capacity at start (about 300 MB resident for a million), which
            // it reaches anyway: a growing table rehashes under its shard's write lock
            // while the authorizations hashed to it wait, and each doubling faults in
            // fresh pages the kernel must zero. A fresh switch spent 10–20 % more CPU per
            // approval while its ledger grew (benches/RESULTS.md, "Where the p99 goes").
            // Many small shards, so that the one lock an approval takes is rarely
            // contended.
            entries: ConcurrentMap::with_capacity_and_hasher_and_shard_amount(
                config.table_size(),
                Default::default(),
                SHARDS,
            ),
            order: Mutex::new(Fifo::default()),
            declines: Mutex::new(Fifo::default()),
            unseen_voids: Mutex::new(Fifo::default()),
            partials: ConcurrentMap::default(),
            reversal_keys: ReversalKeys::default(),
            forgotten_young: AtomicU64::new(0),
            config,
            replaying: AtomicBool::new(false),
        }
    }

    /// Says a start's replay of the journal begins (`true`): until [`Ledger::rebuild_order`],
    /// the queues forget for room only past [`REPLAY_SLACK`] more than their capacity.
    pub(crate) fn replaying(&self, on: bool) {
        self.replaying.store(on, Ordering::Relaxed);
    }

    /// A copy of the entry under `key`.
    pub fn get(&self, key: &OriginalData) -> Option<TxEntry> {
        self.entries.get(key).map(|e| *e)
    }

    /// What the issuer answered to `key`, when it approved it in part.
    pub fn partial(&self, key: &OriginalData) -> Option<PartialAnswer> {
        self.partials.get(key).map(|a| *a)
    }

    /// A copy of the entry under `key`, and its partial approval's answer, read together
    /// under the entry's lock.
    pub fn get_with_partial(&self, key: &OriginalData) -> Option<(TxEntry, Option<PartialAnswer>)> {
        self.entries.get(key).map(|e| {
            let partial = e.partly_approved.then(|| self.partial(key)).flatten();
            (*e, partial)
        })
    }

    /// Puts `entry` under `key`, and returns the entry it replaces, whose partial approval's
    /// answer (if any) goes with it, under the entry's lock. (Replaying, a record may replace
    /// an entry a snapshot had: one forgotten, then its key used again.)
    pub(crate) fn put(&self, key: OriginalData, entry: TxEntry) -> Option<TxEntry> {
        match self.entries.entry(key) {
            dashmap::Entry::Occupied(mut slot) => {
                let replaced = slot.insert(entry);
                if replaced.partly_approved {
                    self.partials.remove(&key);
                }
                Some(replaced)
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(entry);
                None
            }
        }
    }

    /// Loads a snapshot's entry under `key`, with its partial approval's answer.
    pub(crate) fn load(&self, key: OriginalData, entry: TxEntry, partial: Option<PartialAnswer>) {
        if let Some(answer) = partial {
            self.partials.insert(key, answer);
        }
        self.entries.insert(key, entry);
    }

    /// Partial approvals' answers kept.
    pub fn partials_len(&self) -> usize {
        self.partials.len()
    }

    /// Marks `e`, the entry under `key` (its guard held, or not in the ledger yet),
    /// approved in part with `answer`.
    pub(crate) fn set_partial(&self, key: OriginalData, e: &mut TxEntry, answer: PartialAnswer) {
        self.partials.insert(key, answer);
        e.partly_approved = true;
    }

    /// Number of transactions remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Notes an entry that moves (or guards) money for retention, and forgets what falls
    /// out of the bounds. Never call with an entry guard of this ledger held.
    pub fn remember(&self, key: OriginalData, at: UnixSeconds, now: UnixSeconds) {
        self.remember_in(Queue::Money, key, at, now);
    }

    /// Notes `key` for retention in the queue its entry belongs to now: a hold once the
    /// issuer (or a stand-in's advice) has answered it, by what the answer made it; a
    /// recovered record by what it left.
    pub fn remember_answered(&self, key: OriginalData, at: UnixSeconds, now: UnixSeconds) {
        if let Some(queue) = self.entries.get(&key).map(|e| e.retention_queue()) {
            self.remember_in(queue, key, at, now);
        }
    }

    /// Notes the void of an original this card never saw, bounded apart: it guards money
    /// (the original, should it come, is declined), but a flood of reversals naming
    /// originals never sent must not push out the approvals reversals still have to find.
    pub fn remember_unseen_void(&self, key: OriginalData, at: UnixSeconds, now: UnixSeconds) {
        self.remember_in(Queue::UnseenVoids, key, at, now);
    }

    /// [`Ledger::remember`] for an entry that moves no money (a decline, vpan's or the
    /// issuer's, or a released hold), bounded apart.
    pub fn remember_no_money(&self, key: OriginalData, at: UnixSeconds, now: UnixSeconds) {
        self.remember_in(Queue::Declines, key, at, now);
    }

    /// Notes `key` in `queue` (for a caller that held the entry: what
    /// [`TxEntry::retention_queue`] said of it then, rather than a second lookup), and
    /// forgets what falls out of that queue's bounds.
    pub(crate) fn remember_in(
        &self,
        queue: Queue,
        key: OriginalData,
        at: UnixSeconds,
        now: UnixSeconds,
    ) {
        let Ok(mut order) = self.order_of(queue).lock() else {
            return;
        };
        order.push_back((at, key));
        self.forget_beyond_bounds(queue, &mut order, now);
    }

    fn order_of(&self, queue: Queue) -> &Mutex<Fifo<(UnixSeconds, OriginalData)>> {
        match queue {
            Queue::Money => &self.order,
            Queue::Declines => &self.declines,
            Queue::UnseenVoids => &self.unseen_voids,
        }
    }

    /// Forgets, oldest first, what `queue` holds past its capacity or its retention.
    fn forget_beyond_bounds(
        &self,
        queue: Queue,
        order: &mut Fifo<(UnixSeconds, OriginalData)>,
        now: UnixSeconds,
    ) {
        let slack = if self.replaying.load(Ordering::Relaxed) {
            REPLAY_SLACK
        } else {
            0
        };
        let capacity = match queue {
            Queue::Money => self.config.capacity,
            Queue::Declines => self.config.decline_capacity(),
            Queue::UnseenVoids => self.config.void_capacity(),
        }
        .saturating_add(slack);
        let horizon = now.saturating_sub(self.config.retention_secs);
        let mut requeued = 0;
        while let Some(&(at, key)) = order.front() {
            let too_many = order.len() > capacity;
            if !too_many && at >= horizon {
                break;
            }
            order.pop_front();
            // Only what this queue put here: a decline that an advice under its key has
            // since turned into an approval, or a release since voided, is the money
            // queue's to forget.
            let removed = self.entries.remove_if(&key, |_, e| {
                let forget = e.at <= at
                    && !e.awaits_issuer()
                    && (queue == Queue::Money || e.retention_queue() == queue);
                if forget && e.partly_approved {
                    // Under the entry's lock: the key used again meanwhile and approved in
                    // part keeps its own answer.
                    self.partials.remove(&key);
                }
                forget
            });
            if removed.is_some() && at >= horizon && queue == Queue::Money {
                self.forgot_young(now.saturating_sub(at));
            }
            if removed.is_none() && self.entries.get(&key).is_some_and(|e| e.awaits_issuer()) {
                // Still waiting for the issuer: keep it, look again later.
                order.push_back((now, key));
                requeued += 1;
                if requeued > 16 {
                    break;
                }
            }
        }
    }

    /// A transaction that moved money was forgotten for room, `age` seconds old, before its
    /// retention: said on the first, then once per 65,536 more, with no clock read or lock of
    /// its own on the approvals' path. Expected when the capacity is sized for how long
    /// reversals come rather than for the whole retention.
    fn forgot_young(&self, age: UnixSeconds) {
        let n = self.forgotten_young.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(65_536) {
            tracing::warn!(
                age_secs = age,
                capacity = self.config.capacity,
                forgotten = n + 1,
                "the ledger is full: transactions are forgotten this young, before cards.ledger_retention_hours; a reversal or repeat coming later than that is not matched (size cards.ledger_capacity to the vPAN rate times the time reversals may take)"
            );
        }
    }

    /// Every key (a copy, for snapshots).
    pub(crate) fn keys(&self) -> Vec<OriginalData> {
        crate::copy_keys(&self.entries)
    }

    /// Rebuilds the retention queues after recovery, oldest first, and forgets what is
    /// beyond their bounds (a lowered `cards.ledger_capacity`, or a journal written by a
    /// vpan that kept declines with the rest) as of the newest transaction, before anything
    /// is served rather than in the first approval's call.
    ///
    /// Oldest is by each entry's last change in the journal (its LSN): serving files a
    /// hold for retention when the issuer answers it, and the rest when recorded, so for
    /// an entry nothing changed since, that is when serving filed it, and a restart forgets
    /// what the switch would have forgotten had it gone on. (Until 2026-12-06 it was by
    /// when each was decided: a purchase the issuer answered after two decided later moved
    /// ahead of them, and a restart forgot it first. The order the journal's replay files
    /// in will not do: two threads replay it, card by card.) One changed since (reversed,
    /// restated, settled after a restart) is kept longer than serving would have kept it.
    pub(crate) fn rebuild_order(&self) {
        self.replaying(false);
        let mut all: Vec<(u64, UnixSeconds, OriginalData, Queue)> = self
            .entries
            .iter()
            .map(|e| (e.lsn, e.at, *e.key(), e.retention_queue()))
            .collect();
        all.sort_unstable_by_key(|&(lsn, at, _, _)| (lsn, at));
        let now = all.iter().map(|&(_, at, _, _)| at).max().unwrap_or(0);
        for queue in [Queue::Money, Queue::Declines, Queue::UnseenVoids] {
            let Ok(mut order) = self.order_of(queue).lock() else {
                return;
            };
            *order = Fifo::default();
            for &(_, at, key, _) in all.iter().filter(|&&(_, _, _, q)| q == queue) {
                order.push_back((at, key));
            }
            self.forget_beyond_bounds(queue, &mut order, now);
        }
        self.reversal_keys.rebuild_order(now, &self.config);
    }

    /// Notes a reversal's own key, taken at `at` by the taking numbered `lsn`, for
    /// retention (see [`ReversalKeys`]).
    pub fn remember_reversal_key(
        &self,
        key: OriginalData,
        at: UnixSeconds,
        lsn: u64,
        now: UnixSeconds,
    ) {
        self.reversal_keys.remember(key, at, lsn, now, &self.config);
    }
}

/// Which retention queue an entry is in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    /// Transactions that move or may move money.
    Money,
    /// What moves no money: declines, vpan's or the issuer's, and released holds.
    Declines,
    /// Voids of originals never seen: they guard money, but only a link reversing what it
    /// never sent makes many.
    UnseenVoids,
}

/// Shards of the ledger's map (a power of two).
const SHARDS: usize = 128;

/// Entries per chunk of a [`Fifo`].
const CHUNK: usize = 4096;

/// A queue that grows by fixed chunks. A `VecDeque` doubles by copying everything it
/// holds: past half a million transactions, a 30 MB copy under the ledger's one lock,
/// which every approval takes.
struct Fifo<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Fifo<T> {
    fn default() -> Fifo<T> {
        Fifo {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Fifo<T> {
    fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let item = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// An entry of 0.01 that counts a use, decided at `at`, for tests.
#[cfg(test)]
pub(crate) fn test_entry(at: u64, state: TxState) -> TxEntry {
    TxEntry {
        card: CardKey::from_digits(crate::pan::test_pan("497010").as_bytes()).unwrap(),
        // Not a voided original's.
        fingerprint: 1,
        state,
        code: ResponseCode::APPROVED,
        charged: 1,
        amount: 1,
        original_amount: 1,
        counts_use: true,
        use_counted: false,
        binds_merchant: false,
        refund: false,
        at,
        lsn: 0,
        mti: *b"0100",
        acceptor: None,
        auth: None,
        decided_by: DecidedBy::Issuer,
        asking: false,
        acknowledged: false,
        restated: false,
        partly_approved: false,
    }
}

#[cfg(test)]
mod tests {
    use super::test_entry as entry;
    use super::*;

    #[test]
    fn the_chunked_fifo_keeps_order_across_chunks() {
        let mut q = Fifo::default();
        for i in 0..3 * CHUNK + 7 {
            q.push_back(i);
        }
        assert_eq!(q.len(), 3 * CHUNK + 7);
        for i in 0..2 * CHUNK + 1 {
            assert_eq!(q.front(), Some(&i));
            assert_eq!(q.pop_front(), Some(i));
        }
        q.push_back(usize::MAX);
        let rest: Vec<usize> = std::iter::from_fn(|| q.pop_front()).collect();
        assert_eq!(rest.len(), CHUNK + 7);
        assert_eq!(rest.first(), Some(&(2 * CHUNK + 1)));
        assert_eq!(rest.last(), Some(&usize::MAX));
        assert_eq!(q.len(), 0);
        assert_eq!(q.front(), None);
    }

    fn key(stan: u32) -> OriginalData {
        OriginalData {
            class: 1,
            stan,
            transmitted: 1,
            acquirer: 1,
            terminal: *b"T1      ",
        }
    }

    #[test]
    fn the_ledger_forgets_the_oldest_beyond_its_capacity_but_not_open_holds() {
        let l = Ledger::new(LedgerConfig {
            capacity: 3,
            retention_secs: 1_000,
        });
        l.entries.insert(key(0), entry(10, TxState::Held));
        l.remember(key(0), 10, 10);
        for s in 1..=4 {
            l.entries
                .insert(key(s), entry(10 + u64::from(s), TxState::Approved));
            l.remember(key(s), 10 + u64::from(s), 10 + u64::from(s));
        }
        assert!(l.get(&key(0)).is_some(), "an open hold is kept");
        assert!(l.get(&key(1)).is_none());
        assert!(l.get(&key(4)).is_some());
        assert!(l.len() <= 4);
    }

    #[test]
    fn a_partial_approvals_answer_is_forgotten_with_its_entry() {
        let l = Ledger::new(LedgerConfig {
            capacity: 2,
            retention_secs: 1_000,
        });
        let answer = PartialAnswer {
            transaction: 60,
            billing: Some(59),
        };
        for s in 0..=2 {
            let mut e = entry(10 + u64::from(s), TxState::Approved);
            l.set_partial(key(s), &mut e, answer);
            l.entries.insert(key(s), e);
            l.remember(key(s), e.at, e.at);
        }
        assert_eq!(l.partial(&key(0)), None, "forgotten past the capacity");
        assert_eq!(l.partials.len(), 2);
        assert_eq!(l.partial(&key(2)), Some(answer));
    }

    #[test]
    fn a_flood_of_declines_does_not_push_out_the_approvals() {
        let l = Ledger::new(LedgerConfig {
            capacity: 8,
            retention_secs: 1_000,
        });
        l.entries.insert(key(0), entry(10, TxState::Approved));
        l.remember(key(0), 10, 10);
        for s in 1..=100 {
            l.entries.insert(key(s), entry(10, TxState::Declined));
            l.remember_no_money(key(s), 10, 10);
        }
        assert!(
            l.get(&key(0)).is_some(),
            "the approval is still there to reverse"
        );
        assert!(l.get(&key(100)).is_some(), "the latest decline is kept");
        assert!(
            l.get(&key(1)).is_none(),
            "the oldest declines are forgotten"
        );
        assert_eq!(l.len(), 1 + 2, "declines within a quarter of the capacity");
        // Rebuilt after a restart, the two kinds stay apart.
        l.rebuild_order();
        for s in 101..=110 {
            l.entries.insert(key(s), entry(11, TxState::Declined));
            l.remember_no_money(key(s), 11, 11);
        }
        assert!(l.get(&key(0)).is_some(), "after a rebuild too");

        // A decline that an advice under its key turned into an approval (the same second)
        // is not the declines queue's to forget.
        l.entries.insert(key(200), entry(12, TxState::Declined));
        l.remember_no_money(key(200), 12, 12);
        l.entries.insert(key(200), entry(12, TxState::Approved));
        l.remember(key(200), 12, 12);
        for s in 201..=220 {
            l.entries.insert(key(s), entry(12, TxState::Declined));
            l.remember_no_money(key(s), 12, 12);
        }
        assert!(l.get(&key(200)).is_some(), "the advised one is kept");
    }

    #[test]
    fn a_stand_ins_advice_after_a_released_hold_is_remembered_again_and_forgotten_in_time() {
        use crate::cards::event::{Event, TxEvent, apply_ledger};
        let l = Ledger::new(LedgerConfig {
            capacity: 4,
            retention_secs: 1_000,
        });
        l.entries.insert(key(0), entry(10, TxState::Released));
        l.remember(key(0), 10, 10);
        let e = entry(20, TxState::Approved);
        let advice = Event::Advised(TxEvent {
            lsn: 1,
            key: e.card,
            tx: key(0),
            fingerprint: 1,
            amount: 1,
            original_amount: 1,
            counts_use: true,
            binds_merchant: false,
            refund: false,
            acceptor: None,
            mti: *b"0120",
            at: 20,
        });
        let (k, at) = apply_ledger(&l, &advice, false).expect("remembered again");
        l.remember(k, at, at);
        for s in 1..=8 {
            l.entries.insert(key(s), entry(30, TxState::Approved));
            l.remember(key(s), 30, 30);
        }
        assert!(
            l.get(&key(0)).is_none(),
            "forgotten, not left outside every bound"
        );
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn a_voided_original_stays_with_the_money_after_a_restart() {
        let l = Ledger::new(LedgerConfig {
            capacity: 8,
            retention_secs: 1_000,
        });
        let void = TxEntry {
            fingerprint: crate::cards::event::VOIDED_FINGERPRINT,
            ..entry(10, TxState::Declined)
        };
        l.entries.insert(key(0), void);
        l.remember(key(0), 10, 10);
        l.rebuild_order();
        for s in 1..=100 {
            l.entries.insert(key(s), entry(11, TxState::Declined));
            l.remember_no_money(key(s), 11, 11);
        }
        assert!(
            l.get(&key(0)).is_some(),
            "a late original still finds its void"
        );
        // And it is the money queue's to forget, in its turn.
        for s in 101..=110 {
            l.entries.insert(key(s), entry(12, TxState::Approved));
            l.remember(key(s), 12, 12);
        }
        assert!(
            l.get(&key(0)).is_none(),
            "forgotten with the money, not left behind"
        );
    }

    #[test]
    fn a_flood_of_voids_of_unseen_originals_does_not_push_out_the_approvals() {
        let l = Ledger::new(LedgerConfig {
            capacity: 32,
            retention_secs: 1_000,
        });
        let unseen_void = |at| TxEntry {
            fingerprint: crate::cards::event::VOIDED_FINGERPRINT,
            mti: *b"0400",
            ..entry(at, TxState::Declined)
        };
        l.entries.insert(key(0), entry(10, TxState::Approved));
        l.remember(key(0), 10, 10);
        for s in 1..=100 {
            l.entries.insert(key(s), unseen_void(11));
            l.remember_unseen_void(key(s), 11, 11);
        }
        assert!(l.get(&key(0)).is_some(), "the approval is still there");
        assert!(l.get(&key(100)).is_some(), "the latest void is kept");
        assert!(l.get(&key(1)).is_none(), "the oldest voids are forgotten");
        assert_eq!(l.len(), 1 + 2, "voids within a sixteenth of the capacity");

        // Read back after a restart (each recovered record filed by what it left), then
        // rebuilt: still apart.
        let recovered = Ledger::new(l.config);
        recovered
            .entries
            .insert(key(0), entry(10, TxState::Approved));
        recovered.remember_answered(key(0), 10, 10);
        for s in 1..=100 {
            recovered.entries.insert(key(s), unseen_void(11));
            recovered.remember_answered(key(s), 11, 11);
        }
        recovered.rebuild_order();
        for s in 101..=110 {
            recovered.entries.insert(key(s), unseen_void(12));
            recovered.remember_unseen_void(key(s), 12, 12);
        }
        assert!(recovered.get(&key(0)).is_some(), "after a restart too");
        assert_eq!(recovered.len(), 1 + 2);
    }

    #[test]
    fn a_purchase_in_doubt_is_kept_while_the_issuer_is_asked_about_it() {
        let l = Ledger::new(LedgerConfig {
            capacity: 1,
            retention_secs: 1_000,
        });
        let asked = TxEntry {
            asking: true,
            ..entry(10, TxState::InDoubt)
        };
        l.entries.insert(key(0), asked);
        l.remember(key(0), 10, 10);
        l.entries.insert(key(1), entry(10, TxState::InDoubt));
        l.remember(key(1), 10, 10);
        l.entries.insert(key(2), entry(11, TxState::Approved));
        l.remember(key(2), 11, 11);
        assert!(l.get(&key(0)).is_some(), "being asked: kept");
        assert!(l.get(&key(1)).is_none(), "in doubt, not asked: forgotten");
    }

    #[test]
    fn the_ledger_forgets_what_is_older_than_its_retention() {
        let l = Ledger::new(LedgerConfig {
            capacity: 100,
            retention_secs: 60,
        });
        l.entries.insert(key(1), entry(0, TxState::Approved));
        l.remember(key(1), 0, 0);
        l.entries.insert(key(2), entry(100, TxState::Approved));
        l.remember(key(2), 100, 100);
        assert!(l.get(&key(1)).is_none());
        assert!(l.get(&key(2)).is_some());
    }
}
