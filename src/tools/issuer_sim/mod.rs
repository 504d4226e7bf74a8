//! `vpan issuer-sim`: a real issuer authorization host, for tests, demos and load.
//!
//! vpan's whole job is to stand in front of an issuer host, so its tests and its demo need
//! one that behaves like the real thing on the wire: accounts with balances, approvals that
//! debit and refunds that credit, reversals that find their original by DE 90 and give the
//! money back exactly once, many requests in flight per connection answered as soon as each
//! is ready, and on demand the faults a switch must survive (slow answers, lost answers,
//! dropped connections).
//!
//! Two rooms, as everywhere in vpan: the [`Ledger`] (`ledger.rs`) holds the accounts and
//! decides (no socket code, unit-tested beside it); the server (`server.rs`) is one task per
//! connection that reads frames, asks the ledger, and writes every answer that is ready in
//! one buffer per write. Delayed answers (`--latency-*`) wait in a per-connection queue, not
//! in a task each: the delay is the same for every answer, so the queue is already in
//! deadline order. Beside them: `accounts.rs` reads the accounts file, `stats.rs` keeps
//! the counters and the last requests that the handle ([`IssuerSimHandle`]) reports; this
//! file has the flags, the configuration and the handle.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::iso8583::{Framing, Spec};
use crate::pan::Pan;
use crate::tools::flags;
use crate::tools::pacer::Pacer;
use crate::tools::wire::WireArgs;

mod accounts;
mod ledger;
mod server;
mod stats;

pub use accounts::{load_accounts, parse_accounts};
pub use ledger::{Decision, Ledger, response};
use server::accept_loop;
use stats::Shared;
pub use stats::{Received, SimCounters, SimStats};

/// Balance given to accounts made on the fly when no accounts file is loaded (minor units).
pub const DEFAULT_BALANCE: i64 = 100_000_000;

/// Financial messages an account keeps, the last ones, for reversals and repeats to find.
pub const BOOKINGS_KEPT: usize = 1024;

/// How long an account keeps a financial message it left unanswered, however many came
/// after: longer than any timeout after which its reversal comes (the switch's 1.5 s, the
/// load generator's 5 s), which on a busy card covers far more than [`BOOKINGS_KEPT`]
/// messages.
pub const BOOKINGS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Stop reading from a connection while this many answer bytes wait to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// `vpan issuer-sim` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// The link's framing, layout and fixed header.
    #[command(flatten)]
    pub wire: WireArgs,
    /// Accounts file, JSON (`[{"pan": "...", "balance": 100000}]`) or CSV (`pan,balance`).
    #[arg(long)]
    pub accounts: Option<std::path::PathBuf>,
    /// Balance (minor units) of accounts not in the file, made on first use. Without
    /// `--accounts` every card exists with 100000000; with it, unknown cards get 14 unless
    /// this is given.
    #[arg(long, allow_negative_numbers = true)]
    pub default_balance: Option<i64>,
    /// Delay added to every answer, in milliseconds (other requests are not held up).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay added to every answer, in microseconds (added to --latency-ms).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub latency_us: u64,
    /// Share of requests (0 to 1) booked but never answered, as when an answer is lost.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0, value_parser = flags::share)]
    pub timeout_share: f64,
    /// Share of requests (0 to 1) after which the connection is closed, unanswered.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0, value_parser = flags::share)]
    pub drop_share: f64,
    /// Approve a purchase over the balance for the balance (DE 39 10, DE 4 and DE 6 of
    /// what is approved), as a prepaid or debit issuer does, rather than decline it 51.
    #[arg(long)]
    pub partial_approvals: bool,
    /// Seed for the fault draws and auth codes (random when not given).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
}

/// Everything the simulator needs to start.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; port 0 for a free one.
    pub listen: SocketAddr,
    /// Length header form.
    pub framing: Framing,
    /// Message layout.
    pub spec: &'static Spec,
    /// Fixed header after the length, echoed back (empty for none).
    pub header: Vec<u8>,
    /// Accounts known at start, with their balances in minor units.
    pub accounts: Vec<(Pan, i64)>,
    /// Balance of accounts made on first use; `None`: unknown cards are declined with 14.
    pub default_balance: Option<i64>,
    /// A purchase over a balance above zero is approved for the balance (10), not 51.
    pub partial_approvals: bool,
    /// Delay added to every answer.
    pub latency: Duration,
    /// Share of requests booked but never answered.
    pub timeout_share: f64,
    /// Cards whose authorizations and purchases (0100, 0200) are booked but never
    /// answered: a host that hangs on some accounts, for scenarios that need a timeout (91)
    /// at a known place. Their reversals are answered, so the switch's reversal of the
    /// timed-out request goes through.
    pub silent: Vec<Pan>,
    /// Share of requests after which the connection is closed.
    pub drop_share: f64,
    /// Seed for fault draws and auth codes; `None` for a random one.
    pub seed: Option<u64>,
    /// How many received requests the handle keeps for inspection (0: none).
    pub keep_last: usize,
    /// Largest frame accepted.
    pub max_frame: usize,
}

impl Default for SimConfig {
    /// On `127.0.0.1:0`, `len2`, `iso87ascii`, every card known with [`DEFAULT_BALANCE`],
    /// no delay, no faults, the last 1000 requests kept.
    fn default() -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            framing: Framing::Len2,
            spec: Spec::iso87ascii(),
            header: Vec::new(),
            accounts: Vec::new(),
            default_balance: Some(DEFAULT_BALANCE),
            partial_approvals: false,
            latency: Duration::ZERO,
            timeout_share: 0.0,
            silent: Vec::new(),
            drop_share: 0.0,
            seed: None,
            keep_last: 1000,
            max_frame: 8192,
        }
    }
}

/// Why the simulator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The accounts file cannot be read or has a bad line.
    #[error("accounts file {path}: {message}")]
    Accounts {
        /// The file.
        path: String,
        /// What is wrong, with the line number; never the card number.
        message: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The thread that times delayed answers cannot be started.
    #[error("cannot start the latency clock's thread: {0}")]
    Pacer(std::io::Error),
    /// `--spec` names a file that is not there.
    #[error("{0}")]
    Spec(String),
}

impl SimConfig {
    /// Builds the configuration from the command line flags (reads the accounts file).
    pub fn from_args(args: &Args) -> Result<SimConfig, SimError> {
        let accounts = match &args.accounts {
            Some(path) => load_accounts(path)?,
            None => Vec::new(),
        };
        let default_balance = match (args.default_balance, &args.accounts) {
            (Some(b), _) => Some(b),
            (None, None) => Some(DEFAULT_BALANCE),
            (None, Some(_)) => None,
        };
        Ok(SimConfig {
            listen: args.listen,
            framing: args.wire.framing,
            spec: args.wire.spec().map_err(SimError::Spec)?,
            header: args.wire.header_hex.0.clone(),
            accounts,
            default_balance,
            partial_approvals: args.partial_approvals,
            latency: Duration::from_millis(args.latency_ms)
                + Duration::from_micros(args.latency_us),
            timeout_share: args.timeout_share,
            silent: Vec::new(),
            drop_share: args.drop_share,
            seed: args.seed,
            keep_last: 0,
            max_frame: 8192,
        })
    }
}

/// The simulator as a library, for tests and the demo.
pub struct IssuerSim;

impl IssuerSim {
    /// Binds the listen address and starts serving on the current tokio runtime. Logs the
    /// bound address.
    pub async fn start(config: SimConfig) -> Result<IssuerSimHandle, SimError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let seed = config.seed.unwrap_or_else(|| rand::rng().random());
        let shared = Arc::new(Shared {
            ledger: Ledger::new(
                &config.accounts,
                config.default_balance,
                config.partial_approvals,
                seed,
            ),
            by_mti: (0..10_000).map(|_| AtomicU64::new(0)).collect(),
            recent: Mutex::new(VecDeque::new()),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            lost_with_connection: AtomicU64::new(0),
            not_read: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            progress: Notify::new(),
            waiters: AtomicUsize::new(0),
            pacer: match config.latency.is_zero() {
                true => None,
                false => Some(Pacer::start(0).map_err(SimError::Pacer)?),
            },
            config,
        });
        info!(
            accounts = shared.config.accounts.len(),
            latency_us = shared.config.latency.as_micros() as u64,
            partial_approvals = shared.config.partial_approvals,
            "issuer simulator listening on {addr}"
        );
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone(), seed));
        Ok(IssuerSimHandle {
            addr,
            shared,
            cancel,
            task,
        })
    }
}

/// A running simulator: its address, its books and its counters.
pub struct IssuerSimHandle {
    /// The bound address.
    addr: SocketAddr,
    /// What the connections update.
    shared: Arc<Shared>,
    /// Stops the accept loop and every connection.
    cancel: CancellationToken,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl IssuerSimHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// An account's balance in minor units; `None` for an account that does not exist (yet).
    pub fn balance(&self, pan: &Pan) -> Option<i64> {
        self.shared.ledger.balance(pan)
    }

    /// Opens an account or sets its balance while running (e.g. for a card a test just
    /// issued against a real PAN).
    pub fn set_balance(&self, pan: &Pan, balance: i64) {
        self.shared.ledger.set_balance(pan, balance);
    }

    /// Requests received with this MTI (four ASCII digits).
    pub fn requests(&self, mti: &[u8; 4]) -> u64 {
        let idx = mti.iter().fold(0usize, |a, &d| {
            a * 10 + usize::from(d.wrapping_sub(b'0') % 10)
        });
        self.shared
            .by_mti
            .get(idx)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Requests received, by MTI, only those seen.
    pub fn requests_by_mti(&self) -> BTreeMap<String, u64> {
        self.shared
            .by_mti
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (format!("{i:04}"), n))
            })
            .collect()
    }

    /// The last `n` requests received (at most `keep_last`), oldest first.
    pub fn recent(&self, n: usize) -> Vec<Received> {
        match self.shared.recent.lock() {
            Ok(r) => r.iter().skip(r.len().saturating_sub(n)).cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The running counters.
    pub fn stats(&self) -> SimStats {
        self.counters().stats()
    }

    /// The counters, readable after [`IssuerSimHandle::shutdown`] too.
    pub fn counters(&self) -> SimCounters {
        SimCounters(self.shared.clone())
    }

    /// Returns once at least `n` requests have been received (awaits, never polls).
    pub async fn wait_for_requests(&self, n: u64) {
        let s = &self.shared;
        s.waiters.fetch_add(1, Ordering::AcqRel);
        loop {
            let notified = s.progress.notified();
            if s.requests.load(Ordering::Acquire) >= n {
                break;
            }
            notified.await;
        }
        s.waiters.fetch_sub(1, Ordering::AcqRel);
    }

    /// Stops accepting, closes every connection and waits for the accept loop to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// `vpan issuer-sim`: starts the simulator and serves until Ctrl-C or SIGTERM.
pub async fn run_cli(args: Args) -> Result<(), String> {
    let config = SimConfig::from_args(&args).map_err(|e| e.to_string())?;
    let handle = IssuerSim::start(config).await.map_err(|e| e.to_string())?;
    crate::app::shutdown_signal().await;
    // Counted once every connection has ended: what each held back is then counted lost.
    let counters = handle.counters();
    handle.shutdown().await;
    let stats = counters.stats();
    info!(
        requests = stats.requests,
        answered = stats.answered,
        unanswered = stats.unanswered,
        lost_with_connection = stats.lost_with_connection,
        dropped = stats.dropped,
        not_read = stats.not_read,
        malformed = stats.malformed,
        unmatched_reversals = stats.unmatched_reversals,
        "issuer simulator stopped"
    );
    Ok(())
}
