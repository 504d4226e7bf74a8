//! Recent decisions per card, for `GET /v1/cards/{vpan}/transactions`: bounded and cold.
//!
//! Each card keeps its last [`HISTORY_LEN`] decisions in one boxed slice, allocated on its
//! first decision and sized to what it holds (40 bytes a decision), so the hot part of the
//! card stays small (16 bytes for the pointer) and a busy card never grows past
//! `HISTORY_LEN`.
//! Every decision is rebuilt from the journal and kept in snapshots; declines (which move
//! no money) are journaled without being waited for, so a crash may lose the last few.

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

/// The last decisions of one card, oldest first, in a slice sized exactly to what it holds
/// (a card with two decisions pays for two, not for [`HISTORY_LEN`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// At most `HISTORY_LEN` entries, oldest first.
    pub(crate) entries: Box<[RecentTx]>,
}

impl History {
    /// Adds a decision, dropping the oldest when full.
    pub fn push(&mut self, tx: RecentTx) {
        if self.entries.len() < HISTORY_LEN {
            let mut v = Vec::with_capacity(self.entries.len() + 1);
            v.extend_from_slice(&self.entries);
            v.push(tx);
            self.entries = v.into_boxed_slice();
        } else {
            self.entries.rotate_left(1);
            if let Some(last) = self.entries.last_mut() {
                *last = tx;
            }
        }
    }

    /// A history from its entries, oldest first (at most `HISTORY_LEN` are kept, the newest).
    pub fn from_oldest_first(mut entries: Vec<RecentTx>) -> History {
        if entries.len() > HISTORY_LEN {
            entries.drain(..entries.len() - HISTORY_LEN);
        }
        History {
            entries: entries.into_boxed_slice(),
        }
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<RecentTx> {
        self.entries.iter().rev().copied().collect()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &RecentTx> {
        self.entries.iter()
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
        }
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let mut h = History::default();
        for at in 0..25 {
            record(&mut h, tx(at));
        }
        let list = h.newest_first();
        assert_eq!(list.len(), HISTORY_LEN);
        assert_eq!(list[0].at, 24);
        assert_eq!(list[HISTORY_LEN - 1].at, 15);
    }
}
