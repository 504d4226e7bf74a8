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
//! still owed when it starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ConcurrentMap;
use crate::cards::request::original_data_elements;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::cards::card::{transmission_time, unix_now};
use crate::iso8583::{Frame, FrameCodec, Message, Spec};
use crate::metrics as m;
use crate::store::owed::{Debt, OwedReversals, Stamp};

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
}

/// Whose request the link sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The network's, through the flow: a repeat of one still waiting joins it.
    Network,
    /// The link's own: sign-on, echo, reversals of what the issuer may have approved.
    Link,
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
}

impl From<IssuerError> for Unanswered {
    fn from(error: IssuerError) -> Unanswered {
        Unanswered {
            error,
            owed: None,
            debt_written: None,
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
}

/// The debt of a request in flight: its number in the book, and whether its record is
/// written yet.
struct DebtHeld {
    id: u64,
    written: watch::Receiver<bool>,
}

impl std::fmt::Debug for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owed")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Owed {
    /// Writes the debt; returns once it is on disk, or the disk failed (said loudly: the
    /// reversal still goes out, but a restart would forget it).
    pub async fn record(mut self: Box<Self>) {
        self.recorded = true;
        if let Err(e) = self.book.owe(self.id, &self.reversal).await {
            tracing::error!(
                debt = self.id,
                error = %e,
                "a reversal owed to the issuer could not be written; it is sent, but a restart would forget it"
            );
        }
    }

    /// Leaves the debt unrecorded, because its caller's own record of the request failed
    /// (`why`): on disk alone, it would sit beside a purchase a restart takes for in doubt.
    /// The reversal still goes out, from memory.
    pub fn forget(&mut self, why: &crate::store::StoreError) {
        self.recorded = true;
        tracing::error!(
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
        if !self.recorded
            && let Err(e) = self.book.owe_blocking(self.id, &self.reversal)
        {
            tracing::error!(debt = self.id, error = %e, "a reversal owed to the issuer could not be written");
        }
        self.written.send_replace(true);
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
    /// Its acquirer and terminal, which its answer must echo, when its stamp was another
    /// request's not long ago (that one's late answer may still come); `None` otherwise,
    /// which is almost always, so that the common answer costs no check.
    echoed: Option<Echoed>,
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
}

struct Inner {
    /// The settings.
    settings: IssuerSettings,
    /// One per connection.
    slots: Vec<Slot>,
    /// Round-robin cursor over the slots.
    next_slot: AtomicUsize,
    /// vpan's own STAN counter toward the issuer.
    next_stan: AtomicU32,
    /// Requests sent and not yet answered (or given up on), by vpan's stamp.
    pending: ConcurrentMap<[u8; 6], Pending>,
    /// Originals that went out under another STAN than the network's.
    restamped: Restamped,
    /// Stamps given up on without an answer (timed out, or forgotten), whose late answer
    /// may still come, for a while.
    freed: Freed,
    /// Reversals being sent (or retried) in the background, for [`IssuerLink::quiesce`].
    reversals: AtomicUsize,
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

/// Messages queued for one connection's writer before callers see back-pressure.
const WRITE_QUEUE: usize = 4096;
/// How long a changed STAN is remembered: for rewriting a reversal's DE 90, and for sending
/// a repeat under it again. Only the network's requests whose STAN was in flight already
/// are remembered, so this stays small.
pub const RESTAMPED_KEPT: Duration = Duration::from_secs(3600);
/// Longest wait between two tries of a reversal toward an issuer that does not answer.
const REVERSAL_RETRY_MAX: Duration = Duration::from_secs(5);
/// Bounds of the sweep's period, which is how late past `issuer.timeout_ms` a caller may
/// get its timeout: a fortieth of the timeout, within these.
const SWEEP_TICK_MIN: Duration = Duration::from_millis(2);
const SWEEP_TICK_MAX: Duration = Duration::from_millis(25);

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
            })
            .collect();
        let link = IssuerLink {
            inner: Arc::new(Inner {
                settings,
                slots,
                next_slot: AtomicUsize::new(0),
                next_stan: AtomicU32::new(rand::random::<u32>() % 999_999),
                pending: ConcurrentMap::default(),
                restamped: Restamped::default(),
                freed: Freed::default(),
                reversals: AtomicUsize::new(0),
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

    /// Takes back the STANs an earlier run changed within the last [`RESTAMPED_KEPT`], each
    /// remembered for what is left of that time.
    fn remember_earlier_stamps(&self, stamps: Vec<Stamp>) {
        let (now, unix) = (Instant::now(), unix_now());
        for Stamp { key, stamp, at } in stamps {
            let age = Duration::from_secs(unix.saturating_sub(at));
            if let Some(identity) = Identity::from_key(&key)
                && let Some(at) = now.checked_sub(age)
            {
                self.inner.restamped.insert_at(identity, stamp, at);
            }
        }
    }

    /// Sends again the reversals an earlier run owed and did not see answered. Each goes
    /// as a repeat (0401): it may have reached the host before.
    fn pay_earlier_debts(&self, debts: Vec<Debt>) {
        if !debts.is_empty() {
            tracing::warn!(
                count = debts.len(),
                "reversals owed to the issuer since an earlier run; sending them"
            );
        }
        for Debt { id, reversal } in debts {
            match Message::parse(self.spec(), reversal) {
                Ok(mut reversal) => {
                    // Four digits: never refused.
                    let _ = reversal.set_mti(b"0401");
                    self.send_reversal(Box::new(reversal), None, Some(id));
                }
                // Written by vpan in the issuer link's layout of the time; the layout was
                // changed since. Kept, and said at every start, until someone reconciles.
                Err(e) => tracing::error!(
                    debt = id,
                    error = %e,
                    "a reversal owed since an earlier run does not read in the issuer link's layout; the issuer must reconcile"
                ),
            }
        }
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

    /// Connections up now.
    pub fn connected(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| s.up.load(Ordering::Relaxed))
            .count()
    }

    /// True when connection `i` is signed on and carrying requests.
    fn slot_up(&self, i: usize) -> bool {
        self.inner
            .slots
            .get(i)
            .is_some_and(|s| s.up.load(Ordering::Relaxed))
    }

    /// Sends `request` and waits for its answer, within `issuer.timeout_ms`. The answer
    /// carries the request's own DE 11 back, whatever stamp went on the wire.
    ///
    /// Messages travel boxed through the link (and the flow): a `Message` is about 500
    /// bytes, and every async layer it crosses by value copies it, which `perf` showed as
    /// a sixth of the switch's CPU.
    pub async fn send(&self, request: Box<Message>) -> Result<Box<Message>, Unanswered> {
        self.send_via(request, None, self.inner.settings.timeout, Origin::Network)
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
        from: Origin,
    ) -> Result<Box<Message>, Unanswered> {
        let network_stan = request.stan();
        let (rx, stamp, kept) = self.dispatch(request, only, timeout, from)?;
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
        if let Some(stan) = network_stan
            && stan != stamp
        {
            answer.set(11, &stan).map_err(|_| IssuerError::Encode)?;
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
        from: Origin,
    ) -> Result<Dispatched, IssuerError> {
        let inner = &self.inner;
        let n = inner.slots.len();
        self.rewrite_original(&mut request)?;
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
                    (0..n)
                        .map(|k| (start + k) % n)
                        .filter(|&i| inner.slots[i].up.load(Ordering::Relaxed))
                        .find_map(writer_of)
                }),
        }
        .ok_or(IssuerError::Unavailable)?;
        let network_stan = request.stan();
        // Only the network's requests can be a transaction seen before: network management
        // is the link's own, per connection (a sign-on on each), and a reversal the link
        // sends again after no answer must go out again.
        let joinable = from == Origin::Network && !is_management_request(&request.mti());
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
                        echoed: inner
                            .freed
                            .contains(&candidate)
                            .then(|| Echoed::of(&request)),
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

    /// A reversal (or any message with DE 90) naming an original that went out under
    /// another STAN: DE 90 gets that STAN, so the issuer finds the original it saw.
    fn rewrite_original(&self, request: &mut Message) -> Result<(), IssuerError> {
        let Some(stamp) = self.inner.restamped.get(|| {
            let de90 = request.text(90)?;
            Identity::of(de90.as_bytes(), request.terminal().as_deref())
        }) else {
            return Ok(());
        };
        let mut de90 = request
            .text(90)
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        if let Some(stan) = de90.get_mut(4..10) {
            stan.copy_from_slice(&stamp);
        }
        request.set(90, &de90).map_err(|_| IssuerError::Encode)
    }

    /// The connection of the request still waiting that `request`'s DE 90 names (after
    /// [`IssuerLink::rewrite_original`]), while it is up.
    fn original_conn(&self, request: &Message) -> Option<usize> {
        let de90 = request.text(90)?;
        let stamp = <[u8; 6]>::try_from(de90.as_bytes().get(4..10)?).ok()?;
        let conn = self.inner.pending.get(&stamp)?.conn;
        self.slot_up(conn).then_some(conn)
    }

    fn next_stamp(&self) -> [u8; 6] {
        let n = self.inner.next_stan.fetch_add(1, Ordering::Relaxed) % 999_999 + 1;
        let mut out = [b'0'; 6];
        let mut v = n;
        for d in out.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out
    }

    /// Keeps slot `i` connected until shutdown.
    async fn run_slot(self, i: usize) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            let dial = tokio::select! {
                r = TcpStream::connect(&self.inner.settings.connect) => r,
                () = self.inner.shutdown.cancelled() => return,
            };
            match dial {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let since = Instant::now();
                    self.run_connection(i, stream).await;
                    // A host that takes the connection, then refuses the sign-on or closes
                    // at once, is not redialled every 50 ms: the backoff starts again only
                    // after a connection that held.
                    if since.elapsed() >= self.inner.settings.reconnect_max {
                        backoff = Duration::from_millis(50);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        issuer = %self.inner.settings.connect,
                        error = %e,
                        "issuer host unreachable; retrying in {} ms",
                        backoff.as_millis()
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(self.inner.settings.reconnect_max);
        }
    }

    /// Serves one open connection until it fails or vpan shuts down.
    async fn run_connection(&self, i: usize, stream: TcpStream) {
        let settings = &self.inner.settings;
        let (read_half, mut write_half) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        *self.inner.slots[i].tx.write() = Some(tx);
        let conn_token = self.inner.shutdown.child_token();

        // The writer: drains the queue in batches, one write per batch.
        let writer = {
            let mut codec = settings.codec.clone();
            let header = settings.header.clone();
            let token = conn_token.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(16 * 1024);
                let mut batch = Vec::with_capacity(64);
                loop {
                    let got = tokio::select! {
                        n = rx.recv_many(&mut batch, 64) => n,
                        () = token.cancelled() => 0,
                    };
                    if got == 0 {
                        return;
                    }
                    for body in batch.drain(..) {
                        let frame = Frame::Message {
                            header: header.clone(),
                            body,
                        };
                        if let Err(e) = codec.encode(frame, &mut buf) {
                            tracing::warn!(error = %e, "message to the issuer not sent");
                        }
                    }
                    // Raced with the connection's end: a host that stops reading (a hung
                    // process with TCP still up) would hold this write, and the slot's
                    // redial behind it, for good.
                    let written = tokio::select! {
                        r = write_half.write_all_buf(&mut buf) => r.is_ok(),
                        () = token.cancelled() => false,
                    };
                    if !written {
                        token.cancel();
                        return;
                    }
                }
            })
        };

        // Sign on before taking traffic, so the issuer sees a signed-on link.
        let mut frames = FramedRead::new(read_half, settings.codec.clone());
        let signed_on = !settings.sign_on || self.sign_on(i, &mut frames, &conn_token).await;
        if signed_on {
            self.inner.slots[i].up.store(true, Ordering::Relaxed);
            self.publish_connected();
            tracing::info!(issuer = %settings.connect, connection = i, "issuer link up");
            let mut last_seen = Instant::now();
            // One timer for the echo, moved on only when it fires: re-armed on every
            // answer, it would cost two trips through the timer wheel per request.
            let echo_due = tokio::time::sleep_until((last_seen + settings.echo_interval).into());
            tokio::pin!(echo_due);
            loop {
                tokio::select! {
                    frame = frames.next() => match frame {
                        Some(Ok(Frame::Message { body, .. })) => {
                            last_seen = Instant::now();
                            self.on_answer(i, body);
                        }
                        Some(Ok(Frame::KeepAlive)) => last_seen = Instant::now(),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "issuer link framing error; reconnecting");
                            break;
                        }
                        None => {
                            tracing::warn!(issuer = %settings.connect, "issuer host closed the connection");
                            break;
                        }
                    },
                    () = &mut echo_due => {
                        let idle_at = last_seen + settings.echo_interval;
                        if Instant::now() < idle_at {
                            echo_due.as_mut().reset(idle_at.into());
                            continue;
                        }
                        last_seen = Instant::now();
                        echo_due.as_mut().reset((last_seen + settings.echo_interval).into());
                        let link = self.clone();
                        let token = conn_token.clone();
                        // The echo's answer arrives through this very loop, so it runs beside it.
                        tokio::spawn(async move {
                            if !link.network_management(i, b"301").await {
                                tracing::warn!(connection = i, "issuer echo unanswered; reconnecting");
                                token.cancel();
                            }
                        });
                    },
                    () = conn_token.cancelled() => break,
                }
            }
        } else {
            tracing::warn!(issuer = %settings.connect, "issuer sign-on refused or unanswered");
        }
        self.inner.slots[i].up.store(false, Ordering::Relaxed);
        *self.inner.slots[i].tx.write() = None;
        conn_token.cancel();
        let _ = writer.await;
        self.publish_connected();
        self.fail_connection(i);
    }

    /// Signs on over connection `i` before it takes traffic: the 0800 goes out, and this
    /// reads frames itself until the 0810 comes back (the connection's read loop has not
    /// started yet).
    ///
    /// It ends with the connection (`conn_token`): at shutdown the sweep, which keeps every
    /// request's timeout, stops first, and a host that neither answers nor closes would
    /// otherwise hold this connection's task forever.
    async fn sign_on(
        &self,
        i: usize,
        frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
        conn_token: &CancellationToken,
    ) -> bool {
        let Ok(msg) = network_management_request(self.spec(), b"001") else {
            return false;
        };
        let answer = self.send_via(
            Box::new(msg),
            Some(i),
            self.management_timeout(),
            Origin::Link,
        );
        tokio::pin!(answer);
        loop {
            tokio::select! {
                result = &mut answer => {
                    return matches!(result, Ok(a) if a.response_code() == Some(*b"00"));
                }
                frame = frames.next() => match frame {
                    Some(Ok(Frame::Message { body, .. })) => self.on_answer(i, body),
                    Some(Ok(Frame::KeepAlive)) => {}
                    Some(Err(_)) | None => return false,
                },
                () = conn_token.cancelled() => return false,
            }
        }
    }

    /// Sends an 0800 with DE 70 = `code` on connection `i` and waits for a 0810 00.
    async fn network_management(&self, i: usize, code: &[u8; 3]) -> bool {
        let Ok(msg) = network_management_request(self.spec(), code) else {
            return false;
        };
        match self
            .send_via(
                Box::new(msg),
                Some(i),
                self.management_timeout(),
                Origin::Link,
            )
            .await
        {
            Ok(answer) => answer.response_code() == Some(*b"00"),
            Err(_) => false,
        }
    }

    /// An answer from the issuer: hands it to its waiter, or reverses a late approval.
    fn on_answer(&self, i: usize, body: Bytes) {
        let answer = match Message::parse(self.spec(), body) {
            Ok(a) => Box::new(a),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable answer from the issuer dropped");
                return;
            }
        };
        if is_management_request(&answer.mti()) {
            self.answer_host(i, &answer);
            return;
        }
        let Some(stamp) = answer.stan() else {
            tracing::warn!("answer from the issuer without DE 11 dropped");
            return;
        };
        // An answer under a live stamp but of another message class (a 0810 or a 0410 for
        // a 0100), or for another acquirer or terminal (the late answer to a request whose
        // stamp was freed at its timeout and taken since), is not this request's answer:
        // taking it would approve or decline on a stranger's DE 39. It is dropped; the
        // request gets its own answer, or times out (and is reversed if it can move money).
        let answered = self.inner.pending.remove_if(&stamp, |_, p| {
            is_response_to(&p.mti, &answer.mti())
                && p.echoed.is_none_or(|e| e.answered_by(&Echoed::of(&answer)))
        });
        let Some((_, pending)) = answered else {
            if self.inner.pending.contains_key(&stamp) {
                tracing::warn!(
                    mti = %String::from_utf8_lossy(&answer.mti()),
                    "answer from the issuer of another message class, acquirer or terminal than its request's dropped"
                );
            } else {
                tracing::debug!("answer from the issuer matches no request (already swept)");
            }
            return;
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
        let owed_approval = debt.is_some() && is_approval(&answer) && needs_reversal(&mti);
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
                    Ok(()) => return,
                    Err(unsent) => unsent,
                }
            }
            // The caller had its timeout already.
            None => Ok(answer),
        };
        if let Ok(late) = late
            && !repeat_answered
            && is_approval(&late)
            && needs_reversal(&mti)
        {
            tracing::warn!("late approval from the issuer; reversing it");
            // Answered: the original is behind the issuer already, any connection will do.
            self.reverse_sent(&sent, None, debt.map(|d| d.id));
        } else if let Some(DebtHeld { id, .. }) = debt {
            // Declined late: nothing to reverse after all. (An approval that reached the
            // network through a repeat had no debt: its caller was still waiting.)
            self.pay(id);
        }
    }

    /// The host's own network management request (its echo test, its side's sign-on):
    /// answered 00 on the connection it came on, as hosts that test their clients expect.
    fn answer_host(&self, i: usize, request: &Message) {
        let mut mti = request.mti();
        mti[2] += 1;
        mti[3] = b'0';
        let mut reply = request.clone();
        if reply.set_mti(&mti).is_err() || reply.set_response_code(b"00").is_err() {
            tracing::warn!("network management request from the issuer not answerable");
            return;
        }
        let sent = self.inner.slots[i]
            .tx
            .read()
            .as_ref()
            .is_some_and(|tx| tx.try_send(reply.pack()).is_ok());
        if !sent {
            tracing::warn!(
                connection = i,
                "answer to the issuer's network management not sent"
            );
        }
    }

    /// Fails every request in flight on connection `i`: their callers see the loss at
    /// once, and since the issuer may have approved them, each is reversed.
    fn fail_connection(&self, i: usize) {
        self.abandon(|p| p.conn == i);
    }

    /// Forgets the requests in flight that `which` selects (their callers, if still
    /// waiting, see the connection lost) and reverses those that may have moved money,
    /// since whether the issuer approved them is unknown.
    fn abandon(&self, which: impl Fn(&Pending) -> bool) {
        let stamps: Vec<[u8; 6]> = self
            .inner
            .pending
            .iter()
            .filter(|p| which(p))
            .map(|p| *p.key())
            .collect();
        for stamp in stamps {
            self.inner.freed.insert(stamp, ());
            let Some((_, mut p)) = self.inner.pending.remove(&stamp) else {
                continue;
            };
            // A caller left without a reversal hears of the loss at once (its reply drops).
            if !needs_reversal(&p.mti) {
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
                    let (debt, owed) = self.owe(&reversal);
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

    /// A new debt for `reversal`: the request's hold on it, and its record for the caller
    /// to write.
    fn owe(&self, reversal: &Message) -> (DebtHeld, Box<Owed>) {
        let id = self.inner.owed.next_id();
        let (written, written_rx) = watch::channel(false);
        let owed = Owed {
            book: self.inner.owed.clone(),
            id,
            reversal: reversal.pack(),
            recorded: false,
            written,
        };
        let held = DebtHeld {
            id,
            written: written_rx,
        };
        (held, Box::new(owed))
    }

    /// Gives callers whose deadline passed their timeout (every few milliseconds), and
    /// forgets requests that were never answered (long after their timeout), reversing
    /// them since their outcome at the issuer is unknown (every second).
    async fn sweep(self) {
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
            for mut p in self.inner.pending.iter_mut() {
                if now >= p.deadline
                    && let Some(reply) = p.reply.take()
                {
                    metrics::counter!(m::ISSUER_TIMEOUTS_TOTAL).increment(1);
                    tracing::debug!(stan = %String::from_utf8_lossy(p.key()), "issuer answer late");
                    // The issuer may approve it yet: a reversal is owed unless its answer
                    // says otherwise. Built here, under the map's lock (a rare path), so
                    // that the request has a debt only if it has a reversal.
                    let owed = needs_reversal(&p.mti)
                        .then(|| self.reversal_of_sent(&p.sent))
                        .flatten()
                        .map(|reversal| {
                            let (debt, owed) = self.owe(&reversal);
                            p.debt = Some(debt);
                            owed
                        });
                    let _ = reply.send(Err(Unanswered {
                        owed,
                        ..IssuerError::Timeout.into()
                    }));
                    // A late answer to it would change nothing (no approval to reverse:
                    // a reversal, an advice, network management), so its stamp is freed
                    // now: a reversal sent again goes out under the same DE 11, which is
                    // how the host tells a repeat (0401) of the one it may have applied.
                    if !needs_reversal(&p.mti) && p.repeats.is_empty() {
                        freed.push(*p.key());
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
            }
            for stamp in freed {
                // Known as freed before it is: a request that takes the stamp the moment
                // it is free must find it so, to have its answer checked.
                self.inner.freed.insert(stamp, ());
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
            }
            // A late answer comes within seconds if at all: kept as long as a request
            // without an answer is.
            if let Some(before) = now.checked_sub(horizon) {
                self.inner.freed.forget_before(before);
            }
            self.abandon(|p| now.duration_since(p.sent_at) > horizon);
        }
    }

    /// The reversal of a request kept as the bytes that were sent; `None`, said loudly,
    /// if it cannot be built (the real account may then stay charged).
    fn reversal_of_sent(&self, sent: &Bytes) -> Option<Message> {
        match Message::parse(self.spec(), sent.clone()) {
            Ok(original) => reversal_or_log(&original),
            // vpan packed it itself with this very spec, so this cannot happen.
            Err(e) => {
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
    fn reverse_sent(&self, sent: &Bytes, original_conn: Option<usize>, debt: Option<u64>) {
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

    /// Sends `reversal` in the background until answered ([`IssuerLink::reverse`]), the
    /// first attempt on connection `original_conn` when it is up, and then marks `debt`
    /// paid. An original the issuer has not answered may still be unread in that
    /// connection's stream; on another connection the reversal could overtake it, find
    /// nothing to reverse, and leave the real account charged once the original is read.
    /// Behind it on the same connection, it is read after it.
    fn send_reversal(
        &self,
        mut reversal: Box<Message>,
        original_conn: Option<usize>,
        debt: Option<u64>,
    ) {
        // Looked at now, not when the task first runs: a connection lost under the original
        // is down already (its requests are abandoned after it is marked so), and a stream
        // dialled again in that slot since would carry nothing of the original's.
        let mut same_connection = original_conn.filter(|&i| self.slot_up(i));
        let link = self.clone();
        link.inner.reversals.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let _done = ReversalDone(link.clone());
            let mut wait = Duration::from_millis(100);
            for attempt in 1u64.. {
                // A reversal is not on a cardholder's clock: a slow host gets seconds to
                // answer it before it is sent again.
                let timeout = link.management_timeout();
                let only = same_connection.take();
                let loud = attempt <= 5 || attempt % 12 == 0;
                let sent = link
                    .send_via(reversal.clone(), only, timeout, Origin::Link)
                    .await
                    .map_err(|u| u.error);
                // Once one may have reached the host, the next goes as a repeat (0401), as
                // ISO 8583 has it: a host that applied the first knows it for the same.
                if matches!(
                    sent,
                    Ok(_) | Err(IssuerError::Timeout | IssuerError::ConnectionLost)
                ) {
                    // Four digits: never refused.
                    let _ = reversal.set_mti(b"0401");
                }
                match sent {
                    // A front end answering for a host that is down (91), or a host that
                    // failed (96), has not reversed anything: asked again.
                    Ok(answer) if !reversal_undone(&answer) => {
                        if let Some(id) = debt {
                            link.pay(id);
                        }
                        return;
                    }
                    // It does not fit the link's layout (the original was near
                    // `max_frame_bytes`, and DE 90 made it longer): it never will, so it is
                    // not tried every few seconds until shutdown, nor at every start.
                    Err(IssuerError::Encode) => {
                        tracing::error!(
                            "the reversal of a request does not fit the issuer link's layout; the issuer must reconcile"
                        );
                        if let Some(id) = debt {
                            link.pay(id);
                        }
                        return;
                    }
                    Ok(answer) => {
                        if loud {
                            tracing::warn!(
                                attempt,
                                code = %String::from_utf8_lossy(&answer.response_code().unwrap_or(*b"--")),
                                "reversal toward the issuer answered without being applied; retrying"
                            );
                        }
                    }
                    // Loud at first, then once a minute or so, while the host stays away.
                    Err(e) if loud => {
                        tracing::warn!(attempt, error = %e, "reversal toward the issuer not answered; retrying");
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = link.inner.shutdown.cancelled() => break,
                }
                wait = (wait * 2).min(REVERSAL_RETRY_MAX);
            }
            match debt {
                Some(_) => tracing::warn!(
                    "reversal toward the issuer not answered before shutdown; it is sent again at the next start"
                ),
                None => tracing::error!(
                    "reversal toward the issuer not answered before shutdown; the issuer must reconcile"
                ),
            }
        });
    }

    /// Marks debt `id` paid, in the background.
    fn pay(&self, id: u64) {
        let book = self.inner.owed.clone();
        tokio::spawn(async move {
            if let Err(e) = book.paid(id).await {
                // The reversal goes again at the next start, and the host takes it for a
                // repeat of the one it applied (or, for a late decline, finds nothing).
                tracing::warn!(debt = id, error = %e, "a reversal owed could not be marked paid");
            }
        });
    }

    /// Before the link stops at shutdown (the network side has drained, so every caller
    /// has its answer or its 91): the requests the issuer has not answered are reversed
    /// now rather than by the sweep, and this waits, at most `grace`, until every reversal
    /// is answered. Those it leaves unanswered are in the book of reversals owed, and go
    /// out again when vpan next starts.
    pub async fn quiesce(&self, grace: Duration) {
        self.abandon(|_| true);
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

/// [`reversal_for`], said loudly when it cannot be built.
fn reversal_or_log(original: &Message) -> Option<Message> {
    reversal_for(original)
        .inspect_err(|_| {
            tracing::error!("cannot build the reversal of a request; the issuer must reconcile")
        })
        .ok()
}

/// Counts a background reversal as finished when its task ends, however it ends.
struct ReversalDone(IssuerLink);

impl Drop for ReversalDone {
    fn drop(&mut self) {
        self.0.inner.reversals.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How much of DE 90 names the original: MTI, STAN, DE 7 and the acquirer (DE 32), which
/// tells apart two acquirers whose STANs meet in the same second (the forwarder is left).
const ORIGINAL_KEY: usize = 31;

/// A transaction's network identity: what DE 90 names (MTI, STAN, DE 7, DE 32), with the
/// MTI's last digit as 0 (a repeat is the same transaction as its first), and the
/// terminal (DE 41), which DE 90 does not carry: two terminals of one acquirer may send
/// the same STAN in the same second, and a reversal comes from its original's terminal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Identity([u8; ORIGINAL_KEY], [u8; 8]);

impl Identity {
    /// From DE 90's text (or its first [`ORIGINAL_KEY`] bytes) and DE 41.
    fn of(de90: &[u8], terminal: Option<&[u8]>) -> Option<Identity> {
        let mut key = <[u8; ORIGINAL_KEY]>::try_from(de90.get(..ORIGINAL_KEY)?).ok()?;
        key[3] = b'0';
        let mut t = [b' '; 8];
        let terminal = terminal.unwrap_or_default();
        t.get_mut(..terminal.len())?.copy_from_slice(terminal);
        Some(Identity(key, t))
    }

    /// Its bytes, for the book ([`Stamp::key`]).
    fn key(&self) -> [u8; IDENTITY_BYTES] {
        let mut out = [0u8; IDENTITY_BYTES];
        out[..ORIGINAL_KEY].copy_from_slice(&self.0);
        out[ORIGINAL_KEY..].copy_from_slice(&self.1);
        out
    }

    /// From [`Identity::key`]'s bytes.
    fn from_key(key: &[u8]) -> Option<Identity> {
        let (original, terminal) = key.split_first_chunk::<ORIGINAL_KEY>()?;
        Some(Identity(*original, terminal.try_into().ok()?))
    }
}

/// An [`Identity`]'s bytes.
const IDENTITY_BYTES: usize = ORIGINAL_KEY + 8;

/// Network identities (see [`Identity`]) of originals that went out under another STAN
/// than the network's, to the stamp used.
type Restamped = Remembered<Identity, [u8; 6]>;

/// Stamps given up on without an answer.
type Freed = Remembered<[u8; 6], ()>;

/// What the link remembers for a while, by key, with when: rare entries, looked for on
/// every request, so an empty map costs one atomic read.
struct Remembered<K, V> {
    map: ConcurrentMap<K, (V, Instant)>,
    /// Entries in `map`, read before every lookup: the map is almost always empty, and a
    /// lookup (the key's fields, then its hash) cost 3 % of an approval's instructions.
    len: AtomicUsize,
}

impl<K: Eq + std::hash::Hash, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Remembered {
            map: ConcurrentMap::default(),
            len: AtomicUsize::new(0),
        }
    }
}

impl<K: Eq + std::hash::Hash, V: Copy> Remembered<K, V> {
    /// The value remembered under the key `key` gives, if any (`key` is only worked out
    /// when something is remembered at all).
    fn get(&self, key: impl FnOnce() -> Option<K>) -> Option<V> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.map.get(&key()?).map(|e| e.0)
    }

    fn contains(&self, key: &K) -> bool {
        self.len.load(Ordering::Acquire) > 0 && self.map.contains_key(key)
    }

    fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    /// [`Remembered::insert`], as of `at`.
    fn insert_at(&self, key: K, value: V, at: Instant) {
        // Counted before it is in the map, so that `len` may count one too many for a
        // moment but never too few.
        self.len.fetch_add(1, Ordering::AcqRel);
        if self.map.insert(key, (value, at)).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets what was remembered before `horizon`.
    fn forget_before(&self, horizon: Instant) {
        let mut forgotten = 0;
        self.map.retain(|_, (_, at)| {
            let keep = *at >= horizon;
            forgotten += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(forgotten, Ordering::Release);
    }
}

/// The network identity of `request` sent under `network_stan`.
fn identity(request: &Message, network_stan: &[u8; 6]) -> Option<Identity> {
    let de90 = original_data_elements(
        &request.mti(),
        network_stan,
        &request.transmission_time()?,
        request.acquirer().as_deref().unwrap_or_default(),
    );
    Identity::of(&de90, request.terminal().as_deref())
}

/// How a request meets the one waiting under the stamp it would take.
#[derive(Debug, PartialEq, Eq)]
enum Meeting {
    /// The same transaction (its first, or a repeat): it waits for that answer.
    Repeat,
    /// The same key, but another card, processing code or amount: refused (94). Sent
    /// under another stamp, it would be a second transaction under one key at the issuer,
    /// and a reversal naming either could reverse the other.
    Clash,
    /// Another transaction that happens to want the same stamp (another acquirer or
    /// terminal under the same STAN, or a STAN that is another request's stamp): it goes
    /// out under a stamp of its own.
    Stranger,
}

/// How `request`, sent by the network under `network_stan`, meets `first`, the request
/// waiting under the stamp `request` would take. Their keys are compared under each one's
/// own network STAN, and for the same key, their card (DE 2, or track 2), processing code
/// and amount. Only reached when two requests meet under one stamp, which is rare, so
/// `first.sent` is read back here rather than its identity kept for every request.
fn meeting(
    spec: &'static Spec,
    first: &Pending,
    request: &Message,
    network_stan: &[u8; 6],
) -> Meeting {
    if first.network_stan != Some(*network_stan) {
        return Meeting::Stranger;
    }
    let Ok(sent) = Message::parse(spec, first.sent.clone()) else {
        return Meeting::Stranger;
    };
    let same_key =
        identity(request, network_stan).is_some_and(|id| identity(&sent, network_stan) == Some(id));
    if !same_key {
        return Meeting::Stranger;
    }
    let card = |m: &Message| m.card_number().and_then(Result::ok);
    let same_content = card(&sent) == card(request)
        && sent.raw(3) == request.raw(3)
        && sent.raw(4) == request.raw(4);
    if same_content {
        Meeting::Repeat
    } else {
        Meeting::Clash
    }
}

/// DE 32 (acquirer) and DE 41 (terminal) of a message, as checksums: an answer echoes its
/// request's, so one that carries another value answers another request. Hosts that leave
/// them out of answers are not checked on them; DE 7 and DE 37 are not compared at all,
/// since some hosts put their own values there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Echoed {
    acquirer: Option<u32>,
    terminal: Option<u32>,
}

impl Echoed {
    fn of(m: &Message) -> Echoed {
        Echoed {
            acquirer: m.acquirer().map(|f| crc32fast::hash(&f)),
            terminal: m.terminal().map(|f| crc32fast::hash(&f)),
        }
    }

    /// Whether an answer that echoes `answer` may be this request's: every field both
    /// carry is the same.
    fn answered_by(&self, answer: &Echoed) -> bool {
        let agree = |a: Option<u32>, b: Option<u32>| a.zip(b).is_none_or(|(a, b)| a == b);
        agree(self.acquirer, answer.acquirer) && agree(self.terminal, answer.terminal)
    }
}

/// An answer to a reversal that says it was not applied: the host (or a front end for
/// it) is down or failed. Any other code is the issuer's verdict, and final.
fn reversal_undone(answer: &Message) -> bool {
    matches!(answer.response_code(), Some(code) if code == *b"91" || code == *b"96")
}

/// True for a network management request (0800, 0820, and their repeats).
fn is_management_request(mti: &[u8; 4]) -> bool {
    mti[1] == b'8' && matches!(mti[2], b'0' | b'2')
}

/// True when `answer` is an MTI that answers `request` (0100 → 011x, 0401 → 041x, ...).
fn is_response_to(request: &[u8; 4], answer: &[u8; 4]) -> bool {
    request[..2] == answer[..2] && request[2].is_ascii_digit() && answer[2] == request[2] + 1
}

/// True for an answer that approves (DE 39 00, 08, 10 or 11).
pub fn is_approval(answer: &Message) -> bool {
    matches!(
        answer.response_code().as_ref().map(|c| &c[..]),
        Some(b"00" | b"08" | b"10" | b"11")
    )
}

/// Authorization and financial requests (by MTI) move money at the issuer; nothing else
/// needs a reversal when its outcome is unknown.
fn needs_reversal(mti: &[u8; 4]) -> bool {
    matches!(mti[1], b'1' | b'2') && mti[2] == b'0'
}

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

/// An 0800 network management request with DE 70 = `code`.
pub fn network_management_request(
    spec: &'static Spec,
    code: &[u8; 3],
) -> Result<Message, IssuerError> {
    let mut msg = Message::new(spec, b"0800").map_err(|_| IssuerError::Encode)?;
    msg.set(7, &transmission_time(unix_now()))
        .map_err(|_| IssuerError::Encode)?;
    msg.set(11, b"000000").map_err(|_| IssuerError::Encode)?;
    msg.set(70, code).map_err(|_| IssuerError::Encode)?;
    Ok(msg)
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
    // A reversal carries no card-verification data.
    for n in [35, 45, 52, 55] {
        rev.remove(n);
    }
    rev.set(7, &transmission_time(unix_now()))
        .map_err(|_| IssuerError::Encode)?;
    rev.set(90, &de90).map_err(|_| IssuerError::Encode)?;
    Ok(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

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
