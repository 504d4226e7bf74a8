//! Requests given up on: callers whose deadline passed get their timeout (the sweep, every
//! fortieth of `issuer.timeout_ms`), and requests never answered, or whose connection was
//! lost, are forgotten and reversed, since whether the issuer approved them is unknown.

use std::time::{Duration, Instant};

use crate::metrics as m;

use super::reversals::needs_reversal;
use super::stamps::RESTAMPED_KEPT;
use super::{IssuerError, IssuerLink, Pending, Unanswered};

/// Bounds of the sweep's period, which is how late past `issuer.timeout_ms` a caller may
/// get its timeout: a fortieth of the timeout, within these.
const SWEEP_TICK_MIN: Duration = Duration::from_millis(2);
const SWEEP_TICK_MAX: Duration = Duration::from_millis(25);

impl IssuerLink {
    /// Fails every request in flight on connection `i`: their callers see the loss at
    /// once, and since the issuer may have approved them, each is reversed.
    pub(super) fn fail_connection(&self, i: usize) {
        self.abandon(|p| p.conn == i);
    }

    /// Forgets the requests in flight that `which` selects (their callers, if still
    /// waiting, see the connection lost) and reverses those that may have moved money,
    /// since whether the issuer approved them is unknown.
    pub(super) fn abandon(&self, which: impl Fn(&Pending) -> bool) {
        let listed: Vec<([u8; 6], bool)> = self
            .inner
            .pending
            .iter()
            .filter(|p| which(p))
            .map(|p| (*p.key(), p.mti[1] == b'4'))
            .collect();
        // A reversal the host refuses may be why it dropped the connection; told whether it
        // was the only one out, a reversal knows whether the loss may be its own doing.
        let only_reversal_out = listed.iter().filter(|(_, reversal)| *reversal).count() == 1;
        for (stamp, _) in listed {
            // Checked again: between the listing and here the stamp may have been answered
            // and taken by another request, which is not to be abandoned in its place.
            let Some((_, mut p)) = self.inner.pending.remove_if(&stamp, |_, p| which(p)) else {
                continue;
            };
            // A caller left without a reversal hears of the loss at once.
            if !needs_reversal(&p.mti) {
                // The request removed, not the one listed: the stamp may be another's now.
                if let Some(reply) = p.reply.take().filter(|_| p.mti[1] == b'4') {
                    let _ = reply.send(Err(Unanswered {
                        only_reversal_out,
                        ..IssuerError::ConnectionLost.into()
                    }));
                }
                continue;
            }
            let Some(reversal) = self.reversal_of_sent(&p.sent) else {
                continue;
            };
            // A caller still waiting gets the debt to record; numbered now, the reversal
            // can go out at once (paid before it is recorded, it is still paid).
            let debt = match (p.debt, p.reply.take()) {
                (Some(debt), _) => Some(debt),
                (None, Some(reply)) => {
                    let (debt, owed) = self.owe_own(&reversal, p.network_stan);
                    let _ = reply.send(Err(Unanswered {
                        owed: Some(owed),
                        ..IssuerError::ConnectionLost.into()
                    }));
                    Some(debt)
                }
                (None, None) => None,
            };
            for (waiter, _) in p.repeats {
                let refused = Unanswered::of_repeat(IssuerError::ConnectionLost, debt.as_ref());
                let _ = waiter.send(Err(refused));
            }
            self.send_reversal(Box::new(reversal), Some(p.conn), debt.map(|d| d.id));
        }
    }

    /// Gives callers whose deadline passed their timeout (every few milliseconds), and
    /// forgets requests that were never answered (long after their timeout), reversing
    /// them since their outcome at the issuer is unknown (every second).
    pub(super) async fn sweep(self) {
        let horizon = (self.inner.settings.timeout * 4).max(Duration::from_secs(10));
        let tick = (self.inner.settings.timeout / 40).clamp(SWEEP_TICK_MIN, SWEEP_TICK_MAX);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_forget = Instant::now() + Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            let now = Instant::now();
            let mut freed = Vec::new();
            let mut orphaned = Vec::new();
            for mut p in self.inner.pending.iter_mut() {
                if now >= p.deadline
                    && let Some(reply) = p.reply.take()
                {
                    metrics::counter!(m::ISSUER_TIMEOUTS_TOTAL).increment(1);
                    self.slot_timed_out(p.conn, p.sent_at);
                    tracing::debug!(stan = %String::from_utf8_lossy(p.key()), "issuer answer late");
                    // The issuer may approve it yet: a reversal is owed unless its answer
                    // says otherwise. Built here, under the map's lock (a rare path), so
                    // that the request has a debt only if it has a reversal.
                    let owed = needs_reversal(&p.mti)
                        .then(|| self.reversal_of_sent(&p.sent))
                        .flatten()
                        .map(|reversal| {
                            let (debt, owed) = self.owe_own(&reversal, p.network_stan);
                            p.debt = Some(debt);
                            owed
                        });
                    let refused = Unanswered {
                        owed,
                        ..IssuerError::Timeout.into()
                    };
                    // A caller gone (a runtime stopping) leaves its debt to be written
                    // on the spot, blocking: after the map's lock is let go.
                    if let Err(unsent) = reply.send(Err(refused)) {
                        orphaned.push(unsent);
                    }
                }
                if !p.repeats.is_empty() {
                    let (late, waiting) = std::mem::take(&mut p.repeats)
                        .into_iter()
                        .partition(|(_, deadline)| now >= *deadline);
                    p.repeats = waiting;
                    for (waiter, _) in late {
                        let refused = Unanswered::of_repeat(IssuerError::Timeout, p.debt.as_ref());
                        let _ = waiter.send(Err(refused));
                    }
                }
                // Nobody waits on it any more, and a late answer would change nothing (no
                // approval to reverse: a reversal, an advice, network management): its stamp
                // is freed now, so that a reversal sent again goes out under the same DE 11,
                // which is how the host tells a repeat (0401) of the one it may have
                // applied. Also once the last of its repeats has timed out after it.
                if p.reply.is_none() && p.repeats.is_empty() && !needs_reversal(&p.mti) {
                    freed.push(*p.key());
                }
            }
            drop(orphaned);
            for stamp in freed {
                self.inner
                    .pending
                    .remove_if(&stamp, |_, p| p.reply.is_none() && p.repeats.is_empty());
            }
            if now < next_forget {
                continue;
            }
            next_forget = now + Duration::from_secs(1);
            // None where the monotonic clock began less than that ago: nothing is old
            // enough to forget.
            if let Some(horizon) = now.checked_sub(RESTAMPED_KEPT) {
                self.inner.restamped.forget_before(horizon);
                self.inner.named_waiting.forget_before(horizon);
                self.inner.reversing.forget_before(horizon);
                self.inner.in_reserve.retain(|_, (_, at)| *at >= horizon);
            }
            self.abandon(|p| now.duration_since(p.sent_at) > horizon);
        }
    }
}
