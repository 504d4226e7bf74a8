//! The path the switch takes through the codec, on both built-in specs: parse a request,
//! read its fields, swap the virtual card for the real one toward the issuer, parse the
//! issuer's answer, swap back toward the network; and answer locally from a request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns

mod codec_common;
use codec_common as common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{Vector, fields_of, unhex, vectors};
use vpan::iso8583::{Message, Spec, Track2};
use vpan::pan::Pan;

fn specs() -> [(&'static Spec, &'static str); 2] {
    [
        (Spec::iso87ascii(), "iso87ascii.json"),
        (Spec::iso87binary(), "iso87binary.json"),
    ]
}

fn vector<'a>(all: &'a [Vector], name: &str) -> &'a Vector {
    all.iter().find(|v| v.name == name).unwrap()
}

fn parse(spec: &'static Spec, v: &Vector) -> Message {
    Message::parse(spec, Bytes::from(unhex(&v.hex))).unwrap()
}

fn without(mut f: BTreeMap<String, String>, keys: &[&str]) -> BTreeMap<String, String> {
    for k in keys {
        f.remove(*k);
    }
    f
}

#[test]
fn typed_accessors_return_decoded_values_whatever_the_wire_encoding() {
    for (spec, file) in specs() {
        let all = vectors(file);
        let v = vector(&all, "0100_ecommerce_purchase");
        let m = parse(spec, v);
        assert_eq!(&m.mti(), b"0100");
        assert_eq!(m.pan().unwrap().unwrap().as_bytes(), b"4970101234567893");
        assert_eq!(m.processing_code(), Some(*b"000000"));
        assert_eq!(m.amount_transaction(), Some(12345));
        assert_eq!(m.transmission_time(), Some(*b"1126143015"));
        assert_eq!(m.stan(), Some(*b"000123"));
        assert_eq!(m.expiry(), Some(*b"2812"));
        assert_eq!(m.mcc(), Some(*b"5734"));
        assert_eq!(&*m.acquirer().unwrap(), b"12345678901");
        assert_eq!(&*m.terminal().unwrap(), b"TERM0001");
        assert_eq!(&*m.acceptor_id().unwrap(), b"SHOP00000000001");
        assert_eq!(
            m.acceptor_name().unwrap().as_str(),
            Some("EXAMPLE SHOP             PARIS        FR")
        );
        assert_eq!(m.currency_transaction(), Some(*b"978"));
        assert_eq!(m.response_code(), None);
        assert!(m.auth_code().is_none());

        let fx = parse(spec, vector(&all, "0100_foreign_currency_billing"));
        let f = &vector(&all, "0100_foreign_currency_billing").fields;
        assert_eq!(fx.amount_cardholder_billing(), f["6"].parse().ok());
        assert_eq!(
            fx.currency_cardholder_billing().map(|c| c.to_vec()),
            Some(f["51"].as_bytes().to_vec())
        );

        let approved = parse(spec, vector(&all, "0110_approved"));
        assert_eq!(approved.response_code(), Some(*b"00"));
        assert_eq!(
            approved.auth_code().unwrap().as_bytes(),
            vector(&all, "0110_approved").fields["38"].as_bytes()
        );

        let rev = parse(spec, vector(&all, "0400_reversal"));
        let o = rev.original_data().unwrap();
        assert_eq!((&o.mti, &o.stan), (b"0100", b"000123"));
        assert_eq!(&o.transmission_time, b"1126143015");
        assert_eq!(&o.acquirer, b"12345678901");
        let partial = parse(spec, vector(&all, "0420_partial_reversal_advice"));
        let r = partial.replacement_amounts().unwrap();
        assert_eq!((r.transaction, r.settlement), (5000, 0));
        assert_eq!((r.transaction_fee, r.settlement_fee), (0, 0));

        let echo = parse(spec, vector(&all, "0800_echo"));
        assert_eq!(echo.network_management_code(), Some(*b"301"));

        let t2 = parse(spec, vector(&all, "0100_card_present_track2_pin_emv"))
            .track2()
            .unwrap();
        assert_eq!(t2.pan_digits(), b"4970101234567893");
        assert_eq!(t2.expiry(), Some(*b"2812"));
    }
}

#[test]
fn the_virtual_card_is_swapped_for_the_real_one_and_back_leaving_every_other_field_alone() {
    let real = Pan::from_digits(b"5555551234567891").unwrap();
    let vpan = Pan::from_digits(b"4970101234567893").unwrap();
    for (spec, file) in specs() {
        let all = vectors(file);
        for name in [
            "0100_ecommerce_purchase",
            "0100_card_present_track2_pin_emv",
        ] {
            let v = vector(&all, name);
            let req = parse(spec, v);

            // Toward the issuer: real PAN, real expiry, real track 2.
            let mut out = req.clone();
            out.set_pan(&real).unwrap();
            if req.has(14) {
                out.set_expiry(b"3001").unwrap();
            }
            if let Some(t2) = req.track2() {
                out.set_track2(&t2.with_pan_and_expiry(&real, b"3001").unwrap())
                    .unwrap();
            }
            let to_issuer = Message::parse(spec, out.pack()).unwrap();
            assert_eq!(to_issuer.pan().unwrap().unwrap(), real, "{name}");
            if req.has(14) {
                assert_eq!(to_issuer.expiry(), Some(*b"3001"));
            }
            if req.has(35) {
                let t2 = to_issuer.track2().unwrap();
                assert_eq!(t2.pan_digits(), real.as_bytes());
                assert_eq!(t2.expiry(), Some(*b"3001"));
            }
            assert_eq!(
                without(fields_of(&to_issuer), &["2", "14", "35"]),
                without(v.fields.clone(), &["2", "14", "35"]),
                "{} / {name}: other fields untouched",
                spec.name
            );

            // And back: restoring the virtual values gives the original bytes.
            let mut back = to_issuer.clone();
            back.set_pan(&vpan).unwrap();
            if let Some(e) = req.expiry() {
                back.set_expiry(&e).unwrap();
            }
            if let Some(t2) = req.track2() {
                back.set_track2(&t2).unwrap();
            }
            assert_eq!(back.pack(), req.frame(), "{} / {name}", spec.name);
        }
    }
}

#[test]
fn a_local_answer_is_the_request_with_a_new_mti_a_response_code_and_fewer_fields() {
    for (spec, file) in specs() {
        let all = vectors(file);
        let v = vector(&all, "0100_card_present_track2_pin_emv");
        let mut resp = parse(spec, v);
        resp.set_mti(b"0110").unwrap();
        resp.set_response_code(b"51").unwrap();
        for n in [35, 52, 55] {
            resp.remove(n);
        }
        assert!(resp.is_edited());
        let parsed = Message::parse(spec, resp.pack()).unwrap();
        assert_eq!(&parsed.mti(), b"0110");
        assert_eq!(parsed.response_code(), Some(*b"51"));
        assert!(!parsed.has(35) && !parsed.has(52) && !parsed.has(55));
        let mut want = without(v.fields.clone(), &["35", "52", "55"]);
        want.insert("t".into(), "0110".into());
        want.insert("39".into(), "51".into());
        assert_eq!(fields_of(&parsed), want, "{}", spec.name);

        // Setting a field again replaces it; a removed field can come back.
        resp.set_response_code(b"05").unwrap();
        resp.set(52, b"0123456789ABCDEF").unwrap();
        let again = Message::parse(spec, resp.pack()).unwrap();
        assert_eq!(again.response_code(), Some(*b"05"));
        assert_eq!(&*again.text(52).unwrap(), b"0123456789ABCDEF");
    }
}

#[test]
fn a_message_never_prints_its_card_number() {
    for (spec, file) in specs() {
        let all = vectors(file);
        let m = parse(spec, vector(&all, "0100_card_present_track2_pin_emv"));
        let shown = format!("{m:?} {:?} {:?}", m.text(2).unwrap(), m.track2().unwrap());
        assert!(!shown.contains("4970101234567893"), "{shown}");
        assert!(shown.contains("497010******7893"), "{shown}");
    }
}

#[test]
fn track2_accepts_only_digits_and_one_kind_of_separator() {
    assert!(Track2::new(b"4970101234567893=2812").is_some());
    assert!(Track2::new(b"4970101234567893^2812").is_none());
}
