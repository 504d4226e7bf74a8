//! The limits engine: a pure function of (card, request, now) that approves or declines.
//!
//! No I/O, no clock, no locks: the ledger calls [`decide`] under the card's lock and applies
//! the verdict. A decline is a value carrying its DE 39 code, not an error.
//!
//! Checks run in this fixed order; the first that fails decides the code:
//!
//! 1. refund (DE 3 "20..."): always approved, on any card, even closed (forwarded so the
//!    issuer can credit the real card); it does not change `spent` (never raises the cap);
//! 2. **46** closed by the holder, or uses exhausted (single use consumed);
//! 3. **62** paused;
//! 4. **54** `valid_until` passed, or the expiry presented (DE 14, else track 2's) not the
//!    virtual expiry;
//! 5. **57** currency: neither DE 51 nor DE 49 is the card's (and **30** when DE 4 is not
//!    zero but the amount in the card's currency is: amounts that contradict); merchant
//!    lock: DE 42 is not
//!    the locked (or first-use bound) merchant; MCC (DE 18) not in the allow list, or in the
//!    block list (a missing DE 18 fails a non-empty allow list);
//! 6. **61** over the per-transaction limit, or spent + held + amount over `amount_limit`.
//!
//! Unknown vPANs (**14**) are decided by the caller, which did the lookup. An approval of a
//! zero amount (an account verification) counts no use, so it works on a single-use card
//! that has not been used yet and does not consume it.

use super::card::{Card, LockKind, Status, UnixSeconds};
use super::request::{AuthRequest, Kind, ResponseCode};

/// What the engine decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Approve and hold `amount` (card currency) until the issuer answers.
    Approve(Terms),
    /// Decline locally.
    Decline(Reason),
}

/// The terms of an approval.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Terms {
    /// Amount to hold, in the card's currency (0 for refunds: they hold nothing).
    pub amount: u64,
    /// Whether the approval uses up one of the card's uses once the issuer approves.
    pub counts_use: bool,
    /// Whether the approval binds a first-use merchant lock to the request's DE 42.
    pub binds_merchant: bool,
}

/// Why the engine declined; each maps to one DE 39 code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// Closed by the holder (46).
    Closed,
    /// Uses exhausted, single use consumed (46).
    UsesExhausted,
    /// Paused by the holder (62).
    Paused,
    /// `valid_until` has passed (54).
    Expired,
    /// The expiry presented (DE 14, else track 2's) is not the virtual expiry (54).
    ExpiryMismatch,
    /// Neither DE 51 nor DE 49 is the card's currency (57).
    Currency,
    /// DE 42 is not the merchant the card is locked to (57).
    Merchant,
    /// DE 18 is not allowed, or blocked (57).
    Mcc,
    /// Over the per-transaction limit (61).
    OverPerTransaction,
    /// Spent + held + amount over the cumulative cap (61).
    OverCap,
    /// A purchase (DE 4 not zero) whose amount in the card's currency is zero (DE 6, DE 51
    /// the card's): the amounts contradict each other (30). Read as a verification, it
    /// would pass any cap and use nothing up while the issuer charges DE 4.
    ZeroInCardCurrency,
}

impl Reason {
    /// The DE 39 code.
    pub fn code(self) -> ResponseCode {
        match self {
            Reason::Closed | Reason::UsesExhausted => ResponseCode::CLOSED,
            Reason::Paused => ResponseCode::RESTRICTED,
            Reason::Expired | Reason::ExpiryMismatch => ResponseCode::EXPIRED,
            Reason::Currency | Reason::Merchant | Reason::Mcc => ResponseCode::NOT_PERMITTED,
            Reason::OverPerTransaction | Reason::OverCap => ResponseCode::OVER_LIMIT,
            Reason::ZeroInCardCurrency => ResponseCode::FORMAT_ERROR,
        }
    }
}

/// Decides an authorization or financial request on `card` at `now`. Pure.
pub fn decide(card: &Card, req: &AuthRequest, now: UnixSeconds) -> Verdict {
    if req.kind == Kind::Refund {
        return Verdict::Approve(Terms {
            amount: 0,
            counts_use: false,
            binds_merchant: false,
        });
    }
    if card.set_status == Status::Closed {
        return Verdict::Decline(Reason::Closed);
    }
    if card.uses_exhausted() {
        return Verdict::Decline(Reason::UsesExhausted);
    }
    if card.set_status == Status::Paused {
        return Verdict::Decline(Reason::Paused);
    }
    if now >= card.valid_until {
        return Verdict::Decline(Reason::Expired);
    }
    if req.expiry.is_some_and(|e| e != card.virtual_expiry()) {
        return Verdict::Decline(Reason::ExpiryMismatch);
    }
    let Some(amount) = req.amounts.counted_in(card.currency) else {
        return Verdict::Decline(Reason::Currency);
    };
    if amount == 0 && req.kind == Kind::Purchase {
        return Verdict::Decline(Reason::ZeroInCardCurrency);
    }
    let binds_merchant = match card.lock {
        LockKind::None => false,
        LockKind::FirstUseUnbound => true,
        LockKind::FirstUseBound | LockKind::FirstUseHeld | LockKind::Acceptor => {
            if req.acceptor != Some(card.acceptor) {
                return Verdict::Decline(Reason::Merchant);
            }
            false
        }
    };
    if binds_merchant && req.acceptor.is_none() {
        // A first-use lock cannot bind to a merchant the request does not name.
        return Verdict::Decline(Reason::Merchant);
    }
    if let Some(rules) = &card.mcc {
        let allowed = match req.mcc {
            Some(mcc) => {
                (rules.allow.is_empty() || rules.allow.binary_search(&mcc).is_ok())
                    && rules.block.binary_search(&mcc).is_err()
            }
            // A request that does not say what it is cannot be shown to be outside a
            // block list, nor inside an allow list: either fails closed.
            None => false,
        };
        if !allowed {
            return Verdict::Decline(Reason::Mcc);
        }
    }
    if card.per_transaction_limit.is_some_and(|l| amount > l.get()) {
        return Verdict::Decline(Reason::OverPerTransaction);
    }
    let committed = card.spent.saturating_add(card.held);
    if committed.saturating_add(amount) > card.amount_limit {
        return Verdict::Decline(Reason::OverCap);
    }
    let counts_use = amount > 0;
    if counts_use && card.no_use_left() {
        // The last use is held by an approval still with the issuer.
        return Verdict::Decline(Reason::UsesExhausted);
    }
    Verdict::Approve(Terms {
        amount,
        counts_use,
        binds_merchant,
    })
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroU64};

    use super::*;
    use crate::cards::card::{AcceptorId, CardSpec, Controls, Expiry, MerchantLock};
    use crate::cards::request::{Amounts, TxKey};
    use crate::pan::{Pan, luhn_check_digit};

    const NOW: UnixSeconds = 1_795_706_982; // 2026-11-26T15:29:42Z
    const EUR: u16 = 978;
    const USD: u16 = 840;

    fn test_pan() -> Pan {
        let payload = b"497010000000001";
        let mut v = payload.to_vec();
        v.push(b'0' + luhn_check_digit(payload));
        Pan::from_digits_checked(&v).unwrap()
    }

    fn card() -> Card {
        Card::new(
            &CardSpec {
                pan: test_pan(),
                pan_expiry: Expiry(*b"2912"),
                controls: Controls {
                    currency: EUR,
                    amount_limit: 10_000,
                    per_transaction_limit: NonZeroU64::new(6_000),
                    max_uses: None,
                    valid_until: NOW + 86_400,
                    merchant_lock: MerchantLock::None,
                    mcc_allow: vec![],
                    mcc_block: vec![],
                },
            },
            NOW - 60,
        )
    }

    fn shop(id: &str) -> Option<AcceptorId> {
        AcceptorId::new(id.as_bytes())
    }

    fn purchase(amount: u64) -> AuthRequest {
        AuthRequest {
            mti: *b"0100",
            kind: Kind::classify(b"000000", amount),
            amounts: Amounts {
                transaction: amount,
                transaction_currency: EUR,
                billing: None,
            },
            expiry: Some(Expiry(*b"2611")),
            mcc: Some(5411),
            acceptor: shop("SHOP-A"),
            key: TxKey::new(b"0100", b"000001", b"1126152942", b"12345", b"T1").unwrap(),
            completes: None,
        }
    }

    fn code(card: &Card, req: &AuthRequest, now: UnixSeconds) -> &'static str {
        match decide(card, req, now) {
            Verdict::Approve(_) => "00",
            Verdict::Decline(r) => match r.code() {
                ResponseCode::CLOSED => "46",
                ResponseCode::RESTRICTED => "62",
                ResponseCode::EXPIRED => "54",
                ResponseCode::NOT_PERMITTED => "57",
                ResponseCode::OVER_LIMIT => "61",
                _ => "??",
            },
        }
    }

    type Case = (&'static str, fn(&mut Card, &mut AuthRequest), &'static str);

    #[test]
    fn every_rule_gives_its_response_code() {
        let cases: &[Case] = &[
            ("a purchase within every limit is approved", |_, _| {}, "00"),
            (
                "a card closed by its holder is declined 46",
                |c, _| c.set_status = Status::Closed,
                "46",
            ),
            (
                "a single-use card already used is declined 46",
                |c, _| {
                    c.max_uses = NonZeroU32::new(1);
                    c.uses = 1;
                },
                "46",
            ),
            (
                "a card whose uses are exhausted is declined 46",
                |c, _| {
                    c.max_uses = NonZeroU32::new(3);
                    c.uses = 3;
                },
                "46",
            ),
            (
                "a card with uses left is approved",
                |c, _| {
                    c.max_uses = NonZeroU32::new(3);
                    c.uses = 2;
                },
                "00",
            ),
            (
                "a paused card is declined 62",
                |c, _| c.set_status = Status::Paused,
                "62",
            ),
            (
                "a card past its validity is declined 54",
                |c, _| c.valid_until = NOW,
                "54",
            ),
            (
                "a request whose expiry is not the virtual expiry is declined 54",
                |_, r| r.expiry = Some(Expiry(*b"2912")),
                "54",
            ),
            (
                "a request without an expiry is not checked against it",
                |_, r| r.expiry = None,
                "00",
            ),
            (
                "a request in another currency without billing in the card's is declined 57",
                |_, r| r.amounts.transaction_currency = USD,
                "57",
            ),
            (
                "a request billed in the card's currency is checked on the billing amount",
                |_, r| {
                    r.amounts.transaction_currency = USD;
                    r.amounts.transaction = 99_999;
                    r.amounts.billing = Some((5_000, EUR));
                },
                "00",
            ),
            (
                "the billing amount is the one that must fit the cap",
                |_, r| {
                    r.amounts.transaction_currency = USD;
                    r.amounts.transaction = 10;
                    r.amounts.billing = Some((6_001, EUR));
                },
                "61",
            ),
            (
                "a card locked to a merchant is declined 57 elsewhere",
                |c, _| {
                    c.lock = LockKind::Acceptor;
                    c.acceptor = AcceptorId::new(b"SHOP-B").unwrap();
                },
                "57",
            ),
            (
                "a card locked to a merchant is approved there",
                |c, _| {
                    c.lock = LockKind::Acceptor;
                    c.acceptor = AcceptorId::new(b"SHOP-A").unwrap();
                },
                "00",
            ),
            (
                "a first-use card bound to another merchant is declined 57",
                |c, _| {
                    c.lock = LockKind::FirstUseBound;
                    c.acceptor = AcceptorId::new(b"SHOP-B").unwrap();
                },
                "57",
            ),
            (
                "an unbound first-use card needs a merchant in the request",
                |c, r| {
                    c.lock = LockKind::FirstUseUnbound;
                    r.acceptor = None;
                },
                "57",
            ),
            (
                "an MCC outside the allow list is declined 57",
                |c, _| {
                    c.mcc = Some(Box::new(crate::cards::card::MccRules {
                        allow: vec![5812].into(),
                        block: vec![].into(),
                    }))
                },
                "57",
            ),
            (
                "an MCC inside the allow list is approved",
                |c, _| {
                    c.mcc = Some(Box::new(crate::cards::card::MccRules {
                        allow: vec![5411, 5812].into(),
                        block: vec![].into(),
                    }))
                },
                "00",
            ),
            (
                "a blocked MCC is declined 57",
                |c, _| {
                    c.mcc = Some(Box::new(crate::cards::card::MccRules {
                        allow: vec![].into(),
                        block: vec![5411].into(),
                    }))
                },
                "57",
            ),
            (
                "a request without MCC fails a non-empty allow list",
                |c, r| {
                    r.mcc = None;
                    c.mcc = Some(Box::new(crate::cards::card::MccRules {
                        allow: vec![5411].into(),
                        block: vec![].into(),
                    }))
                },
                "57",
            ),
            (
                "a request without MCC fails a block list",
                |c, r| {
                    r.mcc = None;
                    c.mcc = Some(Box::new(crate::cards::card::MccRules {
                        allow: vec![].into(),
                        block: vec![7995].into(),
                    }))
                },
                "57",
            ),
            (
                "a purchase over the per-transaction limit is declined 61",
                |_, r| r.amounts.transaction = 6_001,
                "61",
            ),
            (
                "a purchase exactly at the per-transaction limit is approved",
                |_, r| r.amounts.transaction = 6_000,
                "00",
            ),
            (
                "spent plus held plus amount over the cap is declined 61",
                |c, _| {
                    c.spent = 5_000;
                    c.held = 4_001;
                },
                "61",
            ),
            (
                "spent plus held plus amount exactly at the cap is approved",
                |c, r| {
                    c.spent = 5_000;
                    c.held = 4_000;
                    r.amounts.transaction = 1_000;
                },
                "00",
            ),
            (
                "a refund is approved on a closed card over its cap",
                |c, r| {
                    c.set_status = Status::Closed;
                    c.spent = 10_000;
                    r.kind = Kind::Refund;
                    r.amounts.transaction_currency = USD;
                },
                "00",
            ),
            (
                "a verification is approved on an unused single-use card",
                |c, r| {
                    c.max_uses = NonZeroU32::new(1);
                    r.amounts.transaction = 0;
                    r.kind = Kind::Verification;
                },
                "00",
            ),
            (
                "closed comes before paused",
                |c, _| {
                    c.set_status = Status::Closed;
                    c.valid_until = 0;
                },
                "46",
            ),
            (
                "paused comes before expired",
                |c, _| {
                    c.set_status = Status::Paused;
                    c.valid_until = 0;
                },
                "62",
            ),
            (
                "expired comes before a wrong currency",
                |c, r| {
                    c.valid_until = 0;
                    r.amounts.transaction_currency = USD;
                },
                "54",
            ),
            (
                "a wrong merchant comes before an amount over the cap",
                |c, r| {
                    c.lock = LockKind::Acceptor;
                    c.acceptor = AcceptorId::new(b"SHOP-B").unwrap();
                    r.amounts.transaction = 1_000_000;
                },
                "57",
            ),
        ];
        for (name, setup, want) in cases {
            let mut c = card();
            let mut r = purchase(1_000);
            setup(&mut c, &mut r);
            assert_eq!(code(&c, &r, NOW), *want, "{name}");
        }
    }

    #[test]
    fn an_approval_holds_the_amount_in_the_card_currency_and_counts_a_use() {
        let mut r = purchase(1_000);
        r.amounts.transaction_currency = USD;
        r.amounts.billing = Some((930, EUR));
        assert_eq!(
            decide(&card(), &r, NOW),
            Verdict::Approve(Terms {
                amount: 930,
                counts_use: true,
                binds_merchant: false
            })
        );
    }

    #[test]
    fn a_purchase_billed_zero_in_the_card_currency_is_a_format_error_not_a_verification() {
        // USD 500.00 in DE 4, and DE 6 of 0 in the card's euros: not a verification.
        let mut r = purchase(50_000);
        r.amounts.transaction_currency = USD;
        r.amounts.billing = Some((0, EUR));
        assert_eq!(
            decide(&card(), &r, NOW),
            Verdict::Decline(Reason::ZeroInCardCurrency)
        );
        assert_eq!(Reason::ZeroInCardCurrency.code(), ResponseCode(*b"30"));
        // DE 4 of 0 is a verification, whatever DE 6 says.
        r.amounts.transaction = 0;
        r.kind = Kind::Verification;
        assert!(matches!(decide(&card(), &r, NOW), Verdict::Approve(_)));
    }

    #[test]
    fn two_amounts_in_the_card_currency_that_differ_count_the_larger() {
        let counted = |r: &AuthRequest| match decide(&card(), r, NOW) {
            Verdict::Approve(t) => t.amount,
            other => panic!("{other:?}"),
        };
        // EUR 10.00 in DE 4 and EUR 0.01 in DE 6, both the card's euros: the cap counts
        // the ten euros the issuer may charge, not the cent.
        let mut r = purchase(1_000);
        r.amounts.billing = Some((1, EUR));
        assert_eq!(counted(&r), 1_000);
        // DE 6 above DE 4 (a fee the network added): DE 6.
        r.amounts.billing = Some((1_200, EUR));
        assert_eq!(counted(&r), 1_200);
        // DE 6 in the card's euros for DE 4 in dollars is a conversion: DE 6.
        r.amounts.transaction_currency = USD;
        r.amounts.billing = Some((1, EUR));
        assert_eq!(counted(&r), 1);
    }

    #[test]
    fn a_zero_amount_verification_counts_no_use() {
        let Verdict::Approve(t) = decide(&card(), &purchase(0), NOW) else {
            panic!("declined")
        };
        assert!(!t.counts_use);
    }

    #[test]
    fn a_first_use_card_binds_on_its_first_approval() {
        let mut c = card();
        c.lock = LockKind::FirstUseUnbound;
        let Verdict::Approve(t) = decide(&c, &purchase(10), NOW) else {
            panic!("declined")
        };
        assert!(t.binds_merchant);
    }
}
