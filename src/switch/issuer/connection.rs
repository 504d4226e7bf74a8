//! One connection to the issuer host: dialled and redialled with backoff, signed on, kept
//! alive by an echo when idle; a writer task that sends queued requests in batches, and a
//! read loop that hands each answer to the link.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::cards::card::{transmission_time, unix_now};
use crate::iso8583::{Frame, FrameCodec, Message, Spec};

use super::{IssuerError, IssuerLink};

/// Messages queued for one connection's writer before callers see back-pressure.
const WRITE_QUEUE: usize = 4096;

/// The first wait before a redial.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long a connection must have held for the next redial to wait [`FIRST_BACKOFF`]
/// again (or `issuer.reconnect_max_ms`, when shorter).
const HELD: Duration = Duration::from_secs(1);

/// How a connection ended, for the wait before the next dial.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ended {
    /// The host answered one of vpan's requests on it.
    answered: bool,
    /// How long it was up after its sign-on; `None` when never signed on.
    signed_on_for: Option<Duration>,
}

/// The wait before redialling after a connection that `ended` so, the wait before it
/// having been `backoff`. A host that takes the connection, then refuses the sign-on (at
/// once or slowly) or closes at once, is not redialled every 50 ms: the wait doubles up to
/// `max`. One that answered a request, or stayed signed on for a second, and then dropped
/// it (a firewall's or a balancer's hiccup, now and then under load) is redialled at once:
/// a reset only after `max` held (5 s by default) left a host dropping one connection per
/// thousand requests at 2,000/s behind 5 s waits, and 54 % of the requests answered 91 (a
/// reset after a second held alone: 15–30 %; this: 4 %, of which the simulator's own
/// timeouts were 2).
fn backoff_after(backoff: Duration, ended: Ended, max: Duration) -> Duration {
    let held = ended.signed_on_for.is_some_and(|up| up >= HELD.min(max));
    if ended.answered || held {
        FIRST_BACKOFF
    } else {
        backoff
    }
}

/// `wait` less a random part of up to half of it, so that the link's connections, dropped
/// together, do not redial in lockstep (nor its reversals lost together go again together).
pub(super) fn jittered(wait: Duration) -> Duration {
    use rand::RngExt;
    wait.mul_f64(1.0 - rand::rng().random_range(0.0..0.5))
}

impl IssuerLink {
    /// Keeps slot `i` connected until shutdown.
    pub(super) async fn run_slot(self, i: usize) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return;
            }
            let dial = tokio::select! {
                r = crate::switch::dial(&self.inner.settings.connect) => r,
                () = self.inner.shutdown.cancelled() => return,
            };
            let wait = match dial {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let ended = self.run_connection(i, stream).await;
                    self.try_over(i);
                    backoff = backoff_after(backoff, ended, self.inner.settings.reconnect_max);
                    jittered(backoff)
                }
                Err(e) => {
                    self.try_over(i);
                    let wait = jittered(backoff);
                    // Every slot redials on its own backoff: one line a second at most,
                    // whatever `issuer.connections` is.
                    crate::logging::throttled!(
                        warn,
                        issuer = %self.inner.settings.connect,
                        error = %e,
                        slot = i,
                        "issuer host unreachable; retrying in {} ms",
                        wait.as_millis()
                    );
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(self.inner.settings.reconnect_max);
        }
    }

    /// Serves one open connection until it fails or vpan shuts down; says how it went.
    pub(super) async fn run_connection(&self, i: usize, stream: TcpStream) -> Ended {
        let settings = &self.inner.settings;
        let (read_half, mut write_half) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        self.slot_reset(i);
        *self.inner.slots[i].tx.write() = Some(tx);
        let conn_token = self.inner.shutdown.child_token();

        // The writer: drains the queue in batches, one write per batch.
        let mut writer = {
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
                            crate::logging::throttled!(warn, error = %e, "message to the issuer not sent");
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
        let mut served = false;
        let signed_on_at = signed_on.then(Instant::now);
        if signed_on {
            // Not up if the host signed off while its answer to the sign-on was read.
            let slot = &self.inner.slots[i];
            slot.up
                .store(!slot.signed_off.load(Ordering::Relaxed), Ordering::Relaxed);
            self.try_over(i);
            self.publish_connected();
            tracing::info!(issuer = %settings.connect, connection = i, "issuer link up");
            // When the host last answered one of vpan's requests here.
            let mut last_seen = Instant::now();
            // One timer for the echo, moved on only when it fires: re-armed on every
            // answer, it would cost two trips through the timer wheel per request.
            let echo_due = tokio::time::sleep_until((last_seen + settings.echo_interval).into());
            tokio::pin!(echo_due);
            let mut echo: Option<tokio::task::JoinHandle<()>> = None;
            // A frame begun and not finished (a length header that announces more than
            // the host sends) would hold every answer behind it while the connection
            // still counts as up: checked every `timeout`, the bytes of one still
            // waiting at two checks in a row with no frame finished between them drop
            // the connection. Its requests have all timed out by then.
            // At least a second apart: a short timeout must not drop a sound connection whose
            // host's frames come in pieces, nor wake it every millisecond.
            let every = settings.timeout.max(Duration::from_secs(1));
            let mut partial_check =
                tokio::time::interval_at((Instant::now() + every).into(), every);
            partial_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut partial_at_last_check, mut frame_since_check) = (false, false);
            let mut signed_off_at = None;
            loop {
                // Signed off by the host (also while the sign-on was out): closed once
                // nothing is out on it (answered, or given up on by the sweep), or a
                // timeout after the sign-off; what is still out then is abandoned as on a
                // connection lost (reversed where it may have moved money).
                if self.inner.slots[i].signed_off.load(Ordering::Relaxed) {
                    let since = *signed_off_at.get_or_insert_with(Instant::now);
                    let nothing_out = !self.inner.pending.iter().any(|p| p.conn == i);
                    if nothing_out || since.elapsed() >= settings.timeout {
                        tracing::info!(
                            connection = i,
                            "issuer connection signed off by the host closed; dialling again"
                        );
                        break;
                    }
                }
                tokio::select! {
                    frame = frames.next() => match frame {
                        Some(Ok(Frame::Message { body, .. })) => {
                            frame_since_check = true;
                            let at = Instant::now();
                            if self.on_answer(i, body) {
                                served = true;
                                last_seen = at;
                                self.slot_read(i, at);
                            } else {
                                self.test_if_stalled(i, &mut echo, &conn_token);
                            }
                        }
                        // The channel is alive; that says nothing of the host behind it.
                        Some(Ok(Frame::KeepAlive)) => {
                            frame_since_check = true;
                            self.test_if_stalled(i, &mut echo, &conn_token);
                        }
                        // At a stop the connection ends under vpan's own shutdown: no news
                        // of the host, and no warning that would send someone looking.
                        Some(Err(e)) if !self.inner.shutdown.is_cancelled() => {
                            tracing::warn!(error = %e, "issuer link framing error; reconnecting");
                            break;
                        }
                        None if !self.inner.shutdown.is_cancelled() => {
                            tracing::warn!(issuer = %settings.connect, "issuer host closed the connection");
                            break;
                        }
                        Some(Err(_)) | None => break,
                    },
                    _ = partial_check.tick() => {
                        let partial = !frames.read_buffer().is_empty();
                        if partial && partial_at_last_check && !frame_since_check {
                            tracing::warn!(
                                issuer = %settings.connect,
                                bytes = frames.read_buffer().len(),
                                "issuer host began a frame and did not finish it within issuer.timeout_ms; reconnecting"
                            );
                            break;
                        }
                        partial_at_last_check = partial;
                        frame_since_check = false;
                    },
                    () = &mut echo_due => {
                        let idle_at = last_seen + settings.echo_interval;
                        if Instant::now() < idle_at {
                            echo_due.as_mut().reset(idle_at.into());
                            continue;
                        }
                        last_seen = Instant::now();
                        echo_due.as_mut().reset((last_seen + settings.echo_interval).into());
                        self.echo_unless_echoing(i, &mut echo, &conn_token);
                    },
                    () = conn_token.cancelled() => break,
                }
            }
        } else if !self.inner.shutdown.is_cancelled() {
            tracing::warn!(issuer = %settings.connect, "issuer sign-on refused or unanswered");
        }
        // Neither up nor open any more (see `slot_open`) before its queue goes.
        self.inner.slots[i].up.store(false, Ordering::Relaxed);
        let signed_off = self.inner.slots[i]
            .signed_off
            .swap(false, Ordering::Relaxed);
        *self.inner.slots[i].tx.write() = None;
        // Signed off, the connection is sound: what is queued (the answer to the
        // sign-off) is written before it closes, within a second.
        let drained = signed_off
            && tokio::time::timeout(Duration::from_secs(1), &mut writer)
                .await
                .is_ok();
        conn_token.cancel();
        if !drained {
            let _ = writer.await;
        }
        self.publish_connected();
        self.fail_connection(i);
        Ended {
            answered: served,
            signed_on_for: signed_on_at.map(|at| at.elapsed()),
        }
    }

    /// A frame that answers nothing came on connection `i` (a keep-alive, the host's own
    /// network management, an answer that matches no request): its channel talks. Stalled
    /// too (a request timed out with nothing answered since it was sent), its host may be
    /// hung behind that channel: it is tested with an echo now, rather than after
    /// `issuer.echo_interval_ms` without answers, and dropped if that goes unanswered. A
    /// connection that says nothing at all, as behind a host that stopped reading, keeps
    /// its requests queued in order until then: a reversal sent on another connection
    /// could overtake its original still in this one.
    fn test_if_stalled(
        &self,
        i: usize,
        echo: &mut Option<tokio::task::JoinHandle<()>>,
        conn_token: &CancellationToken,
    ) {
        if self.slot_stalled(i) {
            self.echo_unless_echoing(i, echo, conn_token);
        }
    }

    /// Sends an 0800 echo on connection `i` unless one is still out (`echo`); an echo left
    /// unanswered recycles the connection. It runs beside the connection's read loop, which
    /// its answer comes through.
    fn echo_unless_echoing(
        &self,
        i: usize,
        echo: &mut Option<tokio::task::JoinHandle<()>>,
        conn_token: &CancellationToken,
    ) {
        if echo.as_ref().is_some_and(|e| !e.is_finished()) {
            return;
        }
        let link = self.clone();
        let token = conn_token.clone();
        *echo = Some(tokio::spawn(async move {
            if !link.network_management(i, b"301").await {
                tracing::warn!(connection = i, "issuer echo unanswered; reconnecting");
                token.cancel();
            }
        }));
    }

    /// Signs on over connection `i` before it takes traffic: the 0800 goes out, and this
    /// reads frames itself until the 0810 comes back (the connection's read loop has not
    /// started yet).
    ///
    /// It ends with the connection (`conn_token`): at shutdown the sweep, which keeps every
    /// request's timeout, stops first, and a host that neither answers nor closes would
    /// otherwise hold this connection's task forever.
    pub(super) async fn sign_on(
        &self,
        i: usize,
        frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
        conn_token: &CancellationToken,
    ) -> bool {
        let Ok(msg) = network_management_request(self.spec(), b"001", self.next_stamp()) else {
            return false;
        };
        let answer = self.send_via(Box::new(msg), Some(i), self.management_timeout());
        tokio::pin!(answer);
        loop {
            tokio::select! {
                result = &mut answer => {
                    return matches!(result, Ok(a) if a.response_code() == Some(*b"00"));
                }
                frame = frames.next() => match frame {
                    Some(Ok(Frame::Message { body, .. })) => {
                        self.on_answer(i, body);
                    }
                    Some(Ok(Frame::KeepAlive)) => {}
                    Some(Err(_)) | None => return false,
                },
                () = conn_token.cancelled() => return false,
            }
        }
    }

    /// Sends an 0800 with DE 70 = `code` on connection `i` and waits for a 0810 00.
    pub(super) async fn network_management(&self, i: usize, code: &[u8; 3]) -> bool {
        self.network_management_within(i, code, self.management_timeout())
            .await
    }

    /// [`IssuerLink::network_management`], waiting `timeout` at most.
    async fn network_management_within(&self, i: usize, code: &[u8; 3], timeout: Duration) -> bool {
        let Ok(msg) = network_management_request(self.spec(), code, self.next_stamp()) else {
            return false;
        };
        match self.send_via(Box::new(msg), Some(i), timeout).await {
            Ok(answer) => answer.response_code() == Some(*b"00"),
            Err(_) => false,
        }
    }

    /// At a clean stop, once the link is quiesced: vpan signs off on every connection up
    /// (0800, DE 70 = 002), so that the host's operators see a stop rather than a link
    /// lost, waiting `within` at most for the answers. Not where the link does not sign
    /// on (`issuer.sign_on = false`).
    pub async fn sign_off(&self, within: Duration) {
        if !self.inner.settings.sign_on || within.is_zero() {
            return;
        }
        let up: Vec<usize> = (0..self.inner.slots.len())
            .filter(|&i| self.slot_up(i))
            .collect();
        // No new request goes out after the sign-off (the network side has drained).
        for &i in &up {
            self.inner.slots[i].up.store(false, Ordering::Relaxed);
        }
        self.publish_connected();
        let answered = futures_util::future::join_all(
            up.iter()
                .map(|&i| self.network_management_within(i, b"002", within)),
        )
        .await;
        tracing::info!(
            connections = up.len(),
            answered = answered.iter().filter(|&&ok| ok).count(),
            "signed off from the issuer host"
        );
    }

    /// The host's own network management request (its echo test, its side's sign-on or
    /// sign-off): answered 00 on the connection it came on, as hosts that test their
    /// clients expect. After a sign-off (DE 70 = 002) the connection takes no new
    /// requests: the host has said it takes none there ([`IssuerLink::run_connection`]
    /// closes it once what is out on it is over, and the slot dials again).
    pub(super) fn answer_host(&self, i: usize, request: &Message) {
        if request.text(70).as_deref() == Some(b"002") {
            let slot = &self.inner.slots[i];
            slot.signed_off.store(true, Ordering::Relaxed);
            slot.up.store(false, Ordering::Relaxed);
            self.publish_connected();
            tracing::warn!(
                connection = i,
                "issuer host signed off on this connection: no new requests go on it; it is closed once those out on it are over, and dialled again"
            );
        }
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
}

/// An 0800 network management request with DE 70 = `code`, under `stan` (one of the
/// link's own: a host may refuse a DE 11 of zeros, which ISO 8583 does not number with).
pub fn network_management_request(
    spec: &'static Spec,
    code: &[u8; 3],
    stan: [u8; 6],
) -> Result<Message, IssuerError> {
    let mut msg = Message::new(spec, b"0800").map_err(|_| IssuerError::Encode)?;
    msg.set(7, &transmission_time(unix_now()))
        .map_err(|_| IssuerError::Encode)?;
    msg.set(11, &stan).map_err(|_| IssuerError::Encode)?;
    msg.set(70, code).map_err(|_| IssuerError::Encode)?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_served_is_redialled_at_once_and_one_dropped_at_once_backs_off() {
        let max = Duration::from_secs(5);
        let long = Duration::from_millis(3_200);
        let ended = |answered, signed_on_for| Ended {
            answered,
            signed_on_for,
        };
        let moment = Some(Duration::from_millis(20));
        let second = Some(Duration::from_millis(1_000));
        // Dropped after answering, or a second or more signed on: the next dial comes soon.
        assert_eq!(backoff_after(long, ended(true, moment), max), FIRST_BACKOFF);
        assert_eq!(
            backoff_after(long, ended(false, second), max),
            FIRST_BACKOFF
        );
        // Closed at once, nothing answered, or the sign-on refused however slowly: the
        // wait keeps growing.
        assert_eq!(backoff_after(long, ended(false, moment), max), long);
        assert_eq!(backoff_after(long, ended(false, None), max), long);
        // With a reconnect_max under a second, a connection signed on that long counts.
        let short = Duration::from_millis(200);
        assert_eq!(
            backoff_after(short, ended(false, Some(short)), short),
            FIRST_BACKOFF
        );
    }

    #[test]
    fn a_redial_waits_between_half_and_all_of_its_backoff() {
        let wait = Duration::from_millis(400);
        for _ in 0..1_000 {
            let w = jittered(wait);
            assert!(w > wait / 2 && w <= wait, "{w:?}");
        }
    }
}
