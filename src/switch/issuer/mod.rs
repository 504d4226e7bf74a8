//! The issuer link: vpan as the client of the issuer's authorization host.
//!
//! `issuer.connections` persistent connections, each redialled with a doubling backoff,
//! signed on (0800, DE 70 = 001) when configured, and kept alive by an 0800 echo (DE 70 =
//! 301) when idle. Requests from every network connection share them, so two network
//! connections may send the same STAN at the same moment: the link re-stamps DE 11 with its
//! own counter toward the issuer, matches the answer by that stamp, and puts the network's
//! STAN back before returning it (jPOS's MUX matches by MTI class + STAN for the same reason).
//!
//! The stamp is the network's own STAN whenever no request in flight uses it, so the
//! issuer sees the transaction's identity (MTI, STAN, DE 7, DE 32) as the network sent
//! it, and a later reversal's DE 90, which names the original by that identity, finds it
//! at the issuer. Only when the STAN is taken is another one used; the link then remembers
//! the change for a while and rewrites DE 90 of a reversal naming that original.
//!
//! An answer that does not come within `issuer.timeout_ms` is an error for the caller (the
//! network gets 91 and the hold is released; the sweep that keeps the time runs every
//! fortieth of the timeout, 2 to 25 ms, so the 91 may come that much after it, and an
//! answer arriving meanwhile is still delivered), but the request stays remembered: if the
//! issuer approves it late, or never answers, or the connection dies under it, the link
//! sends a 0400 reversal for it so the real account is not left charged for a purchase
//! the network was told was not approved. That debt ([`Owed`]) goes to its caller with
//! the error, to be written to disk ([`OwedReversals`]) once the caller's own record of the
//! request is, and before the network hears its 91; it is marked paid once the issuer has
//! answered the reversal. A crash or a restart does not forget it: the link sends what is
//! still owed when it starts. A network's reversal that gave a card's amount back is owed
//! the same way when the issuer does not hear it ([`IssuerLink::owe_reversal`]).
//!
//! Here: the link's state, sending a request and matching its answer. Beside it:
//!
//! - `connection.rs`: one connection to the host (dial, sign-on, echo, writer, reader);
//! - `stamps.rs`: which request is whose (stamps, network identities, repeats, the STANs
//!   changed toward the issuer);
//! - `sweep.rs`: timeouts, and the requests given up on;
//! - `reversals.rs`: the reversals owed, on disk until the issuer answers them.

mod connection;
mod reversals;
mod stamps;
mod sweep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::ConcurrentMap;
use crate::cards::card::unix_now;
use crate::iso8583::{FrameCodec, Message, Spec};
use crate::metrics as m;
use crate::store::owed::{Debt, OwedReversals, Stamp};

pub use connection::network_management_request;
pub use reversals::{Owed, kept_as_owed, reversal_for, reversal_undone};
pub use stamps::RESTAMPED_KEPT;

use reversals::{DebtHeld, needs_reversal};
use stamps::{Echoed, Identity, Meeting, Restamped, identity, meeting};

/// How the link is set up: the `[issuer]` section, resolved.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// `host:port` of the issuer host.
    pub connect: String,
    /// Framing of the link (spec, length header, fixed header).
    pub codec: FrameCodec,
    /// The fixed header sent before each message (e.g. a TPDU); empty for none.
    pub header: Bytes,
    /// The message layout of the link.
    pub spec: &'static Spec,
    /// How long a request may wait for its answer.
    pub timeout: Duration,
    /// Connections kept open.
    pub connections: usize,
    /// Idle time after which a connection sends an 0800 echo.
    pub echo_interval: Duration,
    /// Longest wait between two dial attempts.
    pub reconnect_max: Duration,
    /// Sign on with an 0800 (DE 70 = 001) on each new connection.
    pub sign_on: bool,
}

/// Why a request got no answer from the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    /// No connection to the issuer is up: answered at once, never a hang.
    #[error("no connection to the issuer host is up")]
    Unavailable,
    /// No answer within `issuer.timeout_ms`.
    #[error("the issuer host did not answer in time")]
    Timeout,
    /// The connection carrying the request was lost before the answer came.
    #[error("the connection to the issuer host was lost before its answer")]
    ConnectionLost,
    /// The request could not be written in this link's layout (a field the issuer's spec
    /// does not hold, or a frame over its size).
    #[error("the request does not fit the issuer link's layout")]
    Encode,
    /// Another transaction under the same key (MTI class, STAN, DE 7, DE 32, DE 41) but
    /// another card, processing code or amount is waiting for the issuer: not sent, since
    /// the issuer could not tell the two apart, nor could a reversal naming either (94).
    #[error("another transaction under the same key is waiting for the issuer")]
    Clash,
    /// A repeat (0101, 0401 ...) whose transaction went to the issuer under a stamp that
    /// another request waits under now (or whose first is still waiting, when the repeat
    /// cannot be told for it: a passthrough without DE 7): not sent, since under a stamp of
    /// its own the issuer would take it for a new transaction, and could charge (or
    /// credit) twice. The network hears 91; a reversal the link owes tries again later.
    #[error("the STAN its transaction went to the issuer under is another request's now")]
    Busy,
}

/// What a caller of the link gets: the issuer's answer, or why there is none.
type Reply = Result<Box<Message>, Unanswered>;

/// A request queued: where its answer arrives, its stamp, and what its answer waits for.
type Dispatched = (oneshot::Receiver<Reply>, [u8; 6], StampKept);

/// Whether a request's answer must wait until the change of its STAN is on disk.
enum StampKept {
    /// Its STAN is the network's, or its change was written before.
    Already,
    /// Its STAN was changed now: this caller writes the change (its network identity), and
    /// tells its repeats when done.
    Write(Identity, watch::Sender<bool>),
    /// A repeat of a request whose change is being written: waits for it.
    Wait(watch::Receiver<bool>),
}

/// Why the issuer gave a caller no answer; for a request that may have moved money there
/// (sent, and then no answer in time, or its connection lost), with the reversal the link
/// now owes the issuer.
#[derive(Debug)]
pub struct Unanswered {
    /// Why.
    pub error: IssuerError,
    /// The debt, for the caller to record ([`Owed::record`]) once its own outcome of the
    /// request is on disk, and before the network hears of it.
    pub owed: Option<Box<Owed>>,
    /// For a repeat refused with the request it joined, when that one owes a reversal:
    /// the debt's record, which its first caller writes and the repeat's 91 waits for
    /// (within the link, before the caller sees the refusal), as the first's 91 does.
    debt_written: Option<watch::Receiver<bool>>,
    /// For a reversal whose connection was lost: it was the only reversal out on it then,
    /// so the loss may be its doing (see [`IssuerLink::abandon`]).
    only_reversal_out: bool,
}

impl From<IssuerError> for Unanswered {
    fn from(error: IssuerError) -> Unanswered {
        Unanswered {
            error,
            owed: None,
            debt_written: None,
            only_reversal_out: false,
        }
    }
}

impl Unanswered {
    /// The refusal of a repeat that joined a request owing `debt` (if any).
    fn of_repeat(error: IssuerError, debt: Option<&DebtHeld>) -> Unanswered {
        Unanswered {
            debt_written: debt.map(|d| d.written.clone()),
            ..error.into()
        }
    }
}

/// A request waiting for the issuer's answer.
struct Pending {
    /// Where the answer goes; taken by the sweep when `deadline` passes (the caller then
    /// has its timeout, and an answer arriving later is late).
    reply: Option<oneshot::Sender<Reply>>,
    /// The request as sent (with vpan's stamp), packed: a reversal is built from it if
    /// needed, which is rare, so it is kept as bytes rather than as a second `Message`.
    sent: Bytes,
    /// Its MTI, to tell its answer from a stranger's under the same stamp.
    mti: [u8; 4],
    /// The STAN the network sent it with (`sent` carries the stamp): a request that
    /// meets it under its stamp is its repeat only if it has this STAN too.
    network_stan: Option<[u8; 6]>,
    /// Its card, acquirer and terminal, which its answer must echo: its stamp may have
    /// been another request's a moment ago, whose answer may still come (late, after a
    /// timeout, or again, from a host that sends an answer twice).
    echoed: Echoed,
    /// When it was queued for writing, for the issuer latency histogram and the sweep.
    sent_at: Instant,
    /// When its caller stops waiting.
    deadline: Instant,
    /// The connection it went out on, so a lost connection fails only its own requests.
    conn: usize,
    /// Repeats of it (the same network identity) that came while it was waiting, each with
    /// its own deadline: they get its answer rather than go out again under another
    /// stamp, which the issuer would take for a new transaction and charge twice.
    repeats: Vec<(oneshot::Sender<Reply>, Instant)>,
    /// For a request whose STAN was changed: true once the change is on disk, which a
    /// repeat that joins it waits for before it takes the answer.
    stamp_kept: Option<watch::Receiver<bool>>,
    /// Its debt in the book of reversals owed, from the moment its caller was refused an
    /// answer (timed out, or the connection lost) while its outcome at the issuer was
    /// unknown.
    debt: Option<DebtHeld>,
}

/// One connection slot: the writer's queue while connected.
struct Slot {
    /// Packed messages to write; `None` while disconnected.
    tx: parking_lot::RwLock<Option<mpsc::Sender<Bytes>>>,
    /// Up (connected and signed on).
    up: AtomicBool,
    /// When this connection last read an answer to one of vpan's requests, in
    /// microseconds since the link started (0: not since it connected). Keep-alives, the
    /// host's own network management and answers that match nothing do not count: a host
    /// whose channel still talks while its authorization application hangs answers nothing.
    last_read_us: AtomicU64,
    /// When the latest request on this connection that timed out was sent, same clock. Later
    /// than `last_read_us`: the host has answered nothing here for a whole timeout (see
    /// [`IssuerLink::slot_stalled`]).
    timed_out_sent_us: AtomicU64,
    /// A try at the host is over: up, or refused, or dropped before sign-on.
    tried: AtomicBool,
    /// The host signed off on this connection (its 0800 with DE 70 = 002): no new
    /// requests go on it, and it is closed once those out on it are over, then dialled
    /// again, which signs on again.
    signed_off: AtomicBool,
}

struct Inner {
    /// The settings.
    settings: IssuerSettings,
    /// One per connection.
    slots: Vec<Slot>,
    /// The origin of the slots' clocks.
    started: Instant,
    /// Round-robin cursor over the slots.
    next_slot: AtomicUsize,
    /// Slots whose first try at the host is over (see [`IssuerLink::first_tries`]).
    first_tries: tokio::sync::watch::Sender<usize>,
    /// vpan's own STAN counter toward the issuer.
    next_stan: AtomicU32,
    /// Requests sent and not yet answered (or given up on), by vpan's stamp.
    pending: ConcurrentMap<[u8; 6], Pending>,
    /// Originals that went out under another STAN than the network's.
    restamped: Restamped,
    /// Originals a reversal without DE 90 was named after while they waited (under their
    /// own STAN), for the reversal's repeats: apart from `restamped`, which every request
    /// looks in, so that timeout reversals do not make every approval look.
    named_waiting: Restamped,
    /// Requests the link reverses itself ([`IssuerLink::reverses_itself`]).
    reversing: Arc<reversals::Reversing>,
    /// The network's reversals the switch answered in the link's place, kept in case the
    /// issuer refuses the link's own ([`IssuerLink::answers_in_its_place`]), by the
    /// request they name, with when.
    in_reserve: ConcurrentMap<Identity, (Box<Message>, Instant)>,
    /// The network's reversals owed ([`IssuerLink::owe_reversal`]), by their identity: the
    /// debt's number.
    reversals_owed: ConcurrentMap<Identity, u64>,
    /// Reversals being sent (or retried) in the background, for [`IssuerLink::quiesce`].
    reversals: AtomicUsize,
    /// Reversals out at the host at once, at most ([`reversals::REVERSALS_AT_ONCE`]): the
    /// thousands an outage leaves owed would otherwise all go in the same instant, fill
    /// the connections' write queues, and turn live requests away with 91.
    reversals_out: tokio::sync::Semaphore,
    /// The reversals owed, on disk until the issuer answers them.
    owed: Arc<OwedReversals>,
    /// Stops the connection tasks.
    shutdown: CancellationToken,
}

/// A handle on the issuer link; cheap to clone.
#[derive(Clone)]
pub struct IssuerLink {
    inner: Arc<Inner>,
}

impl IssuerLink {
    /// Starts the connection tasks (they dial in the background; a request made before any
    /// connection is up is answered `Unavailable` at once), and the reversals of `debts`,
    /// owed since an earlier run (`owed` is the book they were read from).
    pub fn start(
        settings: IssuerSettings,
        owed: Arc<OwedReversals>,
        debts: Vec<Debt>,
        stamps: Vec<Stamp>,
        shutdown: CancellationToken,
    ) -> IssuerLink {
        let slots = (0..settings.connections)
            .map(|_| Slot {
                tx: parking_lot::RwLock::new(None),
                up: AtomicBool::new(false),
                last_read_us: AtomicU64::new(0),
                timed_out_sent_us: AtomicU64::new(0),
                tried: AtomicBool::new(false),
                signed_off: AtomicBool::new(false),
            })
            .collect();
        let link = IssuerLink {
            inner: Arc::new(Inner {
                settings,
                slots,
                started: Instant::now(),
                next_slot: AtomicUsize::new(0),
                first_tries: tokio::sync::watch::Sender::new(0),
                next_stan: AtomicU32::new(rand::random::<u32>() % 999_999),
                pending: ConcurrentMap::default(),
                restamped: Restamped::default(),
                named_waiting: Restamped::default(),
                reversing: Arc::default(),
                in_reserve: ConcurrentMap::default(),
                reversals_owed: ConcurrentMap::default(),
                reversals: AtomicUsize::new(0),
                reversals_out: tokio::sync::Semaphore::new(reversals::REVERSALS_AT_ONCE),
                owed,
                shutdown,
            }),
        };
        for i in 0..link.inner.slots.len() {
            tokio::spawn(link.clone().run_slot(i));
        }
        tokio::spawn(link.clone().sweep());
        link.remember_earlier_stamps(stamps);
        link.pay_earlier_debts(debts);
        link
    }

    /// The issuer's layout, for building messages toward it.
    pub fn spec(&self) -> &'static Spec {
        self.inner.settings.spec
    }

    /// How long a request waits for its answer (`issuer.timeout_ms`); the sweep may give
    /// the timeout up to a fortieth of it later.
    pub fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    /// Waits, at most `bound`, until a connection is up or every one has tried the host
    /// once and failed. A switch that starts serving before then answers 91 to what it
    /// could have forwarded a few milliseconds later: after a restart, the repeats of the
    /// purchases left in doubt, which a 91 leaves spent until the network asks again.
    pub async fn first_tries(&self, bound: Duration) {
        let all = self.inner.slots.len();
        let mut tried = self.inner.first_tries.subscribe();
        let settled = tried.wait_for(|&n| n >= all || self.connected() > 0);
        let _ = tokio::time::timeout(bound, settled).await;
    }

    /// Slot `i`'s try at the host is over: counted on its first, and the waiters woken on
    /// every one (a connection up on a later try ends the wait too).
    fn try_over(&self, i: usize) {
        let first = !self.inner.slots[i].tried.swap(true, Ordering::Relaxed);
        self.inner
            .first_tries
            .send_modify(|n| *n += usize::from(first));
    }

    /// Whether `request` fits in one of the issuer's frames as it is. (The link gives a
    /// reversal without DE 90 one when its original is still waiting for the issuer or
    /// went out under another STAN, which the flow names itself from the ledger first;
    /// only an original the ledger has forgotten since is named by the link alone, and a
    /// reversal of it that then outgrows the frame gets 91, having given nothing back.
    /// Room kept for that here would refuse reversals that fit.)
    pub fn fits(&self, request: &Message) -> bool {
        self.inner.settings.codec.fits(request.pack().len())
    }

    /// Connections it keeps (`issuer.connections`).
    pub fn connections(&self) -> usize {
        self.inner.slots.len()
    }

    /// Connections up now.
    pub fn connected(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| s.up.load(Ordering::Relaxed))
            .count()
    }

    /// `at` on the slots' clock, in microseconds since the link started.
    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.started).as_micros())
            .unwrap_or(u64::MAX)
    }

    /// True when the host has read nothing on connection `i` for a whole timeout: a
    /// request sent after its last frame timed out. A host that stopped reading one
    /// connection (a hung thread, TCP still up) is noticed by its echo only once the
    /// connection has been idle `echo_interval_ms`; until then new requests go to the other
    /// connections, and return to it as soon as it reads anything.
    fn slot_stalled(&self, i: usize) -> bool {
        let slot = &self.inner.slots[i];
        slot.timed_out_sent_us.load(Ordering::Relaxed) > slot.last_read_us.load(Ordering::Relaxed)
    }

    /// Connection `i` read an answer to one of vpan's requests at `at`.
    fn slot_read(&self, i: usize, at: Instant) {
        self.inner.slots[i]
            .last_read_us
            .store(self.micros(at), Ordering::Relaxed);
    }

    /// A request sent on connection `i` at `sent_at` timed out.
    fn slot_timed_out(&self, i: usize, sent_at: Instant) {
        let Some(slot) = self.inner.slots.get(i) else {
            return;
        };
        let was_stalled = self.slot_stalled(i);
        slot.timed_out_sent_us
            .fetch_max(self.micros(sent_at), Ordering::Relaxed);
        if !was_stalled && self.slot_stalled(i) {
            crate::logging::throttled!(
                warn,
                connection = i,
                "issuer host has answered nothing on this connection for a whole timeout; new requests go to the others"
            );
        }
    }

    /// Connection `i` is new: nothing read, nothing timed out yet.
    fn slot_reset(&self, i: usize) {
        let slot = &self.inner.slots[i];
        slot.last_read_us.store(0, Ordering::Relaxed);
        slot.timed_out_sent_us.store(0, Ordering::Relaxed);
        slot.signed_off.store(false, Ordering::Relaxed);
    }

    /// True when connection `i` is signed on and carrying requests.
    fn slot_up(&self, i: usize) -> bool {
        self.inner
            .slots
            .get(i)
            .is_some_and(|s| s.up.load(Ordering::Relaxed))
    }

    /// True when connection `i` still carries what went out on it, so that a reversal can
    /// go behind its original there: up, or signed off by the host and not closed yet (it
    /// takes no new requests, but its originals may still be answered).
    fn slot_open(&self, i: usize) -> bool {
        self.inner
            .slots
            .get(i)
            .is_some_and(|s| s.up.load(Ordering::Relaxed) || s.signed_off.load(Ordering::Relaxed))
    }

    /// Sends `request` and waits for its answer, within `issuer.timeout_ms`. The answer
    /// carries the request's own DE 11 back, whatever stamp went on the wire.
    ///
    /// Messages travel boxed through the link (and the flow): a `Message` is about 500
    /// bytes, and every async layer it crosses by value copies it, which `perf` showed as
    /// a sixth of the switch's CPU.
    pub async fn send(&self, request: Box<Message>) -> Result<Box<Message>, Unanswered> {
        self.send_via(request, None, self.inner.settings.timeout)
            .await
    }

    /// [`IssuerLink::send`] on connection `only` when given (sign-on and echo test their
    /// own connection), else on the next connection that is up.
    ///
    /// The timeout is enforced by the sweep, not by a timer per request: a timer costs two
    /// trips through the runtime's timer wheel on every request, and the sweep one pass
    /// over the requests in flight every few milliseconds.
    async fn send_via(
        &self,
        request: Box<Message>,
        only: Option<usize>,
        timeout: Duration,
    ) -> Result<Box<Message>, Unanswered> {
        let network_stan = request.stan();
        let mut request = request;
        let network_de90 = self.rewrite_original(&mut request)?;
        let (rx, stamp, kept) = self.dispatch(request, only, timeout)?;
        // A STAN changed toward the issuer (rare) is on disk before the answer goes back,
        // to this caller or to a repeat: a reversal after a restart must still name the
        // transaction as the issuer knows it. A disk that fails or stalls past the
        // timeout is said loudly, and the answer goes all the same.
        let answer = match kept {
            StampKept::Already => rx.await,
            StampKept::Write(identity, done) => {
                let key = identity.key();
                let write = self.inner.owed.changed_stamp(&key, stamp, unix_now());
                let (answer, written) = tokio::join!(rx, tokio::time::timeout(timeout, write));
                if !matches!(written, Ok(Ok(()))) {
                    tracing::error!(
                        error = ?written,
                        "a changed STAN could not be written in time; a reversal after a restart would name the original by the network's STAN"
                    );
                }
                let _ = done.send(true);
                answer
            }
            StampKept::Wait(mut written) => {
                let answer = rx.await;
                // Err: its writer is gone (it went on regardless).
                let _ = written.wait_for(|w| *w).await;
                answer
            }
        };
        // The sender dropped without a word: the connection was lost under the request, or
        // the link is stopping.
        let mut answer = answer.unwrap_or_else(|_| Err(IssuerError::ConnectionLost.into()));
        if let Err(Unanswered {
            debt_written: Some(written),
            ..
        }) = &mut answer
        {
            // Err: the debt's record is gone without a word (it was written then).
            let _ = written.wait_for(|w| *w).await;
        }
        let mut answer = answer?;
        match network_stan {
            Some(stan) if stan != stamp => {
                answer.set(11, &stan).map_err(|_| IssuerError::Encode)?;
            }
            Some(_) => {}
            // It came without one (a passthrough may): vpan's stamp was for the issuer only.
            None => answer.remove(11),
        }
        // The network hears its transaction as it named it.
        match network_de90 {
            Some(Some(de90)) if answer.has(90) => {
                answer.set(90, &de90).map_err(|_| IssuerError::Encode)?;
            }
            Some(None) => answer.remove(90),
            _ => {}
        }
        Ok(answer)
    }

    /// Stamps, registers and queues a request; returns where its answer will arrive, its
    /// stamp, and its network identity when the stamp is a new change of its STAN.
    fn dispatch(
        &self,
        mut request: Box<Message>,
        only: Option<usize>,
        timeout: Duration,
    ) -> Result<Dispatched, IssuerError> {
        let inner = &self.inner;
        let n = inner.slots.len();
        // A reversal whose original is still waiting goes out behind it, on its
        // connection: on another one it could overtake it, find nothing to reverse, and
        // leave the real account charged once the original is read.
        let writer_of = |i: usize| inner.slots[i].tx.read().clone().map(|tx| (i, tx));
        let (conn, tx) = match only {
            Some(i) => writer_of(i),
            None => self
                .original_conn(&request)
                .and_then(writer_of)
                .or_else(|| {
                    let start = inner.next_slot.fetch_add(1, Ordering::Relaxed);
                    let mut live = (0..n)
                        .map(|k| (start + k) % n)
                        .filter(|&i| inner.slots[i].up.load(Ordering::Relaxed));
                    // In turn, skipping a connection whose host reads nothing or whose
                    // queue is full while another will do; else any that is up.
                    live.clone()
                        .filter(|&i| !self.slot_stalled(i))
                        .filter_map(writer_of)
                        .find(|(_, tx)| tx.capacity() > 0)
                        .or_else(|| live.find_map(writer_of))
                }),
        }
        .ok_or(IssuerError::Unavailable)?;
        let network_stan = request.stan();
        // Any transaction may have been seen before but network management, which is the
        // link's own, per connection (a sign-on on each). A reversal the link sends again
        // (one it owes) is one: under the stamp its first telling had, and joining a
        // telling of it still waiting there (the network's repeat, or its own first, whose
        // stamp the sweep lets go once nobody waits on it), so that the host never sees one
        // reversal under two keys, which it could apply twice.
        let joinable = !is_management_request(&request.mti());
        // A transaction that went out under vpan's stamp before (its STAN was taken then)
        // goes out under that stamp again: a repeat under the network's STAN would be news
        // to the issuer, which would book it a second time.
        let earlier_stamp = network_stan
            .filter(|_| joinable)
            .and_then(|stan| inner.restamped.get(|| identity(&request, &stan)));
        let preferred = earlier_stamp.or(network_stan);
        let (reply, rx) = oneshot::channel();
        // The earlier stamp, or the network's STAN, when free; else vpan's own counter;
        // claimed atomically so two callers can never share a stamp.
        let mut candidate = preferred.unwrap_or_else(|| self.next_stamp());
        let mut reply = Some(reply);
        let mut kept = StampKept::Already;
        let (stamp, sent) = loop {
            match inner.pending.entry(candidate) {
                dashmap::Entry::Vacant(v) => {
                    if Some(candidate) != network_stan {
                        request
                            .set(11, &candidate)
                            .map_err(|_| IssuerError::Encode)?;
                    }
                    let sent = request.pack();
                    if !inner.settings.codec.fits(sent.len()) {
                        // The writer could not send it: failed now, not at its timeout (and
                        // never reversed, since the issuer never saw it).
                        return Err(IssuerError::Encode);
                    }
                    // Remembered before the request is visible in `pending`: a repeat
                    // that finds it there finds its stamp too.
                    let mut stamp_kept = None;
                    if joinable
                        && let Some(stan) = network_stan
                        && stan != candidate
                        && let Some(identity) = identity(&request, &stan)
                    {
                        inner.restamped.insert(identity, candidate);
                        let (done, written) = watch::channel(false);
                        kept = StampKept::Write(identity, done);
                        stamp_kept = Some(written);
                    }
                    let sent_at = Instant::now();
                    v.insert(Pending {
                        reply: reply.take(),
                        sent: sent.clone(),
                        mti: request.mti(),
                        network_stan,
                        echoed: Echoed::of(&request),
                        sent_at,
                        deadline: sent_at + timeout,
                        conn,
                        repeats: Vec::new(),
                        stamp_kept,
                        debt: None,
                    });
                    break (candidate, sent);
                }
                dashmap::Entry::Occupied(mut o) => {
                    if joinable
                        && Some(candidate) == preferred
                        && let Some(stan) = network_stan
                    {
                        match meeting(self.spec(), o.get(), &request, &stan) {
                            // A repeat of a request still waiting, under the stamp it went
                            // out with: it waits for that answer.
                            Meeting::Repeat => {
                                if let Some(reply) = reply.take() {
                                    o.get_mut().repeats.push((reply, Instant::now() + timeout));
                                    let kept = match &o.get().stamp_kept {
                                        Some(written) => StampKept::Wait(written.clone()),
                                        None => StampKept::Already,
                                    };
                                    return Ok((rx, candidate, kept));
                                }
                            }
                            Meeting::Clash => return Err(IssuerError::Clash),
                            Meeting::Stranger => {}
                        }
                    }
                    if Some(candidate) == preferred && request.is_repeat() {
                        return Err(IssuerError::Busy);
                    }
                    candidate = self.next_stamp();
                }
            }
        };
        if tx.try_send(sent).is_err() {
            // The writer is gone or hopelessly behind: nothing was sent, nothing to reverse.
            inner.pending.remove(&stamp);
            return Err(IssuerError::Unavailable);
        }
        Ok((rx, stamp, kept))
    }

    /// The connection of the request still waiting that `request`'s DE 90 names (after
    /// [`IssuerLink::rewrite_original`]), while it is open.
    fn original_conn(&self, request: &Message) -> Option<usize> {
        let de90 = request.text(90)?;
        let stamp = <[u8; 6]>::try_from(de90.as_bytes().get(4..10)?).ok()?;
        let conn = self.inner.pending.get(&stamp)?.conn;
        self.slot_open(conn).then_some(conn)
    }

    /// An answer from the issuer: hands it to its waiter, or reverses a late approval.
    /// Returns whether it answered one of vpan's requests (in time or late): what tells a
    /// host that works from one whose channel only talks.
    fn on_answer(&self, i: usize, body: Bytes) -> bool {
        let answer = match Message::parse(self.spec(), body) {
            Ok(a) => Box::new(a),
            Err(e) => {
                metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "issuer_unreadable")
                    .increment(1);
                crate::logging::throttled!(warn, error = %e, "unreadable answer from the issuer dropped");
                return false;
            }
        };
        if is_management_request(&answer.mti()) {
            self.answer_host(i, &answer);
            return false;
        }
        let Some(stamp) = answer.stan() else {
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "issuer_unreadable")
                .increment(1);
            crate::logging::throttled!(warn, "answer from the issuer without DE 11 dropped");
            return false;
        };
        // An answer under a live stamp but of another message class (a 0810 or a 0410 for
        // a 0100), or for another card, acquirer or terminal (the late answer to a request
        // whose stamp was freed at its timeout and taken since, or an answer the host sent
        // twice, the second after the stamp was taken again), is not this request's
        // answer: taking it would approve or decline on a stranger's DE 39, and hand the
        // network the stranger's card number. It is dropped; the request gets its own
        // answer, or times out (and is reversed if it can move money).
        let echoed = Echoed::of(&answer);
        let answered = self.inner.pending.remove_if(&stamp, |_, p| {
            is_response_to(&p.mti, &answer.mti()) && p.echoed.answered_by(&echoed)
        });
        let Some((_, pending)) = answered else {
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "issuer_unmatched")
                .increment(1);
            if self.inner.pending.contains_key(&stamp) {
                crate::logging::throttled!(warn,
                    mti = %String::from_utf8_lossy(&answer.mti()),
                    "answer from the issuer of another message class, card, acquirer or terminal than the request under its STAN dropped (sent twice, or late: the STAN is another request's now)"
                );
            } else {
                tracing::debug!("answer from the issuer matches no request (already swept)");
            }
            return false;
        };
        let Pending {
            reply,
            sent,
            mti,
            sent_at,
            repeats,
            debt,
            ..
        } = pending;
        // Repeats waiting on it get the same answer; one still waiting for it means the
        // network has this answer, so a late approval needs no reversal. Unless its caller
        // was refused already, and a reversal is owed: the network heard 91 for it, its
        // repeats hear so too, and the approval is reversed (rather than the debt marked
        // paid, which a crash could lose after the repeats' approval went out).
        let owed_approval =
            debt.is_some() && may_have_charged(&mti, &answer) && needs_reversal(&mti);
        let mut repeat_answered = false;
        for (waiter, _) in repeats {
            let to_repeat = if owed_approval {
                Err(Unanswered::of_repeat(IssuerError::Timeout, debt.as_ref()))
            } else {
                Ok(answer.clone())
            };
            repeat_answered |= waiter.send(to_repeat).is_ok() && !owed_approval;
        }
        let late = match reply {
            Some(reply) => {
                // Only answers in time are timed: a late one was counted once already,
                // in `vpan_issuer_timeouts_total`, and the alerts' timeout share divides by
                // the two together.
                issuer_request_duration().record(sent_at.elapsed().as_secs_f64());
                match reply.send(Ok(answer)) {
                    Ok(()) => return true,
                    Err(unsent) => unsent,
                }
            }
            // The caller had its timeout already.
            None => Ok(answer),
        };
        if let Ok(late) = late
            && !repeat_answered
            && may_have_charged(&mti, &late)
            && needs_reversal(&mti)
        {
            crate::logging::throttled!(
                warn,
                "late approval from the issuer, or a late answer that leaves a purchase in doubt; reversing it"
            );
            // Answered: the original is behind the issuer already, any connection will do.
            self.reverse_sent(&sent, None, debt.map(|d| d.id));
        } else if let Some(DebtHeld { id, .. }) = debt {
            // Declined late: nothing to reverse after all. (An approval that reached the
            // network through a repeat had no debt: its caller was still waiting.)
            self.pay(id);
        }
        true
    }

    /// Before the link stops at shutdown (the network side has drained, so every caller
    /// has its answer or its 91): the requests the issuer has not answered are reversed
    /// now rather than by the sweep, and this waits, at most `grace`, until every reversal
    /// is answered. Those it leaves unanswered are in the book of reversals owed, and go
    /// out again when vpan next starts. Then, within what is left of `grace` (a second
    /// at most), it signs off ([`IssuerLink::sign_off`]).
    pub async fn quiesce(&self, grace: Duration) {
        // Only what may have moved money: the link's own requests (its echo, its sign-on,
        // the reversals it is sending) stay, or their loss would tear down the very
        // connections the last reversals go out on.
        self.abandon(|p| needs_reversal(&p.mti));
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.reversals.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    reversals = self.inner.reversals.load(Ordering::Acquire),
                    "reversals still unanswered at shutdown; those owed are sent again at the next start"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.sign_off(left.min(Duration::from_secs(1))).await;
    }

    /// Sign-on and echo are not on a cardholder's clock: a slow host gets some seconds
    /// before its link is declared dead.
    fn management_timeout(&self) -> Duration {
        self.inner.settings.timeout.max(Duration::from_secs(5))
    }

    fn publish_connected(&self) {
        metrics::gauge!(m::ISSUER_CONNECTED).set(self.connected() as f64);
    }
}

/// True for a network management request (0800, 0820, and their repeats).
fn is_management_request(mti: &[u8; 4]) -> bool {
    mti[1] == b'8' && matches!(mti[2], b'0' | b'2')
}

/// True when `answer` is an MTI that answers `request` (0100 → 011x, 0401 → 041x, ...).
fn is_response_to(request: &[u8; 4], answer: &[u8; 4]) -> bool {
    request[..2] == answer[..2] && request[2].is_ascii_digit() && answer[2] == request[2] + 1
}

/// True for an answer that may have approved: any DE 39 but a code known to decline (see
/// [`is_known_decline`]), none included.
///
/// Fails closed. A code vpan does not know (a host's own, an approval outside the list, or
/// none at all) goes to the network as the issuer sent it, and the network may well take
/// it for an approval: counted as a decline, the hold would be given back and the card
/// could spend past its cap. So it counts as money moved, a late one is reversed at the
/// issuer, and only a known decline frees anything.
pub fn may_approve(answer: &Message) -> bool {
    answer
        .response_code()
        .is_none_or(|code| !is_known_decline(code))
}

/// Whether `answer` leaves the transaction it answers undecided: no DE 39, or a code of a
/// host that did not decide it (91, 96) or did not take it (94, the answer of a host that
/// takes no repeats; 30, 06, 12). To the repeat of a purchase in doubt such an answer says
/// nothing of the purchase, which the issuer may have charged the first time.
pub fn undecided(answer: &Message) -> bool {
    use crate::cards::ResponseCode as Code;
    answer.response_code().map(Code).is_none_or(|code| {
        matches!(
            code,
            Code::ISSUER_UNAVAILABLE
                | Code::SYSTEM_ERROR
                | Code::DUPLICATE
                | Code::FORMAT_ERROR
                | Code::ERROR
                | Code::INVALID_TRANSACTION
        )
    })
}

/// Whether the issuer may have charged the real account for the request `mti` that
/// `answer` answers late, after the network heard 91 for it: so it must be reversed. An
/// approval may have; so may an undecided answer to a repeat (0101, 0201), which sent
/// because the first answer was lost, does not say what became of the first.
fn may_have_charged(mti: &[u8; 4], answer: &Message) -> bool {
    may_approve(answer) || (mti[3] == b'1' && undecided(answer))
}

/// DE 39 codes that decline, as their standards define them; any other, an approval or
/// not, may have moved money (see [`may_approve`]). ISO 8583:1987's refusals and errors:
/// 01–07, 12–15, 17–31, 33–44, 51–68, 75 and 90–96 (not 09 "in progress" nor 32
/// "completed partially", nor the ranges it leaves to national and private use, where a
/// host's own approvals live, such as Mastercard's 87 "purchase only, no cash back");
/// Visa's N3, N4, N7 (CVV2), Q1, R0, R1, R3 (stop payment orders) and 1A (more
/// authentication needed); EMV's offline declines Z1 and Z3.
pub fn is_known_decline(code: [u8; 2]) -> bool {
    match code {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => matches!(
            (a - b'0') * 10 + (b - b'0'),
            1..=7 | 12..=15 | 17..=31 | 33..=44 | 51..=68 | 75 | 90..=96
        ),
        _ => ALPHANUMERIC_DECLINES.iter().any(|d| d.as_bytes() == code),
    }
}

/// The letter codes [`is_known_decline`] knows: Visa's and EMV's.
pub const ALPHANUMERIC_DECLINES: [&str; 10] =
    ["N3", "N4", "N7", "Q1", "R0", "R1", "R3", "1A", "Z1", "Z3"];

/// The issuer latency histogram's handle, looked up once: `metrics::histogram!` builds and
/// hashes its key on every call, once per request here. The recorder is installed first
/// (a no-op when it is already), since a handle taken without one would count nowhere.
fn issuer_request_duration() -> &'static metrics::Histogram {
    static HANDLE: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        m::install();
        metrics::histogram!(m::ISSUER_REQUEST_DURATION)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_of_the_requests_class_answers_it() {
        assert!(is_response_to(b"0100", b"0110"));
        assert!(is_response_to(b"0101", b"0110"));
        assert!(is_response_to(b"0400", b"0410"));
        assert!(is_response_to(b"0800", b"0810"));
        assert!(!is_response_to(b"0100", b"0410"));
        assert!(!is_response_to(b"0100", b"0810"));
        assert!(!is_response_to(b"0100", b"0100"));
        assert!(!is_response_to(b"0200", b"0110"));
    }

    #[test]
    fn only_a_code_known_to_decline_is_a_decline() {
        for approval in [b"00", b"08", b"10", b"11", b"16", b"85", b"Y1", b"Y3"] {
            assert!(!is_known_decline(*approval), "{approval:?}");
        }
        for decline in [
            b"01", b"05", b"14", b"51", b"54", b"61", b"68", b"75", b"91", b"96", b"N7", b"R0",
            b"1A", b"Z1", b"Z3",
        ] {
            assert!(is_known_decline(*decline), "{decline:?}");
        }
        // Not declines: in progress, completed partially, the reserved and private ranges
        // (Mastercard's 87 approves), and codes no standard here defines.
        for unknown in [b"09", b"32", b"45", b"76", b"87", b"97", b"Y9", b"  "] {
            assert!(!is_known_decline(*unknown), "{unknown:?}");
        }
    }

    #[test]
    fn an_answer_may_approve_unless_its_code_is_known_to_decline() {
        let answer = |code: Option<&[u8; 2]>| {
            let mut m = Message::new(Spec::iso87ascii(), b"0110").unwrap();
            m.set(11, b"000001").unwrap();
            if let Some(code) = code {
                m.set_response_code(code).unwrap();
            }
            Message::parse(Spec::iso87ascii(), m.pack()).unwrap()
        };
        assert!(may_approve(&answer(Some(b"00"))));
        assert!(may_approve(&answer(Some(b"16"))));
        assert!(
            may_approve(&answer(Some(b"87"))),
            "unknown: money may have moved"
        );
        assert!(may_approve(&answer(None)), "no DE 39: money may have moved");
        assert!(!may_approve(&answer(Some(b"51"))));
    }
}
