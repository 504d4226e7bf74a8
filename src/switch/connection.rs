//! One network-side connection: frames in, answers out, many requests in flight.
//!
//! A single task per connection reads frames, keeps every request it has not answered yet
//! in a `FuturesUnordered` (no task per request), and writes answers as soon as each is
//! ready, whatever the order they came in. Answers ready together go out in one write.
//! Back-pressure: past `max_in_flight` requests, or with a large backlog of unwritten
//! answers (a peer that does not read), vpan stops reading from that peer; the peer is
//! then closed if it makes no progress for `read_timeout_ms`. A bad frame costs only its
//! own connection, never another one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::iso8583::{Frame, FrameCodec, FrameError};
use crate::metrics as m;

use super::flow::{Answer, Flow, Serving};

/// Per-connection limits, from `[network]`.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// The link's framing.
    pub codec: FrameCodec,
    /// Requests in flight before reading pauses.
    pub max_in_flight: usize,
    /// Silence after which the connection is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// A started frame, or a blocked write, must progress within this.
    pub read_timeout: Duration,
    /// Time given to requests in flight to be answered once shutdown starts; after it the
    /// connection closes and they finish (hold outcomes recorded) unanswered.
    pub drain_timeout: Duration,
}

/// Unwritten answers past which vpan stops reading a peer that does not read.
const WRITE_BACKLOG: usize = 256 * 1024;

/// The timer's setting when no deadline applies.
const FAR: Duration = Duration::from_secs(3600);

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    PeerClosed,
    Idle,
    ReadTimeout,
    WriteStalled,
    Frame(FrameError),
    Write(std::io::Error),
    Read(std::io::Error),
    Shutdown,
}

/// What [`serve`] tells its caller about reading, for a dialling side's link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// vpan reads no more requests from this peer (a bad frame; or vpan is closing the
    /// connection, and lingers for the peer to read its last answers), but the connection
    /// stays open meanwhile: a second session beside it could be refused by a network
    /// that allows one. The link takes no new requests: it is down.
    Stopped,
    /// The peer will send nothing more: it closed its side (answers still go to a peer
    /// that half-closed), or the connection ended. Said once, last.
    Ended,
}

/// Serves one connection until the peer leaves, it misbehaves, or shutdown drains it.
///
/// `reading` hears when reading stops and when it has ended. A dialling side redials on
/// [`Reading::Ended`], without waiting for the requests in flight, which may take up to
/// `issuer.timeout_ms`.
///
/// Reading is done here (not behind a `FramedRead`) so that every arrival of bytes wakes
/// this loop: a frame's first byte starts its read timeout, and a peer that feeds a frame
/// one byte at a time is closed when that timeout passes, not when the connection idles.
pub async fn serve<S>(
    stream: S,
    flow: Arc<Flow>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    mut reading_hook: impl FnMut(Reading),
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut read_half, mut write_half) = tokio::io::split(stream);
    let mut codec = limits.codec.clone();
    let mut encoder = limits.codec.clone();
    let mut inbuf = BytesMut::with_capacity(8 * 1024);
    let flow = &*flow;
    let mut in_flight = FuturesUnordered::new();
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut reading = true;
    let mut bad_frame: Option<FrameError> = None;
    let mut last_frame = Instant::now();
    // When the incomplete frame now in `inbuf` started, while vpan is reading it.
    let mut frame_started: Option<Instant> = None;
    let mut last_write_progress = Instant::now();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Bytes read before the stop began and not cut into frames yet: a frame that begins
    // among them was sent before the stop, and is served as if it had come in time.
    let mut read_before_stop = 0usize;
    // One timer for all the deadlines below, moved only when a deadline comes earlier or
    // it has fired: made anew on every turn of the loop, it cost two trips through the
    // runtime's timer wheel per wake-up. Firing early is harmless: each deadline is
    // checked against the clock when it does.
    let timer = tokio::time::sleep(FAR);
    tokio::pin!(timer);
    let mut peer_closed = false;
    let mut ended_said = false;
    let mut said_ended = |hook: &mut dyn FnMut(Reading)| {
        if !ended_said {
            ended_said = true;
            hook(Reading::Ended);
        }
    };

    let end = loop {
        let room = |in_flight: usize, out: &BytesMut| {
            in_flight < limits.max_in_flight && out.len() < WRITE_BACKLOG
        };
        // Cut every complete frame out of what was read, as far as the limits allow.
        while reading && room(in_flight.len(), &out) {
            let unread = inbuf.len();
            let decoded = codec.decode(&mut inbuf);
            let sent_before_stop = read_before_stop > 0;
            read_before_stop = read_before_stop.saturating_sub(unread - inbuf.len());
            match decoded {
                Ok(Some(frame)) => {
                    last_frame = Instant::now();
                    frame_started = None;
                    if out.is_empty() {
                        last_write_progress = last_frame;
                    }
                    match frame {
                        Frame::Message { header, body } => {
                            // Sent after the stop began: a new purchase is refused (91).
                            let serving = match drain_deadline {
                                Some(_) if !sent_before_stop => Serving::Stopping,
                                _ => Serving::Open,
                            };
                            in_flight.push(answer_of(flow, header, body, last_frame, serving));
                        }
                        Frame::KeepAlive => {
                            let _ = encoder.encode(Frame::KeepAlive, &mut out);
                        }
                    }
                }
                Ok(None) => {
                    if inbuf.is_empty() {
                        frame_started = None;
                    } else if frame_started.is_none() {
                        frame_started = Some(Instant::now());
                    }
                    break;
                }
                Err(e) if e.frame_skipped() => {
                    // One frame that cannot be read, its length known: dropped and
                    // counted, and the connection goes on.
                    // Counted, not logged per frame, and not activity: a peer sending
                    // nothing else is still closed at its idle timeout.
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "unreadable")
                        .increment(1);
                    tracing::debug!(error = %e, "unreadable frame dropped");
                    frame_started = None;
                }
                Err(e) => {
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => frame_reason(&e))
                        .increment(1);
                    crate::logging::throttled!(warn, error = %e, "bad frame: closing the connection after answering what is in flight");
                    reading = false;
                    inbuf.clear();
                    frame_started = None;
                    bad_frame = Some(e);
                    reading_hook(Reading::Stopped);
                }
            }
        }
        if peer_closed {
            said_ended(&mut reading_hook);
        }
        let can_read = reading && room(in_flight.len(), &out);
        if !can_read && frame_started.is_some() {
            // vpan stopped reading (its own back-pressure): the peer is not late meanwhile.
            frame_started = Some(Instant::now());
        }
        if !reading && in_flight.is_empty() && out.is_empty() {
            break match bad_frame.take() {
                Some(e) => End::Frame(e),
                None => End::PeerClosed,
            };
        }
        // Not while a frame begun before the stop is still coming: it is served too (the
        // read timeout and the drain deadline bound the wait).
        if drain_deadline.is_some()
            && in_flight.is_empty()
            && out.is_empty()
            && read_before_stop == 0
        {
            break End::Shutdown;
        }
        // Whichever deadline applies now: a started frame or a blocked write must make
        // progress, a silent connection is closed when idle, a drain ends.
        let mut wake = drain_deadline;
        if let Some(started) = frame_started {
            wake = min_deadline(wake, (started + limits.read_timeout).into());
        } else if let Some(idle) = limits.idle_timeout
            && in_flight.is_empty()
        {
            wake = min_deadline(wake, (last_frame + idle).into());
        }
        if !out.is_empty() {
            wake = min_deadline(wake, (last_write_progress + limits.read_timeout).into());
        }
        match wake {
            Some(at) if at < timer.deadline() || timer.is_elapsed() => timer.as_mut().reset(at),
            None if timer.is_elapsed() => timer.as_mut().reset(tokio::time::Instant::now() + FAR),
            _ => {}
        }

        tokio::select! {
            biased;
            Some(answered) = in_flight.next(), if !in_flight.is_empty() => {
                frame_answer(&limits.codec, answered, &mut out);
            }
            written = write_half.write_buf(&mut out), if !out.is_empty() => match written {
                Ok(0) => break End::Write(std::io::ErrorKind::WriteZero.into()),
                Ok(_) => last_write_progress = Instant::now(),
                Err(e) => break End::Write(e),
            },
            read = read_half.read_buf(&mut inbuf), if can_read => match read {
                Ok(0) => {
                    reading = false;
                    peer_closed = true;
                    if !inbuf.is_empty() {
                        // The peer left in the middle of a frame.
                        metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "truncated").increment(1);
                        crate::logging::throttled!(info, bytes = inbuf.len(), "network peer closed in the middle of a frame");
                        inbuf.clear();
                        frame_started = None;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // A reset or the like: answers still pending cannot be delivered.
                    tracing::debug!(error = %e, "network read failed");
                    break End::Read(e);
                }
            },
            () = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + limits.drain_timeout);
                // What was read before the stop and held back by the limits is served as
                // if it had come in time, as the limits let it through: the network sent
                // it before, and an answer serves it better than its timeout and reversal.
                // A new purchase that comes from now on is refused, until the requests in
                // flight are answered and the connection closes.
                read_before_stop = inbuf.len();
            }
            () = &mut timer => {
                let now = Instant::now();
                if drain_deadline.is_some_and(|d| tokio::time::Instant::from_std(now) >= d) {
                    break End::Shutdown;
                }
                if !out.is_empty() && now >= last_write_progress + limits.read_timeout {
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "write_stalled").increment(1);
                    break End::WriteStalled;
                }
                if frame_started.is_some_and(|s| now >= s + limits.read_timeout) {
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "read_timeout").increment(1);
                    break End::ReadTimeout;
                }
                if let Some(idle) = limits.idle_timeout
                    && in_flight.is_empty()
                    && frame_started.is_none()
                    && now >= last_frame + idle
                {
                    break End::Idle;
                }
            }
        }
    };
    // Requests still in flight are finished although their answers can no longer be
    // delivered: each hold gets its outcome (approved: spent; otherwise released) rather
    // than staying held until a restart counts it as spent. An approval that comes in time
    // stands, at vpan and at the issuer, until the acquirer, which never heard it, sends
    // its timeout reversal, as acquirers do for a request left unanswered; vpan does not
    // reverse it on its own, which the acquirer's reversal would then repeat. Bounded by
    // `issuer.timeout_ms`, and the journal's stall limit for the records a 91 waits for.
    let unanswered = in_flight.len();
    let finished = async { while in_flight.next().await.is_some() {} };
    // Closed by vpan's own choice (not for a failed socket, nor a peer that stopped
    // reading: nothing more would reach it), the answers ready are written first; and where
    // the peer may still be sending (it has not closed its side), vpan lingers for it to
    // read them.
    let graceful = matches!(
        end,
        End::Shutdown | End::Frame(_) | End::ReadTimeout | End::Idle
    );
    let closed = async {
        if graceful {
            let unread = if peer_closed {
                None
            } else {
                // Down for a dialling side from now on: nothing more is read as a request.
                reading_hook(Reading::Stopped);
                Some(Unread {
                    bytes: inbuf,
                    // After a bad frame, where frames begin is lost: the rest is only dropped.
                    frames: (!matches!(end, End::Frame(_))).then_some(codec),
                    // The frame begun when the read timeout came is counted as that already.
                    counted: usize::from(matches!(end, End::ReadTimeout)),
                })
            };
            close_gracefully(&mut read_half, &mut write_half, &mut out, unread).await;
        } else {
            let _ = write_half.shutdown().await;
        }
        drop((read_half, write_half));
        // Only now, for a dialling side: redialled sooner, the network would see a
        // second session beside this one, which it may refuse. (Unless the peer closed
        // its side first: then it was said when it did, and the network has left this one.)
        said_ended(&mut reading_hook);
    };
    tokio::join!(finished, closed);
    if unanswered > 0 {
        tracing::info!(
            unanswered,
            "requests of a closed network connection finished unanswered"
        );
    }
    match end {
        End::PeerClosed | End::Shutdown => tracing::debug!(?end, "network connection ended"),
        End::Frame(e) => {
            crate::logging::throttled!(info, error = %e, "network connection closed: bad frame")
        }
        End::Write(e) => {
            crate::logging::throttled!(info, error = %e, "network connection closed: write failed")
        }
        End::Read(e) => {
            crate::logging::throttled!(info, error = %e, "network connection closed: read failed")
        }
        End::Idle | End::ReadTimeout | End::WriteStalled => {
            crate::logging::throttled!(info, ?end, "network connection closed")
        }
    }
}

/// The longest a connection vpan closes takes to write its last answers and keeps reading
/// what the peer sends ([`close_gracefully`]).
pub const LINGER: Duration = Duration::from_secs(1);

/// What the peer sent that vpan did not read as requests when it began closing.
struct Unread {
    /// The bytes read and not yet cut into frames.
    bytes: BytesMut,
    /// The codec to cut them into frames, to count those dropped; `None` where frame
    /// boundaries are lost (a bad frame).
    frames: Option<FrameCodec>,
    /// Frames at the start already counted otherwise (one begun when a read timed out).
    counted: usize,
}

/// Closes a connection within [`LINGER`]: writes the answers ready (`out`: a drain's end
/// can come with some not yet taken by a slow reader) and sends vpan's FIN after them;
/// meanwhile, unless the peer has closed its side (`unread` is `None`), reads and drops
/// what it still sends until it closes its side (it has then read every answer, the FIN
/// coming after them). The frames dropped, unanswered, are counted (`after_close`).
///
/// A socket closed with bytes it has not read is reset by the kernel, which throws away
/// what it has not sent yet: answers written to a slow reader, or across a long link,
/// approvals among them, would be lost to a request or an echo the peer sent in the
/// meantime. Read to its end first, the socket closes with a FIN after all of them. The
/// reading goes on while the answers are written: a peer blocked in a write of its own
/// reads nothing until vpan reads. A peer still reading after [`LINGER`] can still lose
/// the last answers, if it sends again before it has read them.
async fn close_gracefully<R, W>(
    read_half: &mut R,
    write_half: &mut W,
    out: &mut BytesMut,
    unread: Option<Unread>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = 0u64;
    let write = async {
        if write_half.write_all_buf(out).await.is_ok() {
            let _ = write_half.shutdown().await;
        }
    };
    let read = async {
        let Some(Unread {
            bytes: mut buf,
            frames: mut codec,
            mut counted,
        }) = unread
        else {
            return;
        };
        loop {
            while let Some(c) = codec.as_mut() {
                let decoded = c.decode(&mut buf);
                // The first frames, whatever they turn out to be, are those counted already.
                let new = match &decoded {
                    Ok(None) => false,
                    Ok(Some(_)) | Err(_) if counted > 0 => {
                        counted -= 1;
                        false
                    }
                    Ok(Some(_)) | Err(_) => true,
                };
                match decoded {
                    Ok(Some(Frame::Message { .. })) if new => frames += 1,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) if e.frame_skipped() => {}
                    // The rest cannot be told apart into frames: only dropped.
                    Err(_) => codec = None,
                }
            }
            if codec.is_none() {
                buf.clear();
            }
            if !matches!(read_half.read_buf(&mut buf).await, Ok(1..)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, async { tokio::join!(write, read) }).await;
    if frames > 0 {
        metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "after_close").increment(frames);
        crate::logging::throttled!(
            info,
            frames,
            "frames the network peer sent after vpan began closing the connection: dropped unanswered"
        );
    }
}

/// The answer to one frame, with the fixed header to echo.
async fn answer_of(
    flow: &Flow,
    header: Bytes,
    body: Bytes,
    received: Instant,
    serving: Serving,
) -> (Bytes, Option<Answer>) {
    (header, flow.handle(body, received, serving).await)
}

/// Appends an answer, framed, to the write buffer, and counts it.
fn frame_answer(codec: &FrameCodec, (header, answer): (Bytes, Option<Answer>), out: &mut BytesMut) {
    let Some(answer) = answer else {
        return;
    };
    match codec.encode_message(&header, &answer.message, out) {
        Ok(()) => answer.counted(),
        Err(e) => {
            // Longer than the link's length header can say (its decision stands).
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "answer_too_large")
                .increment(1);
            crate::logging::throttled!(warn, error = %e, "answer could not be framed; dropped");
        }
    }
}

fn min_deadline(
    a: Option<tokio::time::Instant>,
    b: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The `reason` label of a refused frame.
fn frame_reason(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooLarge { .. } => "too_large",
        FrameError::Io(_) => "io",
        _ => "bad_length",
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::iso8583::Framing;

    /// A `len2` frame of `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    /// What the peer sent before the close: `bytes`, whose frames can still be told
    /// apart (`frames`), the first `counted` of them counted already.
    fn unread(bytes: &[u8], frames: bool, counted: usize) -> Option<Unread> {
        Some(Unread {
            bytes: BytesMut::from(bytes),
            frames: frames.then(|| FrameCodec::new(Framing::Len2, 0, 8192)),
            counted,
        })
    }

    /// Closes gracefully over a pipe of `pipe` bytes each way whose peer sent `unread`
    /// before the close (`None`: it closed its side) and then `later`, in one write before
    /// it reads anything, with `out` still to write; what the peer read, and the frames
    /// counted `after_close`.
    async fn close_over(
        pipe: usize,
        unread: Option<Unread>,
        later: Vec<u8>,
        out: &[u8],
    ) -> (Vec<u8>, u64) {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (mut peer, ours) = tokio::io::duplex(pipe);
        let peer = tokio::spawn(async move {
            peer.write_all(&later).await.unwrap();
            peer.shutdown().await.unwrap();
            let mut read = Vec::new();
            peer.read_to_end(&mut read).await.unwrap();
            read
        });
        let (mut read_half, mut write_half) = tokio::io::split(ours);
        let mut out = BytesMut::from(out);
        close_gracefully(&mut read_half, &mut write_half, &mut out, unread).await;
        drop((read_half, write_half));
        let read = peer.await.unwrap();
        let counted = metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(r#"vpan_frames_rejected_total{reason="after_close"} "#))
            .map_or(0, |v| v.parse().unwrap());
        (read, counted)
    }

    #[tokio::test]
    async fn a_closing_connection_writes_its_last_answers_and_counts_the_frames_it_drops() {
        let (one, two, three) = (frame(b"0800-one"), frame(b"0800-two"), frame(b"0800-three"));
        // Read before the close: one frame whole and half of the next, whose rest comes
        // after, with a third; the answers not yet written go first.
        let before = unread(&[&one[..], &two[..4]].concat(), true, 0);
        let later = [&two[4..], &three[..]].concat();
        let (read, counted) = close_over(4096, before, later, b"answers").await;
        assert_eq!((read, counted), (b"answers".to_vec(), 3));
        // After a bad frame, where frames begin is lost: nothing is counted as one.
        let later = [&one[..], &two[..]].concat();
        let (_, counted) = close_over(4096, unread(&[], false, 0), later, b"").await;
        assert_eq!(counted, 0);
        // The frame begun when the read timed out is counted as that, not again, whatever
        // it turns out to be (here a keep-alive: a length of 0).
        for (begun, rest) in [(&one[..3], &one[3..]), (&[0][..], &[0][..])] {
            let later = [rest, &two[..], &three[..]].concat();
            let (_, counted) = close_over(4096, unread(begun, true, 1), later, b"").await;
            assert_eq!(counted, 2, "{begun:?}");
        }
    }

    #[tokio::test]
    async fn a_closing_connection_writes_its_last_answers_to_a_peer_that_closed_its_side() {
        let (read, counted) = close_over(4096, None, Vec::new(), b"answers").await;
        assert_eq!((read, counted), (b"answers".to_vec(), 0));
    }

    #[tokio::test]
    async fn a_closing_connection_reads_while_it_writes_to_a_peer_blocked_in_a_write() {
        // A peer that writes 64 KiB through a pipe of 1 KiB before it reads: vpan's 64 KiB
        // of answers reach it only if vpan reads meanwhile.
        let answers = vec![b'a'; 64 * 1024];
        let later = frame(b"0800-one").repeat(6_000);
        let (read, counted) = close_over(1024, unread(&[], true, 0), later, &answers).await;
        assert_eq!((read.len(), counted), (answers.len(), 6_000));
    }
}
