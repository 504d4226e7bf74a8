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
//! The traffic file is replayed in order, looping as `--count` or `--duration` ask. It is
//! cut into pieces, never between a message and a later one that refers to it, and each
//! piece is a *run* that one connection owns: every connection has work even in a short
//! load (unless the file's references chain across all of it), and a reversal goes out on
//! the same connection after its original's answer, with DE 90 built from the original as
//! it was sent. Every request gets a fresh STAN (DE 11) and DE 7 set to now; answers are
//! matched by STAN on their connection. A request unanswered for `--timeout-ms` counts as
//! a timeout; a connection that drops counts its requests as lost and is dialled again.
//!
//! Each connection is one task that owns its socket, its requests in flight and its own
//! HdrHistogram (no lock on the hot path); the histograms are merged at the end.
//!
//! Here: the flags, the configuration and the run; `conn.rs`: one connection's engine;
//! `report.rs`: what each connection measures, and the summary they are merged into. The
//! open loop's clock, finer than tokio's millisecond timer, is `tools/pacer.rs`.

mod conn;
mod report;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flags;
use super::traffic::{Traffic, TrafficError, load_bindings};
use super::wire::WireArgs;
use crate::iso8583::{FrameCodec, Framing, Spec};

pub use report::{Latency, Summary};

use conn::{Conn, Shared, StanHash, connection, dial_for, open_record};
use report::{Stats, summarize};

/// Most requests in flight on one connection: far below the million six-digit STANs, so a
/// fresh one is always found at once.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// Most connections: each holds its own latency histogram (about 300 KB), so 10,000 take
/// some 3 GB.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Longest latency the histogram holds, in microseconds (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// `vpan loadgen` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to send to: the switch's network listener, or an issuer host.
    #[arg(long, value_name = "HOST:PORT", value_parser = flags::host_port)]
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
    // Hyphen values reach the parser, which names the flag ("-1s" is no flag of its own).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How many requests to send, looping over the file as needed. Without --count and
    /// --duration the file is sent once.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    pub count: Option<u64>,
    /// The link's framing, layout and fixed header.
    #[command(flatten)]
    pub wire: WireArgs,
    /// A request unanswered this long counts as a timeout (1 to 3600000, an hour); a
    /// connection the target does not take within it (at least 1 s) is given up.
    #[arg(long, allow_negative_numbers = true, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
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

/// The largest `--count`: more than any run sends, and short enough that the refusal's
/// range is not taken for a card number and masked.
const MAX_COUNT: u64 = 10_000_000_000;

/// Reads `10s`, `500ms`, `250us`, `2m`, `1h`, or a plain number of seconds; more than
/// zero, and a year at most.
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
        .filter(|d| !d.is_zero() && *d <= LONGEST)
        .ok_or_else(|| format!("{s:?} is out of range (more than zero, a year at most)"))
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
    /// Connections to open (up to 10,000: each has a latency histogram of its own).
    #[arg(long, allow_negative_numbers = true, default_value_t = 4, value_parser = flags::count(MAX_CONNECTIONS as u64))]
    pub connections: usize,
    /// Requests in flight per connection at most (up to 100,000: STANs are six digits).
    #[arg(long, allow_negative_numbers = true, default_value_t = 16, value_parser = flags::count(MAX_IN_FLIGHT as u64))]
    pub in_flight: usize,
    /// Open loop: requests per second over all connections, on a fixed schedule (default:
    /// closed loop).
    #[arg(long, allow_negative_numbers = true, value_parser = flags::per_second)]
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
        let spec = args.wire.spec()?;
        let traffic = match &args.cards {
            None => Traffic::load(&args.traffic, spec),
            Some(file) => Traffic::load_bound(&args.traffic, spec, &load_bindings(file)?),
        }
        .map_err(|e| match e {
            // Its message names the file already.
            TrafficError::Io { .. } => e.to_string(),
            e => format!("{}: {e}", args.traffic.display()),
        })?;
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
            timeout: Duration::from_millis(args.timeout_ms),
            progress: true,
            max_frame: 8192,
            stop: None,
            record: args.record.clone(),
        })
    }
}

/// Why a load run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The first connection attempt failed.
    #[error("cannot connect to {target}: {source}{}", out_of_files_hint(source))]
    Connect {
        /// The target as given.
        target: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("{0}")]
    Config(String),
    /// The open loop's clock thread could not be started.
    #[error("cannot start the open loop's pacer thread: {0}")]
    Pacer(std::io::Error),
}

/// What [`LoadgenError::Connect`] adds when the process, or the system, has no file
/// descriptor left for another connection: many `--connections` under a default limit of
/// 1,024 open files.
fn out_of_files_hint(e: &std::io::Error) -> &'static str {
    use rustix::io::Errno;
    let out = [Errno::MFILE, Errno::NFILE].map(|errno| errno.raw_os_error());
    if e.raw_os_error().is_some_and(|code| out.contains(&code)) {
        ": no file descriptor left for another connection; raise the limit of open files (ulimit -n) or give fewer --connections"
    } else {
        ""
    }
}

/// Runs a load as configured and returns what it measured. Fails only when the first
/// connection cannot be made; everything after that is counted in the summary.
pub async fn run(mut cfg: LoadgenConfig) -> Result<Summary, LoadgenError> {
    if cfg.count.is_none() && cfg.duration.is_none() {
        cfg.count = Some(cfg.traffic.len() as u64);
    }
    if !(1..=MAX_CONNECTIONS).contains(&cfg.connections)
        || !(1..=MAX_IN_FLIGHT).contains(&cfg.in_flight)
        || cfg.rate.is_some_and(|r| !flags::rate_in_range(r))
    {
        return Err(LoadgenError::Config(format!(
            "connections must be from 1 to {MAX_CONNECTIONS}, in_flight from 1 to {MAX_IN_FLIGHT}, rate from 0.01 to {}",
            flags::MAX_PER_SECOND
        )));
    }
    let mut streams = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let s = crate::switch::dial_within(&cfg.target, dial_for(&cfg))
            .await
            .map_err(|source| LoadgenError::Connect {
                target: cfg.target.clone(),
                source,
            })?;
        streams.push(s);
    }
    // Each connection's histogram is made before the clock starts: thousands of them take
    // seconds, which are not the run's.
    let stats = (0..cfg.connections)
        .map(|_| Stats::new())
        .collect::<Result<Vec<_>, _>>()?;
    let pieces = cfg.traffic.pieces(piece_size(&cfg));
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: cfg.duration.map(|d| start + d),
        pieces,
        next_run: AtomicU64::new(0),
        // A random start, as after a real acquirer's restart: two runs in the same second
        // (a demo's story, then its load) must not reuse each other's transaction keys.
        stan: AtomicU32::new(rand::random_range(0..999_999)),
        exhausted: AtomicBool::new(false),
        used_up: tokio::sync::watch::Sender::new(false),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        given_up: AtomicU64::new(0),
        record: open_record(cfg.record.as_deref())?,
        record_failed: AtomicBool::new(false),
        cfg: cfg.clone(),
    });
    let interval = match cfg.rate {
        Some(r) => Duration::from_secs_f64(cfg.connections as f64 / r),
        None => Duration::ZERO,
    };
    // Stopped when the run returns, after every connection's task.
    let pacer = match cfg.rate {
        Some(_) => {
            Some(crate::tools::pacer::Pacer::start(cfg.connections).map_err(LoadgenError::Pacer)?)
        }
        None => None,
    };
    // Every connection's state is made before any task starts: one that cannot be made
    // returns the error with no task left running detached on a stopped pacer.
    let mut conns = Vec::with_capacity(cfg.connections);
    for (i, (s, stats)) in streams.into_iter().zip(stats).enumerate() {
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
            pacer: pacer.as_ref().map(|p| p.slot(i)),
            starved: false,
            de7: (0, [b'0'; 10]),
            out: BytesMut::with_capacity(64 * 1024),
            stats,
            record: Vec::new(),
            used_up: shared.used_up.subscribe(),
        };
        conns.push((conn, s));
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(conn, s)| tokio::spawn(connection(conn, s)))
        .collect();
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

/// Messages in a piece of the traffic file (`Traffic::pieces`): small enough that every
/// connection gets some of a short load (a file sent once over four connections goes out
/// over the four), large enough that handing pieces out costs nothing, and that a
/// connection holds a few dozen pieces at most whatever its `--in-flight` (it looks
/// through them on every request).
fn piece_size(cfg: &LoadgenConfig) -> usize {
    let messages = cfg
        .traffic
        .len()
        .min(cfg.count.map_or(usize::MAX, |c| c as usize));
    (messages / (cfg.connections * 4))
        .clamp(1, 1024)
        .max(cfg.in_flight / 32)
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
    if let Some(failed) = summary.errors_by_kind.get("record") {
        return Err(format!(
            "--record {}: {failed} writes failed; sending stopped at the first, and the record is incomplete",
            args.record
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        ));
    }
    if summary.answered == 0 {
        return Err(format!(
            "nothing was answered ({} sent, {} timeouts, {} errors)",
            summary.sent, summary.timeouts, summary.errors
        ));
    }
    // The figures of a run whose target went away look like those of a whole run; a
    // script comparing them must hear that they are not.
    if let Some(gave_up) = summary.errors_by_kind.get("gave_up") {
        return Err(format!(
            "the run was cut short: {gave_up} of {} connections could not dial the target again and gave up, so the figures above cover only what was sent before",
            args.shape.connections
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dial_out_of_file_descriptors_says_how_to_raise_the_limit() {
        let said = |code| {
            super::LoadgenError::Connect {
                target: "127.0.0.1:8583".into(),
                source: std::io::Error::from_raw_os_error(code),
            }
            .to_string()
        };
        let emfile = rustix::io::Errno::MFILE.raw_os_error();
        assert!(
            said(emfile).ends_with("(ulimit -n) or give fewer --connections"),
            "{}",
            said(emfile)
        );
        let refused = rustix::io::Errno::CONNREFUSED.raw_os_error();
        assert!(!said(refused).contains("ulimit"), "{}", said(refused));
    }

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
            // A connection's interval would round to nothing: a schedule that never ends.
            (&["--rate", "1e10"], "--rate"),
            (&["--connections", "10001"], "--connections"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "a usage error");
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn a_negative_duration_or_count_is_refused_naming_its_flag() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Tool {
            #[command(flatten)]
            args: Args,
        }
        for (flag, value) in [
            ("--duration", "-1s"),
            ("--duration", "-1"),
            ("--count", "-1"),
        ] {
            let args = [
                "tool",
                "--target",
                "127.0.0.1:1",
                "--traffic",
                "t.jsonl",
                flag,
                value,
            ];
            let e = Tool::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "a usage error");
            assert!(e.to_string().contains(flag), "{e}");
        }
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
        assert!(
            parse_duration("0s").is_err(),
            "a run of no time sends nothing"
        );
        assert!(parse_duration("0").is_err());
    }
}
