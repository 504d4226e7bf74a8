//! The simulator's accounts and bookings: what it answers to each request (no socket
//! code).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::{BOOKINGS_KEPT, BOOKINGS_KEPT_FOR};
use crate::iso8583::Message;
use crate::pan::{Pan, luhn_valid};

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

impl TxnKey {
    /// The key of the message DE 90 names (a repeat's as its first was booked).
    fn named_by(o: &crate::iso8583::OriginalData) -> TxnKey {
        let mut mti = o.mti;
        mti[3] = b'0';
        TxnKey {
            mti,
            stan: o.stan,
            time: o.transmission_time,
            acquirer: o.acquirer,
        }
    }
}

/// A booked financial message, kept for reversals and repeats.
#[derive(Debug, Clone)]
struct Booked {
    /// How to find it.
    key: TxnKey,
    /// What it did to the balance (negative for a debit): the amount billed, DE 6 when
    /// the network converted it into the card's currency, else DE 4.
    effect: i64,
    /// The DE 4 it stands for (the request's, or the approved one of a `10`), which a
    /// partial reversal's DE 95 speaks in: what stays of `effect` is in that proportion.
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

impl Booked {
    /// What it approved, when it was a partial approval (10), for a repeat to be told again.
    fn approved_amounts(&self) -> Option<ApprovedAmounts> {
        (self.response_code == *b"10").then(|| ApprovedAmounts {
            transaction: self.asked,
            billing: self.effect.unsigned_abs(),
        })
    }
}

/// What an issuer bills its cardholder for `req`, in the card's currency: DE 6 (cardholder
/// billing) when the network converted the amount, else DE 4.
fn billed(req: &Message) -> Option<u64> {
    req.amount_cardholder_billing()
        .or_else(|| req.amount_transaction())
}

/// An account's booked financial messages, for reversals and repeats to find: the last
/// [`BOOKINGS_KEPT`] in a short list, indexed by key (a reversal or a repeat looks its
/// original up, and every request looks for its own key first: scanning the list for each
/// made the simulator the bottleneck of reversal traffic, half its CPU in the scan), and
/// those left unanswered (`timeout_share`) kept apart, when the list moves past them, for
/// [`BOOKINGS_KEPT_FOR`]. An unanswered one is the purchase whose reversal comes only after
/// the caller's timeout, by which time a busy card has booked far more than the list holds.
/// Keeping every booking that long instead cost the simulator 2.8 times the CPU per
/// request on the sample traffic (one card takes most of it): a bottleneck of its own.
#[derive(Debug, Default)]
struct Bookings {
    /// The last [`BOOKINGS_KEPT`], oldest first.
    recent: VecDeque<Booked>,
    /// The number of bookings that ever left `recent`: the position of its first, counted
    /// from the account's first booking.
    left: u64,
    /// The position of the newest booking under each key in `recent`.
    index: HashMap<TxnKey, u64, foldhash::fast::RandomState>,
    /// Unanswered bookings the list moved past, with when they left it.
    unanswered: HashMap<TxnKey, (std::time::Instant, Booked)>,
    /// The size of `unanswered` at which the expired ones are next swept.
    sweep_at: usize,
}

impl Bookings {
    /// Where the newest booking under `key` is in `recent`.
    fn slot(&self, key: &TxnKey) -> Option<usize> {
        let at = self.index.get(key)?.checked_sub(self.left)?;
        usize::try_from(at).ok()
    }

    fn get(&self, key: &TxnKey) -> Option<&Booked> {
        match self.slot(key) {
            Some(i) => self.recent.get(i),
            None => self.unanswered.get(key).map(|(_, b)| b),
        }
    }

    fn get_mut(&mut self, key: &TxnKey) -> Option<&mut Booked> {
        match self.slot(key) {
            Some(i) => self.recent.get_mut(i),
            None => self.unanswered.get_mut(key).map(|(_, b)| b),
        }
    }

    fn contains(&self, key: &TxnKey) -> bool {
        self.get(key).is_some()
    }

    /// Books `b`, moving the oldest out of the list when it is full.
    fn book(&mut self, b: Booked) {
        if self.recent.len() >= BOOKINGS_KEPT
            && let Some(old) = self.recent.pop_front()
        {
            if self.index.get(&old.key) == Some(&self.left) {
                self.index.remove(&old.key);
            }
            self.left += 1;
            // Kept: an original left unanswered and not reversed since, or a reversal left
            // unanswered (its own booking says `reversed`), whose repeat comes after a
            // timeout.
            if old.unanswered && (!old.reversed || old.key.mti[1] == b'4') {
                let now = std::time::Instant::now();
                self.unanswered.insert(old.key, (now, old));
                if self.unanswered.len() >= self.sweep_at {
                    self.unanswered
                        .retain(|_, (at, _)| now.duration_since(*at) <= BOOKINGS_KEPT_FOR);
                    // Swept again once it has doubled: amortised, a constant per booking.
                    self.sweep_at = (self.unanswered.len() * 2).max(64);
                }
            }
        }
        self.index
            .insert(b.key, self.left + self.recent.len() as u64);
        self.recent.push_back(b);
    }

    /// Marks the newest booking under `key` as left unanswered.
    fn left_unanswered(&mut self, key: &TxnKey) {
        if let Some(i) = self.slot(key)
            && let Some(b) = self.recent.get_mut(i)
        {
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
    /// What a partial approval (10) approved, in place of the request's amounts.
    pub approved: Option<ApprovedAmounts>,
}

/// The amounts of a partial approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovedAmounts {
    /// DE 4.
    pub transaction: u64,
    /// DE 6, when the request had one (else the same as DE 4).
    pub billing: u64,
}

/// The issuer's books: accounts and their recent financial messages. Pure decisions on
/// parsed messages; no socket code.
pub struct Ledger {
    /// Accounts by real PAN.
    accounts: DashMap<Pan, Account>,
    /// Balance of accounts made on first use; `None` declines unknown cards.
    default_balance: Option<i64>,
    /// A purchase over a balance above zero is approved for the balance (10), not 51.
    partial_approvals: bool,
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
    /// With `partial_approvals`, a purchase over a balance above zero is approved for the
    /// balance (10), as a prepaid or debit issuer does for a terminal that takes them.
    pub fn new(
        accounts: &[(Pan, i64)],
        default_balance: Option<i64>,
        partial_approvals: bool,
        seed: u64,
    ) -> Ledger {
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
            partial_approvals,
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
                approved: None,
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

    /// 0100 / 0200: approve and debit (credit for a refund), or 51; or, with
    /// `partial_approvals`, approve the balance (10) of a purchase over it.
    fn authorize(&self, req: &Message, resp_mti: [u8; 4]) -> Option<Decision> {
        let decision = |rc: &[u8; 2], auth, approved| {
            Some(Decision {
                mti: resp_mti,
                response_code: *rc,
                auth_code: auth,
                approved,
            })
        };
        let Some(Ok(pan)) = req.card_number() else {
            return decision(b"14", None, None);
        };
        if !luhn_valid(pan.as_bytes()) {
            return decision(b"14", None, None);
        }
        let Some(pcode) = req.processing_code() else {
            return decision(b"30", None, None);
        };
        // An inquiry (DE 3 "3x": balance, statement) moves nothing and may leave DE 4 out.
        let inquiry = pcode[0] == b'3';
        let Some(asked) = req.amount_transaction().or(inquiry.then_some(0)) else {
            return decision(b"30", None, None);
        };
        let Ok(amount) = i64::try_from(billed(req).unwrap_or(asked)) else {
            return decision(b"13", None, None);
        };
        let refund = pcode.starts_with(b"20");
        let key = txn_key(req);
        let Some(mut account) = self.account(&pan) else {
            return decision(b"14", None, None);
        };
        if req.mti()[3] == b'1'
            && let Some(b) = account.history.get(&key)
        {
            return decision(&b.response_code, b.auth_code, b.approved_amounts());
        }
        // A zero amount (a card check) is approved whatever the balance; a refund that
        // would carry the balance past i64 is declined, not wrapped.
        let (rc, effect, approved) = if refund {
            match account.balance.checked_add(amount) {
                Some(_) => (*b"00", amount, None),
                None => (*b"13", 0, None),
            }
        } else if amount == 0 || account.balance >= amount {
            (*b"00", -amount, None)
        } else if let Some(part) = self.part_of(asked, amount, account.balance) {
            (*b"10", -account.balance, Some(part))
        } else {
            (*b"51", 0, None)
        };
        let auth = matches!(&rc, b"00" | b"10").then(|| self.auth_code());
        account.balance += effect;
        account.history.book(Booked {
            key,
            effect,
            // A partial reversal of a partial approval speaks of what was approved.
            asked: approved.map_or(asked, |a| a.transaction),
            standing: effect,
            response_code: rc,
            auth_code: auth,
            reversed: false,
            unanswered: false,
        });
        decision(&rc, auth, approved)
    }

    /// What a partial approval of a purchase of `asked` (DE 4), billed `amount`, approves
    /// on `balance`: the balance, and DE 4 in its proportion, rounded down. `None` when
    /// partial approvals are off or nothing would be approved.
    fn part_of(&self, asked: u64, amount: i64, balance: i64) -> Option<ApprovedAmounts> {
        if !self.partial_approvals {
            return None;
        }
        let billing = u64::try_from(balance).ok().filter(|&b| b > 0)?;
        let amount = u64::try_from(amount).ok()?;
        let transaction =
            u64::try_from(u128::from(asked) * u128::from(billing) / u128::from(amount)).ok()?;
        (transaction > 0).then_some(ApprovedAmounts {
            transaction,
            billing,
        })
    }

    /// 0120 / 0220: what was approved elsewhere is booked, whatever the balance; a
    /// completion (a financial advice for goods and services naming an authorization in
    /// DE 90) gives back what that authorization took, once.
    fn advise(&self, req: &Message, resp_mti: [u8; 4]) -> Option<Decision> {
        let ack = Some(Decision {
            mti: resp_mti,
            response_code: *b"00",
            auth_code: None,
            approved: None,
        });
        let (Some(Ok(pan)), Some(asked)) = (req.card_number(), req.amount_transaction()) else {
            return ack;
        };
        let amount = billed(req).and_then(|a| i64::try_from(a).ok()).unwrap_or(0);
        let refund = req.processing_code().is_some_and(|p| p.starts_with(b"20"));
        let key = txn_key(req);
        if let Some(mut account) = self.account(&pan) {
            let account = &mut *account;
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
            // A completion (a financial advice naming its authorization in DE 90): what
            // was finally spent stands in place of what the authorization took, which is
            // given back, once. The authorization is booked as a stand-in's advice of it
            // (0120), or else as the request (0100): where both stand, the request is
            // vpan's to reverse (it answered 91), and its reversal is on its way.
            let purchase = req.processing_code().is_some_and(|p| p.starts_with(b"00"));
            let completed = req.original_data().filter(|o| {
                matches!(&req.mti()[1..], b"220" | b"221") && o.mti[1] == b'1' && purchase
            });
            let stands_whole = |b: &Booked| !b.reversed && b.effect < 0 && b.standing == b.effect;
            let booking = completed.and_then(|o| {
                let request = TxnKey::named_by(&o);
                let advice = TxnKey {
                    mti: [request.mti[0], request.mti[1], b'2', b'0'],
                    ..request
                };
                [advice, request]
                    .into_iter()
                    .find(|k| account.history.get(k).is_some_and(stands_whole))
            });
            if let Some(b) = booking.and_then(|k| account.history.get_mut(&k)) {
                // `standing` is a debit (negative): taking it away gives it back.
                account.balance = account.balance.saturating_sub(b.standing);
                b.standing = 0;
            }
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
            approved: None,
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
                    approved: None,
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
            Some(o) => Some(TxnKey::named_by(&o)),
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
    if let Some(approved) = d.approved {
        let _ = r.set(4, format!("{:012}", approved.transaction).as_bytes());
        if r.has(6) {
            let _ = r.set(6, format!("{:012}", approved.billing).as_bytes());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::iso8583::{Message, Spec};
    use crate::pan::Pan;

    /// One made-up card for the module's tests.
    fn pan_text() -> &'static str {
        static PAN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PAN.get_or_init(|| crate::pan::test_pan("497010"))
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
    fn the_bookings_find_the_newest_under_a_key_until_it_leaves_the_list() {
        let key = |n: usize| TxnKey {
            mti: *b"0100",
            stan: *format!("{:06}", n % 1_000_000)
                .as_bytes()
                .first_chunk()
                .unwrap(),
            time: *b"1205101010",
            acquirer: *b"00000012345",
        };
        let booked = |n: usize, effect: i64| Booked {
            key: key(n),
            effect,
            asked: 0,
            standing: effect,
            response_code: *b"00",
            auth_code: None,
            reversed: false,
            unanswered: false,
        };
        let mut b = Bookings::default();
        b.book(booked(0, -1));
        b.book(booked(1, -1));
        // The same key again: the newest is found, and stays found when the first leaves.
        b.book(booked(0, -2));
        for n in 2..=BOOKINGS_KEPT {
            b.book(booked(n, -1));
        }
        assert_eq!(b.recent.len(), BOOKINGS_KEPT);
        assert!(!b.contains(&key(1)), "moved out of the list");
        assert_eq!(b.get(&key(0)).map(|x| x.effect), Some(-2));
        b.get_mut(&key(0)).unwrap().standing = 0;
        assert_eq!(b.get(&key(0)).map(|x| x.standing), Some(0));
        assert_eq!(b.get(&key(5)).map(|x| x.key), Some(key(5)));
        for n in BOOKINGS_KEPT + 1..=2 * BOOKINGS_KEPT {
            b.book(booked(n, -1));
        }
        assert!(!b.contains(&key(0)) && !b.contains(&key(5)));
        assert!(b.contains(&key(2 * BOOKINGS_KEPT)));
        assert_eq!(
            b.index.len(),
            BOOKINGS_KEPT,
            "nothing left behind in the index"
        );
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
        (Ledger::new(&[(pan.clone(), balance)], None, false, 7), pan)
    }

    fn reversal_of(orig: &Message, stan: &str) -> Message {
        let de90 = crate::tools::traffic::original_data_elements(
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

    /// An advice `mti` under STAN `stan`, of `amount`, naming `authorization` in DE 90 (an
    /// 0220: its completion).
    fn advice_naming(
        authorization: &Message,
        mti: &[u8; 4],
        stan: &str,
        amount: &[u8; 12],
    ) -> Message {
        let mut m = reversal_of(authorization, stan);
        m.set_mti(mti).unwrap();
        m.set(4, amount).unwrap();
        m
    }

    #[test]
    fn a_completion_stands_in_place_of_the_authorization_it_names() {
        let (l, pan) = ledger(10_000);
        let preauth = purchase(b"0100", "000001", "000000006000", "000000");
        assert_eq!(&l.decide(&preauth).unwrap().response_code, b"00");
        let mut completion = advice_naming(&preauth, b"0220", "000002", b"000000002500");
        assert_eq!(&l.decide(&completion).unwrap().mti, b"0230");
        assert_eq!(l.balance(&pan), Some(7_500), "25.00 spent, not 85.00");
        // Its repeat, and the authorization's reversal after it, change nothing.
        completion.set_mti(b"0221").unwrap();
        l.decide(&completion).unwrap();
        l.decide(&reversal_of(&preauth, "000003")).unwrap();
        assert_eq!(l.balance(&pan), Some(7_500));
    }

    #[test]
    fn a_completion_of_an_authorization_a_stand_in_approved_gives_back_its_advice() {
        let (l, pan) = ledger(10_000);
        // Approved here too late (the switch answered 91 and reversed it), then approved by
        // a stand-in, whose advice comes under the authorization's key.
        let preauth = purchase(b"0100", "000001", "000000006000", "000000");
        l.decide(&preauth).unwrap();
        l.decide(&reversal_of(&preauth, "000002")).unwrap();
        l.decide(&purchase(b"0120", "000001", "000000006000", "000000"))
            .unwrap();
        assert_eq!(l.balance(&pan), Some(4_000));
        l.decide(&advice_naming(&preauth, b"0220", "000003", b"000000002500"))
            .unwrap();
        assert_eq!(l.balance(&pan), Some(7_500), "25.00 spent, not 85.00");
        // An authorization advice naming it is no completion: booked on top.
        l.decide(&advice_naming(&preauth, b"0120", "000004", b"000000001000"))
            .unwrap();
        assert_eq!(l.balance(&pan), Some(6_500));
    }

    #[test]
    fn a_completion_beside_a_request_still_to_be_reversed_takes_the_stand_ins_place() {
        let (l, pan) = ledger(20_000);
        let preauth = purchase(b"0100", "000001", "000000006000", "000000");
        l.decide(&preauth).unwrap();
        l.decide(&purchase(b"0120", "000001", "000000006000", "000000"))
            .unwrap();
        l.decide(&advice_naming(&preauth, b"0220", "000002", b"000000002500"))
            .unwrap();
        // The switch's reversal of the request it answered 91.
        l.decide(&reversal_of(&preauth, "000003")).unwrap();
        assert_eq!(l.balance(&pan), Some(17_500), "25.00 spent in all");
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
    fn with_partial_approvals_a_purchase_over_the_balance_gets_the_balance_and_a_repeat_the_same() {
        let pan = Pan::from_digits(pan_text().as_bytes()).unwrap();
        let l = Ledger::new(&[(pan.clone(), 6_000)], None, true, 7);
        // USD 120.00 billed EUR 100.00 on EUR 60.00: EUR 60.00 and USD 72.00 approved.
        let mut orig = purchase(b"0100", "000001", "000000012000", "000000");
        orig.set(49, b"840").unwrap();
        orig.set(6, b"000000010000").unwrap();
        let d = l.decide(&orig).unwrap();
        assert_eq!(&d.response_code, b"10");
        assert!(d.auth_code.is_some());
        let approved = ApprovedAmounts {
            transaction: 7_200,
            billing: 6_000,
        };
        assert_eq!(d.approved, Some(approved));
        let r = response(&orig, &d);
        assert_eq!(r.amount_transaction(), Some(7_200));
        assert_eq!(r.amount_cardholder_billing(), Some(6_000));
        assert_eq!(l.balance(&pan), Some(0));
        let mut repeat = orig.clone();
        repeat.set_mti(b"0101").unwrap();
        assert_eq!(l.decide(&repeat).unwrap(), d);
        // Nothing left: 51. A partial reversal speaks of what was approved: USD 36.00 of
        // the 72.00 stays, EUR 30.00 comes back.
        let next = purchase(b"0100", "000002", "000000000100", "000000");
        assert_eq!(&l.decide(&next).unwrap().response_code, b"51");
        let mut partial = reversal_of(&orig, "000003");
        partial
            .set(95, format!("{:012}{}", 3_600, "0".repeat(30)).as_bytes())
            .unwrap();
        l.decide(&partial).unwrap();
        assert_eq!(l.balance(&pan), Some(3_000));
        // Without the flag, 51 as before.
        let l = Ledger::new(&[(pan.clone(), 6_000)], None, false, 7);
        assert_eq!(&l.decide(&orig).unwrap().response_code, b"51");
        assert_eq!(l.balance(&pan), Some(6_000));
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
        let l = Ledger::new(&[], Some(50), false, 1);
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
            approved: None,
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
}
