//! The reversals the link owes the issuer, and how it pays them.
//!
//! A request that may have moved money at the issuer (sent, then no answer in time, or its
//! connection lost) is reversed with a 0400 unless its answer says it was not approved;
//! and a network's reversal whose amount a card gave back is owed as it is when the issuer
//! did not hear it or apply it ([`IssuerLink::owe_reversal`]). Either debt ([`Owed`]) is
//! written to the book of reversals owed before the network hears its answer, so a restart
//! still sends it; the reversal is retried with backoff until the issuer answers it, and
//! the debt is then marked paid.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::cards::card::{transmission_time, unix_now};
use crate::cards::request::original_data_elements;
use crate::iso8583::{CARD_VERIFICATION_DATA, Message, Spec};
use crate::metrics::Reconcile;
use crate::store::journal::STALL_AFTER;
use crate::store::owed::{Debt, OwedReversals};

use super::connection::jittered;
use super::stamps::{Identity, Remembered};
use super::{IssuerError, IssuerLink, Unanswered};

/// Most network reversals kept in reserve at once ([`IssuerLink::answers_in_its_place`]):
/// an issuer that times out for an hour under load leaves one per purchase answered 91 and
/// reversed by its acquirer, each a message of some hundreds of bytes. Past it, such a
/// reversal is forwarded, as before the switch answered them.
const IN_RESERVE_MAX: usize = 100_000;

/// Longest wait between two tries of a reversal toward an issuer that does not answer.
const REVERSAL_RETRY_MAX: Duration = Duration::from_secs(5);

/// Reversals out at the host at once, the others waiting their turn: a sixty-fourth of a
/// connection's write queue, and at a host's usual pace (milliseconds) thousands a
/// second.
pub(super) const REVERSALS_AT_ONCE: usize = 64;

/// Connections lost in a row, each within [`SUSPECT_WITHIN`] of the reversal's sending,
/// the last with no other reversal out, after which the reversal itself is suspected of
/// being what the issuer refuses (a frame over its own size limit, a field it rejects): a
/// host that is merely restarting loses the connection once, then refuses it. Lost so with
/// others out, it is tried alone next, for the second in which a loss counts (any of them
/// could be the cause): a burst of
/// reversals out together at a host that drops a connection now and then were all
/// suspected at its third drop within a second, and held back half a minute and more.
const SUSPECT_AFTER_LOSSES: u32 = 3;

/// How soon after a reversal is sent a lost connection counts against it.
const SUSPECT_WITHIN: Duration = Duration::from_secs(1);

/// A wait that doubles from `first` up to `max` each time it is taken.
struct Backoff {
    first: Duration,
    max: Duration,
    upcoming: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            upcoming: first,
        }
    }

    /// The wait now; the next one is twice as long, up to `max`.
    fn take(&mut self) -> Duration {
        let now = self.upcoming;
        self.upcoming = (now * 2).min(self.max);
        now
    }

    /// Starts again from `first`.
    fn restart(&mut self) {
        self.upcoming = self.first;
    }
}

/// The first wait between two tries of a suspected reversal, doubled up to
/// [`SUSPECT_RETRY_MAX`]. Each try may cost a live connection its requests in flight (91s):
/// tried every few seconds, one reversal would keep the whole link down for good.
const SUSPECT_RETRY_FIRST: Duration = Duration::from_secs(30);
/// The longest wait between two tries of a suspected reversal.
const SUSPECT_RETRY_MAX: Duration = Duration::from_secs(600);

/// A reversal the link owes the issuer, which it sends (and retries) on its own; this is
/// its record in the book of reversals owed, so that a restart still sends it. Dropped
/// unrecorded (its caller gone), it is recorded there and then.
pub struct Owed {
    book: Arc<OwedReversals>,
    id: u64,
    /// The reversal as packed toward the issuer (it carries the real card number).
    reversal: Bytes,
    recorded: bool,
    /// Set once the record is written, failed, or given up on (when this is dropped):
    /// the repeats of the request wait for it before their 91.
    written: watch::Sender<bool>,
    /// For vpan's own reversal of a request: where the request's network identity goes
    /// once this record is on disk (see [`IssuerLink::reverses_itself`]).
    reverses: Option<(Arc<Reversing>, Identity)>,
}

/// The requests the link reverses itself (see [`IssuerLink::reverses_itself`]).
#[derive(Default)]
pub(super) struct Reversing {
    /// By their network identity, from the moment that debt is on disk, to the debt's
    /// number: a refusal of the reversal forgets them by it, as its DE 90 names the
    /// request under the stamp it went out with, which is not the network's STAN when the
    /// link had to change it.
    requests: Remembered<Identity, u64>,
    /// Debts whose reversal the issuer refused: the reversal goes out before its debt's
    /// record lands, and a refusal ahead of it must keep the record from making the
    /// request one the link reverses itself.
    refused: Remembered<u64, ()>,
}

impl Reversing {
    /// Whether the link reverses the request of network identity `key` gives.
    fn knows(&self, key: impl FnOnce() -> Option<Identity>) -> bool {
        self.requests.get(key).is_some()
    }

    /// The request of network identity `identity` is reversed by debt `id`, now on disk,
    /// unless the issuer refused that reversal already. Entered, then the refusals looked
    /// at, as [`Reversing::refuse`] does the other way round: one of the two sees the other.
    pub(super) fn insert(&self, identity: Identity, id: u64) {
        self.requests.insert(identity, id);
        if self.refused.holds(&id) {
            let _ = self.requests.forget_where(|&owed| owed == id);
        }
    }

    /// The issuer refused debt `id`'s reversal: its request is no longer one the link
    /// reverses itself, now or once the debt's record lands. Returns the network identity
    /// it was known by, if it was yet.
    fn refuse(&self, id: u64) -> Vec<Identity> {
        self.refused.insert(id, ());
        self.requests.forget_where(|&owed| owed == id)
    }

    /// Forgets what was entered before `horizon`.
    pub(super) fn forget_before(&self, horizon: std::time::Instant) {
        self.requests.forget_before(horizon);
        self.refused.forget_before(horizon);
    }
}

/// The debt of a request in flight: its number in the book, and whether its record is
/// done yet (written, failed, stalled, or skipped because the journal failed): a repeat
/// refused along with the request waits for that before its 91, as the request does.
pub(super) struct DebtHeld {
    pub(super) id: u64,
    pub(super) written: watch::Receiver<bool>,
}

impl std::fmt::Debug for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owed")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Owed {
    /// Writes the debt; returns once it is on disk, or the disk failed, or it stalled
    /// past [`STALL_AFTER`] (each said loudly: the reversal still goes out, but a restart
    /// before the write lands would forget it). Bounded, so that neither the network's 91
    /// nor the repeats that wait for this record (see [`DebtHeld`]) hang on a disk that
    /// does not return; the write stays queued and lands when it does.
    pub async fn record(mut self: Box<Self>) {
        let write = self.book.owe(self.id, &self.reversal);
        match tokio::time::timeout(STALL_AFTER, write).await {
            Ok(Ok(())) => self.on_disk(),
            Ok(Err(e)) => tracing::error!(
                debt = self.id,
                error = %e,
                "a reversal owed to the issuer could not be written; it is sent, but a restart would forget it"
            ),
            Err(_) => tracing::error!(
                debt = self.id,
                "a reversal owed to the issuer is not on disk after {} s; it is sent, and written when the disk returns, but a crash before then would forget it",
                STALL_AFTER.as_secs()
            ),
        }
        // Only now: a record cancelled mid-write (a runtime stopping) is written again by
        // `drop`, blocking, before its repeats are let go (the book keeps one of the two).
        self.recorded = true;
    }

    /// The debt is on disk: the request it reverses, if it is vpan's own reversal, is
    /// now one the link reverses itself whatever befalls this run.
    fn on_disk(&self) {
        if let Some((reversing, identity)) = &self.reverses {
            reversing.insert(*identity, self.id);
        }
    }

    /// Leaves the debt unrecorded, because its caller's own record of the request failed
    /// (`why`): on disk alone, it would sit beside a purchase a restart takes for in doubt.
    /// The reversal still goes out, from memory.
    pub fn forget(&mut self, why: &crate::store::StoreError) {
        self.recorded = true;
        // In memory only, as a debt whose record failed: counted so, and a stop says so.
        self.book.note_unrecorded(self.id);
        crate::logging::throttled!(
            error,
            debt = self.id,
            error = %why,
            "a reversal owed to the issuer is not recorded, since the journal failed; it is sent from memory only"
        );
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        // Rare (a caller that went away, a runtime that is stopping): written here and now,
        // blocking, rather than by a task that a stopping runtime might never run.
        if !self.recorded {
            match self.book.owe_blocking(self.id, &self.reversal) {
                Ok(()) => self.on_disk(),
                Err(e) => {
                    tracing::error!(debt = self.id, error = %e, "a reversal owed to the issuer could not be written")
                }
            }
        }
        self.written.send_replace(true);
    }
}

impl IssuerLink {
    /// Sends again the reversals an earlier run owed and did not see answered. Each goes
    /// as a repeat (0401, or 0421 for a network's 0420): it may have reached the host
    /// before.
    pub(super) fn pay_earlier_debts(&self, debts: Vec<Debt>) {
        if !debts.is_empty() {
            tracing::warn!(
                count = debts.len(),
                "reversals owed to the issuer since an earlier run; sending them"
            );
        }
        for Debt { id, reversal } in debts {
            match Message::parse(self.spec(), reversal) {
                Ok(mut reversal) => {
                    reversal.mark_repeat();
                    // Under its own key, as a network's reversal owed is told apart, and
                    // under the request its DE 90 names, as vpan's own (`reverse_now`) is:
                    // the book does not say which it was. A network's filed so too at worst
                    // keeps vpan's own reversal of that request waiting until it is paid.
                    for identity in [reversal_identity(&reversal), reversed_identity(&reversal)]
                        .into_iter()
                        .flatten()
                    {
                        self.inner.reversals_owed.insert(identity, id);
                    }
                    // On disk, and what it names is reversed by it, whoever sent it first
                    // (under the STAN it went out with: the network's, but when the link
                    // had to change it).
                    // (Not one too long for the issuer's frames: see `owe_own`.)
                    if let Some(named) = reversed_identity(&reversal)
                        && self.fits(&reversal)
                    {
                        self.inner.reversing.insert(named, id);
                    }
                    self.send_reversal(Box::new(reversal), None, Some(id));
                }
                // Written by vpan in the issuer link's layout of the time; the layout was
                // changed since. Kept, and said at every start, until someone reconciles.
                Err(e) => {
                    Reconcile::DebtUnreadable.count();
                    tracing::error!(
                        debt = id,
                        error = %e,
                        "a reversal owed since an earlier run does not read in the issuer link's layout; the issuer must reconcile"
                    )
                }
            }
        }
    }

    /// A new debt for `reversal`: the request's hold on it, and its record for the caller
    /// to write, which holds no card-verification data whatever the caller passed.
    pub(super) fn owe(&self, reversal: &Message) -> (DebtHeld, Box<Owed>) {
        let id = self.inner.owed.next_id();
        let (written, written_rx) = watch::channel(false);
        let owed = Owed {
            book: self.inner.owed.clone(),
            id,
            reversal: without_card_verification_data(reversal),
            recorded: false,
            written,
            reverses: None,
        };
        let held = DebtHeld {
            id,
            written: written_rx,
        };
        (held, Box::new(owed))
    }

    /// [`IssuerLink::owe`] for vpan's own `reversal` of a request it sent, which the network
    /// sent under `network_stan`: once the debt is on disk, the link reverses that request
    /// itself ([`IssuerLink::reverses_itself`]).
    pub(super) fn owe_own(
        &self,
        reversal: &Message,
        network_stan: Option<[u8; 6]>,
    ) -> (DebtHeld, Box<Owed>) {
        let (held, mut owed) = self.owe(reversal);
        // One too long for the issuer's frames is given up on when it is sent (for the
        // issuer to reconcile): the network's own reversal is then what reverses the
        // request there, and goes.
        owed.reverses = self
            .inner
            .settings
            .codec
            .fits(owed.reversal.len())
            .then(|| network_identity(reversal, network_stan))
            .flatten()
            .map(|id| (self.inner.reversing.clone(), id));
        (held, owed)
    }

    /// Whether the request that a network's `reversal` names in DE 90 (as the network knows
    /// it: under its own STAN, before [`IssuerLink::rewrite_original`]) is one the link
    /// reverses itself: its caller got 91, and the link's own reversal of it, owed on disk,
    /// is sent until the issuer answers it unless the issuer's late answer declined it.
    /// Remembered for [`RESTAMPED_KEPT`](super::RESTAMPED_KEPT) from the debt's record,
    /// and through a restart while the debt is still owed; forgotten when the issuer
    /// refuses that reversal ([`IssuerLink::reversal_declined`]). A network's reversal of
    /// such a request that finds nothing of it on the card is answered by the switch:
    /// forwarded, the issuer would get two reversals of one purchase under two keys (the
    /// link's under the request's STAN, the network's under its own), and a host that
    /// books reversals by their own DE 11 and DE 7 rather than by DE 90 would credit the
    /// account twice. One too long for the issuer's frames is not remembered (see
    /// [`IssuerLink::owe_own`]).
    pub fn reverses_itself(&self, reversal: &Message) -> bool {
        self.inner.reversing.knows(|| named(reversal))
    }

    /// Whether the switch answers a network's `reversal` (toward the issuer, as it would
    /// go) in the link's place, the request it names being one the link reverses itself
    /// ([`IssuerLink::reverses_itself`]). Kept if so, the first telling only, in memory for
    /// [`RESTAMPED_KEPT`](super::RESTAMPED_KEPT): should the issuer refuse the link's own
    /// reversal, this one is owed to it in its place ([`IssuerLink::reversal_declined`]).
    /// False, for the caller to forward it, when the link does not reverse the request,
    /// or [`IN_RESERVE_MAX`] reversals are kept already.
    pub fn answers_in_its_place(&self, reversal: &Message) -> bool {
        let Some(named) = named(reversal) else {
            return false;
        };
        let known = || self.inner.reversing.knows(|| Some(named));
        if !known() || self.inner.in_reserve.len() >= IN_RESERVE_MAX {
            return false;
        }
        let kept = match self.inner.in_reserve.entry(named) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(v) => {
                // Without its card-verification data (track 2, PIN block, chip data), as
                // a debt is kept: not held an hour, and not sent again.
                let mut kept = Box::new(reversal.clone());
                kept.remove_card_verification_data();
                v.insert((kept, std::time::Instant::now()));
                true
            }
        };
        // Kept, then looked at again, as a refusal forgets the request and then takes what
        // is kept: one of the two sees the other. Refused meanwhile and this one not taken,
        // it is forwarded; taken, it is owed already.
        if kept && !known() && self.inner.in_reserve.remove(&named).is_some() {
            return false;
        }
        true
    }

    /// The reversal of a request kept as the bytes that were sent; `None`, said loudly,
    /// if it cannot be built (the real account may then stay charged).
    pub(super) fn reversal_of_sent(&self, sent: &Bytes) -> Option<Message> {
        match Message::parse(self.spec(), sent.clone()) {
            Ok(original) => reversal_or_log(&original),
            // vpan packed it itself with this very spec, so this cannot happen.
            Err(e) => {
                Reconcile::ReversalUnbuildable.count();
                tracing::error!(
                    error = %e,
                    "cannot read back a request sent to the issuer to reverse it; the issuer must reconcile"
                );
                None
            }
        }
    }

    /// [`IssuerLink::reverse`] of a request kept as the bytes that were sent, first on
    /// connection `original_conn` (the one the original went out on) while it is up, and
    /// paying `debt` once answered.
    pub(super) fn reverse_sent(
        &self,
        sent: &Bytes,
        original_conn: Option<usize>,
        debt: Option<u64>,
    ) {
        if let Some(reversal) = self.reversal_of_sent(sent) {
            self.send_reversal(Box::new(reversal), original_conn, debt);
        }
    }

    /// Sends a 0400 for `original` in the background, retrying with backoff (up to
    /// `REVERSAL_RETRY_MAX` apart) until the issuer answers it or vpan shuts down: an
    /// issuer host down for longer than a few retries must still get the reversal when it
    /// is back, or the real account stays charged for a purchase the network was refused.
    /// Kept in memory only: the caller's own record (the journal, which failed) is what
    /// would have told this one apart after a restart.
    pub fn reverse(&self, original: &Message) {
        if let Some(reversal) = reversal_or_log(original) {
            self.send_reversal(Box::new(reversal), None, None);
        }
    }

    /// Owes the issuer a network's `reversal` (in the issuer's layout, with the real card)
    /// that it did not hear or did not apply, when a card has given its amount back for it
    /// (in this telling, or in its first for a repeat): the link sends it in the background
    /// until the issuer answers it. Left to the network's own repeats, it would be lost once
    /// the network gave up on a host down for longer than its retries, and the real account
    /// would stay charged for what the card no longer counts. `None` when a debt for this
    /// reversal (an earlier telling of it) is owed already: one goes out, not one per
    /// repeat of the network's. The caller records the debt before the network hears its
    /// answer.
    pub fn owe_reversal(&self, mut reversal: Box<Message>) -> Option<Box<Owed>> {
        // Whatever became of this telling, the network's own repeat may reach the host
        // before the debt does (and be applied): so it goes as a repeat (0401, 0421), which
        // a host that never heard of it takes for the reversal itself.
        reversal.mark_repeat();
        // It went to the issuer as the network sent it, track 2 and all; as a debt it goes
        // as it is kept (see [`IssuerLink::owe`]), the same at every try.
        reversal.remove_card_verification_data();
        let (debt, owed) = match reversal_identity(&reversal) {
            Some(identity) => match self.inner.reversals_owed.entry(identity) {
                dashmap::Entry::Occupied(_) => return None,
                dashmap::Entry::Vacant(v) => {
                    let (debt, owed) = self.owe(&reversal);
                    v.insert(debt.id);
                    (debt, owed)
                }
            },
            None => self.owe(&reversal),
        };
        // Numbered now, it can go out at once: paid before it is recorded, it is still paid.
        self.send_reversal(reversal, None, Some(debt.id));
        Some(owed)
    }

    /// Owes the issuer `reversal` (in its layout), vpan's own, and sends it now, waiting for
    /// its answer: the debt on disk before it goes, so that a crash while it is out still
    /// sends it at the next start; paid once answered, else sent again in the background
    /// as any debt. The answer, when the issuer gave one that is not "not applied" (91,
    /// 96); `None` when it did not, or when a debt reversing the same request is owed
    /// already (its tries go on). Told apart by the request its DE 90 names, not by its
    /// own key: each telling carries its own DE 7, so that none takes the key of a
    /// reversal the acquirer sends under the request's DE 11 and DE 7; and its own STAN.
    pub async fn reverse_now(&self, mut reversal: Box<Message>) -> Option<Box<Message>> {
        let identity = reversed_identity(&reversal)?;
        // A STAN of the link's own too: under the request's, a reversal the acquirer sends
        // under the request's DE 11 in the same second would meet this one's key at the
        // issuer, which would take it for a repeat and give nothing back.
        reversal.set(11, &self.next_stamp()).ok()?;
        let (debt, owed) = match self.inner.reversals_owed.entry(identity) {
            dashmap::Entry::Occupied(_) => return None,
            dashmap::Entry::Vacant(v) => {
                // Kept as a repeat: from the book, after a restart, it may follow this one.
                let mut kept = reversal.clone();
                kept.mark_repeat();
                let (debt, owed) = self.owe(&kept);
                v.insert(debt.id);
                (debt, owed)
            }
        };
        owed.record().await;
        match self.send(reversal.clone()).await {
            Ok(answer) if !reversal_undone(&answer) => {
                self.pay_reversal(debt.id, &reversal);
                Some(answer)
            }
            sent => {
                if matches!(
                    sent,
                    Ok(_)
                        | Err(Unanswered {
                            error: IssuerError::Timeout | IssuerError::ConnectionLost,
                            ..
                        })
                ) {
                    reversal.mark_repeat();
                }
                self.send_reversal(reversal, None, Some(debt.id));
                None
            }
        }
    }

    /// Sends `reversal` in the background until answered ([`IssuerLink::reverse`]), the
    /// first attempt on connection `original_conn` when it is up, and then marks `debt`
    /// paid. An original the issuer has not answered may still be unread in that
    /// connection's stream; on another connection the reversal could overtake it, find
    /// nothing to reverse, and leave the real account charged once the original is read.
    /// Behind it on the same connection, it is read after it.
    pub(super) fn send_reversal(
        &self,
        mut reversal: Box<Message>,
        original_conn: Option<usize>,
        debt: Option<u64>,
    ) {
        // Looked at now, not when the task first runs: a connection lost under the original
        // is down already (its requests are abandoned after it is marked so), and a stream
        // dialled again in that slot since would carry nothing of the original's.
        let mut same_connection = original_conn.filter(|&i| self.slot_open(i));
        let link = self.clone();
        link.inner.reversals.fetch_add(1, Ordering::AcqRel);
        // Counted now, with no debt in the book: a restart forgets it.
        let without_debt = debt
            .is_none()
            .then(|| link.inner.owed.reversal_without_debt());
        tokio::spawn(async move {
            let _done = ReversalDone(link.clone());
            let _without_debt = without_debt;
            let mut wait = Backoff::new(Duration::from_millis(100), REVERSAL_RETRY_MAX);
            let mut lost_in_a_row = 0u32;
            // Whether it was the only reversal out when the last of those was lost: the
            // loss may then be its doing; with others out, any one of them may be the cause.
            let mut lost_alone = false;
            let mut suspect_wait = Backoff::new(SUSPECT_RETRY_FIRST, SUSPECT_RETRY_MAX);
            let mut suspect = false;
            for attempt in 1u64.. {
                // A reversal is not on a cardholder's clock: a slow host gets seconds to
                // answer it before it is sent again.
                let timeout = link.management_timeout();
                let only = same_connection.take();
                let loud = attempt <= 5 || attempt % 12 == 0;
                // Lost often enough with other reversals out, it goes alone: a loss now is
                // its own doing or the host's, not another of the link's reversals' (the
                // network's own still go out). The semaphore is fair: the others wait
                // behind it.
                let alone = lost_in_a_row >= SUSPECT_AFTER_LOSSES && !suspect;
                let permits = if alone { REVERSALS_AT_ONCE as u32 } else { 1 };
                let mut out = tokio::select! {
                    permit = link.inner.reversals_out.acquire_many(permits) => permit,
                    () = link.inner.shutdown.cancelled() => break,
                };
                let sent_at = std::time::Instant::now();
                let send = link.send_via(reversal.clone(), only, timeout);
                tokio::pin!(send);
                let sent = tokio::select! {
                    sent = &mut send => sent,
                    // Alone only while a loss would count against it: a host that holds it
                    // does not hold the others back for its whole timeout.
                    () = tokio::time::sleep(SUSPECT_WITHIN), if alone => {
                        if let Ok(held) = out.as_mut()
                            && let Some(one) = held.split(1)
                        {
                            *held = one;
                        }
                        send.await
                    }
                };
                drop(out);
                // Alone, a loss counts against it even with a network's reversal out beside
                // it: a stream of those must not keep a refused reversal from suspicion.
                let only_reversal_out = alone || matches!(&sent, Err(u) if u.only_reversal_out);
                let sent = sent.map_err(|u| u.error);
                // Once one may have reached the host, the next goes as a repeat (0401), as
                // ISO 8583 has it: a host that applied the first knows it for the same.
                if matches!(
                    sent,
                    Ok(_) | Err(IssuerError::Timeout | IssuerError::ConnectionLost)
                ) {
                    reversal.mark_repeat();
                }
                match &sent {
                    // Dropped as it was read: the host's doing, perhaps over this reversal
                    // (or over another one out with it). A drop later on (a host
                    // restarting) says nothing about it.
                    Err(IssuerError::ConnectionLost) if sent_at.elapsed() < SUSPECT_WITHIN => {
                        lost_in_a_row += 1;
                        lost_alone = only_reversal_out;
                    }
                    // No connection up to try it on says nothing about the reversal.
                    Err(IssuerError::Unavailable) => {}
                    _ => lost_in_a_row = 0,
                }
                match sent {
                    // A front end answering for a host that is down (91), or a host that
                    // failed (96), has not reversed anything: asked again.
                    Ok(answer) if !reversal_undone(&answer) => {
                        if !reversal_settled(&answer) {
                            link.reversal_declined(debt, &answer);
                        }
                        if let Some(id) = debt {
                            link.pay_reversal(id, &reversal);
                        }
                        return;
                    }
                    // It does not fit the link's layout (the original was near
                    // `max_frame_bytes`, and DE 90 made it longer): it never will, so it is
                    // not tried every few seconds until shutdown, nor at every start.
                    Err(IssuerError::Encode) => {
                        Reconcile::ReversalTooLarge.count();
                        tracing::error!(
                            "the reversal of a request does not fit the issuer link's layout; the issuer must reconcile"
                        );
                        if let Some(id) = debt {
                            link.pay_reversal(id, &reversal);
                        }
                        return;
                    }
                    Ok(answer) => {
                        if loud {
                            crate::logging::throttled!(
                                warn,
                                attempt,
                                code = %String::from_utf8_lossy(&answer.response_code().unwrap_or(*b"--")),
                                "reversal toward the issuer answered without being applied; retrying"
                            );
                        }
                    }
                    // Loud at first, then once a minute or so, while the host stays away.
                    Err(e) if loud => {
                        crate::logging::throttled!(warn, attempt, error = %e, "reversal toward the issuer not answered; retrying");
                    }
                    Err(_) => {}
                }
                let was_suspect = suspect;
                // Once suspected, it stays so while the losses go on, alone or not: its tries
                // (half a minute apart and more) need not hold the others back.
                suspect = lost_in_a_row >= SUSPECT_AFTER_LOSSES && (lost_alone || was_suspect);
                if suspect && !was_suspect {
                    Reconcile::ReversalRefused.count();
                    tracing::error!(
                        attempt,
                        lost_in_a_row,
                        "the issuer host dropped its connection each of the last {lost_in_a_row} times a reversal was sent, the last time with no other reversal out: it may refuse that reversal itself (too long for it, or a field it rejects); it is now tried every {}s to {}s so that other requests are not cut off with it; the issuer may have to reconcile",
                        SUSPECT_RETRY_FIRST.as_secs(),
                        SUSPECT_RETRY_MAX.as_secs(),
                    );
                }
                let pause = if suspect {
                    suspect_wait.take()
                } else {
                    // Answered, timed out or dropped late since (or to be tried alone): the
                    // ordinary pace, jittered, so that reversals lost together (a burst on
                    // one connection) spread out rather than go together again.
                    suspect_wait.restart();
                    jittered(wait.take())
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = link.inner.shutdown.cancelled() => break,
                }
            }
            match debt {
                Some(id) if !link.inner.owed.is_unrecorded(id) => crate::logging::throttled!(
                    warn,
                    "reversal toward the issuer not answered before shutdown; it is sent again at the next start"
                ),
                // A debt whose record never landed: the next start does not know it.
                Some(id) => {
                    Reconcile::ReversalUnsentAtStop.count();
                    tracing::error!(
                        debt = id,
                        "reversal toward the issuer not answered before shutdown, and never written to the book of reversals owed: the next start does not know it; the issuer must reconcile"
                    )
                }
                None => {
                    Reconcile::ReversalUnsentAtStop.count();
                    crate::logging::throttled!(
                        error,
                        "reversal toward the issuer not answered before shutdown; the issuer must reconcile"
                    )
                }
            }
        });
    }

    /// The issuer refused `reversal`, which the link sent on its own (vpan's, or a network's
    /// it owed), with `answer`'s code: final, so it is not sent again, but the account may
    /// stay charged for what the card no longer counts. Said for the issuer to reconcile,
    /// and the request it names is no longer one the link reverses itself: a network's
    /// reversal of it, or its repeat, goes to the issuer again (see
    /// [`IssuerLink::reverses_itself`]). Found by its debt, `debt`: its DE 90 names the
    /// request under the stamp it went out with, not always the network's STAN, under which
    /// the link knows it.
    fn reversal_declined(&self, debt: Option<u64>, answer: &Message) {
        Reconcile::ReversalDeclined.count();
        tracing::error!(
            code = %String::from_utf8_lossy(&answer.response_code().unwrap_or(*b"--")),
            "the issuer refused a reversal vpan sent on its own; the real account may stay charged: the issuer must reconcile"
        );
        let Some(id) = debt else {
            return;
        };
        for named in self.inner.reversing.refuse(id) {
            // The network's reversal the switch answered meanwhile goes to the issuer in
            // its place, owed until heard.
            if let Some((_, (kept, _))) = self.inner.in_reserve.remove(&named) {
                tracing::warn!(
                    "the network's reversal of that request, answered by the switch, now goes to the issuer in its place"
                );
                if let Some(owed) = self.owe_reversal(kept) {
                    tokio::spawn(owed.record());
                }
            }
        }
    }

    /// Marks debt `id`, of `reversal`, paid: [`IssuerLink::pay`], and a later telling of
    /// that reversal the issuer does not hear is owed afresh.
    fn pay_reversal(&self, id: u64, reversal: &Message) {
        // Under its own key (a network's reversal owed), or the request's (vpan's own,
        // `reverse_now`): only this debt's entry goes.
        for identity in [reversal_identity(reversal), reversed_identity(reversal)]
            .into_iter()
            .flatten()
        {
            self.inner
                .reversals_owed
                .remove_if(&identity, |_, owed| *owed == id);
        }
        self.pay(id);
    }

    /// Marks debt `id` paid, in the background.
    pub(super) fn pay(&self, id: u64) {
        let book = self.inner.owed.clone();
        tokio::spawn(async move {
            if let Err(e) = book.paid(id).await {
                // The reversal goes again at the next start, and the host takes it for a
                // repeat of the one it applied (or, for a late decline, finds nothing).
                tracing::warn!(debt = id, error = %e, "a reversal owed could not be marked paid");
            }
        });
    }
}

/// The network identity of a reversal as vpan sends it (under the network's STAN), one for
/// its request and its advice forms (0400 and 0420, and their repeats): one debt for both.
fn reversal_identity(reversal: &Message) -> Option<Identity> {
    let mut mti = reversal.mti();
    mti[2] = b'0';
    let de90 = original_data_elements(
        &mti,
        &reversal.stan()?,
        &reversal.transmission_time()?,
        reversal.acquirer().as_deref().unwrap_or_default(),
    );
    Identity::of(&de90, reversal.terminal().as_deref())
}

/// The identity of the request a reversal names in its DE 90, one for every telling of
/// vpan's own reversal of it ([`IssuerLink::reverse_now`]); never a reversal's own (its
/// MTI class is the request's, 1 or 2, not 4).
fn reversed_identity(reversal: &Message) -> Option<Identity> {
    let de90 = reversal.text(90)?;
    Identity::of(de90.as_bytes(), reversal.terminal().as_deref())
}

/// The network identity of the request that vpan's own `reversal` names in DE 90, which
/// the network sent under `network_stan` (DE 90 names the stamp it went out under).
fn network_identity(reversal: &Message, network_stan: Option<[u8; 6]>) -> Option<Identity> {
    let mut de90 = reversal.text(90)?.as_bytes().to_vec();
    if let (Some(stan), Some(named)) = (network_stan, de90.get_mut(4..10)) {
        named.copy_from_slice(&stan);
    }
    Identity::of(&de90, reversal.terminal().as_deref())
}

/// The network identity of the request a network's `reversal` names in its DE 90.
fn named(reversal: &Message) -> Option<Identity> {
    Identity::of(
        reversal.text(90)?.as_bytes(),
        reversal.terminal().as_deref(),
    )
}

/// [`reversal_for`], said loudly when it cannot be built.
pub(super) fn reversal_or_log(original: &Message) -> Option<Message> {
    reversal_for(original)
        .inspect_err(|_| {
            Reconcile::ReversalUnbuildable.count();
            tracing::error!("cannot build the reversal of a request; the issuer must reconcile")
        })
        .ok()
}

/// Counts a background reversal as finished when its task ends, however it ends.
pub(super) struct ReversalDone(IssuerLink);

impl Drop for ReversalDone {
    fn drop(&mut self) {
        self.0.inner.reversals.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer to a reversal that says it was not applied: the host (or a front end for
/// it) is down or failed. Any other code is the issuer's verdict, and final.
pub fn reversal_undone(answer: &Message) -> bool {
    matches!(answer.response_code(), Some(code) if code == *b"91" || code == *b"96")
}

/// An answer to a reversal that leaves nothing to reverse: applied (00), its original not
/// found (25: the issuer never booked it, as for a request that never reached it), or a
/// repeat of one applied already (94). Any other code (a format error, an invalid
/// transaction, a decline) refuses it.
fn reversal_settled(answer: &Message) -> bool {
    matches!(answer.response_code(), Some(code) if matches!(&code, b"00" | b"25" | b"94"))
}

/// Authorization and financial requests (by MTI) move money at the issuer; nothing else
/// needs a reversal when its outcome is unknown.
pub(super) fn needs_reversal(mti: &[u8; 4]) -> bool {
    matches!(mti[1], b'1' | b'2') && mti[2] == b'0'
}

/// `reversal` as it is kept while owed: packed, without card-verification data (the
/// network's reversal may carry its track 2, PIN block and chip data on, which the issuer
/// may have live but which are not kept, not even sealed).
fn without_card_verification_data(reversal: &Message) -> Bytes {
    let mut kept = reversal.clone();
    kept.remove_card_verification_data();
    kept.pack()
}

/// A debt read back from the book (packed in the issuer link's layout `spec`) as it is
/// kept now, when that differs: one written by a vpan of before 2026-12-07 may hold the
/// network's card-verification data. `None` when it holds none, or does not read (said
/// at the start as it is sent).
pub fn kept_as_owed(spec: &'static Spec, reversal: &[u8]) -> Option<Vec<u8>> {
    let message = Message::parse(spec, Bytes::copy_from_slice(reversal)).ok()?;
    CARD_VERIFICATION_DATA
        .iter()
        .any(|&n| message.has(n))
        .then(|| without_card_verification_data(&message).to_vec())
}

/// A 0400 reversing `original` in full: its identifying fields, and DE 90 naming it.
pub fn reversal_for(original: &Message) -> Result<Message, IssuerError> {
    let mut rev = original.clone();
    rev.set_mti(b"0400").map_err(|_| IssuerError::Encode)?;
    // The transaction as the issuer booked it: a repeat (0101, 0121) reverses its first
    // (0100, 0120), which is the MTI an issuer matches DE 90 against.
    let mut mti = original.mti();
    mti[3] = b'0';
    let de90 = original_data_elements(
        &mti,
        &original.stan().unwrap_or([b'0'; 6]),
        &original.transmission_time().unwrap_or([b'0'; 10]),
        original.acquirer().as_deref().unwrap_or_default(),
    );
    // A reversal carries no card-verification data, and it may be kept on disk, owed.
    rev.remove_card_verification_data();
    rev.set(7, &transmission_time(unix_now()))
        .map_err(|_| IssuerError::Encode)?;
    rev.set(90, &de90).map_err(|_| IssuerError::Encode)?;
    Ok(rev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;

    #[test]
    fn a_reversal_names_its_original_in_de90_and_drops_card_data() {
        let spec = Spec::iso87ascii();
        let mut orig = Message::new(spec, b"0100").unwrap();
        let card = crate::pan::test_pan("497010");
        orig.set(2, card.as_bytes()).unwrap();
        orig.set(4, b"000000001000").unwrap();
        orig.set(7, b"1126143015").unwrap();
        orig.set(11, b"000042").unwrap();
        orig.set(32, b"12345").unwrap();
        orig.set(35, format!("{card}=28121010000012300000").as_bytes())
            .unwrap();
        let orig = Message::parse(spec, orig.pack()).unwrap();
        let rev = reversal_for(&orig).unwrap();
        assert_eq!(rev.mti(), *b"0400");
        let de90 = rev.text(90).unwrap();
        assert_eq!(
            de90.as_bytes(),
            b"010000004211261430150000001234500000000000"
        );
        assert!(!rev.has(35));
        assert_eq!(rev.raw(4), Some(&b"000000001000"[..]));
        // A repeat's reversal names the transaction as the issuer booked it: its first.
        let mut repeat = orig.clone();
        repeat.set_mti(b"0101").unwrap();
        let rev = reversal_for(&Message::parse(spec, repeat.pack()).unwrap()).unwrap();
        assert_eq!(&rev.text(90).unwrap().as_bytes()[..4], b"0100");
    }

    /// `vpan_reconcile_required_total{reason}` now (the process's recorder: other tests may
    /// add to it meanwhile, never take from it).
    fn reconciliations(reason: Reconcile) -> u64 {
        let series = format!(
            "vpan_reconcile_required_total{{reason=\"{}\"}} ",
            reason.label()
        );
        let page = crate::metrics::install().render();
        page.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.parse().unwrap())
    }

    /// A link on `book` (which owed `debts`) to an issuer host that is never there.
    fn unconnected_link(
        book: OwedReversals,
        debts: Vec<Debt>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> IssuerLink {
        IssuerLink::start(
            super::super::IssuerSettings {
                connect: "127.0.0.1:1".into(),
                codec: crate::iso8583::FrameCodec::new(crate::iso8583::Framing::Len2, 0, 8192),
                header: Bytes::new(),
                spec: Spec::iso87ascii(),
                timeout: Duration::from_millis(100),
                connections: 1,
                echo_interval: Duration::from_secs(30),
                reconnect_max: Duration::from_secs(1),
                sign_on: false,
            },
            Arc::new(book),
            debts,
            Vec::new(),
            stop.clone(),
        )
    }

    #[tokio::test]
    async fn a_debt_of_an_earlier_run_that_does_not_read_is_counted_for_reconciling() {
        use crate::store::crypto::PanCipher;
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let cipher = PanCipher::from_key(&[7; 32]);
            OwedReversals::open(dir.path(), cipher, unix_now(), 3600).unwrap()
        };
        let (book, _, _) = open();
        book.owe_blocking(book.next_id(), b"not a message").unwrap();
        drop(book);
        let (book, debts, _) = open();
        let before = reconciliations(Reconcile::DebtUnreadable);
        let stop = tokio_util::sync::CancellationToken::new();
        let _link = unconnected_link(book, debts, &stop);
        assert!(reconciliations(Reconcile::DebtUnreadable) > before);
        stop.cancel();
    }

    /// Last review of this stop: the issuer may refuse the link's own reversal before its
    /// debt's record lands (the reversal goes out at once, the record waits for the
    /// purchase's release): the refusal found nothing to forget, the record then made the
    /// purchase one the link reverses itself, and the acquirer's reversal was answered by
    /// the switch for an hour, the account left charged.
    #[tokio::test]
    async fn a_refusal_ahead_of_its_debts_record_leaves_the_purchase_the_acquirers_to_reverse() {
        use crate::store::crypto::PanCipher;
        let dir = tempfile::tempdir().unwrap();
        let (book, debts, _) =
            OwedReversals::open(dir.path(), PanCipher::from_key(&[7; 32]), unix_now(), 3600)
                .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let link = unconnected_link(book, debts, &stop);
        let purchase = |stan: &[u8; 6]| {
            let mut m = Message::new(Spec::iso87ascii(), b"0100").unwrap();
            m.set(2, crate::pan::test_pan("497010").as_bytes()).unwrap();
            m.set(4, b"000000001000").unwrap();
            m.set(7, b"1126143015").unwrap();
            m.set(11, stan).unwrap();
            m.set(32, b"12345").unwrap();
            m.set(41, b"TERM0001").unwrap();
            reversal_for(&Message::parse(Spec::iso87ascii(), m.pack()).unwrap()).unwrap()
        };
        let mut refused = Message::new(Spec::iso87ascii(), b"0410").unwrap();
        refused.set_response_code(b"30").unwrap();
        // Recorded, then refused: the acquirer's reversal goes to the issuer.
        let first = purchase(b"000001");
        let (held, owed) = link.owe_own(&first, None);
        owed.record().await;
        assert!(link.reverses_itself(&first));
        link.reversal_declined(Some(held.id), &refused);
        assert!(!link.reverses_itself(&first));
        // Refused before its record lands: the same.
        let second = purchase(b"000002");
        let (held, owed) = link.owe_own(&second, None);
        link.reversal_declined(Some(held.id), &refused);
        owed.record().await;
        assert!(
            !link.reverses_itself(&second),
            "known once its record landed"
        );
        assert!(!link.answers_in_its_place(&second), "forwarded");
        // Answered in the link's place and kept (its repeat kept once), then the link's
        // own refused: the network's reversal is owed in its place, and nothing stays kept.
        let third = purchase(b"000003");
        let (held, owed) = link.owe_own(&third, None);
        owed.record().await;
        assert!(link.answers_in_its_place(&third));
        assert!(link.answers_in_its_place(&third));
        assert_eq!(link.inner.in_reserve.len(), 1);
        assert!(link.inner.reversals_owed.is_empty());
        link.reversal_declined(Some(held.id), &refused);
        assert!(link.inner.in_reserve.is_empty());
        assert_eq!(link.inner.reversals_owed.len(), 1, "the network's, owed");
        assert!(!link.answers_in_its_place(&third), "forwarded from now on");
        // Kept without its card-verification data.
        let fourth = purchase(b"000004");
        let (_, owed) = link.owe_own(&fourth, None);
        owed.record().await;
        let mut with_track = fourth.clone();
        let track = format!("{}=2912101", crate::pan::test_pan("497010"));
        with_track.set(35, track.as_bytes()).unwrap();
        assert!(link.answers_in_its_place(&with_track));
        assert!(
            link.inner
                .in_reserve
                .iter()
                .all(|kept| !kept.value().0.has(35))
        );
        stop.cancel();
    }

    #[test]
    fn a_reversal_answered_91_or_96_is_not_done_and_any_other_answer_is_final() {
        let answered = |code: &[u8; 2]| {
            let mut m = Message::new(Spec::iso87ascii(), b"0410").unwrap();
            m.set_response_code(code).unwrap();
            m
        };
        assert!(reversal_undone(&answered(b"91")));
        assert!(reversal_undone(&answered(b"96")));
        for code in [b"00", b"25", b"12", b"30"] {
            assert!(!reversal_undone(&answered(code)), "{code:?}");
        }
        // Final, and of those, what leaves nothing to reverse; the rest refuse it (told for
        // reconciling).
        for code in [b"00", b"25", b"94"] {
            assert!(reversal_settled(&answered(code)), "{code:?}");
        }
        for code in [b"12", b"30", b"05", b"N7"] {
            assert!(!reversal_settled(&answered(code)), "{code:?}");
        }
    }

    #[test]
    fn only_auth_and_financial_requests_need_reversing() {
        for (mti, expected) in [
            (b"0100", true),
            (b"0200", true),
            (b"0120", false),
            (b"0400", false),
            (b"0800", false),
        ] {
            assert_eq!(needs_reversal(mti), expected, "{mti:?}");
        }
    }
}
