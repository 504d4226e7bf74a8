//! A snapshot's records (its header, each card, each ledger entry), in the journal's
//! byte layout.

use std::num::{NonZeroU32, NonZeroU64};

use crate::cards::card::{AcceptorId, Card, CardKey, Expiry, LockKind, MccRules, Status};
use crate::cards::history::{DecidedBy, HISTORY_LEN, History, RecentTx};
use crate::cards::ledger::{PartialAnswer, TxEntry, TxState};
use crate::cards::request::{OriginalData, ResponseCode};
use crate::cards::requests::RequestKey;
use crate::store::StoreError;
use crate::store::identity::StoreId;
use crate::store::journal::Encode;

use super::encoding::{
    Get, Put, TAG_SNAP_CARD, TAG_SNAP_END, TAG_SNAP_HEADER, TAG_SNAP_TX, get_acceptor, get_tx,
    put_acceptor, put_tx,
};
use super::encoding::{
    get_mccs, get_partial_answer, put_mccs, put_partial_answer, recorded_decided_by,
};
use super::legacy_decided_by;

/// Set in a snapshot's ledger entry's flags when the bit before it says who decided.
pub(super) const SNAP_TX_DECIDED_BY_RECORDED: u8 = 1 << 4;

/// The bit of a snapshot's ledger entry's flags that marks a refund, and the one that
/// says it was written (snapshots from before have neither).
const SNAP_TX_REFUND_BIT: u8 = 5;
const SNAP_TX_REFUND_RECORDED: u8 = 1 << 6;
/// Set in a snapshot's ledger entry's flags when an advice restated it (`TxEntry::restated`).
const SNAP_TX_RESTATED: u8 = 1 << 7;

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
    /// The data directory it was written in (from version 5).
    pub store: StoreId,
}

impl Encode for SnapHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.u8(TAG_SNAP_HEADER);
        out.u8(self.version);
        out.u64(self.from_segment);
        out.u64(self.next_lsn);
        out.u64(self.cards);
        out.extend_from_slice(&self.store.0);
    }
}

/// The last record of a snapshot (from version 3): how many cards and ledger entries it
/// holds, so that a snapshot cut short at a record's boundary, which every checksum
/// passes, is refused rather than read as one with fewer cards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SnapEnd {
    /// Card records written.
    pub cards: u64,
    /// Ledger entry records written.
    pub transactions: u64,
}

impl Encode for SnapEnd {
    fn encode(&self, out: &mut Vec<u8>) {
        out.u8(TAG_SNAP_END);
        out.u64(self.cards);
        out.u64(self.transactions);
    }
}

/// Reads a [`SnapEnd`] after its tag; `None` when it is not one whole.
pub(crate) fn decode_snap_end(g: &mut Get<'_>) -> Option<SnapEnd> {
    let end = SnapEnd {
        cards: g.u64()?,
        transactions: g.u64()?,
    };
    g.0.is_empty().then_some(end)
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
        out.u8(c.history.len() as u8);
        for h in c.history.iter() {
            out.u64(h.at);
            out.extend_from_slice(&h.mti);
            out.u64(h.amount);
            out.extend_from_slice(&h.code.0);
            // Bit 0: decided by the issuer; bit 1 (since 2026-12-06): a refund, which a
            // vpan from before refuses rather than misreads.
            out.u8(u8::from(h.decided_by == DecidedBy::Issuer) | u8::from(h.refund) << 1);
            put_acceptor(out, h.merchant);
        }
        // Last, and only when there is one (since 2026-12-07): a vpan from before refuses
        // the record rather than misreads it.
        if let Some(key) = &c.request_key {
            out.extend_from_slice(&key.0);
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
            let at = g.u64()?;
            let mti = g.array()?;
            let amount = g.u64()?;
            let code = ResponseCode(g.array()?);
            let flags = g.u8()?;
            if flags > 0b11 {
                return None;
            }
            let tx = RecentTx {
                at,
                mti,
                amount,
                code,
                decided_by: if flags & 1 == 1 {
                    DecidedBy::Issuer
                } else {
                    DecidedBy::Switch
                },
                merchant: get_acceptor(g)?,
                refund: flags & 0b10 != 0,
            };
            entries.push(tx);
        }
        let history = History::from_oldest_first(entries);
        let request_key = g.optional_tail()?.map(|k| Box::new(RequestKey(k)));
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
            request_key,
        })
    })()
    .ok_or_else(bad)?;
    Ok((key, card))
}

/// A ledger entry in a snapshot, with its partial approval's answer when it has one.
pub(crate) struct SnapTx(pub OriginalData, pub TxEntry, pub Option<PartialAnswer>);

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
            | SNAP_TX_DECIDED_BY_RECORDED
            | u8::from(e.refund) << SNAP_TX_REFUND_BIT
            | SNAP_TX_REFUND_RECORDED
            | if e.restated { SNAP_TX_RESTATED } else { 0 });
        out.u64(e.at);
        out.u64(e.lsn);
        out.extend_from_slice(&e.mti);
        put_acceptor(out, e.acceptor);
        // From version 4.
        out.option(self.2.as_ref(), put_partial_answer);
        // Last, and only when there is one, as in an outcome record: snapshots written
        // before DE 38 was kept read the same.
        if let Some(auth) = e.auth {
            out.extend_from_slice(&auth);
        }
    }
}

/// A ledger entry's partial approval in a snapshot: from version 4, a byte that says
/// whether there is one, then its amounts; `None` when damaged.
fn get_snap_partial(g: &mut Get<'_>, version: u8) -> Option<Option<PartialAnswer>> {
    if version < 4 {
        return Some(None);
    }
    g.option(get_partial_answer)
}

/// Reads a ledger entry of a snapshot of format `version` after its tag, and its partial
/// approval's answer when it has one.
pub(crate) fn decode_snap_tx(
    g: &mut Get<'_>,
    version: u8,
) -> Option<(OriginalData, TxEntry, Option<PartialAnswer>)> {
    let tx = get_tx(g)?;
    let card = g.key()?;
    let fingerprint = g.u64()?;
    let state = TxState::from_u8(g.u8()?)?;
    let code = ResponseCode(g.array()?);
    let charged = g.u64()?;
    let amount = g.u64()?;
    let original_amount = g.u64()?;
    let flags = g.u8()?;
    // Read here, in the record's order: the partial answer sits between the acceptor and
    // DE 38.
    let (at, lsn, mti, acceptor) = (g.u64()?, g.u64()?, g.array()?, get_acceptor(g)?);
    let partial = get_snap_partial(g, version)?;
    let entry = TxEntry {
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
        // Set, a refund whatever wrote it; written before the flag was, read as a
        // refund is (see the journal's).
        refund: flags & (1 << SNAP_TX_REFUND_BIT) != 0
            || (flags & SNAP_TX_REFUND_RECORDED == 0
                && state != TxState::Declined
                && charged == 0
                && flags & 1 == 0
                && original_amount > 0),
        at,
        lsn,
        mti,
        acceptor,
        auth: g.optional_tail()?,
        decided_by: recorded_decided_by(flags, 3, SNAP_TX_DECIDED_BY_RECORDED).unwrap_or(
            if state == TxState::Declined {
                DecidedBy::Switch
            } else {
                legacy_decided_by(code)
            },
        ),
        asking: false,
        acknowledged: false,
        restated: flags & SNAP_TX_RESTATED != 0,
        partly_approved: partial.is_some(),
    };
    Some((tx, entry, partial))
}
