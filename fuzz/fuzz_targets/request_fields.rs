//! Any bytes as a network request, and what the switch reads from its fields once it
//! parses: the card number (DE 2, else track 2), the cards' view of an authorization or an
//! advice (`auth_request`: amounts, currencies, expiry from DE 14 or track 2, MCC, merchant,
//! the transaction's key, the authorization a completion's DE 90 names) and of a reversal
//! (`reversal_request`: DE 90, DE 95). None may panic, and what they read must agree with
//! the message: the amount is DE 4's, a card number is 12 to 19 digits, and DE 90 read as
//! an original gives back the digits it was read from when written out again.
//!
//! The first byte picks the layout (even: ISO 8583:1987 ASCII, odd: binary); seeds from
//! `seed.sh` are the vectors of both.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vpan::cards::request::original_data_elements;
use vpan::iso8583::{Message, Spec};
use vpan::switch::flow::{auth_request, reversal_request};

fuzz_target!(|data: &[u8]| {
    let Some((&layout, body)) = data.split_first() else {
        return;
    };
    let spec = if layout % 2 == 0 {
        Spec::iso87ascii()
    } else {
        Spec::iso87binary()
    };
    let Ok(msg) = Message::parse(spec, Bytes::copy_from_slice(body)) else {
        return;
    };
    if let Some(Ok(pan)) = msg.card_number() {
        let digits = pan.as_bytes();
        assert!(
            (12..=19).contains(&digits.len()),
            "a card number of {} digits",
            digits.len()
        );
        assert!(
            digits.iter().all(u8::is_ascii_digit),
            "a card number with a non-digit"
        );
    }
    if let Some(req) = auth_request(&msg) {
        assert_eq!(
            req.amounts.transaction,
            msg.amount_transaction().unwrap_or(0),
            "the amount read is not DE 4's"
        );
    }
    if let Some(req) = reversal_request(&msg)
        && let Some(original) = req.original
    {
        let de90 = msg.text(90).expect("an original read from DE 90");
        let de90 = de90.as_bytes();
        let acquirer = format!("{:011}", original.acquirer);
        let again = original_data_elements(
            de90[..4].try_into().unwrap(),
            de90[4..10].try_into().unwrap(),
            de90[10..20].try_into().unwrap(),
            acquirer.as_bytes(),
        );
        // The forwarding institution (the last 11 digits) is not read.
        assert_eq!(
            again[..31],
            de90[..31],
            "DE 90 read otherwise than it was written"
        );
        assert_eq!(original.class, de90[1] - b'0');
    }
});
