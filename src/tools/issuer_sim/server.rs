//! The simulator's server: one task per connection, frames in, answers out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::WRITE_HIGH_WATER;
use super::ledger::response;
use super::stats::Shared;
use crate::iso8583::{Frame, FrameCodec, Message, recover_header};
use crate::pan::Masked;
use crate::tools::pacer::{Pacer, PacerSlot};

/// How long the accept loop waits after an accept that failed (no file descriptor left).
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    seed: u64,
) {
    let mut next_id = 0u64;
    // The connections, so that a stop returns once each has ended and counted what it
    // held back.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                next_id += 1;
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                debug!(%peer, "connection accepted");
                let rng = SmallRng::seed_from_u64(seed ^ next_id.wrapping_mul(0x9E37_79B9));
                let conn = Connection::new(shared.clone(), rng, next_id);
                let cancel = cancel.clone();
                connections.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        r = conn.run(stream) => if let Err(e) = r {
                            debug!(%peer, error = %e, "connection closed");
                        },
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: log, and wait a little before the
                // next try, which would fail at once until a connection ends (spinning, a
                // core the load under test needs; the switch's own accept waits the same).
                crate::logging::throttled!(warn, error = %e, "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                }
            }
        }
    }
    while connections.join_next().await.is_some() {}
}

/// What to do with the connection after a frame.
enum Next {
    /// Keep reading.
    Continue,
    /// Close it now (`drop_share`).
    Drop,
}

/// One client connection: reads frames, answers, writes answers in batches.
struct Connection {
    /// Books and counters.
    shared: Arc<Shared>,
    /// Cuts frames and writes them.
    codec: FrameCodec,
    /// Fault draws.
    rng: SmallRng,
    /// Answers held back by `latency`, in deadline order: (due, framed bytes).
    delayed: VecDeque<(Instant, Bytes)>,
    /// Framed answers ready to write.
    out: BytesMut,
    /// Its number, from 1 in accept order (see [`Received::connection`]).
    id: u64,
}

impl Connection {
    fn new(shared: Arc<Shared>, rng: SmallRng, id: u64) -> Connection {
        let codec = FrameCodec::new(
            shared.config.framing,
            shared.config.header.len(),
            shared.config.max_frame,
        );
        Connection {
            shared,
            codec,
            rng,
            delayed: VecDeque::new(),
            out: BytesMut::with_capacity(64 * 1024),
            id,
        }
    }

    async fn run(mut self, mut stream: TcpStream) -> std::io::Result<()> {
        let (mut rd, mut wr) = stream.split();
        let mut inbuf = BytesMut::with_capacity(64 * 1024);
        let mut open = true;
        let pacer = self.shared.pacer.as_ref().map(Pacer::lease);
        loop {
            let due = self.delayed.front().map(|(t, _)| *t);
            if !open && self.out.is_empty() && self.delayed.is_empty() {
                return Ok(());
            }
            tokio::select! {
                r = rd.read_buf(&mut inbuf), if open && self.out.len() < WRITE_HIGH_WATER => {
                    if r? == 0 {
                        // The peer is done sending, not necessarily reading (a half-close):
                        // the answers still delayed go out, and a write error says when it
                        // has really gone.
                        open = false;
                        continue;
                    }
                    loop {
                        match self.codec.decode(&mut inbuf) {
                            Ok(Some(frame)) => {
                                if let Next::Drop = self.on_frame(frame) {
                                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                                    // The peer sent these and will count them lost: said,
                                    // so that the two sides' counts meet (but for what is
                                    // still in the kernel's buffers, which neither sees).
                                    let mut not_read = 0;
                                    while let Ok(Some(frame)) = self.codec.decode(&mut inbuf) {
                                        not_read += u64::from(matches!(frame, Frame::Message { .. }));
                                    }
                                    self.shared.not_read.fetch_add(not_read, Ordering::Relaxed);
                                    wr.write_all(&self.out).await?;
                                    return Ok(());
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                crate::logging::throttled!(warn, error = %e, "closing connection: frame cannot be read");
                                wr.write_all(&self.out).await?;
                                return Ok(());
                            }
                        }
                    }
                }
                _ = sleep_until_opt(pacer.as_deref(), due) => {
                    let now = Instant::now();
                    while let Some((t, _)) = self.delayed.front() {
                        if *t > now {
                            break;
                        }
                        if let Some((_, b)) = self.delayed.pop_front() {
                            self.out.extend_from_slice(&b);
                            self.shared.answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                w = wr.write(&self.out), if !self.out.is_empty() => {
                    let n = w?;
                    self.out.advance(n);
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Next {
        let (header, body) = match frame {
            Frame::KeepAlive => {
                let _ = tokio_util::codec::Encoder::encode(
                    &mut self.codec,
                    Frame::KeepAlive,
                    &mut self.out,
                );
                return Next::Continue;
            }
            Frame::Message { header, body } => (header, body),
        };
        let cfg = &self.shared.config;
        let roll: f64 = if cfg.drop_share > 0.0 || cfg.timeout_share > 0.0 {
            self.rng.random()
        } else {
            1.0
        };
        let msg = match Message::parse(cfg.spec, body.clone()) {
            Ok(m) => m,
            Err(e) => {
                self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                let h = recover_header(cfg.spec, &body);
                crate::logging::throttled!(warn, error = %e, "malformed request");
                if let (Some(mti), Some(stan)) = (h.mti, h.stan)
                    && mti[2].wrapping_sub(b'0') % 2 == 0
                {
                    let resp_mti = [mti[0], mti[1], mti[2] + 1, b'0'];
                    if let Ok(mut r) = Message::new(cfg.spec, &resp_mti) {
                        let _ = r.set(11, &stan);
                        let _ = r.set_response_code(b"30");
                        self.emit(&header, &r);
                    }
                }
                return Next::Continue;
            }
        };
        if roll < cfg.drop_share {
            self.shared.record(&msg, None, self.id);
            debug!(pan = %Masked(msg.text(2).as_deref().unwrap_or_default()), "dropping connection");
            return Next::Drop;
        }
        let Some(decision) = self.shared.ledger.decide(&msg) else {
            return Next::Continue;
        };
        if roll < cfg.drop_share + cfg.timeout_share || self.is_silent(&msg) {
            self.shared.ledger.left_unanswered(&msg);
            self.shared.unanswered.fetch_add(1, Ordering::Relaxed);
            self.shared.record(&msg, None, self.id);
            return Next::Continue;
        }
        self.shared
            .record(&msg, Some(decision.response_code), self.id);
        let resp = response(&msg, &decision);
        self.emit(&header, &resp);
        Next::Continue
    }

    /// True when the request's card is one the host never answers for.
    fn is_silent(&self, msg: &Message) -> bool {
        let silent = &self.shared.config.silent;
        let mti = msg.mti();
        !silent.is_empty()
            && matches!((mti[1], mti[2]), (b'1' | b'2', b'0'))
            && msg
                .card_number()
                .and_then(Result::ok)
                .is_some_and(|p| silent.contains(&p))
    }

    /// Frames an answer into the write buffer (counted answered), or into the delay queue
    /// (counted when it moves to the write buffer).
    fn emit(&mut self, header: &[u8], resp: &Message) {
        let latency = self.shared.config.latency;
        let result = if latency.is_zero() {
            self.codec
                .encode_message(header, resp, &mut self.out)
                .map(|()| {
                    self.shared.answered.fetch_add(1, Ordering::Relaxed);
                })
        } else {
            let mut b = BytesMut::with_capacity(256);
            self.codec.encode_message(header, resp, &mut b).map(|()| {
                self.delayed
                    .push_back((Instant::now() + latency, b.freeze()));
            })
        };
        if let Err(e) = result {
            crate::logging::throttled!(warn, error = %e, "answer cannot be framed");
        }
    }
}

impl Drop for Connection {
    /// Answers still held back by `latency` when the connection ends, however it ends (the
    /// peer gone, `drop_share`, a frame that cannot be read, the simulator stopping):
    /// booked, never answered.
    fn drop(&mut self) {
        let lost = self.delayed.len() as u64;
        if lost > 0 {
            self.shared
                .lost_with_connection
                .fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// Sleeps until `t` (on the pacer's finer clock when there is one), or forever when there
/// is nothing to wait for.
async fn sleep_until_opt(pacer: Option<&PacerSlot>, t: Option<Instant>) {
    match (t, pacer) {
        (Some(t), Some(pacer)) => pacer.sleep_until(t.into_std()).await,
        (Some(t), None) => tokio::time::sleep_until(t).await,
        (None, _) => std::future::pending().await,
    }
}
