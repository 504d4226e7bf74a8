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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::iso8583::{Frame, FrameCodec, FrameError, Message};
use crate::metrics as m;

use super::flow::Flow;

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
    /// Time given to requests in flight once shutdown starts.
    pub drain_timeout: Duration,
}

/// Unwritten answers past which vpan stops reading a peer that does not read.
const WRITE_BACKLOG: usize = 256 * 1024;

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    PeerClosed,
    Idle,
    ReadTimeout,
    WriteStalled,
    Frame(FrameError),
    Write(std::io::Error),
    Shutdown,
}

/// Serves one connection until the peer leaves, it misbehaves, or shutdown drains it.
pub async fn serve<S>(
    stream: S,
    flow: Arc<Flow>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut encoder = limits.codec.clone();
    let mut frames = FramedRead::new(read_half, limits.codec.clone());
    let flow = &*flow;
    let mut in_flight = FuturesUnordered::new();
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut reading = true;
    let mut last_read = Instant::now();
    let mut last_write_progress = Instant::now();
    let mut drain_deadline: Option<tokio::time::Instant> = None;

    let end = loop {
        let can_read = reading
            && drain_deadline.is_none()
            && in_flight.len() < limits.max_in_flight
            && out.len() < WRITE_BACKLOG;
        if !reading && in_flight.is_empty() && out.is_empty() {
            break End::PeerClosed;
        }
        if drain_deadline.is_some() && in_flight.is_empty() && out.is_empty() {
            break End::Shutdown;
        }
        // Whichever deadline applies now: a partial frame or a blocked write must make
        // progress, a silent connection is closed when idle, a drain ends.
        let partial = !frames.read_buffer().is_empty();
        let mut wake = drain_deadline;
        if partial {
            wake = min_deadline(wake, (last_read + limits.read_timeout).into());
        } else if let Some(idle) = limits.idle_timeout
            && in_flight.is_empty()
        {
            wake = min_deadline(wake, (last_read + idle).into());
        }
        if !out.is_empty() {
            wake = min_deadline(wake, (last_write_progress + limits.read_timeout).into());
        }
        let sleep_until =
            wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));

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
            frame = frames.next(), if can_read => {
                last_read = Instant::now();
                if out.is_empty() {
                    last_write_progress = last_read;
                }
                match frame {
                    Some(Ok(Frame::Message { header, body })) => {
                        let received = Instant::now();
                        in_flight.push(answer_of(flow, header, body, received));
                    }
                    Some(Ok(Frame::KeepAlive)) => {
                        let _ = encoder.encode(Frame::KeepAlive, &mut out);
                    }
                    Some(Err(e)) => {
                        metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => frame_reason(&e)).increment(1);
                        tracing::warn!(error = %e, "bad frame: closing the connection after answering what is in flight");
                        reading = false;
                        if in_flight.is_empty() && out.is_empty() {
                            break End::Frame(e);
                        }
                    }
                    None => reading = false,
                }
            }
            () = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + limits.drain_timeout);
            }
            () = tokio::time::sleep_until(sleep_until) => {
                let now = tokio::time::Instant::now();
                if drain_deadline.is_some_and(|d| now >= d) {
                    break End::Shutdown;
                }
                if !out.is_empty() && now >= (last_write_progress + limits.read_timeout).into() {
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "write_stalled").increment(1);
                    break End::WriteStalled;
                }
                if partial && now >= (last_read + limits.read_timeout).into() {
                    metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "read_timeout").increment(1);
                    break End::ReadTimeout;
                }
                if let Some(idle) = limits.idle_timeout
                    && in_flight.is_empty()
                    && !partial
                    && now >= (last_read + idle).into()
                {
                    break End::Idle;
                }
            }
        }
    };
    let _ = write_half.shutdown().await;
    match end {
        End::PeerClosed | End::Shutdown => tracing::debug!(?end, "network connection ended"),
        End::Frame(e) => tracing::info!(error = %e, "network connection closed: bad frame"),
        End::Write(e) => tracing::info!(error = %e, "network connection closed: write failed"),
        End::Idle | End::ReadTimeout | End::WriteStalled => {
            tracing::info!(?end, "network connection closed")
        }
    }
}

/// The answer to one frame, with the fixed header to echo.
async fn answer_of(
    flow: &Flow,
    header: Bytes,
    body: Bytes,
    received: Instant,
) -> (Bytes, Option<Message>) {
    (header, flow.handle(body, received).await)
}

/// Appends an answer, framed, to the write buffer.
fn frame_answer(
    codec: &FrameCodec,
    (header, answer): (Bytes, Option<Message>),
    out: &mut BytesMut,
) {
    if let Some(answer) = answer
        && let Err(e) = codec.encode_message(&header, &answer, out)
    {
        tracing::warn!(error = %e, "answer could not be framed; dropped");
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
