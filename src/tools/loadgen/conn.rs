//! One connection's engine: it claims pieces of the traffic file, sends their requests
//! (closed loop, or on the open loop's schedule), matches answers by STAN, times out the
//! unanswered, and redials a connection the peer drops.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::cards::card::transmission_time;
use crate::iso8583::{Frame, FrameCodec, Message};
use crate::tools::traffic::{Traffic, original_data_elements};

use super::report::Stats;
use super::{LoadgenConfig, LoadgenError};
use crate::tools::pacer::PacerSlot;

/// Counters all connections update, read by the progress line.
pub(super) struct Shared {
    /// The run's settings.
    pub(super) cfg: LoadgenConfig,
    /// The traffic file's pieces (`Traffic::pieces`), handed out in turn, pass after pass.
    pub(super) pieces: Vec<Range<usize>>,
    /// Next piece to hand out, counted over every pass.
    pub(super) next_run: AtomicU64,
    /// Source of STANs.
    pub(super) stan: AtomicU32,
    /// When sending stops (duration).
    pub(super) deadline: Option<Instant>,
    /// Set when no more runs can be handed out.
    pub(super) exhausted: AtomicBool,
    /// Told when `exhausted` is set: a connection with nothing in flight, waiting for its
    /// next due time (`connections / rate` away in a slow open loop), ends at once.
    pub(super) used_up: tokio::sync::watch::Sender<bool>,
    /// Requests sent so far, for the progress line.
    pub(super) sent: AtomicU64,
    /// Answers matched so far, for the progress line.
    pub(super) answered: AtomicU64,
    /// Timeouts so far, for the progress line.
    pub(super) timeouts: AtomicU64,
    /// Errors so far, for the progress line.
    pub(super) errors: AtomicU64,
    /// Requests of an open loop's backlog given up after the deadline (`not_sent`), which
    /// `--count` counts as it counts those sent.
    pub(super) given_up: AtomicU64,
    /// The `--record` file, written in batches by each connection.
    pub(super) record: Option<std::sync::Mutex<std::fs::File>>,
    /// Set when a write to the `--record` file failed: a record with holes is worth
    /// nothing to the crash test that reads it, so sending stops and the run fails.
    pub(super) record_failed: AtomicBool,
}

impl Shared {
    /// Hands out the next piece of the file, for a request meant to go at `intended`: its
    /// id and the messages of it to send (fewer than the piece at the end of `--count`).
    /// By the time the request was meant for, not the clock: an open loop's request due
    /// before `--duration` ends but held back by the in-flight cap still goes, late,
    /// whichever piece it falls in.
    pub(super) fn claim_run(&self, intended: Instant) -> Option<(u64, Range<usize>)> {
        if self.exhausted.load(Ordering::Relaxed) || self.sending_over(intended) {
            return None;
        }
        let id = self.next_run.fetch_add(1, Ordering::Relaxed);
        let per_pass = self.pieces.len() as u64;
        let piece = self.pieces.get((id % per_pass) as usize)?.clone();
        let (send, last) = match self.cfg.count {
            Some(count) => {
                // Messages handed out before this piece, over every pass.
                let before = (id / per_pass) * self.cfg.traffic.len() as u64 + piece.start as u64;
                let left = count.saturating_sub(before);
                let len = piece.len() as u64;
                (left.min(len) as usize, left <= len)
            }
            None => (piece.len(), false),
        };
        if send == 0 {
            self.mark_exhausted();
            return None;
        }
        if last {
            // This piece takes the last of `--count`: said now, not at the next claim,
            // which an idle connection of a slow open loop makes only at its next due time.
            self.mark_exhausted();
        }
        Some((id, piece.start..piece.start + send))
    }

    /// No more runs to hand out: every connection is told.
    fn mark_exhausted(&self) {
        self.exhausted.store(true, Ordering::Relaxed);
        self.used_up.send_replace(true);
    }

    /// True once `--timeout-ms` has passed after `--duration`: an open loop's backlog still
    /// unsent then is given up. Sent at the cap's pace, it could otherwise take a peer that
    /// stopped answering `backlog / in-flight` timeouts, hours, to drain.
    pub(super) fn backlog_given_up(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d + self.cfg.timeout)
    }

    pub(super) fn sending_over(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
            || self.cfg.stop.as_ref().is_some_and(|s| s.is_cancelled())
            || self.record_failed.load(Ordering::Relaxed)
    }
}

/// One piece of the traffic file, owned by one connection.
pub(super) struct Run {
    /// Which piece, counted over every pass.
    id: u64,
    /// Next message to send.
    next: usize,
    /// Where this piece's messages to send end (before the piece's end on the last piece
    /// of `--count`).
    end: usize,
    /// Requests of this piece in flight.
    outstanding: usize,
    /// For messages a reversal refers to: DE 90 describing them as sent, and whether
    /// their answer (or timeout, or loss) has come.
    originals: HashMap<usize, ([u8; 42], bool)>,
}

/// A request waiting for its answer.
pub(super) struct Pending {
    /// The run it belongs to.
    run: u64,
    /// Its message index in the traffic file.
    entry: usize,
    /// When it was due (open loop) or sent (closed loop).
    intended: Instant,
    /// Tells this request apart from a later one reusing the STAN.
    serial: u64,
    /// The DE 7 it was sent with: an answer that echoes another one is a late answer to
    /// an earlier request that had the same STAN, not this one's.
    de7: [u8; 10],
}

/// One connection's state; survives reconnects.
pub(super) struct Conn {
    /// Settings, run hand-out, STANs and progress counters.
    pub(super) shared: Arc<Shared>,
    /// Frames requests and cuts answers out of the stream.
    pub(super) codec: FrameCodec,
    /// Pieces of the file this connection owns, oldest first.
    pub(super) runs: VecDeque<Run>,
    /// Requests in flight by STAN: how answers find their request.
    pub(super) pending: HashMap<u32, Pending, StanHash>,
    /// (deadline, STAN, serial) in send order: deadlines only grow.
    pub(super) deadlines: VecDeque<(Instant, u32, u64)>,
    /// Last serial given to a request.
    pub(super) serial: u64,
    /// Open loop: when the next request is due, and the gap between two.
    pub(super) next_due: Option<Instant>,
    /// Open loop: nothing could be sent at the last due time (the rest of the file waits
    /// for answers, or it is used up); set back by the next answer or timeout.
    pub(super) starved: bool,
    pub(super) interval: Duration,
    /// Open loop: the clock that wakes this connection when its next request is due.
    pub(super) pacer: Option<PacerSlot>,
    /// DE 7 of the current second, cached.
    pub(super) de7: (u64, [u8; 10]),
    /// Framed requests not yet written.
    pub(super) out: BytesMut,
    /// What this connection measured.
    pub(super) stats: Stats,
    /// `--record` lines not yet written to the file.
    pub(super) record: Vec<u8>,
    /// Changes when the file (or `--count`) is used up (`Shared::used_up`).
    pub(super) used_up: tokio::sync::watch::Receiver<bool>,
}

/// Why a connection's I/O loop returned.
pub(super) enum Exit {
    /// Nothing more to send and nothing in flight.
    Done,
    /// The peer closed or the socket failed: dial again.
    Lost,
}

impl Conn {
    pub(super) fn error(&mut self, kind: &'static str, n: u64) {
        *self.stats.errors.entry(kind).or_insert(0) += n;
        self.shared.errors.fetch_add(n, Ordering::Relaxed);
    }

    /// The run and message to send next, claiming a new run when every active one is
    /// finished or waits for an original's answer.
    pub(super) fn next_sendable(&mut self, intended: Instant) -> Option<(usize, usize)> {
        let traffic = &self.shared.traffic_ref();
        for (ri, run) in self.runs.iter().enumerate() {
            if run.next >= run.end {
                continue;
            }
            let entry = traffic.entries().get(run.next)?;
            let ready = match entry.refers_to() {
                Some(o) => run.originals.get(&o).is_none_or(|(_, settled)| *settled),
                None => true,
            };
            if ready {
                return Some((ri, run.next));
            }
        }
        if self.runs.len() > self.shared.cfg.in_flight {
            return None;
        }
        let (id, messages) = self.shared.claim_run(intended)?;
        self.runs.push_back(Run {
            id,
            next: messages.start,
            end: messages.end,
            outstanding: 0,
            originals: HashMap::new(),
        });
        Some((self.runs.len() - 1, messages.start))
    }

    /// A STAN no request in flight on this connection uses.
    pub(super) fn fresh_stan(&self) -> u32 {
        loop {
            let s = self.shared.stan.fetch_add(1, Ordering::Relaxed) % 999_999 + 1;
            if !self.pending.contains_key(&s) {
                return s;
            }
        }
    }

    /// DE 7 for now (UTC `MMDDhhmmss`), computed once a second.
    pub(super) fn de7(&mut self) -> [u8; 10] {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.de7.0 != secs {
            self.de7 = (secs, transmission_time(secs));
        }
        self.de7.1
    }

    /// Frames the next request into the write buffer. False when there is nothing to send.
    pub(super) fn send_one(&mut self, intended: Instant, now: Instant, de7: [u8; 10]) -> bool {
        let Some((ri, idx)) = self.next_sendable(intended) else {
            return false;
        };
        let traffic = self.shared.traffic_ref();
        let Some(entry) = traffic.entries().get(idx) else {
            return false;
        };
        // A repeat reuses its first message's STAN and DE 7 (the transaction key), taken
        // back out of that message's DE 90 as it was sent.
        let first = entry
            .repeats
            .and_then(|o| self.runs.get(ri)?.originals.get(&o))
            .map(|(de90, _)| *de90);
        let (stan, de7) = match first.as_ref().and_then(repeated_key) {
            Some((stan, time)) if !self.pending.contains_key(&stan) => (stan, time),
            _ => (self.fresh_stan(), de7),
        };
        let stan_digits = six_digits(stan);
        let Some(run) = self.runs.get_mut(ri) else {
            return false;
        };
        run.next += 1;
        let mut m = entry.message.clone();
        let mut ok = m.set(11, &stan_digits).is_ok() && m.set(7, &de7).is_ok();
        // A repeat of a reversal names the same original in DE 90 as its first did.
        let reverses = entry.reverses.or_else(|| {
            entry
                .repeats
                .and_then(|o| traffic.entries().get(o)?.reverses)
        });
        if let Some(o) = reverses
            && let Some((de90, _)) = run.originals.get(&o)
        {
            ok &= m.set(90, de90).is_ok();
        }
        if traffic.is_referenced(idx) {
            let acquirer = m.acquirer().map(|a| a.to_vec()).unwrap_or_default();
            let de90 = original_data_elements(&m.mti(), &stan_digits, &de7, &acquirer);
            run.originals.insert(idx, (de90, false));
        }
        let framed_from = self.out.len();
        if !ok
            || self
                .codec
                .encode_message(&self.shared.cfg.header, &m, &mut self.out)
                .is_err()
        {
            // The file was checked at load, so this is a spec that lacks DE 7 or 11.
            self.error("unsendable", 1);
            if let Some(run) = self.runs.get_mut(ri)
                && let Some(o) = run.originals.get_mut(&idx)
            {
                o.1 = true;
            }
            // It may have been its run's last message: a run left in place would hold a
            // slot for good, and enough of them would stop the connection's sending.
            self.retire_if_done(ri);
            return true;
        }
        if entry.malformed
            && self.out.len() > framed_from
            && let Some(last) = self.out.last_mut()
        {
            *last = 0xFF;
        }
        let run_id = run.id;
        run.outstanding += 1;
        self.serial += 1;
        self.pending.insert(
            stan,
            Pending {
                run: run_id,
                entry: idx,
                intended,
                serial: self.serial,
                de7,
            },
        );
        self.deadlines
            .push_back((now + self.shared.cfg.timeout, stan, self.serial));
        *self.stats.requests_by_mti.entry(m.mti()).or_insert(0) += 1;
        self.stats.sent += 1;
        self.stats.last_sent = Some(now);
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Sends what the mode allows now.
    pub(super) fn fill(&mut self) {
        let cap = self.shared.cfg.in_flight;
        // One clock reading per batch: requests framed together leave together.
        let now = Instant::now();
        let de7 = self.de7();
        // Open or closed loop by the run's settings, not by `next_due`: it is `None` too
        // once an open loop's schedule is over, which must send nothing more (taken for a
        // closed loop, it filled the last interval before the deadline as fast as answers
        // came).
        match self.shared.cfg.rate {
            None => {
                while self.pending.len() < cap && !self.shared.sending_over(now) {
                    if !self.send_one(now, now, de7) {
                        break;
                    }
                }
            }
            Some(_) => {
                while let Some(due) = self.next_due {
                    if self.shared.sending_over(due) {
                        self.next_due = None;
                        break;
                    }
                    if self.shared.backlog_given_up(now) {
                        self.give_up_backlog(due, now);
                        break;
                    }
                    if due > now || self.pending.len() >= cap {
                        break;
                    }
                    if !self.send_one(due, now, de7) {
                        // Nothing sendable until an answer comes: do not wake for the
                        // schedule meanwhile (the slot stays due, latency counts from it).
                        self.starved = true;
                        break;
                    }
                    self.next_due = Some(due + self.interval);
                }
            }
        }
    }

    /// Past the grace after `--duration`: what fell due before the deadline and is still
    /// unsent (the peer stopped answering, and the in-flight cap let nothing more go) is
    /// counted as not sent, each in the latency at its time since due as a timeout is, and
    /// the run ends rather than send it for as long again. The same for a connection that
    /// gives up redialling: the rest of its schedule is not sent, and the part of it
    /// already due is in the latency (what is due later is counted only).
    fn give_up_backlog(&mut self, first_due: Instant, now: Instant) {
        let Some(deadline) = self.shared.deadline else {
            return;
        };
        // No more than `--count` would still have sent, over every connection.
        let allowed = match self.shared.cfg.count {
            None => u64::MAX,
            Some(count) => {
                let claimed = self.shared.sent.load(Ordering::Relaxed)
                    + self.shared.given_up.load(Ordering::Relaxed);
                count.saturating_sub(claimed)
            }
        };
        let mut given_up = 0;
        let mut due = first_due;
        while due < deadline && given_up < allowed {
            if due <= now {
                self.stats.record_latency(due, now);
            }
            given_up += 1;
            due += self.interval;
        }
        self.shared.given_up.fetch_add(given_up, Ordering::Relaxed);
        if given_up > 0 {
            self.error("not_sent", given_up);
        }
        self.next_due = None;
    }

    /// A request is over (answered, timed out or lost): its run may move on.
    pub(super) fn settle(&mut self, p: &Pending) {
        self.starved = false;
        if let Some(pos) = self.runs.iter().position(|r| r.id == p.run)
            && let Some(run) = self.runs.get_mut(pos)
        {
            run.outstanding = run.outstanding.saturating_sub(1);
            if let Some(o) = run.originals.get_mut(&p.entry) {
                o.1 = true;
            }
            self.retire_if_done(pos);
        }
    }

    /// Drops run `pos` once all of it was sent and nothing of it is in flight.
    pub(super) fn retire_if_done(&mut self, pos: usize) {
        if self
            .runs
            .get(pos)
            .is_some_and(|run| run.outstanding == 0 && run.next >= run.end)
        {
            self.runs.remove(pos);
        }
    }

    pub(super) fn on_answer(&mut self, body: bytes::Bytes) {
        let now = Instant::now();
        let msg = match Message::parse(self.shared.cfg.spec, body) {
            Ok(m) => m,
            Err(_) => return self.error("unparseable", 1),
        };
        let Some(stan) = msg.stan().and_then(|s| digits_u32(&s)) else {
            return self.error("unmatched", 1);
        };
        let echoed = msg.transmission_time();
        let ours = self
            .pending
            .get(&stan)
            .is_some_and(|p| echoed.is_none_or(|t| t == p.de7));
        let Some(p) = ours.then(|| self.pending.remove(&stan)).flatten() else {
            return self.error("unmatched", 1);
        };
        self.stats.last_answer = Some(now);
        self.note(&p, "answered", msg.response_code());
        self.stats.record_latency(p.intended, now);
        self.stats.answered += 1;
        self.shared.answered.fetch_add(1, Ordering::Relaxed);
        let code = msg.response_code().unwrap_or(*b"--");
        *self.stats.codes.entry(code).or_insert(0) += 1;
        let mti = msg.mti();
        *self.stats.responses_by_mti.entry(mti).or_insert(0) += 1;
        let traffic = self.shared.traffic_ref();
        if let Some(entry) = traffic.entries().get(p.entry) {
            let req = entry.message.mti();
            if mti != [req[0], req[1], req[2] | 1, b'0'] {
                self.error("wrong_mti", 1);
            }
            if let Some(want) = entry.expect {
                if want == code {
                    self.stats.expect_matched += 1;
                } else {
                    self.stats.expect_mismatched += 1;
                    *self
                        .stats
                        .mismatches
                        .entry(entry.line)
                        .or_default()
                        .entry(code)
                        .or_insert(0) += 1;
                }
            }
        }
        self.settle(&p);
    }

    /// Times out what is overdue; returns the next deadline.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Instant> {
        // Entries of answered requests leave only from the front; behind one old request
        // still waiting (a peer that never answers it), they would pile up at the rate
        // times the timeout. Swept out whole when they outnumber the live ones.
        if self.deadlines.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.deadlines
                .retain(|(_, stan, serial)| pending.get(stan).is_some_and(|p| p.serial == *serial));
        }
        while let Some(&(due, stan, serial)) = self.deadlines.front() {
            let live = self.pending.get(&stan).is_some_and(|p| p.serial == serial);
            if !live {
                self.deadlines.pop_front();
                continue;
            }
            if due > now {
                return Some(due);
            }
            self.deadlines.pop_front();
            if let Some(p) = self.pending.remove(&stan) {
                if self.shared.cfg.rate.is_some() {
                    // Open loop: a request that never came back is the slowest of all,
                    // and leaving it out would hide a stall from the percentiles. Its
                    // latency is at least its time since due.
                    self.stats.record_latency(p.intended, now);
                }
                self.note(&p, "timeout", None);
                self.stats.timeouts += 1;
                self.shared.timeouts.fetch_add(1, Ordering::Relaxed);
                self.settle(&p);
            }
        }
        None
    }

    /// The connection dropped: what was in flight is lost (and settled, so reversals of
    /// it go out on the next connection).
    pub(super) fn lose_in_flight(&mut self) {
        let lost: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        if !lost.is_empty() {
            self.error("connection_lost", lost.len() as u64);
        }
        let now = Instant::now();
        for p in &lost {
            if self.shared.cfg.rate.is_some() {
                // Open loop, as for a timeout: never answered, its latency is at least its
                // time since due, and leaving it out would show only the survivors of a
                // peer that drops connections.
                self.stats.record_latency(p.intended, now);
            }
            self.note(p, "lost", None);
            self.settle(p);
        }
        self.deadlines.clear();
        self.out.clear();
    }

    /// Nothing left to send and nothing in flight.
    pub(super) fn finished(&mut self) -> bool {
        if !self.pending.is_empty() || !self.out.is_empty() {
            return false;
        }
        // An open loop still owes what fell due before the deadline (`fill` drops the
        // schedule once it passes the deadline).
        let owes_due = self
            .next_due
            .is_some_and(|due| !self.shared.sending_over(due));
        if self.shared.sending_over(Instant::now()) && !owes_due {
            return true;
        }
        let all_runs_sent = self.runs.iter().all(|r| r.next >= r.end);
        all_runs_sent && self.shared.exhausted.load(Ordering::Relaxed)
    }

    /// Reads, writes and times out on one socket until done or lost.
    pub(super) async fn io(&mut self, mut stream: TcpStream) -> Exit {
        let (mut rd, mut wr) = stream.split();
        let mut inbuf = BytesMut::with_capacity(64 * 1024);
        loop {
            self.fill();
            let now = Instant::now();
            let timeout_at = self.expire(now);
            if self.pending.is_empty() && self.out.is_empty() {
                // Claim work so that `finished` can see whether there is any left.
                if self.next_due.is_none() || self.shared.sending_over(now) {
                    self.fill();
                }
                if self.finished() {
                    let _ = wr.shutdown().await;
                    return Exit::Done;
                }
            }
            let due = if self.pending.len() < self.shared.cfg.in_flight && !self.starved {
                self.next_due
            } else {
                None
            };
            // The end of `--duration` too: a connection with nothing to send must still
            // see it pass.
            let ends = self.shared.deadline.filter(|d| *d > now);
            // Timeouts and the end of the run are kept by tokio's timer (to the
            // millisecond); the schedule by the pacer, to tens of microseconds.
            let wake = [timeout_at, ends].into_iter().flatten().min();
            let idle = self.pending.is_empty() && self.out.is_empty();
            let paced = due.zip(self.pacer.as_ref());
            tokio::select! {
                r = rd.read_buf(&mut inbuf) => {
                    match r {
                        Ok(0) | Err(_) => return Exit::Lost,
                        Ok(_) => {}
                    }
                    loop {
                        match self.codec.decode(&mut inbuf) {
                            Ok(Some(Frame::Message { body, .. })) => self.on_answer(body),
                            Ok(Some(Frame::KeepAlive)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                self.error("unparseable", 1);
                                return Exit::Lost;
                            }
                        }
                    }
                }
                w = wr.write(&self.out), if !self.out.is_empty() => {
                    match w {
                        Ok(0) | Err(_) => return Exit::Lost,
                        Ok(n) => self.out.advance(n),
                    }
                }
                _ = sleep_until_opt(wake) => {}
                _ = pace(paced) => {}
                // Another connection took the last of the file or `--count`.
                _ = self.used_up.changed(), if idle => {}
            }
        }
    }
}

/// `--record`: what the network side saw, request by request.
impl Conn {
    /// Notes how one request ended, when recording.
    pub(super) fn note(&mut self, p: &Pending, outcome: &str, code: Option<[u8; 2]>) {
        if self.shared.record.is_none() {
            return;
        }
        let traffic = self.shared.traffic_ref();
        let Some(entry) = traffic.entries().get(p.entry) else {
            return;
        };
        let m = &entry.message;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let line = RecordLine {
            line: entry.line,
            mti: text(&m.mti()),
            // Masked: first 6 and last 4 only, as everywhere else.
            card: m.pan().and_then(Result::ok).map(|p| p.to_string()),
            amount: m.amount_transaction(),
            outcome,
            code: code.map(|c| text(&c)),
        };
        if serde_json::to_writer(&mut self.record, &line).is_ok() {
            self.record.push(b'\n');
        }
        if self.record.len() >= 64 * 1024 {
            self.flush_record();
        }
    }

    /// Appends the buffered record lines to the file.
    pub(super) fn flush_record(&mut self) {
        use std::io::Write;
        if self.record.is_empty() {
            return;
        }
        let written = match &self.shared.record {
            Some(file) => match file.lock() {
                Ok(mut f) => f.write_all(&self.record).map_err(|e| e.to_string()),
                Err(_) => Err("another connection failed while writing it".into()),
            },
            None => Ok(()),
        };
        if let Err(e) = written {
            if !self.shared.record_failed.swap(true, Ordering::Relaxed) {
                eprintln!("--record: cannot write: {e}; sending stops (the record is incomplete)");
            }
            self.error("record", 1);
        }
        self.record.clear();
    }
}

/// One line of the `--record` file.
#[derive(Serialize)]
pub(super) struct RecordLine<'a> {
    /// Line of the traffic file (1-based).
    line: usize,
    /// The request's MTI.
    mti: String,
    /// DE 2, masked.
    card: Option<String>,
    /// DE 4 in minor units.
    amount: Option<u64>,
    /// `answered`, `timeout` or `lost` (the connection dropped with it in flight).
    outcome: &'a str,
    /// DE 39 of the answer.
    code: Option<String>,
}

pub(super) fn open_record(
    path: Option<&std::path::Path>,
) -> Result<Option<std::sync::Mutex<std::fs::File>>, LoadgenError> {
    path.map(|p| {
        std::fs::File::create(p)
            .map(std::sync::Mutex::new)
            .map_err(|e| LoadgenError::Config(format!("--record {}: {e}", p.display())))
    })
    .transpose()
}

impl Shared {
    pub(super) fn traffic_ref(&self) -> Arc<Traffic> {
        self.cfg.traffic.clone()
    }
}

/// One connection's life: the first socket, then redials after losses.
pub(super) async fn connection(mut conn: Conn, first: TcpStream) -> Stats {
    let mut stream = Some(first);
    let redial_for = dial_for(&conn.shared.cfg);
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => {
                let give_up = Instant::now() + redial_for;
                let mut dialled = None;
                // Not past the run's end (or a Ctrl-C) when nothing is owed any more: the
                // run is over, and no reconnection is wanted.
                while Instant::now() < give_up && !conn.finished() {
                    let left = give_up.saturating_duration_since(Instant::now());
                    match crate::switch::dial_within(&conn.shared.cfg.target, left).await {
                        Ok(s) => {
                            dialled = Some(s);
                            break;
                        }
                        Err(_) => {
                            conn.error("connect", 1);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                match dialled {
                    Some(s) => s,
                    None if conn.finished() => break,
                    None => {
                        // Said in the summary: the rest of this connection's share of the
                        // traffic is not sent, and a run that ends short must say why. In
                        // an open loop, its schedule to the end of `--duration` is counted
                        // not sent, so that neither the throughput nor the latency reads
                        // as if the run had ended when this connection did.
                        if conn.shared.cfg.rate.is_some()
                            && let Some(due) = conn.next_due
                        {
                            conn.give_up_backlog(due, Instant::now());
                        }
                        conn.error("gave_up", 1);
                        break;
                    }
                }
            }
        };
        let _ = s.set_nodelay(true);
        match conn.io(s).await {
            Exit::Done => break,
            Exit::Lost => {
                conn.lose_in_flight();
                if conn.finished() {
                    break;
                }
            }
        }
    }
    conn.flush_record();
    conn.stats
}

/// How long a connection may take to be made, first or again: `--timeout-ms`, at least a
/// second.
pub(super) fn dial_for(cfg: &LoadgenConfig) -> Duration {
    cfg.timeout.max(Duration::from_secs(1))
}

/// Sleeps until `t`, or forever when there is nothing to wait for.
pub(super) async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Waits until a request is due, on the pacer; forever when none is.
async fn pace(due: Option<(Instant, &PacerSlot)>) {
    match due {
        Some((t, pacer)) => pacer.sleep_until(t.into_std()).await,
        None => std::future::pending().await,
    }
}

/// Hashes a STAN for the map of requests in flight: STANs are already well spread
/// counters, so one multiplication does (SipHash showed up in profiles).
#[derive(Clone, Copy, Default)]
pub(super) struct StanHash;

impl std::hash::BuildHasher for StanHash {
    type Hasher = StanHasher;
    fn build_hasher(&self) -> StanHasher {
        StanHasher(0)
    }
}

/// The hasher [`StanHash`] builds.
pub(super) struct StanHasher(u64);

impl std::hash::Hasher for StanHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `n` (below a million) as six ASCII digits.
pub(super) fn six_digits(mut n: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    for c in out.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// The STAN and DE 7 a DE 90 (as built by `original_data_elements`) describes.
pub(super) fn repeated_key(de90: &[u8; 42]) -> Option<(u32, [u8; 10])> {
    let stan = digits_u32(de90.get(4..10)?)?;
    let time = <[u8; 10]>::try_from(de90.get(10..20)?).ok()?;
    Some((stan, time))
}

pub(super) fn digits_u32(d: &[u8]) -> Option<u32> {
    d.iter().try_fold(0u32, |acc, &b| {
        let v = b.wrapping_sub(b'0');
        (v <= 9).then(|| acc * 10 + u32::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stans_are_six_digits() {
        assert_eq!(&six_digits(42), b"000042");
        assert_eq!(digits_u32(b"000042"), Some(42));
        assert_eq!(digits_u32(b"00a042"), None);
    }
}
