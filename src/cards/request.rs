//! What the switch tells the cards about a message: plain structs filled from ISO 8583 fields.
//!
//! The cards never see the wire. The switch reads the few fields the controls need (DE 3,
//! 4, 6, 7, 11, 14, 18, 32, 41, 42, 49, 51, 90, 95) into these structs, so the limits engine
//! and the ledger stay pure and testable without a codec. The transaction key (MTI class +
//! DE 11 + DE 7 + DE 32 + DE 41) is packed into 32 bytes.

use std::fmt;

use super::card::{AcceptorId, Expiry};

/// A DE 39 response code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseCode(pub [u8; 2]);

impl ResponseCode {
    /// 00: approved.
    pub const APPROVED: ResponseCode = ResponseCode(*b"00");
    /// 06: error (the host could not process the message).
    pub const ERROR: ResponseCode = ResponseCode(*b"06");
    /// 10: approved for a part of the amount (DE 4 of the answer).
    pub const PARTIAL_APPROVAL: ResponseCode = ResponseCode(*b"10");
    /// 12: invalid transaction (the host does not take this kind of message).
    pub const INVALID_TRANSACTION: ResponseCode = ResponseCode(*b"12");
    /// 14: invalid card number (a vPAN that was never issued).
    pub const UNKNOWN_CARD: ResponseCode = ResponseCode(*b"14");
    /// 30: format error.
    pub const FORMAT_ERROR: ResponseCode = ResponseCode(*b"30");
    /// 46: closed account.
    pub const CLOSED: ResponseCode = ResponseCode(*b"46");
    /// 54: expired card.
    pub const EXPIRED: ResponseCode = ResponseCode(*b"54");
    /// 57: transaction not permitted to cardholder.
    pub const NOT_PERMITTED: ResponseCode = ResponseCode(*b"57");
    /// 61: exceeds withdrawal amount limit.
    pub const OVER_LIMIT: ResponseCode = ResponseCode(*b"61");
    /// 62: restricted card.
    pub const RESTRICTED: ResponseCode = ResponseCode(*b"62");
    /// 91: issuer unavailable.
    pub const ISSUER_UNAVAILABLE: ResponseCode = ResponseCode(*b"91");
    /// 94: duplicate transmission.
    pub const DUPLICATE: ResponseCode = ResponseCode(*b"94");
    /// 96: system malfunction (vpan could not record the decision durably).
    pub const SYSTEM_ERROR: ResponseCode = ResponseCode(*b"96");

    /// The two characters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseCode({})", self.as_str())
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request does to a card, from DE 3 and the amount.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Goods, services, cash: counts against the limits.
    Purchase,
    /// A credit to the account, DE 3 from "20" to "29" (the range ISO 8583 gives credits:
    /// a refund, a credit adjustment, an original credit, a payment): never declined by the
    /// limits, never raises the cap.
    Refund,
    /// A zero-amount account verification: checked, but uses nothing up.
    Verification,
}

impl Kind {
    /// Classifies by processing code (DE 3) and the amount moved (the larger of DE 4 and
    /// DE 6: a verification moves nothing in either).
    pub fn classify(processing_code: &[u8], amount: u64) -> Kind {
        if processing_code.first() == Some(&b'2')
            && processing_code.get(1).is_some_and(u8::is_ascii_digit)
        {
            Kind::Refund
        } else if amount == 0 {
            Kind::Verification
        } else {
            Kind::Purchase
        }
    }
}

/// The amounts of a request, minor units.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Amounts {
    /// DE 4.
    pub transaction: u64,
    /// DE 49, ISO 4217 numeric.
    pub transaction_currency: u16,
    /// DE 6 and DE 51, when both are present.
    pub billing: Option<(u64, u16)>,
}

impl Amounts {
    /// What the card's cap counts in `currency`: its amount there ([`Amounts::in_currency`]),
    /// or the larger of DE 4 and DE 6 when both are in it and differ (a fee the network
    /// added to DE 6, or a DE 6 of one cent under a DE 4 the issuer may charge: counting
    /// the smaller would let the cap count less than the account is charged).
    pub fn counted_in(&self, currency: u16) -> Option<u64> {
        match self.billing {
            Some((amount, c)) if c == currency && self.transaction_currency == currency => {
                Some(amount.max(self.transaction))
            }
            _ => self.in_currency(currency),
        }
    }

    /// The amount in `currency`: DE 6 when DE 51 is it, else DE 4 when DE 49 is, else `None`
    /// (which the limits decline with 57).
    pub fn in_currency(&self, currency: u16) -> Option<u64> {
        match self.billing {
            Some((amount, c)) if c == currency => Some(amount),
            _ if self.transaction_currency == currency => Some(self.transaction),
            _ => None,
        }
    }
}

/// Packs a numeric field's value, ignoring leading zeros (DE 90 zero-fills what DE 32
/// carries as a variable-length field).
fn numeric(ascii: &[u8]) -> Option<u64> {
    if ascii.len() > 19 || !ascii.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        ascii
            .iter()
            .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0')),
    )
}

/// The transaction key: MTI class (second MTI digit) + DE 11 + DE 7 + DE 32 + DE 41.
/// The same key twice is the same transaction: replayed, or 94 if its content differs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TxKey {
    /// Second digit of the MTI: 1 authorization, 2 financial, 4 reversal.
    pub class: u8,
    /// DE 11, systems trace audit number.
    pub stan: u32,
    /// DE 7, transmission date and time MMDDhhmmss.
    pub transmitted: u32,
    /// DE 32, acquiring institution ID, as a number.
    pub acquirer: u64,
    /// DE 41, card acceptor terminal ID, space padded.
    pub terminal: [u8; 8],
}

impl TxKey {
    /// Builds the key from the raw fields; `None` when a numeric one is not numeric.
    pub fn new(
        mti: &[u8],
        stan: &[u8],
        transmitted: &[u8],
        acquirer: &[u8],
        terminal: &[u8],
    ) -> Option<TxKey> {
        let class = mti.get(1).filter(|c| c.is_ascii_digit())? - b'0';
        let mut t = [b' '; 8];
        if terminal.len() > 8 {
            return None;
        }
        t[..terminal.len()].copy_from_slice(terminal);
        Some(TxKey {
            class,
            stan: u32::try_from(numeric(stan)?).ok()?,
            transmitted: u32::try_from(numeric(transmitted)?).ok()?,
            acquirer: numeric(acquirer)?,
            terminal: t,
        })
    }

    /// The same key with another MTI class (a reversal looking for its original).
    pub fn with_class(self, class: u8) -> TxKey {
        TxKey { class, ..self }
    }

    /// The key a later reversal finds this message by (the ledger's key).
    pub fn original(&self) -> OriginalData {
        OriginalData {
            class: self.class,
            stan: self.stan,
            transmitted: self.transmitted,
            acquirer: self.acquirer,
            terminal: self.terminal,
        }
    }
}

/// What a reversal says about the message it reverses: DE 90 (original data elements),
/// plus the terminal, which DE 90 does not carry but a reversal comes from (DE 41). The
/// ledger is keyed by it: two terminals of one acquirer may use the same STAN in the same
/// second (many keep a STAN counter each), and they are two transactions, not a repeat.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OriginalData {
    /// Second digit of the original MTI.
    pub class: u8,
    /// Original DE 11.
    pub stan: u32,
    /// Original DE 7.
    pub transmitted: u32,
    /// Original DE 32, as a number.
    pub acquirer: u64,
    /// DE 41 of the original (and of its reversal), space padded.
    pub terminal: [u8; 8],
}

impl OriginalData {
    /// Parses DE 90: original MTI (4), STAN (6), DE 7 (10), acquirer (11), forwarding
    /// institution (11); 42 digits. `terminal` is the reversal's own DE 41 key part.
    pub fn parse(de90: &[u8], terminal: [u8; 8]) -> Option<OriginalData> {
        if de90.len() != 42 {
            return None;
        }
        let class = de90[1].is_ascii_digit().then(|| de90[1] - b'0')?;
        Some(OriginalData {
            class,
            stan: u32::try_from(numeric(&de90[4..10])?).ok()?,
            transmitted: u32::try_from(numeric(&de90[10..20])?).ok()?,
            acquirer: numeric(&de90[20..31])?,
            terminal,
        })
    }
}

/// DE 90 (original data elements, n 42) for a message sent with this MTI, STAN, DE 7 and
/// DE 32: the acquirer is zero-padded on the left to 11 digits, the forwarder left zero.
pub fn original_data_elements(
    mti: &[u8; 4],
    stan: &[u8; 6],
    transmission_time: &[u8; 10],
    acquirer: &[u8],
) -> [u8; 42] {
    let mut out = [b'0'; 42];
    out[0..4].copy_from_slice(mti);
    out[4..10].copy_from_slice(stan);
    out[10..20].copy_from_slice(transmission_time);
    let acq = acquirer
        .get(acquirer.len().saturating_sub(11)..)
        .unwrap_or_default();
    let start = 31 - acq.len();
    if let Some(dst) = out.get_mut(start..31) {
        dst.copy_from_slice(acq);
    }
    out
}

/// An authorization, financial request or advice (0100, 0200, 0120, 0220 and repeats).
#[derive(Clone, Debug)]
pub struct AuthRequest {
    /// The MTI as received.
    pub mti: [u8; 4],
    /// Purchase, refund or verification (see [`Kind::classify`]).
    pub kind: Kind,
    /// DE 4, 49, 6, 51.
    pub amounts: Amounts,
    /// The expiry presented (DE 14, else track 2's), when there is one: must equal the
    /// virtual expiry.
    pub expiry: Option<Expiry>,
    /// DE 18, merchant category code.
    pub mcc: Option<u16>,
    /// DE 42, card acceptor identification code.
    pub acceptor: Option<AcceptorId>,
    /// The transaction key.
    pub key: TxKey,
    /// The authorization this advice completes: its DE 90, keyed with its DE 41. Set only
    /// for a financial advice (0220, or its repeat 0221) of goods and services (DE 3 `00`)
    /// with a DE 4, whose DE 90 names an MTI of class 1 (see the switch's
    /// `completed_authorization`); `None` otherwise.
    pub completes: Option<OriginalData>,
}

impl AuthRequest {
    /// A fingerprint of what the request asks (not its MTI, so a repeat or an advice of the
    /// same transaction matches): the same key with another fingerprint is answered 94.
    /// Stable across versions and restarts (FNV-1a), since it is journaled.
    pub fn fingerprint(&self, card: u64) -> u64 {
        let mut h = Fnv::new();
        h.u64(card);
        h.u64(self.kind as u64);
        h.u64(self.amounts.transaction);
        h.u64(u64::from(self.amounts.transaction_currency));
        if let Some((a, c)) = self.amounts.billing {
            h.u64(a);
            h.u64(u64::from(c));
        }
        h.bytes(&self.expiry.map_or([0; 4], |e| e.0));
        h.u64(u64::from(self.mcc.unwrap_or(u16::MAX)));
        h.bytes(&self.acceptor.map_or([0; 15], |a| a.0));
        h.finish()
    }

    /// True for 0120/0220 (and their repeats): an advice, which cannot be declined.
    pub fn is_advice(&self) -> bool {
        self.mti[2] == b'2'
    }
}

/// A reversal (0400, 0420 and repeats).
#[derive(Clone, Debug)]
pub struct ReversalRequest {
    /// The MTI as received.
    pub mti: [u8; 4],
    /// The reversal's own transaction key.
    pub key: TxKey,
    /// DE 90, when present; else the original is looked up by `key` with class 1 then 2.
    pub original: Option<OriginalData>,
    /// DE 95's actual transaction amount: what remains after a partial reversal, in the
    /// original's DE 4 currency. `None` (or no DE 95): full reversal.
    pub remaining: Option<u64>,
}

impl ReversalRequest {
    /// The reversal's own key (class 4, whatever its MTI's function: an 0400 and its
    /// advice form 0420 and their repeats are one reversal), under which the same reversal
    /// again is replayed and another one answered 94 (see `Ledger::reversal_keys`).
    pub fn own_key(&self) -> OriginalData {
        self.key.with_class(4).original()
    }

    /// A fingerprint of what the reversal asks (the original it names, what it leaves), as
    /// [`AuthRequest::fingerprint`] is of a request's; journaled, so stable. The original
    /// is named by its DE 11, DE 7, DE 32 and DE 41, from DE 90 or else from the
    /// reversal's own key, and by the class DE 90 names when there is one (an 0100 and an
    /// 0200 may share the rest). DE 95 leaving 0 is a full reversal, as none is.
    pub fn fingerprint(&self, card: u64) -> u64 {
        self.fingerprint_naming(card, self.original.map(|o| o.class))
    }

    /// Whether a reversal that took this one's key with `fingerprint` on `card` asked the
    /// same: the same original and amount left, its class named alike or by one of the two
    /// only. A reversal without DE 90 names an 0100 and an 0200 alike, and is the same
    /// reversal as one whose DE 90 names either (a network adding DE 90 to a repeat; a
    /// crash between the two voids such a reversal writes, then its repeat).
    pub fn is_same(&self, card: u64, fingerprint: u64) -> bool {
        let classes: &[Option<u8>] = match &self.original {
            Some(o) => &[Some(o.class), None],
            None => &[None, Some(1), Some(2)],
        };
        classes
            .iter()
            .any(|&class| self.fingerprint_naming(card, class) == fingerprint)
    }

    /// The fingerprint, naming the original's class `class` (none: by its other fields).
    fn fingerprint_naming(&self, card: u64, class: Option<u8>) -> u64 {
        let named = self.original.unwrap_or_else(|| self.key.original());
        let mut h = Fnv::new();
        h.u64(card);
        if let Some(class) = class {
            h.u64(u64::from(class) + 1);
        }
        h.u64(u64::from(named.stan));
        h.u64(u64::from(named.transmitted));
        h.u64(named.acquirer);
        h.bytes(&named.terminal);
        let remaining = self.remaining.filter(|&r| r != 0);
        match remaining {
            Some(r) => {
                h.u64(1);
                h.u64(r);
            }
            None => h.u64(0),
        }
        h.finish()
    }
}

/// 64-bit FNV-1a: tiny, stable, good enough to tell two requests apart.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A purchase for unit tests: `amount` euro cents at SHOP-A, STAN `stan`.
#[cfg(test)]
pub(crate) fn test_purchase(amount: u64, stan: u32) -> AuthRequest {
    AuthRequest {
        mti: *b"0100",
        kind: Kind::classify(b"000000", amount),
        amounts: Amounts {
            transaction: amount,
            transaction_currency: 978,
            billing: None,
        },
        expiry: None,
        mcc: Some(5411),
        acceptor: super::card::AcceptorId::new(b"SHOP-A"),
        key: TxKey::new(
            b"0100",
            format!("{stan:06}").as_bytes(),
            b"1126152942",
            b"12345",
            b"TERM0001",
        )
        .expect("a valid key"),
        completes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_currency_comes_from_billing_first_then_transaction() {
        let a = Amounts {
            transaction: 1000,
            transaction_currency: 840,
            billing: Some((930, 978)),
        };
        assert_eq!(a.in_currency(978), Some(930));
        assert_eq!(a.in_currency(840), Some(1000));
        assert_eq!(a.in_currency(826), None);
    }

    #[test]
    fn de90_names_the_same_transaction_as_its_key() {
        let key = TxKey::new(b"0200", b"000123", b"1126153000", b"12345", b"TERM01").unwrap();
        let de90 = b"020000012311261530000000001234500000000000";
        assert_eq!(
            OriginalData::parse(de90, key.terminal),
            Some(key.original())
        );
        assert_eq!(OriginalData::parse(b"0200", key.terminal), None);
    }

    #[test]
    fn the_same_stan_and_time_at_two_terminals_are_two_transactions() {
        let a = TxKey::new(b"0100", b"000123", b"1126153000", b"12345", b"TERM01").unwrap();
        let b = TxKey::new(b"0100", b"000123", b"1126153000", b"12345", b"TERM02").unwrap();
        assert_ne!(a.original(), b.original());
    }

    #[test]
    fn a_processing_code_starting_with_20_is_a_refund() {
        assert_eq!(Kind::classify(b"200000", 500), Kind::Refund);
        assert_eq!(Kind::classify(b"000000", 0), Kind::Verification);
        assert_eq!(Kind::classify(b"000000", 1), Kind::Purchase);
    }
}
