//! What the simulator counts and remembers for its handle: requests, answers, connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::iso8583::Message;
use crate::pan::Pan;
use crate::tools::pacer::Pacer;

use super::SimConfig;
use super::ledger::Ledger;

/// One request as received, kept for tests to inspect.
#[derive(Debug, Clone)]
pub struct Received {
    /// The parsed request (its `Debug` masks the PAN).
    pub message: Message,
    /// The DE 39 sent back; `None` when the request was left unanswered or dropped.
    pub response_code: Option<[u8; 2]>,
    /// The connection it came on, numbered from 1 in the order they were accepted.
    pub connection: u64,
}

impl Received {
    /// The request's MTI.
    pub fn mti(&self) -> [u8; 4] {
        self.message.mti()
    }

    /// The PAN the simulator received in DE 2, if any.
    pub fn pan(&self) -> Option<Pan> {
        self.message.card_number().and_then(Result::ok)
    }
}

/// Counters the handle reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests parsed.
    pub requests: u64,
    /// Answers handed to their connection's socket (including format-error answers; a
    /// peer that resets may not read the last of them).
    pub answered: u64,
    /// Requests decided and booked whose answer, held back by `latency`, was still waiting
    /// when its connection ended (`drop_share`, a frame that cannot be read, the peer
    /// gone, the simulator stopping): booked, never answered.
    pub lost_with_connection: u64,
    /// Requests booked but left unanswered (`timeout_share`).
    pub unanswered: u64,
    /// Connections closed on purpose (`drop_share`).
    pub dropped: u64,
    /// Whole frames the peer had sent on a connection dropped on purpose, read from the
    /// socket but not yet looked at: never parsed nor counted in `requests`. (What was
    /// still in the kernel's buffers is not seen at all.)
    pub not_read: u64,
    /// Frames that did not parse.
    pub malformed: u64,
    /// Reversals whose original was not found.
    pub unmatched_reversals: u64,
}

/// The simulator's counters, kept readable after it stopped (its stop line is written
/// once every connection has ended and counted what it held back).
#[derive(Clone)]
pub struct SimCounters(pub(super) Arc<Shared>);

impl SimCounters {
    /// The counters now.
    pub fn stats(&self) -> SimStats {
        let s = &self.0;
        SimStats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            answered: s.answered.load(Ordering::Relaxed),
            unanswered: s.unanswered.load(Ordering::Relaxed),
            lost_with_connection: s.lost_with_connection.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            not_read: s.not_read.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            unmatched_reversals: s.ledger.unmatched_reversals(),
        }
    }
}

/// State shared by the accept loop, the connections and the handle.
pub(super) struct Shared {
    /// The books.
    pub(super) ledger: Ledger,
    /// The configuration it was started with.
    pub(super) config: SimConfig,
    /// Requests by MTI, indexed by the MTI's value (0..=9999).
    pub(super) by_mti: Box<[AtomicU64]>,
    /// The last `keep_last` requests.
    pub(super) recent: Mutex<VecDeque<Received>>,
    /// Running counters, as in [`SimStats`].
    pub(super) connections: AtomicU64,
    /// See [`SimStats::requests`].
    pub(super) requests: AtomicU64,
    /// See [`SimStats::answered`].
    pub(super) answered: AtomicU64,
    /// See [`SimStats::unanswered`].
    pub(super) unanswered: AtomicU64,
    /// See [`SimStats::lost_with_connection`].
    pub(super) lost_with_connection: AtomicU64,
    /// See [`SimStats::dropped`].
    pub(super) dropped: AtomicU64,
    /// See [`SimStats::not_read`].
    pub(super) not_read: AtomicU64,
    /// See [`SimStats::malformed`].
    pub(super) malformed: AtomicU64,
    /// Wakes [`IssuerSimHandle::wait_for_requests`]; only poked while someone waits.
    pub(super) progress: Notify,
    /// Number of tasks waiting on `progress`.
    pub(super) waiters: AtomicUsize,
    /// The clock delayed answers wait on, with a latency to add: tokio's timer rounds each
    /// wait up to its next millisecond, so a `--latency-us 200` answered 0.2 to 1.2 ms late,
    /// in bursts.
    pub(super) pacer: Option<Pacer>,
}

impl Shared {
    pub(super) fn record(
        &self,
        message: &Message,
        response_code: Option<[u8; 2]>,
        connection: u64,
    ) {
        let mti = message.mti();
        let idx = mti.iter().fold(0usize, |a, &d| {
            a * 10 + usize::from(d.wrapping_sub(b'0') % 10)
        });
        if let Some(c) = self.by_mti.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.config.keep_last > 0
            && let Ok(mut recent) = self.recent.lock()
        {
            if recent.len() >= self.config.keep_last {
                recent.pop_front();
            }
            recent.push_back(Received {
                message: message.clone(),
                response_code,
                connection,
            });
        }
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.progress.notify_waiters();
        }
    }
}
