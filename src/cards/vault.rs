//! The facade the switch and the API call: index + ledger + journal behind one type.
//!
//! [`Cards`] owns the in-memory state and the store handle. Every method that changes a
//! card does it under that card's lock, in three steps that cannot interleave with another
//! change of the same card: decide, apply the event in memory, queue the event to the
//! journal. Methods are synchronous and return owned values (and, for changes, a
//! [`Durable`] future to await before acknowledging), so no lock ever crosses an `.await`.
//!
//! Durability design the switch relies on: `authorize` returns the approval together with
//! the durable-hold future; the switch forwards to the issuer and awaits that future in
//! parallel, and answers the network only when both are done (a failed future means 96 and
//! `complete(hold, Failed)`). The issuer's answer is then journaled by `complete`. On
//! recovery, a durable hold with no answer counts as spent and a use: no approved amount is
//! lost, and no card goes over its cap.
//!
//! This file holds authorizations (the hold, the issuer's answer, repeats). The other
//! changes have rooms of their own: `issuance.rs` (cards issued, paused, resumed and
//! closed, and the API's view of them), `reversals.rs` (giving back and voiding),
//! `completions.rs` (what a completion does to its authorization), `advices.rs` (what
//! stand-ins approved or declined); `recovery.rs` opens the cards from the snapshot and
//! the journal, `snapshots.rs` writes snapshots, `rekey.rs` copies them into a new data
//! directory under another key.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::card::{Card, CardKey, Expiry, UnixSeconds};
use super::event::{self, ApprovedPart, Event, TxEvent};
use super::history::DecidedBy;
use super::index::CardIndex;
use super::ledger::{
    AuthCode, Ledger, LedgerConfig, PartialAnswer, Queue, TxEntry, TxState, advice_mti,
};
use super::limits::{self, Verdict};
use super::request::{Amounts, AuthRequest, Kind, OriginalData, ResponseCode};
use super::requests::IssuanceRequests;
use super::vpan::{RangeConfigError, VpanGenerator};
use crate::ConcurrentMap;
use crate::pan::Pan;
use crate::store::StoreError;
use crate::store::crypto::PanCipher;
use crate::store::identity::StoreId;
use crate::store::journal::{Durable, Journal};

mod advices;
mod completions;
mod issuance;
mod recovery;
mod rekey;
mod reversals;
pub(crate) mod snapshots;

pub use issuance::{CardError, CardView, IssueError, StatusChange};
pub use recovery::Recovered;
pub(crate) use recovery::holds_sealed_card_numbers;
pub use snapshots::{SnapshotPolicy, SnapshotReport, Snapshots};

/// The `[cards]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CardsConfig {
    /// PAN prefixes reserved for vPANs: an unknown PAN there is declined 14.
    pub virtual_ranges: Vec<String>,
    /// Digits kept from the real card: 6 or 8.
    pub bin_length: u8,
    /// Transactions that moved money remembered for reversals and repeats, at most (vpan's
    /// own declines, the issuer's and releases get a quarter of this again): about 250 bytes
    /// each, allocated at start.
    pub ledger_capacity: usize,
    /// How long a transaction can still be reversed or repeated through vpan, hours.
    pub ledger_retention_hours: u64,
}

impl Default for CardsConfig {
    fn default() -> CardsConfig {
        let ledger = LedgerConfig::default();
        CardsConfig {
            virtual_ranges: Vec::new(),
            bin_length: 6,
            ledger_capacity: ledger.capacity,
            ledger_retention_hours: ledger.retention_secs / 3_600,
        }
    }
}

impl CardsConfig {
    /// The ledger's bounds these settings give.
    pub fn ledger(&self) -> LedgerConfig {
        LedgerConfig {
            capacity: self.ledger_capacity,
            retention_secs: self.ledger_retention_hours.saturating_mul(3_600),
        }
    }
}

/// Why the cards could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A `cards.*` setting is wrong.
    #[error(transparent)]
    Config(#[from] RangeConfigError),
    /// The data directory, key, snapshot or journal could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Names an approval's hold, to complete it when the issuer answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hold {
    /// The card.
    pub card: CardKey,
    /// The transaction.
    pub tx: OriginalData,
}

/// An approval by vpan: forward to the issuer with the real card.
#[derive(Debug)]
pub struct Approval {
    /// Complete it with [`Cards::complete`] when the issuer answers.
    pub hold: Hold,
    /// The real PAN for DE 2 (and track 2) towards the issuer.
    pub real_pan: Pan,
    /// The real expiry for DE 14 towards the issuer.
    pub real_expiry: Expiry,
    /// The virtual expiry to put back into the answer.
    pub virtual_expiry: Expiry,
    /// Amount held, card currency.
    pub amount: u64,
    /// Resolves when the hold is durable; await it before answering the network, and on
    /// error answer 96 and call `complete(hold, IssuerOutcome::Failed)`.
    pub durable: Durable,
}

/// What a transaction key seen again with the same content gets. Nothing is counted again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Replay {
    /// The first answer's DE 39 (and DE 38), given again.
    Answer {
        /// DE 39.
        code: ResponseCode,
        /// DE 38, when the issuer's approval had one.
        auth: Option<AuthCode>,
        /// Who gave the first answer.
        decided_by: DecidedBy,
        /// A partial approval's DE 4 and DE 6 (10): what the issuer approved, given again
        /// in place of the request's.
        partial: Option<PartialAnswer>,
    },
    /// The first (or, in doubt, a repeat of it) is still with the issuer: ask again once
    /// it has answered (the switch waits, up to the issuer's timeout, and then replays that
    /// answer).
    Pending,
    /// The first was with the issuer when vpan stopped, and its answer is unknown here:
    /// the repeat goes to the issuer, which knows what it answered, and that answer (or
    /// none) goes to `settle_in_doubt` with this hold. Until then, further repeats get
    /// `Pending`.
    AskIssuer(Hold),
}

/// What `authorize` decided.
#[derive(Debug)]
pub enum Decision {
    /// Approved by vpan and held: forward to the issuer.
    Approve(Approval),
    /// Declined by vpan with this DE 39 (46, 54, 57, 61, 62; 94 for a conflicting repeat; 96
    /// when the journal has failed and nothing can be made durable).
    Decline(ResponseCode),
    /// A repeat: replay the first answer, count nothing.
    Replay(Replay),
    /// No card has this vPAN: 14 inside `virtual_ranges`, else pass through.
    Unknown,
    /// New work asked of a switch that admits only repeats ([`Admit::RepeatsOnly`]):
    /// nothing held, nothing recorded.
    NotAdmitted,
}

/// What [`Cards::authorize_admitting`] may take on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admit {
    /// Any request: new purchases are decided, repeats replayed.
    Any,
    /// Only repeats of transactions the ledger holds (a switch draining to stop): a new
    /// purchase is [`Decision::NotAdmitted`], decided under the card's lock with the ledger,
    /// so a transaction the ledger forgets meanwhile is not decided anew.
    RepeatsOnly,
}

/// What the issuer did with a forwarded approval.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IssuerOutcome {
    /// Approved with this DE 39 (and DE 38, when the answer has one): the hold becomes
    /// spent, and a use.
    Approved(ResponseCode, Option<AuthCode>),
    /// Approved in part (DE 39 10), for the answer's DE 4, less than the request's and in
    /// its currency (and DE 38, when the answer has one): the hold's proportion of it, or
    /// the answer's DE 6 when in the card's currency and more, becomes spent, and a use;
    /// the rest is released.
    ApprovedInPart {
        /// The answer's DE 4 (in the request's DE 49), and its DE 6 with DE 51 (the
        /// request's when the answer leaves it out; 0 when neither has one).
        amounts: Amounts,
        /// DE 38.
        auth: Option<AuthCode>,
    },
    /// Declined with this DE 39: the hold is released.
    Declined(ResponseCode),
    /// No answer in `issuer.timeout_ms` (the network got 91): released.
    TimedOut,
    /// vpan could not make the hold durable (the network got 96): released.
    Failed,
    /// A stand-in's advice reports it approved (00), the issuer's own answer unknown (a
    /// hold in doubt): spent, and a use, recorded as decided by the switch, since the
    /// issuer has not approved it that vpan knows: the advice is news to the issuer until
    /// it answers it.
    Advised,
    /// vpan answered this DE 39 itself, the issuer not asked or not in time (a request that
    /// does not fit the issuer's layout: 30; a repeat in doubt the issuer left unanswered:
    /// 91): released, and, settling a hold in doubt, given back.
    Refused(ResponseCode),
}

impl IssuerOutcome {
    /// Approved with 00 and no DE 38: what an advice reports, and what tests answer.
    pub const APPROVED: IssuerOutcome = IssuerOutcome::Approved(ResponseCode::APPROVED, None);
}

/// What a reversal did.
#[derive(Debug)]
pub enum ReversalOutcome {
    /// Gave back `returned` (card currency) of the original.
    Reversed {
        /// Amount given back.
        returned: u64,
        /// Resolves when the reversal is durable (losing it in a crash only keeps the
        /// amount spent: the safe side).
        durable: Durable,
    },
    /// The original was found but has nothing more to give back (a repeat, or it was
    /// declined or already reversed that far).
    NothingLeft {
        /// It stands (approved, held or in doubt), for what earlier reversals or a
        /// completion left of it: the issuer may have it. Not so for one vpan or the issuer
        /// declined or released, nor for a void.
        original_stands: bool,
    },
    /// No original on this card within the ledger's retention, and none named in DE 90.
    NotFound,
    /// No original on this card, and the reversal is a full one: the original it names (by
    /// DE 90, else by the reversal's own key, as an 0100 and as an 0200) is voided
    /// (recorded as declined, 94), so that if it arrives after its reversal it is not
    /// approved.
    Voided {
        /// Resolves when the void is durable.
        durable: Durable,
    },
    /// The store has failed: nothing was given back or recorded (answer 96).
    NotRecorded(StoreError),
    /// Another reversal took this one's own key, asking otherwise (another original,
    /// another amount left) or on another card: nothing given back (answer 94).
    KeyTaken,
}

/// What an advice did.
#[derive(Debug)]
pub enum AdviceOutcome {
    /// Recorded (spent, even over the cap: an advice cannot be declined).
    Recorded(Durable),
    /// Recorded, restating the issuer's own partial approval (10) of its request: the
    /// stand-in approved more, which is what the acquirer holds. The caller reverses the
    /// issuer's part there before telling it the advice, which it then books in its place
    /// (told beside it, the account would be charged both).
    InPlaceOfPart(Durable),
    /// The same advice (or the approval it reports) was recorded already, or one that
    /// restates it for less, or the resend of a restatement: nothing more to count.
    Repeat {
        /// The issuer has it already: it approved the request under the advice's key (an
        /// 0100 it answered 00) and no advice has restated it since, or it answered an
        /// advice of it 00. No news to it, and forwarded, an issuer that books advices
        /// would charge the account twice.
        issuer_has_it: bool,
    },
    /// Its transaction's request is with the issuer: nothing recorded. Ask again once the
    /// issuer has answered it (or its timeout released the hold), when what the advice
    /// reports is known to be news or not.
    Pending,
    /// Its transaction is held in doubt (with the issuer when vpan stopped), and the advice
    /// reports its money: nothing recorded. Whether the issuer approved it, and the advice
    /// is no news to it, is asked of it first with the request's repeat, whose answer (or
    /// none) goes to `settle_in_doubt` with this hold (where the issuer did not approve it,
    /// as the stand-in's approval: `IssuerOutcome::Advised`, the advice news to the
    /// issuer); then the advice is looked at again, when the answer decided it. Until then, the request's repeats and other advices of it are
    /// `Pending`.
    AskIssuer(Hold),
    /// The key is known on another card, for a refund where this is a purchase (or the
    /// reverse), or for another amount where nothing was counted or a reversal took part
    /// of it back: nothing recorded.
    Conflict,
    /// No card has this vPAN.
    Unknown,
}

/// The virtual cards: index, ledger, journal. Share it behind an `Arc`.
pub struct Cards {
    /// All cards.
    index: CardIndex,
    /// Recent transactions.
    ledger: Ledger,
    /// vPAN generation.
    generator: VpanGenerator,
    /// The journal writer.
    journal: Journal<Event>,
    /// The real card numbers behind the cards (as keys): no vPAN is drawn equal to one,
    /// or purchases on that real card would be taken for the virtual one's. Only added
    /// to: a number left here by a card whose issuance failed costs one draw, no more.
    real_keys: ConcurrentMap<CardKey, ()>,
    /// Which card each recent `Idempotency-Key` issued.
    requests: IssuanceRequests,
    /// Real PAN encryption.
    cipher: PanCipher,
    /// Next log sequence number.
    next_lsn: AtomicU64,
    /// The data directory.
    dir: PathBuf,
    /// The data directory's identity, written into its snapshots.
    store_id: StoreId,
    /// One snapshot at a time.
    snapshot_lock: Mutex<()>,
    /// The data directory's lock, held while open (released by the kernel on any exit).
    _dir_lock: std::fs::File,
    /// Journal records written when the last snapshot rotated the journal.
    records_at_snapshot: AtomicU64,
    /// Records replayed at the start that no snapshot covers yet (0 once one is taken):
    /// counted toward the next snapshot with those written since, or a switch restarted
    /// more often than it writes `snapshot_every_records` would never take one, and its
    /// journal and start time would grow for good.
    records_replayed_since_snapshot: AtomicU64,
}

/// Lookups the switch needs besides the decisions.
impl Cards {
    /// True when `vpan` was ever issued (closed cards too).
    pub fn contains(&self, vpan: CardKey) -> bool {
        self.index.contains(vpan)
    }

    /// Resolves once every record queued so far is durable (or with the error that fails
    /// closed). A repeat answered from memory waits on it: the record behind the first
    /// answer (an advice's, say) may still be queued, and the network must not hear an
    /// answer twice that a crash could take back.
    pub fn recorded_so_far(&self) -> Durable {
        self.journal.barrier()
    }

    /// The real card behind `vpan`: its PAN, its expiry, and the virtual expiry, for
    /// forwarding a message that is not decided here (advice, reversal).
    pub fn real_card(&self, vpan: CardKey) -> Option<(Pan, Expiry, Expiry)> {
        self.index.read(vpan, |c| {
            (c.real_pan.clone(), c.real_expiry, c.virtual_expiry())
        })
    }

    /// True when `pan` is inside `cards.virtual_ranges` (unknown there: 14).
    pub fn in_virtual_range(&self, pan: &[u8]) -> bool {
        self.generator.in_virtual_range(pan)
    }

    /// The cipher of the real card numbers, as loaded when the cards were opened: the
    /// owed reversals' book seals under the same key, and a second read of the key file
    /// would only say its warnings twice.
    pub fn cipher(&self) -> PanCipher {
        self.cipher.clone()
    }

    /// True once the journal failed, or while its disk is stalled (every decision is
    /// answered 96 then): `/healthz` reports the store down.
    pub fn store_failed(&self) -> bool {
        self.journal.is_failed() || self.journal.is_stalled()
    }

    /// Bytes in the current journal segment (to decide when to snapshot).
    pub fn journal_bytes(&self) -> u64 {
        self.journal.stats().segment_bytes.load(Ordering::Relaxed)
    }
}

impl Cards {
    fn lsn(&self) -> u64 {
        self.next_lsn.fetch_add(1, Ordering::Relaxed)
    }

    /// Decides an authorization or financial request (0100/0200 and repeats) on a vPAN.
    /// Synchronous: the lookup, the repeat check, the limits and the hold happen atomically
    /// under the card's lock, so racing requests never together exceed the cap.
    pub fn authorize(&self, card_key: CardKey, req: &AuthRequest, now: UnixSeconds) -> Decision {
        self.authorize_admitting(card_key, req, now, Admit::Any)
    }

    /// [`Cards::authorize`], taking on only what `admit` allows.
    pub fn authorize_admitting(
        &self,
        card_key: CardKey,
        req: &AuthRequest,
        now: UnixSeconds,
        admit: Admit,
    ) -> Decision {
        let fingerprint = req.fingerprint(card_key.raw());
        let tx = req.key.original();
        let mut fresh = false;
        let mut declined = false;
        let decision = self.index.update(card_key, |card| {
            if self.journal.is_failed() {
                // Nothing can be made durable: fail closed before holding anything, and
                // before replaying an answer whose records may not have reached the disk.
                // A switch that is stopping says so of new work, as it would otherwise.
                let new = || !self.ledger.entries.contains_key(&tx);
                return match admit {
                    Admit::RepeatsOnly if new() => Decision::NotAdmitted,
                    _ => Decision::Decline(ResponseCode::SYSTEM_ERROR),
                };
            }
            let slot = match self.ledger.entries.entry(tx) {
                dashmap::Entry::Occupied(mut e) => {
                    return replay_of(&self.ledger, tx, e.get_mut(), fingerprint);
                }
                dashmap::Entry::Vacant(_) if admit == Admit::RepeatsOnly => {
                    return Decision::NotAdmitted;
                }
                dashmap::Entry::Vacant(v) => v,
            };
            fresh = true;
            match limits::decide(card, req, now) {
                Verdict::Decline(reason) => {
                    let code = reason.code();
                    let t = self.record_decline(card, card_key, req, code, DecidedBy::Switch, now);
                    slot.insert(event::entry_of(&t, TxState::Declined, code));
                    declined = true;
                    Decision::Decline(code)
                }
                Verdict::Approve(terms) => {
                    let t = tx_event(
                        self.lsn(),
                        card_key,
                        tx,
                        fingerprint,
                        terms.amount,
                        terms.counts_use,
                        terms.binds_merchant,
                        req,
                        now,
                    );
                    let event = Event::Held(t);
                    // Queued before the change is seen in memory (here and in every
                    // change below): a snapshot that sees it then waits for its record.
                    let durable = self.journal.append(event.clone());
                    slot.insert(event::entry_of(&t, TxState::Held, ResponseCode::APPROVED));
                    event::apply_card(card, &event);
                    Decision::Approve(Approval {
                        hold: Hold { card: card_key, tx },
                        real_pan: card.real_pan.clone(),
                        real_expiry: card.real_expiry,
                        virtual_expiry: card.virtual_expiry(),
                        amount: terms.amount,
                        durable,
                    })
                }
            }
        });
        // A hold joins a retention queue once the issuer has answered it ([`Cards::complete`]):
        // until then it is never forgotten, and only then is it known to move money.
        if fresh && declined {
            self.ledger.remember_no_money(tx, now, now);
        }
        decision.unwrap_or(Decision::Unknown)
    }

    /// Records the issuer's answer to an approval: spent (and a use) or released. Answering
    /// a hold twice changes nothing the second time.
    pub fn complete(&self, hold: &Hold, outcome: IssuerOutcome, now: UnixSeconds) -> Durable {
        let mut filed_in = None;
        let durable = self
            .index
            .update(hold.card, |card| {
                let (durable, queue) =
                    self.complete_locked(card, hold, TxState::Held, outcome, now)?;
                filed_in = Some(queue);
                Some(durable)
            })
            .flatten()
            .unwrap_or_else(|| Durable::ready(Ok(())));
        if let Some(queue) = filed_in {
            // A release (the issuer's decline, its 91, a failure) moves no money: kept with
            // vpan's own declines, so that a flood of them (card testing the issuer, an
            // issuer down) pushes out no approval a reversal must still find. Told by the
            // entry while it was at hand, not looked up again.
            self.ledger.remember_in(queue, hold.tx, now, now);
        }
        durable
    }

    /// Records what the issuer answered to the repeat of a purchase in doubt
    /// (`Replay::AskIssuer`): approved, it stays spent and its answer is replayed from then
    /// on; declined, its amount and use are given back. `TimedOut` or `Failed` (no answer,
    /// or none that decides it) leave it in doubt and spent, for the next repeat to ask.
    /// But see [`Cards::settle_asked`]: a decline may leave it standing.
    pub fn settle_in_doubt(
        &self,
        hold: &Hold,
        outcome: IssuerOutcome,
        now: UnixSeconds,
    ) -> Durable {
        self.settle_asked(hold, outcome, false, now).0
    }

    /// [`Cards::settle_in_doubt`], and what it was settled as. A purchase in doubt that
    /// moved money whatever the issuer says (`stand_in_approved`: a stand-in's advice of it
    /// asked; or one the acquirer has reversed in part: an approval of it stood on the
    /// network) is not given back when the issuer declines the ask (it never had it) or
    /// leaves it unanswered once sent (`Refused`: the issuer link reverses whatever it does
    /// with it): it stays spent, for what stands of it, as the stand-in's approval
    /// (`Advised`), whose advice is news to the issuer. Given back, and the advice then
    /// recorded afresh, it would be counted and told whole again, the part reversed
    /// forgotten. So too when a stand-in's advice asked and the issuer approves in part
    /// (10): the stand-in approved what stands, which is what the acquirer holds and
    /// clearing presents; the caller reverses the issuer's part there, and tells it the
    /// advice (settled as the part, the advice would restate it, and the issuer book the
    /// advice beside its part). Decided under the card's lock, which a reversal takes too.
    pub fn settle_asked(
        &self,
        hold: &Hold,
        said: IssuerOutcome,
        stand_in_approved: bool,
        now: UnixSeconds,
    ) -> (Durable, IssuerOutcome) {
        let mut outcome = said;
        let durable = self
            .index
            .update(hold.card, |card| {
                let mut reversed_in_part = false;
                if let Some(mut e) = self.ledger.entries.get_mut(&hold.tx)
                    && e.card == hold.card
                {
                    e.asking = false;
                    reversed_in_part = e.reversed_in_part();
                }
                let not_approved =
                    matches!(said, IssuerOutcome::Declined(_) | IssuerOutcome::Refused(_));
                let in_part = matches!(said, IssuerOutcome::ApprovedInPart { .. });
                if (not_approved && (stand_in_approved || reversed_in_part))
                    || (in_part && stand_in_approved)
                {
                    outcome = IssuerOutcome::Advised;
                }
                if matches!(outcome, IssuerOutcome::TimedOut | IssuerOutcome::Failed) {
                    return None;
                }
                // As the stand-in's approval, its advice is news to the issuer, which does
                // not have the request standing (declined it, or the link reverses it): what
                // it books is the advice, which a reversal is to name from now on. The code
                // the network's own repeat was told, left unanswered (no stand-in's advice
                // asks), is 91, and so for its repeats from then on (the replay of what was
                // recorded), not 00: the link reverses at the issuer what it approved.
                let advice_booked = (outcome == IssuerOutcome::Advised).then_some(match said {
                    IssuerOutcome::Refused(c) if !stand_in_approved => c,
                    _ => ResponseCode::APPROVED,
                });
                self.complete_locked_as(card, hold, TxState::InDoubt, outcome, now, advice_booked)
                    .map(|(durable, _)| durable)
            })
            .flatten()
            .unwrap_or_else(|| Durable::ready(Ok(())));
        (durable, outcome)
    }

    /// [`Cards::complete`] (or [`Cards::settle_in_doubt`], `open` being `InDoubt`) under the
    /// card's lock; `None` when the hold is not in state `open` (any more), else its record
    /// and the retention queue the entry now belongs in.
    fn complete_locked(
        &self,
        card: &mut Card,
        hold: &Hold,
        open: TxState,
        outcome: IssuerOutcome,
        now: UnixSeconds,
    ) -> Option<(Durable, Queue)> {
        self.complete_locked_as(card, hold, open, outcome, now, None)
    }

    /// [`Cards::complete_locked`]; `advice_booked`: a purchase in doubt settled as the
    /// stand-in's approval whose advice is news to the issuer (`Advised` after an ask it
    /// did not approve), recorded under the advice's MTI ([`event::told_as_advice`]), the
    /// same rule replaying the record applies, with the code the network was told, which
    /// its repeats replay (00, or the 91 of a repeat the issuer left unanswered).
    fn complete_locked_as(
        &self,
        card: &mut Card,
        hold: &Hold,
        open: TxState,
        outcome: IssuerOutcome,
        now: UnixSeconds,
        advice_booked: Option<ResponseCode>,
    ) -> Option<(Durable, Queue)> {
        // One lookup of the entry, updated in place (card lock, then ledger shard).
        let mut e = self.ledger.entries.get_mut(&hold.tx)?;
        if e.card != hold.card || e.state != open {
            return None;
        }
        let in_doubt = open == TxState::InDoubt;
        let (approved, code, auth, decided_by) = match outcome {
            IssuerOutcome::Approved(c, auth) => (true, c, auth, DecidedBy::Issuer),
            IssuerOutcome::ApprovedInPart { auth, .. } => (
                true,
                ResponseCode::PARTIAL_APPROVAL,
                auth,
                DecidedBy::Issuer,
            ),
            IssuerOutcome::Declined(c) => (false, c, None, DecidedBy::Issuer),
            IssuerOutcome::TimedOut => (
                false,
                ResponseCode::ISSUER_UNAVAILABLE,
                None,
                DecidedBy::Switch,
            ),
            IssuerOutcome::Failed => (false, ResponseCode::SYSTEM_ERROR, None, DecidedBy::Switch),
            IssuerOutcome::Refused(c) => (false, c, None, DecidedBy::Switch),
            IssuerOutcome::Advised => (
                true,
                advice_booked.unwrap_or(ResponseCode::APPROVED),
                None,
                DecidedBy::Switch,
            ),
        };
        let part = match outcome {
            IssuerOutcome::ApprovedInPart { amounts, .. } => {
                spent_in_part(&e, &amounts, card.currency)
            }
            _ => None,
        };
        let mut held = event::hold_of(hold.tx, &e, self.lsn(), now);
        if advice_booked.is_some() {
            held.mti = advice_mti(held.mti);
        }
        let held_mti = held.mti;
        let event = Event::Outcome {
            hold: held,
            approved,
            in_doubt,
            code,
            auth,
            decided_by,
            part,
        };
        let durable = self.journal.append(event.clone());
        event::mark_outcome(&mut e, approved, code, auth, decided_by, event.lsn());
        if event::told_as_advice(in_doubt, approved, decided_by, held_mti) {
            e.mti = held_mti;
        }
        if let Some(part) = part {
            event::narrow_to_part(&self.ledger, hold.tx, &mut e, part, in_doubt);
        }
        let queue = e.retention_queue();
        drop(e);
        event::apply_card(card, &event);
        Some((durable, queue))
    }

    /// Journals a decline that moved no money and adds it to the card's history, under the
    /// card's lock. Not waited for: nothing is held, so it is answered at once; a crash
    /// before its batch is written loses only this history entry and the replay of its
    /// repeats (a repeat is then decided afresh).
    fn record_decline(
        &self,
        card: &mut Card,
        card_key: CardKey,
        req: &AuthRequest,
        code: ResponseCode,
        decided_by: DecidedBy,
        now: UnixSeconds,
    ) -> TxEvent {
        let fingerprint = req.fingerprint(card_key.raw());
        let tx = req.key.original();
        let t = tx_event(
            self.lsn(),
            card_key,
            tx,
            fingerprint,
            0,
            false,
            false,
            req,
            now,
        );
        let event = Event::Declined {
            tx: t,
            code,
            decided_by,
        };
        self.journal.append_detached(event.clone());
        event::apply_card(card, &event);
        t
    }
}

/// What a partial approval of `approved` (the answer's amounts) spends of `e`, a hold on a
/// card of `currency`: what it charged in the proportion of the approved DE 4, rounded up,
/// or the answer's DE 6 when that is in the card's currency and more (an issuer that
/// approves a balance and rounds DE 4 down, a fee); never more than the hold. `None`, spent
/// whole (the safe side), when no proportion can be taken: a request counted on its DE 6
/// (DE 4 of 0), or an approved DE 4 not below the request's. What stands of `e` then is
/// recorded with it, for replay: a reversal in part may have left less than that part.
fn spent_in_part(e: &TxEntry, approved: &Amounts, currency: u16) -> Option<ApprovedPart> {
    let de4 = approved.transaction;
    (e.original_amount > 0 && de4 < e.original_amount).then(|| {
        let spent = e
            .share_of(de4)
            .max(approved.counted_in(currency).unwrap_or(0))
            .min(e.charged);
        ApprovedPart {
            spent,
            stands: Some(event::stands_after_part(
                e.amount,
                e.charged,
                e.original_amount,
                spent,
                de4,
            )),
            answer: PartialAnswer {
                transaction: de4,
                billing: approved.billing.map(|(amount, _)| amount),
            },
        }
    })
}

/// What a repeat gets: the first answer, or 94 when the content differs.
/// A repeat of a purchase in doubt is asked of the issuer once at a time (`asking`).
fn replay_of(ledger: &Ledger, tx: OriginalData, e: &mut TxEntry, fingerprint: u64) -> Decision {
    if e.fingerprint != fingerprint {
        return Decision::Decline(ResponseCode::DUPLICATE);
    }
    Decision::Replay(match e.state {
        TxState::Held => Replay::Pending,
        // Reversed in full since: the network gave up on it, and the issuer, which may
        // never have had it, is not asked now to decide it afresh.
        TxState::InDoubt if e.charged > 0 && e.amount == 0 => Replay::Answer {
            code: ResponseCode::ISSUER_UNAVAILABLE,
            auth: None,
            decided_by: DecidedBy::Switch,
            partial: None,
        },
        TxState::InDoubt if e.asking => Replay::Pending,
        TxState::InDoubt => {
            e.asking = true;
            Replay::AskIssuer(Hold { card: e.card, tx })
        }
        // Approved, then taken back in full by the acquirer: its approval replayed, it
        // would stand on the network again while the card counts nothing of it (room for
        // another purchase of the whole cap). Not approved again, as in doubt above.
        TxState::Approved if e.charged > 0 && e.amount == 0 => Replay::Answer {
            code: ResponseCode::ISSUER_UNAVAILABLE,
            auth: None,
            decided_by: DecidedBy::Switch,
            partial: None,
        },
        TxState::Approved | TxState::Released => Replay::Answer {
            code: e.code,
            auth: e.auth,
            decided_by: e.decided_by,
            partial: e.partly_approved.then(|| ledger.partial(&tx)).flatten(),
        },
        TxState::Declined => Replay::Answer {
            code: e.code,
            auth: None,
            decided_by: DecidedBy::Switch,
            partial: None,
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn tx_event(
    lsn: u64,
    key: CardKey,
    tx: OriginalData,
    fingerprint: u64,
    amount: u64,
    counts_use: bool,
    binds_merchant: bool,
    req: &AuthRequest,
    now: UnixSeconds,
) -> TxEvent {
    TxEvent {
        lsn,
        key,
        tx,
        fingerprint,
        amount,
        original_amount: req.amounts.transaction,
        counts_use,
        binds_merchant,
        refund: req.kind == Kind::Refund,
        acceptor: req.acceptor,
        mti: req.mti,
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::LedgerConfig;
    use crate::cards::card::{CardSpec, Status};
    use crate::cards::request::test_purchase as purchase;
    use crate::store::StoreConfig;
    use crate::store::segment::sync_gate::{self, Gate};

    /// The cards of data directory `dir`, opened with the defaults.
    fn open_in(dir: &std::path::Path) -> Cards {
        open_with_ledger(dir, LedgerConfig::default())
    }

    /// The cards of data directory `dir`, with a ledger of these bounds.
    fn open_with_ledger(dir: &std::path::Path, ledger: LedgerConfig) -> Cards {
        let store = StoreConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        Cards::open(&CardsConfig::default(), &store, ledger)
            .map(|(cards, _)| cards)
            .expect("open")
    }

    /// `req` approved by vpan and answered `outcome` by the issuer, durably.
    fn decided(
        cards: &Cards,
        key: CardKey,
        req: &AuthRequest,
        now: UnixSeconds,
        outcome: IssuerOutcome,
    ) {
        let Decision::Approve(a) = cards.authorize(key, req, now) else {
            panic!("approved by vpan");
        };
        a.durable.wait().expect("durable");
        cards
            .complete(&a.hold, outcome, now)
            .wait()
            .expect("durable");
    }

    #[test]
    fn a_partial_approvals_answer_goes_with_its_entry_when_a_replayed_record_replaces_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let now = 1_800_000_000;
        let ledger = LedgerConfig {
            capacity: 2,
            retention_secs: 86_400,
        };
        let cards = open_with_ledger(dir.path(), ledger);
        let (view, durable) = cards.issue(&a_card_spec(now), now).expect("issued");
        durable.wait().expect("durable");
        let key = CardKey::of(&view.vpan);
        let k = purchase(10_000, 1).key.original();
        let in_part = IssuerOutcome::ApprovedInPart {
            amounts: Amounts {
                transaction: 6_000,
                transaction_currency: 978,
                billing: None,
            },
            auth: None,
        };
        decided(&cards, key, &purchase(10_000, 1), now, in_part);
        cards.snapshot().expect("a snapshot");
        // Forgotten for room, and its key used again: approved whole.
        for stan in 2..=3 {
            decided(
                &cards,
                key,
                &purchase(100, stan),
                now,
                IssuerOutcome::APPROVED,
            );
        }
        assert_eq!(cards.ledger.partials_len(), 0, "forgotten with its entry");
        decided(&cards, key, &purchase(100, 1), now, IssuerOutcome::APPROVED);
        drop(cards);
        // The snapshot's entry, then the journal's record of the new one over it.
        let cards = open_with_ledger(dir.path(), ledger);
        assert!(cards.ledger.get(&k).is_some_and(|e| !e.partly_approved));
        assert_eq!(cards.ledger.partials_len(), 0, "not left behind");
    }

    /// A card on a fresh real card number, 100.00 cap, valid a day from `now`. Of BIN
    /// 497010, under 4970100: never in the virtual range 4970109 a test reserves (drawn
    /// from 497010 alone, one card in ten fell there and was refused as a vPAN).
    fn a_card_spec(now: UnixSeconds) -> CardSpec {
        let real =
            Pan::from_digits_checked(crate::cards::vpan::random_luhn("4970100", 16).as_bytes())
                .expect("test PAN");
        crate::cards::card::test_spec(real, 10_000, now + 86_400)
    }

    /// Reviews of a07ad5e and 15f5891: a card refused (its number a vPAN, in a range, or
    /// of a BIN no range is for) left its number among the real cards draws avoid, for
    /// good; a real card issued stays there.
    #[test]
    fn a_card_refused_leaves_nothing_among_the_real_cards_draws_avoid() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let config = CardsConfig {
            virtual_ranges: vec!["4970109".into()],
            ..Default::default()
        };
        let (cards, _) = Cards::open(&config, &store, LedgerConfig::default()).expect("open");
        let now = 1_800_000_000;
        let issued = cards.issue(&a_card_spec(now), now).expect("issued").0;
        assert_eq!(cards.real_keys.len(), 1);
        let refused = |digits: &str| {
            let pan = Pan::from_digits_checked(digits.as_bytes()).expect("test PAN");
            let spec = crate::cards::card::test_spec(pan, 10_000, now + 86_400);
            assert!(cards.issue(&spec, now).is_err());
        };
        refused(issued.vpan.expose());
        refused(&crate::cards::vpan::random_luhn("49701091", 16));
        refused(&crate::cards::vpan::random_luhn("411111", 16));
        assert_eq!(cards.real_keys.len(), 1);
    }

    #[tokio::test]
    async fn an_issuance_a_stalled_disk_may_still_take_keeps_its_number_and_is_listed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_in(dir.path());
        let cards = open();
        let now = 1_800_000_000;
        let spec = a_card_spec(now);
        let held = sync_gate::set(dir.path(), Gate::Held);
        let refused = cards.issue_durable(&spec, now).await;
        assert!(
            matches!(refused, Err(IssueError::Store(StoreError::Stalled(_)))),
            "{refused:?}"
        );
        let listed = cards.list(None, 10);
        assert_eq!(
            listed.len(),
            1,
            "kept, and listed, while its record may land"
        );
        let vpan = listed[0].vpan.clone();
        // The disk answers again: the record lands, and a restart finds the same card.
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = cards.recorded_so_far().await {
            assert!(std::time::Instant::now() < deadline, "still {e:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(cards);
        let reopened = open();
        let listed = reopened.list(None, 10);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].vpan, vpan);
    }

    #[tokio::test]
    async fn a_key_issues_one_card_answers_it_to_its_request_only_and_survives_restarts_and_snapshots()
     {
        use crate::cards::requests::{Earlier, RequestKey};
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_in(dir.path());
        let cards = open();
        // The clock's time, not a fixed one: a start brings back the keys of the cards
        // issued in the last day by the clock, so with its card made at a fixed
        // 2027-01-15 this test failed from the day after.
        let now = crate::cards::card::unix_now();
        let spec = a_card_spec(now);
        let key = RequestKey::of(b"order-17");
        let view = cards
            .issue_durable_under(&spec, now, Some(key))
            .await
            .expect("issued");
        let card = CardKey::of(&view.vpan);
        let issued = Earlier::Issued(card, now);
        // The key is taken: the same request draws no second card.
        let twin = cards.issue_durable_under(&spec, now, Some(key)).await;
        assert_eq!(twin, Err(IssueError::KeyTaken(issued)));
        assert_eq!(cards.len(), 1);
        let again = cards
            .issued_again(card, &spec)
            .await
            .expect("answered again");
        assert_eq!(again.vpan, view.vpan);
        // Another real card, cap or validity under the key is another request.
        let mut other_cap = spec.clone();
        other_cap.controls.amount_limit += 1;
        let other_card = a_card_spec(now);
        for other in [&other_cap, &other_card] {
            let reused = cards.issued_again(card, other).await;
            assert_eq!(reused, Err(IssueError::KeyReused));
        }
        // Known after a restart from the journal, then from a snapshot alone.
        drop(cards);
        let cards = open();
        assert_eq!(cards.earlier_request(&key, now), Some(issued));
        cards.snapshot().expect("snapshot");
        drop(cards);
        let cards = open();
        assert_eq!(cards.earlier_request(&key, now), Some(issued));
        assert_eq!(cards.issued_again(card, &spec).await, Ok(again));
        // A card issued without a key carries none.
        let (plain, durable) = cards.issue(&a_card_spec(now), now).expect("issued");
        durable.await.expect("durable");
        let plain = CardKey::of(&plain.vpan);
        assert!(
            cards
                .index
                .read(plain, |c| c.request_key.is_none())
                .expect("card")
        );
    }

    #[tokio::test]
    async fn a_key_is_known_a_day_across_restarts_and_given_back_by_a_failed_issuance() {
        use crate::cards::requests::{KEPT_FOR, RequestKey};
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_in(dir.path());
        let cards = open();
        let now = crate::cards::card::unix_now();
        let (old, recent) = (RequestKey::of(b"old"), RequestKey::of(b"recent"));
        for (key, at) in [(old, now - KEPT_FOR - 1), (recent, now - KEPT_FOR + 600)] {
            let spec = a_card_spec(now);
            cards
                .issue_durable_under(&spec, at, Some(key))
                .await
                .expect("issued");
        }
        drop(cards);
        let cards = open();
        assert_eq!(
            cards.requests.len(),
            1,
            "the day-old key is not brought back"
        );
        assert!(cards.earlier_request(&old, now).is_none());
        assert!(cards.earlier_request(&recent, now).is_some());
        // The store fails: no card, and the key may be used again (after the restart
        // every failure asks for).
        let failing = RequestKey::of(b"failing");
        let gate = sync_gate::set(dir.path(), Gate::Failing);
        let failed = cards
            .issue_durable_under(&a_card_spec(now), now, Some(failing))
            .await;
        assert!(matches!(failed, Err(IssueError::Store(_))), "{failed:?}");
        assert_eq!(cards.earlier_request(&failing, now), None);
        drop(gate);
    }

    #[tokio::test]
    async fn a_key_whose_card_the_disk_stalled_on_gets_that_card_once_the_disk_takes_it() {
        use crate::cards::requests::{Earlier, RequestKey};
        let dir = tempfile::tempdir().expect("temp dir");
        let cards = open_in(dir.path());
        let now = 1_800_000_000;
        let spec = a_card_spec(now);
        let key = RequestKey::of(b"stalled");
        let held = sync_gate::set(dir.path(), Gate::Held);
        let stalled = cards.issue_durable_under(&spec, now, Some(key)).await;
        assert!(
            matches!(stalled, Err(IssueError::Store(StoreError::Stalled(_)))),
            "{stalled:?}"
        );
        let Some(Earlier::Issued(card, _)) = cards.earlier_request(&key, now) else {
            panic!("the key names the card the stall may still record");
        };
        // Sent again while the disk still stalls: not answered as issued, nor drawn again.
        let early = cards.issued_again(card, &spec).await;
        assert!(
            matches!(early, Err(IssueError::Store(StoreError::Stalled(_)))),
            "{early:?}"
        );
        // The disk answers again: the record lands, and the request gets its card.
        drop(held);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = cards.recorded_so_far().await {
            assert!(std::time::Instant::now() < deadline, "still {e:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let again = cards.issued_again(card, &spec).await;
        assert_eq!(again.map(|v| CardKey::of(&v.vpan)), Ok(card));
        assert_eq!(cards.len(), 1);
    }

    /// A snapshot record as read back, written again as it is.
    struct Raw(Vec<u8>);

    impl crate::store::journal::Encode for Raw {
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0);
        }
    }

    #[test]
    fn numbering_goes_on_past_the_snapshots_cards_even_when_its_header_is_behind_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_in(dir.path());
        let now = 1_800_000_000;
        let spec = a_card_spec(now);
        let cards = open();
        let (view, durable) = cards.issue(&spec, now).expect("issued");
        durable.wait().expect("durable");
        let key = CardKey::of(&view.vpan);
        for status in [Status::Paused, Status::Active] {
            let (_, durable) = cards.set_status(key, status).expect("set");
            durable.wait().expect("durable");
        }
        cards.snapshot().expect("snapshot");
        drop(cards);
        // The snapshot's header names a next number behind its card's (as when the card
        // changed while the snapshot walked, and the journal record of that change is lost).
        let mut records = Vec::new();
        crate::store::snapshot::read(dir.path(), |p| {
            records.push(p.to_vec());
            Ok(())
        })
        .expect("read");
        records[0][10..18].copy_from_slice(&1u64.to_le_bytes());
        let mut w = crate::store::snapshot::SnapshotWriter::create(dir.path()).expect("writer");
        for r in records {
            w.write(&Raw(r)).expect("write");
        }
        w.commit().expect("commit");
        // A change after the restart must survive the next one: numbered below the card's
        // own number, replay would skip it.
        let cards = open();
        let (_, durable) = cards.set_status(key, Status::Paused).expect("pause");
        durable.wait().expect("durable");
        drop(cards);
        let cards = open();
        assert_eq!(cards.get(key).expect("card").status, Status::Paused);
    }
    /// Rewrites the snapshot in `dir` with `edit` applied to its records, as read back.
    fn rewrite_snapshot(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let mut records = Vec::new();
        crate::store::snapshot::read(dir, |p| {
            records.push(p.to_vec());
            Ok(())
        })
        .expect("read");
        edit(&mut records);
        let mut w = crate::store::snapshot::SnapshotWriter::create(dir).expect("writer");
        for r in records {
            w.write(&Raw(r)).expect("write");
        }
        w.commit().expect("commit");
    }

    fn open_error(dir: &std::path::Path) -> String {
        let store = StoreConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        match Cards::open(&CardsConfig::default(), &store, LedgerConfig::default()) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_snapshot_cut_short_at_a_records_boundary_is_refused_and_a_version_2_one_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = 1_800_000_000;
        let cards = open_in(dir.path());
        for _ in 0..3 {
            let (_, durable) = cards.issue(&a_card_spec(now), now).expect("issued");
            durable.wait().expect("durable");
        }
        let report = cards.snapshot().expect("snapshot");
        assert_eq!(report.cards, 3);
        drop(cards);
        let whole = std::fs::read(dir.path().join("snapshot.bin")).expect("snapshot");

        // The end record lost: every record left passes its checksum.
        rewrite_snapshot(dir.path(), |r| {
            r.pop();
        });
        let e = open_error(dir.path());
        assert!(e.contains("incomplete") && e.contains("3 cards"), "{e}");
        // A card lost before it: the counts disagree.
        std::fs::write(dir.path().join("snapshot.bin"), &whole).expect("restore");
        rewrite_snapshot(dir.path(), |r| {
            r.remove(1);
        });
        let e = open_error(dir.path());
        assert!(e.contains("2 cards") && e.contains("counts 3"), "{e}");
        // A record after the end record.
        std::fs::write(dir.path().join("snapshot.bin"), &whole).expect("restore");
        rewrite_snapshot(dir.path(), |r| r.push(r[1].clone()));
        let e = open_error(dir.path());
        assert!(e.contains("follow its end record"), "{e}");

        // Whole, it opens; so does one written by a vpan before the end record (version 2).
        std::fs::write(dir.path().join("snapshot.bin"), &whole).expect("restore");
        assert_eq!(open_in(dir.path()).list(None, 10).len(), 3);
        rewrite_snapshot(dir.path(), |r| {
            r.pop();
            r[0][1] = 2;
        });
        assert_eq!(open_in(dir.path()).list(None, 10).len(), 3);
    }

    #[test]
    fn a_snapshot_from_another_data_directory_sharing_the_key_is_refused_and_nothing_deleted() {
        use crate::store::identity;
        use crate::store::journal::list_segments;
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let now = 1_800_000_000;
        let issue = |cards: &Cards, n: usize| {
            for _ in 0..n {
                let (_, durable) = cards.issue(&a_card_spec(now), now).expect("issued");
                durable.wait().expect("durable");
            }
        };
        // A: two cards in its snapshot, a third in its journal only.
        let cards = open_in(a.path());
        issue(&cards, 2);
        cards.snapshot().expect("snapshot");
        issue(&cards, 1);
        drop(cards);
        // B, under A's key (one key file provisioned for both): one card, two snapshots.
        std::fs::copy(a.path().join("pan.key"), b.path().join("pan.key")).expect("key");
        let cards = open_in(b.path());
        issue(&cards, 1);
        cards.snapshot().expect("snapshot");
        cards.snapshot().expect("snapshot");
        drop(cards);
        let (own, foreign) = (
            identity::read(a.path(), None)
                .expect("a's")
                .expect("made at first start"),
            identity::read(b.path(), None)
                .expect("b's")
                .expect("made at first start"),
        );
        assert_ne!(own, foreign);

        // B's snapshot restored into A by mistake: refused, naming both stores, and A's
        // journal (its third card's only copy) left whole.
        let segments = list_segments(a.path()).expect("list");
        let a_snapshot = std::fs::read(a.path().join("snapshot.bin")).expect("a's snapshot");
        std::fs::copy(b.path().join("snapshot.bin"), a.path().join("snapshot.bin"))
            .expect("mix-up");
        let e = open_error(a.path());
        assert!(
            e.contains("written in another data directory")
                && e.contains(&format!("store {foreign}; this one is store {own}")),
            "{e}"
        );
        assert_eq!(list_segments(a.path()).expect("list"), segments);
        // Its own snapshot back, A opens with all three.
        std::fs::write(a.path().join("snapshot.bin"), &a_snapshot).expect("put back");
        assert_eq!(open_in(a.path()).list(None, 10).len(), 3);

        // Without store.id, a snapshot that names its store is not taken on trust.
        std::fs::remove_file(identity::path(a.path())).expect("lose store.id");
        let e = open_error(a.path());
        assert!(
            e.contains(&format!("names store {own}")) && e.contains("no store.id"),
            "{e}"
        );
        identity::write(a.path(), own).expect("restore store.id");
        assert_eq!(open_in(a.path()).list(None, 10).len(), 3);

        // A snapshot of a vpan before identities (version 4, no id) in a directory without
        // one: read, and the directory given one.
        std::fs::remove_file(identity::path(a.path())).expect("as before identities");
        rewrite_snapshot(a.path(), |r| {
            r[0][1] = 4;
            let without_id = r[0].len() - 16;
            r[0].truncate(without_id);
        });
        assert_eq!(open_in(a.path()).list(None, 10).len(), 3);
        assert!(identity::read(a.path(), None).expect("read").is_some());

        // A version this vpan does not read is named, with the file.
        rewrite_snapshot(a.path(), |r| r[0][1] = 9);
        let e = open_error(a.path());
        assert!(
            e.contains(&format!(
                "{}: the snapshot is in format version 9",
                a.path().join("snapshot.bin").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_start_cuts_the_zeros_a_killed_start_left_after_its_records() {
        use crate::store::journal::{list_segments, segment_path};
        let dir = tempfile::tempdir().expect("temp dir");
        let now = 1_800_000_000;
        let cards = open_in(dir.path());
        let (view, durable) = cards.issue(&a_card_spec(now), now).expect("issued");
        durable.wait().expect("durable");
        drop(cards);
        // As if killed rather than stopped: the segment keeps the zeros written ahead of
        // its records (a stop cuts them).
        let last = *list_segments(dir.path())
            .expect("list")
            .last()
            .expect("a segment");
        let path = segment_path(dir.path(), last);
        let zeroed = crate::store::segment::EXTENT_BYTES;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(zeroed))
            .expect("zeros after the records");

        let cards = open_in(dir.path());
        let cut = std::fs::metadata(&path).expect("segment").len();
        assert!(cut > 0 && cut < zeroed, "cut to its records: {cut} bytes");
        assert!(
            cards.get(CardKey::of(&view.vpan)).is_some(),
            "its card read back"
        );
    }
}
