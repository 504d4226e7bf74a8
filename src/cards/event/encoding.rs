//! The byte layout of journal records: a tag byte, then little-endian fields; every read
//! is checked, and a short, padded or unknown record is refused, never guessed at.

use std::num::{NonZeroU32, NonZeroU64};

use crate::cards::card::{AcceptorId, CardKey, Controls, Expiry, Status};
use crate::cards::history::DecidedBy;
use crate::cards::ledger::PartialAnswer;
use crate::cards::request::{OriginalData, ResponseCode};
use crate::cards::requests::RequestKey;
use crate::store::StoreError;
use crate::store::journal::Encode;

use super::{ApprovedPart, Event, Issued, TxEvent, legacy_decided_by};

const TAG_ISSUED: u8 = 1;
const TAG_STATUS: u8 = 2;
const TAG_HELD: u8 = 3;
const TAG_OUTCOME: u8 = 4;
const TAG_REVERSED: u8 = 5;
const TAG_ADVISED: u8 = 6;
const TAG_IN_DOUBT: u8 = 7;
const TAG_DECLINED: u8 = 8;
const TAG_VOIDED: u8 = 9;
/// Also a snapshot's record of a reversal's key, as the journal has it.
pub(crate) const TAG_REVERSAL_SEEN: u8 = 14;
/// Snapshot records.
pub(crate) const TAG_SNAP_HEADER: u8 = 10;
pub(crate) const TAG_SNAP_CARD: u8 = 11;
pub(crate) const TAG_SNAP_TX: u8 = 12;
pub(crate) const TAG_SNAP_END: u8 = 13;

/// Little-endian writer helpers.
pub(crate) trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn bytes(&mut self, v: &[u8]);
    /// A byte that says whether there is a value (1) or not (0), then the value, if any.
    fn option<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.u8(1);
                put(self, v);
            }
            None => self.u8(0),
        }
    }
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
    /// What [`Put::option`] wrote, `get` reading the value; `None` when damaged.
    pub(crate) fn option<T>(
        &mut self,
        get: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => get(self).map(Some),
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

/// A partial approval's amounts: DE 4, then DE 6 if there is one.
pub(crate) fn put_partial_answer(out: &mut Vec<u8>, a: &PartialAnswer) {
    out.u64(a.transaction);
    out.option(a.billing, |out, b| out.u64(b));
}

pub(crate) fn get_partial_answer(g: &mut Get<'_>) -> Option<PartialAnswer> {
    Some(PartialAnswer {
        transaction: g.u64()?,
        billing: g.option(|g| g.u64())?,
    })
}

pub(crate) fn put_acceptor(out: &mut Vec<u8>, a: Option<AcceptorId>) {
    out.option(a, |out, a| out.extend_from_slice(&a.0));
}

pub(crate) fn get_acceptor(g: &mut Get<'_>) -> Option<Option<AcceptorId>> {
    g.option(|g| g.array().map(AcceptorId))
}

/// Set in a transaction record's flags when bit 2 says whether it is a refund.
const TX_REFUND_RECORDED: u8 = 1 << 3;
/// Set in an advice record's flags when it restates a transaction (`Event::Restated`).
const TX_RESTATES: u8 = 1 << 4;

fn put_txevent(out: &mut Vec<u8>, t: &TxEvent) {
    put_txevent_flagged(out, t, 0);
}

/// [`put_txevent`] with `extra_flags` set in its flags.
fn put_txevent_flagged(out: &mut Vec<u8>, t: &TxEvent, extra_flags: u8) {
    out.u64(t.lsn);
    out.u64(t.key.raw());
    put_tx(out, &t.tx);
    out.u64(t.fingerprint);
    out.u64(t.amount);
    out.u64(t.original_amount);
    // Bits 2 and 3 came later: bit 3 says bit 2 was written.
    out.u8(u8::from(t.counts_use)
        | u8::from(t.binds_merchant) << 1
        | u8::from(t.refund) << 2
        | TX_REFUND_RECORDED
        | extra_flags);
    put_acceptor(out, t.acceptor);
    out.extend_from_slice(&t.mti);
    out.u64(t.at);
}

fn get_txevent(g: &mut Get<'_>) -> Option<TxEvent> {
    get_txevent_flagged(g).map(|(t, _)| t)
}

/// [`get_txevent`], with the record's flags.
fn get_txevent_flagged(g: &mut Get<'_>) -> Option<(TxEvent, u8)> {
    let lsn = g.u64()?;
    let key = g.key()?;
    let tx = get_tx(g)?;
    let fingerprint = g.u64()?;
    let amount = g.u64()?;
    let original_amount = g.u64()?;
    let flags = g.u8()?;
    let counts_use = flags & 1 != 0;
    let t = TxEvent {
        lsn,
        key,
        tx,
        fingerprint,
        amount,
        original_amount,
        counts_use,
        binds_merchant: flags & 2 != 0,
        // Bit 2 set is a refund whatever wrote it (one build wrote it without bit 3).
        // Written before the flag was: a refund charged nothing and counted no use, on an
        // amount that is not 0 (a verification's is). vpan's own declines look so too,
        // which the advice rule does not ask.
        refund: flags & 4 != 0
            || (flags & TX_REFUND_RECORDED == 0
                && amount == 0
                && !counts_use
                && original_amount > 0),
        acceptor: get_acceptor(g)?,
        mti: g.array()?,
        at: g.u64()?,
    };
    Some((t, flags))
}

pub(crate) fn put_controls(out: &mut Vec<u8>, c: &Controls) {
    out.u16(c.currency);
    out.u64(c.amount_limit);
    out.u64(c.per_transaction_limit.map_or(0, NonZeroU64::get));
    out.u32(c.max_uses.map_or(0, NonZeroU32::get));
    out.u64(c.valid_until);
    match c.merchant_lock {
        crate::cards::card::MerchantLock::None => out.u8(0),
        crate::cards::card::MerchantLock::FirstUse => out.u8(1),
        crate::cards::card::MerchantLock::Acceptor(a) => {
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
            0 => crate::cards::card::MerchantLock::None,
            1 => crate::cards::card::MerchantLock::FirstUse,
            2 => crate::cards::card::MerchantLock::Acceptor(AcceptorId(g.array()?)),
            _ => return None,
        },
        mcc_allow: get_mccs(g)?,
        mcc_block: get_mccs(g)?,
    })
}

pub(super) fn put_mccs(out: &mut Vec<u8>, list: &[u16]) {
    out.u16(list.len() as u16);
    for &m in list {
        out.u16(m);
    }
}

pub(super) fn get_mccs(g: &mut Get<'_>) -> Option<Vec<u16>> {
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
                // Last, and only when there is one (since 2026-12-07), as a snapshot's card.
                if let Some(key) = &i.request_key {
                    out.extend_from_slice(&key.0);
                }
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
                part,
            } => {
                out.u8(TAG_OUTCOME);
                put_txevent(out, hold);
                // Each in a bit of its own: records from before `in_doubt` read as not in
                // doubt; those from before `decided_by` (no `DECIDED_BY_RECORDED`) read it
                // from the code; those from before partial approvals have no `PARTIAL`.
                out.u8(u8::from(*approved)
                    | u8::from(*in_doubt) << 1
                    | u8::from(*decided_by == DecidedBy::Switch) << 2
                    | OUTCOME_DECIDED_BY_RECORDED
                    | if part.is_some() { OUTCOME_PARTIAL } else { 0 }
                    | if part.is_some_and(|p| p.stands.is_some()) {
                        OUTCOME_STANDS
                    } else {
                        0
                    });
                out.extend_from_slice(&code.0);
                if let Some(part) = part {
                    out.u64(part.spent);
                    put_partial_answer(out, &part.answer);
                    if let Some(stands) = part.stands {
                        out.u64(stands);
                    }
                }
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
            Event::Restated(t) => {
                out.u8(TAG_ADVISED);
                put_txevent_flagged(out, t, TX_RESTATES);
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
            Event::ReversalSeen {
                lsn,
                key,
                reversal,
                fingerprint,
                at,
            } => {
                out.u8(TAG_REVERSAL_SEEN);
                out.u64(*lsn);
                out.u64(key.raw());
                put_tx(out, reversal);
                out.u64(*fingerprint);
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
                request_key: g.optional_tail()?.map(RequestKey),
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
                let approved = flags & 1 != 0;
                // A part is spent only of an approval, and what stands is a part's.
                let part_of_no_approval = flags & OUTCOME_PARTIAL != 0 && !approved;
                let stands_of_no_part = flags & OUTCOME_STANDS != 0 && flags & OUTCOME_PARTIAL == 0;
                if flags >= OUTCOME_STANDS << 1 || part_of_no_approval || stands_of_no_part {
                    return None;
                }
                let code = ResponseCode(g.array()?);
                let part = if flags & OUTCOME_PARTIAL != 0 {
                    Some(ApprovedPart {
                        spent: g.u64()?,
                        answer: get_partial_answer(&mut g)?,
                        stands: if flags & OUTCOME_STANDS != 0 {
                            Some(g.u64()?)
                        } else {
                            None
                        },
                    })
                } else {
                    None
                };
                Event::Outcome {
                    hold,
                    approved,
                    in_doubt: flags & 2 != 0,
                    code,
                    part,
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
            TAG_ADVISED => match get_txevent_flagged(&mut g)? {
                (t, flags) if flags & TX_RESTATES != 0 => Event::Restated(t),
                (t, _) => Event::Advised(t),
            },
            TAG_IN_DOUBT => Event::InDoubt(get_txevent(&mut g)?),
            TAG_VOIDED => Event::Voided {
                lsn: g.u64()?,
                key: g.key()?,
                tx: get_tx(&mut g)?,
                mti: g.array()?,
                at: g.u64()?,
            },
            TAG_REVERSAL_SEEN => Event::ReversalSeen {
                lsn: g.u64()?,
                key: g.key()?,
                reversal: get_tx(&mut g)?,
                fingerprint: g.u64()?,
                at: g.u64()?,
            },
            TAG_DECLINED => {
                let (mut tx, flags) = get_txevent_flagged(&mut g)?;
                if flags & TX_REFUND_RECORDED == 0 && flags & 4 == 0 {
                    // Written before the flag was: vpan's own declines charged nothing and
                    // counted no use, as a refund did, so that guess does not hold here (a
                    // card's history would list them as refunds).
                    tx.refund = false;
                }
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

/// Set in an outcome record's flags when the bit before it says who decided.
const OUTCOME_DECIDED_BY_RECORDED: u8 = 1 << 3;
/// An outcome's flag: a partial approval, whose [`ApprovedPart`] follows the code.
const OUTCOME_PARTIAL: u8 = 1 << 4;
/// An outcome's flag: its part says what stands (`ApprovedPart::stands`), after its
/// answer's amounts. Records from before 2026-12-07 have no such bit.
const OUTCOME_STANDS: u8 = 1 << 5;

/// Who decided, from bit `bit` of `flags`, when `recorded` says the record has it.
pub(super) fn recorded_decided_by(flags: u8, bit: u8, recorded: u8) -> Option<DecidedBy> {
    (flags & recorded != 0).then_some(if flags & (1 << bit) != 0 {
        DecidedBy::Switch
    } else {
        DecidedBy::Issuer
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::event::entry_of;
    use crate::cards::event::snapshot::{SNAP_TX_DECIDED_BY_RECORDED, SnapTx, decode_snap_tx};
    use crate::cards::ledger::TxState;

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
            refund: false,
            acceptor: AcceptorId::new(b"SHOP-A"),
            mti: *b"0100",
            at: 1_795_706_982,
        }
    }

    /// The issuer's partial approval of `tx_event`'s hold (in doubt, or not), without DE 38.
    fn partly_approved(in_doubt: bool) -> Event {
        Event::Outcome {
            hold: tx_event(),
            approved: true,
            in_doubt,
            code: ResponseCode::PARTIAL_APPROVAL,
            auth: None,
            decided_by: DecidedBy::Issuer,
            part: Some(ApprovedPart {
                spent: 1,
                stands: Some(1),
                answer: PartialAnswer {
                    transaction: 2,
                    billing: None,
                },
            }),
        }
    }

    #[test]
    fn every_event_decodes_to_what_was_encoded() {
        let events = vec![
            Event::Held(tx_event()),
            Event::Advised(tx_event()),
            Event::Restated(tx_event()),
            // A partial approval, its DE 38 after its part, one as written before what
            // stands was recorded, and one without DE 38.
            Event::Outcome {
                hold: tx_event(),
                approved: true,
                in_doubt: false,
                code: ResponseCode::PARTIAL_APPROVAL,
                auth: Some(*b"A1B2C3"),
                decided_by: DecidedBy::Issuer,
                part: Some(ApprovedPart {
                    spent: 558,
                    stands: Some(557),
                    answer: PartialAnswer {
                        transaction: 600,
                        billing: Some(560),
                    },
                }),
            },
            Event::Outcome {
                hold: tx_event(),
                approved: true,
                in_doubt: true,
                code: ResponseCode::PARTIAL_APPROVAL,
                auth: Some(*b"A1B2C3"),
                decided_by: DecidedBy::Issuer,
                part: Some(ApprovedPart {
                    spent: 558,
                    stands: None,
                    answer: PartialAnswer {
                        transaction: 600,
                        billing: None,
                    },
                }),
            },
            partly_approved(true),
            Event::Outcome {
                hold: tx_event(),
                approved: true,
                in_doubt: false,
                code: ResponseCode::APPROVED,
                auth: Some(*b"A1B2C3"),
                decided_by: DecidedBy::Issuer,
                part: None,
            },
            Event::Outcome {
                hold: tx_event(),
                approved: false,
                in_doubt: false,
                code: ResponseCode(*b"05"),
                auth: None,
                decided_by: DecidedBy::Issuer,
                part: None,
            },
            Event::Outcome {
                hold: tx_event(),
                approved: false,
                in_doubt: true,
                code: ResponseCode(*b"51"),
                auth: None,
                decided_by: DecidedBy::Issuer,
                part: None,
            },
            Event::Outcome {
                hold: tx_event(),
                approved: false,
                in_doubt: false,
                code: ResponseCode::ISSUER_UNAVAILABLE,
                auth: None,
                decided_by: DecidedBy::Switch,
                part: None,
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
            Event::ReversalSeen {
                lsn: 9,
                key: key(),
                reversal: tx_event().tx,
                fingerprint: 0xfeed,
                at: 7,
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
            part: None,
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

    /// The snapshot format these tests write.
    const SNAP: u8 = crate::cards::vault::snapshots::SNAPSHOT_VERSION;

    #[test]
    fn a_snapshots_ledger_entry_keeps_a_partial_approvals_answer_and_a_version_3_one_has_none() {
        let tx = tx_event();
        let read = |buf: &[u8], version| {
            let mut g = Get(&buf[1..]);
            let e = decode_snap_tx(&mut g, version).map(|(_, e, partial)| (e, partial));
            e.filter(|_| g.0.is_empty())
        };
        for partial in [
            None,
            Some(PartialAnswer {
                transaction: 600,
                billing: None,
            }),
            Some(PartialAnswer {
                transaction: 600,
                billing: Some(559),
            }),
        ] {
            for auth in [None, Some(*b"A1B2C3")] {
                let mut entry = entry_of(&tx, TxState::Approved, ResponseCode::PARTIAL_APPROVAL);
                entry.partly_approved = partial.is_some();
                entry.auth = auth;
                let mut buf = Vec::new();
                SnapTx(tx.tx, entry, partial).encode(&mut buf);
                assert_eq!(read(&buf, SNAP), Some((entry, partial)));
                // Version 3 had no byte for it before DE 38.
                if partial.is_none() {
                    let at = buf.len() - auth.map_or(0, |a| a.len()) - 1;
                    assert_eq!(buf[at], 0);
                    buf.remove(at);
                    assert_eq!(read(&buf, 3), Some((entry, None)));
                }
            }
        }
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
            SnapTx(tx.tx, entry, None).encode(&mut buf);
            let read = |buf: &[u8]| {
                let mut g = Get(&buf[1..]);
                let (_, e, _) = decode_snap_tx(&mut g, SNAP).unwrap();
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
    fn a_refund_recorded_before_its_flag_was_kept_still_reads_as_one() {
        let refund = TxEvent {
            amount: 0,
            counts_use: false,
            binds_merchant: false,
            refund: true,
            ..tx_event()
        };
        let purchase = TxEvent {
            refund: false,
            ..tx_event()
        };
        for (t, is_refund) in [(refund, true), (purchase, false)] {
            // The flags byte is the one a refund's and a purchase's records differ in.
            let encode = |t: &TxEvent| {
                let mut buf = Vec::new();
                Event::Held(*t).encode(&mut buf);
                buf
            };
            let (buf, other) = (
                encode(&t),
                encode(&TxEvent {
                    refund: !t.refund,
                    ..t
                }),
            );
            let at = (0..buf.len()).find(|&i| buf[i] != other[i]).unwrap();
            let read = |buf: &[u8]| match Event::decode(buf).unwrap() {
                Event::Held(t) => t.refund,
                _ => unreachable!(),
            };
            assert_eq!(read(&buf), is_refund);
            // As an older build wrote it: neither the flag nor the bit that says it is there.
            let mut old = buf.clone();
            old[at] &= !(4 | TX_REFUND_RECORDED);
            assert_eq!(read(&old), is_refund, "before the flag");
            // As one build wrote it: the flag without the bit that says it is there, also
            // for a refund whose amount was in DE 6 alone, which its amounts cannot tell.
            for original_amount in [t.original_amount, 0] {
                let mut first = encode(&TxEvent {
                    original_amount,
                    ..t
                });
                first[at] &= !TX_REFUND_RECORDED;
                assert_eq!(read(&first), is_refund, "the flag alone");
            }
            // The same in a snapshot's ledger entry.
            let entry = entry_of(&t, TxState::Approved, ResponseCode::APPROVED);
            let mut snap = Vec::new();
            SnapTx(t.tx, entry, None).encode(&mut snap);
            let read = |buf: &[u8]| decode_snap_tx(&mut Get(&buf[1..]), SNAP).unwrap().1.refund;
            assert_eq!(read(&snap), is_refund);
            let flags = 1 + 25 + 8 + 8 + 1 + 2 + 3 * 8;
            let mut first = snap.clone();
            first[flags] &= !(1 << 6);
            assert_eq!(read(&first), is_refund, "a snapshot with the flag alone");
            snap[flags] &= !(1 << 5 | 1 << 6);
            assert_eq!(read(&snap), is_refund, "a snapshot before the flag");
        }
    }

    /// vpan's own decline over the cap, as written before the refund flag: it charged
    /// nothing and counted no use on a DE 4 that is not 0, as a refund did, and reads as no
    /// refund (a card's history would list it as one after an upgrade).
    #[test]
    fn a_decline_recorded_before_the_refund_flag_reads_as_no_refund() {
        let declined = |refund| Event::Declined {
            tx: TxEvent {
                amount: 0,
                counts_use: false,
                binds_merchant: false,
                refund,
                ..tx_event()
            },
            code: ResponseCode::OVER_LIMIT,
            decided_by: DecidedBy::Switch,
        };
        let (mut buf, mut other) = (Vec::new(), Vec::new());
        declined(false).encode(&mut buf);
        declined(true).encode(&mut other);
        let at = (0..buf.len()).find(|&i| buf[i] != other[i]).unwrap();
        let read = |buf: &[u8]| match Event::decode(buf).unwrap() {
            Event::Declined { tx, .. } => tx.refund,
            _ => unreachable!(),
        };
        assert!(!read(&buf));
        assert!(read(&other), "a refund's decline, recorded as one");
        buf[at] &= !(4 | TX_REFUND_RECORDED);
        assert!(!read(&buf), "before the flag");
    }

    #[test]
    fn an_issuance_keeps_its_idempotency_key_and_one_written_before_keys_reads_without() {
        let issued = |request_key| {
            Event::Issued(Box::new(Issued {
                lsn: 3,
                key: key(),
                sealed_pan: vec![7; 44],
                real_expiry: Expiry(*b"2912"),
                controls: crate::cards::card::test_spec(
                    crate::pan::Pan::from_digits_checked(crate::pan::test_pan("497010").as_bytes())
                        .unwrap(),
                    10_000,
                    1_800_000_000,
                )
                .controls,
                created_at: 1_795_706_982,
                request_key,
            }))
        };
        let request = RequestKey::of(b"order-17");
        let decoded_key = |event: Event| {
            let mut buf = Vec::new();
            event.encode(&mut buf);
            match Event::decode(&buf) {
                Ok(Event::Issued(i)) => (buf.len(), i.request_key),
                other => panic!("{other:?}"),
            }
        };
        let (with, read) = decoded_key(issued(Some(request)));
        assert_eq!(read, Some(request));
        // Without a key, the record is the one written before keys were.
        let (without, read) = decoded_key(issued(None));
        assert_eq!((with - without, read), (32, None));
        // A key cut short is damage, not a record without one.
        let mut buf = Vec::new();
        issued(Some(request)).encode(&mut buf);
        buf.pop();
        assert!(Event::decode(&buf).is_err());
    }

    #[test]
    fn a_truncated_or_padded_event_is_refused() {
        let mut buf = Vec::new();
        Event::Held(tx_event()).encode(&mut buf);
        assert!(Event::decode(&buf[..buf.len() - 1]).is_err());
        buf.push(0);
        assert!(Event::decode(&buf).is_err());
        assert!(Event::decode(&[99]).is_err());
        // An outcome's flags: approved, in doubt, who decided, partial, what stands, and
        // nothing else.
        let mut outcome = Vec::new();
        Event::Outcome {
            hold: tx_event(),
            approved: true,
            in_doubt: true,
            code: ResponseCode::APPROVED,
            auth: None,
            decided_by: DecidedBy::Issuer,
            part: None,
        }
        .encode(&mut outcome);
        let flags = outcome.len() - 3;
        assert_eq!(outcome[flags], 3 | OUTCOME_DECIDED_BY_RECORDED);
        outcome[flags] = 64;
        assert!(Event::decode(&outcome).is_err());
        // What stands without a part.
        outcome[flags] = 3 | OUTCOME_STANDS;
        assert!(Event::decode(&outcome).is_err());
        // The partial flag without its part after the code.
        outcome[flags] = 3 | OUTCOME_PARTIAL;
        assert!(Event::decode(&outcome).is_err());
        // A part of what was not approved.
        let mut partial = Vec::new();
        partly_approved(false).encode(&mut partial);
        assert!(Event::decode(&partial).is_ok());
        partial[flags] &= !1;
        assert!(Event::decode(&partial).is_err());
        // What stands flagged, and not there: the record ends at the part's answer.
        let mut cut = Vec::new();
        partly_approved(false).encode(&mut cut);
        cut.truncate(cut.len() - 8);
        assert!(Event::decode(&cut).is_err());
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
            part: None,
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
