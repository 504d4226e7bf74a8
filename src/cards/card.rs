//! The card model: what a virtual card is, what it allows, and what it has used so far.
//!
//! A [`Card`] is the value the index keeps for every vPAN ever issued. It is kept small on
//! purpose (the index aims at 256 bytes per card, all included, at a million cards): numbers
//! are packed ([`CardKey`], [`Expiry`], [`AcceptorId`]), optional limits use niche-optimised
//! `NonZero` types, and the rarely used MCC lists live behind one optional box. Nothing here
//! does I/O; the limits engine reads it, the ledger changes its counters.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use super::history::History;
use crate::pan::{MAX_PAN_LEN, MIN_PAN_LEN, Pan};
use crate::store::crypto::NONCE_BYTES;

/// Seconds since the Unix epoch, UTC. Every time in the cards and the store is one.
pub type UnixSeconds = u64;

/// The current time from the system clock. Everything else takes `now` as a parameter, so
/// tests pass fixed instants and never sleep.
pub fn unix_now() -> UnixSeconds {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A string of up to 19 decimal digits packed into one `u64`, leading zeros kept.
///
/// Digit strings of length `L` are mapped to `(10^L - 1) / 9 + value`, so strings of
/// different lengths never collide ("0012" and "12" differ) and 19 digits still fit
/// (the largest key is about 1.11e19 < 2^64). Used for vPANs (the index key), acquirer IDs
/// and other numeric fields of a transaction key.
pub fn digits_key(ascii: &[u8]) -> Option<u64> {
    if ascii.len() > MAX_PAN_LEN || !ascii.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value = 0u64;
    for &c in ascii {
        value = value * 10 + u64::from(c - b'0');
    }
    Some(len_offset(ascii.len()) + value)
}

/// Undoes [`digits_key`]: the digits as ASCII, written into `out`; returns the length.
pub fn digits_from_key(key: u64, out: &mut [u8; MAX_PAN_LEN]) -> usize {
    let mut len = 0;
    while len < MAX_PAN_LEN && key >= len_offset(len + 1) {
        len += 1;
    }
    let mut value = key - len_offset(len);
    for i in (0..len).rev() {
        out[i] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    len
}

/// `(10^len - 1) / 9`: 0, 1, 11, 111, ... the first key of strings with `len` digits.
const fn len_offset(len: usize) -> u64 {
    let mut offset = 0u64;
    let mut i = 0;
    while i < len {
        offset = offset * 10 + 1;
        i += 1;
    }
    offset
}

/// A vPAN as the index key: 8 bytes instead of a heap string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardKey(u64);

impl CardKey {
    /// The key of a card number; `None` unless it is 12 to 19 ASCII digits.
    pub fn from_digits(ascii: &[u8]) -> Option<CardKey> {
        if !(MIN_PAN_LEN..=MAX_PAN_LEN).contains(&ascii.len()) {
            return None;
        }
        digits_key(ascii).map(CardKey)
    }

    /// The key of a parsed PAN.
    pub fn of(pan: &Pan) -> CardKey {
        // A Pan holds 12 to 19 digits by construction.
        CardKey(digits_key(pan.as_bytes()).unwrap_or(0))
    }

    /// The vPAN this key stands for.
    pub fn pan(self) -> Pan {
        let mut buf = [0u8; MAX_PAN_LEN];
        let len = digits_from_key(self.0, &mut buf);
        let pan = Pan::from_digits(&buf[..len]);
        zeroize::Zeroize::zeroize(&mut buf);
        match pan {
            Ok(pan) => pan,
            Err(_) => unreachable!("a CardKey always holds 12 to 19 digits"),
        }
    }

    /// The packed form, for the journal and snapshots.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Rebuilds a key from its packed form (as read back from the journal); `None` unless
    /// it packs 12 to 19 digits.
    pub fn from_raw(raw: u64) -> Option<CardKey> {
        (len_offset(MIN_PAN_LEN)..len_offset(MAX_PAN_LEN + 1))
            .contains(&raw)
            .then_some(CardKey(raw))
    }
}

impl fmt::Debug for CardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A vPAN is a card number too: never printed in full.
        write!(f, "CardKey({})", self.pan())
    }
}

/// A card expiry date as the wire carries it (DE 14): four ASCII digits, YYMM.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Expiry(pub [u8; 4]);

impl Expiry {
    /// Parses YYMM; the month must be 01..=12.
    pub fn parse(ascii: &[u8]) -> Option<Expiry> {
        let b: [u8; 4] = ascii.try_into().ok()?;
        if !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let month = (b[2] - b'0') * 10 + (b[3] - b'0');
        (1..=12).contains(&month).then_some(Expiry(b))
    }

    /// The year (20YY) and month. Meaningful for an expiry made by [`Expiry::parse`] or
    /// [`Expiry::of_time`].
    pub fn year_month(&self) -> (i64, u8) {
        let [y1, y2, m1, m2] = self.0.map(|d| d.wrapping_sub(b'0'));
        (2000 + i64::from(y1 * 10 + y2), m1 * 10 + m2)
    }

    /// The month that contains this instant, as YYMM (UTC).
    pub fn of_time(t: UnixSeconds) -> Expiry {
        let (year, month, _) = civil_from_days((t / 86_400) as i64);
        let yy = (year.rem_euclid(100)) as u8;
        Expiry([
            b'0' + yy / 10,
            b'0' + yy % 10,
            b'0' + month / 10,
            b'0' + month % 10,
        ])
    }

    /// The four digits as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}

/// Year, month (1..=12) and day of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, exact for the proleptic Gregorian calendar).
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// DE 7 of ISO 8583, the transmission date and time (`MMDDhhmmss`, UTC), of `t`.
pub fn transmission_time(t: UnixSeconds) -> [u8; 10] {
    let (_, month, day) = civil_from_days((t / 86_400) as i64);
    let s = t % 86_400;
    let mut out = [b'0'; 10];
    for (pair, v) in out.chunks_exact_mut(2).zip([
        u64::from(month),
        u64::from(day),
        s / 3600,
        s / 60 % 60,
        s % 60,
    ]) {
        pair[0] = b'0' + (v / 10) as u8;
        pair[1] = b'0' + (v % 10) as u8;
    }
    out
}

/// Days since 1970-01-01 of a civil date (inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats an instant as RFC 3339 in UTC, e.g. `2026-11-26T15:04:05Z` (for the API).
pub fn format_rfc3339(t: UnixSeconds) -> String {
    let (y, mo, d) = civil_from_days((t / 86_400) as i64);
    let s = t % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// A card for unit tests: `amount_limit` in EUR cents, no other limit, valid until
/// `valid_until`, on the real card `pan` expiring December 2029.
#[cfg(test)]
pub(crate) fn test_spec(
    pan: crate::pan::Pan,
    amount_limit: u64,
    valid_until: UnixSeconds,
) -> CardSpec {
    CardSpec {
        pan,
        pan_expiry: Expiry(*b"2912"),
        controls: Controls {
            currency: 978,
            amount_limit,
            per_transaction_limit: None,
            max_uses: None,
            valid_until,
            merchant_lock: MerchantLock::None,
            mcc_allow: vec![],
            mcc_block: vec![],
        },
    }
}

/// Days in `month` (1 to 12) of `year`, in the proleptic Gregorian calendar.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses RFC 3339 (`2026-11-26T15:04:05Z`, `...05.123+01:00`; fractions are dropped).
/// `None` for anything else or a time before 1970.
pub fn parse_rfc3339(text: &str) -> Option<UnixSeconds> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 {
        return None;
    }
    // 2026-02-31 is no day: refused, not taken for 3 March.
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &rest[1 + digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let all = [*h1, *h2, *m1, *m2];
            if !all.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u8, day as u8);
    let t = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(t).ok()
}

/// A card acceptor identification code (DE 42): 15 characters, space padded on the right.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AcceptorId(pub [u8; 15]);

impl AcceptorId {
    /// Takes up to 15 printable ASCII characters, pads with spaces; `None` otherwise.
    /// Trailing spaces are not significant: `"SHOP1"` and `"SHOP1   "` are the same merchant.
    pub fn new(text: &[u8]) -> Option<AcceptorId> {
        if text.len() > 15 || !text.iter().all(|c| (0x20..0x7f).contains(c)) {
            return None;
        }
        let mut id = [b' '; 15];
        id[..text.len()].copy_from_slice(text);
        Some(AcceptorId(id))
    }

    /// The ID without its padding.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("").trim_end()
    }
}

impl fmt::Debug for AcceptorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AcceptorId({:?})", self.as_str())
    }
}

/// Where a card may be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MerchantLock {
    /// Anywhere.
    None,
    /// Only at the merchant (DE 42) of its first approval.
    FirstUse,
    /// Only at this merchant (DE 42).
    Acceptor(AcceptorId),
}

/// What the holder (or the issuer) set: the card is usable, paused, or closed for good.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Status {
    /// Usable within its controls.
    Active,
    /// Declined with 62 until resumed.
    Paused,
    /// Declined with 46, for good: closed by the holder, or single use consumed, or uses
    /// exhausted (the last two are derived from the counters, see [`Card::status`]).
    Closed,
}

impl Status {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Closed => "closed",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Option<Status> {
        [Status::Active, Status::Paused, Status::Closed]
            .get(usize::from(v))
            .copied()
    }
}

/// The card's controls, as asked for at issuance (and shown by the API).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Controls {
    /// ISO 4217 numeric currency the limits are counted in.
    pub currency: u16,
    /// Cumulative cap in minor units: spent + held never goes above it.
    pub amount_limit: u64,
    /// Largest single purchase, minor units.
    pub per_transaction_limit: Option<NonZeroU64>,
    /// How many approved purchases the card allows (1 = single use).
    pub max_uses: Option<NonZeroU32>,
    /// The card is declined with 54 from this instant on.
    pub valid_until: UnixSeconds,
    /// Where the card may be used.
    pub merchant_lock: MerchantLock,
    /// Merchant category codes (DE 18) allowed; empty = all.
    pub mcc_allow: Vec<u16>,
    /// Merchant category codes (DE 18) refused.
    pub mcc_block: Vec<u16>,
}

/// What an issuer asks for: the real card and the controls of its virtual twin.
#[derive(Clone, Debug)]
pub struct CardSpec {
    /// The real card number (Luhn-valid).
    pub pan: Pan,
    /// The real card's expiry (sent to the issuer in DE 14).
    pub pan_expiry: Expiry,
    /// The controls.
    pub controls: Controls,
}

/// The MCC allow and block lists, boxed because most cards have none.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct MccRules {
    /// Allowed MCCs, sorted; empty = all.
    pub allow: Box<[u16]>,
    /// Refused MCCs, sorted.
    pub block: Box<[u16]>,
}

/// One virtual card in memory: controls, status and counters. Kept compact (see module doc).
#[derive(Clone, Debug)]
pub struct Card {
    /// The real card number the issuer knows; goes out only towards the issuer.
    pub real_pan: Pan,
    /// The nonce the real PAN was sealed with at issuance. A snapshot seals it again with
    /// this one, which gives the issuance's bytes again, rather than drawing a fresh nonce
    /// per card per snapshot: AES-GCM's bound on random nonces (2^32 per key) then counts
    /// cards issued, not cards times snapshots. `None` for a card that was never sealed
    /// (built in memory only), which a snapshot seals with a fresh nonce.
    pub pan_nonce: Option<[u8; NONCE_BYTES]>,
    /// The real card's expiry, YYMM (DE 14 towards the issuer).
    pub real_expiry: Expiry,
    /// ISO 4217 numeric currency of the limits.
    pub currency: u16,
    /// Status as set by the holder; see [`Card::status`] for the effective one.
    pub set_status: Status,
    /// The merchant lock kind; with `FirstUse`, `acceptor` holds the bound merchant once
    /// there is one.
    pub lock: LockKind,
    /// The locked merchant (`Acceptor`, or `FirstUse` once bound); unused otherwise.
    pub acceptor: AcceptorId,
    /// Uses counted so far (approved non-zero purchases and advices, minus full reversals).
    pub uses: u32,
    /// Approvals that will count a use if the issuer approves them, still waiting for its
    /// answer: they take a use already, so that racing requests cannot together pass
    /// `max_uses`. Not in snapshots: no hold stays open across a restart.
    pub held_uses: u32,
    /// The use cap, when there is one.
    pub max_uses: Option<NonZeroU32>,
    /// Cumulative cap, minor units.
    pub amount_limit: u64,
    /// Per-purchase cap, minor units.
    pub per_transaction_limit: Option<NonZeroU64>,
    /// Approved and settled so far, minor units.
    pub spent: u64,
    /// Held by approvals the issuer has not answered yet, minor units.
    pub held: u64,
    /// End of validity.
    pub valid_until: UnixSeconds,
    /// When it was issued.
    pub created_at: UnixSeconds,
    /// Journal sequence number of the last change applied: replay skips older records.
    pub lsn: u64,
    /// MCC lists, when the card has any.
    pub mcc: Option<Box<MccRules>>,
    /// Recent decisions, allocated on the first one (cold, bounded).
    pub history: History,
    /// The digest of the `Idempotency-Key` it was issued under, when it had one: kept in
    /// snapshots, so that a restart within [`crate::cards::requests::KEPT_FOR`] of the
    /// issuance still knows which card the key made.
    pub request_key: Option<Box<crate::cards::requests::RequestKey>>,
}

/// The merchant lock without its acceptor (which sits in [`Card::acceptor`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockKind {
    /// No lock.
    None,
    /// First use, not bound yet.
    FirstUseUnbound,
    /// First use, bound to `Card::acceptor`.
    FirstUseBound,
    /// Fixed to `Card::acceptor`.
    Acceptor,
    /// First use, bound to `Card::acceptor` by holds the issuer has not answered yet (or
    /// left in doubt by a restart): freed again should it decline (or not answer) every one
    /// of them, bound for good once it approves one. Decided on as `FirstUseBound`. (Last, so the numbers of the others
    /// in snapshots stay; a vpan from before 2026-12-06 refuses a snapshot holding it.)
    FirstUseHeld,
}

impl LockKind {
    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Option<LockKind> {
        [
            LockKind::None,
            LockKind::FirstUseUnbound,
            LockKind::FirstUseBound,
            LockKind::Acceptor,
            LockKind::FirstUseHeld,
        ]
        .get(usize::from(v))
        .copied()
    }
}

impl Card {
    /// A fresh card from its spec.
    pub fn new(spec: &CardSpec, created_at: UnixSeconds) -> Card {
        let c = &spec.controls;
        let (lock, acceptor) = match c.merchant_lock {
            MerchantLock::None => (LockKind::None, AcceptorId([b' '; 15])),
            MerchantLock::FirstUse => (LockKind::FirstUseUnbound, AcceptorId([b' '; 15])),
            MerchantLock::Acceptor(id) => (LockKind::Acceptor, id),
        };
        let mcc = if c.mcc_allow.is_empty() && c.mcc_block.is_empty() {
            None
        } else {
            let mut allow = c.mcc_allow.clone();
            let mut block = c.mcc_block.clone();
            allow.sort_unstable();
            allow.dedup();
            block.sort_unstable();
            block.dedup();
            Some(Box::new(MccRules {
                allow: allow.into_boxed_slice(),
                block: block.into_boxed_slice(),
            }))
        };
        Card {
            real_pan: spec.pan.clone(),
            pan_nonce: None,
            real_expiry: spec.pan_expiry,
            currency: c.currency,
            set_status: Status::Active,
            lock,
            acceptor,
            uses: 0,
            held_uses: 0,
            max_uses: c.max_uses,
            amount_limit: c.amount_limit,
            per_transaction_limit: c.per_transaction_limit,
            spent: 0,
            held: 0,
            valid_until: c.valid_until,
            created_at,
            lsn: 0,
            mcc,
            history: History::default(),
            request_key: None,
        }
    }

    /// The expiry shown to the cardholder: the month of `valid_until`.
    pub fn virtual_expiry(&self) -> Expiry {
        Expiry::of_time(self.valid_until)
    }

    /// True when the use cap is reached (single use consumed, uses exhausted).
    pub fn uses_exhausted(&self) -> bool {
        self.max_uses.is_some_and(|m| self.uses >= m.get())
    }

    /// True when no use is left for one more approval: the counted uses and those held by
    /// approvals still with the issuer reach the cap.
    pub fn no_use_left(&self) -> bool {
        self.max_uses
            .is_some_and(|m| self.uses.saturating_add(self.held_uses) >= m.get())
    }

    /// The effective status: `Closed` also when the uses are exhausted.
    pub fn status(&self) -> Status {
        if self.set_status == Status::Closed || self.uses_exhausted() {
            Status::Closed
        } else {
            self.set_status
        }
    }

    /// What can still be approved: cap minus spent minus held, and nothing once the card is
    /// closed (by its holder, or its uses spent), which approves nothing more whatever its
    /// cap has left. A paused card keeps it: resumed, it approves again.
    pub fn available(&self) -> u64 {
        if self.status() == Status::Closed {
            return 0;
        }
        self.amount_limit
            .saturating_sub(self.spent)
            .saturating_sub(self.held)
    }

    /// The merchant lock as the API shows it (a bound first-use lock stays `FirstUse`).
    pub fn merchant_lock(&self) -> MerchantLock {
        match self.lock {
            LockKind::None => MerchantLock::None,
            LockKind::FirstUseUnbound | LockKind::FirstUseBound | LockKind::FirstUseHeld => {
                MerchantLock::FirstUse
            }
            LockKind::Acceptor => MerchantLock::Acceptor(self.acceptor),
        }
    }

    /// The controls, as issued.
    pub fn controls(&self) -> Controls {
        let (allow, block) = match &self.mcc {
            Some(r) => (r.allow.to_vec(), r.block.to_vec()),
            None => (Vec::new(), Vec::new()),
        };
        Controls {
            currency: self.currency,
            amount_limit: self.amount_limit,
            per_transaction_limit: self.per_transaction_limit,
            max_uses: self.max_uses,
            valid_until: self.valid_until,
            merchant_lock: self.merchant_lock(),
            mcc_allow: allow,
            mcc_block: block,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmission_time_is_month_day_hour_minute_second_in_utc() {
        // 2026-11-26T14:30:15Z
        assert_eq!(&transmission_time(1_795_703_415), b"1126143015");
        assert_eq!(&transmission_time(0), b"0101000000");
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(&transmission_time(1_709_251_199), b"0229235959");
    }

    #[test]
    fn digit_keys_round_trip_and_keep_leading_zeros_apart() {
        for s in [
            &b""[..],
            b"0",
            b"12",
            b"0012",
            b"497010123456789",
            b"9999999999999999999",
            b"0000000000000000000",
        ] {
            let k = digits_key(s).unwrap();
            let mut out = [0u8; MAX_PAN_LEN];
            let n = digits_from_key(k, &mut out);
            assert_eq!(&out[..n], s);
        }
        assert_ne!(digits_key(b"0012"), digits_key(b"12"));
        assert_eq!(digits_key(b"12a"), None);
    }

    #[test]
    fn a_card_key_gives_back_its_pan() {
        let digits = crate::pan::test_pan("497010");
        let pan = Pan::from_digits(digits.as_bytes()).unwrap();
        assert_eq!(CardKey::of(&pan).pan(), pan);
        assert_eq!(
            format!("{:?}", CardKey::of(&pan)),
            format!("CardKey(497010******{})", &digits[12..])
        );
    }

    #[test]
    fn the_virtual_expiry_is_the_month_of_the_end_of_validity() {
        // 2026-11-26T15:29:42Z
        assert_eq!(Expiry::of_time(1_795_706_982).as_str(), "2611");
        // 2027-01-01T00:00:00Z and one second before it
        assert_eq!(Expiry::of_time(1_798_761_600).as_str(), "2701");
        assert_eq!(Expiry::of_time(1_798_761_599).as_str(), "2612");
        assert_eq!(Expiry::of_time(951_782_400).as_str(), "0002"); // 2000-02-29
    }

    #[test]
    fn rfc3339_round_trips_and_honours_offsets() {
        assert_eq!(format_rfc3339(1_795_706_982), "2026-11-26T15:29:42Z");
        assert_eq!(parse_rfc3339("2026-11-26T15:29:42Z"), Some(1_795_706_982));
        assert_eq!(
            parse_rfc3339("2026-11-26T16:29:42.250+01:00"),
            Some(1_795_706_982)
        );
        assert_eq!(parse_rfc3339("2026-13-26T15:29:42Z"), None);
        // Days the month does not have, and offsets no zone has, are refused, not shifted.
        assert_eq!(parse_rfc3339("2026-02-31T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-04-31T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00+99:00"), None);
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00+01:60"), None);
        assert!(parse_rfc3339("2028-02-29T00:00:00Z").is_some());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_some());
        assert_eq!(parse_rfc3339("2100-02-29T00:00:00Z"), None);
        assert!(parse_rfc3339("2026-12-31T23:59:59-23:59").is_some());
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn an_expiry_must_be_four_digits_with_a_real_month() {
        assert!(Expiry::parse(b"2612").is_some());
        assert!(Expiry::parse(b"2613").is_none());
        assert!(Expiry::parse(b"261").is_none());
        assert!(Expiry::parse(b"26a2").is_none());
    }
}
