//! Recent decisions per card, for `GET /v1/cards/{vpan}/transactions`: bounded and cold.
//!
//! Each card keeps its last [`HISTORY_LEN`] decisions behind one optional box, allocated on
//! its first decision, so the hot part of the card stays small and a busy card never grows.
//! Declines made by the switch are kept in memory only (they change nothing and are not
//! journaled); approvals, issuer answers, advices and reversals are rebuilt from the journal
//! and kept in snapshots.

use std::collections::VecDeque;

use super::card::{AcceptorId, UnixSeconds};
use super::request::ResponseCode;

/// Decisions kept per card.
pub const HISTORY_LEN: usize = 10;

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
}

/// The last decisions of one card, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// At most `HISTORY_LEN` entries.
    pub(crate) ring: VecDeque<RecentTx>,
}

impl History {
    /// Adds a decision, dropping the oldest when full.
    pub fn push(&mut self, tx: RecentTx) {
        if self.ring.len() == HISTORY_LEN {
            self.ring.pop_front();
        }
        self.ring.push_back(tx);
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<RecentTx> {
        self.ring.iter().rev().copied().collect()
    }
}

/// Adds `tx` to the card's history, allocating it on first use.
pub fn record(history: &mut Option<Box<History>>, tx: RecentTx) {
    history
        .get_or_insert_with(|| {
            Box::new(History {
                ring: VecDeque::with_capacity(HISTORY_LEN),
            })
        })
        .push(tx);
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
        }
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let mut h = None;
        for at in 0..25 {
            record(&mut h, tx(at));
        }
        let list = h.unwrap().newest_first();
        assert_eq!(list.len(), HISTORY_LEN);
        assert_eq!(list[0].at, 24);
        assert_eq!(list[HISTORY_LEN - 1].at, 15);
    }
}
