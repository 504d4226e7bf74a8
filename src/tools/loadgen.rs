//! `vpan loadgen`: replays a traffic file against a switch or an issuer host and measures.
//!
//! A number is only worth what its method is, so the method is fixed here:
//!
//! - **Closed loop** (default): each of `--connections` keeps `--in-flight` requests out;
//!   each answer lets the next request go. Measures capacity.
//! - **Open loop** (`--rate R`): requests are due on a fixed schedule, `R` per second over
//!   all connections, whatever the answers do. Latency is measured from the time a request
//!   was *due*, not from when it could be sent, so a stalled peer shows as latency instead
//!   of as fewer requests (no coordinated omission). `--in-flight` still caps what is out.
//!
//! The traffic file is replayed in order, looping as `--count` or `--duration` ask: each
//! pass over the file is a *run* that one connection owns, so a reversal goes out on the
//! same connection after its original's answer, with DE 90 built from the original as it
//! was sent. Every request gets a fresh STAN (DE 11) and DE 7 set to now; answers are
//! matched by STAN on their connection. A request unanswered for `--timeout-ms` counts as
//! a timeout; a connection that drops counts its requests as lost and is dialled again.
//!
//! Each connection is one task that owns its socket, its requests in flight and its own
//! HdrHistogram (no lock on the hot path); the histograms are merged at the end.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::flags;
use super::traffic::{Traffic, load_bindings, original_data_elements};
use super::wire::WireArgs;
use crate::cards::card::transmission_time;
use crate::iso8583::{Frame, FrameCodec, Framing, Message, Spec};

/// Most requests in flight on one connection: far below the million six-digit STANs, so a
/// fresh one is always found at once.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// Longest latency the histogram holds, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// `vpan loadgen` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to send to: the switch's network listener, or an issuer host.
    #[arg(long)]
    pub target: String,
    /// Traffic file (JSON Lines; see the README).
    #[arg(long)]
    pub traffic: PathBuf,
    /// Cards file for the traffic's `${vpan.NAME}` / `${expiry.NAME}` placeholders
    /// (JSON `{"NAME": {"vpan", "expiry"}}`, as `vpan demo` writes it).
    #[arg(long, value_name = "FILE")]
    pub cards: Option<PathBuf>,
    /// How hard to drive the link.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// How long to send, e.g. 10s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How many requests to send, looping over the file as needed. Without --count and
    /// --duration the file is sent once.
    #[arg(long)]
    pub count: Option<u64>,
    /// The link's framing, layout and fixed header.
    #[command(flatten)]
    pub wire: WireArgs,
    /// A request unanswered this long counts as a timeout.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write what the target answered, one JSON line per request settled (traffic line,
    /// MTI, masked card, DE 4, outcome, DE 39), so a crash test can check the switch's
    /// counters against what the network side received. Never a full card number.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

/// Reads `10s`, `500ms`, `250us`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: use s, ms, us, m or h")),
    };
    /// Longer than any load run, and far within what a clock can add.
    const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= LONGEST)
        .ok_or_else(|| format!("{s:?} is out of range (a year at most)"))
}

/// Everything a load run needs.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    /// `host:port` to connect to.
    pub target: String,
    /// The messages to replay, built with `spec`.
    pub traffic: Arc<Traffic>,
    /// Connections to open.
    pub connections: usize,
    /// Requests in flight per connection at most.
    pub in_flight: usize,
    /// Open loop at this many requests per second in all; `None` for closed loop.
    pub rate: Option<f64>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Stop after this many requests; with neither this nor `duration`, one pass.
    pub count: Option<u64>,
    /// Length header form.
    pub framing: Framing,
    /// Message layout (for the answers).
    pub spec: &'static Spec,
    /// Fixed header after the length.
    pub header: Vec<u8>,
    /// Unanswered this long: a timeout.
    pub timeout: Duration,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Cancelled: stop sending now, wait for what is in flight, and summarize (Ctrl-C).
    pub stop: Option<CancellationToken>,
    /// Where to write the record of every request's outcome (`--record`).
    pub record: Option<PathBuf>,
}

/// `--connections`, `--in-flight` and `--rate`: how hard a load drives a link, for `vpan
/// loadgen` and the load phase of `vpan demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShapeArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 4, value_parser = flags::count(u64::from(u32::MAX)))]
    pub connections: usize,
    /// Requests in flight per connection at most (up to 100,000: STANs are six digits).
    #[arg(long, default_value_t = 16, value_parser = flags::count(MAX_IN_FLIGHT as u64))]
    pub in_flight: usize,
    /// Open loop: requests per second over all connections, on a fixed schedule (default:
    /// closed loop).
    #[arg(long, value_parser = flags::per_second)]
    pub rate: Option<f64>,
}

impl LoadgenConfig {
    /// One pass over `traffic` to `target`: one connection, 16 in flight, closed loop,
    /// `len2`, `iso87ascii`, 5 s timeout, no progress line.
    pub fn new(target: impl Into<String>, traffic: Arc<Traffic>) -> LoadgenConfig {
        LoadgenConfig {
            target: target.into(),
            traffic,
            connections: 1,
            in_flight: 16,
            rate: None,
            duration: None,
            count: None,
            framing: Framing::Len2,
            spec: Spec::iso87ascii(),
            header: Vec::new(),
            timeout: Duration::from_secs(5),
            progress: false,
            max_frame: 8192,
            stop: None,
            record: None,
        }
    }

    /// Builds the configuration from the command line flags (loads the traffic file).
    pub fn from_args(args: &Args) -> Result<LoadgenConfig, String> {
        let spec = args.wire.spec;
        let traffic = match &args.cards {
            None => Traffic::load(&args.traffic, spec),
            Some(file) => Traffic::load_bound(&args.traffic, spec, &load_bindings(file)?),
        }
        .map_err(|e| e.to_string())?;
        Ok(LoadgenConfig {
            target: args.target.clone(),
            traffic: Arc::new(traffic),
            connections: args.shape.connections,
            in_flight: args.shape.in_flight,
            rate: args.shape.rate,
            duration: args.duration,
            count: args.count,
            framing: args.wire.framing,
            spec,
            header: args.wire.header_hex.0.clone(),
            timeout: Duration::from_millis(args.timeout_ms.max(1)),
            progress: true,
            max_frame: 8192,
            stop: None,
            record: args.record.clone(),
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest seen.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// What a run did; printed as text or as one JSON object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Where it sent.
    pub target: String,
    /// Connections used.
    pub connections: usize,
    /// In flight per connection at most.
    pub in_flight: usize,
    /// `"closed"` or `"open"`.
    pub mode: &'static str,
    /// Target rate in open loop.
    pub rate: Option<f64>,
    /// From the first send to the last answer or timeout, in seconds.
    pub elapsed_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// Answers matched to a request.
    pub answered: u64,
    /// Requests unanswered within the timeout.
    pub timeouts: u64,
    /// Everything else that went wrong (see `errors_by_kind`).
    pub errors: u64,
    /// Answers per second.
    pub throughput_per_s: f64,
    /// Send (or due, in open loop) to answer, in microseconds.
    pub latency_us: Latency,
    /// Answers by DE 39 (`"none"` when absent).
    pub response_codes: BTreeMap<String, u64>,
    /// Requests sent by MTI.
    pub requests_by_mti: BTreeMap<String, u64>,
    /// Answers by MTI.
    pub responses_by_mti: BTreeMap<String, u64>,
    /// Answers whose DE 39 was what the traffic line expected.
    pub expect_matched: u64,
    /// Answers whose DE 39 was not; see `mismatches`.
    pub expect_mismatched: u64,
    /// Mismatches by traffic file line, then by the code received.
    pub mismatches: BTreeMap<usize, BTreeMap<String, u64>>,
    /// `connection_lost` (requests out when a connection dropped), `unmatched` (answers
    /// with no request in flight under their STAN, e.g. after a timeout), `unparseable`,
    /// `wrong_mti`, `connect`.
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r}/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            f,
            "target {}: {} connections x {} in flight, {mode}, {:.2} s",
            self.target, self.connections, self.in_flight, self.elapsed_s
        )?;
        writeln!(
            f,
            "sent {}  answered {}  timeouts {}  errors {}",
            self.sent, self.answered, self.timeouts, self.errors
        )?;
        writeln!(f, "throughput {:.0} answers/s", self.throughput_per_s)?;
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        )?;
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "response codes: {}", list(&self.response_codes))?;
        writeln!(f, "requests by MTI: {}", list(&self.requests_by_mti))?;
        writeln!(f, "responses by MTI: {}", list(&self.responses_by_mti))?;
        writeln!(
            f,
            "expectations: {} matched, {} mismatched",
            self.expect_matched, self.expect_mismatched
        )?;
        for (line, got) in &self.mismatches {
            writeln!(f, "  line {line}: got {}", list(got))?;
        }
        if !self.errors_by_kind.is_empty() {
            writeln!(f, "errors: {}", list(&self.errors_by_kind))?;
        }
        Ok(())
    }
}

/// Why a load run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The first connection attempt failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The target as given.
        target: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("{0}")]
    Config(String),
}

/// Counters all connections update, read by the progress line.
struct Shared {
    /// The run's settings.
    cfg: LoadgenConfig,
    /// Next pass over the traffic file to hand out.
    next_run: AtomicU64,
    /// Source of STANs.
    stan: AtomicU32,
    /// When sending stops (duration).
    deadline: Option<Instant>,
    /// Set when no more runs can be handed out.
    exhausted: AtomicBool,
    /// Requests sent so far, for the progress line.
    sent: AtomicU64,
    /// Answers matched so far, for the progress line.
    answered: AtomicU64,
    /// Timeouts so far, for the progress line.
    timeouts: AtomicU64,
    /// Errors so far, for the progress line.
    errors: AtomicU64,
    /// The `--record` file, written in batches by each connection.
    record: Option<std::sync::Mutex<std::fs::File>>,
}

impl Shared {
    /// Hands out the next pass over the file: its id and how many of its messages to send.
    fn claim_run(&self) -> Option<(u64, usize)> {
        if self.exhausted.load(Ordering::Relaxed) || self.sending_over(Instant::now()) {
            return None;
        }
        let len = self.cfg.traffic.len() as u64;
        let id = self.next_run.fetch_add(1, Ordering::Relaxed);
        let end = match self.cfg.count {
            Some(c) => c.saturating_sub(id * len).min(len),
            None => len,
        };
        if end == 0 {
            self.exhausted.store(true, Ordering::Relaxed);
            return None;
        }
        Some((id, end as usize))
    }

    fn sending_over(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
            || self.cfg.stop.as_ref().is_some_and(|s| s.is_cancelled())
    }
}

/// One pass over the traffic file, owned by one connection.
struct Run {
    /// Which pass.
    id: u64,
    /// Next message to send.
    next: usize,
    /// Messages of this pass to send (less than the file on the last pass of `--count`).
    end: usize,
    /// Requests of this pass in flight.
    outstanding: usize,
    /// For messages a reversal refers to: DE 90 describing them as sent, and whether
    /// their answer (or timeout, or loss) has come.
    originals: HashMap<usize, ([u8; 42], bool)>,
}

/// A request waiting for its answer.
struct Pending {
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
struct Conn {
    /// Settings, run hand-out, STANs and progress counters.
    shared: Arc<Shared>,
    /// Frames requests and cuts answers out of the stream.
    codec: FrameCodec,
    /// Passes over the file this connection owns, oldest first.
    runs: VecDeque<Run>,
    /// Requests in flight by STAN: how answers find their request.
    pending: HashMap<u32, Pending, StanHash>,
    /// (deadline, STAN, serial) in send order: deadlines only grow.
    deadlines: VecDeque<(Instant, u32, u64)>,
    /// Last serial given to a request.
    serial: u64,
    /// Open loop: when the next request is due, and the gap between two.
    next_due: Option<Instant>,
    /// Open loop: nothing could be sent at the last due time (the rest of the file waits
    /// for answers, or it is used up); set back by the next answer or timeout.
    starved: bool,
    interval: Duration,
    /// DE 7 of the current second, cached.
    de7: (u64, [u8; 10]),
    /// Framed requests not yet written.
    out: BytesMut,
    /// What this connection measured.
    stats: Stats,
    /// `--record` lines not yet written to the file.
    record: Vec<u8>,
}

/// What one connection measured.
/// Merged into the [`Summary`] at the end; see its fields.
struct Stats {
    /// Latency in microseconds.
    hist: Histogram<u64>,
    /// Answers by DE 39 (`--` when absent).
    codes: BTreeMap<[u8; 2], u64>,
    /// Requests sent by MTI.
    requests_by_mti: BTreeMap<[u8; 4], u64>,
    /// Answers by MTI.
    responses_by_mti: BTreeMap<[u8; 4], u64>,
    /// Answers with the expected DE 39.
    expect_matched: u64,
    /// Answers with another DE 39.
    expect_mismatched: u64,
    /// Mismatches by file line, then by the code received.
    mismatches: BTreeMap<usize, BTreeMap<[u8; 2], u64>>,
    /// Errors by kind.
    errors: BTreeMap<&'static str, u64>,
    /// Requests sent.
    sent: u64,
    /// Answers matched.
    answered: u64,
    /// Requests timed out.
    timeouts: u64,
    /// When the last answer came.
    last_answer: Option<Instant>,
}

impl Stats {
    fn new() -> Result<Stats, LoadgenError> {
        Ok(Stats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| LoadgenError::Config(format!("histogram: {e}")))?,
            codes: BTreeMap::new(),
            requests_by_mti: BTreeMap::new(),
            responses_by_mti: BTreeMap::new(),
            expect_matched: 0,
            expect_mismatched: 0,
            mismatches: BTreeMap::new(),
            errors: BTreeMap::new(),
            sent: 0,
            answered: 0,
            timeouts: 0,
            last_answer: None,
        })
    }
}

/// Why a connection's I/O loop returned.
enum Exit {
    /// Nothing more to send and nothing in flight.
    Done,
    /// The peer closed or the socket failed: dial again.
    Lost,
}

impl Conn {
    fn error(&mut self, kind: &'static str, n: u64) {
        *self.stats.errors.entry(kind).or_insert(0) += n;
        self.shared.errors.fetch_add(n, Ordering::Relaxed);
    }

    /// The run and message to send next, claiming a new run when every active one is
    /// finished or waits for an original's answer.
    fn next_sendable(&mut self) -> Option<(usize, usize)> {
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
        let (id, end) = self.shared.claim_run()?;
        self.runs.push_back(Run {
            id,
            next: 0,
            end,
            outstanding: 0,
            originals: HashMap::new(),
        });
        Some((self.runs.len() - 1, 0))
    }

    /// A STAN no request in flight on this connection uses.
    fn fresh_stan(&self) -> u32 {
        loop {
            let s = self.shared.stan.fetch_add(1, Ordering::Relaxed) % 999_999 + 1;
            if !self.pending.contains_key(&s) {
                return s;
            }
        }
    }

    /// DE 7 for now (UTC `MMDDhhmmss`), computed once a second.
    fn de7(&mut self) -> [u8; 10] {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.de7.0 != secs {
            self.de7 = (secs, transmission_time(secs));
        }
        self.de7.1
    }

    /// Frames the next request into the write buffer. False when there is nothing to send.
    fn send_one(&mut self, intended: Instant, now: Instant, de7: [u8; 10]) -> bool {
        let Some((ri, idx)) = self.next_sendable() else {
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
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Sends what the mode allows now.
    fn fill(&mut self) {
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

    /// A request is over (answered, timed out or lost): its run may move on.
    fn settle(&mut self, p: &Pending) {
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
    fn retire_if_done(&mut self, pos: usize) {
        if self
            .runs
            .get(pos)
            .is_some_and(|run| run.outstanding == 0 && run.next >= run.end)
        {
            self.runs.remove(pos);
        }
    }

    fn on_answer(&mut self, body: bytes::Bytes) {
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
        let us = now.saturating_duration_since(p.intended).as_micros() as u64;
        self.stats
            .hist
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
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
    fn expire(&mut self, now: Instant) -> Option<Instant> {
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
                    let us = now.saturating_duration_since(p.intended).as_micros() as u64;
                    self.stats
                        .hist
                        .saturating_record(us.clamp(1, MAX_LATENCY_US));
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
    fn lose_in_flight(&mut self) {
        let lost: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        if !lost.is_empty() {
            self.error("connection_lost", lost.len() as u64);
        }
        for p in &lost {
            self.note(p, "lost", None);
            self.settle(p);
        }
        self.deadlines.clear();
        self.out.clear();
    }

    /// Nothing left to send and nothing in flight.
    fn finished(&mut self) -> bool {
        if !self.pending.is_empty() || !self.out.is_empty() {
            return false;
        }
        if self.shared.sending_over(Instant::now()) {
            return true;
        }
        let all_runs_sent = self.runs.iter().all(|r| r.next >= r.end);
        all_runs_sent && self.shared.exhausted.load(Ordering::Relaxed)
    }

    /// Reads, writes and times out on one socket until done or lost.
    async fn io(&mut self, mut stream: TcpStream) -> Exit {
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
            let wake = [timeout_at, due, ends].into_iter().flatten().min();
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
            }
        }
    }
}

/// `--record`: what the network side saw, request by request.
impl Conn {
    /// Notes how one request ended, when recording.
    fn note(&mut self, p: &Pending, outcome: &str, code: Option<[u8; 2]>) {
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
    fn flush_record(&mut self) {
        use std::io::Write;
        if self.record.is_empty() {
            return;
        }
        let written = match &self.shared.record {
            Some(file) => match file.lock() {
                Ok(mut f) => f.write_all(&self.record).is_ok(),
                Err(_) => false,
            },
            None => true,
        };
        if !written {
            self.error("record", 1);
        }
        self.record.clear();
    }
}

/// One line of the `--record` file.
#[derive(Serialize)]
struct RecordLine<'a> {
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

fn open_record(
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
    fn traffic_ref(&self) -> Arc<Traffic> {
        self.cfg.traffic.clone()
    }
}

/// One connection's life: the first socket, then redials after losses.
async fn connection(mut conn: Conn, first: TcpStream) -> Stats {
    let mut stream = Some(first);
    let redial_for = conn.shared.cfg.timeout.max(Duration::from_secs(1));
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => {
                let give_up = Instant::now() + redial_for;
                let mut dialled = None;
                while Instant::now() < give_up {
                    match TcpStream::connect(&conn.shared.cfg.target).await {
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
                    None => break,
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

/// Runs a load as configured and returns what it measured. Fails only when the first
/// connection cannot be made; everything after that is counted in the summary.
pub async fn run(mut cfg: LoadgenConfig) -> Result<Summary, LoadgenError> {
    if cfg.count.is_none() && cfg.duration.is_none() {
        cfg.count = Some(cfg.traffic.len() as u64);
    }
    if cfg.connections == 0 || cfg.in_flight == 0 || cfg.in_flight > MAX_IN_FLIGHT {
        return Err(LoadgenError::Config(format!(
            "connections must be at least 1, in_flight from 1 to {MAX_IN_FLIGHT}"
        )));
    }
    let mut streams = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let s = TcpStream::connect(&cfg.target)
            .await
            .map_err(|source| LoadgenError::Connect {
                target: cfg.target.clone(),
                source,
            })?;
        streams.push(s);
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: cfg.duration.map(|d| start + d),
        next_run: AtomicU64::new(0),
        // A random start, as after a real acquirer's restart: two runs in the same second
        // (a demo's story, then its load) must not reuse each other's transaction keys.
        stan: AtomicU32::new(rand::random_range(0..999_999)),
        exhausted: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        record: open_record(cfg.record.as_deref())?,
        cfg: cfg.clone(),
    });
    let interval = match cfg.rate {
        Some(r) => Duration::from_secs_f64(cfg.connections as f64 / r),
        None => Duration::ZERO,
    };
    let mut tasks = Vec::with_capacity(cfg.connections);
    for (i, s) in streams.into_iter().enumerate() {
        let conn = Conn {
            shared: shared.clone(),
            codec: FrameCodec::new(cfg.framing, cfg.header.len(), cfg.max_frame),
            runs: VecDeque::new(),
            pending: HashMap::with_hasher(StanHash),
            deadlines: VecDeque::new(),
            serial: 0,
            // Connections start their schedules spread over one interval.
            next_due: cfg
                .rate
                .map(|_| start + interval.mul_f64(i as f64 / cfg.connections as f64)),
            interval,
            starved: false,
            de7: (0, [b'0'; 10]),
            out: BytesMut::with_capacity(64 * 1024),
            stats: Stats::new()?,
            record: Vec::new(),
        };
        tasks.push(tokio::spawn(connection(conn, s)));
    }
    let progress = cfg
        .progress
        .then(|| tokio::spawn(progress_lines(shared.clone(), start)));
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(stats) = t.await {
            all.push(stats);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = start.elapsed();
    Ok(summarize(&cfg, start, elapsed, all))
}

/// One line on stderr per second: sent, answered, the answer rate over the last second,
/// timeouts and errors.
async fn progress_lines(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let answered = shared.answered.load(Ordering::Relaxed);
        eprintln!(
            "[{:>5.1}s] sent {}  answered {}  rate {}/s  timeouts {}  errors {}",
            start.elapsed().as_secs_f64(),
            shared.sent.load(Ordering::Relaxed),
            answered,
            answered - last,
            shared.timeouts.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        last = answered;
    }
}

/// Throughput is counted from `start` to the last answer, not to the end of a wait for
/// answers that never came (timeouts at the end of a run).
fn summarize(cfg: &LoadgenConfig, start: Instant, elapsed: Duration, all: Vec<Stats>) -> Summary {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut s = Summary {
        target: cfg.target.clone(),
        connections: cfg.connections,
        in_flight: cfg.in_flight,
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        rate: cfg.rate,
        elapsed_s: elapsed.as_secs_f64(),
        ..Summary::default()
    };
    let mut hist: Option<Histogram<u64>> = None;
    let answering = all
        .iter()
        .filter_map(|st| st.last_answer)
        .max()
        .map_or(Duration::ZERO, |last| last.saturating_duration_since(start));
    for st in all {
        s.sent += st.sent;
        s.answered += st.answered;
        s.timeouts += st.timeouts;
        s.expect_matched += st.expect_matched;
        s.expect_mismatched += st.expect_mismatched;
        for (k, v) in st.codes {
            let key = if k == *b"--" {
                "none".to_owned()
            } else {
                text(&k)
            };
            *s.response_codes.entry(key).or_insert(0) += v;
        }
        for (k, v) in st.requests_by_mti {
            *s.requests_by_mti.entry(text(&k)).or_insert(0) += v;
        }
        for (k, v) in st.responses_by_mti {
            *s.responses_by_mti.entry(text(&k)).or_insert(0) += v;
        }
        for (line, got) in st.mismatches {
            let e = s.mismatches.entry(line).or_default();
            for (k, v) in got {
                *e.entry(text(&k)).or_insert(0) += v;
            }
        }
        for (k, v) in st.errors {
            s.errors += v;
            *s.errors_by_kind.entry(k.to_owned()).or_insert(0) += v;
        }
        match &mut hist {
            None => hist = Some(st.hist),
            Some(h) => {
                let _ = h.add(&st.hist);
            }
        }
    }
    if let Some(h) = hist.filter(|h| !h.is_empty()) {
        s.latency_us = Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        };
    }
    if !answering.is_zero() {
        s.throughput_per_s = s.answered as f64 / answering.as_secs_f64();
    }
    s
}

/// `vpan loadgen`: runs, prints the summary on stdout; fails when nothing was answered.
pub async fn run_cli(args: Args) -> Result<(), String> {
    let mut cfg = LoadgenConfig::from_args(&args)?;
    let stop = CancellationToken::new();
    cfg.stop = Some(stop.clone());
    let on_ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping: waiting for the requests in flight (Ctrl-C again to abort)");
            stop.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let summary = run(cfg).await.map_err(|e| e.to_string());
    on_ctrl_c.abort();
    let summary = summary?;
    if args.json {
        let json = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{summary}");
    }
    if summary.answered == 0 {
        return Err(format!(
            "nothing was answered ({} sent, {} timeouts, {} errors)",
            summary.sent, summary.timeouts, summary.errors
        ));
    }
    Ok(())
}

/// Sleeps until `t`, or forever when there is nothing to wait for.
async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Hashes a STAN for the map of requests in flight: STANs are already well spread
/// counters, so one multiplication does (SipHash showed up in profiles).
#[derive(Clone, Copy, Default)]
struct StanHash;

impl std::hash::BuildHasher for StanHash {
    type Hasher = StanHasher;
    fn build_hasher(&self) -> StanHasher {
        StanHasher(0)
    }
}

/// The hasher [`StanHash`] builds.
struct StanHasher(u64);

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
fn six_digits(mut n: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    for c in out.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// The STAN and DE 7 a DE 90 (as built by `original_data_elements`) describes.
fn repeated_key(de90: &[u8; 42]) -> Option<(u32, [u8; 10])> {
    let stan = digits_u32(de90.get(4..10)?)?;
    let time = <[u8; 10]>::try_from(de90.get(10..20)?).ok()?;
    Some((stan, time))
}

fn digits_u32(d: &[u8]) -> Option<u32> {
    d.iter().try_fold(0u32, |acc, &b| {
        let v = b.wrapping_sub(b'0');
        (v <= 9).then(|| acc * 10 + u32::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_that_cannot_drive_a_link_is_refused_by_clap_naming_the_flag() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Tool {
            #[command(flatten)]
            shape: ShapeArgs,
        }
        let parse = |args: &[&str]| Tool::try_parse_from([&["tool"], args].concat());
        let t = parse(&[]).unwrap();
        assert_eq!(
            (t.shape.connections, t.shape.in_flight, t.shape.rate),
            (4, 16, None)
        );
        let t = parse(&["--in-flight", "100000", "--rate", "10000"]).unwrap();
        assert_eq!(
            (t.shape.in_flight, t.shape.rate),
            (MAX_IN_FLIGHT, Some(10_000.0))
        );
        for (args, flag) in [
            (&["--connections", "0"][..], "--connections"),
            (&["--in-flight", "0"], "--in-flight"),
            (&["--in-flight", "100001"], "--in-flight"),
            (&["--rate", "0"], "--rate"),
            (&["--rate", "NaN"], "--rate"),
            (&["--rate", "1e-20"], "--rate"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "a usage error");
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn throughput_counts_up_to_the_last_answer_not_to_the_end_of_a_wait_for_timeouts() {
        let start = Instant::now();
        let traffic = Traffic::parse(
            r#"{"fields": {"t": "0800", "70": "301"}}"#,
            Spec::iso87ascii(),
        )
        .unwrap();
        let cfg = LoadgenConfig::new("127.0.0.1:1", Arc::new(traffic));
        let mut a = Stats::new().unwrap();
        a.answered = 600;
        a.last_answer = Some(start + Duration::from_secs(1));
        let mut b = Stats::new().unwrap();
        b.answered = 400;
        b.last_answer = Some(start + Duration::from_millis(500));
        // The run ended 5 s after its last answer, waiting out a timeout.
        let s = summarize(&cfg, start, Duration::from_secs(6), vec![a, b]);
        assert_eq!(s.answered, 1_000);
        assert!((s.throughput_per_s - 1_000.0).abs() < 1e-6, "{s:?}");
        assert!((s.elapsed_s - 6.0).abs() < 1e-6);
    }

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        // Past what a clock can add to now: refused, not a panic at the start of the run.
        assert!(parse_duration("10000000000000000000").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn stans_are_six_digits() {
        assert_eq!(&six_digits(42), b"000042");
        assert_eq!(digits_u32(b"000042"), Some(42));
        assert_eq!(digits_u32(b"00a042"), None);
    }
}
