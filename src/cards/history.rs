//! Decisions per card, for `GET /v1/cards/{vpan}/transactions`: bounded and cold.
//!
//! Each card keeps its last [`HISTORY_LEN`] decisions, which for a card made for one
//! merchant and a few purchases is every decision it will see. They are kept behind one
//! pointer, allocated on the card's first decision (8 bytes on a card that has none) and
//! grown one decision at a time, then by doubling, up to the bound (40 bytes a decision),
//! so the hot part of the card stays small and a card under a flood of attempts holds
//! 4 KB at most.
//! Every decision is rebuilt from the journal and kept in snapshots; declines (which move
//! no money) are journaled without being waited for, so a crash may lose the last few.

use std::collections::VecDeque;

use super::card::{AcceptorId, UnixSeconds};
use super::request::ResponseCode;

/// Decisions kept per card (a snapshot writes their count in one byte).
pub const HISTORY_LEN: usize = 100;
const _: () = assert!(HISTORY_LEN <= u8::MAX as usize);

/// Histories grow one decision at a time up to this many, then by doubling.
const EXACT_UP_TO: usize = 16;

/// Who answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecidedBy {
    /// vpan declined (or accepted a reversal) itself.
    Switch,
    /// The issuer host answered (or an advice reported its stand-in answer).
    Issuer,
}

impl DecidedBy {
    /// The API's (and the metric label's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Switch => "switch",
            DecidedBy::Issuer => "issuer",
        }
    }
}

/// One decision on a card.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecentTx {
    /// When it was decided.
    pub at: UnixSeconds,
    /// The request's MTI.
    pub mti: [u8; 4],
    /// DE 4 of the request (a reversal: the amount given back), minor units.
    pub amount: u64,
    /// DE 39 of the answer.
    pub code: ResponseCode,
    /// Who decided.
    pub decided_by: DecidedBy,
    /// DE 42, when the request had one.
    pub merchant: Option<AcceptorId>,
    /// A credit to the account (DE 3 from 20: a refund, a credit adjustment, a payment),
    /// which a line would otherwise show as a purchase (its MTI and its amount are a
    /// purchase's), approved on a paused or closed card.
    pub refund: bool,
}

/// The last decisions of one card, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// At most `HISTORY_LEN` entries, oldest first; nothing allocated before the first.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes in every card where a VecDeque would take 32, most cards seeing few decisions or none"
    )]
    entries: Option<Box<VecDeque<RecentTx>>>,
}

impl History {
    /// Adds a decision, dropping the oldest when full.
    pub fn push(&mut self, tx: RecentTx) {
        let entries = self.entries.get_or_insert_with(Default::default);
        if entries.len() == HISTORY_LEN {
            entries.pop_front();
        } else if entries.len() == entries.capacity() {
            // Exact while small (most cards see a few decisions, and copying a few is
            // nothing), then doubling, but never past the bound: a full card holds no
            // slack.
            let more = if entries.len() < EXACT_UP_TO {
                1
            } else {
                entries.len().min(HISTORY_LEN - entries.len())
            };
            entries.reserve_exact(more);
        }
        entries.push_back(tx);
    }

    /// A history from its entries, oldest first (at most `HISTORY_LEN` are kept, the newest).
    pub fn from_oldest_first(mut entries: Vec<RecentTx>) -> History {
        if entries.len() > HISTORY_LEN {
            entries.drain(..entries.len() - HISTORY_LEN);
        }
        History {
            entries: (!entries.is_empty()).then(|| Box::new(VecDeque::from(entries))),
        }
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<RecentTx> {
        self.iter().rev().copied().collect()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &RecentTx> {
        self.entries.as_deref().into_iter().flatten()
    }

    /// How many decisions it holds.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    /// True when the card has no decision yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Adds `tx` to the card's history.
pub fn record(history: &mut History, tx: RecentTx) {
    history.push(tx);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(at: u64) -> RecentTx {
        RecentTx {
            at,
            mti: *b"0100",
            amount: at,
            code: ResponseCode::APPROVED,
            decided_by: DecidedBy::Issuer,
            merchant: None,
            refund: false,
        }
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let mut h = History::default();
        for at in 0..25 {
            record(&mut h, tx(at));
        }
        let list = h.newest_first();
        assert_eq!(list.len(), 25);
        assert_eq!(list[0].at, 24);
        for at in 25..250 {
            record(&mut h, tx(at));
        }
        let list = h.newest_first();
        assert_eq!(list.len(), HISTORY_LEN);
        assert_eq!(list[0].at, 249);
        assert_eq!(list[HISTORY_LEN - 1].at, 150);
        let full = h.entries.as_ref().unwrap();
        assert_eq!(full.capacity(), HISTORY_LEN, "no slack on a full history");
        assert_eq!(History::from_oldest_first(h.iter().copied().collect()), h);
    }
}
