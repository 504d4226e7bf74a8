//! `vpan issuer-sim`: a real issuer authorization host, for tests, demos and load.
//!
//! vpan's whole job is to stand in front of an issuer host, so its tests and its demo need
//! one that behaves like the real thing on the wire: accounts with balances, approvals that
//! debit and refunds that credit, reversals that find their original by DE 90 and give the
//! money back exactly once, many requests in flight per connection answered as soon as each
//! is ready, and on demand the faults a switch must survive (slow answers, lost answers,
//! dropped connections).
//!
//! Two rooms, as everywhere in vpan: the [`Ledger`] holds the accounts and decides (no socket
//! code, unit-tested below); the server is one task per connection that reads frames, asks
//! the ledger, and writes every answer that is ready in one buffer per write. Delayed answers
//! (`--latency-*`) wait in a per-connection queue, not in a task each: the delay is the same
//! for every answer, so the queue is already in deadline order.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::flags;
use super::pacer::{Pacer, PacerSlot};
use super::wire::WireArgs;
use crate::iso8583::{Frame, FrameCodec, Framing, Message, Spec, recover_header};
use crate::pan::{Masked, Pan, luhn_valid};

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

/// One accounts-file entry as written in JSON.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountLine {
    pan: String,
    balance: i64,
}

/// Reads an accounts file: JSON (an array of `{"pan", "balance"}`) or CSV (`pan,balance`
/// per line, an optional header line, `#` comments). The form is told by the first
/// character that is not blank: `[` for JSON.
pub fn load_accounts(path: &Path) -> Result<Vec<(Pan, i64)>, SimError> {
    let err = |message: String| SimError::Accounts {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_accounts(&text).map_err(err)
}

/// [`load_accounts`] of a file's text; the error names the line or entry, never the card
/// number. A file of no accounts, a card number that fails the Luhn check (every request
/// on it would get 14) and a card given twice are refused: each is a mistake in the file
/// that would otherwise show only as a load test's odd answers.
pub fn parse_accounts(text: &str) -> Result<Vec<(Pan, i64)>, String> {
    let mut accounts = Accounts::default();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return Err("a JSON object: expected an array of {\"pan\", \"balance\"} objects".into());
    }
    if trimmed.starts_with('[') {
        let lines: Vec<AccountLine> = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a JSON array of {{\"pan\", \"balance\"}} (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        for (i, l) in lines.into_iter().enumerate() {
            accounts.add(&format!("entry {}", i + 1), &l.pan, l.balance)?;
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pan, balance) = line
                .split_once(',')
                .ok_or_else(|| format!("line {line_no}: expected pan,balance"))?;
            let (pan, balance) = (pan.trim(), balance.trim());
            if accounts.list.is_empty() && pan.eq_ignore_ascii_case("pan") {
                continue;
            }
            let balance = balance
                .parse()
                .map_err(|_| format!("line {line_no}: balance is not a whole number"))?;
            accounts.add(&format!("line {line_no}"), pan, balance)?;
        }
    }
    if accounts.list.is_empty() {
        return Err("no accounts in the file".into());
    }
    Ok(accounts.list)
}

/// The accounts read so far, and where each card was.
#[derive(Default)]
struct Accounts {
    list: Vec<(Pan, i64)>,
    seen: std::collections::HashMap<Pan, String>,
}

impl Accounts {
    /// Adds the account at `place` (`line 3`, `entry 2`), or says what is wrong with it.
    fn add(&mut self, place: &str, pan: &str, balance: i64) -> Result<(), String> {
        let pan = Pan::from_digits_checked(pan.as_bytes()).map_err(|e| format!("{place}: {e}"))?;
        if let Some(first) = self.seen.get(&pan) {
            return Err(format!("{place}: the same card as {first}"));
        }
        self.seen.insert(pan.clone(), place.to_string());
        self.list.push((pan, balance));
        Ok(())
    }
}

/// The key that finds a financial message again: what DE 90 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TxnKey {
    /// The MTI with its last digit (origin / repeat) set to 0.
    mti: [u8; 4],
    /// DE 11.
    stan: [u8; 6],
    /// DE 7.
    time: [u8; 10],
    /// DE 32, zero-padded on the left to 11 digits.
    acquirer: [u8; 11],
}

/// A booked financial message, kept for reversals and repeats.
#[derive(Debug, Clone)]
struct Booked {
    /// How to find it.
    key: TxnKey,
    /// What it did to the balance (negative for a debit): the amount billed, DE 6 when
    /// the network converted it into the card's currency, else DE 4.
    effect: i64,
    /// DE 4 of the request, which a partial reversal's DE 95 speaks in: what stays of
    /// `effect` is in that proportion.
    asked: u64,
    /// What of `effect` still stands: all of it until reversed, DE 95's amount after a
    /// partial reversal, 0 after a full one.
    standing: i64,
    /// The answer given, replayed for a repeat.
    response_code: [u8; 2],
    /// The auth code given, replayed for a repeat.
    auth_code: Option<[u8; 6]>,
    /// Set once reversed, so a second reversal gives nothing back.
    reversed: bool,
    /// Left unanswered (`timeout_share`): its reversal comes after the caller's timeout,
    /// so it is kept longer.
    unanswered: bool,
}

/// What an issuer bills its cardholder for `req`, in the card's currency: DE 6 (cardholder
/// billing) when the network converted the amount, else DE 4.
fn billed(req: &Message) -> Option<u64> {
    req.amount_cardholder_billing()
        .or_else(|| req.amount_transaction())
}

/// An account's booked financial messages, for reversals and repeats to find: the last
/// [`BOOKINGS_KEPT`] in a short list (scanned from the newest: a reversal in a replayed
/// scenario follows its original closely), and those left unanswered
/// (`timeout_share`) kept apart, when the list moves past them, for [`BOOKINGS_KEPT_FOR`].
/// An unanswered one is the purchase whose reversal comes only after the caller's timeout,
/// by which time a busy card has booked far more than the list holds. Keeping every
/// booking that long instead cost the simulator 2.8 times the CPU per request on the
/// sample traffic (one card takes most of it): a bottleneck of its own.
#[derive(Debug, Default)]
struct Bookings {
    /// The last [`BOOKINGS_KEPT`], oldest first.
    recent: VecDeque<Booked>,
    /// Unanswered bookings the list moved past, with when they left it.
    unanswered: std::collections::HashMap<TxnKey, (std::time::Instant, Booked)>,
    /// The size of `unanswered` at which the expired ones are next swept.
    sweep_at: usize,
}

impl Bookings {
    fn get(&self, key: &TxnKey) -> Option<&Booked> {
        match self.recent.iter().rev().find(|b| b.key == *key) {
            Some(b) => Some(b),
            None => self.unanswered.get(key).map(|(_, b)| b),
        }
    }

    fn get_mut(&mut self, key: &TxnKey) -> Option<&mut Booked> {
        match self.recent.iter().rposition(|b| b.key == *key) {
            Some(i) => self.recent.get_mut(i),
            None => self.unanswered.get_mut(key).map(|(_, b)| b),
        }
    }

    fn contains(&self, key: &TxnKey) -> bool {
        self.get(key).is_some()
    }

    /// Books `b`, moving the oldest out of the list when it is full.
    fn book(&mut self, b: Booked) {
        // Kept: an original left unanswered and not reversed since, or a reversal left
        // unanswered (its own booking says `reversed`), whose repeat comes after a timeout.
        if self.recent.len() >= BOOKINGS_KEPT
            && let Some(old) = self.recent.pop_front()
            && old.unanswered
            && (!old.reversed || old.key.mti[1] == b'4')
        {
            let now = std::time::Instant::now();
            self.unanswered.insert(old.key, (now, old));
            if self.unanswered.len() >= self.sweep_at {
                self.unanswered
                    .retain(|_, (at, _)| now.duration_since(*at) <= BOOKINGS_KEPT_FOR);
                // Swept again once it has doubled: amortised, a constant per booking.
                self.sweep_at = (self.unanswered.len() * 2).max(64);
            }
        }
        self.recent.push_back(b);
    }

    /// Marks the newest booking under `key` as left unanswered.
    fn left_unanswered(&mut self, key: &TxnKey) {
        if let Some(b) = self.recent.iter_mut().rev().find(|b| b.key == *key) {
            b.unanswered = true;
        }
    }
}

/// An account at the simulated issuer.
#[derive(Debug)]
struct Account {
    /// Minor units; may go below zero through advices, which cannot be declined.
    balance: i64,
    /// Its financial messages, for reversals and repeats.
    history: Bookings,
}

/// What the ledger decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The response MTI.
    pub mti: [u8; 4],
    /// DE 39.
    pub response_code: [u8; 2],
    /// DE 38, on approvals of authorizations and financial requests.
    pub auth_code: Option<[u8; 6]>,
}

/// The issuer's books: accounts and their recent financial messages. Pure decisions on
/// parsed messages; no socket code.
pub struct Ledger {
    /// Accounts by real PAN.
    accounts: DashMap<Pan, Account>,
    /// Balance of accounts made on first use; `None` declines unknown cards.
    default_balance: Option<i64>,
    /// Source of auth codes: a counter, so codes are unique and cheap.
    auth_counter: AtomicU64,
    /// Reversals whose original was not found (nothing given back).
    unmatched_reversals: AtomicU64,
}

/// The fields a response carries over from its request (ISO 8583:1987 practice): amounts,
/// dates, trace and retrieval numbers, acquirer and acceptor identification, currencies,
/// original data and replacement amounts. Track data, PIN block, EMV data and the like are
/// not echoed.
const ECHOED: &[usize] = &[
    2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 28, 32, 33, 37, 41, 42, 43,
    49, 50, 51, 70, 90, 95, 100, 102, 103,
];

/// `ECHO_TABLE[n]`: field `n` is echoed.
const ECHO_TABLE: [bool; 193] = {
    let mut t = [false; 193];
    let mut i = 0;
    while i < ECHOED.len() {
        t[ECHOED[i]] = true;
        i += 1;
    }
    t
};

impl Ledger {
    /// Books with these accounts; unknown cards get `default_balance`, or 14 when `None`.
    pub fn new(accounts: &[(Pan, i64)], default_balance: Option<i64>, seed: u64) -> Ledger {
        let map = DashMap::new();
        for (pan, balance) in accounts {
            map.insert(
                pan.clone(),
                Account {
                    balance: *balance,
                    history: Bookings::default(),
                },
            );
        }
        Ledger {
            accounts: map,
            default_balance,
            auth_counter: AtomicU64::new(seed % 1_000_000),
            unmatched_reversals: AtomicU64::new(0),
        }
    }

    /// The balance of an account, if it exists.
    pub fn balance(&self, pan: &Pan) -> Option<i64> {
        self.accounts.get(pan).map(|a| a.balance)
    }

    /// Opens an account, or sets the balance of an existing one (its history is kept).
    pub fn set_balance(&self, pan: &Pan, balance: i64) {
        self.accounts
            .entry(pan.clone())
            .and_modify(|a| a.balance = balance)
            .or_insert(Account {
                balance,
                history: Bookings::default(),
            });
    }

    /// Notes that `req`, just decided, is left unanswered (`timeout_share`): its booking
    /// is kept for the reversal that comes after the caller's timeout.
    pub fn left_unanswered(&self, req: &Message) {
        if let Some(Ok(pan)) = req.card_number()
            && let Some(mut account) = self.accounts.get_mut(&pan)
        {
            let mut key = txn_key(req);
            if key.mti[1] == b'4' {
                // A reversal and its advice form share one booking (see `reverse`).
                key.mti[2] = b'0';
            }
            account.history.left_unanswered(&key);
        }
    }

    /// Reversals whose original was not found.
    pub fn unmatched_reversals(&self) -> u64 {
        self.unmatched_reversals.load(Ordering::Relaxed)
    }

    /// Decides on one request and books it. `None` for a message that is not a request
    /// (a response class MTI): it gets no answer.
    pub fn decide(&self, req: &Message) -> Option<Decision> {
        let mti = req.mti();
        let function = mti[2].wrapping_sub(b'0');
        if function % 2 == 1 || function > 9 {
            return None;
        }
        let resp_mti = [mti[0], mti[1], mti[2] + 1, b'0'];
        let answer = |rc: &[u8; 2], auth: Option<[u8; 6]>| {
            Some(Decision {
                mti: resp_mti,
                response_code: *rc,
                auth_code: auth,
            })
        };
        match (mti[1], mti[2]) {
            (b'8', _) => answer(b"00", None),
            (b'1' | b'2', b'0') => self.authorize(req, resp_mti),
            (b'1' | b'2', b'2') => self.advise(req, resp_mti),
            (b'4', b'0' | b'2') => self.reverse(req, resp_mti),
            _ => answer(b"12", None),
        }
    }

    /// 0100 / 0200: approve and debit (credit for a refund), or 51.
    fn authorize(&self, req: &Message, resp_mti: [u8; 4]) -> Option<Decision> {
        let decision = |rc: &[u8; 2], auth| {
            Some(Decision {
                mti: resp_mti,
                response_code: *rc,
                auth_code: auth,
            })
        };
        let Some(Ok(pan)) = req.card_number() else {
            return decision(b"14", None);
        };
        if !luhn_valid(pan.as_bytes()) {
            return decision(b"14", None);
        }
        let (Some(asked), Some(pcode)) = (req.amount_transaction(), req.processing_code()) else {
            return decision(b"30", None);
        };
        let Ok(amount) = i64::try_from(billed(req).unwrap_or(asked)) else {
            return decision(b"13", None);
        };
        let refund = pcode.starts_with(b"20");
        let key = txn_key(req);
        let Some(mut account) = self.account(&pan) else {
            return decision(b"14", None);
        };
        if req.mti()[3] == b'1'
            && let Some(b) = account.history.get(&key)
        {
            return decision(&b.response_code, b.auth_code);
        }
        // A zero amount (a card check) is approved whatever the balance; a refund that
        // would carry the balance past i64 is declined, not wrapped.
        let (rc, effect) = if refund {
            match account.balance.checked_add(amount) {
                Some(_) => (*b"00", amount),
                None => (*b"13", 0),
            }
        } else if amount == 0 || account.balance >= amount {
            (*b"00", -amount)
        } else {
            (*b"51", 0)
        };
        let auth = (rc == *b"00").then(|| self.auth_code());
        account.balance += effect;
        account.history.book(Booked {
            key,
            effect,
            asked,
            standing: effect,
            response_code: rc,
            auth_code: auth,
            reversed: false,
            unanswered: false,
        });
        decision(&rc, auth)
    }

    /// 0120 / 0220: what was approved elsewhere is booked, whatever the balance.
    fn advise(&self, req: &Message, resp_mti: [u8; 4]) -> Option<Decision> {
        let ack = Some(Decision {
            mti: resp_mti,
            response_code: *b"00",
            auth_code: None,
        });
        let (Some(Ok(pan)), Some(asked)) = (req.card_number(), req.amount_transaction()) else {
            return ack;
        };
        let amount = billed(req).and_then(|a| i64::try_from(a).ok()).unwrap_or(0);
        let refund = req.processing_code().is_some_and(|p| p.starts_with(b"20"));
        let key = txn_key(req);
        if let Some(mut account) = self.account(&pan) {
            // Only a repeat (0121 / 0221) can be a message already booked.
            if req.mti()[3] == b'1' && account.history.contains(&key) {
                return ack;
            }
            let effect = if refund { amount } else { -amount };
            account.balance = account.balance.saturating_add(effect);
            account.history.book(Booked {
                key,
                effect,
                asked,
                standing: effect,
                response_code: *b"00",
                auth_code: None,
                reversed: false,
                unanswered: false,
            });
        }
        ack
    }

    /// 0400 / 0420: give back what the original did, once (a full reversal after a partial
    /// one gives back the rest). The original is found by DE 90;
    /// without DE 90 the reversal's own DE 4 is given back, once per reversal key. DE 95
    /// makes it partial: its first 12 digits are what stays (its fee parts are often sent
    /// unsigned or blank, and are not read). Acknowledged with 00, as a reversal cannot be
    /// refused, but for a DE 95 without those digits: 30, and nothing given back (as the
    /// switch does), rather than everything.
    fn reverse(&self, req: &Message, resp_mti: [u8; 4]) -> Option<Decision> {
        let ack = Some(Decision {
            mti: resp_mti,
            response_code: *b"00",
            auth_code: None,
        });
        let Some(Ok(pan)) = req.card_number() else {
            return ack;
        };
        let Some(mut account) = self.account(&pan) else {
            return ack;
        };
        let account = &mut *account;
        let keep = match req.replacement_transaction_amount() {
            None => None,
            Some(Some(keep)) => Some(keep),
            Some(None) => {
                return Some(Decision {
                    mti: resp_mti,
                    response_code: *b"30",
                    auth_code: None,
                });
            }
        };
        // What a reversal gives back of `effect`, booked for a request of DE 4 `asked`: all
        // of it, or what DE 95 does not keep, in DE 4's proportion (DE 95 speaks in DE 4;
        // the booking may be DE 6, in the card's currency).
        let partial = |effect: i64, asked: u64| -> i64 {
            match keep {
                Some(k) if asked > 0 => {
                    let kept = u128::from(effect.unsigned_abs()) * u128::from(k.min(asked))
                        / u128::from(asked);
                    effect - effect.signum() * i64::try_from(kept).unwrap_or(i64::MAX)
                }
                Some(_) => 0,
                None => effect,
            }
        };
        // One key for the reversal and its advice form and repeats (0400, 0401, 0420,
        // 0421), with or without DE 90: whichever comes first gives back, the others find
        // it and give nothing.
        let mut own = txn_key(req);
        own.mti[2] = b'0';
        if account.history.contains(&own) {
            return ack;
        }
        // The original: named by DE 90, or else under the reversal's own DE 11, DE 7 and
        // DE 32 (as the network sends a reversal without DE 90), an authorization first.
        let original = match req.original_data() {
            Some(o) => {
                let mut mti = o.mti;
                mti[3] = b'0';
                Some(TxnKey {
                    mti,
                    stan: o.stan,
                    time: o.transmission_time,
                    acquirer: o.acquirer,
                })
            }
            None => [*b"0100", *b"0200"]
                .into_iter()
                .map(|mti| TxnKey { mti, ..own })
                .find(|key| account.history.contains(key)),
        };
        let given = match original {
            Some(key) => {
                match account.history.get_mut(&key) {
                    // What the reversal leaves standing: DE 95's amount, or nothing. A
                    // full reversal after a partial one gives back the rest; a reversal
                    // never charges again what an earlier one gave back.
                    Some(b) => {
                        b.reversed = true;
                        let leaves = b.effect - partial(b.effect, b.asked);
                        if leaves.abs() < b.standing.abs() {
                            account.balance = account.balance.saturating_add(leaves - b.standing);
                            b.standing = leaves;
                        }
                    }
                    None => {
                        self.unmatched_reversals.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Given back on the original's booking, which now says so.
                0
            }
            None => {
                // No original here (booked before a restart, or elsewhere): its own amount.
                self.unmatched_reversals.fetch_add(1, Ordering::Relaxed);
                let asked = req.amount_transaction().unwrap_or(0);
                let amount = billed(req).and_then(|a| i64::try_from(a).ok()).unwrap_or(0);
                let refund = req.processing_code().is_some_and(|p| p.starts_with(b"20"));
                let given = partial(if refund { -amount } else { amount }, asked);
                account.balance = account.balance.saturating_add(given);
                given
            }
        };
        account.history.book(Booked {
            key: own,
            effect: given,
            asked: req.amount_transaction().unwrap_or(0),
            standing: given,
            response_code: *b"00",
            auth_code: None,
            reversed: true,
            unanswered: false,
        });
        ack
    }

    /// The account, made on first use when there is a default balance (never for a card
    /// number that fails Luhn, which no issuer holds).
    fn account(&self, pan: &Pan) -> Option<dashmap::mapref::one::RefMut<'_, Pan, Account>> {
        if let Some(a) = self.accounts.get_mut(pan) {
            return Some(a);
        }
        if !crate::pan::luhn_valid(pan.as_bytes()) {
            return None;
        }
        let balance = self.default_balance?;
        Some(self.accounts.entry(pan.clone()).or_insert(Account {
            balance,
            history: Bookings::default(),
        }))
    }

    /// Six upper-case alphanumerics, unique over 36^6 (2.1 billion) approvals: the
    /// counter times a number prime to 36^6, modulo 36^6, is a permutation of it, so
    /// codes look scattered yet never repeat.
    fn auth_code(&self) -> [u8; 6] {
        const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        const CODES: u64 = 36u64.pow(6);
        // Prime, and neither 2 nor 3: prime to 36^6.
        const SCATTER: u64 = 1_000_000_007;
        let counter = self.auth_counter.fetch_add(1, Ordering::Relaxed) % CODES;
        let mut n = counter * SCATTER % CODES;
        let mut out = [b'0'; 6];
        for c in out.iter_mut().rev() {
            *c = ALPHABET[(n % 36) as usize];
            n /= 36;
        }
        out
    }
}

/// The key of a financial message as its reversal's DE 90 will name it.
fn txn_key(m: &Message) -> TxnKey {
    let mut mti = m.mti();
    mti[3] = b'0';
    let mut acquirer = [b'0'; 11];
    if let Some(a) = m.acquirer() {
        let a = a.get(a.len().saturating_sub(11)..).unwrap_or_default();
        if let Some(dst) = acquirer.get_mut(11 - a.len()..) {
            dst.copy_from_slice(a);
        }
    }
    TxnKey {
        mti,
        stan: m.stan().unwrap_or([b'0'; 6]),
        time: m.transmission_time().unwrap_or([b'0'; 10]),
        acquirer,
    }
}

/// The answer to `req`: its echoed fields, the response MTI, DE 39 and DE 38.
pub fn response(req: &Message, d: &Decision) -> Message {
    let mut r = req.clone();
    r.retain(|n| ECHO_TABLE.get(n).copied().unwrap_or(false));
    // The MTI and codes were made from digits and the fields exist in every iso87 dialect;
    // a custom spec without DE 38/39 just goes without them.
    let _ = r.set_mti(&d.mti);
    let _ = r.set_response_code(&d.response_code);
    if let Some(a) = &d.auth_code {
        let _ = r.set(38, a);
    }
    r
}

/// One request as received, kept for tests to inspect.
#[derive(Debug, Clone)]
pub struct Received {
    /// The parsed request (its `Debug` masks the PAN).
    pub message: Message,
    /// The DE 39 sent back; `None` when the request was left unanswered or dropped.
    pub response_code: Option<[u8; 2]>,
    /// The connection it came on, numbered from 1 in the order they were accepted.
    pub connection: u64,
}

impl Received {
    /// The request's MTI.
    pub fn mti(&self) -> [u8; 4] {
        self.message.mti()
    }

    /// The PAN the simulator received in DE 2, if any.
    pub fn pan(&self) -> Option<Pan> {
        self.message.card_number().and_then(Result::ok)
    }
}

/// Counters the handle reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests parsed.
    pub requests: u64,
    /// Answers handed to their connection's socket (including format-error answers; a
    /// peer that resets may not read the last of them).
    pub answered: u64,
    /// Requests decided and booked whose answer, held back by `latency`, was still waiting
    /// when its connection ended (`drop_share`, a frame that cannot be read, the peer
    /// gone, the simulator stopping): booked, never answered.
    pub lost_with_connection: u64,
    /// Requests booked but left unanswered (`timeout_share`).
    pub unanswered: u64,
    /// Connections closed on purpose (`drop_share`).
    pub dropped: u64,
    /// Frames that did not parse.
    pub malformed: u64,
    /// Reversals whose original was not found.
    pub unmatched_reversals: u64,
}

/// The simulator's counters, kept readable after it stopped (its stop line is written
/// once every connection has ended and counted what it held back).
#[derive(Clone)]
pub struct SimCounters(Arc<Shared>);

impl SimCounters {
    /// The counters now.
    pub fn stats(&self) -> SimStats {
        let s = &self.0;
        SimStats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            answered: s.answered.load(Ordering::Relaxed),
            unanswered: s.unanswered.load(Ordering::Relaxed),
            lost_with_connection: s.lost_with_connection.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            unmatched_reversals: s.ledger.unmatched_reversals(),
        }
    }
}

/// State shared by the accept loop, the connections and the handle.
struct Shared {
    /// The books.
    ledger: Ledger,
    /// The configuration it was started with.
    config: SimConfig,
    /// Requests by MTI, indexed by the MTI's value (0..=9999).
    by_mti: Box<[AtomicU64]>,
    /// The last `keep_last` requests.
    recent: Mutex<VecDeque<Received>>,
    /// Running counters, as in [`SimStats`].
    connections: AtomicU64,
    /// See [`SimStats::requests`].
    requests: AtomicU64,
    /// See [`SimStats::answered`].
    answered: AtomicU64,
    /// See [`SimStats::unanswered`].
    unanswered: AtomicU64,
    /// See [`SimStats::lost_with_connection`].
    lost_with_connection: AtomicU64,
    /// See [`SimStats::dropped`].
    dropped: AtomicU64,
    /// See [`SimStats::malformed`].
    malformed: AtomicU64,
    /// Wakes [`IssuerSimHandle::wait_for_requests`]; only poked while someone waits.
    progress: Notify,
    /// Number of tasks waiting on `progress`.
    waiters: AtomicUsize,
    /// The clock delayed answers wait on, with a latency to add: tokio's timer rounds each
    /// wait up to its next millisecond, so a `--latency-us 200` answered 0.2 to 1.2 ms late,
    /// in bursts.
    pacer: Option<Pacer>,
}

impl Shared {
    fn record(&self, message: &Message, response_code: Option<[u8; 2]>, connection: u64) {
        let mti = message.mti();
        let idx = mti.iter().fold(0usize, |a, &d| {
            a * 10 + usize::from(d.wrapping_sub(b'0') % 10)
        });
        if let Some(c) = self.by_mti.get(idx) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.config.keep_last > 0
            && let Ok(mut recent) = self.recent.lock()
        {
            if recent.len() >= self.config.keep_last {
                recent.pop_front();
            }
            recent.push_back(Received {
                message: message.clone(),
                response_code,
                connection,
            });
        }
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.progress.notify_waiters();
        }
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
            ledger: Ledger::new(&config.accounts, config.default_balance, seed),
            by_mti: (0..10_000).map(|_| AtomicU64::new(0)).collect(),
            recent: Mutex::new(VecDeque::new()),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            lost_with_connection: AtomicU64::new(0),
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

async fn accept_loop(
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
                // Out of file descriptors and the like: log and go on.
                crate::logging::throttled!(warn, error = %e, "accept failed");
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
        malformed = stats.malformed,
        unmatched_reversals = stats.unmatched_reversals,
        "issuer simulator stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One made-up card for the module's tests.
    fn pan_text() -> &'static str {
        static PAN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PAN.get_or_init(|| crate::pan::test_pan("497010"))
    }

    #[test]
    fn an_accounts_file_with_a_mistake_is_refused_naming_the_line_never_the_card() {
        let card = pan_text();
        let other = crate::pan::test_pan("497010");
        let mut bad_luhn = card.to_string().into_bytes();
        let last = bad_luhn.len() - 1;
        bad_luhn[last] = b'0' + (bad_luhn[last] - b'0' + 1) % 10;
        let bad_luhn = String::from_utf8(bad_luhn).unwrap();
        assert_eq!(
            parse_accounts(&format!("pan,balance\n{card},100\n{other},5\n"))
                .unwrap()
                .len(),
            2
        );
        for (text, error) in [
            (
                format!("{card},100\n# two\n{card},5\n"),
                "line 3: the same card as line 1",
            ),
            (
                format!("{bad_luhn},100\n"),
                "line 1: the card number fails the Luhn check",
            ),
            (
                format!(
                    r#"[{{"pan": "{card}", "balance": 1}}, {{"pan": "{card}", "balance": 2}}]"#
                ),
                "entry 2: the same card as entry 1",
            ),
            ("# nothing yet\n".to_string(), "no accounts in the file"),
            ("[]".to_string(), "no accounts in the file"),
            (
                format!(r#"{{"pan": "{card}", "balance": 1}}"#),
                "a JSON object: expected an array",
            ),
        ] {
            let e = parse_accounts(&text).unwrap_err();
            assert!(e.starts_with(error), "{e}");
            assert!(!e.contains(card) && !e.contains(&bad_luhn), "{e}");
        }
    }

    fn msg(fields: &[(usize, &str)], mti: &[u8; 4]) -> Message {
        let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
        for (n, v) in fields {
            m.set(*n, v.as_bytes()).unwrap();
        }
        Message::parse(Spec::iso87ascii(), m.pack()).unwrap()
    }

    fn purchase(mti: &[u8; 4], stan: &str, amount: &str, pcode: &str) -> Message {
        msg(
            &[
                (2, pan_text()),
                (3, pcode),
                (4, amount),
                (7, "1126143015"),
                (11, stan),
                (32, "123456"),
            ],
            mti,
        )
    }

    #[test]
    fn auth_codes_do_not_repeat() {
        let (l, _) = ledger(0);
        let codes: std::collections::HashSet<[u8; 6]> =
            (0..1_000_000).map(|_| l.auth_code()).collect();
        assert_eq!(codes.len(), 1_000_000);
    }

    fn ledger(balance: i64) -> (Ledger, Pan) {
        let pan = Pan::from_digits(pan_text().as_bytes()).unwrap();
        (Ledger::new(&[(pan.clone(), balance)], None, 7), pan)
    }

    fn reversal_of(orig: &Message, stan: &str) -> Message {
        let de90 = super::super::traffic::original_data_elements(
            &orig.mti(),
            &orig.stan().unwrap(),
            &orig.transmission_time().unwrap(),
            &orig.acquirer().unwrap(),
        );
        msg(
            &[
                (2, pan_text()),
                (3, "000000"),
                (4, &String::from_utf8_lossy(&orig.text(4).unwrap())),
                (7, "1126143020"),
                (11, stan),
                (32, "123456"),
                (90, std::str::from_utf8(&de90).unwrap()),
            ],
            b"0400",
        )
    }

    #[test]
    fn a_reversal_left_unanswered_is_remembered_past_a_busy_spell() {
        let (l, pan) = ledger(100_000_000);
        // A 0420 with no original here gives back its own amount, once.
        let reversal = purchase(b"0420", "000001", "000000001000", "000000");
        l.decide(&reversal).unwrap();
        l.left_unanswered(&reversal);
        let after = 100_001_000;
        assert_eq!(l.balance(&pan), Some(after));
        for stan in 2..BOOKINGS_KEPT as u32 + 3 {
            let p = purchase(b"0100", &format!("{stan:06}"), "000000000001", "000000");
            l.decide(&p).unwrap();
        }
        let busy = (BOOKINGS_KEPT + 1) as i64;
        // Its repeat after the caller's timeout finds it: nothing given back again.
        l.decide(&purchase(b"0421", "000001", "000000001000", "000000"))
            .unwrap();
        assert_eq!(l.balance(&pan), Some(after - busy));
    }

    #[test]
    fn a_reversal_without_de_90_finds_its_original_by_its_own_key() {
        let (l, pan) = ledger(10_000);
        // The network's reversal of a declined purchase gives nothing back.
        let declined = purchase(b"0100", "000001", "000000050000", "000000");
        assert_eq!(&l.decide(&declined).unwrap().response_code, b"51");
        l.decide(&purchase(b"0400", "000001", "000000050000", "000000"))
            .unwrap();
        assert_eq!(l.balance(&pan), Some(10_000), "no money made");
        // Reversed without DE 90, then again by the switch naming it in DE 90: once.
        let ok = purchase(b"0100", "000002", "000000004000", "000000");
        assert_eq!(&l.decide(&ok).unwrap().response_code, b"00");
        assert_eq!(l.balance(&pan), Some(6_000));
        l.decide(&purchase(b"0400", "000002", "000000004000", "000000"))
            .unwrap();
        assert_eq!(l.balance(&pan), Some(10_000));
        l.decide(&reversal_of(&ok, "000003")).unwrap();
        assert_eq!(l.balance(&pan), Some(10_000), "given back once");
    }

    #[test]
    fn each_request_class_gets_its_response_mti_and_code() {
        let (l, _) = ledger(1_000_000);
        let cases: &[(&[u8; 4], &[u8; 4], &[u8; 2])] = &[
            (b"0100", b"0110", b"00"),
            (b"0200", b"0210", b"00"),
            (b"0120", b"0130", b"00"),
            (b"0220", b"0230", b"00"),
            (b"0400", b"0410", b"00"),
            (b"0420", b"0430", b"00"),
            (b"0800", b"0810", b"00"),
        ];
        for (i, (req, resp, rc)) in cases.iter().enumerate() {
            let m = purchase(req, &format!("{:06}", i + 1), "000000000100", "000000");
            let d = l.decide(&m).unwrap();
            assert_eq!(&d.mti, *resp);
            assert_eq!(&d.response_code, *rc);
        }
        assert_eq!(
            l.decide(&purchase(b"0110", "000009", "000000000100", "000000")),
            None
        );
    }

    #[test]
    fn an_approval_debits_and_carries_an_auth_code_and_a_short_balance_gets_51() {
        let (l, pan) = ledger(10_000);
        let d = l
            .decide(&purchase(b"0100", "000001", "000000007000", "000000"))
            .unwrap();
        assert_eq!(&d.response_code, b"00");
        assert!(d.auth_code.unwrap().iter().all(u8::is_ascii_alphanumeric));
        assert_eq!(l.balance(&pan), Some(3_000));
        let d = l
            .decide(&purchase(b"0200", "000002", "000000007000", "000000"))
            .unwrap();
        assert_eq!(&d.response_code, b"51");
        assert_eq!(d.auth_code, None);
        assert_eq!(l.balance(&pan), Some(3_000));
    }

    #[test]
    fn a_refund_credits_the_account() {
        let (l, pan) = ledger(0);
        let d = l
            .decide(&purchase(b"0200", "000001", "000000000500", "200000"))
            .unwrap();
        assert_eq!(&d.response_code, b"00");
        assert_eq!(l.balance(&pan), Some(500));
    }

    #[test]
    fn a_reversal_gives_the_amount_back_once_however_often_it_comes() {
        let (l, pan) = ledger(10_000);
        let orig = purchase(b"0100", "000001", "000000004000", "000000");
        l.decide(&orig).unwrap();
        assert_eq!(l.balance(&pan), Some(6_000));
        for stan in ["000002", "000003"] {
            let d = l.decide(&reversal_of(&orig, stan)).unwrap();
            assert_eq!(&d.mti, b"0410");
            assert_eq!(&d.response_code, b"00");
            assert_eq!(l.balance(&pan), Some(10_000));
        }
        assert_eq!(l.unmatched_reversals(), 0);
    }

    #[test]
    fn a_reversal_without_de90_gives_back_its_own_amount_once() {
        let (l, pan) = ledger(10_000);
        let rev = purchase(b"0420", "000005", "000000001000", "000000");
        l.decide(&rev).unwrap();
        l.decide(&rev).unwrap();
        assert_eq!(l.balance(&pan), Some(11_000));
        // Its other forms (request, repeats) are the same reversal.
        for mti in [b"0400", b"0401", b"0421"] {
            l.decide(&purchase(mti, "000005", "000000001000", "000000"))
                .unwrap();
        }
        assert_eq!(l.balance(&pan), Some(11_000));
    }

    #[test]
    fn the_reversal_of_a_purchase_left_unanswered_finds_it_after_many_more_bookings() {
        // Its reversal comes after the caller's timeout, by which time a busy card has
        // booked far more than the bookings kept by count.
        let (l, pan) = ledger(100_000_000);
        let orig = purchase(b"0100", "000001", "000000004000", "000000");
        l.decide(&orig).unwrap();
        l.left_unanswered(&orig);
        for stan in 2..(2 + 3 * BOOKINGS_KEPT as u32) {
            let stan = format!("{stan:06}");
            l.decide(&purchase(b"0100", &stan, "000000000001", "000000"))
                .unwrap();
        }
        let before = l.balance(&pan).unwrap();
        l.decide(&reversal_of(&orig, "999999")).unwrap();
        assert_eq!(l.balance(&pan), Some(before + 4_000));
        assert_eq!(l.unmatched_reversals(), 0);
    }

    #[test]
    fn a_partial_reversal_keeps_de95s_amount_and_one_without_it_gets_30_and_nothing() {
        let (l, pan) = ledger(10_000);
        let orig = purchase(b"0100", "000001", "000000004000", "000000");
        l.decide(&orig).unwrap();
        // The fee parts unsigned, as many acquirers send them: only the first 12 digits
        // count. 3,000 stays charged, 1,000 comes back.
        let mut partial = reversal_of(&orig, "000002");
        partial
            .set(95, format!("{:012}{}", 3_000, "0".repeat(30)).as_bytes())
            .unwrap();
        let d = l.decide(&partial).unwrap();
        assert_eq!(&d.response_code, b"00");
        assert_eq!(l.balance(&pan), Some(7_000));
        // Then reversed in full: the rest comes back. A partial reversal again (under a
        // new STAN) charges nothing again.
        l.decide(&reversal_of(&orig, "000005")).unwrap();
        assert_eq!(l.balance(&pan), Some(10_000));
        let mut again = partial.clone();
        again.set(11, b"000006").unwrap();
        l.decide(&again).unwrap();
        assert_eq!(l.balance(&pan), Some(10_000));
        assert_eq!(l.unmatched_reversals(), 0);

        let other = purchase(b"0100", "000003", "000000002000", "000000");
        l.decide(&other).unwrap();
        let mut unreadable = reversal_of(&other, "000004");
        unreadable
            .set(95, format!("ABC{}", "0".repeat(39)).as_bytes())
            .unwrap();
        let d = l.decide(&unreadable).unwrap();
        assert_eq!(&d.response_code, b"30");
        assert_eq!(l.balance(&pan), Some(8_000), "nothing given back");
    }

    #[test]
    fn a_converted_amount_is_billed_in_the_cards_currency_and_reversed_in_proportion() {
        let (l, pan) = ledger(10_000);
        // USD 200.00 in DE 4, billed EUR 18.00 in DE 6: the account is charged the euros.
        let mut orig = purchase(b"0100", "000001", "000000020000", "000000");
        orig.set(49, b"840").unwrap();
        orig.set(6, b"000000001800").unwrap();
        orig.set(51, b"978").unwrap();
        assert_eq!(&l.decide(&orig).unwrap().response_code, b"00");
        assert_eq!(l.balance(&pan), Some(8_200));
        // A partial reversal keeps USD 100.00 of DE 4: half the euros stay.
        let mut partial = reversal_of(&orig, "000002");
        partial
            .set(95, format!("{:012}{}", 10_000, "0".repeat(30)).as_bytes())
            .unwrap();
        l.decide(&partial).unwrap();
        assert_eq!(l.balance(&pan), Some(9_100));
        l.decide(&reversal_of(&orig, "000003")).unwrap();
        assert_eq!(l.balance(&pan), Some(10_000));
    }

    #[test]
    fn a_zero_amount_check_is_approved_on_an_overdrawn_account_and_a_refund_never_wraps() {
        let (l, pan) = ledger(-500);
        let d = l
            .decide(&purchase(b"0100", "000001", "000000000000", "000000"))
            .unwrap();
        assert_eq!(&d.response_code, b"00");
        assert_eq!(l.balance(&pan), Some(-500));
        l.set_balance(&pan, i64::MAX - 10);
        let d = l
            .decide(&purchase(b"0200", "000002", "000000000500", "200000"))
            .unwrap();
        assert_eq!(&d.response_code, b"13");
        assert_eq!(l.balance(&pan), Some(i64::MAX - 10));
    }

    #[test]
    fn an_advice_is_booked_even_past_the_balance() {
        let (l, pan) = ledger(100);
        let d = l
            .decide(&purchase(b"0120", "000001", "000000000500", "000000"))
            .unwrap();
        assert_eq!(&d.response_code, b"00");
        assert_eq!(l.balance(&pan), Some(-400));
        let repeat = l
            .decide(&purchase(b"0121", "000001", "000000000500", "000000"))
            .unwrap();
        assert_eq!(&repeat.mti, b"0130");
        assert_eq!(
            l.balance(&pan),
            Some(-400),
            "a repeated advice is booked once"
        );
    }

    #[test]
    fn a_repeat_replays_the_first_answer_without_booking_again() {
        let (l, pan) = ledger(10_000);
        let first = l
            .decide(&purchase(b"0100", "000001", "000000001000", "000000"))
            .unwrap();
        let again = l
            .decide(&purchase(b"0101", "000001", "000000001000", "000000"))
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(l.balance(&pan), Some(9_000));
    }

    #[test]
    fn unknown_cards_get_14_unless_there_is_a_default_balance() {
        let (l, _) = ledger(0);
        let stranger = crate::pan::test_pan("497010");
        let bad = crate::pan::bad_luhn(&stranger);
        let other = msg(
            &[(2, stranger.as_str()), (3, "000000"), (4, "000000000001")],
            b"0100",
        );
        assert_eq!(&l.decide(&other).unwrap().response_code, b"14");
        let l = Ledger::new(&[], Some(50), 1);
        assert_eq!(&l.decide(&other).unwrap().response_code, b"00");
        let bad_luhn = msg(
            &[(2, bad.as_str()), (3, "000000"), (4, "000000000001")],
            b"0100",
        );
        assert_eq!(&l.decide(&bad_luhn).unwrap().response_code, b"14");
        // An advice cannot be refused: acknowledged, and no account is made for a card
        // number that fails Luhn.
        let advice = msg(
            &[(2, bad.as_str()), (3, "000000"), (4, "000000000010")],
            b"0120",
        );
        assert_eq!(&l.decide(&advice).unwrap().response_code, b"00");
        assert_eq!(l.balance(&Pan::from_digits(bad.as_bytes()).unwrap()), None);
    }

    #[test]
    fn a_response_echoes_the_matching_fields_and_drops_track_and_pin_data() {
        let req = msg(
            &[
                (2, pan_text()),
                (3, "000000"),
                (4, "000000000100"),
                (11, "000042"),
                (35, &format!("{}=28121010000012300000", pan_text())),
                (52, "0123456789ABCDEF"),
                (41, "TERM0001"),
            ],
            b"0100",
        );
        let d = Decision {
            mti: *b"0110",
            response_code: *b"00",
            auth_code: Some(*b"A1B2C3"),
        };
        let r = Message::parse(Spec::iso87ascii(), response(&req, &d).pack()).unwrap();
        assert_eq!(r.mti(), *b"0110");
        assert_eq!(
            r.field_numbers().collect::<Vec<_>>(),
            vec![2, 3, 4, 11, 38, 39, 41]
        );
        assert_eq!(r.stan(), Some(*b"000042"));
        assert_eq!(r.auth_code().unwrap().as_bytes(), b"A1B2C3");
    }

    #[test]
    fn accounts_load_from_json_and_from_csv_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("a.json");
        std::fs::write(
            &json,
            format!(r#"[{{"pan": "{}", "balance": 5000}}]"#, pan_text()),
        )
        .unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(
            &csv,
            format!("pan,balance\n# test card\n{}, 5000\n", pan_text()),
        )
        .unwrap();
        for p in [json, csv] {
            let a = load_accounts(&p).unwrap();
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].0.as_bytes(), pan_text().as_bytes());
            assert_eq!(a[0].1, 5000);
        }
        let bad = dir.path().join("b.csv");
        std::fs::write(&bad, format!("{},lots\n", pan_text())).unwrap();
        let e = load_accounts(&bad).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains(pan_text()), "{e}");
    }
}
