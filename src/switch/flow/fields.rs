//! The cards' view of a request, read from its fields: what the limits engine and the
//! ledger decide on, and nothing of the wire.

use crate::cards::{
    AcceptorId, Amounts, AuthRequest, Expiry, Kind, OriginalData, ReversalRequest, TxKey,
};
use crate::iso8583::Message;

fn digits_u16(ascii: &[u8]) -> Option<u16> {
    if ascii.is_empty() || ascii.len() > 4 || !ascii.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        ascii
            .iter()
            .fold(0u16, |v, &c| v * 10 + u16::from(c - b'0')),
    )
}

/// What the issuer's `answer` to `request` approved, read as a partial approval: its DE 4
/// when above 0 and below the request's, in its currency (DE 49 the same, or left out of
/// the answer), and its DE 6 in its DE 51, or the request's (0 when neither has one).
/// `None` when it is no approval of a part.
pub fn approved_in_part(answer: &Message, request: &Message) -> Option<Amounts> {
    let currency = answer.currency_transaction();
    if currency.is_some() && currency != request.currency_transaction() {
        return None;
    }
    let approved = answer.amount_transaction()?;
    if approved == 0 || approved >= request.amount_transaction()? {
        return None;
    }
    let numeric = |c: Option<[u8; 3]>| c.and_then(|c| digits_u16(&c));
    let billing_currency = numeric(answer.currency_cardholder_billing())
        .or_else(|| numeric(request.currency_cardholder_billing()))
        .unwrap_or(0);
    Some(Amounts {
        transaction: approved,
        transaction_currency: numeric(request.currency_transaction()).unwrap_or(0),
        billing: answer
            .amount_cardholder_billing()
            .map(|b| (b, billing_currency)),
    })
}

/// The cards' view of a 0100/0200/0120/0220; `None` when DE 11 or DE 7 is missing, or
/// DE 4 when the request is not an inquiry.
pub fn auth_request(msg: &Message) -> Option<AuthRequest> {
    let key = tx_key(msg)?;
    let processing_code = msg.processing_code().unwrap_or(*b"000000");
    // DE 4 is what the cap counts: a request that may move money without one is malformed
    // (30), not a zero-amount verification free of the cap and the uses, forwarded for the
    // issuer to charge whatever it reads elsewhere (DE 6). An inquiry (DE 3 "3x": balance,
    // statement) moves nothing and may leave it out, and so may a stand-in's advice of a
    // decline (recorded as one, and acknowledged, whatever its amount).
    let amount = match msg.amount_transaction() {
        Some(amount) => amount,
        None if processing_code[0] == b'3' || is_advice_of_decline(msg) => 0,
        None => return None,
    };
    let de6 = msg.amount_cardholder_billing();
    let billing = match (de6, msg.currency_cardholder_billing()) {
        (Some(a), Some(c)) => digits_u16(&c).map(|c| (a, c)),
        _ => None,
    };
    // A verification moves nothing in any currency: a DE 4 of 0 beside a DE 6 that is not
    // is a purchase whose amounts disagree (declined 30 when the card counts DE 4), not a
    // verification free of the cap and the uses. DE 6 without DE 51 too: the card does
    // not count it (its currency unsaid), but an issuer may charge it.
    let moved = amount.max(de6.unwrap_or(0));
    let kind = Kind::classify(&processing_code, moved);
    Some(AuthRequest {
        mti: msg.mti(),
        kind,
        amounts: Amounts {
            transaction: amount,
            transaction_currency: msg
                .currency_transaction()
                .and_then(|c| digits_u16(&c))
                .unwrap_or(0),
            billing,
        },
        expiry: presented_expiry(msg),
        mcc: msg.mcc().and_then(|m| digits_u16(&m)),
        acceptor: msg
            .acceptor_id()
            .and_then(|a| AcceptorId::new(a.as_bytes())),
        key,
        completes: completed_authorization(msg, key),
    })
}

/// The authorization a financial advice (0220, or its repeat 0221) completes, when its
/// DE 90 names one:
/// a pre-authorization's completion (a hotel's, a fuel pump's) for what was finally spent.
/// Not an authorization advice (0120): a stand-in's advice of an incremental authorization,
/// which some dialects link to the first by DE 90, would read as one, and give back an
/// authorization that stands. (Some processors send a fuel pump's completion as an 0120; it counts on
/// top, the safe side for the cap.) Only a purchase of goods and services (DE 3 `00`), and
/// only with a DE 4 to read: a debit adjustment adds to what was authorized, and an amount
/// that cannot be read would stand for 0.00, which gives the whole authorization back.
fn completed_authorization(msg: &Message, key: TxKey) -> Option<OriginalData> {
    if !matches!(&msg.mti()[1..], b"220" | b"221") {
        return None;
    }
    let purchase = msg.processing_code().is_some_and(|p| p.starts_with(b"00"));
    if !purchase || msg.amount_transaction().is_none() {
        return None;
    }
    msg.text(90)
        .and_then(|t| OriginalData::parse(t.as_bytes(), key.terminal))
        .filter(|original| original.class == 1)
}

/// The expiry a request presents, which must be the virtual one (54 otherwise): DE 14,
/// else track 2's, since a card-present request may carry the card in DE 35 alone (and
/// its expiry would otherwise go unchecked, then be replaced by the real one on its way to
/// the issuer). Kept as received: one that is no date never equals the virtual expiry.
fn presented_expiry(msg: &Message) -> Option<Expiry> {
    /// No date: stands for a DE 14 and a track 2 that disagree, which cannot both be the
    /// virtual expiry.
    const DISAGREEING: Expiry = Expiry(*b"----");
    match (msg.expiry(), msg.track2().and_then(|t| t.expiry())) {
        (Some(de14), Some(track)) if de14 != track => Some(DISAGREEING),
        (de14, track) => de14.or(track).map(Expiry),
    }
}

/// The cards' view of a 0400/0420; `None` when DE 11 or DE 7 is missing, or DE 95 has no
/// amount to read.
pub fn reversal_request(msg: &Message) -> Option<ReversalRequest> {
    let key = tx_key(msg)?;
    Some(ReversalRequest {
        mti: msg.mti(),
        key,
        original: msg
            .text(90)
            .and_then(|t| OriginalData::parse(t.as_bytes(), key.terminal)),
        // A DE 95 whose amount cannot be read is a format error (30), never a full reversal.
        remaining: match msg.replacement_transaction_amount() {
            None => None,
            Some(amount) => Some(amount?),
        },
    })
}

/// An 0120/0220 (or repeat) whose DE 39 reports a decline the issuer's codes know.
fn is_advice_of_decline(msg: &Message) -> bool {
    matches!(&msg.mti()[1..3], b"12" | b"22")
        && msg
            .response_code()
            .is_some_and(crate::switch::issuer::is_known_decline)
}

fn tx_key(msg: &Message) -> Option<TxKey> {
    let acquirer = msg.acquirer();
    let terminal = msg.terminal();
    TxKey::new(
        &msg.mti(),
        &msg.stan()?,
        &msg.transmission_time()?,
        acquirer.as_ref().map_or(&b""[..], |a| a.as_bytes()),
        terminal.as_ref().map_or(&b""[..], |t| t.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;

    #[test]
    fn a_zero_de4_beside_a_billing_amount_is_no_verification() {
        let request = |de4: &[u8], de6: Option<&[u8]>| {
            let mut m = Message::new(Spec::iso87ascii(), b"0100").unwrap();
            m.set(3, b"000000").unwrap();
            m.set(4, de4).unwrap();
            m.set(7, b"1126143015").unwrap();
            m.set(11, b"000001").unwrap();
            m.set(49, b"978").unwrap();
            if let Some(de6) = de6 {
                m.set(6, de6).unwrap();
                m.set(51, b"840").unwrap();
            }
            let with_51 = auth_request(&m).unwrap().kind;
            // Without DE 51, DE 6 still says money moves.
            m.remove(51);
            assert_eq!(auth_request(&m).unwrap().kind, with_51, "{de4:?} {de6:?}");
            with_51
        };
        assert_eq!(request(b"000000000000", None), Kind::Verification);
        assert_eq!(
            request(b"000000000000", Some(b"000000000000")),
            Kind::Verification
        );
        // 0 EUR beside 50.00 USD: money moved, in one currency at least.
        assert_eq!(
            request(b"000000000000", Some(b"000000005000")),
            Kind::Purchase
        );
        assert_eq!(request(b"000000001000", None), Kind::Purchase);
    }

    #[test]
    fn only_a_financial_advice_whose_de90_names_an_authorization_completes_one() {
        let advice = |mti: &[u8; 4], de3: &[u8], de90: &[u8]| {
            let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
            m.set(3, de3).unwrap();
            m.set(4, b"000000004500").unwrap();
            m.set(7, b"1126143015").unwrap();
            m.set(11, b"000002").unwrap();
            m.set(32, b"12345").unwrap();
            m.set(41, b"TERM0001").unwrap();
            m.set(90, de90).unwrap();
            m
        };
        let completes = |m: &Message| auth_request(m).unwrap().completes;
        let of = |mti: &[u8; 4]| {
            crate::cards::request::original_data_elements(mti, b"000001", b"1126120000", b"12345")
        };
        let preauth = OriginalData {
            class: 1,
            stan: 1,
            transmitted: 1_126_120_000,
            acquirer: 12_345,
            terminal: *b"TERM0001",
        };
        for mti in [b"0220", b"0221"] {
            assert_eq!(
                completes(&advice(mti, b"000000", &of(b"0100"))),
                Some(preauth)
            );
        }
        // An authorization advice, another financial advice MTI, a financial request
        // named, a request naming one, or a debit adjustment, completes nothing.
        for (mti, de3, named) in [
            (b"0120", b"000000", b"0100"),
            (b"0222", b"000000", b"0100"),
            (b"0220", b"000000", b"0200"),
            (b"0200", b"000000", b"0100"),
            (b"0220", b"020000", b"0100"),
        ] {
            assert_eq!(
                completes(&advice(mti, de3, &of(named))),
                None,
                "{mti:?} {de3:?}"
            );
        }
        // Nor one without a DE 4 to read: it is no request the cards can count (30).
        let mut no_amount = advice(b"0220", b"000000", &of(b"0100"));
        no_amount.remove(4);
        assert!(auth_request(&no_amount).is_none());
    }

    #[test]
    fn a_request_that_may_move_money_without_de4_is_malformed_and_an_inquiry_is_not() {
        // Review of stop 51: a 0100 without DE 4 read as a zero-amount verification,
        // approved outside the cap and the uses, and forwarded.
        let request = |mti: &[u8; 4], de3: &[u8]| {
            let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
            m.set(3, de3).unwrap();
            m.set(7, b"1126143015").unwrap();
            m.set(11, b"000001").unwrap();
            m.set(49, b"978").unwrap();
            auth_request(&m).map(|r| r.kind)
        };
        for mti in [b"0100", b"0200", b"0120", b"0220"] {
            for de3 in [b"000000", b"010000", b"200000"] {
                assert_eq!(request(mti, de3), None, "{mti:?} {de3:?}");
            }
        }
        assert_eq!(request(b"0100", b"300000"), Some(Kind::Verification));
        assert_eq!(request(b"0100", b"310000"), Some(Kind::Verification));
        // Round 2: an advice of a decline moves nothing, whatever its DE 4; one of an
        // approval without DE 4 says no amount to count.
        let advice = |mti: &[u8; 4], de39: &[u8]| {
            let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
            m.set(3, b"000000").unwrap();
            m.set(7, b"1126143015").unwrap();
            m.set(11, b"000001").unwrap();
            m.set(39, de39).unwrap();
            auth_request(&m).map(|r| r.amounts.transaction)
        };
        for mti in [b"0120", b"0121", b"0220", b"0221"] {
            assert_eq!(advice(mti, b"05"), Some(0), "{mti:?}");
            assert_eq!(advice(mti, b"00"), None, "{mti:?}");
            assert_eq!(advice(mti, b"Y1"), None, "{mti:?}");
        }
        assert_eq!(
            advice(b"0100", b"05"),
            None,
            "a request's DE 39 says nothing"
        );
    }
}
