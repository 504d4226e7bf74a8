//! The codec against bytes it did not produce: pyiso8583's encodings of the same messages
//! (`fixtures/vectors/`). Each message must parse to exactly its fields and pack back to
//! exactly its bytes; each malformed input must be refused at the field the file names.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns

mod codec_common;
use codec_common as common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{check_spec_against_vectors, malformed, unhex};
use vpan::iso8583::{ErrorLocation, Message, Spec, recover_header};

#[test]
fn every_ascii_vector_parses_to_its_fields_and_packs_to_its_bytes() {
    check_spec_against_vectors(Spec::iso87ascii(), "iso87ascii.json");
}

#[test]
fn the_ascii_layout_reads_pyiso8583s_messages_where_jpos_file_differs() {
    // DE 54 of 140 characters, DE 93 of 5, DE 96 of 8 bytes: jPOS's `iso87ascii.xml` would
    // read each of them out of step (120, 6, 16).
    check_spec_against_vectors(Spec::iso87ascii(), "iso87ascii-where-layouts-differ.json");
}

#[test]
fn every_binary_vector_parses_to_its_fields_and_packs_to_its_bytes() {
    check_spec_against_vectors(Spec::iso87binary(), "iso87binary.json");
}

#[test]
fn every_malformed_ascii_input_is_refused_at_the_field_it_names() {
    let cases = malformed();
    assert!(cases.len() >= 9);
    for c in cases {
        let err = Message::parse(Spec::iso87ascii(), Bytes::from(unhex(&c.hex)))
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", c.name));
        let want = match &c.error_field {
            None => None,
            Some(serde_json::Value::String(s)) if s == "bitmap" => Some(ErrorLocation::Bitmap),
            Some(serde_json::Value::Number(n)) => {
                Some(ErrorLocation::Field(n.as_u64().unwrap() as u16))
            }
            Some(other) => panic!("{}: unexpected error_field {other}", c.name),
        };
        match want {
            None => assert!(
                matches!(err.location(), ErrorLocation::Mti | ErrorLocation::Message),
                "{}: {err:?}",
                c.name
            ),
            Some(loc) => assert_eq!(err.location(), loc, "{}: {err:?}", c.name),
        }
        // The error never carries the message's bytes (it would print a card number).
        assert!(!err.to_string().contains("497010"), "{}", c.name);
    }
}

#[test]
fn a_frame_that_fails_to_parse_still_yields_its_mti_and_its_stan_when_its_structure_holds_up_to_de_11()
 {
    let by_name: BTreeMap<_, _> = malformed()
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    type Case = (
        &'static str,
        Option<&'static [u8; 4]>,
        Option<&'static [u8; 6]>,
    );
    let expect: &[Case] = &[
        ("empty", None, None),
        ("mti_only_3_chars", None, None),
        ("bitmap_not_hex", Some(b"0100"), None),
        ("ll_length_not_digits", Some(b"0100"), None),
        ("numeric_field_with_letters", Some(b"0100"), Some(b"000123")),
        // The structure breaks after DE 11 (a field cut short, bytes left over): DE 11 is
        // read, as the contract asks (30 "when MTI and DE 11 can be read").
        ("fixed_field_truncated", Some(b"0100"), Some(b"000123")),
        ("trailing_bytes", Some(b"0100"), Some(b"000123")),
        // It breaks before DE 11 (DE 2's length over its maximum): nothing after is read.
        ("ll_length_over_max", Some(b"0100"), None),
    ];
    for (name, mti, stan) in expect {
        let h = recover_header(Spec::iso87ascii(), &unhex(&by_name[*name].hex));
        assert_eq!(h.mti.as_ref(), *mti, "{name}");
        assert_eq!(h.stan.as_ref(), *stan, "{name}");
    }
}
