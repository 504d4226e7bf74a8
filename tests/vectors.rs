//! The codec against bytes it did not produce: pyiso8583's encodings of the same messages
//! (`fixtures/vectors/`). Each message must parse to exactly its fields and pack back to
//! exactly its bytes; each malformed input must be refused at the field the file names.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use vpan::iso8583::{ErrorLocation, Message, Spec};

#[derive(Deserialize)]
struct Vector {
    name: String,
    hex: String,
    fields: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Malformed {
    name: String,
    hex: String,
    error_field: Option<serde_json::Value>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load(file: &str) -> Vec<Vector> {
    let path = format!("{}/fixtures/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The decoded fields of a message, in the vectors' form: `t` for the MTI, numbers as keys.
fn fields_of(m: &Message) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("t".to_owned(), String::from_utf8(m.mti().to_vec()).unwrap());
    for n in m.field_numbers() {
        let t = m.text(n).unwrap();
        out.insert(n.to_string(), t.as_str().unwrap().to_owned());
    }
    out
}

/// Builds a message from the vectors' decoded fields.
fn build(spec: &'static Spec, fields: &BTreeMap<String, String>) -> Message {
    let mti: [u8; 4] = fields["t"].as_bytes().try_into().unwrap();
    let mut m = Message::new(spec, &mti).unwrap();
    for (k, v) in fields {
        if k != "t" {
            m.set(k.parse().unwrap(), v.as_bytes())
                .unwrap_or_else(|e| panic!("field {k}: {e}"));
        }
    }
    m
}

fn check_spec_against_vectors(spec: &'static Spec, file: &str) {
    let vectors = load(file);
    assert!(vectors.len() >= 16, "{file} has {} vectors", vectors.len());
    for v in vectors {
        let bytes = Bytes::from(unhex(&v.hex));
        let m = Message::parse(spec, bytes.clone())
            .unwrap_or_else(|e| panic!("{} / {}: {e}", spec.name, v.name));
        assert_eq!(
            fields_of(&m),
            v.fields,
            "{} / {}: decoded fields",
            spec.name,
            v.name
        );
        assert_eq!(
            m.pack(),
            bytes,
            "{} / {}: parse then pack",
            spec.name,
            v.name
        );
        let built = build(spec, &v.fields);
        assert_eq!(
            built.pack(),
            bytes,
            "{} / {}: built from fields",
            spec.name,
            v.name
        );
    }
}

#[test]
fn every_ascii_vector_parses_to_its_fields_and_packs_to_its_bytes() {
    check_spec_against_vectors(Spec::iso87ascii(), "iso87ascii.json");
}

#[test]
fn every_binary_vector_parses_to_its_fields_and_packs_to_its_bytes() {
    check_spec_against_vectors(Spec::iso87binary(), "iso87binary.json");
}

#[test]
fn every_malformed_ascii_input_is_refused_at_the_field_it_names() {
    let path = format!(
        "{}/fixtures/vectors/iso87ascii-malformed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let cases: Vec<Malformed> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
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
fn a_frame_that_fails_to_parse_still_yields_its_mti_and_stan_when_they_are_readable() {
    let path = format!(
        "{}/fixtures/vectors/iso87ascii-malformed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let cases: Vec<Malformed> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let by_name: BTreeMap<_, _> = cases.into_iter().map(|c| (c.name.clone(), c)).collect();
    let expect: &[(&str, Option<&[u8; 4]>, Option<&[u8; 6]>)] = &[
        ("empty", None, None),
        ("mti_only_3_chars", None, None),
        ("bitmap_not_hex", Some(b"0100"), None),
        ("ll_length_not_digits", Some(b"0100"), None),
        ("numeric_field_with_letters", Some(b"0100"), Some(b"000123")),
        ("fixed_field_truncated", Some(b"0100"), Some(b"000123")),
        ("trailing_bytes", Some(b"0100"), Some(b"000123")),
    ];
    for (name, mti, stan) in expect {
        let h = vpan::iso8583::recover_header(Spec::iso87ascii(), &unhex(&by_name[*name].hex));
        assert_eq!(h.mti.as_ref(), *mti, "{name}");
        assert_eq!(h.stan.as_ref(), *stan, "{name}");
    }
}
